"""dlib 68-point landmark detection for real photos without dataset landmarks.

Uses dlib's HOG frontal face detector and the iBUG 68-point shape predictor that ships in
the PyPI package ``face-recognition-models`` (file
``models/shape_predictor_68_face_landmarks.dat``); ``detect_faces`` can also use dlib's CNN
(MMOD) face detector from the same package (``models/mmod_human_face_detector.dat``), which
finds many masked faces that HOG misses (``--mode=predict``), or any implementation of it
passed as ``cnn`` (``unmask_jax.features.dlib_mmod`` runs the same network in JAX). Both
dlib and that package are optional (the ``landmarks`` extra); they are imported only when
a detection is first requested, and a missing one raises ``LandmarkDetectorUnavailable``
naming the extra to install.

Threads: dlib's detector and shape predictor keep scratch buffers inside the objects and
release the GIL while they run, so one pair called from several threads at once crashes the
process (Grain's read threads did: segmentation fault). ``detect_landmarks`` therefore takes a
(detector, predictor) pair from a small per-process pool for the duration of one call and
puts it back afterwards: never two threads on one pair, no lock held while detecting, and
detections on different threads run in parallel. The pool grows to the largest number of
concurrent callers seen (``pool_size()``; usually ``data.read_threads``), at most the CPU
count (``set_max_pool_size``; callers beyond wait for a pair); the pairs are kept for later
calls and later iterators, so a new thread pool does not reload the weights.
Loading the 68-point predictor takes about a second and ~100 MB per pair. Grain/
multiprocessing worker processes each have their own pool (a forked child starts with the
parent's idle pairs and a fresh lock). Nothing is downloaded: the weights come from the
installed package.

``face_recognition_models`` itself cannot be imported on recent setuptools (it needs
``pkg_resources``), so its data files are located through ``importlib.util.find_spec``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
#: dlib's CNN (MMOD) face detector in the same package: slower, but finds faces whose lower
#: half is covered (a face mask), where the HOG detector often finds none.
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
#: Face detectors of ``detect_faces``: HOG only, the CNN only, or HOG and, where HOG finds no
#: face, the CNN.
DETECTORS = ("hog", "cnn", "hog+cnn")
INSTALL_HINT = "pip install 'unmask-jax[landmarks]'  (dlib-bin and face-recognition-models)"


class LandmarkDetectorUnavailable(ImportError):
    """dlib or the face-recognition-models weights are not installed."""


def predictor_path(name: str = PREDICTOR_FILE) -> str:
    """Path of a model file (default the 68-point shape predictor) in the installed
    ``face_recognition_models``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkDetectorUnavailable(
            "dlib landmark detection needs the 'face_recognition_models' package (the "
            f"68-point predictor weights), which is not installed: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
    if not os.path.isfile(path):
        raise LandmarkDetectorUnavailable(
            f"face_recognition_models is installed but {path} is missing; reinstall it: "
            f"{INSTALL_HINT}")
    return path


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as err:
        raise LandmarkDetectorUnavailable(
            f"dlib landmark detection needs the 'dlib' package ({err}): {INSTALL_HINT}"
        ) from err
    return dlib


def check_available() -> None:
    """Raise ``LandmarkDetectorUnavailable`` unless dlib and the predictor weights exist
    (cheap: does not load the model)."""
    predictor_path()
    if importlib.util.find_spec("dlib") is None:
        raise LandmarkDetectorUnavailable(
            f"dlib landmark detection needs the 'dlib' package: {INSTALL_HINT}")


def load_models() -> tuple[Any, Any]:
    """A new (face detector, 68-point shape predictor) pair. Not shared: one pair must never
    be used by two threads at once; ``detect_landmarks`` takes pairs from the pool."""
    path = predictor_path()
    dlib = _import_dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(path)


#: Most pairs one process loads (more threads than cores gain nothing; each pair is ~100 MB).
#: Callers beyond it wait for a pair to come back. ``set_max_pool_size`` changes it.
_max_pool_size = max(1, os.cpu_count() or 1)
_POOL = threading.Condition(threading.Lock())
_IDLE: list[tuple[Any, Any]] = []  # pairs not in use right now
_CREATED = 0                       # pairs created (or being created) by this process


def _after_fork_in_child() -> None:
    """A forked child keeps the idle pairs; pairs that other threads were using at the fork
    are gone with those threads. The lock may have been held at the fork: replace it."""
    global _POOL, _CREATED  # pylint: disable=global-statement
    _POOL = threading.Condition(threading.Lock())
    _CREATED = len(_IDLE)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_max_pool_size(size: int) -> None:
    """At most ``size`` (>= 1) pairs per process (default: the CPU count)."""
    global _max_pool_size  # pylint: disable=global-statement
    if int(size) < 1:
        raise ValueError(f"max pool size must be >= 1, got {size}")
    with _POOL:
        _max_pool_size = int(size)
        _POOL.notify_all()


def _take() -> tuple[Any, Any]:
    global _CREATED  # pylint: disable=global-statement
    with _POOL:
        while not _IDLE and _CREATED >= _max_pool_size:
            _POOL.wait()
        if _IDLE:
            return _IDLE.pop()
        _CREATED += 1  # reserve the slot, load outside the lock
    try:
        return load_models()  # other threads keep detecting meanwhile
    except BaseException:
        with _POOL:
            _CREATED -= 1
            _POOL.notify()
        raise


def _give_back(pair: tuple[Any, Any]) -> None:
    with _POOL:
        _IDLE.append(pair)
        _POOL.notify()


@contextlib.contextmanager
def pooled_models() -> Iterator[tuple[Any, Any]]:
    """(detector, predictor) for the exclusive use of the calling thread inside the
    ``with`` block: an idle pair, else a newly loaded one (up to the pool's maximum), else
    the next pair another thread gives back."""
    pair = _take()
    try:
        yield pair
    finally:
        _give_back(pair)


def preload(count: int) -> int:
    """Loads pairs until the pool holds at least ``count`` (capped by the maximum), e.g.
    ``data.read_threads`` before timing a pipeline, so that no read thread waits for a
    load; returns the pool size."""
    pairs = []
    while pool_size() < min(count, _max_pool_size):
        pairs.append(_take_new())
    for pair in pairs:
        _give_back(pair)
    return pool_size()


def _take_new() -> tuple[Any, Any]:
    global _CREATED  # pylint: disable=global-statement
    pair = load_models()
    with _POOL:
        _CREATED += 1
    return pair


def pool_size() -> int:
    """How many (detector, predictor) pairs this process has loaded."""
    with _POOL:
        return _CREATED


def clear_pool() -> None:
    """Drops the idle pairs (their memory is freed; the next call loads a new pair)."""
    global _CREATED  # pylint: disable=global-statement
    with _POOL:
        _CREATED -= len(_IDLE)
        _IDLE.clear()


def _largest(rects: Any) -> Any | None:
    best, best_area = None, -1
    for rect in rects:
        area = max(rect.width(), 0) * max(rect.height(), 0)
        if area > best_area:
            best, best_area = rect, area
    return best


def detect_landmarks(image: np.ndarray, upsample_retry: bool = True) -> np.ndarray | None:
    """68 landmarks, float32 (68, 2) x, y in pixels of ``image``, of its largest face, or
    None when no face is found.

    ``image`` is uint8 RGB (H, W, 3) (grayscale (H, W) also accepted). The detector runs at
    the original scale first and, if it finds nothing and ``upsample_retry``, once more on a
    2x upsampled image (finds faces smaller than ~80 px; about 4x slower).
    Safe to call from any number of threads at once (see the module docstring).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"image must be uint8 (H, W, 3) or (H, W), got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr)
    with pooled_models() as (detector, predictor):
        rect = _largest(detector(arr, 0))
        if rect is None and upsample_retry:
            rect = _largest(detector(arr, 1))
        if rect is None:
            return None
        shape = predictor(arr, rect)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    if points.shape != (68, 2):  # pragma: no cover - guards against a wrong weights file
        raise RuntimeError(f"shape predictor returned {points.shape[0]} points, expected 68")
    return points


_CNN_LOCK = threading.Lock()
_CNN: list[Any] = []  # the loaded CNN detector (one per process, calls serialised)


#: The CNN runs on the image shrunk to this longest side (its time grows with the pixels:
#: ~0.4 s at 250x250 on 2 cores); the 2x retry only where the image it sees is at most
#: CNN_RETRY_MAX_SIDE (faces below ~80 px there are missed without it).
CNN_MAX_SIDE = 640
CNN_RETRY_MAX_SIDE = 400
#: Images with a side below this (after the retry's 2x) are not given to the CNN.
CNN_MIN_SIDE = 32


#: A CNN face detector: (uint8 RGB (H, W, 3), upsample count) -> [(left, top, right,
#: bottom, ...)] in that image's pixels. ``None`` = dlib's own (:func:`dlib_cnn`).
CnnDetector = Callable[[np.ndarray, int], Sequence[Sequence[float]]]


def dlib_cnn(arr: np.ndarray, upsample: int) -> list[tuple[int, int, int, int, float]]:
    """dlib's CNN (MMOD) detector: (left, top, right, bottom, confidence) per face. One
    detector per process, loaded at the first call (~1 s); calls are serialised."""
    dlib = _import_dlib()
    with _CNN_LOCK:
        if not _CNN:
            _CNN.append(dlib.cnn_face_detection_model_v1(predictor_path(CNN_DETECTOR_FILE)))
        found = _CNN[0](arr, upsample)
    return [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence)
            for d in found]


def _cnn_rects(arr: np.ndarray, upsample: int, cnn: CnnDetector | None = None) -> list[Any]:
    """Face rectangles (dlib rectangles in ``arr``'s pixels) of a CNN (MMOD) detector
    (``cnn``, default :func:`dlib_cnn`), run on ``arr`` shrunk to :data:`CNN_MAX_SIDE`;
    ``upsample`` > 0 only for images up to :data:`CNN_RETRY_MAX_SIDE` after shrinking (else
    no rectangles)."""
    dlib = _import_dlib()
    h, w = arr.shape[:2]
    scale = min(1.0, CNN_MAX_SIDE / max(h, w))
    if upsample and max(h, w) * scale > CNN_RETRY_MAX_SIDE:
        return []
    small = arr
    if scale < 1.0:
        import cv2
        small = cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    if min(small.shape[:2]) * 2 ** upsample < CNN_MIN_SIDE:
        return []  # no 80 px window fits; dlib's own raises on such images
    boxes = (cnn or dlib_cnn)(small, upsample)
    # Rounded half away from zero, as dlib turns its boxes into integer rectangles.
    return [dlib.rectangle(*(int(np.floor(v / scale + 0.5)) for v in box[:4]))
            for box in boxes]


def detect_faces(image: np.ndarray, upsample_retry: bool = True,
                 detector: str = "hog", cnn: CnnDetector | None = None) -> list[np.ndarray]:
    """68 landmarks (float32 (68, 2), pixels of ``image``) of every face dlib finds, the
    largest first; [] when none. ``detector`` (:data:`DETECTORS`): ``hog`` (the detector
    of ``detect_landmarks``, with its 2x retry), ``cnn`` (the MMOD CNN; retried on a 2x
    image too) or ``hog+cnn`` (the CNN only where HOG, retry included, found nothing).
    ``cnn``: which implementation of the MMOD CNN finds the rectangles (default dlib's,
    :func:`dlib_cnn`; ``unmask_jax.features.dlib_mmod`` is the same network in JAX).
    Thread safety as ``detect_landmarks`` (which returns only the largest), provided ``cnn``
    is thread safe."""
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"image must be uint8 (H, W, 3) or (H, W), got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr)
    out = []
    with pooled_models() as (hog, predictor):
        rects = []
        for run in (("hog",) if detector == "hog" else ("cnn",) if detector == "cnn"
                    else ("hog", "cnn")):
            find = hog if run == "hog" else functools.partial(_cnn_rects, cnn=cnn)
            rects = list(find(arr, 0))
            if not rects and upsample_retry:
                rects = list(find(arr, 1))
            if rects:
                break
        rects.sort(key=lambda r: -max(r.width(), 0) * max(r.height(), 0))
        for rect in rects:
            shape = predictor(arr, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
            if points.shape == (68, 2):
                out.append(points)
    return out
