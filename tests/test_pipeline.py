"""Tests for the Grain pipeline (data_pipelines.pipeline), the framing helpers it uses
(data_pipelines.align) and the preview tool. Pipeline level only: masks, landmark templates
and the source loaders have their own test files. All data is generated (synthetic source or
tests/fixtures.py writers); resolutions 64-128."""
from __future__ import annotations

import logging

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from data_pipelines import align, masks, pipeline, preview, subsets
from data_pipelines.sources import make_source
from data_pipelines.sources.base import DatasetNotFoundError
from tests import fixtures

KEYS = ("masked", "target", "mask", "index", "identity_id")


def synthetic_cfg(**overrides) -> pipeline.DataConfig:
    d = dict(source="synthetic", resolution=64, seed=0,
             source_options={"num_records": 8, "images_per_identity": 4})
    d.update(overrides)
    return pipeline.DataConfig.from_dict(d)


def take(ds, n: int | None = None) -> list[dict[str, np.ndarray]]:
    it = iter(ds)
    out = [b for _, b in zip(range(n), it)] if n is not None else list(it)
    if hasattr(it, "close"):
        it.close()
    return out


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
            assert x[k].tobytes() == y[k].tobytes(), k


def to_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def eval_frame(record: dict, cfg: pipeline.DataConfig):
    """What the eval pipeline should produce for a record's target: the face box framed at
    the resolution, no crop, no flip (computed independently from align)."""
    box = align.face_box(record["landmarks"], cfg.face_scale)
    return align.crop_and_resize(record["image"], record["landmarks"], box, cfg.resolution)


# ---------------------------------------------------------------------------------------
# Determinism.
# ---------------------------------------------------------------------------------------


def test_same_seed_identical_batches_different_seed_differs():
    cfg = synthetic_cfg()
    a = take(pipeline.train_dataset(cfg, batch_size=4), 3)
    b = take(pipeline.train_dataset(cfg, batch_size=4), 3)
    assert_batches_equal(a, b)
    c = take(pipeline.train_dataset(synthetic_cfg(seed=1), batch_size=4), 3)
    assert any(not np.array_equal(x["masked"], y["masked"]) for x, y in zip(a, c))


def test_second_epoch_same_faces_new_masks():
    cfg = synthetic_cfg()
    batches = take(pipeline.train_dataset(cfg, batch_size=4, num_epochs=2))
    assert len(batches) == 4
    first = {int(i): (b["mask"][k], b["masked"][k])
             for b in batches[:2] for k, i in enumerate(b["index"])}
    second = {int(i): (b["mask"][k], b["masked"][k])
              for b in batches[2:] for k, i in enumerate(b["index"])}
    assert sorted(first) == sorted(second) == list(range(8))
    for i in first:
        assert not np.array_equal(first[i][0], second[i][0]), f"record {i}: same mask map"
    # Shuffled anew each epoch.
    order = [tuple(b["index"]) for b in batches]
    assert order[:2] != order[2:]


@pytest.mark.slow
def test_worker_processes_give_the_same_batches():
    cfg = synthetic_cfg()
    serial = take(pipeline.train_dataset(cfg, batch_size=4, num_epochs=1))
    parallel = take(pipeline.train_dataset(synthetic_cfg(num_workers=2), batch_size=4,
                                           num_epochs=1))
    assert len(serial) == 2
    assert_batches_equal(serial, parallel)


