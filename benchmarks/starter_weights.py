"""The starter weights (``weights/``): train both GANMasker stages on real faces, pack them,
evaluate them.

    python benchmarks/starter_weights.py train [--data_dir=../shared/data] [--runs=runs/starter]
    python benchmarks/starter_weights.py pack [--runs=runs/starter] \
        [--out=weights/ganmasker_starter]
    python benchmarks/starter_weights.py evaluate [--weights=weights/ganmasker_starter]
        [--data_dir=../shared/data] [--out=runs/starter/eval]

``train`` runs, one after another, the documented commands

    python -m unmask_jax.main --config=configs/ganmasker.py:starter_seg --workdir=RUNS/seg
    python -m unmask_jax.main --config=configs/ganmasker.py:starter --workdir=RUNS/unmask \\
        --config.model.segmenter_workdir=RUNS/seg

(with ``--config.data.data_dir`` when given), each in a process of its own with its log in
``RUNS/<stage>.log``. Killed, it resumes: a finished stage is not trained again and an
unfinished one continues from its last checkpoint. Before training it fills the LFW
landmark cache (``python -m data_pipelines.landmarks --source=lfw``), which the LFW part of
the data reads; CelebA uses its aligned points.

``pack`` writes ``OUT/`` (see ``unmask_jax.predict.weights``): both stages' inference
networks in PyTorch-layout safetensors and the two recorded configs. ``evaluate`` scores
the packed weights with ``--mode=evaluate`` on the LFW test identities and the CelebA
validation identities (the two-stage chain, against the masked input and OpenCV Telea) and
writes ``OUT/starter_eval.json`` and ``OUT/starter_eval.md`` for the model card.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/ganmasker.py"
STAGES = (("seg", "starter_seg"), ("unmask", "starter"))


def _run(cmd: list[str], log_path: str) -> int:
    print("+ " + shlex.join(cmd), flush=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n+ {shlex.join(cmd)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        return subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stage_command(stage: str, variant: str, runs: str, data_dir: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "unmask_jax.main", f"--config={CONFIG}:{variant}",
           f"--workdir={os.path.join(runs, stage)}"]
    if data_dir:
        cmd.append(f"--config.data.data_dir={data_dir}")
    if stage == "unmask":
        cmd.append(f"--config.model.segmenter_workdir={os.path.join(runs, 'seg')}")
    return cmd


def train(args: argparse.Namespace) -> int:
    os.makedirs(args.runs, exist_ok=True)
    data_dir = args.data_dir
    lfw = os.path.join(data_dir or "../shared/data", "lfw")
    status = _run([sys.executable, "-m", "data_pipelines.landmarks", "--source=lfw",
                   f"--data_dir={lfw}", f"--workers={args.workers}", "--quiet",
                   f"--cache_dir={args.landmark_cache}"],
                  os.path.join(args.runs, "landmarks.log"))
    if status:
        print(f"landmark cache failed (status {status}); see {args.runs}/landmarks.log")
        return status
    for stage, variant in STAGES:
        t0 = time.time()
        cmd = stage_command(stage, variant, args.runs, data_dir)
        cmd.append(f"--config.data.source_options.cache_dir={args.landmark_cache}")
        status = _run(cmd, os.path.join(args.runs, f"{stage}.log"))
        print(f"stage {stage}: status {status} after {time.time() - t0:.0f} s", flush=True)
        if status:
            return status
    return 0


def pack(args: argparse.Namespace) -> int:
    """Both stages' inference networks into ``args.out`` (``--mode=export`` of stage 2 with
    its generator only: stage 1, the run its config names, is exported beside it)."""
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        print(f"{args.out} already holds files; pass --force to replace them", file=sys.stderr)
        return 2
    if args.force and os.path.isdir(args.out):
        import shutil
        shutil.rmtree(args.out)
    cmd = [sys.executable, "-m", "unmask_jax.main", f"--config={CONFIG}:starter",
           f"--workdir={os.path.join(args.runs, 'unmask')}", "--mode=export",
           f"--export_dir={args.out}", "--export_networks=generator"]
    os.makedirs(args.runs, exist_ok=True)
    status = _run(cmd, os.path.join(args.runs, "pack.log"))
    if status == 0:
        total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out)
                    for f in fs)
        print(f"packed {args.out}: {total / 1e6:.1f} MB")
    return status


#: The evaluation sets of the model card: (name, config overrides).
EVAL_SETS = (
    ("lfw-test", ("--config.data.source=lfw", "--config.data.eval_split=test",
                  "--config.data.source_options.landmarks=auto")),
    ("celeba-validation", ("--config.data.source=celeba",
                           "--config.data.eval_split=validation",
                           "--config.data.source_options.landmarks=auto")),
)
#: The numbers the card reports, per method.
CARD_METRICS = ("psnr", "psnr_mask", "ssim", "ssim_mask", "lpips", "lpips_mask", "id_sim")


def evaluate(args: argparse.Namespace) -> int:
    """``--mode=evaluate`` of the stage-2 run (two-stage chain, with the stage-1 maps) on
    every set of :data:`EVAL_SETS`, all their images; a table for the model card."""
    import json
    data_dir = args.data_dir
    rows = {}
    for name, overrides in EVAL_SETS:
        part = name.split("-")[0]
        cmd = [sys.executable, "-m", "unmask_jax.main", f"--config={CONFIG}:starter",
               f"--workdir={os.path.join(args.runs, 'unmask')}", "--mode=evaluate",
               f"--config.data.data_dir={os.path.join(data_dir, part)}",
               f"--config.eval.num_images={args.num_images}",
               f"--config.data.source_options.cache_dir={args.landmark_cache}", *overrides]
        t0 = time.time()
        status = _run(cmd, os.path.join(args.runs, f"eval_{name}.log"))
        if status:
            print(f"evaluation on {name} failed (status {status}); see the log")
            return status
        # eval/<source>-<split>/, or with a settings digest appended when another
        # evaluation of other settings is there already: the newest one is this one.
        import glob
        latest = max(glob.glob(os.path.join(args.runs, "unmask", "eval", f"{name}*",
                                            "latest.json")), key=os.path.getmtime)
        with open(latest, encoding="utf-8") as f:
            result = json.load(f)
        rows[name] = {"seconds": round(time.time() - t0, 1), "num_images": result["num_images"],
                      "num_identities": result["num_identities"], "step": result["step"],
                      "two_stage": {k: result.get(k) for k in CARD_METRICS},
                      "gt_mask": {k: result.get("gt_mask", {}).get(k) for k in CARD_METRICS},
                      "dice": result.get("dice"),
                      "masked_input": {k: result["baselines"]["masked_input"].get(k)
                                       for k in CARD_METRICS},
                      "telea": {k: result["baselines"]["telea"].get(k) for k in CARD_METRICS}}
        r = rows[name]
        r["goal"] = {"psnr_mask_over_telea_db": round(
            r["two_stage"]["psnr_mask"] - r["telea"]["psnr_mask"], 2),
            "lpips_below_telea": r["two_stage"]["lpips"] < r["telea"]["lpips"]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "starter_eval.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    lines = ["| set | method | " + " | ".join(CARD_METRICS) + " |",
             "|---|---|" + "---|" * len(CARD_METRICS)]
    for name, r in rows.items():
        for method in ("two_stage", "gt_mask", "telea", "masked_input"):
            vals = [("{:.2f}" if "psnr" in k else "{:.4f}").format(r[method][k])
                    if r[method].get(k) is not None else "—" for k in CARD_METRICS]
            lines.append(f"| {name} ({r['num_images']}) | {method} | " + " | ".join(vals) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "starter_eval.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    for name, r in rows.items():
        print(f"{name}: mask-region PSNR {r['goal']['psnr_mask_over_telea_db']:+.2f} dB over "
              f"Telea; LPIPS below Telea's: {r['goal']['lpips_below_telea']}; stage-1 Dice "
              f"{r['dice']:.4f}")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/starter_weights.py",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train both stages (resumable)")
    t.add_argument("--data_dir", default=None,
                   help="folder holding lfw/ and celeba/ (default: the config's, "
                        "../shared/data)")
    t.add_argument("--runs", default="runs/starter")
    t.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="landmark detector processes")
    t.add_argument("--landmark_cache",
                   default=os.path.join(os.path.expanduser("~"), ".cache", "unmask_jax",
                                        "landmarks"),
                   help="where the LFW landmark cache lives")
    p = sub.add_parser("pack", help="export both stages into a weights folder")
    p.add_argument("--runs", default="runs/starter")
    p.add_argument("--out", default="weights/ganmasker_starter")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    e = sub.add_parser("evaluate", help="the model card's evaluation")
    e.add_argument("--runs", default="runs/starter")
    e.add_argument("--data_dir", default="../shared/data")
    e.add_argument("--num_images", type=int, default=1000,
                   help="at most this many images per set (LFW test: 514, CelebA "
                        "validation: 780 here)")
    e.add_argument("--out", default="runs/starter/eval")
    for q in (e,):
        q.add_argument("--landmark_cache",
                       default=os.path.join(os.path.expanduser("~"), ".cache", "unmask_jax",
                                            "landmarks"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return {"train": train, "pack": pack, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
