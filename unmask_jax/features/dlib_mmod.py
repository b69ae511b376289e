"""dlib's CNN face detector (MMOD, ``mmod_human_face_detector.dat``) in JAX.

The network, its input and its decoding follow what dlib does for
``cnn_face_detection_model_v1`` (``loss_mmod<con<1,9,9,1,1, rcon5<rcon5<rcon5<downsampler<
input_rgb_image_pyramid<pyramid_down<6>>>>>>>>``); kinds, filter counts, kernels, strides,
paddings, the detector window, the NMS thresholds and the input means all come from the
``.dat`` file (:mod:`dlib_serialize`):

* **input**: the image as ``(pixel - mean) / 256`` is the first level of an image pyramid
  (each level ``floor(5/6)`` of the previous one's size, bilinear with aligned corners, down
  to 5 rows); the levels are tiled into one canvas (a first column of levels, then a second
  one from the bottom up) with ``pyramid_padding`` between levels and
  ``pyramid_outer_padding`` around, the rest zero;
* **network**: convolutions, each batch norm folded into its convolution as dlib folds it
  into an affine layer for inference (``gamma / sqrt(running_var + eps)``), ReLUs; one score
  map at 1/8 of the canvas;
* **decoding**: every score above ``threshold`` (dlib's ``adjust_threshold``, 0) is a
  detection window (80x80 for this model) centred where that output maps in the canvas
  (``p * stride - padding + k // 2`` through every convolution); the window is mapped to the
  image through the pyramid level nearest its centre (``p * 6/5 + 0.3`` per level), then
  greedy non-maximum suppression in score order (dlib's ``test_box_overlap``).

Differences from dlib, measured by the parity test: float rounding (scores agree to ~1e-5).
``bucket`` pads the canvas at the bottom and right to a multiple of that many pixels, so
that photos of similar size share one compiled program; every layer's output beyond the
real canvas is zeroed, so each convolution sees there the zeros its own padding would give,
and the scores are those of dlib's canvas.

Upsampling (``upsample`` > 0, dlib's ``upsample_num_times``) doubles the image per step
as dlib's ``pyramid_up`` does (:func:`pyramid_up2`; pixels within one grey level of dlib's)
and maps the boxes back with ``pyramid_down<2>``'s ``point_down``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from unmask_jax.features.dlib_serialize import DlibFormatError, DlibLayer

PYRAMID_N = 6        # pyramid_down<6>: each level 5/6 of the previous one
MIN_LEVEL_ROWS = 5   # dlib stops the pyramid below this height


@dataclasses.dataclass(frozen=True)
class MmodSpec:
    """Static description of an MMOD detector read from a dlib file.

    ``convs``: per convolution (kernel (kh, kw), stride (sy, sx), padding (py, px), ReLU
    after it). ``window``: the detector window (width, height). ``nms``: (IoU threshold,
    percent-covered threshold) of dlib's ``test_box_overlap``.
    """

    convs: tuple[tuple[tuple[int, int], tuple[int, int], tuple[int, int], bool], ...]
    window: tuple[int, int]
    nms: tuple[float, float]
    mean_rgb: tuple[float, float, float]
    pyramid_padding: int
    pyramid_outer_padding: int


Params = list[tuple[np.ndarray, np.ndarray]]  # (kernel HWIO, bias) per convolution


def build_mmod(layers: Sequence[DlibLayer]) -> tuple[MmodSpec, Params]:
    """(spec, params) from :func:`dlib_serialize.read_dlib_network` layers of an MMOD
    detector: con [bn_con | affine] [relu] ... con, loss_mmod. Batch norms and affines are
    folded into the preceding convolution."""
    if not layers or layers[0].kind != "input_rgb_image_pyramid":
        raise DlibFormatError("an MMOD detector starts with input_rgb_image_pyramid")
    if layers[-1].kind != "loss_mmod":
        raise DlibFormatError(f"an MMOD detector ends with loss_mmod, not {layers[-1].kind}")
    convs, params = [], []
    for layer in layers[1:-1]:
        if layer.kind == "con":
            f = layer.fields
            w = np.asarray(layer.arrays["filters"], np.float32)  # (out, in, kh, kw)
            params.append((w.transpose(2, 3, 1, 0).copy(),
                           np.asarray(layer.arrays["biases"], np.float32).copy()))
            convs.append([(f["nr"], f["nc"]), (f["stride_y"], f["stride_x"]),
                          (f["padding_y"], f["padding_x"]), False])
        elif layer.kind in ("bn_con", "affine"):
            if not convs or convs[-1][3]:
                raise DlibFormatError(f"{layer.kind} must follow a convolution")
            a = layer.arrays
            if layer.kind == "bn_con":
                scale = a["gamma"] / np.sqrt(a["running_variances"] + layer.fields["eps"])
                shift = a["beta"] - scale * a["running_means"]
            else:
                scale, shift = a["gamma"].reshape(-1), a["beta"].reshape(-1)
            kernel, bias = params[-1]
            params[-1] = ((kernel * scale).astype(np.float32),
                          (bias * scale + shift).astype(np.float32))
        elif layer.kind == "relu":
            if not convs or convs[-1][3]:
                raise DlibFormatError("relu must follow a convolution (and its batch norm)")
            convs[-1][3] = True
        else:
            raise DlibFormatError(f"unexpected layer {layer.kind!r} in an MMOD detector")
    if not convs or params[-1][0].shape[-1] != 1:
        raise DlibFormatError("an MMOD detector (one window) ends with a 1-filter convolution")
    inp, loss = layers[0].fields, layers[-1].fields
    spec = MmodSpec(
        convs=tuple((tuple(k), tuple(s), tuple(p), relu) for k, s, p, relu in convs),
        window=(int(loss["detector_width"]), int(loss["detector_height"])),
        nms=(float(loss["nms_iou_thresh"]), float(loss["nms_percent_covered_thresh"])),
        mean_rgb=(inp["avg_red"], inp["avg_green"], inp["avg_blue"]),
        pyramid_padding=int(inp["pyramid_padding"]),
        pyramid_outer_padding=int(inp["pyramid_outer_padding"]))
    return spec, params


# ------------------------------------------------------------------------------------------
# The tiled pyramid (host-side geometry; rectangles are (top, left, height, width)).

Rect = tuple[int, int, int, int]


def pyramid_layout(nr: int, nc: int, padding: int, outer_padding: int
                   ) -> tuple[list[Rect], int, int]:
    """Where each pyramid level of an ``nr`` x ``nc`` image sits in the tiled canvas, and
    the canvas size, as dlib lays it out (``compute_tiled_image_pyramid_details``)."""
    sizes = [(nr, nc)]
    h, w = nr, nc
    rate = (PYRAMID_N - 1.0) / PYRAMID_N  # in double, then times the size: as dlib rounds
    while True:
        h, w = math.floor(rate * h), math.floor(rate * w)
        if h * w == 0 or h < MIN_LEVEL_ROWS:
            break
        sizes.append((h, w))
    total = sum(hh + padding for hh, _ in sizes) - 2 * padding
    height, prev_w = 0, 0
    for hh, ww in sizes:  # the first column goes down until the rest fits beside it
        if ww <= nc - prev_w - padding and (height - nr) * 2 >= total - nr:
            break
        height += hh + padding
        prev_w = ww
    height -= padding
    canvas_h, canvas_w = height + 2 * outer_padding, nc + 2 * outer_padding
    rects: list[Rect] = []
    y = outer_padding
    i = 0
    while y < height + outer_padding and i < len(sizes):
        rects.append((y, outer_padding, *sizes[i]))
        y += sizes[i][0] + padding
        i += 1
    y -= padding
    right = outer_padding + nc - 1
    while i < len(sizes):  # the second column, bottom up, right-aligned
        hh, ww = sizes[i]
        top, left = y - hh, right - ww + 1
        if top < outer_padding + nr and left < outer_padding + nc:  # would touch level 0
            break
        rects.append((top, left, hh, ww))
        y -= hh + padding
        i += 1
    return rects, canvas_h, canvas_w


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Bilinear resize of ``x`` along ``axis`` with aligned corners (dlib's
    ``resize_bilinear``: source position ``i * (n_in - 1) / max(n_out - 1, 1)`` in float32)."""
    n_in = x.shape[axis]
    scale = np.float32(n_in - 1) / np.float32(max(n_out - 1, 1))
    pos = np.arange(n_out, dtype=np.float32) * scale
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo.astype(np.float32)).reshape([-1 if a == axis else 1
                                                  for a in range(x.ndim)])
    a, b = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
    return (1 - frac) * a + frac * b


