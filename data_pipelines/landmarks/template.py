"""A mean frontal 68-point face and the helpers that place it on an image.

Used in three situations (see shared/specs/mask_synthesis.md):

* a source gives only five points (CelebA: eyes, nose, mouth corners): ``fit_68_from_5``
  fits ``MEAN_FACE_68`` to them with a least-squares similarity transform;
* a pre-aligned crop with no landmarks at all, when the config explicitly asks for the
  fixed template: ``template_landmarks``;
* tests and previews that need a plausible face without any dataset.

``MEAN_FACE_68`` is built here from ordinary anatomical proportions (no dataset file): the
face box is [0, 1]^2 with x to the image right and y down; the jaw spans the box width at
eye level, the chin (landmark 8) touches the bottom, the brows nearly touch the top. The
shape is exactly mirror-symmetric about x = 0.5. Index convention (0-based, iBUG/dlib):
jaw 0-16, brows 17-26, nose bridge 27-30, nose base 31-35, eyes 36-41 (the subject's right
eye, image left) and 42-47, outer lips 48-59, inner lips 60-67.
"""
from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------
# The mean shape: the image-left half (and the midline) written out, the rest mirrored.
# ---------------------------------------------------------------------------------------

# Points with x < 0.5 (or on the midline), in the face box [0, 1]^2.
_LEFT_HALF: dict[int, tuple[float, float]] = {
    # Jaw: from the image-left ear at about eye level down to the chin.
    0: (0.000, 0.215),
    1: (0.008, 0.335),
    2: (0.025, 0.455),
    3: (0.055, 0.570),
    4: (0.105, 0.678),
    5: (0.175, 0.775),
    6: (0.262, 0.860),
    7: (0.370, 0.932),
    8: (0.500, 1.000),
    # Brow (image left): outer end to inner end, arched.
    17: (0.075, 0.090),
    18: (0.145, 0.040),
    19: (0.230, 0.025),
    20: (0.315, 0.038),
    21: (0.395, 0.070),
    # Nose bridge (midline), top to tip.
    27: (0.500, 0.195),
    28: (0.500, 0.292),
    29: (0.500, 0.389),
    30: (0.500, 0.485),
    # Nose base: image-left nostril wing to the columella.
    31: (0.405, 0.545),
    32: (0.450, 0.562),
    33: (0.500, 0.572),
    # Eye (image left): outer corner, upper lid, inner corner, lower lid.
    36: (0.170, 0.205),
    37: (0.220, 0.175),
    38: (0.280, 0.175),
    39: (0.330, 0.210),
    40: (0.280, 0.225),
    41: (0.220, 0.225),
    # Outer lips: left corner, upper lip to the midline ...
    48: (0.295, 0.720),
    49: (0.365, 0.680),
    50: (0.440, 0.655),
    51: (0.500, 0.665),
    # ... and the lower lip from the midline back towards the left corner.
    57: (0.500, 0.805),
    58: (0.430, 0.795),
    59: (0.360, 0.768),
    # Inner lips.
    60: (0.318, 0.720),
    61: (0.440, 0.700),
    62: (0.500, 0.704),
    66: (0.500, 0.738),
    67: (0.440, 0.735),
}

# Mirror pairs (index, mirrored index); midline points mirror onto themselves.
_MIRROR_PAIRS: tuple[tuple[int, int], ...] = (
    *((i, 16 - i) for i in range(8)),
    *((17 + i, 26 - i) for i in range(5)),
    (31, 35), (32, 34),
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
    (48, 54), (49, 53), (50, 52), (59, 55), (58, 56),
    (60, 64), (61, 63), (67, 65),
)
MIDLINE_INDICES: tuple[int, ...] = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


def _mirror_index() -> np.ndarray:
    mirror = np.arange(68)
    for i, j in _MIRROR_PAIRS:
        mirror[i], mirror[j] = j, i
    return mirror


#: ``MIRROR_INDEX[i]`` is the landmark that mirrors landmark ``i`` (left <-> right).
MIRROR_INDEX: np.ndarray = _mirror_index()


def _build_mean_face() -> np.ndarray:
    shape = np.full((68, 2), np.nan, dtype=np.float64)
    for i, (x, y) in _LEFT_HALF.items():
        shape[i] = (x, y)
    for i, j in _MIRROR_PAIRS:
        shape[j] = (1.0 - shape[i, 0], shape[i, 1])
    if np.isnan(shape).any():  # pragma: no cover - construction bug guard
        raise AssertionError("mean face has undefined points")
    return shape.astype(np.float32)


#: Mean frontal 68-point face in the face box [0, 1]^2, float32 (68, 2), (x, y).
MEAN_FACE_68: np.ndarray = _build_mean_face()
MEAN_FACE_68.setflags(write=False)

# ---------------------------------------------------------------------------------------
# Five points.
# ---------------------------------------------------------------------------------------

