"""Sample grids and image files: [-1, 1] model images -> uint8 pictures."""
from __future__ import annotations

import io

import numpy as np
from etils import epath
from PIL import Image


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8 0..255 (round to nearest), the evaluation convention."""
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def sample_grid(*rows: np.ndarray, pad: int = 2) -> np.ndarray:
    """Stacks batches (N, H, W, C) in [-1, 1] as rows of a uint8 grid; 1-channel rows are
    shown as grey. Row order is the argument order (e.g. masked | output | target)."""
    rows = [np.repeat(r, 3, axis=-1) if r.shape[-1] == 1 else r for r in rows]
    n, h, w, _ = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = to_uint8(r[j])
    return grid


def write_png(path: str, image: np.ndarray) -> None:
    """Writes a uint8 image as PNG to a local path or gs:// (etils.epath)."""
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    p.write_bytes(buf.getvalue())
