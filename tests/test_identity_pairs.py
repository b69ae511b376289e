"""Identity images (``DataConfig.identity_image``) on every source, and the UnVeilify
augmentation (``vflip``, ``rot90``, ``identity_augment``). Generated data only
(synthetic source, tests/fixtures.py writers); resolution 64."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from data_pipelines import align, pipeline
from data_pipelines.config import DataConfig
from tests import fixtures
from tests.test_data_config import parse_command_line


def cfg_of(**overrides) -> DataConfig:
    d = dict(source="synthetic", resolution=64, seed=0, identity_image=True,
             source_options={"num_records": 8, "images_per_identity": 4})
    d.update(overrides)
    return DataConfig.from_dict(d)


def take(ds, n: int | None = None) -> list[dict[str, np.ndarray]]:
    it = iter(ds)
    out = [b for _, b in zip(range(n), it)] if n is not None else list(it)
    if hasattr(it, "close"):
        it.close()
    return out


def prepared(cfg: DataConfig, source, train: bool, seeds=range(6)):
    """(record index, identity record index, example) of every record of ``source`` under
    ``PrepareExample`` with a few generator seeds (train) or once (eval)."""
    prep = pipeline.PrepareExample(source, cfg, train=train)
    out = []
    for i in range(len(source)):
        for s in (seeds if train else (0,)):
            ex = prep(source[i], np.random.default_rng(s))
            out.append((i, ex.get(pipeline.IDENTITY_INDEX_KEY), ex))
    return out


def frame(record, cfg):
    box = pipeline._frame_box(record["image"], record["landmarks"], cfg)
    return align.crop_and_resize(record["image"], None, box, cfg.resolution)[0]


def check_pairs(cfg, source, train: bool) -> dict[int, set[int]]:
    """Every prepared example's identity image is another record of the same person in
    ``source``; returns {record: identity records seen}."""
    ids = pipeline.record_identities(source)
    seen: dict[int, set[int]] = {}
    for i, j, ex in prepared(cfg, source, train):
        if "_error" in ex:
            assert ex["_error"] == "no_other_identity_image"
            continue
        assert j is not None and int(j) != i and ids[int(j)] == ids[i] >= 0
        seen.setdefault(i, set()).add(int(j))
        if not train:  # eval: the framed other image, unaugmented
            np.testing.assert_array_equal(ex["identity"], frame(source[int(j)], cfg))
    return seen


# ---------------------------------------------------------------------------------------
# Pairing on every source.
# ---------------------------------------------------------------------------------------


def test_synthetic_pairs_renders_of_the_same_person_and_skips_singletons(caplog):
    cfg = cfg_of(source_options={"num_records": 9, "images_per_identity": 4})
    source = pipeline.build_source(cfg, "train")  # identity 2 = record 8 alone
    seen = check_pairs(cfg, source, train=True)
    assert sorted(seen) == list(range(8))
    assert all(len(v) >= 2 for v in seen.values())  # training varies the pick
    pairs = pipeline.identity_pairs(source)
    assert (pairs.people, pairs.paired_people, pairs.single_people) == (3, 2, 1)
    ds = pipeline.train_dataset(cfg, batch_size=4, num_epochs=1, source=source)
    batches = take(ds)
    assert dict(ds.skip_counter.counts) == {"no_other_identity_image": 1}
    assert 8 not in np.concatenate([b["index"] for b in batches]).tolist()
    # Eval leaves the single person out instead of skipping: num_images examples.
    with caplog.at_level(logging.WARNING, logger="data_pipelines.pipeline"):
        ev = pipeline.eval_dataset(cfg, batch_size=9, num_images=9, source=source)
        (batch,) = take(ev)
    assert ev.num_records == 8 and 8 not in batch["index"].tolist()
    assert any("people with >= 2 images" in r.getMessage() for r in caplog.records)


def test_one_image_per_person_or_no_labels_fails_at_setup(tmp_path):
    single = cfg_of(source_options={"num_records": 8, "images_per_identity": 1})
    with pytest.raises(ValueError, match=r"identity_image=True needs people with at least "
                                         r"two images.*images_per_identity >= 2"):
        pipeline.build_sources(single)
    with pytest.raises(ValueError, match="identity_image"):
        pipeline.train_dataset(single, batch_size=2)
    folder = tmp_path / "folder"
    fixtures.write_folder(folder)
    no_ids = cfg_of(source="folder", data_dir=str(folder), train_split="all",
                    eval_split="all", source_options={"landmarks": "template"})
    with pytest.raises(ValueError, match=r"identity_image=True needs identity labels.*"
                                         r"identity_from=parent_dir"):
        pipeline.build_sources(no_ids)
    with pytest.raises(ValueError, match="identity_from=parent_dir"):
        pipeline.eval_dataset(no_ids, batch_size=2, num_images=2)
    pairs = fixtures.write_paired(tmp_path / "pairs", count=2).root
    with pytest.raises(ValueError, match=r"needs identity labels.*paired.*no identity labels"):
        pipeline.build_sources(cfg_of(source="paired", data_dir=str(pairs),
                                      train_split="all", eval_split="all",
                                      source_options={}))
    celeba = tmp_path / "celeba"
    fixtures.write_celeba(celeba, identities=3, per_identity=2)
    (celeba / "identity_CelebA.txt").unlink()
    with pytest.raises(ValueError, match="identity_CelebA.txt"):
        pipeline.build_sources(cfg_of(source="celeba", data_dir=str(celeba),
                                      eval_split="validation",
                                      source_options={"landmarks": "template"}))


def test_lfw_never_pairs_a_duplicate_of_the_target_and_eval_is_fixed(tmp_path):
    root = tmp_path / "lfw"
    fixtures.write_lfw(root, {"Alice_Aardvark": 1, "Bob_Builder": 3, "Carol_Crane": 2},
                       size=96)
    # Bob_0004: a byte copy of Bob_0001; Carol_0003: a symlink to Carol_0001.
    shutil.copyfile(root / "Bob_Builder" / "Bob_Builder_0001.jpg",
                    root / "Bob_Builder" / "Bob_Builder_0004.jpg")
    os.symlink("Carol_Crane_0001.jpg", root / "Carol_Crane" / "Carol_Crane_0003.jpg")
    cfg = cfg_of(source="lfw", data_dir=str(root), train_split="all", eval_split="all",
                 source_options={"landmarks": "template"})
    source = pipeline.build_source(cfg, "all")
    key = {k.split("/")[1][:-4]: i for i, k in enumerate(source.keys)}  # "Bob_Builder_0001"
    duplicates = [{key["Bob_Builder_0001"], key["Bob_Builder_0004"]},
                  {key["Carol_Crane_0001"], key["Carol_Crane_0003"]}]
    for train in (True, False):
        seen = check_pairs(cfg, source, train)
        for dup in duplicates:
            for i in dup:
                assert not seen[i] & dup, (train, i, seen[i])
        assert key["Alice_Aardvark_0001"] not in seen
    # Carol_0001 and its symlink can only pair with Carol_0002.
    assert seen[key["Carol_Crane_0003"]] == seen[key["Carol_Crane_0001"]] == {
        key["Carol_Crane_0002"]}


def test_lfw_eval_identity_comes_from_the_eval_split_and_is_deterministic(tmp_path):
    root = tmp_path / "lfw"
    fixtures.write_lfw(root, {f"P{k:02d}_Name": 2 + k % 3 for k in range(12)}, size=64)
    cfg = cfg_of(source="lfw", data_dir=str(root), eval_split="test",
                 source_options={"landmarks": "template", "test_fraction": 0.4})
    train, evaluation = pipeline.build_sources(cfg)
    assert len(train) and len(evaluation)
    check_pairs(cfg, evaluation, train=False)  # identity index is a record of the eval split
    a = take(pipeline.eval_dataset(cfg, batch_size=3, num_images=6, source=evaluation))
    b = take(pipeline.eval_dataset(cfg, batch_size=6, num_images=6, source=evaluation))
    c = take(pipeline.eval_dataset(cfg, batch_size=2, num_images=4, source=evaluation))
    np.testing.assert_array_equal(np.concatenate([x["identity"] for x in a]), b[0]["identity"])
    np.testing.assert_array_equal(np.concatenate([x["identity"] for x in c]),
                                  b[0]["identity"][:4])  # a prefix of the set: same pairs
    eval_people = set(pipeline.record_identities(evaluation).tolist())
    assert not eval_people & set(pipeline.record_identities(train).tolist())


def test_celeba_pairs_by_identity_label_and_counts_single_people(tmp_path, caplog):
    fx = fixtures.write_celeba(tmp_path / "celeba", identities=6, per_identity=2)
    (fx.root / "img_align_celeba" / fx.files[0]).unlink()  # identity 1000 keeps one image
    cfg = cfg_of(source="celeba", data_dir=str(fx.root), eval_split="validation",
                 source_options={"landmarks": "template"})
    with caplog.at_level(logging.WARNING, logger="data_pipelines.pipeline"):
        train, evaluation = pipeline.build_sources(cfg)
    assert any("1 of 2 people have a single image" in r.getMessage() for r in caplog.records)
    for source, is_train in ((train, True), (evaluation, False)):
        seen = check_pairs(cfg, source, is_train)
        ids = pipeline.record_identities(source)
        assert sorted(seen) == [i for i in range(len(source)) if np.sum(ids == ids[i]) >= 2]
    ds = pipeline.train_dataset(cfg, batch_size=1, num_epochs=1, source=train)
    assert len(take(ds)) == len(train) - 1
    assert dict(ds.skip_counter.counts) == {"no_other_identity_image": 1}


def test_folder_with_parent_dir_identities(tmp_path):
    fixtures.write_folder(tmp_path / "f")  # a/ has 2 images, b/c/ 1, the root 2 unlabelled
    cfg = cfg_of(source="folder", data_dir=str(tmp_path / "f"), train_split="all",
                 eval_split="all",
                 source_options={"landmarks": "template", "identity_from": "parent_dir"})
    source = pipeline.build_source(cfg, "all")
    pairs = pipeline.identity_pairs(source)
    assert (pairs.paired_people, pairs.single_people, pairs.unlabelled_records) == (1, 1, 2)
    seen = check_pairs(cfg, source, train=True)
    assert {source.keys[i] for i in seen} == {"a/1.jpeg", "a/2.bmp"}
    ds = pipeline.train_dataset(cfg, batch_size=1, num_epochs=1, source=source)
    assert len(take(ds)) == 2 and ds.skip_counter.counts["no_other_identity_image"] == 3


# ---------------------------------------------------------------------------------------
# UnVeilify augmentation.
# ---------------------------------------------------------------------------------------


def d4(image, vflip: bool, k: int):
    return np.rot90(image[::-1] if vflip else image, k)


def test_paired_augmentation_keeps_masked_target_and_mask_aligned():
    base = cfg_of(identity_image=False, source_options={"num_records": 16})
    plain = take(pipeline.train_dataset(base, batch_size=8), 3)
    aug_cfg = cfg_of(identity_image=False, vflip=True, rot90=True,
                     source_options={"num_records": 16})
    aug = take(pipeline.train_dataset(aug_cfg, batch_size=8), 3)
    transforms = set()
    for p, a in zip(plain, aug):
        np.testing.assert_array_equal(p["index"], a["index"])
        for n in range(8):
            # The draws come after the mask, so each augmented example is one D4 transform
            # of the plain one, the same for masked image, target and mask map.
            match = [(v, k) for v in (False, True) for k in range(4)
                     if np.array_equal(d4(p["target"][n], v, k), a["target"][n])
                     and np.array_equal(d4(p["masked"][n], v, k), a["masked"][n])
                     and np.array_equal(d4(p["mask"][n], v, k), a["mask"][n])]
            assert match, n
            transforms.add(match[0])
            # Where masked and target differ is still inside the mask map.
            differs = np.any(a["masked"][n] != a["target"][n], axis=-1)
            assert differs.any() and not np.any(differs & (a["mask"][n, ..., 0] == 0))
    assert len(transforms) >= 4  # the flips and quarter turns do vary
    assert all(a["masked"].flags.c_contiguous for a in aug)


def test_defaults_draw_nothing_and_augmentation_is_training_only():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    images = [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)]
    out = pipeline.paired_augment(images, rng, vflip=False, rot90=False)
    assert out is images and rng.bit_generator.state == state
    assert DataConfig().vflip is False and DataConfig().rot90 is False
    assert DataConfig().identity_augment == "flip"
    # Eval: the new settings change nothing, identity images included.
    plain = cfg_of()
    aug = cfg_of(vflip=True, rot90=True, identity_augment="flip_rotate")
    a = take(pipeline.eval_dataset(plain, batch_size=8, num_images=8))
    b = take(pipeline.eval_dataset(aug, batch_size=8, num_images=8))
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k])
    # Same seed, same batches (all features on); another seed, other batches.
    x = take(pipeline.train_dataset(aug, batch_size=4), 2)
    y = take(pipeline.train_dataset(aug, batch_size=4), 2)
    z = take(pipeline.train_dataset(cfg_of(vflip=True, rot90=True, seed=1,
                                           identity_augment="flip_rotate"), batch_size=4), 2)
    for u, v in zip(x, y):
        assert all(u[k].tobytes() == v[k].tobytes() for k in u)
    assert x[0]["identity"].tobytes() != z[0]["identity"].tobytes()


def test_flip_rotate_identity_augmentation_is_flips_then_rotation():
    cfg = cfg_of(identity_augment="flip_rotate")
    source = pipeline.build_source(cfg, "train")
    other = source[1]
    base = frame(other, cfg)
    prep = pipeline.PrepareExample(source, cfg, train=True)
    fills = 0
    for s in range(8):
        got = prep._frame_identity(other, np.random.default_rng(s))
        r = np.random.default_rng(s)  # documented draw order: vflip, hflip, angle
        vflip, hflip = r.random() < 0.5, r.random() < 0.5
        angle = r.uniform(-90, 90)
        expected = base[:, ::-1] if hflip else base
        expected = expected[::-1] if vflip else expected
        np.testing.assert_array_equal(got, pipeline.rotate_about_centre(
            np.ascontiguousarray(expected), angle))
        fills += abs(angle) > 10 and bool(np.all(got[0, 0] == pipeline.IDENTITY_ROTATION_FILL))
    assert fills >= 3  # rotated-in corners carry the fill value
    # A quarter turn is exact; eval never augments.
    np.testing.assert_array_equal(pipeline.rotate_about_centre(base, 90), np.rot90(base))
    ev = pipeline.PrepareExample(source, cfg, train=False)
    np.testing.assert_array_equal(ev._frame_identity(other, np.random.default_rng(0)), base)
    none = pipeline.PrepareExample(source, cfg_of(identity_augment="none"), train=True)
    np.testing.assert_array_equal(none._frame_identity(other, np.random.default_rng(0)), base)


def test_new_fields_are_validated_and_settable_from_the_command_line():
    for key, bad in (("vflip", "yes"), ("rot90", 1), ("identity_augment", "rotate")):
        with pytest.raises(ValueError, match=f"config.data.{key}="):
            cfg_of(**{key: bad})
    c = parse_command_line("--config.data.vflip=True", "--config.data.rot90=True",
                           "--config.data.identity_augment=flip_rotate",
                           "--config.data.identity_image=True")
    cfg = DataConfig.from_dict(c.data.to_dict())
    assert (cfg.vflip, cfg.rot90, cfg.identity_augment, cfg.identity_image) == (
        True, True, "flip_rotate", True)
    assert DataConfig.from_dict(parse_command_line().data.to_dict()).vflip is False


def test_preview_of_the_augmented_training_stream(tmp_path):
    from data_pipelines import preview

    args = ["--source=synthetic", "--resolution=64", "--num=4", "--identity",
            "--source_option", "num_records=8", "--source_option", "images_per_identity=2"]
    train = [*args, "--train", "--vflip", "--rot90", "--identity_augment=flip_rotate"]
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert preview.main([*train, f"--out={a}"]) == 0
    assert preview.main([*train, f"--out={b}"]) == 0
    assert preview.main([*args, f"--out={c}"]) == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert preview.main([*args, "--identity_augment=spin", f"--out={c}"]) == 2
