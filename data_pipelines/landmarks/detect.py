"""dlib 68-point landmark detection for real photos without dataset landmarks.

Uses dlib's HOG frontal face detector and the iBUG 68-point shape predictor that ships in
the PyPI package ``face-recognition-models`` (file
``models/shape_predictor_68_face_landmarks.dat``). Both dlib and that package are optional
(the ``landmarks`` extra); they are imported only when a detection is first requested, and a
missing one raises ``LandmarkDetectorUnavailable`` naming the extra to install.

Model cache: the detector and predictor are loaded once per process, on first use, by
``load_models`` (an ``functools.lru_cache``); loading the 68-point predictor takes about a
second and ~100 MB. Grain/multiprocessing workers each load their own copy. Nothing is
downloaded: the weights come from the installed package.

``face_recognition_models`` itself cannot be imported on recent setuptools (it needs
``pkg_resources``), so its data files are located through ``importlib.util.find_spec``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy as np

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
INSTALL_HINT = "pip install 'unmask-jax[landmarks]'  (dlib-bin and face-recognition-models)"


class LandmarkDetectorUnavailable(ImportError):
    """dlib or the face-recognition-models weights are not installed."""


def predictor_path() -> str:
    """Path of the 68-point shape predictor in the installed ``face_recognition_models``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkDetectorUnavailable(
            "dlib landmark detection needs the 'face_recognition_models' package (the "
            f"68-point predictor weights), which is not installed: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", PREDICTOR_FILE)
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


@functools.lru_cache(maxsize=1)
def load_models() -> tuple[Any, Any]:
    """(face detector, 68-point shape predictor), loaded once per process."""
    path = predictor_path()
    dlib = _import_dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(path)


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
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"image must be uint8 (H, W, 3) or (H, W), got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr)
    detector, predictor = load_models()
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
