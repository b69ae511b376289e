"""Masked/unmasked image pairs matched by file name (e.g. the Face Mask Lite dataset).

Layout: ``<root>/<masked_dir>/...`` and ``<root>/<unmasked_dir>/...`` (defaults
``with_mask`` and ``without_mask``; subfolders allowed). A masked file is paired with the
unmasked file of the same relative path without extension; failing that, with the one
whose *normalised* name matches: the stem is split at ``-``, ``_``, ``.`` and spaces, and
tokens in ``strip_tokens`` (default ``COMMON_NAME_TOKENS``: "with", "mask", "surgical",
...) are dropped, so ``with-mask-default-mask-seed0001.png`` matches ``seed0001.png`` and
``0001_surgical.jpg`` matches ``0001.jpg``. Several masked files may share one target;
unmatched masked files are skipped (counted in ``num_unmatched``).

Record: ``image`` = masked, ``target`` = unmasked, ``mask`` = uint8 (H, W) {0, 1}, plus
the usual fields (``key`` = the masked file's path relative to the root).

Mask map (``derive_mask``): pixels where sum over RGB of |masked - target| (uint8 units,
0..765) exceeds ``diff_threshold`` (default 40, i.e. ~13 levels per channel: above JPEG
noise, below any visible mask), then a morphological close and open with an elliptical
kernel of ~2% of the shorter side (odd, >= 3 px), hole filling, and only the largest
connected component (8-connectivity) kept. On JPEG pairs the map grows ~1 px past the
drawn mask edge (chroma upsampling bleeds the mask colour). Errors: the masked file's
decode reason, "target_<reason>" for the unmasked file, "size_mismatch" for pairs of
different sizes, "empty_mask" for identical pairs.

The map is computed once and stored as a 0/255 PNG at
``<root>/mask_maps/t<threshold>/<key without extension>.png`` when the root is writable,
else under ``~/.cache/unmask_jax/mask_maps/<hash of root>/t<threshold>/`` (or
``<mask_cache_dir>/<hash>/t<threshold>/`` when given). Writes are atomic.

Split: ``test_fraction`` (default 0: there is no "test" split, everything is "train"/"all")
holds out a hash split of the unmasked (target) file names, so every masked variant of one
face stays on the side of its target. The pairs carry no identity labels (identity -1): if
one person has several target images, they can land on both sides.

``num_records`` (default None = all): keep at most that many pairs of the split, spread over
the target images (``subsets.spread_order``: one masked variant of every target before a
second one).

Landmarks default to ``"none"`` (the mask is known; dlib often fails on masked faces);
``"dlib"``/``"auto"`` detect on the unmasked target.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from scipy import ndimage

from data_pipelines.landmarks.cache import data_dir_hash, default_cache_root
from data_pipelines.sources.base import DatasetNotFoundError, Record, error_record
from data_pipelines.sources.images import (DEFAULT_MIN_SIZE, ImageFileSource, check_split,
                                           decode_image, empty_split_error, keep_for_split,
                                           list_images, make_landmark_strategy, require_dir)
from data_pipelines.subsets import limit_records

logger = logging.getLogger(__name__)

DEFAULT_DIFF_THRESHOLD = 40
KERNEL_FRACTION = 0.02
MASK_MAP_DIR = "mask_maps"
LANDMARK_MODES: tuple[str, ...] = ("none", "auto", "dlib", "template")
COMMON_NAME_TOKENS: tuple[str, ...] = (
    "with", "without", "mask", "masks", "masked", "unmasked", "nomask", "no", "default",
    "surgical", "cloth", "n95", "kn95", "gas", "facemask")
_TOKEN_SPLIT = re.compile(r"[-_. ]+")
_WARNED_WRITE: set[Path] = set()  # folders whose mask maps could not be written


def normalise_name(rel_path: str, strip_tokens: tuple[str, ...] = COMMON_NAME_TOKENS) -> str:
    """Matching key of a relative path: parent folders kept, stem lower-cased with the
    ``strip_tokens`` removed."""
    path = PurePosixPath(rel_path)
    drop = {t.lower() for t in strip_tokens}
    tokens = [t for t in _TOKEN_SPLIT.split(path.stem.lower()) if t and t not in drop]
    stem = "-".join(tokens)
    return stem if str(path.parent) == "." else f"{path.parent}/{stem}"


def _without_suffix(rel_path: str) -> str:
    return str(PurePosixPath(rel_path).with_suffix(""))


def match_pairs(masked: list[str], unmasked: list[str],
                strip_tokens: tuple[str, ...] = COMMON_NAME_TOKENS) -> list[tuple[str, str]]:
    """(masked, unmasked) relative paths: exact path-without-extension match first, then a
    unique normalised-name match. Ambiguous normalised targets are not used."""
    exact = {_without_suffix(u): u for u in unmasked}
    normalised: dict[str, str | None] = {}
    for u in unmasked:
        key = normalise_name(u, strip_tokens)
        normalised[key] = None if key in normalised else u
    pairs = []
    for m in masked:
        target = exact.get(_without_suffix(m)) or normalised.get(normalise_name(m, strip_tokens))
        if target is not None:
            pairs.append((m, target))
    return pairs


def _kernel_size(height: int, width: int) -> int:
    k = max(3, int(round(KERNEL_FRACTION * min(height, width))))
    return k if k % 2 == 1 else k + 1


def derive_mask(masked: np.ndarray, target: np.ndarray,
                threshold: int = DEFAULT_DIFF_THRESHOLD) -> np.ndarray:
    """uint8 (H, W) {0, 1} map of where ``masked`` differs from ``target`` (see module
    docstring for the exact recipe)."""
    if masked.shape != target.shape:
        raise ValueError(f"masked {masked.shape} and target {target.shape} differ in shape")
    diff = np.abs(masked.astype(np.int16) - target.astype(np.int16)).sum(axis=2)
    raw = (diff > threshold).astype(np.uint8)
    k = _kernel_size(*raw.shape)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    closed = cv2.morphologyEx(raw, cv2.MORPH_CLOSE, kernel)
    opened = cv2.morphologyEx(closed, cv2.MORPH_OPEN, kernel)
    filled = ndimage.binary_fill_holes(opened).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(filled, connectivity=8)
    if count <= 1:
        return np.zeros_like(filled)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def read_mask_map(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A stored 0/255 PNG as {0, 1}, or None when absent, unreadable or of another size."""
    if not path.is_file():
        return None
    stored = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if stored is None or stored.shape != shape:
        return None
    return (stored > 127).astype(np.uint8)


