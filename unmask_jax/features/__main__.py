"""Command line: embed aligned face chips, or convert PyTorch checkpoints to Flax files.

  python -m unmask_jax.features embed --backbone=dlib|arcface_iresnet50|arcface_iresnet100|
      irse50 [--weights=PATH] --out=emb.json IMAGE...
  python -m unmask_jax.features convert --kind=arcface_iresnet50|arcface_iresnet100|irse50|
      vgg16|vgg19 --src=model.pth --dst=weights.msgpack|weights.npz

``embed`` expects already aligned chips (150x150 for dlib, 112x112 for ArcFace); other sizes
are resized (area averaging). It writes ``{"backbone", "weights", "input_size",
"embeddings": [{"image", "embedding"}]}`` with the raw (unnormalised) vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np


def _load_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def embed_images(backbone: str, paths: Sequence[str], weights: str | None = None,
                 batch_size: int = 16) -> tuple[list[list[float]], tuple[int, int], str]:
    """Embeddings (lists of floats) for image files; also the input size and weights used."""
    import jax
    import jax.numpy as jnp

    from unmask_jax.features import identity, weights as weights_lib

    net, variables = identity.load_identity_net(backbone, weights)
    if backbone == "dlib":
        used = str(weights_lib.dlib_face_model_path(weights))
    else:
        used = str(weights_lib.resolve_converted(backbone, weights))
    embed = jax.jit(net.embed)
    out: list[list[float]] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        # Resize each image to the net size first so differently sized files can batch.
        imgs = [identity.resize_images(jnp.asarray(_load_image(p), jnp.float32)[None]
                                       / 127.5 - 1.0, net.input_size)[0] for p in chunk]
        emb = np.asarray(embed(variables, jnp.stack(imgs)))
        out += [[float(v) for v in e] for e in emb]
    return out, net.input_size, used


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unmask_jax.features",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_embed = sub.add_parser("embed", help="write one embedding per aligned face image")
    p_embed.add_argument("--backbone", required=True,
                         choices=["dlib", "arcface_iresnet50", "arcface_iresnet100", "irse50"])
    p_embed.add_argument("--weights", default=None, help="weights file (see module doc)")
    p_embed.add_argument("--out", required=True, help="output JSON path")
    p_embed.add_argument("--batch_size", type=int, default=16)
    p_embed.add_argument("images", nargs="+")
    p_conv = sub.add_parser("convert", help="PyTorch checkpoint -> .msgpack / .npz")
    p_conv.add_argument("--kind", required=True,
                        choices=["arcface_iresnet50", "arcface_iresnet100", "irse50",
                                 "vgg16", "vgg19"])
    p_conv.add_argument("--src", required=True)
    p_conv.add_argument("--dst", required=True)
    args = parser.parse_args(argv)

    from unmask_jax.features.weights import MissingWeightsError, convert_checkpoint

    try:
        if args.command == "embed":
            embs, size, used = embed_images(args.backbone, args.images, args.weights,
                                            args.batch_size)
            doc = {"backbone": args.backbone, "weights": used, "input_size": list(size),
                   "embeddings": [{"image": p, "embedding": e}
                                  for p, e in zip(args.images, embs)]}
            with open(args.out, "w") as f:
                json.dump(doc, f)
            print(f"wrote {len(embs)} embeddings ({len(embs[0])}-d) to {args.out}")
        else:
            dst = convert_checkpoint(args.kind, args.src, args.dst)
            print(f"wrote {dst}")
    except MissingWeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
