"""Writers of tiny datasets in the real on-disk formats, for tests (never real data).

Each ``write_*`` function creates its dataset under the given folder (normally pytest's
``tmp_path``) from generated images and returns what a test needs to check a loader:

* ``write_lfw``     -- ``<root>/<Name>/<Name>_NNNN.jpg`` (250x250 JPEG);
* ``write_celeba``  -- ``img_align_celeba/`` + partition + identity (+ landmark) files;
* ``write_folder``  -- nested image folder with mixed formats;
* ``write_paired``  -- ``with_mask/`` + ``without_mask/`` pairs, masked = target with a
  filled rectangle;
* ``write_bad_images`` -- truncated / random-bytes / grayscale / RGBA / CMYK / tiny files.

Images are drawn cartoon faces (``draw_face``): deterministic per seed, but not faces a
detector recognises. ``blank_image`` is a smooth gradient with certainly no face.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data_pipelines.landmarks import template as lm_template

LFW_PEOPLE: dict[str, int] = {"Alice_Aardvark": 1, "Bob_Builder": 4, "Carol_Crane": 2}


def draw_face(seed: int, height: int, width: int) -> np.ndarray:
    """A simple deterministic cartoon face, uint8 (H, W, 3) RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = rng.uniform(40, 200, size=3)
    image = bg[None, None, :] * (0.7 + 0.3 * yy[..., None] / height)
    cx, cy = width * rng.uniform(0.45, 0.55), height * rng.uniform(0.45, 0.55)
    rx, ry = width * 0.28, height * 0.36
    skin = rng.uniform([150, 100, 80], [240, 190, 160])
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    image[inside] = skin
    image = np.clip(image, 0, 255).astype(np.uint8)
    eye_y, eye_dx = int(cy - ry * 0.2), int(rx * 0.4)
    radius = max(2, int(min(height, width) * 0.03))
    for dx in (-eye_dx, eye_dx):
        cv2.circle(image, (int(cx + dx), eye_y), radius, (30, 30, 30), -1)
    cv2.ellipse(image, (int(cx), int(cy + ry * 0.45)), (int(rx * 0.35), max(2, radius)),
                0, 0, 180, (150, 40, 40), -1)
    return image


def blank_image(height: int = 200, width: int = 200) -> np.ndarray:
    """A smooth colour gradient (no face anywhere), uint8 (H, W, 3)."""
    ramp = np.linspace(20, 230, width, dtype=np.float32)[None, :]
    down = np.linspace(0.6, 1.0, height, dtype=np.float32)[:, None]
    base = ramp * down
    return np.stack([base, base[::-1] * 0.8, np.full_like(base, 90.0)], axis=2).astype(np.uint8)


def save_rgb(path: Path, image: np.ndarray, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(image).save(path, **kwargs)
    return path


# ---------------------------------------------------------------------------------------
# LFW.
# ---------------------------------------------------------------------------------------


def write_lfw(root: Path, people: dict[str, int] | None = None, size: int = 250) -> dict[str, int]:
    """LFW layout under ``root``; returns {name: number of images}."""
    people = dict(LFW_PEOPLE if people is None else people)
    for p, (name, count) in enumerate(sorted(people.items())):
        for k in range(1, count + 1):
            save_rgb(root / name / f"{name}_{k:04d}.jpg", draw_face(100 * p + k, size, size))
    return people


# ---------------------------------------------------------------------------------------
# CelebA.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class CelebAFixture:
    root: Path
    files: list[str]               # image files written (sorted)
    partition: dict[str, int]      # file -> 0/1/2 (also lists one file that is missing)
    identity: dict[str, int]       # file -> identity id
    points5: dict[str, np.ndarray]  # file -> (5, 2) written to the landmark file
    missing_file: str              # listed in the text files but not on disk


def _jittered_five(rng: np.random.Generator) -> np.ndarray:
    """CelebA-like five points: the mean face's five points under a random similarity
    placed near the aligned positions (so a 5->68 fit is exact)."""
    base = lm_template.five_points_from_68(lm_template.fit_68_from_5(
        lm_template.CELEBA_ALIGNED_5)).astype(np.float64)
    angle = np.deg2rad(rng.uniform(-4, 4))
    scale = rng.uniform(0.95, 1.05)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = base.mean(axis=0)
    shift = rng.uniform(-2, 2, size=2)
    return np.rint((base - centre) @ rot.T + centre + shift).astype(np.float32)


def write_celeba(root: Path, identities: int = 4, per_identity: int = 2,
                 with_landmarks: bool = False, seed: int = 0) -> CelebAFixture:
    """CelebA aligned layout (178x218 JPEGs). Identity k goes to partition k % 3, so every
    partition is non-empty when ``identities >= 3``. One extra listed file is absent."""
    rng = np.random.default_rng(seed)
    image_dir = root / "img_align_celeba"
    image_dir.mkdir(parents=True, exist_ok=True)
    height, width = lm_template.CELEBA_ALIGNED_SIZE
    files, partition, identity, points5 = [], {}, {}, {}
    number = 1
    for ident in range(identities):
        for _ in range(per_identity):
            name = f"{number:06d}.jpg"
            save_rgb(image_dir / name, draw_face(number, height, width))
            files.append(name)
            partition[name] = ident % 3
            identity[name] = 1000 + ident
            points5[name] = _jittered_five(rng)
            number += 1
    missing = f"{number:06d}.jpg"
    partition[missing], identity[missing] = 0, 1000
    points5[missing] = _jittered_five(rng)
    rows = sorted(partition)
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{f} {partition[f]}\n" for f in rows))
    (root / "identity_CelebA.txt").write_text("".join(f"{f} {identity[f]}\n" for f in rows))
    if with_landmarks:
        header = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
                  "leftmouth_y rightmouth_x rightmouth_y")
        lines = [str(len(rows)), header]
        for f in rows:
            values = " ".join(f"{int(v):>4d}" for v in points5[f].reshape(-1))
            lines.append(f"{f} {values}")
        (root / "list_landmarks_align_celeba.txt").write_text("\n".join(lines) + "\n")
    return CelebAFixture(root, sorted(files), partition, identity, points5, missing)


