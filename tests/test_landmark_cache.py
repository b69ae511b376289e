"""Tests for the landmark cache, dlib detection (no-face path) and the precompute command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.landmarks import __main__ as precompute_cli
from data_pipelines.landmarks import cache as cache_mod
from data_pipelines.landmarks.cache import MISSING, LandmarkCache
from tests import fixtures

REPO = Path(__file__).resolve().parents[1]


def _points(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 200, (68, 2)).astype(np.float32)


def test_put_get_save_reopen(tmp_path):
    cache = LandmarkCache.open("folder", tmp_path)
    assert len(cache) == 0 and cache.get("a.jpg") is MISSING
    assert cache.path == tmp_path / "landmarks_folder.npz"  # next to writable data
    cache.put_many([("a.jpg", _points(0)), ("b.jpg", None)])
    assert cache.get("b.jpg") is None and "b.jpg" in cache
    np.testing.assert_array_equal(cache.get("a.jpg"), _points(0))
    assert not LandmarkCache.exists("folder", tmp_path)
    cache.save()
    assert LandmarkCache.exists("folder", tmp_path)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file
    again = LandmarkCache.open("folder", tmp_path)
    assert len(again) == 2 and again.num_faces == 1 and again.num_no_face == 1
    assert again.get("b.jpg") is None and again.get("c.jpg") is MISSING
    got = again.get("a.jpg")
    np.testing.assert_array_equal(got, _points(0))
    assert got.dtype == np.float32 and got.shape == (68, 2)
    got[:] = 0  # a copy: the cache is not modified through it
    np.testing.assert_array_equal(again.get("a.jpg"), _points(0))


def test_resume_appends_to_existing_cache(tmp_path):
    first = LandmarkCache.open("lfw", tmp_path)
    first.put("A/A_0001.jpg", _points(1))
    first.save()
    second = LandmarkCache.open("lfw", tmp_path)
    second.put("B/B_0001.jpg", None)
    second.put("A/A_0001.jpg", _points(2))  # re-detection overwrites
    second.save()
    final = LandmarkCache.open("lfw", tmp_path)
    assert sorted(final.keys()) == ["A/A_0001.jpg", "B/B_0001.jpg"]
    np.testing.assert_array_equal(final.get("A/A_0001.jpg"), _points(2))


def test_shards_merge_into_main_file(tmp_path):
    base = LandmarkCache.open("celeba", tmp_path)
    base.put("x", _points(3))
    base.save()
    for index, key in enumerate(["s0", "s1"]):
        shard = LandmarkCache.open("celeba", tmp_path, shard=(index, 2))
        shard.put(key, _points(10 + index) if index == 0 else None)
        assert shard.save().name == f"landmarks_celeba.shard-{index}-of-2.npz"
    shard_files = sorted(p.name for p in tmp_path.glob("landmarks_celeba.shard-*"))
    assert len(shard_files) == 2
    merged = LandmarkCache.open("celeba", tmp_path)
    assert sorted(merged.keys()) == ["s0", "s1", "x"] and merged.dirty
    merged.save()
    assert not list(tmp_path.glob("landmarks_celeba.shard-*"))
    reopened = LandmarkCache.open("celeba", tmp_path)
    np.testing.assert_array_equal(reopened.get("s0"), _points(10))
    assert reopened.get("s1") is None and len(reopened) == 3
    with pytest.raises(ValueError, match="shard"):
        LandmarkCache.open("celeba", tmp_path, shard=(2, 2))


def test_location_read_only_data_and_explicit_cache_dir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("UNMASK_JAX_CACHE", str(tmp_path / "home_cache"))
    monkeypatch.setattr(cache_mod, "_is_writable_dir", lambda path: False)
    digest = cache_mod.data_dir_hash(data)
    expected = tmp_path / "home_cache" / "landmarks" / digest / "landmarks_lfw.npz"
    cache = LandmarkCache.open("lfw", data)
    assert cache.path == expected
    cache.put("k", None)
    cache.save()
    assert expected.is_file() and not (data / "landmarks_lfw.npz").exists()
    assert LandmarkCache.open("lfw", data).get("k") is None
    explicit = LandmarkCache.open("lfw", data, cache_dir=tmp_path / "mine")
    assert explicit.path == tmp_path / "mine" / digest / "landmarks_lfw.npz"
    assert len(explicit) == 0
    assert cache_mod.data_dir_hash(data) != cache_mod.data_dir_hash(tmp_path)


def test_put_validates_shape(tmp_path):
    cache = LandmarkCache.open("folder", tmp_path)
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        cache.put("bad", np.zeros((5, 2)))
    with pytest.raises(ValueError, match="finite"):
        cache.put("nan", np.full((68, 2), np.nan))
    with pytest.raises(ValueError, match="source name"):
        LandmarkCache.open("a/b", tmp_path)


# ---------------------------------------------------------------------------------------
# Detection and the precompute command (dlib needed).
# ---------------------------------------------------------------------------------------


def test_detect_returns_none_without_a_face():
    import dlib  # noqa: F401  (the [test] extra installs it: fail, do not skip)
    from data_pipelines.landmarks.detect import detect_landmarks
    assert detect_landmarks(fixtures.blank_image()) is None
    assert detect_landmarks(np.zeros((80, 80), np.uint8)) is None
    with pytest.raises(ValueError, match="uint8"):
        detect_landmarks(np.zeros((80, 80, 3), np.float32))


def test_missing_dlib_error_names_the_extra(monkeypatch):
    from data_pipelines.landmarks import detect
    monkeypatch.setattr(detect.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(detect.LandmarkDetectorUnavailable, match=r"unmask-jax\[landmarks\]"):
        detect.check_available()


def _blank_folder(root: Path, count: int) -> list[str]:
    names = [f"img{k}.png" for k in range(count)]
    for k, name in enumerate(names):
        fixtures.save_rgb(root / name, fixtures.blank_image(100 + 10 * k, 120))
    (root / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return names


def test_precompute_records_no_face_and_resumes(tmp_path):
    import dlib  # noqa: F401  (the [test] extra installs it: fail, do not skip)
    names = _blank_folder(tmp_path, 4)
    first = precompute_cli.precompute("folder", str(tmp_path), workers=1, limit=2,
                                      save_every=1, verbose=False)
    assert first["processed"] == 2 and first["no_face"] == 2 and first["faces"] == 0
    assert first["already_cached"] == 0
    assert len(LandmarkCache.open("folder", tmp_path)) == 2
    second = precompute_cli.precompute("folder", str(tmp_path), workers=1, verbose=False)
    assert second["already_cached"] == 2
    assert second["processed"] == 3 and second["no_face"] == 2
    assert second["errors"] == 1 and second["error_reasons"] == {"corrupt": 1}
    cache = LandmarkCache.open("folder", tmp_path)
    assert sorted(cache.keys()) == sorted(names)
    assert all(cache.get(n) is None for n in names)
    assert "zz_broken.jpg" not in cache  # decode failures are retried, not cached


@pytest.mark.slow
def test_precompute_command_line_with_worker_pool(tmp_path):
    import dlib  # noqa: F401  (the [test] extra installs it: fail, do not skip)
    names = _blank_folder(tmp_path / "data", 3)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "data_pipelines.landmarks", "--source=folder",
         f"--data_dir={tmp_path / 'data'}", "--workers=2",
         f"--cache_dir={tmp_path / 'cache'}", "--option", "min_size=32"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no face 3" in result.stdout and "images/s" in result.stdout
    cache = LandmarkCache.open("folder", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert sorted(cache.keys()) == names and cache.num_no_face == 3
    assert not (tmp_path / "data" / "landmarks_folder.npz").exists()


def test_precompute_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="synthetic"):
        precompute_cli.precompute("synthetic", str(tmp_path), verbose=False)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        precompute_cli.parse_options(["oops"])
    assert precompute_cli.parse_options(["min_size=32", "masked_dir=m"]) == {
        "min_size": 32, "masked_dir": "m"}
