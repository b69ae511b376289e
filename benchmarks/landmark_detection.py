"""Throughput (images/s) of on-the-fly dlib landmark detection through the training pipeline.

    python benchmarks/landmark_detection.py --data_dir=/path/to/lfw [--images=200]
        [--resolution=256] [--read_threads=1,2] [--modes=pool,lock] [--batch_size=8]
        [--rounds=2] [--repo=PATH]

Runs ``pipeline.train_dataset`` on LFW with ``landmarks="dlib"`` and an empty landmark
cache folder (so every image is detected on the fly: HOG face detector, 2x-upsampled retry
when no face is found, 68-point shape predictor), in this process (``num_workers=0``), and
times ``--images`` images after a one-batch warm-up, for each mode and read-thread count:

* ``pool``  -- the code as it is: each read thread borrows its own (detector, predictor)
               pair from ``detect``'s pool, detections run in parallel;
* ``lock``  -- the obvious fix, for comparison: one shared pair behind one lock (every
               detection serialised);
* ``asis``  -- no patching at all (for ``--repo`` pointing at an older checkout: the
               unfixed code, which crashes with more than one read thread).

Before timing, the pool is filled to ``read_threads`` pairs (``detect.preload``) so the
figures are steady-state throughput, not model loading. Prints images/s (wall), CPU cores
used, CPU ms per image and the skip counts (``no_face``); each mode runs ``--rounds``
rounds, each round over every read-thread count, and the table gives each configuration's
best and median round (the same images every run: same seed). The machine's
load average is printed: on a shared machine the wall figures move with other jobs.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def _import_pipeline(repo: str):
    sys.path.insert(0, repo)
    from data_pipelines import pipeline  # pylint: disable=import-outside-toplevel
    from data_pipelines.landmarks import detect  # pylint: disable=import-outside-toplevel
    return pipeline, detect


def _lock_mode(detect) -> None:
    """Replaces the pool by one shared pair behind one lock (serialised detection)."""
    pair = detect.load_models()
    lock = threading.Lock()

    @contextlib.contextmanager
    def serialised():
        with lock:
            yield pair

    detect.pooled_models = serialised


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run_once(pipeline, detect, data_dir: str, cache_dir: str, resolution: int,
             read_threads: int, images: int, batch_size: int, mode: str) -> dict:
    cfg = pipeline.DataConfig(
        source="lfw", data_dir=data_dir, resolution=resolution, read_threads=read_threads,
        num_workers=0, source_options={"landmarks": "dlib", "cache_dir": cache_dir})
    if mode == "pool":
        detect.preload(read_threads)
    ds = pipeline.train_dataset(cfg, batch_size=batch_size)
    it = iter(ds)
    next(it)  # warm-up: threads started, buffers filling
    n = 0
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    while n < images:
        n += len(next(it)["index"])
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    if hasattr(it, "close"):
        it.close()
    return {"images": n, "wall": wall, "img_s": n / wall, "cores": cpu / wall,
            "cpu_ms": 1e3 * cpu / n, "skipped": dict(ds.skip_counter.counts)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="LFW root")
    parser.add_argument("--images", type=int, default=200, help="timed images per run")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--read_threads", default="1,2")
    parser.add_argument("--modes", default="pool,lock", help="pool, lock, asis")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                        help="checkout whose data_pipelines to import")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"pool", "lock", "asis"}
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}")
    modes.sort(key=lambda m: m == "lock")  # "lock" patches detect for good: run it last
    threads = [int(v) for v in args.read_threads.split(",") if v]
    pipeline, detect = _import_pipeline(args.repo)
    import cv2  # pylint: disable=import-outside-toplevel
    cv2.setNumThreads(1)
    print(f"# repo {args.repo}; {os.cpu_count()} CPUs; load average at start "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"# lfw {args.data_dir}, landmarks=dlib on the fly, resolution {args.resolution}, "
          f"batch {args.batch_size}, {args.images} timed images per run, "
          f"{args.rounds} rounds")
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as cache_dir:  # empty: no landmark cache
        for mode in modes:
            if mode == "lock":
                _lock_mode(detect)
            for _ in range(args.rounds):
                for rt in threads:
                    r = run_once(pipeline, detect, args.data_dir, cache_dir, args.resolution,
                                 rt, args.images, args.batch_size, mode)
                    results.setdefault((mode, rt), []).append(r)
                    print(f"  {mode:<5} read_threads={rt}: {r['img_s']:.1f} img/s "
                          f"({r['images']} in {r['wall']:.1f} s, {r['cores']:.2f} cores, "
                          f"skipped {r['skipped']})", flush=True)
    print(f"# load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    header = (f"{'mode':<6} {'threads':>7} {'best img/s':>10} {'median':>8} {'cores':>6} "
              f"{'CPU ms/img':>10}")
    print(header)
    print("-" * len(header))
    for (mode, rt), rs in results.items():
        best = max(rs, key=lambda r: r["img_s"])
        print(f"{mode:<6} {rt:>7} {best['img_s']:>10.1f} "
              f"{statistics.median(r['img_s'] for r in rs):>8.1f} {best['cores']:>6.2f} "
              f"{best['cpu_ms']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