# ---------------------------------------------------------------------------------------
# Folder and pairs.
# ---------------------------------------------------------------------------------------


def write_folder(root: Path) -> list[str]:
    """Nested folder: 2 images at the root, 2 in ``a/``, 1 in ``b/c/`` (jpg/png/bmp/webp)
    plus a text file and a hidden file. Returns the sorted relative image paths."""
    files = {"x.jpg": 1, "y.png": 2, "a/1.jpeg": 3, "a/2.bmp": 4, "b/c/3.webp": 5}
    for rel, seed in files.items():
        save_rgb(root / rel, draw_face(seed, 96, 80))
    (root / "notes.txt").write_text("not an image")
    save_rgb(root / ".hidden.png", draw_face(9, 96, 80))
    return sorted(files)


@dataclasses.dataclass
class PairedFixture:
    root: Path
    rects: dict[str, tuple[int, int, int, int]]  # masked rel path -> (x0, y0, x1, y1)
    targets: dict[str, str]                     # masked rel path -> target rel path


def write_paired(root: Path, count: int = 3, size: int = 128, masked_dir: str = "with_mask",
                 unmasked_dir: str = "without_mask", ext: str = ".png") -> PairedFixture:
    """Face Mask Lite style pairs: ``<unmasked_dir>/seedNNNN<ext>`` and
    ``<masked_dir>/with-mask-default-mask-seedNNNN<ext>`` (= the target with a filled
    rectangle over the lower face). One extra masked file has no target."""
    rects, targets = {}, {}
    for k in range(count):
        target = draw_face(500 + k, size, size)
        x0, y0 = size // 4 + k, size // 2 + k
        x1, y1 = 3 * size // 4, size - size // 8
        masked = target.copy()
        masked[y0:y1, x0:x1] = (40, 110, 220)  # blue, far from any skin or background
        stem = f"seed{k:04d}"
        save_rgb(root / unmasked_dir / f"{stem}{ext}", target)
        rel = f"{masked_dir}/with-mask-default-mask-{stem}{ext}"
        save_rgb(root / rel, masked)
        rects[rel] = (x0, y0, x1, y1)
        targets[rel] = f"{unmasked_dir}/{stem}{ext}"
    save_rgb(root / masked_dir / f"with-mask-default-mask-orphan{ext}", draw_face(1, size, size))
    return PairedFixture(root, rects, targets)


def rect_mask(shape: tuple[int, int], rect: tuple[int, int, int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    x0, y0, x1, y1 = rect
    out[y0:y1, x0:x1] = 1
    return out


# ---------------------------------------------------------------------------------------
# Bad inputs.
# ---------------------------------------------------------------------------------------

#: file name -> expected outcome: an error reason, or "converted" / "ok".
BAD_IMAGE_EXPECTATIONS: dict[str, str] = {
    "good.jpg": "ok",
    "truncated.jpg": "corrupt",
    "random_bytes.jpg": "corrupt",
    "empty.png": "corrupt",
    "gray.png": "converted",
    "rgba.png": "converted",
    "cmyk.jpg": "converted",
    "palette.png": "converted",
    "gray16.png": "converted",
    "tiny.png": "too_small",
}


def write_bad_images(root: Path, seed: int = 0) -> dict[str, str]:
    """Write the files of ``BAD_IMAGE_EXPECTATIONS`` under ``root``; returns that dict."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    face = draw_face(seed, 120, 100)
    save_rgb(root / "good.jpg", face)
    buffer = root / "truncated.jpg"
    Image.fromarray(face).save(buffer, format="JPEG", quality=95)
    data = buffer.read_bytes()
    buffer.write_bytes(data[: len(data) // 2])
    (root / "random_bytes.jpg").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "empty.png").write_bytes(b"")
    Image.fromarray(face).convert("L").save(root / "gray.png")
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba).save(root / "rgba.png")
    Image.fromarray(face).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    Image.fromarray(face).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    gray16 = (face.mean(axis=2).astype(np.uint16) * 257)
    Image.fromarray(gray16).save(root / "gray16.png")
    save_rgb(root / "tiny.png", draw_face(seed, 20, 20))
    return dict(BAD_IMAGE_EXPECTATIONS)
