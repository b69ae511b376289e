"""CelebA (aligned and cropped, 178x218), from its official files or a prepared TFDS dir.

Files backend (default, ``backend="files"``), ``data_dir`` = the CelebA root or a folder
containing ``celeba/`` / ``CelebA/``:

* ``img_align_celeba/NNNNNN.jpg`` (the doubly nested Kaggle copy
  ``img_align_celeba/img_align_celeba/`` is accepted too);
* ``list_eval_partition.txt`` -- ``file partition`` rows, 0 train, 1 validation, 2 test
  (required unless ``split="all"``);
* ``identity_CelebA.txt`` -- ``file identity`` rows (optional; without it identities are
  -1 and ``has_identities`` is False);
* ``list_landmarks_align_celeba.txt`` (optional) -- line 1 the count, line 2 the column
  names (lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y
  rightmouth_x rightmouth_y), then ``file x y ...`` rows.

Rows whose image file is missing are skipped (partial copies are fine).

``landmarks=``:

* ``"dataset"`` -- the file's five points fitted to 68 (``fit_68_from_5``),
  ``landmark_source="dataset5"``; fails if the file is missing;
* ``"auto"`` (default) -- same as "dataset" when the landmark file is present; without it,
  "template" (below), with a warning once per process saying so and naming the other
  choices. In the aligned crops the five points barely move (a few pixels), so the template
  frames and masks the faces well; pass "dlib" for per-image points;
* ``"template"`` -- CelebA's near-fixed aligned five points (``CELEBA_ALIGNED_5``) fitted
  to 68, ``landmark_source="template"``;
* ``"dlib"`` -- the landmark cache / dlib on the fly (see images.DlibLandmarks);
* ``"none"`` -- None; the pipeline decides.

Dataset points are given for the 178x218 originals; if an image has another size they
are scaled with it.

Splits: "train" (partition 0), "validation" (1; also "valid", "val"), "test" (2), "all".
Copies that lack a partition (some subsets ship only 0 and 1) raise ``EmptySplitError``
naming the splits that have images.

``num_records`` (default None = all): keep at most that many records of the split, spread
over identities (``subsets.spread_order``; without the identity file, a fixed hashed
sample).

TFDS backend (``backend="tfds"``): ``tfds.data_source("celeb_a", data_dir=...)`` of an
already prepared ``celeb_a`` (nothing is downloaded). TFDS's celeb_a has no identities;
its landmarks are the same five points ("dataset"/"auto" -> "dataset5"). Needs the
``tensorflow-datasets`` package.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.landmarks import template as lm_template
from data_pipelines.sources.base import (DatasetNotFoundError, EmptySplitError, Record,
                                         UnknownSplitError, error_record)
from data_pipelines.sources.images import (DEFAULT_MIN_SIZE, ImageFileSource, LandmarkResult,
                                           is_image_file, make_landmark_strategy,
                                           require_dir)
from data_pipelines.subsets import limit_records

logger = logging.getLogger(__name__)

IMAGE_DIR = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
LANDMARK_FILE = "list_landmarks_align_celeba.txt"
CELEBA_SUBDIRS: tuple[str, ...] = ("celeba", "CelebA", "celeb_a")
LANDMARK_MODES: tuple[str, ...] = ("auto", "dataset", "template", "dlib", "none")
#: split name -> partition code in list_eval_partition.txt (None = every row).
SPLITS: dict[str, int | None] = {
    "train": 0, "validation": 1, "valid": 1, "val": 1, "test": 2, "all": None}
_SPLIT_NAMES: dict[int, str] = {0: "train", 1: "validation", 2: "test"}
_WARNED_TEMPLATE: set[str] = set()  # roots warned about the "auto" -> "template" fallback
_LANDMARK_COLUMNS: tuple[str, ...] = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")
EXPECTED = (f"<root>/{IMAGE_DIR}/000001.jpg, <root>/{PARTITION_FILE}, "
            f"<root>/{IDENTITY_FILE} (optional: <root>/{LANDMARK_FILE})")


def find_celeba_root(data_dir: Path) -> Path:
    """The folder that holds ``img_align_celeba/`` (``data_dir`` or a known subfolder)."""
    for candidate in (data_dir, *(data_dir / s for s in CELEBA_SUBDIRS)):
        if (candidate / IMAGE_DIR).is_dir():
            return candidate
    raise DatasetNotFoundError(
        f"celeba: no {IMAGE_DIR}/ folder found under {data_dir} (also looked in "
        f"{', '.join(s + '/' for s in CELEBA_SUBDIRS)}); expected {EXPECTED}")


def _image_dir(root: Path) -> Path:
    nested = root / IMAGE_DIR / IMAGE_DIR
    return nested if nested.is_dir() else root / IMAGE_DIR


def read_two_column_file(path: Path) -> dict[str, int]:
    """``file value`` rows (partition or identity lists) -> {file: int}."""
    table: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"celeba: {path}:{line_no}: expected 'file value', got {line!r}")
            table[parts[0]] = int(parts[1])
    return table


def read_landmark_file(path: Path) -> dict[str, np.ndarray]:
    """CelebA's five-point file -> {file: float32 (5, 2)} in ``FIVE_POINT_NAMES`` order."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) < 2:
        raise ValueError(f"celeba: {path} is too short for the landmark format "
                         "(count line, column-name line, rows)")
    header = lines[1].split()
    try:
        columns = [header.index(c) for c in _LANDMARK_COLUMNS]
    except ValueError as err:
        raise ValueError(f"celeba: {path} line 2 must name the columns {_LANDMARK_COLUMNS}, "
                         f"got {header}") from err
    table: dict[str, np.ndarray] = {}
    for line_no, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        values = parts[1:]
        if len(values) != len(header):
            raise ValueError(f"celeba: {path}:{line_no}: expected {len(header)} values, "
                             f"got {len(values)}")
        table[parts[0]] = np.asarray([float(values[c]) for c in columns],
                                     dtype=np.float32).reshape(5, 2)
    return table