# ---------------------------------------------------------------------------------------
# Batch contents.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [64, 96, 128])
def test_batch_shapes_dtypes_ranges_and_mask_exactness(resolution):
    cfg = synthetic_cfg(resolution=resolution)  # train: jitter crop + flip are on
    for batch in take(pipeline.train_dataset(cfg, batch_size=3), 2):
        assert sorted(batch) == sorted(KEYS)
        n, r = 3, resolution
        for key in ("masked", "target"):
            assert batch[key].shape == (n, r, r, 3) and batch[key].dtype == np.float32
            assert batch[key].min() >= -1.0 and batch[key].max() <= 1.0
        assert batch["mask"].shape == (n, r, r, 1) and batch["mask"].dtype == np.float32
        assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
        assert batch["index"].dtype == np.int64 and batch["identity_id"].dtype == np.int64
        np.testing.assert_array_equal(batch["identity_id"], batch["index"] // 4)
        outside = np.broadcast_to(batch["mask"] == 0, batch["masked"].shape)
        np.testing.assert_array_equal(batch["masked"][outside], batch["target"][outside])
        for k in range(n):
            inside = batch["mask"][k, ..., 0] == 1
            assert inside.mean() > 0.03, "mask map nearly empty"
            assert np.any(batch["masked"][k][inside] != batch["target"][k][inside])


@pytest.mark.parametrize("mask_type", masks.MASK_TYPES)
def test_every_mask_type_renders_through_the_pipeline(mask_type):
    cfg = synthetic_cfg(mask={"types": (mask_type,)})
    (batch,) = take(pipeline.train_dataset(cfg, batch_size=4), 1)
    coverage = batch["mask"].mean(axis=(1, 2, 3))
    assert np.all(coverage > 0.03), coverage
    assert np.all(np.abs(batch["masked"] - batch["target"]).sum(axis=(1, 2, 3)) > 0)


def _check_placement(batch: dict, source, cfg: pipeline.DataConfig) -> None:
    for k, i in enumerate(batch["index"]):
        target, lm = eval_frame(source[int(i)], cfg)
        np.testing.assert_array_equal(batch["target"][k], to_unit(target))
        ys, xs = np.nonzero(batch["mask"][k, ..., 0])
        assert len(ys) > 0
        eye_line = lm[36:48, 1].mean()
        chin = lm[8, 1]
        assert eye_line < ys.mean() < chin, (int(i), eye_line, ys.mean(), chin)
        assert lm[0, 0] < xs.mean() < lm[16, 0]  # between the jaw ends


def test_mask_placement_synthetic():
    cfg = synthetic_cfg(resolution=96)
    source = pipeline.build_source(cfg, cfg.eval_split)
    for batch in take(pipeline.eval_dataset(cfg, batch_size=4, num_images=8, source=source)):
        _check_placement(batch, source, cfg)


def test_celeba_through_pipeline_with_fitted_five_points_and_template(tmp_path):
    fx = fixtures.write_celeba(tmp_path / "celeba", identities=4, per_identity=2,
                               with_landmarks=True)
    for mode in ("dataset", "template"):
        cfg = pipeline.DataConfig.from_dict(dict(
            source="celeba", data_dir=str(fx.root), resolution=64,
            source_options={"landmarks": mode}, train_split="all", eval_split="all"))
        source = pipeline.build_source(cfg, "all")
        ds = pipeline.train_dataset(cfg, batch_size=2, num_epochs=1)
        batches = take(ds)
        assert len(batches) == len(fx.files) // 2 and not ds.skip_counter.counts
        ids = np.concatenate([b["identity_id"] for b in batches])
        assert set(ids.tolist()) == {1000, 1001, 1002, 1003}
        # The 5 -> 68 fit puts the mask between the eyes and the chin of the fitted shape.
        for batch in take(pipeline.eval_dataset(cfg, batch_size=4, num_images=4,
                                                source=source)):
            _check_placement(batch, source, cfg)


# ---------------------------------------------------------------------------------------
# Framing (align): pixels and landmarks move together; one resampling does crop and flip.
# ---------------------------------------------------------------------------------------


def _ramp_image(h: int = 120, w: int = 110) -> np.ndarray:
    """Channel 0 = 2x, channel 1 = 2y: bilinear/area resampling reproduces it (+-1)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([2 * xx, 2 * yy, np.full_like(xx, 77)], axis=2).astype(np.uint8)


@pytest.mark.parametrize("box,size", [
    ((50.3, 61.7, 70.4), 96),     # upscale
    ((55.0, 60.0, 100.6), 90),    # mild downscale (bilinear)
    ((54.2, 59.9, 104.0), 48),    # strong downscale (area averaging)
    ((20.0, 100.0, 60.0), 64),    # partly outside the image (edge replication)
])
def test_crop_and_resize_moves_pixels_and_landmarks_together(box, size):
    image = _ramp_image()
    corners = np.float32([[0, 0], [100, 0], [0, 100], [37.5, 81.25]])
    out, lm = align.crop_and_resize(image, corners, box, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    # Landmarks map by one axis-aligned scale + shift; invert it for every output pixel.
    scale = (lm[1, 0] - lm[0, 0]) / 100.0
    assert abs((lm[2, 1] - lm[0, 1]) / 100.0 - scale) < 1e-4
    assert abs(scale - size / box[2]) < 0.02 * scale  # the box side, up to whole pixels
    np.testing.assert_allclose(lm[3], lm[0] + scale * corners[3], atol=1e-3)
    jj, ii = np.meshgrid(np.arange(size), np.arange(size))
    src_x = (jj - lm[0, 0]) / scale
    src_y = (ii - lm[0, 1]) / scale
    h, w = image.shape[:2]
    inside = (src_x > 1) & (src_x < w - 2) & (src_y > 1) & (src_y < h - 2)
    assert inside.any()
    assert np.abs(out[..., 0][inside] - 2 * src_x[inside]).max() <= 0.9
    assert np.abs(out[..., 1][inside] - 2 * src_y[inside]).max() <= 0.9
    left = src_x < -1  # outside the image: the edge column is replicated
    if left.any():
        assert out[..., 0][left].max() <= 1
    # flip: the mirrored image, mirrored landmark positions.
    flipped, lm_flip = align.crop_and_resize(image, corners, box, size, flip=True)
    np.testing.assert_array_equal(flipped, out[:, ::-1])
    np.testing.assert_allclose(lm_flip[:, 0], size - 1 - lm[:, 0], atol=1e-4)
    np.testing.assert_allclose(lm_flip[:, 1], lm[:, 1], atol=1e-4)


def test_window_box_equals_crop_of_the_full_frame_and_relabels_flips():
    source = make_source("synthetic", resolution=128, num_records=2)
    record = source[1]
    box = align.face_box(record["landmarks"], 1.7)
    full, size, y, x = 143, 128, 9, 4
    framed, lm_full = align.crop_and_resize(record["image"], record["landmarks"], box, full)
    win = align.window_box(box, full, size, y, x)
    assert abs(win[2] * full / size - box[2]) < 1e-6  # same scale as the full frame
    direct, lm = align.crop_and_resize(record["image"], record["landmarks"], win, size)
    # Same framing up to whole-pixel snapping of each box (< 1 px at this scale).
    assert np.abs(lm - (lm_full - np.float32([x, y]))).max() < 1.2
    crop = framed[y:y + size, x:x + size].astype(np.float32)
    assert np.abs(direct.astype(np.float32) - crop).mean() < 3.5
    _, lm_flip = align.crop_and_resize(record["image"], record["landmarks"], win, size,
                                       flip=True)
    relabelled = align.mirror_landmark_order(lm_flip)
    # After re-labelling, landmark 36 (outer corner of the image-left eye) is again left.
    assert relabelled[36, 0] < relabelled[45, 0] and relabelled[0, 0] < relabelled[16, 0]
    np.testing.assert_allclose(relabelled[8], lm_flip[8])  # the chin maps to itself


# ---------------------------------------------------------------------------------------
# Sharding, identity images, evaluation.
# ---------------------------------------------------------------------------------------


def test_process_shards_are_disjoint_and_cover_the_source():
    cfg = synthetic_cfg(source_options={"num_records": 10})
    shards = []
    for pid in range(2):
        batches = take(pipeline.train_dataset(cfg, batch_size=1, process_index=pid,
                                              process_count=2, num_epochs=1))
        shards.append(sorted(int(b["index"][0]) for b in batches))
    assert len(shards[0]) == len(shards[1]) == 5
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_global_batches_are_the_same_examples_for_any_process_count():
    """Records, masks, crops and flips of a global batch do not depend on the process count
    (one global stream dealt out by position), so runs on different topologies agree."""
    cfg = synthetic_cfg(source_options={"num_records": 12})

    def examples(batches):
        return sorted((int(i), m.tobytes()) for b in batches
                      for i, m in zip(b["index"], b["masked"]))

    one = take(pipeline.train_dataset(cfg, batch_size=4), 5)
    two = [take(pipeline.train_dataset(cfg, batch_size=2, process_index=p, process_count=2), 5)
           for p in range(2)]
    for step in range(5):
        assert examples([one[step]]) == examples([two[0][step], two[1][step]])


def test_identity_image_is_another_image_of_the_same_person():
    cfg = synthetic_cfg(identity_image=True, source_options={"num_records": 8,
                                                             "images_per_identity": 2})
    source = pipeline.build_source(cfg, cfg.eval_split)
    (batch,) = take(pipeline.eval_dataset(cfg, batch_size=8, num_images=8, source=source))
    assert batch["identity"].shape == batch["target"].shape
    assert batch["identity"].dtype == np.float32
    for k, i in enumerate(batch["index"]):
        i = int(i)
        assert batch["identity_id"][k] == i // 2
        assert not np.array_equal(batch["identity"][k], batch["target"][k])
        other = i ^ 1  # the only other image of this person
        expected, _ = eval_frame(source[other], cfg)
        np.testing.assert_array_equal(batch["identity"][k], to_unit(expected))
    # Training: present too, never the target itself.
    (train,) = take(pipeline.train_dataset(cfg, batch_size=4), 1)
    for k in range(4):
        assert not np.array_equal(train["identity"][k], train["target"][k])


def test_identity_image_skips_and_counts_people_with_one_image(tmp_path, caplog):
    people = fixtures.write_lfw(tmp_path / "lfw", size=96)  # Alice has a single image
    cfg = pipeline.DataConfig.from_dict(dict(
        source="lfw", data_dir=str(tmp_path / "lfw"), resolution=64, identity_image=True,
        train_split="all", source_options={"landmarks": "template"}))
    source = pipeline.build_source(cfg, "all")
    alice = int(source.identity_indices(source.people.index("Alice_Aardvark"))[0])
    ds = pipeline.train_dataset(cfg, batch_size=2, num_epochs=1, source=source)
    with caplog.at_level(logging.INFO, logger="data_pipelines.pipeline"):
        batches = take(ds)
    assert len(batches) == (sum(people.values()) - 1) // 2
    seen = np.concatenate([b["index"] for b in batches])
    assert alice not in seen.tolist()
    assert dict(ds.skip_counter.counts) == {"no_other_identity_image": 1}
    assert any("no_other_identity_image" in r.getMessage() for r in caplog.records)


def test_eval_dataset_deterministic_unaugmented_with_partial_last_batch():
    cfg = synthetic_cfg()
    source = pipeline.build_source(cfg, cfg.eval_split)
    a = take(pipeline.eval_dataset(cfg, batch_size=2, num_images=5, source=source))
    b = take(pipeline.eval_dataset(cfg, batch_size=2, num_images=5, source=source))
    assert [len(x["index"]) for x in a] == [2, 2, 1]
    assert_batches_equal(a, b)
    # Spread over the two identities (records 0-3 and 4-7), not the first five records.
    chosen = np.concatenate([x["index"] for x in a]).tolist()
    assert chosen == subsets.spread_order(np.arange(8) // 4, 5).tolist()
    ids = np.concatenate([x["identity_id"] for x in a])
    assert sorted(np.bincount(ids).tolist()) == [2, 3]
    for batch in a:  # no crop, no flip: exactly the framed record
        for k, i in enumerate(batch["index"]):
            expected, _ = eval_frame(source[int(i)], cfg)
            np.testing.assert_array_equal(batch["target"][k], to_unit(expected))
    # Eval masks do not depend on the batch size.
    c = take(pipeline.eval_dataset(cfg, batch_size=5, num_images=5, source=source))
    np.testing.assert_array_equal(np.concatenate([x["mask"] for x in a]), c[0]["mask"])


def test_paired_source_uses_the_stored_mask_map(tmp_path):
    fx = fixtures.write_paired(tmp_path / "pairs", count=3, size=128)
    cfg = pipeline.DataConfig.from_dict(dict(source="paired", data_dir=str(fx.root),
                                             resolution=64, framing="center"))
    source = pipeline.build_source(cfg, "train")
    (batch,) = take(pipeline.eval_dataset(cfg, batch_size=4, num_images=4, source=source))
    assert len(batch["index"]) == 3
    for k, i in enumerate(batch["index"]):
        rect = fx.rects[source.keys[int(i)]]
        x0, y0, x1, y1 = (v / 2 for v in rect)  # 128 -> 64
        m = batch["mask"][k, ..., 0]
        expected = np.zeros_like(m)
        expected[int(np.ceil(y0)):int(y1), int(np.ceil(x0)):int(x1)] = 1
        assert np.mean(m != expected) < 0.02


# ---------------------------------------------------------------------------------------
# Bad input and start-up errors.
# ---------------------------------------------------------------------------------------


def test_bad_files_are_skipped_counted_and_summarised(tmp_path, caplog):
    expect = fixtures.write_bad_images(tmp_path / "bad")
    cfg = pipeline.DataConfig.from_dict(dict(
        source="folder", data_dir=str(tmp_path / "bad"), resolution=64,
        source_options={"landmarks": "template"}))
    ds = pipeline.train_dataset(cfg, batch_size=2, num_epochs=2)
    with caplog.at_level(logging.INFO, logger="data_pipelines.pipeline"):
        batches = take(ds)  # never raises
    bad = {k: v for k, v in expect.items() if v not in ("ok", "converted")}
    good = len(expect) - len(bad)
    assert len(batches) == 2 * good // 2
    want = {}
    for reason in bad.values():
        want[reason] = want.get(reason, 0) + 2  # two epochs
    assert dict(ds.skip_counter.counts) == want
    summaries = [r for r in caplog.records if r.levelno == logging.WARNING
                 and f"skipped {len(bad)} of {len(expect)} records" in r.getMessage()]
    assert len(summaries) == 2  # one per epoch
    assert "epoch 1" in summaries[0].getMessage() and "epoch 2" in summaries[1].getMessage()
    for batch in batches:
        assert np.isfinite(batch["masked"]).all()


def test_epoch_with_no_usable_record_stops_with_a_message(tmp_path):
    fixtures.write_folder(tmp_path / "faces")
    cfg = pipeline.DataConfig.from_dict(dict(
        source="folder", data_dir=str(tmp_path / "faces"), resolution=64,
        source_options={"landmarks": "none"}))  # landmark framing but no landmarks
    it = iter(pipeline.train_dataset(cfg, batch_size=2))
    with pytest.raises(RuntimeError, match=r"all 5 records were skipped.*no_landmarks"):
        next(it)


def test_missing_or_empty_dataset_and_unknown_source_fail_at_construction(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError, match="nope"):
        pipeline.train_dataset(pipeline.DataConfig(source="lfw", data_dir=str(missing)),
                               batch_size=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"expected .*Name"):
        pipeline.train_dataset(pipeline.DataConfig(source="lfw",
                                                   data_dir=str(tmp_path / "empty")),
                               batch_size=2)
    with pytest.raises(ValueError, match=r"unknown source 'nosuch'.*synthetic"):
        pipeline.train_dataset(pipeline.DataConfig(source="nosuch"), batch_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        pipeline.train_dataset(synthetic_cfg(), batch_size=16)


# ---------------------------------------------------------------------------------------
# Iterator state.
# ---------------------------------------------------------------------------------------


def test_iterator_state_restores_the_stream(tmp_path, caplog):
    cfg = synthetic_cfg()
    ds = pipeline.train_dataset(cfg, batch_size=4)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]

    it2 = iter(pipeline.train_dataset(cfg, batch_size=4))
    it2.set_state(state)
    assert_batches_equal([next(it2) for _ in range(2)], expected)

    # Orbax round trip of the iterator position.
    it3 = iter(pipeline.train_dataset(cfg, batch_size=4))
    for _ in range(3):
        next(it3)
    checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    checkpointer.save(tmp_path / "data", args=grain.checkpoint.CheckpointSave(it3))
    ds4 = pipeline.train_dataset(cfg, batch_size=4)
    it4 = iter(ds4)
    checkpointer.restore(tmp_path / "data", args=grain.checkpoint.CheckpointRestore(it4))
    with caplog.at_level(logging.INFO, logger="data_pipelines.pipeline"):
        assert_batches_equal([next(it4) for _ in range(2)], expected)
    # The epoch summary after the restore covers the records since the restore (12 -> 16).
    msgs = [r.getMessage() for r in caplog.records]
    assert any("epoch 2" in m and "the last 4 since the iterator was restored" in m
               for m in msgs), msgs


# ---------------------------------------------------------------------------------------
# Preview tool.
# ---------------------------------------------------------------------------------------


def test_preview_is_byte_identical_and_has_the_grid_layout(tmp_path):
    args = ["--source=synthetic", "--resolution=64", "--num=5", "--seed=3", "--identity",
            "--source_option", "num_records=16", "--source_option", "images_per_identity=4",
            "--mask_types=surgical,n95"]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert preview.main([*args, f"--out={a}"]) == 0
    assert preview.main([*args, f"--out={b}"]) == 0
    assert a.read_bytes() == b.read_bytes()
    grid = np.asarray(Image.open(a))
    cols = 3  # ceil(sqrt(5)) strips per row, 2 rows; a strip = 4 tiles of 64 px
    strip_w = 4 * 64 + 3 * preview.TILE_GAP
    assert grid.shape == (2 * 64 + preview.GAP, cols * strip_w + (cols - 1) * preview.GAP, 3)
    mask_tile = grid[:64, 64 + preview.TILE_GAP:2 * 64 + preview.TILE_GAP]
    assert set(np.unique(mask_tile)) <= {0, 255} and mask_tile.max() == 255
    c = tmp_path / "c.png"
    preview.main([*args[:3], "--seed=4", *args[4:], f"--out={c}"])
    assert c.read_bytes() != a.read_bytes()


def test_preview_option_parsing():
    assert preview.parse_option("landmarks=template") == ("landmarks", "template")
    assert preview.parse_option("num_records=64") == ("num_records", 64)
    assert preview.parse_option("face_box=(0.2, 0.3, 0.8, 0.9)") == (
        "face_box", (0.2, 0.3, 0.8, 0.9))
    with pytest.raises(ValueError, match="key=value"):
        preview.parse_option("landmarks")


def test_preview_reports_data_errors_without_a_traceback(tmp_path, capsys):
    fixtures.write_celeba(tmp_path / "celeba", identities=2, per_identity=1)  # no test split
    code = preview.main(["--source=celeba", f"--data_dir={tmp_path / 'celeba'}", "--num=2",
                         "--split=test", f"--out={tmp_path / 'x.png'}"])
    err = capsys.readouterr().err
    assert code == 2 and "split 'test'" in err and "validation" in err
    assert not (tmp_path / "x.png").exists()
    assert preview.main(["--source=celeba", f"--data_dir={tmp_path / 'celeba'}", "--num=1",
                         "--split=validation", "--resolution=64",
                         f"--out={tmp_path / 'v.png'}"]) == 0
