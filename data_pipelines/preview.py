"""Writes a PNG grid of pipeline examples for a quick look at the data.

    python -m data_pipelines.preview --source=NAME [--data_dir=PATH] [--resolution=256]
        [--num=16] [--seed=0] [--split=train] [--source_option k=v ...] [--identity]
        [--mask_types=surgical,n95] [--mask_option k=v ...] [--cols=N] [--train [--vflip] [--rot90]
        [--identity_augment=none|flip|flip_rotate]] --out=grid.png

Every example is one strip of tiles: masked | mask map | target [| identity image]; the
strips are laid out ``--cols`` to a row (default: about square). The examples come from
``pipeline.eval_dataset`` on ``--split``: ``--num`` records of the split spread over its
identities (one image per person first, as the evaluation set), framed as in training but
without random crop or flip, masks seeded by ``--seed``. With ``--train`` they come from
``pipeline.train_dataset`` instead (shuffled, one epoch, with the training augmentation:
jitter crop, flip, and the ``--vflip`` / ``--rot90`` / ``--identity_augment`` settings of
``DataConfig``). Either way the same arguments give a byte-identical PNG. Records the
pipeline skips (bad files, no landmarks, no second image of the person) are left out and
counted in the log.

``--source_option`` passes source options (repeatable), e.g. ``landmarks=template`` for LFW
without a landmark cache or ``num_records=64`` for ``synthetic``; values are read as Python
literals when they parse as one (numbers, tuples, True/False), else as strings.
``--mask_option`` sets mask synthesis fields the same way (``masks.MaskSynthesisConfig``),
e.g. ``straps_prob=1.0`` to see every mask with its ear loops.
"""
from __future__ import annotations

import argparse
import ast
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines import masks, pipeline
from data_pipelines.sources import DatasetNotFoundError

log = logging.getLogger(__name__)

GAP = 4                      # pixels between strips
TILE_GAP = 1                 # pixels between the tiles of one strip
BACKGROUND = (255, 255, 255)


def parse_option(text: str) -> tuple[str, Any]:
    """``"k=v"`` -> (k, v) with v a Python literal when it parses as one, else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--source_option expects key=value, got {text!r}")
    try:
        parsed: Any = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), parsed


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 (the inverse of the pipeline's conversion)."""
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def strip_tiles(batch: dict[str, np.ndarray], i: int) -> list[np.ndarray]:
    """The tiles of example ``i`` of a batch: masked, mask map, target [, identity]."""
    tiles = [to_uint8(batch["masked"][i]),
             np.repeat((batch["mask"][i] * 255).astype(np.uint8), 3, axis=2),
             to_uint8(batch["target"][i])]
    if "identity" in batch:
        tiles.append(to_uint8(batch["identity"][i]))
    return tiles


def make_grid(strips: list[list[np.ndarray]], cols: int) -> np.ndarray:
    """Lays out strips (lists of equal-size tiles) ``cols`` to a row on a white canvas."""
    if not strips:
        raise ValueError("no examples to show")
    res = strips[0][0].shape[0]
    per = len(strips[0])
    strip_w = per * res + (per - 1) * TILE_GAP
    rows = math.ceil(len(strips) / cols)
    width = cols * strip_w + (cols - 1) * GAP
    height = rows * res + (rows - 1) * GAP
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[...] = BACKGROUND
    for k, tiles in enumerate(strips):
        r, c = divmod(k, cols)
        y0 = r * (res + GAP)
        for t, tile in enumerate(tiles):
            x0 = c * (strip_w + GAP) + t * (res + TILE_GAP)
            canvas[y0:y0 + res, x0:x0 + res] = tile
    return canvas


def build_config(args: argparse.Namespace) -> pipeline.DataConfig:
    options = dict(parse_option(o) for o in args.source_option)
    mask: dict[str, Any] = {}
    if args.mask_types:
        mask["types"] = tuple(t.strip() for t in args.mask_types.split(",") if t.strip())
        unknown = [t for t in mask["types"] if t not in masks.MASK_TYPES]
        if unknown:
            raise ValueError(f"--mask_types: unknown {unknown}; choose from {masks.MASK_TYPES}")
    mask.update(dict(parse_option(o) for o in args.mask_option))
    return pipeline.DataConfig.from_dict(dict(
        source=args.source, data_dir=args.data_dir, source_options=options,
        eval_split=args.split, resolution=args.resolution, mask=mask,
        train_split=args.split, identity_image=args.identity, seed=args.seed, num_workers=0,
        vflip=args.vflip, rot90=args.rot90, identity_augment=args.identity_augment))


def preview_grid(cfg: pipeline.DataConfig, num: int, cols: int | None = None,
                 train: bool = False) -> np.ndarray:
    """The grid image (uint8 (H, W, 3)) of the first ``num`` usable examples (of the eval
    set, or of the training stream when ``train``)."""
    if train:
        data = pipeline.train_dataset(cfg, batch_size=1, num_epochs=1)
    else:
        data = pipeline.eval_dataset(cfg, batch_size=min(num, 16), num_images=num)
    strips = []
    for batch in data:
        strips.extend(strip_tiles(batch, i) for i in range(len(batch["index"])))
        if len(strips) >= num:
            strips = strips[:num]
            break
    if not strips:
        split = cfg.train_split if train else cfg.eval_split
        raise RuntimeError(f"{cfg.source}: none of the first {num} records of split "
                           f"{split!r} gave an example (see the log for why)")
    cols = cols or max(1, math.ceil(math.sqrt(len(strips))))
    return make_grid(strips, min(cols, len(strips)))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.preview",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="source name (synthetic, lfw, ...)")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--num", type=int, default=16, help="number of examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train",
                        help="split to read: train, test, all (celeba: also validation)")
    parser.add_argument("--source_option", action="append", default=[], metavar="K=V",
                        help="source option, repeatable (e.g. landmarks=template)")
    parser.add_argument("--identity", action="store_true",
                        help="add the identity image (another image of the same person)")
    parser.add_argument("--mask_types", default="",
                        help=f"comma-separated subset of {','.join(masks.MASK_TYPES)}")
    parser.add_argument("--mask_option", action="append", default=[], metavar="K=V",
                        help="mask synthesis field, repeatable (e.g. straps_prob=1.0)")
    parser.add_argument("--cols", type=int, default=None, help="strips per row")
    parser.add_argument("--train", action="store_true",
                        help="show the training stream (augmented) instead of the eval set")
    parser.add_argument("--vflip", action="store_true",
                        help="DataConfig.vflip (training only: use with --train)")
    parser.add_argument("--rot90", action="store_true",
                        help="DataConfig.rot90 (training only: use with --train)")
    parser.add_argument("--identity_augment", default="flip",
                        help="DataConfig.identity_augment: none, flip or flip_rotate "
                             "(training only: use with --train)")
    parser.add_argument("--out", required=True, help="output PNG path")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error("--num must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
        grid = preview_grid(cfg, args.num, args.cols, train=args.train)
    except (DatasetNotFoundError, ValueError) as err:  # bad data path, split or option
        print(f"preview: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out, format="PNG")
    rows = "masked | mask | target" + (" | identity" if cfg.identity_image else "")
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]}; each strip: {rows})")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