def tiled_canvas(image: np.ndarray, rects: Sequence[Rect], canvas_h: int, canvas_w: int
                 ) -> np.ndarray:
    """The float32 canvas (canvas_h, canvas_w, C) of the normalised ``image`` (the first
    level) and its pyramid, each level resized from the one before (host side: cheap next to
    the network, and its shapes do not reach the compiled program)."""
    canvas = np.zeros((canvas_h, canvas_w, image.shape[-1]), np.float32)
    level = np.asarray(image, np.float32)
    for i, (top, left, h, w) in enumerate(rects):
        if i:  # along columns, then rows: dlib's (1-tb)*((1-lr)*tl + lr*tr) + tb*(...)
            level = _resize_axis(_resize_axis(level, w, 1), h, 0)
        canvas[top:top + h, left:left + w] = level
    return canvas


def score_map(spec: MmodSpec, params: Params, canvas: jax.Array,
              valid: jax.Array | None = None) -> jax.Array:
    """The network's (rows, cols) detection scores on one canvas (H, W, 3).

    ``valid``: int (2,) = the real canvas' (height, width) when ``canvas`` is that canvas
    zero-padded at the bottom and right; every layer's output beyond the real canvas' output
    size is then zeroed, so that each convolution sees zeros there, as its own padding would
    be: the scores within the real output are those of the real canvas (up to rounding).
    """
    x = canvas[None]
    if valid is not None:
        h, w = valid[0], valid[1]
    for (kernel, bias), ((kh, kw), stride, pad, relu) in zip(params, spec.convs):
        x = lax.conv_general_dilated(
            x, kernel, window_strides=stride, padding=[(pad[0], pad[0]), (pad[1], pad[1])],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST) + bias
        if relu:
            x = jnp.maximum(x, 0)
        if valid is not None:
            h = (h + 2 * pad[0] - kh) // stride[0] + 1
            w = (w + 2 * pad[1] - kw) // stride[1] + 1
            rows = lax.broadcasted_iota(jnp.int32, x.shape, 1)
            cols = lax.broadcasted_iota(jnp.int32, x.shape, 2)
            x = jnp.where((rows < h) & (cols < w), x, 0)
    return x[0, :, :, 0]