#: Order of the five points everywhere in the project (CelebA's order).
FIVE_POINT_NAMES: tuple[str, ...] = (
    "left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

#: Approximate five points of CelebA's aligned 178x218 crops, (x, y) pixels, in the order
#: of ``FIVE_POINT_NAMES`` ("left" = image left).
CELEBA_ALIGNED_5: np.ndarray = np.array(
    [[69.0, 111.0], [108.0, 111.0], [88.0, 135.0], [72.0, 152.0], [105.0, 152.0]],
    dtype=np.float32)
CELEBA_ALIGNED_5.setflags(write=False)
CELEBA_ALIGNED_SIZE: tuple[int, int] = (218, 178)  # (height, width)

#: 68-point indices averaged for each of the five points.
five_point_indices: tuple[tuple[int, ...], ...] = (
    tuple(range(36, 42)),  # image-left eye centre
    tuple(range(42, 48)),  # image-right eye centre
    (30,),                 # nose tip
    (48,),                 # image-left mouth corner
    (54,),                 # image-right mouth corner
)


def five_points_from_68(landmarks68: np.ndarray) -> np.ndarray:
    """The five points (eyes, nose tip, mouth corners) of a 68-point shape, float32 (5, 2)."""
    pts = _as_points(landmarks68, 68, "landmarks68")
    return np.stack([pts[list(idx)].mean(axis=0) for idx in five_point_indices]
                    ).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Similarity fitting.
# ---------------------------------------------------------------------------------------


def _as_points(points: np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape != (n, 2):
        raise ValueError(f"{name} must have shape ({n}, 2), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (uniform scale, rotation, translation; no reflection)
    mapping ``src`` (N, 2) onto ``dst`` (N, 2); returns the 2x3 matrix ``M`` with
    ``dst ~= src @ M[:, :2].T + M[:, 2]``.

    Solved linearly in (a, b, tx, ty) with x' = a x - b y + tx, y' = b x + a y + ty, which
    recovers an exact similarity exactly.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    design = np.zeros((2 * n, 4))
    design[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)], axis=1)
    design[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)], axis=1)
    rhs = dst.reshape(-1)
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, rhs, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def fit_68_from_5(points5: np.ndarray) -> np.ndarray:
    """A plausible 68-point shape, float32 (68, 2), from five points (eyes, nose tip, mouth
    corners in the order of ``FIVE_POINT_NAMES``): the least-squares similarity that maps
    the mean face's five points onto ``points5``, applied to ``MEAN_FACE_68``."""
    dst = _as_points(points5, 5, "points5")
    matrix = fit_similarity(five_points_from_68(MEAN_FACE_68), dst)
    return apply_affine(matrix, MEAN_FACE_68).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Fixed template for pre-aligned crops.
# ---------------------------------------------------------------------------------------

#: Where the face box sits in a generic aligned crop, as fractions of (width, height):
#: (x0, y0, x1, y1). Puts the eyes at ~42% of the height, the mouth at ~73%, the chin at
#: 92%, and the eyes ~30% of the width apart -- typical of FFHQ-style square crops.
DEFAULT_FACE_BOX: tuple[float, float, float, float] = (0.2, 0.32, 0.8, 0.92)


def template_landmarks(height: int, width: int,
                       face_box: tuple[float, float, float, float] | None = None
                       ) -> np.ndarray:
    """The fixed 68-point template for a pre-aligned ``height x width`` crop, float32
    (68, 2) pixels: ``MEAN_FACE_68`` stretched into ``face_box`` = (x0, y0, x1, y1) given
    as fractions of (width, height) (default ``DEFAULT_FACE_BOX``). Only for crops known to
    be aligned, chosen explicitly by config -- never a silent fallback for a failed
    detection."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    x0, y0, x1, y1 = DEFAULT_FACE_BOX if face_box is None else face_box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"face_box must be (x0, y0, x1, y1) with x1>x0, y1>y0, got {face_box}")
    # Pixel-centre convention: fraction 0 is the left edge (-0.5), 1 the right edge.
    scale = np.array([(x1 - x0) * width, (y1 - y0) * height])
    offset = np.array([x0 * width, y0 * height]) - 0.5
    return (MEAN_FACE_68.astype(np.float64) * scale + offset).astype(np.float32)


def celeba_aligned_landmarks(height: int = CELEBA_ALIGNED_SIZE[0],
                             width: int = CELEBA_ALIGNED_SIZE[1]) -> np.ndarray:
    """68 points for a CelebA aligned crop (default 178x218), fitted to
    ``CELEBA_ALIGNED_5`` rescaled to ``height x width``."""
    sy = height / CELEBA_ALIGNED_SIZE[0]
    sx = width / CELEBA_ALIGNED_SIZE[1]
    return fit_68_from_5(CELEBA_ALIGNED_5 * np.array([sx, sy], dtype=np.float32))