def write_mask_map(path: Path, mask: np.ndarray) -> bool:
    """Store ``mask`` as a 0/255 PNG atomically; False (and a log line) on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
        if not cv2.imwrite(str(tmp), (mask * 255).astype(np.uint8)):
            raise OSError(f"cv2.imwrite failed for {tmp}")
        os.replace(tmp, path)
        return True
    except OSError as err:
        if path.parent not in _WARNED_WRITE:  # once per folder and process
            _WARNED_WRITE.add(path.parent)
            logger.warning("paired: could not store mask map %s (maps in this folder are "
                           "recomputed each time): %s", path, err)
        return False


class PairedSource(ImageFileSource):
    """Masked/unmasked pairs with a stored difference mask (see module docstring)."""

    name = "paired"

    def __init__(self, data_dir: str | os.PathLike[str] | None, split: str = "train",
                 masked_dir: str = "with_mask", unmasked_dir: str = "without_mask",
                 diff_threshold: int = DEFAULT_DIFF_THRESHOLD, test_fraction: float = 0.0,
                 strip_tokens: tuple[str, ...] = COMMON_NAME_TOKENS,
                 landmarks: str = "none", min_size: int = DEFAULT_MIN_SIZE,
                 cache_dir: str | None = None, mask_cache_dir: str | None = None,
                 num_records: int | None = None) -> None:
        check_split("paired", split, test_fraction)
        expected = (f"<root>/{masked_dir}/NAME.png and <root>/{unmasked_dir}/NAME.png "
                    "(pairs matched by file name)")
        root = require_dir("paired", data_dir, expected)
        masked_root, unmasked_root = root / masked_dir, root / unmasked_dir
        for folder in (masked_root, unmasked_root):
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"paired: folder {folder} is missing; expected {expected}")
        masked = list_images(masked_root)
        unmasked = list_images(unmasked_root)
        if not masked or not unmasked:
            empty = masked_root if not masked else unmasked_root
            raise DatasetNotFoundError(f"paired: no images in {empty}; expected {expected}")
        pairs = match_pairs(masked, unmasked, tuple(strip_tokens))
        if not pairs:
            raise DatasetNotFoundError(
                f"paired: none of the {len(masked)} images in {masked_root} matches a file in "
                f"{unmasked_root} by name; expected {expected}")
        self.num_unmatched = len(masked) - len(pairs)
        if self.num_unmatched:
            logger.warning("paired: %d of %d masked images under %s have no unmasked match",
                           self.num_unmatched, len(masked), masked_root)
        pairs = [p for p in pairs if keep_for_split(p[1], split, test_fraction)]
        if not pairs:
            raise empty_split_error("paired", split, test_fraction, f"under {root}")
        target_ids = {t: i for i, t in enumerate(sorted({t for _, t in pairs}))}
        kept = limit_records([target_ids[t] for _, t in pairs], num_records, "paired")
        if kept is not None:
            pairs = [pairs[i] for i in kept]
        keys = [f"{masked_dir}/{m}" for m, _ in pairs]
        self.target_keys = [f"{unmasked_dir}/{u}" for _, u in pairs]
        self.split = split
        self.diff_threshold = int(diff_threshold)
        self.landmarks_mode = landmarks
        self.mask_dir = self._mask_dir(root, mask_cache_dir)
        strategy = make_landmark_strategy(landmarks, source_name=self.name, root=root,
                                          cache_dir=cache_dir, allowed=LANDMARK_MODES)
        super().__init__(root, keys, None, strategy, min_size=min_size)

    def _mask_dir(self, root: Path, mask_cache_dir: str | None) -> Path:
        sub = f"t{self.diff_threshold}"
        root = Path(os.path.abspath(root))
        if mask_cache_dir is not None:
            return Path(mask_cache_dir) / data_dir_hash(root) / sub
        next_to_data = root / MASK_MAP_DIR / sub
        if next_to_data.is_dir() or _writable(root):
            return next_to_data
        return default_cache_root().parent / MASK_MAP_DIR / data_dir_hash(root) / sub

    def mask_path(self, index: int) -> Path:
        """Where the mask map of record ``index`` is stored."""
        return self.mask_dir / f"{_without_suffix(self.keys[self._check_index(index)])}.png"

    def __getitem__(self, index: int) -> Record:
        i = self._check_index(index)
        key = self.keys[i]
        masked = decode_image(self.root / key, self.min_size)
        if masked.image is None:
            return error_record(i, key, masked.error)
        target = decode_image(self.root / self.target_keys[i], self.min_size)
        if target.image is None:
            return error_record(i, key, f"target_{target.error}")
        if masked.image.shape != target.image.shape:
            return error_record(i, key, "size_mismatch")
        path = self.mask_path(i)
        mask = read_mask_map(path, masked.image.shape[:2])
        if mask is None:
            mask = derive_mask(masked.image, target.image, self.diff_threshold)
            write_mask_map(path, mask)
        if not mask.any():
            return error_record(i, key, "empty_mask")
        record = self._make_record(i, key, masked.image, masked.converted or target.converted,
                                   landmark_image=target.image)
        if not record["error"]:
            record["target"] = target.image
            record["mask"] = mask
        return record
