"""Face framing: crop a square around the face and resize it, carrying the landmarks along.

All functions are pure and work on uint8 RGB images and (68, 2) float32 pixel landmarks.
Pixel convention: pixel (row i, column j) has its centre at x = j, y = i (OpenCV / dlib).

The training pipeline frames, randomly crops and flips in one resampling: ``window_box``
turns "frame ``box`` at ``full`` pixels, then crop ``size`` pixels at (y, x)" into the
sub-box that ``crop_and_resize`` resamples straight to ``size`` pixels (optionally
mirrored).
"""
from __future__ import annotations

import cv2
import numpy as np

from data_pipelines.landmarks.template import MIRROR_INDEX


def face_box(landmarks: np.ndarray, scale: float) -> tuple[float, float, float]:
    """Square box (centre x, centre y, side) framing the face described by 68 landmarks.

    The centre is the midpoint between the eye centre and the chin (landmark 8) pulled slightly
    up towards the brows; the side is ``scale`` times the larger of the jaw width (0 -> 16) and
    the brow-to-chin height. ``scale`` ~1.6 frames the whole head with some background.
    """
    lm = np.asarray(landmarks, np.float32)
    eyes = lm[36:48].mean(axis=0)
    chin = lm[8]
    brows = lm[17:27].mean(axis=0)
    centre = 0.5 * (eyes + chin) * 0.8 + 0.2 * brows
    width = float(np.linalg.norm(lm[16] - lm[0]))
    height = float(np.linalg.norm(chin - brows))
    side = scale * max(width, height, 1.0)
    return float(centre[0]), float(centre[1]), side


def window_box(box: tuple[float, float, float], full: int, size: int, y: int, x: int
               ) -> tuple[float, float, float]:
    """The square sub-box of ``box`` seen by the ``size`` x ``size`` window at row ``y``,
    column ``x`` of ``box`` framed at ``full`` x ``full`` pixels.

    ``crop_and_resize(image, lm, window_box(box, full, size, y, x), size)`` equals
    ``crop_and_resize(image, lm, box, full)[y:y + size, x:x + size]`` (same scale, same
    sample positions) without warping the pixels that the crop throws away.
    """
    cx, cy, side = box
    s = full / side
    left = cx + 0.5 - side / 2 + x / s
    top = cy + 0.5 - side / 2 + y / s
    sub = size / s
    return left + sub / 2 - 0.5, top + sub / 2 - 0.5, sub


def mirror_landmark_order(landmarks: np.ndarray) -> np.ndarray:
    """Re-labels landmarks after a horizontal flip: the point that was the image-left eye
    corner is now on the right and becomes the right eye corner (iBUG 68 order), so that
    code reading e.g. landmark 0 as "image-left jaw end" stays right."""
    return np.asarray(landmarks)[MIRROR_INDEX]


def pixel_square(box: tuple[float, float, float]) -> tuple[int, int, int]:
    """(left column, top row, side) of the whole-pixel square nearest to ``box``: the
    pixels that ``crop_and_resize`` resamples (see there)."""
    cx, cy, side = box
    side_px = max(1, int(round(side)))
    return (int(np.floor(cx + 0.5 - side_px / 2 + 0.5)),
            int(np.floor(cy + 0.5 - side_px / 2 + 0.5)), side_px)


def _crop_replicate(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray | None:
    """``image[y0:y0+side, x0:x0+side]`` with edge replication outside the image; None when
    the square misses the image or would need a huge padded copy."""
    h, w = image.shape[:2]
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + side, w), min(y0 + side, h)
    if xb <= xa or yb <= ya or side > 4 * max(h, w):
        return None
    crop = image[ya:yb, xa:xb]
    pads = (ya - y0, y0 + side - yb, xa - x0, x0 + side - xb)
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_REPLICATE)
    return crop


