"""Splits and subsets: ``pipeline.build_sources`` checks both splits at start-up, the fixed
eval set and the ``num_records`` cap are spread over identities, the folder source keeps
people on one side of its split. Tiny generated data only."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import pipeline, subsets
from data_pipelines.config import DataConfig
from data_pipelines.sources import make_source
from tests import fixtures

# One prolific person first in alphabetical order, as in LFW's test split (where the first
# 100 records were 33 people, 29 of them one man).
SKEWED = {"Aaron_Many": 12, **{f"Person_{k:02d}": 1 + k % 3 for k in range(20)}}


def cfg_for(source: str, data_dir, **kw) -> DataConfig:
    options = kw.pop("source_options", {})
    return DataConfig.from_dict(dict(source=source, data_dir=str(data_dir), resolution=64,
                                     source_options=options, **kw))


# ---------------------------------------------------------------------------------------
# spread_order / limit_records.
# ---------------------------------------------------------------------------------------


def test_spread_order_round_robin_prefix_and_unknowns():
    groups = np.array([0] * 6 + [1, 1, 2, -1, -1])
    order = subsets.spread_order(groups)
    assert sorted(order.tolist()) == list(range(len(groups)))
    # First round: one record of each group (3 known + the 2 unknown singletons) ...
    first = order[:5]
    assert {int(groups[i]) for i in first if groups[i] >= 0} == {0, 1, 2}
    assert {int(i) for i in first if groups[i] < 0} == {9, 10}
    # ... each person's first record first, and a person's records in index order.
    assert 0 in first.tolist() and 6 in first.tolist() and 8 in first.tolist()
    zeros = [int(i) for i in order if groups[i] == 0]
    assert zeros == sorted(zeros)
    # Prefix property, determinism.
    for n in range(len(groups) + 1):
        assert subsets.spread_order(groups, n).tolist() == order[:n].tolist()
    kept = subsets.limit_records(groups, 4)
    assert kept.tolist() == sorted(order[:4].tolist())
    assert subsets.limit_records(groups, None) is None
    assert subsets.limit_records(groups, 100) is None
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_records"):
            subsets.limit_records(groups, bad)


# ---------------------------------------------------------------------------------------
# Fixed eval subset.
# ---------------------------------------------------------------------------------------


def test_eval_subset_is_spread_over_identities_and_reports_them(tmp_path):
    fixtures.write_lfw(tmp_path, SKEWED, size=64)
    cfg = cfg_for("lfw", tmp_path, eval_split="all",
                  source_options={"landmarks": "template"})
    source = pipeline.build_source(cfg, "all")
    # The old choice (first 12 records alphabetically) is one person.
    assert len(set(source.identities[:12].tolist())) == 1
    ds = pipeline.eval_dataset(cfg, batch_size=4, num_images=12, source=source)
    assert ds.num_records == 12 and ds.num_identities == 12
    ids = np.concatenate([b["identity_id"] for b in ds])
    assert len(ids) == 12 and len(set(ids.tolist())) == 12
    # Every identity before anybody's second image; the same set every time.
    everyone = pipeline.eval_dataset(cfg, batch_size=8, num_images=len(source), source=source)
    assert everyone.num_identities == len(SKEWED)
    again = np.concatenate([b["index"] for b in pipeline.eval_dataset(
        cfg, batch_size=5, num_images=12, source=source)])
    first = np.concatenate([b["index"] for b in pipeline.eval_dataset(
        cfg, batch_size=4, num_images=12, source=source)])
    assert again.tolist() == first.tolist()


def test_eval_subset_without_identities_reports_none(tmp_path):
    fixtures.write_folder(tmp_path)
    cfg = cfg_for("folder", tmp_path, eval_split="train",
                  source_options={"landmarks": "template"})
    ds = pipeline.eval_dataset(cfg, batch_size=4, num_images=3)
    assert ds.num_records == 3 and ds.num_identities is None


def test_synthetic_eval_subset_counts_identities():
    cfg = DataConfig.from_dict(dict(source="synthetic", resolution=64, source_options={
        "num_records": 16, "images_per_identity": 4}))
    ds = pipeline.eval_dataset(cfg, batch_size=4, num_images=4)
    assert ds.num_identities == 4  # the first four records were one identity


# ---------------------------------------------------------------------------------------
# num_records on file sources.
# ---------------------------------------------------------------------------------------


def test_num_records_keeps_a_deterministic_subset_spread_over_people(tmp_path):
    fixtures.write_lfw(tmp_path / "lfw", SKEWED, size=64)
    kwargs = dict(data_dir=tmp_path / "lfw", landmarks="none", split="all")
    full = make_source("lfw", **kwargs)
    capped = make_source("lfw", num_records=10, **kwargs)
    assert len(capped) == 10 and len(set(capped.identities.tolist())) == 10
    assert set(capped.keys) <= set(full.keys) and capped.keys == sorted(capped.keys)
    assert capped.keys == make_source("lfw", num_records=10, **kwargs).keys
    assert set(make_source("lfw", num_records=5, **kwargs).keys) <= set(capped.keys)
    # Identity ids stay the global ones, so identity_indices still works.
    ident = int(capped.identities[0])
    assert capped.keys[int(capped.identity_indices(ident)[0])].split("/")[0] == \
        full.people[ident]
    # CelebA, folder, paired.
    fx = fixtures.write_celeba(tmp_path / "celeba", identities=6, per_identity=3)
    celeba = make_source("celeba", data_dir=fx.root, split="all", landmarks="none",
                         num_records=6)
    assert len(celeba) == 6 and len(set(celeba.identities.tolist())) == 6
    folder = make_source("folder", data_dir=tmp_path / "lfw", landmarks="none",
                         identity_from="parent_dir", num_records=4)
    assert len(folder) == 4 and len(set(folder.identities.tolist())) == 4
    fixtures.write_paired(tmp_path / "paired", count=3)
    paired = make_source("paired", data_dir=tmp_path / "paired", num_records=2)
    assert len(paired) == 2 and len(set(paired.target_keys)) == 2
    assert len(make_source("paired", data_dir=tmp_path / "paired", num_records=99)) == 3


# ---------------------------------------------------------------------------------------
# build_sources: both splits checked at start-up.
# ---------------------------------------------------------------------------------------


def test_build_sources_fails_at_start_for_folder_and_paired_without_test_split(tmp_path):
    fixtures.write_folder(tmp_path / "faces")
    fixtures.write_paired(tmp_path / "pairs", count=3)
    for source, root in (("folder", tmp_path / "faces"), ("paired", tmp_path / "pairs")):
        cfg = cfg_for(source, root, source_options={"landmarks": "none"})
        with pytest.raises(ValueError) as err:
            pipeline.build_sources(cfg)
        message = str(err.value)
        assert "config.data.eval_split='test'" in message
        assert "--config.data.source_options.test_fraction" in message
        assert "train" in message  # the split that does exist
        # With a held-out split both build, and nothing is on both sides.
        cfg = cfg_for(source, root, source_options={"landmarks": "none",
                                                    "test_fraction": 0.5})
        train, evaluation = pipeline.build_sources(cfg)
        assert len(train) and len(evaluation)
        assert not set(train.keys) & set(evaluation.keys)


def test_build_sources_celeba_without_test_partition_suggests_validation(tmp_path, caplog):
    fx = fixtures.write_celeba(tmp_path, identities=2, per_identity=2)  # partitions 0, 1
    cfg = cfg_for("celeba", fx.root)  # default landmarks "auto", no landmark file
    with pytest.raises(ValueError, match=r"config\.data\.eval_split='test'.*"
                                         r"--config\.data\.eval_split=validation"):
        pipeline.build_sources(cfg)
    cfg = cfg_for("celeba", fx.root, eval_split="validation")
    train, evaluation = pipeline.build_sources(cfg)
    assert set(train.identities.tolist()) == {1000}
    assert set(evaluation.identities.tolist()) == {1001}
    # Framing works without the landmark file ("auto" falls back to the aligned template).
    batches = list(pipeline.eval_dataset(cfg, batch_size=2, num_images=2, source=evaluation))
    assert sum(len(b["index"]) for b in batches) == 2
    assert all(b["mask"].any() for b in batches)


def test_build_sources_same_split_and_identity_overlap_warn(tmp_path, caplog):
    fixtures.write_lfw(tmp_path, SKEWED, size=64)
    cfg = cfg_for("lfw", tmp_path, train_split="all", eval_split="all",
                  source_options={"landmarks": "none"})
    with caplog.at_level("WARNING", logger="data_pipelines.pipeline"):
        train, evaluation = pipeline.build_sources(cfg)
    assert train is evaluation
    assert any("training split" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg = cfg_for("lfw", tmp_path, train_split="all", eval_split="test",
                  source_options={"landmarks": "none", "test_fraction": 0.5})
    with caplog.at_level("WARNING", logger="data_pipelines.pipeline"):
        pipeline.build_sources(cfg)
    assert any("identities are in both" in r.getMessage() for r in caplog.records)


def test_trainer_keywords_still_accept_built_sources(tmp_path):
    cfg = DataConfig.from_dict(dict(source="synthetic", resolution=64, source_options={
        "num_records": 8, "images_per_identity": 4}))
    train, evaluation = pipeline.build_sources(cfg)
    batch = next(iter(pipeline.train_dataset(cfg, batch_size=2, source=train)))
    assert batch["masked"].shape == (2, 64, 64, 3)
    ds = pipeline.eval_dataset(cfg, batch_size=2, num_images=2, source=evaluation)
    assert ds.num_records == 2


# ---------------------------------------------------------------------------------------
# Folder split grouping.
# ---------------------------------------------------------------------------------------


def test_folder_split_keeps_person_folders_apart(tmp_path):
    people = {f"Person_{k:02d}": 3 for k in range(10)}  # >= 8 folders: look like people
    fixtures.write_lfw(tmp_path / "people", people, size=64)
    kwargs = dict(data_dir=tmp_path / "people", landmarks="none", test_fraction=0.3)
    train = make_source("folder", split="train", **kwargs)
    test = make_source("folder", split="test", **kwargs)
    assert train.split_by_resolved == "parent_dir"
    folders = lambda s: {k.split("/")[0] for k in s.keys}  # noqa: E731
    assert folders(train) and folders(test) and not folders(train) & folders(test)
    # Forcing the file split mixes them (documented), on this data.
    by_file = [make_source("folder", split=s, split_by="file", **kwargs)
               for s in ("train", "test")]
    assert folders(by_file[0]) & folders(by_file[1])
    # Few folders or images in the root: split by file unless told otherwise.
    fixtures.write_folder(tmp_path / "mixed")
    mixed = make_source("folder", data_dir=tmp_path / "mixed", landmarks="none",
                        test_fraction=0.5, split="all")
    assert mixed.split_by_resolved == "file"
    with pytest.raises(ValueError, match="split_by"):
        make_source("folder", data_dir=tmp_path / "mixed", split_by="person")