def output_to_canvas(spec: MmodSpec, rows: np.ndarray, cols: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Canvas (y, x) of score-map positions: ``p * stride - padding + k // 2`` through every
    convolution, last first (dlib's ``map_output_to_input``)."""
    y, x = rows.astype(np.float64), cols.astype(np.float64)
    for (kh, kw), (sy, sx), (py, px), _ in reversed(spec.convs):
        y = y * sy - py + kh // 2
        x = x * sx - px + kw // 2
    return y, x


def _nearest_level(rects: Sequence[Rect], y: float, x: float) -> int:
    best, best_d = 0, math.inf
    for i, (top, left, h, w) in enumerate(rects):
        dy = max(top - y, 0.0, y - (top + h - 1))
        dx = max(left - x, 0.0, x - (left + w - 1))
        d = dx * dx + dy * dy
        if d < best_d:
            best, best_d = i, d
    return best


def _overlaps(a: np.ndarray, b: np.ndarray, iou: float, covered: float) -> bool:
    """dlib's ``test_box_overlap`` on (left, top, right, bottom) boxes (areas +1 inclusive)."""
    def area(r):
        return max(r[2] - r[0] + 1, 0.0) * max(r[3] - r[1] + 1, 0.0)
    inner = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    if inner == 0:
        return False
    aa, ab = area(a), area(b)
    return inner / (aa + ab - inner) > iou or inner / aa > covered or inner / ab > covered


#: (x, y) offset of dlib's pyramid_down<2> between an image and its 2x upsampling:
#: point_up(p) = (p + offset) * 2, point_down(p) = p / 2 - offset.
_UP2_OFFSET = np.array([1.25, 0.75, 1.25, 0.75])


def pyramid_up2(rgb: np.ndarray) -> np.ndarray:
    """The image doubled as dlib's ``pyramid_up`` with ``pyramid_down<2>`` does it (what its
    CNN detector's ``upsample_num_times`` runs): the size of the image rectangle's
    ``rect_up`` (``(h - 1 + 0.75) * 2`` by ``(w - 1 + 1.25) * 2`` as the last row/column,
    rounded half away from zero), bilinear with aligned corners, truncated to uint8 (pixels
    within 1 grey level of dlib's)."""
    h, w = rgb.shape[:2]
    out_h = int(np.floor((h - 1 + 0.75) * 2 + 0.5)) + 1
    out_w = int(np.floor((w - 1 + 1.25) * 2 + 0.5)) + 1
    # The pyramid's bilinear resize (columns, then rows), on 0..255 values.
    out = _resize_axis(_resize_axis(rgb.astype(np.float32), out_w, 1), out_h, 0)
    return np.clip(np.floor(out), 0, 255).astype(np.uint8)


def output_size(spec: MmodSpec, h: int, w: int) -> tuple[int, int]:
    """The score map's size for an ``h`` x ``w`` canvas."""
    for (kh, kw), (sy, sx), (py, px), _ in spec.convs:
        h = (h + 2 * py - kh) // sy + 1
        w = (w + 2 * px - kw) // sx + 1
    return h, w


#: The XLA CPU library of the detector's program (``unmask_jax.backends``): without
#: YNNPACK's fusions these convolutions (3 -> 16 .. 45 channels, 5x5 and 9x9) run 2-2.6x
#: faster (a 250x250 photo's canvas: 48 -> 23 ms; its 2x retry's: 226 -> 88 ms; 2 cores;
#: benchmarks/README.md).
CPU_LIBRARY = "no_ynnpack"


@functools.lru_cache(maxsize=None)
def _jitted_scores(platform: str):
    """``score_map`` jitted for ``platform`` (on the CPU, for :data:`CPU_LIBRARY`)."""
    from unmask_jax import backends
    return backends.jit(score_map, platform=platform, cpu_library=CPU_LIBRARY,
                        static_argnums=0)


class MmodDetector:
    """Face rectangles from an MMOD detector; see the module docstring.

    ``detector(rgb, upsample=0)`` -> list of (left, top, right, bottom, score), pixels of
    ``rgb`` (uint8 (H, W, 3) or (H, W)), highest score first. ``bucket``: the canvas is
    zero-padded at the bottom and right to a multiple of this many pixels before the network
    (each layer's output beyond the real canvas zeroed: same scores), so that photos of
    similar size share one compiled program (1 = no padding).
    """

    def __init__(self, spec: MmodSpec, params: Params, threshold: float = 0.0,
                 bucket: int = 32) -> None:
        self.spec = spec
        self.params = [(jnp.asarray(k), jnp.asarray(b)) for k, b in params]
        self.threshold = float(threshold)
        self.bucket = max(1, int(bucket))

    @classmethod
    def from_file(cls, path: str, **kwargs) -> "MmodDetector":
        from unmask_jax.features.dlib_serialize import read_dlib_network_file
        spec, params = build_mmod(read_dlib_network_file(path))
        return cls(spec, params, **kwargs)

    def scores(self, rgb: np.ndarray) -> tuple[np.ndarray, list[Rect]]:
        """The score map of ``rgb`` (uint8 (H, W, 3)) as dlib's network computes it, and the
        pyramid levels' rectangles (top, left, height, width) in the canvas."""
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        rects, canvas_h, canvas_w = pyramid_layout(
            h, w, self.spec.pyramid_padding, self.spec.pyramid_outer_padding)
        x = (rgb.astype(np.float32) - np.float32(self.spec.mean_rgb)) / np.float32(256)
        canvas = tiled_canvas(x, rects, canvas_h, canvas_w)
        b = self.bucket
        padded = np.zeros((-(-canvas_h // b) * b, -(-canvas_w // b) * b, 3), np.float32)
        padded[:canvas_h, :canvas_w] = canvas
        out_h, out_w = output_size(self.spec, canvas_h, canvas_w)
        if out_h < 1 or out_w < 1:  # too small for the network: no scores (dlib: none)
            return np.zeros((0, 0), np.float32), rects
        run = _jitted_scores(jax.default_backend())
        scores = np.asarray(run(self.spec, self.params, jnp.asarray(padded),
                                jnp.asarray([canvas_h, canvas_w], jnp.int32)))
        return scores[:out_h, :out_w], rects

    def __call__(self, rgb: np.ndarray, upsample: int = 0
                 ) -> list[tuple[float, float, float, float, float]]:
        rgb = np.asarray(rgb)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        h, w = rgb.shape[:2]
        if h * w == 0:
            return []
        for _ in range(int(upsample)):
            rgb = pyramid_up2(rgb)
        scores, rects = self.scores(rgb)
        rows, cols = np.nonzero(scores > self.threshold)
        order = np.argsort(-scores[rows, cols], kind="stable")
        rows, cols = rows[order], cols[order]
        cy, cx = output_to_canvas(self.spec, rows, cols)
        ww, wh = (self.spec.window[0] - 1) / 2, (self.spec.window[1] - 1) / 2
        kept: list[np.ndarray] = []
        out = []
        ratio = PYRAMID_N / (PYRAMID_N - 1)
        for r, c, y, x in zip(rows, cols, cy, cx):
            level = _nearest_level(rects, y, x)
            top, left = rects[level][:2]
            box = np.array([x - ww - left, y - wh - top, x + ww - left, y + wh - top])
            for _ in range(level):
                box = box * ratio + 0.3
            for _ in range(int(upsample)):  # pyramid_down<2>::point_down per step
                box = box / 2 - _UP2_OFFSET
            if any(_overlaps(k, box, *self.spec.nms) for k in kept):
                continue
            kept.append(box)
            out.append((*(float(v) for v in box), float(scores[r, c])))
        return out