def _scale_for(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    ref_h, ref_w = lm_template.CELEBA_ALIGNED_SIZE
    return np.array([width / ref_w, height / ref_h], dtype=np.float32)


class DatasetFiveLandmarks:
    """Landmarks from five points per record (CelebA's file or TFDS), fitted to 68."""

    def __init__(self, points5: np.ndarray) -> None:
        self.points5 = np.asarray(points5, dtype=np.float32)  # (N, 5, 2), NaN = no row

    def __call__(self, index: int, key: str, image: np.ndarray) -> LandmarkResult:
        points = self.points5[index]
        if not np.all(np.isfinite(points)):
            return None, "", "no_landmarks"
        return lm_template.fit_68_from_5(points * _scale_for(image)), "dataset5", ""


class CelebATemplateLandmarks:
    """CelebA's near-fixed aligned five points fitted to 68 (``"template"``)."""

    def __call__(self, index: int, key: str, image: np.ndarray) -> LandmarkResult:
        height, width = image.shape[:2]
        return lm_template.celeba_aligned_landmarks(height, width), "template", ""


def _landmark_mode_error(root: Any, mode: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"celeba: landmarks={mode!r} needs {root}/{LANDMARK_FILE}, which is missing. "
        "Choose explicitly: landmarks='template' (CelebA's fixed aligned five points, "
        "fitted to 68), 'dlib' (detected; precompute with python -m data_pipelines.landmarks "
        f"--source=celeba --data_dir={root}), 'none' (leave it to the pipeline), or "
        "'auto' (the file when present, else 'template'); 'dataset' needs the file")


class CelebASource(ImageFileSource):
    """CelebA aligned images from the official files (see module docstring)."""

    name = "celeba"

    def __init__(self, data_dir: str | os.PathLike[str] | None, split: str = "train",
                 landmarks: str = "auto", min_size: int = DEFAULT_MIN_SIZE,
                 cache_dir: str | None = None, num_records: int | None = None) -> None:
        if split not in SPLITS:
            raise UnknownSplitError(
                f"celeba: unknown split {split!r}; choose one of {tuple(SPLITS)}")
        if landmarks not in LANDMARK_MODES:
            raise ValueError(f"celeba: unknown landmarks={landmarks!r}; choose one of "
                             f"{LANDMARK_MODES}")
        root = find_celeba_root(require_dir("celeba", data_dir, EXPECTED))
        image_dir = _image_dir(root)
        present = {n for n in os.listdir(image_dir) if is_image_file(n)}
        if not present:
            raise DatasetNotFoundError(
                f"celeba: no images in {image_dir}; expected {EXPECTED}")
        code = SPLITS[split]
        partition_path = root / PARTITION_FILE
        if partition_path.is_file():
            partition = read_two_column_file(partition_path)
            files = sorted(f for f, p in partition.items()
                           if f in present and (code is None or p == code))
        elif code is None:
            files = sorted(present)
        else:
            raise DatasetNotFoundError(
                f"celeba: split {split!r} needs {partition_path}, which is missing "
                "(or use split='all')")
        if not files:
            codes = sorted({p for f, p in partition.items() if f in present})
            available = tuple(_SPLIT_NAMES.get(c, str(c)) for c in codes)
            hint = (" (use split='validation' for held-out images)"
                    if "validation" in available and split != "validation" else "")
            raise EmptySplitError(
                f"celeba: split {split!r} has no images present in {image_dir} "
                f"(partition code {code} in {partition_path}); the splits with images "
                f"here are {available}{hint}", split=split, available=available)
        identity_path = root / IDENTITY_FILE
        if identity_path.is_file():
            table = read_two_column_file(identity_path)
            identities = np.asarray([table.get(f, -1) for f in files], dtype=np.int64)
        else:
            identities = None
        kept = limit_records(np.full(len(files), -1) if identities is None else identities,
                             num_records, "celeba")
        if kept is not None:
            files = [files[i] for i in kept]
            identities = None if identities is None else identities[kept]
        rel_dir = image_dir.relative_to(root).as_posix()
        keys = [f"{rel_dir}/{f}" for f in files]
        landmark_path = root / LANDMARK_FILE
        strategy: Any
        if landmarks == "auto" and not landmark_path.is_file():
            if str(root) not in _WARNED_TEMPLATE:
                _WARNED_TEMPLATE.add(str(root))
                logger.warning(
                    "celeba: %s is missing; landmarks='auto' uses CelebA's fixed aligned "
                    "five points fitted to 68 ('template'). Set landmarks='dlib' for "
                    "detected points (precompute: python -m data_pipelines.landmarks "
                    "--source=celeba --data_dir=%s) or 'template' to silence this.",
                    landmark_path, root)
            landmarks_used = "template"
        else:
            landmarks_used = landmarks
        if landmarks_used in ("dataset", "auto"):
            if not landmark_path.is_file():
                raise _landmark_mode_error(root, landmarks)
            table5 = read_landmark_file(landmark_path)
            missing = np.full((5, 2), np.nan, dtype=np.float32)
            strategy = DatasetFiveLandmarks(np.stack([table5.get(f, missing) for f in files]))
        elif landmarks_used == "template":
            strategy = CelebATemplateLandmarks()
        else:
            strategy = make_landmark_strategy(landmarks, source_name=self.name, root=root,
                                              cache_dir=cache_dir, allowed=LANDMARK_MODES)
        self.split = split
        self.landmarks_mode = landmarks
        super().__init__(root, keys, identities, strategy, min_size=min_size)


# ---------------------------------------------------------------------------------------
# TFDS backend.
# ---------------------------------------------------------------------------------------

TFDS_SPLITS: dict[str, str] = {
    "train": "train", "validation": "validation", "valid": "validation",
    "val": "validation", "test": "test", "all": "train+validation+test"}
_TFDS_POINTS: tuple[str, ...] = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "celeba backend='tfds' needs the 'tensorflow-datasets' package, which is not "
            f"installed ({err}): pip install tensorflow-datasets, then prepare celeb_a "
            "in a data dir (tfds build celeb_a --data_dir=DIR) and pass data_dir=DIR; or "
            "use backend='files' with the official CelebA files") from err
    return tfds