def _warp_affine(image: np.ndarray, lm: np.ndarray | None, box: tuple[float, float, float],
                 out_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """General path (boxes far outside the image): one warpAffine with edge replication."""
    cx, cy, side = box
    s = out_size / side
    if s < 1 / 1.5:  # area pre-resize: warpAffine alone would alias
        w0 = image.shape[1]
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        fx = image.shape[1] / w0  # s up to the rounding of the new size
        cx, cy, side = (cx + 0.5) * fx - 0.5, (cy + 0.5) * fx - 0.5, side * fx
        lm = None if lm is None else (lm + 0.5) * fx - 0.5
        s = out_size / side
    # Maps pixel centres: x' + 0.5 = s * (x + 0.5 - (cx + 0.5 - side / 2)).
    tx = s * (cx + 0.5 - side / 2)
    ty = s * (cy + 0.5 - side / 2)
    matrix = np.array([[s, 0.0, 0.5 * s - 0.5 - tx], [0.0, s, 0.5 * s - 0.5 - ty]], np.float32)
    out = cv2.warpAffine(image, matrix, (out_size, out_size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    if lm is not None:
        lm = (lm @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    return out, lm


def crop_and_resize(image: np.ndarray, landmarks: np.ndarray | None,
                    box: tuple[float, float, float], out_size: int, flip: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resamples the square ``box`` = (centre x, centre y, side) of ``image`` to
    ``out_size`` x ``out_size`` pixels.

    The box is snapped to whole pixels (edges moved by < 0.5 px, the side rounded), so the
    resampling is a crop plus ``cv2.resize``: bilinear, or area averaging when shrinking by
    more than 1.5x (bilinear alone would alias). That is 3-4x cheaper than a general warp
    of a 3-channel image, and sub-pixel framing precision does not matter for training
    data. Pixels outside the source image are filled by edge replication (no black borders
    that would make the mask region trivially detectable). Landmarks are mapped with the
    same transform (``x' + 0.5 = s * (x + 0.5 - left edge)``, s = out_size / side).
    ``flip`` mirrors the output horizontally (landmark positions too; their order is kept:
    see ``mirror_landmark_order``).
    """
    lm = None if landmarks is None else np.asarray(landmarks, np.float32)
    x0, y0, side = pixel_square(box)
    crop = _crop_replicate(image, x0, y0, side)
    if crop is None:
        out, lm = _warp_affine(image, lm, box, out_size)
    else:
        s = out_size / side
        interp = cv2.INTER_AREA if s < 1 / 1.5 else cv2.INTER_LINEAR
        out = cv2.resize(crop, (out_size, out_size), interpolation=interp)
        if lm is not None:
            lm = ((lm + np.float32(0.5) - np.float32([x0, y0])) * np.float32(s)
                  - np.float32(0.5)).astype(np.float32)
    if flip:
        out = cv2.flip(out, 1)
        if lm is not None:
            lm = lm.copy()
            lm[:, 0] = (out_size - 1) - lm[:, 0]
    return out, lm


def resize_square(image: np.ndarray, landmarks: np.ndarray | None, out_size: int
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Centre-crops the image to a square and resizes it (for pre-aligned crops)."""
    h, w = image.shape[:2]
    side = float(min(h, w))
    return crop_and_resize(image, landmarks, (w / 2.0, h / 2.0, side), out_size)


def uncrop(face: np.ndarray, box: tuple[float, float, float], image_shape: tuple[int, ...]
           ) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """The inverse of ``crop_and_resize(image, None, box, face.shape[0])``: ``face`` (a
    square crop, any channels, uint8 or float) resampled back to the box's whole-pixel
    square and clipped to an image of ``image_shape``. Returns (patch, (rows, columns))
    with ``image[rows, columns]`` the pixels the patch covers, or None when the box misses
    the image. Bilinear when enlarging, area averaging when shrinking by more than 1.5x."""
    h, w = image_shape[:2]
    x0, y0, side = pixel_square(box)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if xb <= xa or yb <= ya:
        return None
    size = face.shape[0]
    interp = cv2.INTER_AREA if side < size / 1.5 else cv2.INTER_LINEAR
    patch = cv2.resize(face, (side, side), interpolation=interp)
    if face.ndim == 3 and patch.ndim == 2:  # cv2 drops a single channel axis
        patch = patch[..., None]
    return patch[ya - y0:yb - y0, xa - x0:xb - x0], (slice(ya, yb), slice(xa, xb))
