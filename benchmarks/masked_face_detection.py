"""How often each face detector of ``--mode=predict`` finds a face that wears a mask.

    python benchmarks/masked_face_detection.py --data_dir=../shared/data/lfw [--images=100]
        [--detectors=hog,cnn,hog+cnn] [--cnn_backends=jax,dlib] [--seed=0] [--write_dir=DIR]

Takes ``--images`` photos of different people (LFW layout ``<Name>/<Name>_NNNN.jpg``, or
any folder of photos; the first photo of each person, in name order), finds the 68
landmarks on the *unmasked* photo with dlib's HOG detector (photos where it finds none are
left out: there is no reference face), draws a synthetic mask on the full photo with the
project's mask synthesis (``data_pipelines.masks.synthesize_mask``, default settings, seeded
per photo), and runs each detector (``data_pipelines.landmarks.detect.detect_faces``) on the
masked photo. A face counts as found when the largest detection's landmark centre lies within
a quarter of the reference face's width of the reference centre. Prints, per detector, the
found rate on masked photos, the rate on the same photos unmasked, and milliseconds per
photo (wall, this process, one thread). The detectors that use the MMOD CNN run once per
``--cnn_backends`` entry: ``jax`` (``unmask_jax.features.dlib_mmod``, compiled outside the
timing) and ``dlib`` (dlib's own), the two implementations ``predict.cnn_backend`` chooses
from; the table also counts the photos where the two return different landmarks.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data_pipelines import masks  # noqa: E402  pylint: disable=wrong-import-position
from data_pipelines.landmarks import detect  # noqa: E402  pylint: disable=wrong-import-position

EXTENSIONS = (".jpg", ".jpeg", ".png")


def photos(data_dir: str, count: int) -> list[str]:
    """The first photo of each person folder (name order), else the folder's photos."""
    out = []
    for name in sorted(os.listdir(data_dir)):
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if f.lower().endswith(EXTENSIONS))
            if files:
                out.append(os.path.join(path, files[0]))
        elif name.lower().endswith(EXTENSIONS):
            out.append(path)
        if len(out) >= count:
            break
    return out


def found(landmarks: list[np.ndarray], reference: np.ndarray) -> bool:
    if not landmarks:
        return False
    width = float(np.ptp(reference[:, 0]))
    return float(np.linalg.norm(landmarks[0].mean(0) - reference.mean(0))) < 0.25 * width


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--detectors", default="hog,cnn,hog+cnn")
    p.add_argument("--cnn_backends", default="jax,dlib")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write_dir", default=None,
                   help="also save the masked photos there (JPEG, quality 95): a folder of "
                        "masked faces for --mode=predict")
    args = p.parse_args(argv)
    detectors = args.detectors.split(",")
    cfg = masks.MaskSynthesisConfig()
    pairs = []
    for i, path in enumerate(photos(args.data_dir, args.images)):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        reference = detect.detect_landmarks(rgb)
        if reference is None:
            continue
        masked, _, params = masks.synthesize_mask(rgb, reference, np.random.default_rng(
            [args.seed, i]), cfg)
        pairs.append((rgb, np.ascontiguousarray(masked), reference, params.mask_type))
        if args.write_dir:
            os.makedirs(args.write_dir, exist_ok=True)
            Image.fromarray(masked).save(os.path.join(
                args.write_dir, os.path.splitext(os.path.basename(path))[0] + ".jpg"),
                quality=95)
    print(f"{len(pairs)} photos with a reference face (HOG on the unmasked photo) of "
          f"{args.images} read from {args.data_dir}")
    backends = {"dlib": None}
    if "jax" in args.cnn_backends.split(","):
        from unmask_jax.predict.faces import jax_cnn
        backends["jax"] = jax_cnn()
    backends = {b: backends[b] for b in args.cnn_backends.split(",")}
    for cnn in backends.values():  # load the models (and compile) outside the timing
        detect.detect_faces(pairs[0][1], detector="cnn", cnn=cnn)
        if cnn is not None:
            cnn(pairs[0][1], 1)  # the 2x retry's canvas too
    types = sorted({t for *_, t in pairs})
    print("| detector | CNN | found, masked | " + " | ".join(types)
          + " | found, unmasked | ms / masked photo |")
    print("|---|---|---|" + "---|" * len(types) + "---|---|")
    results = {}
    for name in detectors:
        for backend in (["-"] if name == "hog" else list(backends)):
            cnn = backends.get(backend)
            hits, hits_plain, out = {t: 0 for t in types}, 0, []
            start = time.perf_counter()
            for _, masked, reference, kind in pairs:
                out.append(detect.detect_faces(masked, detector=name, cnn=cnn))
                hits[kind] += found(out[-1], reference)
            ms = 1000 * (time.perf_counter() - start) / len(pairs)
            results[name, backend] = out
            for rgb, _, reference, _ in pairs:
                hits_plain += found(detect.detect_faces(rgb, detector=name, cnn=cnn), reference)
            total = sum(hits.values())
            per_type = " | ".join(f"{hits[t]}/{sum(k == t for *_, k in pairs)}" for t in types)
            print(f"| {name} | {backend} | {total}/{len(pairs)} "
                  f"({100 * total / len(pairs):.0f}%) | {per_type} | {hits_plain}/{len(pairs)} "
                  f"| {ms:.0f} |")
    for name in detectors:
        if (name, "jax") in results and (name, "dlib") in results:
            differ = sum(
                len(a) != len(b) or any(np.abs(x - y).max() > 1.0 for x, y in zip(a, b))
                for a, b in zip(results[name, "jax"], results[name, "dlib"]))
            print(f"{name}: jax and dlib CNN give different landmarks (> 1 px) on {differ} of "
                  f"{len(pairs)} masked photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
