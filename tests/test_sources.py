"""Tests for the file-backed face sources and the source registry (tiny generated data)."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipelines.landmarks import template as lm_template
from data_pipelines.sources import SOURCES, make_source, source_options
from data_pipelines.sources import images as images_mod
from data_pipelines.sources import paired as paired_mod
from data_pipelines.sources.base import DatasetNotFoundError
from data_pipelines.sources.celeba import CelebATFDSSource
from tests import fixtures


def _good_record(record: dict) -> None:
    assert record["error"] == "", record["error"]
    image = record["image"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


# ---------------------------------------------------------------------------------------
# LFW.
# ---------------------------------------------------------------------------------------


def test_lfw_reads_layout_identities_and_shapes(tmp_path):
    people = fixtures.write_lfw(tmp_path / "lfw")
    source = make_source("lfw", data_dir=tmp_path / "lfw", split="all", landmarks="none")
    assert len(source) == sum(people.values())
    assert source.has_identities and source.num_identities == len(people)
    names = sorted(people)
    for i in range(len(source)):
        record = source[i]
        _good_record(record)
        assert record["image"].shape == (250, 250, 3)
        person = record["key"].split("/")[0]
        assert record["identity"] == names.index(person)
        assert record["index"] == i and record["landmarks"] is None
    for ident, name in enumerate(names):
        idx = source.identity_indices(ident)
        assert len(idx) == people[name]
        assert all(source.keys[j].startswith(name + "/") for j in idx)
    assert len(source.identity_indices(99)) == 0


def test_lfw_accepts_parent_folder_and_deepfunneled_name(tmp_path):
    fixtures.write_lfw(tmp_path / "lfw-deepfunneled")
    source = make_source("lfw", data_dir=tmp_path, split="all", landmarks="none")
    assert source.root == (tmp_path / "lfw-deepfunneled").resolve()
    assert len(source) == 7


def test_lfw_split_is_identity_disjoint_and_deterministic(tmp_path):
    people = {f"Person_{k:02d}": 1 + k % 2 for k in range(12)}
    fixtures.write_lfw(tmp_path, people, size=64)
    kwargs = dict(data_dir=tmp_path, landmarks="none", test_fraction=0.5)
    train = make_source("lfw", split="train", **kwargs)
    test = make_source("lfw", split="test", **kwargs)
    every = make_source("lfw", split="all", **kwargs)
    train_people = {k.split("/")[0] for k in train.keys}
    test_people = {k.split("/")[0] for k in test.keys}
    assert train_people and test_people and not train_people & test_people
    assert train_people | test_people == set(people)
    assert len(train) + len(test) == len(every)
    # Identity ids are global (same person -> same id in every split).
    assert set(train.identities) | set(test.identities) == set(every.identities)
    assert not set(train.identities) & set(test.identities)
    for name in test_people:
        assert images_mod.in_test_split(name, 0.5)
    # Default 5% test fraction: the assignment follows the documented hash.
    small = make_source("lfw", data_dir=tmp_path, split="train", landmarks="none")
    expected = sorted(p for p in people if not images_mod.in_test_split(p, 0.05))
    assert sorted({k.split("/")[0] for k in small.keys}) == expected


def test_lfw_errors_name_path_and_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nope")):
        make_source("lfw", data_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no person folders.*<Name>_0001\.jpg"):
        make_source("lfw", data_dir=tmp_path / "empty", landmarks="none")
    with pytest.raises(DatasetNotFoundError, match="data_dir is required"):
        make_source("lfw")
    fixtures.write_lfw(tmp_path / "lfw")
    with pytest.raises(ValueError, match="unknown split"):
        make_source("lfw", data_dir=tmp_path / "lfw", split="dev")
    with pytest.raises(ValueError, match="landmarks"):
        make_source("lfw", data_dir=tmp_path / "lfw", landmarks="magic")


# ---------------------------------------------------------------------------------------
# CelebA.
# ---------------------------------------------------------------------------------------


def test_celeba_partition_identities_and_missing_rows(tmp_path):
    fx = fixtures.write_celeba(tmp_path / "celeba", identities=4, per_identity=2)
    for split, code in (("train", 0), ("validation", 1), ("test", 2)):
        source = make_source("celeba", data_dir=tmp_path, split=split, landmarks="none")
        expected = sorted(f for f in fx.files if fx.partition[f] == code)
        assert [k.split("/")[-1] for k in source.keys] == expected
        assert fx.missing_file not in {k.split("/")[-1] for k in source.keys}
        for i in range(len(source)):
            record = source[i]
            _good_record(record)
            assert record["image"].shape == (218, 178, 3)
            assert record["identity"] == fx.identity[record["key"].split("/")[-1]]
    train = make_source("celeba", data_dir=tmp_path / "celeba", split="train", landmarks="none")
    assert set(train.identities) == {1000, 1003}
    assert len(train.identity_indices(1003)) == 2
    every = make_source("celeba", data_dir=tmp_path / "celeba", split="all", landmarks="none")
    assert len(every) == len(fx.files)


def test_celeba_dataset_landmarks_fitted_to_68(tmp_path):
    fx = fixtures.write_celeba(tmp_path, identities=3, per_identity=2, with_landmarks=True)
    for mode in ("dataset", "auto"):
        source = make_source("celeba", data_dir=tmp_path, split="all", landmarks=mode)
        for i in range(len(source)):
            record = source[i]
            _good_record(record)
            assert record["landmark_source"] == "dataset5"
            lm = record["landmarks"]
            assert lm.shape == (68, 2) and lm.dtype == np.float32
            pts = fx.points5[record["key"].split("/")[-1]]
            np.testing.assert_allclose(lm[36:42].mean(axis=0), pts[0], atol=1.0)
            np.testing.assert_allclose(lm[42:48].mean(axis=0), pts[1], atol=1.0)
            np.testing.assert_allclose(lm[30], pts[2], atol=1.0)


def test_celeba_without_landmark_file_auto_uses_the_template_with_a_warning(tmp_path, caplog):
    # Real CelebA copies often lack list_landmarks_align_celeba.txt: "auto" must still frame
    # the faces (with the fixed aligned points, saying so), "dataset" must fail clearly.
    fixtures.write_celeba(tmp_path, identities=3, per_identity=1)
    with pytest.raises(DatasetNotFoundError, match="list_landmarks_align_celeba.txt") as err:
        make_source("celeba", data_dir=tmp_path, landmarks="dataset")
    for option in ("'template'", "'dlib'", "'none'", "'auto'"):
        assert option in str(err.value)
    with caplog.at_level(logging.WARNING, logger="data_pipelines.sources.celeba"):
        auto = make_source("celeba", data_dir=tmp_path, split="all", landmarks="auto")
    assert any("list_landmarks_align_celeba.txt is missing" in r.getMessage()
               and "'template'" in r.getMessage() for r in caplog.records)
    source = make_source("celeba", data_dir=tmp_path, split="all", landmarks="template")
    for src in (auto, source):
        record = src[0]
        assert record["landmark_source"] == "template"
        np.testing.assert_allclose(record["landmarks"],
                                   lm_template.celeba_aligned_landmarks(), atol=1e-4)
        eye = record["landmarks"][36:42].mean(axis=0)
        assert np.linalg.norm(eye - lm_template.CELEBA_ALIGNED_5[0]) < 3.0


def test_celeba_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"img_align_celeba.*expected"):
        make_source("celeba", data_dir=tmp_path / "empty", landmarks="none")
    fixtures.write_celeba(tmp_path / "c", identities=2, per_identity=1)
    with pytest.raises(DatasetNotFoundError, match="split 'test' has no images"):
        make_source("celeba", data_dir=tmp_path / "c", split="test", landmarks="none")
    (tmp_path / "c" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="list_eval_partition.txt"):
        make_source("celeba", data_dir=tmp_path / "c", split="train", landmarks="none")
    assert len(make_source("celeba", data_dir=tmp_path / "c", split="all",
                           landmarks="none")) == 2
    with pytest.raises(ValueError, match="backend"):
        make_source("celeba", data_dir=tmp_path / "c", backend="zip")


def test_celeba_tfds_backend_error_names_package(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tfds(name, *args, **kwargs):
        if name.startswith("tensorflow_datasets"):
            raise ImportError("No module named 'tensorflow_datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tfds)
    with pytest.raises(ImportError, match="tensorflow-datasets"):
        make_source("celeba", data_dir=tmp_path, backend="tfds")
    assert CelebATFDSSource.has_identities is False


# ---------------------------------------------------------------------------------------
# Folder.
# ---------------------------------------------------------------------------------------


def test_folder_recursive_without_and_with_identities(tmp_path):
    files = fixtures.write_folder(tmp_path)
    source = make_source("folder", data_dir=tmp_path, landmarks="none")
    assert source.keys == files
    assert not source.has_identities and len(source.identity_indices(0)) == 0
    for i in range(len(source)):
        record = source[i]
        _good_record(record)
        assert record["image"].shape == (96, 80, 3) and record["identity"] == -1
    by_dir = make_source("folder", data_dir=tmp_path, landmarks="none",
                         identity_from="parent_dir")
    assert by_dir.has_identities and by_dir.identity_names == ["a", "b/c"]
    ids = dict(zip(by_dir.keys, by_dir.identities.tolist()))
    assert ids == {"a/1.jpeg": 0, "a/2.bmp": 0, "b/c/3.webp": 1, "x.jpg": -1, "y.png": -1}
    np.testing.assert_array_equal(by_dir.identity_indices(0), [0, 1])


def test_folder_template_landmarks_and_exif_orientation(tmp_path):
    image = fixtures.draw_face(3, 90, 140)  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": displayed image is 140 x 90 (portrait)
    Image.fromarray(image).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    source = make_source("folder", data_dir=tmp_path, landmarks="template")
    record = source[0]
    _good_record(record)
    assert record["image"].shape == (140, 90, 3)
    np.testing.assert_allclose(record["landmarks"], lm_template.template_landmarks(140, 90))
    assert record["landmark_source"] == "template"


def test_bad_inputs_never_raise(tmp_path):
    expectations = fixtures.write_bad_images(tmp_path)
    source = make_source("folder", data_dir=tmp_path, landmarks="none")
    assert sorted(source.keys) == sorted(expectations)
    for i, key in enumerate(source.keys):
        record = source[i]
        expected = expectations[key]
        if expected in ("ok", "converted"):
            _good_record(record)
            assert record["converted"] == (expected == "converted"), key
            assert record["image"].shape == (120, 100, 3)
        else:
            assert record["error"] == expected, key
            assert record["image"] is None and record["key"] == key
    rgba = source[source.keys.index("rgba.png")]["image"]
    assert rgba[:10, :10].max() == 0  # transparent corner composited over black
    gray = source[source.keys.index("gray.png")]["image"]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    with pytest.raises(IndexError):
        source[len(source)]
    large_min = make_source("folder", data_dir=tmp_path, landmarks="none", min_size=100)
    assert large_min[large_min.keys.index("good.jpg")]["error"] == ""
    larger = make_source("folder", data_dir=tmp_path, landmarks="none", min_size=101)
    assert larger[larger.keys.index("good.jpg")]["error"] == "too_small"


def test_file_deleted_after_listing_is_an_error_record(tmp_path):
    fixtures.write_folder(tmp_path)
    source = make_source("folder", data_dir=tmp_path, landmarks="none")
    os.remove(tmp_path / source.keys[0])
    assert source[0]["error"] == "missing"


# ---------------------------------------------------------------------------------------
# Paired.
# ---------------------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


@pytest.mark.parametrize("ext, size", [(".png", 128), (".jpg", 256)])
def test_paired_mask_derived_and_stored(tmp_path, ext, size):
    # JPEG's chroma upsampling bleeds ~1 px of the mask colour: the map covers that ring,
    # which costs a few % IoU at 128 px, hence 256 px for the JPEG case.
    fx = fixtures.write_paired(tmp_path, ext=ext, size=size)
    source = make_source("paired", data_dir=tmp_path)
    assert len(source) == len(fx.rects) and source.num_unmatched == 1
    for i in range(len(source)):
        record = source[i]
        _good_record(record)
        key = record["key"]
        assert source.target_keys[i] == fx.targets[key]
        mask = record["mask"]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert record["target"].shape == record["image"].shape
        rect = fixtures.rect_mask(mask.shape, fx.rects[key])
        assert _iou(mask, rect) > 0.95
        assert mask[rect == 1].mean() > 0.995  # the whole drawn mask is covered
        stored = source.mask_path(i)
        assert stored.is_file() and stored.is_relative_to(tmp_path / "mask_maps")
        np.testing.assert_array_equal(np.asarray(Image.open(stored)) > 127, mask.astype(bool))


def test_paired_mask_is_read_back_not_recomputed(tmp_path, monkeypatch):
    fixtures.write_paired(tmp_path, count=1)
    source = make_source("paired", data_dir=tmp_path)
    first = source[0]["mask"]
    monkeypatch.setattr(paired_mod, "derive_mask",
                        lambda *a, **k: pytest.fail("mask recomputed although stored"))
    np.testing.assert_array_equal(source[0]["mask"], first)


def test_paired_read_only_root_uses_cache_dir(tmp_path, monkeypatch):
    fixtures.write_paired(tmp_path / "data", count=1)
    monkeypatch.setattr(paired_mod, "_writable", lambda path: False)
    monkeypatch.setenv("UNMASK_JAX_CACHE", str(tmp_path / "cache"))
    source = make_source("paired", data_dir=tmp_path / "data")
    assert source[0]["error"] == ""
    assert source.mask_path(0).is_relative_to(tmp_path / "cache" / "mask_maps")
    assert source.mask_path(0).is_file()
    assert not (tmp_path / "data" / "mask_maps").exists()


def test_paired_custom_dirs_and_errors(tmp_path):
    fixtures.write_paired(tmp_path, count=2, masked_dir="masked", unmasked_dir="clean")
    assert len(make_source("paired", data_dir=tmp_path, masked_dir="masked",
                           unmasked_dir="clean")) == 2
    with pytest.raises(DatasetNotFoundError, match="with_mask"):
        make_source("paired", data_dir=tmp_path)
    assert paired_mod.normalise_name("sub/0001_surgical.jpg") == "sub/0001"
    pairs = paired_mod.match_pairs(["a_mask.png", "b.png", "zz.png"], ["a.jpg", "b.png"])
    assert pairs == [("a_mask.png", "a.jpg"), ("b.png", "b.png")]


def test_paired_bad_pairs_are_error_records(tmp_path):
    fx = fixtures.write_paired(tmp_path, count=3)
    keys = sorted(fx.rects)
    target0, target1, target2 = (tmp_path / fx.targets[k] for k in keys)
    fixtures.save_rgb(target0, fixtures.draw_face(0, 100, 128))         # other size
    target1.write_bytes(b"garbage")                                     # unreadable target
    fixtures.save_rgb(target2, np.asarray(Image.open(tmp_path / keys[2])))  # identical
    source = make_source("paired", data_dir=tmp_path)
    errors = {source.keys[i]: source[i]["error"] for i in range(len(source))}
    assert errors == {keys[0]: "size_mismatch", keys[1]: "target_corrupt",
                      keys[2]: "empty_mask"}


def test_derive_mask_recipe():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    masked = target.copy()
    masked[20:40, 10:50] = 255 - masked[20:40, 10:50]
    masked[2, 2] = 255 - masked[2, 2]  # isolated speck: removed by the opening
    noise = np.clip(target.astype(int) + rng.integers(-8, 9, target.shape), 0, 255)
    assert paired_mod.derive_mask(noise.astype(np.uint8), target).sum() == 0
    mask = paired_mod.derive_mask(masked, target)
    assert _iou(mask, fixtures.rect_mask((64, 64), (10, 20, 50, 40))) > 0.95
    assert mask[2, 2] == 0


# ---------------------------------------------------------------------------------------
# Registry, options, pickling.
# ---------------------------------------------------------------------------------------


def test_registry_names_and_errors(tmp_path):
    assert set(SOURCES) == {"synthetic", "lfw", "celeba", "folder", "paired"}
    with pytest.raises(ValueError, match=r"unknown source 'imagenet'.*celeba.*lfw"):
        make_source("imagenet", data_dir=tmp_path)
    fixtures.write_folder(tmp_path)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\].*identity_from"):
        make_source("folder", data_dir=tmp_path, colour="red")
    with pytest.raises(DatasetNotFoundError, match=r"test_fraction > 0"):
        make_source("folder", data_dir=tmp_path, split="test")
    assert "test_fraction" in source_options("lfw")
    assert "backend" in source_options("celeba")
    assert "masked_dir" in source_options("paired")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no images found under .*empty"):
        make_source("folder", data_dir=tmp_path / "empty")


def test_synthetic_via_registry_uses_disjoint_seed_streams():
    train = make_source("synthetic", split="train", seed=3, resolution=64, num_records=4)
    test = make_source("synthetic", split="test", seed=3, resolution=64, num_records=4)
    a, b = train[0], test[0]
    assert a["image"].shape == (64, 64, 3) and b["image"].shape == (64, 64, 3)
    assert a["key"] != b["key"]
    assert not np.array_equal(a["image"], b["image"])
    with pytest.raises(ValueError, match="data_dir"):
        make_source("synthetic", data_dir="/somewhere")


def _all_sources(tmp_path: Path) -> dict[str, object]:
    fixtures.write_lfw(tmp_path / "lfw")
    fixtures.write_celeba(tmp_path / "celeba", identities=3, per_identity=1,
                          with_landmarks=True)
    fixtures.write_folder(tmp_path / "folder")
    fixtures.write_paired(tmp_path / "paired", count=2)
    return {
        "lfw": make_source("lfw", data_dir=tmp_path / "lfw", split="all", landmarks="none"),
        "celeba": make_source("celeba", data_dir=tmp_path / "celeba", split="all",
                              landmarks="dataset"),
        "folder": make_source("folder", data_dir=tmp_path / "folder", landmarks="template"),
        "paired": make_source("paired", data_dir=tmp_path / "paired"),
    }


def test_sources_pickle_and_give_identical_records(tmp_path):
    for name, source in _all_sources(tmp_path).items():
        clone = pickle.loads(pickle.dumps(source))
        assert len(clone) == len(source) and clone.name == name
        for i in (0, len(source) - 1):
            a, b = source[i], clone[i]
            assert a["key"] == b["key"] and a["error"] == b["error"] == ""
            np.testing.assert_array_equal(a["image"], b["image"])
            if a["landmarks"] is not None:
                np.testing.assert_array_equal(a["landmarks"], b["landmarks"])


def test_dlib_mode_uses_cache_and_reports_no_face(tmp_path, caplog):
    import dlib  # noqa: F401  (the [test] extra installs it: fail, do not skip)
    from data_pipelines.landmarks.cache import LandmarkCache
    root = tmp_path / "faces"
    fixtures.save_rgb(root / "blank1.png", fixtures.blank_image())
    fixtures.save_rgb(root / "blank2.png", fixtures.blank_image(120, 150))
    images_mod._WARNED_SLOW.clear()
    with caplog.at_level(logging.WARNING):
        source = make_source("folder", data_dir=root, landmarks="dlib")
        assert [source[i]["error"] for i in range(2)] == ["no_face", "no_face"]
    warnings = [r for r in caplog.records if "python -m data_pipelines.landmarks" in r.message]
    assert len(warnings) == 1 and "--source=folder" in warnings[0].message
    # With a cache: cached landmarks are used as-is and marked "cache".
    cache = LandmarkCache.open("folder", root)
    points = lm_template.template_landmarks(200, 200)
    cache.put("blank1.png", points)
    cache.put("blank2.png", None)
    cache.save()
    cached = pickle.loads(pickle.dumps(make_source("folder", data_dir=root, landmarks="auto")))
    record = cached[0]
    assert record["error"] == "" and record["landmark_source"] == "cache"
    np.testing.assert_array_equal(record["landmarks"], points)
    assert cached[1]["error"] == "no_face"


def test_mixed_source_joins_parts_with_distinct_keys_and_identities(tmp_path, caplog):
    """``lfw+celeba``: each part reads its own folder under data_dir and takes only its own
    options; keys are prefixed, identities shifted past the earlier parts', and a split one
    part lacks holds the others (with a log line), while a split nobody has still fails."""
    people = fixtures.write_lfw(tmp_path / "lfw")
    fixtures.write_celeba(tmp_path / "celeba", identities=3, per_identity=2,
                          with_landmarks=True)
    lfw = make_source("lfw", data_dir=tmp_path / "lfw", split="all", landmarks="none")
    celeba = make_source("celeba", data_dir=tmp_path / "celeba", split="validation",
                         landmarks="dataset")
    assert "backend" in source_options("lfw+celeba")
    assert "face_box" in source_options("lfw+celeba")
    with caplog.at_level(logging.WARNING):
        mixed = make_source("lfw+celeba", data_dir=tmp_path, split="validation",
                            landmarks="dataset")
    assert "'lfw' has no 'validation' split" in caplog.text
    assert mixed.parts == ("celeba",) and len(mixed) == len(celeba)

    mixed = make_source("celeba+lfw", data_dir=tmp_path, split="all", landmarks="none",
                        test_fraction=0.5)
    assert mixed.name == "celeba+lfw" and len(mixed) == len(lfw) + 6
    celeba_all = mixed.sources[0]
    n_celeba = len(celeba_all)
    offset = int(celeba_all.identities.max()) + 1
    for i in range(len(mixed)):
        record = mixed[i]
        assert record["index"] == i and record["error"] == ""
        part, inner = (celeba_all, i) if i < n_celeba else (lfw, i - n_celeba)
        own = part[inner]
        assert record["key"] == ("celeba:" if i < n_celeba else "lfw:") + own["key"]
        np.testing.assert_array_equal(record["image"], own["image"])
        shift = 0 if i < n_celeba else offset
        assert record["identity"] == own["identity"] + shift == mixed.identities[i]
        assert i in mixed.identity_indices(record["identity"])
    assert mixed.num_identities == len(set(people)) + len(set(celeba_all.identities))
    clone = pickle.loads(pickle.dumps(mixed))
    np.testing.assert_array_equal(clone[len(mixed) - 1]["image"], mixed[len(mixed) - 1]["image"])

    with pytest.raises(ValueError, match=r"unknown source 'lfw\+imagenet'.*joined with '\+'"):
        make_source("lfw+imagenet", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown source 'lfw\+lfw'"):
        make_source("lfw+lfw", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        make_source("lfw+celeba", data_dir=tmp_path, colour="red")
    with pytest.raises(ValueError, match=r"unknown split 'holdout'"):
        make_source("lfw+celeba", data_dir=tmp_path, split="holdout")
