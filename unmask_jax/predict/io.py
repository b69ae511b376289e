"""Files in and out for ``--mode=predict``: listing the inputs, decoding any common image
into an upright array in its own channel layout, and writing a result in the input's format.

No JAX here. An image is kept in its *native* layout (``Decoded.native``: uint8 or uint16,
(H, W, C), the channels of ``Decoded.kind``) so that the pixels the model does not change
are written back exactly as they were read; ``Decoded.rgb8()`` is the uint8 RGB view that
detection and the model see.

Kinds: ``gray`` (L, 1-bit, 16-bit grayscale), ``gray_alpha`` (LA), ``rgb``, ``rgba``,
``cmyk`` (JPEG CMYK). Palette images become ``rgb``/``rgba`` (same colours, no palette);
other modes are converted to ``rgb``. 16-bit PNGs (grayscale or colour, with or without
alpha) are decoded and written by OpenCV at 16 bits (Pillow reads 16-bit colour as 8-bit).

EXIF orientation: the array is made upright (as ``ImageOps.exif_transpose``); the result is
turned back before writing and written with the input's EXIF, so the output file has the
input's stored size, orientation tag and metadata. JPEGs are re-encoded with the input's
quantisation tables and chroma subsampling; PNG, BMP, TIFF and WebP (written lossless) keep
unchanged pixels bit-identical.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import os
import warnings
from typing import Any, Iterator

import cv2
import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

#: Extensions tried when a mask/identity folder mirrors the inputs under another extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
EXIF_ORIENTATION = 0x0112


class BadInput(Exception):
    """A file that cannot be processed: ``status`` goes to the report, the run continues."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------
# Listing the inputs.
# --------------------------------------------------------------------------------------------


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split(os.sep))


def list_inputs(path: str, exclude: str | None = None) -> tuple[str, list[str]]:
    """(root, relative paths) of the files ``--input`` names: one file, every file under a
    folder (recursive, sorted; hidden files and ``exclude``, the output folder, skipped:
    non-images are reported, not ignored), or the files a glob matches (``**`` recursive).
    Raises FileNotFoundError when nothing is there."""
    exclude = os.path.realpath(exclude) if exclude else None

    def excluded(p: str) -> bool:
        real = os.path.realpath(p)
        return exclude is not None and (real == exclude or real.startswith(exclude + os.sep))

    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
    if os.path.isdir(path):
        root = os.path.abspath(path)
        rels = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and not excluded(os.path.join(dirpath, d)))
            for name in filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                if not _hidden(rel) and not excluded(full) and os.path.isfile(full):
                    rels.append(rel)
        if not rels:
            raise FileNotFoundError(f"--input={path}: the folder holds no files")
        return root, sorted(rels)
    matches = sorted(os.path.abspath(p) for p in glob.glob(path, recursive=True)
                     if os.path.isfile(p) and not excluded(p))
    if not matches:
        raise FileNotFoundError(f"--input={path}: no such image, folder or matching files")
    root = os.path.commonpath([os.path.dirname(p) for p in matches])
    return root, [os.path.relpath(p, root) for p in matches]


def mirrored(base: str, rel: str) -> str | None:
    """The file for input ``rel`` in a folder ``base`` that mirrors the inputs: the same
    relative path, else the same stem with any image extension; None when there is none."""
    same = os.path.join(base, rel)
    if os.path.isfile(same):
        return same
    stem = os.path.splitext(same)[0]
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


# --------------------------------------------------------------------------------------------
# Orientation.
# --------------------------------------------------------------------------------------------


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels -> upright, for EXIF orientation 1..8 (as ``ImageOps.exif_transpose``)."""
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: np.swapaxes(x, 0, 1), 6: lambda x: np.rot90(x, -1),
           7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1], 8: lambda x: np.rot90(x, 1)}
    op = ops.get(int(orientation))
    return a if op is None else np.ascontiguousarray(op(a))


def unorient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Upright -> stored pixels (the inverse of ``orient``)."""
    inverse = {6: 8, 8: 6}.get(int(orientation), int(orientation))
    return orient(a, inverse)


