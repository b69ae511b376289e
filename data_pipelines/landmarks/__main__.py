"""Precompute the dlib landmark cache of a whole dataset, in parallel and resumably.

    python -m data_pipelines.landmarks --source=lfw --data_dir=/data/lfw [--split=all]
        [--workers=N] [--cache_dir=DIR] [--save_every=500] [--limit=N]
        [--num_shards=N --shard_index=I] [--option key=value ...]

Builds the source with ``landmarks="none"``, skips keys already in the cache, detects the
rest with a ``multiprocessing`` pool (each worker loads dlib's models once) and saves the
cache every ``--save_every`` images, so the command can be killed and rerun. Images that
fail to decode are not recorded (they are retried next time and counted as errors); images
without a face are recorded as "no face". Paired sources detect on the unmasked target.

``--num_shards/--shard_index`` split the work between independent jobs, each writing its
own shard file; a final run without them merges the shards into the main cache file.
Prints progress and a summary (images, faces found, no-face count, images/s).
"""
from __future__ import annotations

import argparse
import ast
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.landmarks.cache import LandmarkCache
from data_pipelines.landmarks.detect import check_available, detect_landmarks

# Per-worker-process source, set by the pool initializer (not shared between processes).
_WORKER_SOURCE: Any = None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.landmarks",
        description="Precompute the dlib 68-point landmark cache of a face dataset.")
    parser.add_argument("--source", required=True,
                        help="source name: lfw, celeba, folder, paired")
    parser.add_argument("--data_dir", required=True, help="dataset folder")
    parser.add_argument("--split", default="all", help="split to process (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="detector processes (1 = in this process)")
    parser.add_argument("--cache_dir", default=None,
                        help="cache folder (default: next to the data if writable, "
                             "else ~/.cache/unmask_jax/landmarks)")
    parser.add_argument("--save_every", type=int, default=500,
                        help="save the cache every this many new images")
    parser.add_argument("--limit", type=int, default=0,
                        help="process at most this many new images (0 = all)")
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--shard_index", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra source option, e.g. --option masked_dir=masked")
    parser.add_argument("--quiet", action="store_true", help="summary only")
    return parser.parse_args(argv)


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values parsed as Python literals when possible."""
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _init_worker(source: Any) -> None:
    global _WORKER_SOURCE  # pylint: disable=global-statement
    _WORKER_SOURCE = source


def _detect_one(index: int) -> tuple[str, np.ndarray | None, str]:
    """(key, landmarks or None, decode error or "") for one record of the worker's source."""
    source = _WORKER_SOURCE
    record = source[index]
    if record["error"]:
        return record["key"], None, record["error"]
    image = record.get("target")
    image = record["image"] if image is None else image
    return record["key"], detect_landmarks(image), ""


def precompute(source_name: str, data_dir: str, *, split: str = "all", workers: int = 1,
               cache_dir: str | None = None, save_every: int = 500, limit: int = 0,
               num_shards: int = 1, shard_index: int = 0,
               options: dict[str, Any] | None = None, verbose: bool = True) -> dict[str, Any]:
    """Fill the landmark cache of one dataset; returns the run summary."""
    from data_pipelines.sources import make_source

    if source_name == "synthetic":
        raise ValueError("synthetic faces carry their own landmarks; nothing to precompute")
    if save_every < 1 or workers < 1:
        raise ValueError("--save_every and --workers must be >= 1")
    if not (num_shards >= 1 and 0 <= shard_index < num_shards):
        raise ValueError(f"need 0 <= --shard_index < --num_shards, got {shard_index}, {num_shards}")
    check_available()
    source = make_source(source_name, data_dir=data_dir, split=split, landmarks="none",
                         **(options or {}))
    shard = None if num_shards == 1 else (shard_index, num_shards)
    cache = LandmarkCache.open(source_name, source.root, cache_dir, shard=shard)
    todo = [i for i, key in enumerate(source.keys)
            if i % num_shards == shard_index and key not in cache]
    skipped = len(source.keys) - len(todo) if num_shards == 1 else None
    if limit > 0:
        todo = todo[:limit]
    counts = {"faces": 0, "no_face": 0, "errors": 0}
    error_reasons: dict[str, int] = {}
    start = last_print = time.monotonic()
    if verbose:
        print(f"{source_name}: {len(source)} records under {source.root}; "
              f"{len(todo)} to process, cache {cache.path}", flush=True)

    def record_result(done: int, key: str, points: np.ndarray | None, error: str) -> None:
        nonlocal last_print
        if error:
            counts["errors"] += 1
            error_reasons[error] = error_reasons.get(error, 0) + 1
        else:
            cache.put(key, points)
            counts["faces" if points is not None else "no_face"] += 1
        if done % save_every == 0:
            cache.save()
        now = time.monotonic()
        if verbose and (now - last_print >= 10 or done == len(todo)):
            last_print = now
            print(f"  [{done}/{len(todo)}] faces {counts['faces']}, no face "
                  f"{counts['no_face']}, errors {counts['errors']}, "
                  f"{done / max(now - start, 1e-9):.1f} images/s", flush=True)

    try:
        if workers == 1 or len(todo) <= 1:
            _init_worker(source)
            for done, index in enumerate(todo, 1):
                record_result(done, *_detect_one(index))
        else:
            with multiprocessing.Pool(workers, initializer=_init_worker,
                                      initargs=(source,)) as pool:
                results = pool.imap_unordered(_detect_one, todo, chunksize=4)
                for done, result in enumerate(results, 1):
                    record_result(done, *result)
    finally:
        saved = cache.save() if cache.dirty else cache.path
        _init_worker(None)
    elapsed = time.monotonic() - start
    summary = {
        "source": source_name, "root": str(source.root), "cache": str(saved),
        "records": len(source), "processed": len(todo), "already_cached": skipped,
        "faces": counts["faces"], "no_face": counts["no_face"], "errors": counts["errors"],
        "error_reasons": error_reasons, "seconds": elapsed,
        "images_per_s": len(todo) / elapsed if elapsed > 0 else 0.0,
        "cache_entries": len(cache), "cache_faces": cache.num_faces,
        "cache_no_face": cache.num_no_face,
    }
    if verbose:
        print(f"done: {summary['processed']} images in {elapsed:.1f}s "
              f"({summary['images_per_s']:.1f} images/s): faces {counts['faces']}, "
              f"no face {counts['no_face']}, errors {counts['errors']} {error_reasons}; "
              f"cache {saved} holds {len(cache)} entries ({cache.num_faces} faces, "
              f"{cache.num_no_face} no face)", flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    precompute(args.source, args.data_dir, split=args.split, workers=args.workers,
               cache_dir=args.cache_dir, save_every=args.save_every, limit=args.limit,
               num_shards=args.num_shards, shard_index=args.shard_index,
               options=parse_options(args.option), verbose=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
