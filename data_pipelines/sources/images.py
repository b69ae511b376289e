"""Shared machinery of the file-backed face sources (lfw, celeba, folder, paired).

* ``decode_image`` -- one image file to uint8 RGB, never raising: bad files give a reason
  ("missing", "corrupt", "too_small", "too_large"); EXIF orientation is applied; grayscale,
  palette, CMYK, 16-bit and alpha images are converted (alpha composited over black) and
  flagged ``converted``.
* ``list_images`` -- sorted relative paths of the image files under a folder.
* Landmark strategies chosen by a source's ``landmarks=`` option: ``NoLandmarks``
  ("none": the record carries None and the pipeline decides), ``TemplateLandmarks``
  ("template": a fixed aligned-crop template) and ``DlibLandmarks`` ("dlib": the
  precomputed cache, else detection on the fly).
* ``ImageFileSource`` -- the random-access, picklable base class that turns files into
  ``Record`` dicts. Records carry one field beyond base.py's contract: ``converted`` (bool,
  the file was not plain 8-bit RGB and was converted).

Real sources return images at their native size; cropping/resizing to the model resolution
is the pipeline's job (it must move the landmarks with the pixels).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from data_pipelines.landmarks import template as lm_template
from data_pipelines.sources.base import (DatasetNotFoundError, EmptySplitError, Record,
                                         UnknownSplitError, error_record)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_MIN_SIZE = 64
_EXIF_ORIENTATION = 0x0112
# Where PIL keeps a file's raw EXIF (JPEG/WebP/PNG eXIf chunk; PNG text-chunk variant).
_EXIF_INFO_KEYS: tuple[str, ...] = ("exif", "Raw profile type exif")

# ---------------------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Result of ``decode_image``: ``image`` is None exactly when ``error`` is set."""

    image: np.ndarray | None
    error: str = ""
    converted: bool = False


def _alpha_over_black(img: Image.Image) -> np.ndarray:
    rgba = np.asarray(img.convert("RGBA")).astype(np.uint16)
    rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
    return rgb.astype(np.uint8)


def _high_depth_to_rgb(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3]
    peak = float(arr.max()) if arr.size else 0.0
    if peak > 255.0:  # 16-bit data: rescale to 8 bits.
        arr = arr / 257.0
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def to_rgb_array(img: Image.Image) -> tuple[np.ndarray, bool]:
    """(uint8 (H, W, 3) RGB array, whether a conversion from another mode happened)."""
    mode = img.mode
    if mode == "RGB":
        # asarray + copy is ~3x faster than np.array(img) and gives a writable array.
        return np.asarray(img).copy(), False
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info)
    if has_alpha:
        return _alpha_over_black(img), True
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _high_depth_to_rgb(img), True
    return np.asarray(img.convert("RGB")).copy(), True


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    if not any(k in img.info for k in _EXIF_INFO_KEYS):
        return img  # no EXIF block: skip parsing (saves ~0.2 ms per image)
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # pylint: disable=broad-except  # malformed EXIF: ignore it
        return img
    if orientation in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def decode_image(path: str | os.PathLike[str], min_size: int = DEFAULT_MIN_SIZE) -> Decoded:
    """Decode one image file to uint8 RGB (H, W, 3) without raising.

    Errors: "missing" (no such file), "corrupt" (unreadable or truncated), "too_large"
    (PIL's decompression-bomb limit), "too_small" (shorter side < ``min_size``).
    """
    try:
        with Image.open(path) as img:
            img.load()
            oriented = _apply_exif_orientation(img)
            image, converted = to_rgb_array(oriented)
    except FileNotFoundError:
        return Decoded(None, "missing")
    except Image.DecompressionBombError:
        return Decoded(None, "too_large")
    except Exception:  # pylint: disable=broad-except  # decoders raise many types
        return Decoded(None, "corrupt")
    if image.ndim != 3 or image.shape[2] != 3:
        return Decoded(None, "corrupt")
    if min(image.shape[:2]) < min_size:
        return Decoded(None, "too_small")
    return Decoded(np.ascontiguousarray(image), "", converted)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_images(root: Path, recursive: bool = True,
                skip_dirs: Sequence[str] = ()) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of the image files under ``root``.
    Hidden files/folders and top-level folders named in ``skip_dirs`` are ignored."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (
            rel_dir == "." and d in skip_dirs))
        if not recursive:
            dirnames[:] = []
        for name in filenames:
            if is_image_file(name):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                found.append(Path(rel).as_posix())
    return sorted(found)