# --------------------------------------------------------------------------------------------
# Decoding.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Decoded:
    native: np.ndarray           # upright (H, W, C) uint8 or uint16 in ``kind``'s channels
    kind: str                    # gray | gray_alpha | rgb | rgba | cmyk
    format: str                  # Pillow format name: JPEG, PNG, ...
    orientation: int = 1         # EXIF orientation that was applied
    save_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    via_opencv: bool = False     # 16-bit PNG: written back by OpenCV

    @property
    def shape(self) -> tuple[int, int]:
        return self.native.shape[:2]

    @property
    def colour_channels(self) -> int:
        return {"gray": 1, "gray_alpha": 1, "rgb": 3, "rgba": 3, "cmyk": 4}[self.kind]

    @property
    def max_value(self) -> float:
        return 65535.0 if self.native.dtype == np.uint16 else 255.0

    def rgb8(self) -> np.ndarray:
        """uint8 (H, W, 3) RGB: what detection and the model see (alpha dropped)."""
        a = self.native
        if a.dtype == np.uint16:
            a = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
        if self.kind in ("gray", "gray_alpha"):
            return np.ascontiguousarray(np.repeat(a[..., :1], 3, axis=-1))
        if self.kind == "cmyk":
            return np.asarray(Image.fromarray(np.ascontiguousarray(a), "CMYK").convert("RGB"))
        return np.ascontiguousarray(a[..., :3])

    def from_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """float RGB in 0..255 -> float values of this image's colour channels (its scale):
        the inverse of ``rgb8`` (gray: ITU-R 601 luma, as Pillow; CMYK: no black, as
        Pillow's RGB -> CMYK)."""
        rgb = np.asarray(rgb, np.float32)
        if self.kind in ("gray", "gray_alpha"):
            out = (rgb @ np.float32([0.299, 0.587, 0.114]))[..., None]
        elif self.kind == "cmyk":
            out = np.concatenate([255.0 - rgb, np.zeros_like(rgb[..., :1])], axis=-1)
        else:
            out = rgb
        return out * np.float32(257.0) if self.native.dtype == np.uint16 else out


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb limit set to ours while decoding (ours is checked first
    and reported as too_large)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(int(max_pixels), old or 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _png_bit_depth(data: bytes) -> int:
    """Bit depth from a PNG's IHDR (byte 24), 8 when unknown."""
    return data[24] if len(data) > 25 and data[:8] == b"\x89PNG\r\n\x1a\n" else 8


def _decode_opencv16(data: bytes) -> tuple[np.ndarray, str]:
    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise BadInput("unreadable", "OpenCV could not decode this 16-bit PNG (truncated?)")
    if a.ndim == 2:
        return a[..., None], "gray"
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGBA), "rgba"
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB), "rgb"


def _native_from_pil(im: Image.Image) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode == "L":
        return np.asarray(im)[..., None], "gray"
    if mode == "LA":
        return np.asarray(im), "gray_alpha"
    if mode == "RGB":
        return np.asarray(im), "rgb"
    if mode == "RGBA":
        return np.asarray(im), "rgba"
    if mode == "CMYK":
        return np.asarray(im), "cmyk"
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if a.min() >= 0 and a.max() <= 65535:
            return a.astype(np.uint16)[..., None], "gray"
    return np.asarray(im.convert("RGB")), "rgb"


