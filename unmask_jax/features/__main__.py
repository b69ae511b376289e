"""Command line: embed aligned face chips, or convert PyTorch checkpoints to Flax files.

  python -m unmask_jax.features embed --backbone=dlib|arcface_iresnet50|arcface_iresnet100|
      irse50 [--weights=PATH] --out=emb.json IMAGE...
  python -m unmask_jax.features convert --kind=arcface_iresnet50|arcface_iresnet100|irse50|
      vgg16|vgg19|fid_inception --src=model.pth --dst=weights.msgpack|weights.npz
  python -m unmask_jax.features bench [--batch=1] [--reps=10]

``bench`` prints the per-image latency of every network on the default JAX device (jit,
fp32, best of ``reps`` after a warm-up); ArcFace, VGG19 and the FID Inception run with
random weights of the real shapes, since their weights do not ship.

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


def bench(batch: int = 1, reps: int = 10) -> list[tuple[str, float]]:
    """(name, ms per image) for each feature network."""
    import time

    import jax
    import jax.numpy as jnp

    from unmask_jax.features import (arcface, identity, inception, lpips, vgg,
                                     weights as weights_lib)

    rng = np.random.default_rng(0)

    def img(size: int):
        return jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)

    def timed(fn, *args) -> float:
        jax.block_until_ready(fn(*args))
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best = min(best, time.perf_counter() - t)
        return 1000.0 * best / batch

    rows = []
    v16 = {"params": jax.tree_util.tree_map(jnp.asarray, weights_lib.vgg16_imagenet_params())}
    m16 = vgg.VGGFeatures("vgg16", ("relu5_3",), "imagenet")
    rows.append(("VGG16 features 256 (to relu5_3)", timed(jax.jit(m16.apply), v16, img(256))))
    m19 = vgg.VGGFeatures("vgg19", ("relu5_4",), "imagenet")
    rows.append(("VGG19 features 256 (to relu5_4)",
                 timed(jax.jit(m19.apply), weights_lib.random_variables(m19, (1, 32, 32, 3)), img(256))))
    for net in ("alex", "vgg16"):
        rows.append((f"LPIPS-{net} 256 (per pair)",
                     timed(jax.jit(lpips.lpips_distance), lpips.load_lpips(net), img(256),
                           img(256))))
    for kind in ("arcface_iresnet50", "arcface_iresnet100", "irse50"):
        m = arcface.make_arcface(kind)
        rows.append((f"{kind} 112", timed(jax.jit(m.apply),
                                          weights_lib.random_variables(m, (1, 112, 112, 3)), img(112))))
    net, variables = identity.load_identity_net("dlib")
    rows.append(("dlib ResNet 150", timed(jax.jit(net.embed), variables, img(150))))
    m = inception.FIDInceptionV3()
    rows.append(("FID Inception 256 -> 299 (pool3)",
                 timed(jax.jit(m.apply), weights_lib.random_variables(m, (1, 75, 75, 3)),
                       img(256))))
    return rows


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
                                 "vgg16", "vgg19", "fid_inception"])
    p_conv.add_argument("--src", required=True)
    p_conv.add_argument("--dst", required=True)
    p_bench = sub.add_parser("bench", help="per-image latency of each network")
    p_bench.add_argument("--batch", type=int, default=1)
    p_bench.add_argument("--reps", type=int, default=10)
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
        elif args.command == "convert":
            dst = convert_checkpoint(args.kind, args.src, args.dst)
            print(f"wrote {dst}")
        else:
            import jax

            print(f"device: {jax.devices()[0].device_kind}, fp32, batch {args.batch}")
            for name, ms in bench(args.batch, args.reps):
                print(f"{name:34s} {ms:9.1f} ms/image")
    except MissingWeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
