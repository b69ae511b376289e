"""Throughput of the training data pipeline (images/s), and where the time goes.

    python benchmarks/pipeline_throughput.py [--data_dir=PATH_TO_LFW] [--landmarks=template]
        [--resolutions=128,256] [--workers=0,2] [--batch_size=32] [--seconds=8]

For each source (``synthetic``; ``lfw`` when ``--data_dir`` is given), resolution and
worker count it runs ``pipeline.train_dataset`` (default augmentation: jitter crop, flip,
all mask types) and prints

* ``img/s``       -- wall-clock images per second;
* ``cores``       -- CPU seconds used per wall second by the main process and its Grain
                     workers together (from the OS counters, so time stolen by other jobs
                     on a shared machine is not counted);
* ``img/s/core``  -- images per CPU second: what one dedicated core would deliver. This
                     is the number to compare with the target (>= 200 at 256 for mask
                     synthesis from known landmarks, i.e. LFW with template landmarks).

Then a per-image breakdown, timed stage by stage on one thread (OpenCV on one thread):
read (synthetic render, or file decode + landmark lookup), framing (box + one resampling
that also does the jitter crop and flip), mask synthesis, batching + float conversion, the
pickle round trip of one example (what crossing to the main process costs besides the
pipe), and from the worker runs the CPU per image spent in the main process (receive,
filter, batch, convert) and in the workers.

LFW uses ``landmarks=template`` by default (known landmarks, no detector); pass
``--landmarks=dlib`` to use a precomputed landmark cache instead. ``--profile`` prints the
top functions of a cProfile run of the per-example work. Timings on a shared machine are
noisy: the load average is printed next to the table.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pickle
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipelines import align, masks, pipeline  # noqa: E402  (after the path fix)


def _cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` and its live descendants."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def make_config(source: str, resolution: int, workers: int, data_dir: str | None,
                landmarks: str, num_records: int) -> pipeline.DataConfig:
    options: dict[str, Any] = ({"num_records": num_records} if source == "synthetic"
                               else {"landmarks": landmarks})
    return pipeline.DataConfig(source=source, data_dir=data_dir, source_options=options,
                               resolution=resolution, num_workers=workers)


def measure_pipeline(cfg: pipeline.DataConfig, batch_size: int, seconds: float,
                     warmup_batches: int = 3) -> dict[str, float]:
    """Iterates ``train_dataset(cfg)`` for about ``seconds`` after a warm-up."""
    it = iter(pipeline.train_dataset(cfg, batch_size=batch_size))
    for _ in range(warmup_batches):  # worker start-up, first imports, buffers filling
        next(it)
    proc = psutil.Process()
    main0, all0 = proc.cpu_times(), _cpu_seconds(proc)
    t0 = time.perf_counter()
    n = 0
    while True:
        batch = next(it)
        n += len(batch["index"])
        wall = time.perf_counter() - t0
        if wall >= seconds and n >= 4 * batch_size:
            break
    cpu = _cpu_seconds(proc) - all0
    main1 = proc.cpu_times()
    main_cpu = (main1.user + main1.system) - (main0.user + main0.system)
    if hasattr(it, "close"):
        it.close()
    return {"images": n, "wall": wall, "cpu": cpu, "main_cpu": main_cpu,
            "img_s": n / wall, "cores": cpu / wall, "img_s_core": n / max(cpu, 1e-9)}


def _thread_timer(fn: Callable[[int], Any], n: int) -> float:
    """Mean thread CPU seconds of ``fn(i)`` over i = 0..n-1 (after one warm-up call)."""
    fn(0)
    t0 = time.thread_time()
    for i in range(n):
        fn(i)
    return (time.thread_time() - t0) / n


def stage_breakdown(source, cfg: pipeline.DataConfig, n: int = 48) -> dict[str, float]:
    """Per-image CPU milliseconds of each stage of ``PrepareExample`` (training mode)."""
    res = cfg.resolution
    full = int(round(res * cfg.jitter_scale))
    mask_cfg = masks.MaskSynthesisConfig.from_dict(dict(cfg.mask))
    out: dict[str, float] = {}
    out["read"] = _thread_timer(lambda i: source[i], n)
    records = [source[i] for i in range(n)]
    rng = np.random.default_rng(0)

    def frame(i: int):
        r = records[i]
        box = align.face_box(r["landmarks"], cfg.face_scale)
        y, x = (int(v) for v in rng.integers(0, full - res + 1, size=2))
        return align.crop_and_resize(r["image"], r["landmarks"],
                                     align.window_box(box, full, res, y, x), res,
                                     flip=bool(i % 2))

    out["framing+crop+flip"] = _thread_timer(frame, n)
    framed = [frame(i) for i in range(n)]
    out["mask synthesis"] = _thread_timer(
        lambda i: masks.synthesize_mask(framed[i][0], framed[i][1], rng, mask_cfg), n)
    prepare = pipeline.PrepareExample(source, cfg, train=True)
    examples = [prepare(records[i], np.random.default_rng(i)) for i in range(n)]
    out["batching+float"] = _thread_timer(
        lambda i: pipeline.to_model_batch(examples[:32]), 4) / 32
    out["pickle round trip (IPC)"] = _thread_timer(
        lambda i: pickle.loads(pickle.dumps(examples[i], protocol=pickle.HIGHEST_PROTOCOL)), n)
    out["PrepareExample (frame+mask)"] = _thread_timer(
        lambda i: prepare(records[i], np.random.default_rng(i)), n)
    return {k: v * 1e3 for k, v in out.items()}


def profile_prepare(source, cfg: pipeline.DataConfig, n: int = 64, top: int = 20) -> None:
    prepare = pipeline.PrepareExample(source, cfg, train=True)
    records = [source[i] for i in range(n)]
    prof = cProfile.Profile()
    prof.enable()
    examples = [prepare(r, np.random.default_rng(i)) for i, r in enumerate(records)]
    pipeline.to_model_batch(examples[:32])
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=None, help="LFW root (adds the lfw rows)")
    parser.add_argument("--landmarks", default="template", choices=("template", "dlib"),
                        help="LFW landmarks: fixed template, or the precomputed dlib cache")
    parser.add_argument("--resolutions", default="128,256")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="measured time per row (after the warm-up)")
    parser.add_argument("--num_records", type=int, default=10000, help="synthetic records")
    parser.add_argument("--skip_breakdown", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the per-example work at the largest resolution")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)  # as in the Grain workers; the table counts CPU time anyway
    sources = ["synthetic"] + (["lfw"] if args.data_dir else [])
    resolutions, worker_counts = _ints(args.resolutions), _ints(args.workers)
    print(f"# host: {os.cpu_count()} CPUs; load average at start "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"# batch {args.batch_size}, {args.seconds:.0f} s per row, train augmentation "
          "(jitter crop + flip), all mask types")
    header = (f"{'source':<10} {'res':>4} {'workers':>7} {'img/s':>8} {'cores':>6} "
              f"{'img/s/core':>10} {'main ms/img':>11}")
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, int, int], dict[str, float]] = {}
    built: dict[tuple[str, int], Any] = {}
    for name in sources:
        for res in resolutions:
            for workers in worker_counts:
                cfg = make_config(name, res, workers, args.data_dir if name == "lfw" else None,
                                  args.landmarks, args.num_records)
                r = measure_pipeline(cfg, args.batch_size, args.seconds)
                results[(name, res, workers)] = r
                print(f"{name:<10} {res:>4} {workers:>7} {r['img_s']:>8.1f} "
                      f"{r['cores']:>6.2f} {r['img_s_core']:>10.1f} "
                      f"{1e3 * r['main_cpu'] / r['images']:>11.2f}", flush=True)
    print(f"# load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    if not args.skip_breakdown:
        columns: dict[str, dict[str, float]] = {}
        for name in sources:
            for res in resolutions:
                cfg = make_config(name, res, 0, args.data_dir if name == "lfw" else None,
                                  args.landmarks, args.num_records)
                source = built.setdefault((name, res), pipeline.build_source(cfg, "train"))
                stages = stage_breakdown(source, cfg)
                for workers in worker_counts:
                    r = results.get((name, res, workers))
                    if r and workers > 0:
                        main_ms = 1e3 * r["main_cpu"] / r["images"]
                        stages[f"main process/img, {workers} workers"] = main_ms
                        stages[f"worker processes/img, {workers} workers"] = (
                            1e3 * r["cpu"] / r["images"] - main_ms)
                columns[f"{name} {res}"] = stages
        print("\n# per-image CPU ms by stage (stages timed one at a time on one thread; "
              "the last rows from the runs above)")
        rows = list(dict.fromkeys(k for c in columns.values() for k in c))
        width = max(len(r) for r in rows)
        print(f"{'stage':<{width}} " + " ".join(f"{c:>14}" for c in columns))
        for row in rows:
            print(f"{row:<{width}} " + " ".join(
                f"{columns[c][row]:>14.2f}" if row in columns[c] else f"{'':>14}"
                for c in columns))
    if args.profile:
        res = max(resolutions)
        name = sources[-1]
        cfg = make_config(name, res, 0, args.data_dir if name == "lfw" else None,
                          args.landmarks, args.num_records)
        print(f"\n# cProfile of PrepareExample, {name} at {res}")
        profile_prepare(built.get((name, res)) or pipeline.build_source(cfg, "train"), cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