def decode(path: str, max_pixels: int) -> Decoded:
    """The upright image in its native layout; raises ``BadInput`` (unreadable,
    not_an_image, too_large, unsupported) for a file that cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadInput("unreadable", f"cannot read the file: {e.strerror or e}") from None
    if not data:
        raise BadInput("unreadable", "empty file")
    with _pixel_limit(max_pixels):
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # far over the limit: Pillow refuses it
            raise BadInput("too_large", f"{e} (config.predict.max_pixels={max_pixels:,})"
                           ) from None
        except UnidentifiedImageError:
            raise BadInput("not_an_image", "not an image file Pillow can read") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise BadInput("unreadable", f"cannot parse the image header: {e}") from None
        w, h = im.size
        if w * h > max_pixels:
            raise BadInput("too_large", f"{w}x{h} = {w * h:,} pixels is over "
                           f"config.predict.max_pixels={max_pixels:,}")
        if getattr(im, "n_frames", 1) > 1:
            raise BadInput("unsupported", f"animated {im.format} ({im.n_frames} frames): "
                           "only single-frame images are processed")
        fmt = im.format or "PNG"
        try:
            exif = im.getexif()
            orientation = int(exif.get(EXIF_ORIENTATION, 1) or 1)
        except Exception:  # pylint: disable=broad-except  (a broken EXIF block)
            exif, orientation = None, 1
        options: dict[str, Any] = {}
        if im.info.get("exif"):
            options["exif"] = im.info["exif"]
        if im.info.get("icc_profile"):
            options["icc_profile"] = im.info["icc_profile"]
        if im.info.get("dpi"):
            options["dpi"] = im.info["dpi"]
        via_opencv = fmt == "PNG" and _png_bit_depth(data) == 16
        try:
            if via_opencv:
                native, kind = _decode_opencv16(data)
            else:
                im.load()
                native, kind = _native_from_pil(im)
        except BadInput:
            raise
        except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError
                ) as e:
            raise BadInput("unreadable", f"cannot decode the image (truncated or damaged?): "
                           f"{e}") from None
        if fmt == "JPEG":
            if getattr(im, "quantization", None):
                options["qtables"] = im.quantization
            sampling = JpegImagePlugin.get_sampling(im)
            if sampling != -1:
                options["subsampling"] = sampling
        if orientation not in range(1, 9):
            orientation = 1
    return Decoded(native=orient(np.asarray(native), orientation), kind=kind, format=fmt,
                   orientation=orientation, save_options=options, via_opencv=via_opencv)


def load_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A user's mask image -> bool (H, W) upright, True = masked (values > 127 after
    conversion to grayscale; alpha ignored). The mask must have the input's upright size,
    or its stored size with the mask's own EXIF orientation."""
    try:
        with Image.open(path) as im:
            mask = np.asarray(im.convert("L"))
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except (OSError, ValueError, SyntaxError) as e:
        raise BadInput("bad_mask", f"mask {path}: cannot read it ({e})") from None
    mask = orient(mask, orientation)
    if mask.shape != tuple(shape):
        raise BadInput("bad_mask", f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, the "
                       f"image {shape[1]}x{shape[0]}: draw the mask at the image's size")
    return mask > 127


# --------------------------------------------------------------------------------------------
# Encoding.
# --------------------------------------------------------------------------------------------

_PIL_MODES = {("gray", 1): "L", ("gray_alpha", 2): "LA", ("rgb", 3): "RGB",
              ("rgba", 4): "RGBA", ("cmyk", 4): "CMYK"}


def encode(decoded: Decoded, native: np.ndarray, *, upright: bool = False) -> bytes:
    """``native`` (upright, the layout of ``decoded``) as a file in the input's format.
    Turned back to the stored orientation and written with the input's EXIF unless
    ``upright`` (then no EXIF: e.g. the side-by-side image)."""
    a = native if upright else unorient(native, decoded.orientation)
    a = np.ascontiguousarray(a)
    if decoded.via_opencv:
        if a.shape[2] == 1:
            bgr = a[..., 0]
        elif a.shape[2] == 4:
            bgr = cv2.cvtColor(a, cv2.COLOR_RGBA2BGRA)
        else:
            bgr = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".png", bgr)
        if not ok:
            raise BadInput("write_failed", "OpenCV could not encode the 16-bit PNG")
        return buf.tobytes()
    if a.dtype == np.uint16:
        im = Image.fromarray(a[..., 0])  # 16-bit grayscale (mode I;16)
    else:
        im = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a,
                             _PIL_MODES[(decoded.kind, a.shape[2])])
    options = dict(decoded.save_options)
    if upright:
        options.pop("exif", None)
    if decoded.format == "WEBP":
        options["lossless"] = True
    if decoded.format != "JPEG":
        options.pop("qtables", None)
        options.pop("subsampling", None)
    buf = io.BytesIO()
    try:
        im.save(buf, format=decoded.format, **options)
    except (OSError, ValueError, KeyError) as e:
        raise BadInput("write_failed", f"cannot write {decoded.format}: {e}") from None
    return buf.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) image as PNG bytes (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def side_by_side_path(path: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_side_by_side{ext}"