class CelebATFDSSource:
    """CelebA through ``tfds.data_source("celeb_a")`` (prepared data only; no identities).

    Picklable: the TFDS data source is reopened lazily in each process.
    """

    name = "celeba"
    has_identities = False

    def __init__(self, data_dir: str | os.PathLike[str] | None, split: str = "train",
                 landmarks: str = "auto", min_size: int = DEFAULT_MIN_SIZE,
                 cache_dir: str | None = None, num_records: int | None = None) -> None:
        if split not in TFDS_SPLITS:
            raise UnknownSplitError(f"celeba: unknown split {split!r}; choose one of "
                             f"{tuple(TFDS_SPLITS)}")
        if landmarks not in ("auto", "dataset", "template", "none"):
            raise ValueError(f"celeba (tfds): landmarks={landmarks!r} is not supported; "
                             "choose 'auto'/'dataset' (TFDS five points), 'template' or 'none'")
        _import_tfds()
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.split = split
        self.landmarks_mode = landmarks
        self.min_size = int(min_size)
        self._ds: Any = None
        total = len(self._source())
        # num_records: a fixed hashed sample (TFDS's celeb_a has no identities).
        kept = limit_records(np.full(total, -1), num_records, "celeba")
        self._indices = None if kept is None else kept.astype(np.int64)
        self._len = total if kept is None else len(kept)

    def _source(self) -> Any:
        if self._ds is None:
            tfds = _import_tfds()
            try:
                self._ds = tfds.data_source("celeb_a", split=TFDS_SPLITS[self.split],
                                            data_dir=self.data_dir, download=False)
            except Exception as err:  # pylint: disable=broad-except
                raise DatasetNotFoundError(
                    f"celeba (tfds): could not open a prepared 'celeb_a' in "
                    f"{self.data_dir or '~/tensorflow_datasets'}: {err}") from err
        return self._ds

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ds"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def identity_indices(self, identity: int) -> np.ndarray:
        return np.zeros((0,), dtype=np.int64)

    def __getitem__(self, index: int) -> Record:
        i = int(index)
        if not 0 <= i < self._len:
            raise IndexError(f"celeba (tfds): index {index} out of range for {self._len}")
        j = i if self._indices is None else int(self._indices[i])  # index in the split
        key = f"tfds/celeb_a/{self.split}/{j}"
        try:
            example = self._source()[j]
            image, converted = _tfds_image(example["image"])
        except Exception:  # pylint: disable=broad-except
            return error_record(i, key, "corrupt")
        if min(image.shape[:2]) < self.min_size:
            return error_record(i, key, "too_small")
        landmarks, lm_source = None, ""
        if self.landmarks_mode in ("auto", "dataset"):
            points = np.stack([np.asarray(example["landmarks"][p], dtype=np.float32)
                               for p in _TFDS_POINTS])
            landmarks = lm_template.fit_68_from_5(points * _scale_for(image))
            lm_source = "dataset5"
        elif self.landmarks_mode == "template":
            landmarks = lm_template.celeba_aligned_landmarks(*image.shape[:2])
            lm_source = "template"
        return {"image": image, "landmarks": landmarks, "landmark_source": lm_source,
                "identity": -1, "index": i, "key": key, "error": "", "converted": converted}


def _tfds_image(image: Any) -> tuple[np.ndarray, bool]:
    """uint8 (H, W, 3) from a decoded TFDS image (grayscale expanded, flagged converted)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2), True
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr, False
    raise ValueError(f"unexpected image shape {arr.shape}")


def make_celeba(data_dir: str | os.PathLike[str] | None, split: str = "train",
                landmarks: str = "auto", min_size: int = DEFAULT_MIN_SIZE,
                cache_dir: str | None = None, backend: str = "files",
                num_records: int | None = None) -> CelebASource | CelebATFDSSource:
    """CelebA from the official files (``backend="files"``) or TFDS (``"tfds"``)."""
    if backend == "files":
        return CelebASource(data_dir, split=split, landmarks=landmarks, min_size=min_size,
                            cache_dir=cache_dir, num_records=num_records)
    if backend == "tfds":
        return CelebATFDSSource(data_dir, split=split, landmarks=landmarks,
                                min_size=min_size, cache_dir=cache_dir,
                                num_records=num_records)
    raise ValueError(f"celeba: unknown backend={backend!r}; choose 'files' or 'tfds'")