def in_test_split(name: str, test_fraction: float) -> bool:
    """Deterministic hash split: True when ``name`` falls in the test fraction. Uses the
    first 8 bytes of sha256(name) as an unsigned integer / 2**64 < ``test_fraction``, so a
    name's side never depends on what else is in the dataset (or on PYTHONHASHSEED)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


def check_split(source: str, split: str, test_fraction: float) -> None:
    """Validate a hash-split request ("train" | "test" | "all")."""
    if split not in ("train", "test", "all"):
        raise UnknownSplitError(
            f"{source}: unknown split {split!r}; choose 'train', 'test' or 'all'")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"{source}: test_fraction must be in [0, 1], got {test_fraction}")


def split_hint(test_fraction: float) -> str:
    """Suffix for "split is empty" errors."""
    if test_fraction <= 0.0:
        return " (no test split: set the option test_fraction > 0, or use split='all')"
    return ""


def empty_split_error(source: str, split: str, test_fraction: float, where: str
                      ) -> EmptySplitError:
    """The error of a hash split that came out empty (``EmptySplitError``; its
    ``split_option`` is "test_fraction")."""
    available = ("test", "all") if split == "train" else ("train", "all")
    return EmptySplitError(
        f"{source}: split {split!r} (test_fraction={test_fraction}) is empty {where}"
        f"{split_hint(test_fraction)}", split=split, available=available,
        split_option="test_fraction")


def keep_for_split(name: str, split: str, test_fraction: float) -> bool:
    return split == "all" or in_test_split(name, test_fraction) == (split == "test")


def require_dir(source: str, data_dir: str | os.PathLike[str] | None, expected: str) -> Path:
    """``data_dir`` as a Path, or ``DatasetNotFoundError`` saying what was expected."""
    if data_dir is None or os.fspath(data_dir) == "":
        raise DatasetNotFoundError(f"{source}: data_dir is required; expected {expected}")
    path = Path(os.path.expanduser(os.fspath(data_dir)))
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{source}: data directory {path} does not exist or is not a directory; "
            f"expected {expected}")
    return path


# ---------------------------------------------------------------------------------------
# Landmark strategies (picklable callables: (index, key, image) -> (lm, source, error)).
# ---------------------------------------------------------------------------------------

LandmarkResult = tuple[np.ndarray | None, str, str]


class NoLandmarks:
    """``landmarks="none"``: records carry None; the pipeline decides what to do."""

    def __call__(self, index: int, key: str, image: np.ndarray) -> LandmarkResult:
        return None, "", ""


@dataclasses.dataclass(frozen=True)
class TemplateLandmarks:
    """``landmarks="template"``: the fixed aligned-crop template for the image size.
    Only for crops known to be aligned; chosen explicitly, never as a fallback."""

    face_box: tuple[float, float, float, float] | None = None

    def __call__(self, index: int, key: str, image: np.ndarray) -> LandmarkResult:
        height, width = image.shape[:2]
        return lm_template.template_landmarks(height, width, self.face_box), "template", ""


# Per-process "already warned" flags for DlibLandmarks (keyed by source name and root).
_WARNED_SLOW: set[tuple[str, str]] = set()
# Serialises the lazy opening of landmark caches (not the lookups or the detection).
_CACHE_OPEN_LOCK = threading.Lock()


class DlibLandmarks:
    """``landmarks="dlib"``: the precomputed landmark cache of this dataset
    (``landmark_source="cache"``), else dlib detection on the fly (``"dlib"``, tens of ms
    per image; warned about once per process). No face -> error "no_face". Thread-safe:
    Grain's read threads call it concurrently (detection uses ``detect``'s model pool).

    Picklable: the cache is opened lazily in each process and not pickled.
    """

    def __init__(self, source_name: str, root: Path, cache_dir: str | None = None) -> None:
        from data_pipelines.landmarks import cache as lm_cache
        from data_pipelines.landmarks import detect

        self.source_name = source_name
        self.root = os.path.abspath(root)
        self.cache_dir = cache_dir
        self._cache: Any = None
        self._cache_loaded = False
        if not lm_cache.LandmarkCache.exists(source_name, self.root, cache_dir):
            detect.check_available()  # fail at construction, naming the extra to install

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"], state["_cache_loaded"] = None, False
        return state

    def _get_cache(self) -> Any:
        if not self._cache_loaded:
            with _CACHE_OPEN_LOCK:  # Grain read threads: open the file once, not per thread
                if not self._cache_loaded:
                    from data_pipelines.landmarks import cache as lm_cache
                    if lm_cache.LandmarkCache.exists(self.source_name, self.root,
                                                     self.cache_dir):
                        self._cache = lm_cache.LandmarkCache.open(
                            self.source_name, self.root, self.cache_dir)
                    self._cache_loaded = True
        return self._cache

    def _warn_once(self, partial: bool) -> None:
        flag = (self.source_name, self.root)
        if flag in _WARNED_SLOW:
            return
        _WARNED_SLOW.add(flag)
        what = "is incomplete" if partial else "does not exist"
        logger.warning(
            "%s: the landmark cache for %s %s; detecting landmarks with dlib on the fly "
            "(slow: tens of ms per image, per worker). Precompute them once with: "
            "python -m data_pipelines.landmarks --source=%s --data_dir=%s%s",
            self.source_name, self.root, what, self.source_name, self.root,
            f" --cache_dir={self.cache_dir}" if self.cache_dir else "")

    def __call__(self, index: int, key: str, image: np.ndarray) -> LandmarkResult:
        from data_pipelines.landmarks import cache as lm_cache
        from data_pipelines.landmarks import detect

        cache = self._get_cache()
        if cache is not None:
            value = cache.get(key)
            if value is None:
                return None, "", "no_face"
            if value is not lm_cache.MISSING:
                return value, "cache", ""
        self._warn_once(partial=cache is not None)
        points = detect.detect_landmarks(image)
        if points is None:
            return None, "", "no_face"
        return points, "dlib", ""


def make_landmark_strategy(mode: str, *, source_name: str, root: Path,
                           cache_dir: str | None, allowed: Sequence[str],
                           face_box: tuple[float, float, float, float] | None = None
                           ) -> Callable[[int, str, np.ndarray], LandmarkResult]:
    """Strategy for the generic ``landmarks=`` modes "none", "template", "dlib" and "auto"
    (= "dlib" for sources that never have dataset landmarks)."""
    if mode not in allowed:
        raise ValueError(f"{source_name}: unknown landmarks={mode!r}; choose one of "
                         f"{', '.join(repr(m) for m in allowed)}")
    if mode == "none":
        return NoLandmarks()
    if mode == "template":
        return TemplateLandmarks(face_box)
    if mode in ("dlib", "auto"):
        return DlibLandmarks(source_name, root, cache_dir)
    raise ValueError(f"{source_name}: landmarks={mode!r} is not handled here")


# ---------------------------------------------------------------------------------------
# Base class.
# ---------------------------------------------------------------------------------------


def group_indices(identities: np.ndarray) -> dict[int, np.ndarray]:
    """identity -> sorted int64 record indices (identities < 0 are left out)."""
    order = np.argsort(identities, kind="stable")
    ids, starts = np.unique(identities[order], return_index=True)
    groups = np.split(order.astype(np.int64), starts[1:])
    return {int(i): g for i, g in zip(ids, groups) if i >= 0}


class ImageFileSource:
    """Random-access source over image files under ``root`` (keys = relative paths).

    Subclasses set the file list, identities and landmark strategy. Picklable (plain data
    plus picklable strategies).
    """

    name = "files"

    def __init__(self, root: Path, keys: Sequence[str], identities: np.ndarray | None,
                 landmark_fn: Callable[[int, str, np.ndarray], LandmarkResult],
                 min_size: int = DEFAULT_MIN_SIZE) -> None:
        if min_size < 1:
            raise ValueError(f"{self.name}: min_size must be >= 1, got {min_size}")
        self.root = Path(os.path.abspath(root))
        self.keys: list[str] = list(keys)
        if identities is None:
            identities = np.full((len(self.keys),), -1, dtype=np.int64)
        self.identities = np.asarray(identities, dtype=np.int64)
        if self.identities.shape != (len(self.keys),):
            raise ValueError(f"{self.name}: {len(self.keys)} keys but identities of shape "
                             f"{self.identities.shape}")
        self.has_identities = bool(np.any(self.identities >= 0))
        self._by_identity = group_indices(self.identities)
        self._landmark_fn = landmark_fn
        self.min_size = int(min_size)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, records={len(self)})"

    def _check_index(self, index: int) -> int:
        i = int(index)
        n = len(self.keys)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} records")
        return i

    def identity_indices(self, identity: int) -> np.ndarray:
        """Record indices of ``identity`` (empty when unknown)."""
        return self._by_identity.get(int(identity), np.zeros((0,), dtype=np.int64)).copy()

    @property
    def num_identities(self) -> int:
        return len(self._by_identity)

    def __getitem__(self, index: int) -> Record:
        i = self._check_index(index)
        key = self.keys[i]
        decoded = decode_image(self.root / key, self.min_size)
        if decoded.image is None:
            return error_record(i, key, decoded.error)
        return self._make_record(i, key, decoded.image, decoded.converted)

    def _make_record(self, index: int, key: str, image: np.ndarray, converted: bool,
                     landmark_image: np.ndarray | None = None) -> Record:
        landmarks, landmark_source, error = self._landmark_fn(
            index, key, image if landmark_image is None else landmark_image)
        if error:
            return error_record(index, key, error)
        return {
            "image": image,
            "landmarks": landmarks,
            "landmark_source": landmark_source,
            "identity": int(self.identities[index]),
            "index": index,
            "key": key,
            "error": "",
            "converted": converted,
        }
