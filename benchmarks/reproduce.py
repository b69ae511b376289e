"""Every system on one protocol: train, evaluate, one table (docs/results.md).

    python benchmarks/reproduce.py --scale=smoke|cpu|full --data=synthetic|lfw|celeba \\
        [--data_dir=PATH] --out=DIR [--systems=pix2pix,ye_c,...]

Trains and evaluates, one after another, every system of ``configs/reproduce.py``
(pix2pix, Ye A/B/C, the TF-tutorial variant, GANMasker two-stage and one-stage with its
stage 1, UnVeilify) on the same data, split, masks, eval images and -- at ``smoke`` and
``cpu`` -- the same resolution, batch and step budget (the protocol is in that file's
docstring). Each run is the documented command
``python -m unmask_jax.main --config=configs/reproduce.py:SYSTEM,SCALE,DATA --workdir=...``
in a process of its own; its log is ``DIR/logs/SYSTEM.log``. Then it writes

* ``DIR/results.md``: one table, rows the systems (and the two baselines, and GANMasker's
  stage 2 with the ground-truth map), columns every metric of the evaluation JSON, ms per
  image and training images per second; the paper claims checked on these numbers; the
  commands; the hardware and the times;
* ``DIR/results.json``: the same, with each run's whole evaluation JSON;
* ``DIR/samples.png``: the same 8 held-out faces for every system, between the masked input
  (top row) and the target (bottom row); tiles at most 128 px.

It resumes: a system whose run finished (``DIR/runs/SYSTEM/reproduce.json``) is not trained
again; a killed run continues from its last checkpoint. A failed system is reported and the
others still run (GANMasker two-stage needs its stage 1). Exit status 0 when every system
finished, 1 when one failed, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from configs import reproduce as protocol  # noqa: E402  pylint: disable=wrong-import-position
from unmask_jax import report  # noqa: E402  pylint: disable=wrong-import-position

USER_ERROR_STATUS = 2
MARKER = "reproduce.json"
TILE = 128  # samples.png tile size cap (pixels)

#: Table rows: entry -> its label (declared with the entry in its config file).
LABELS = {name: e["label"] for name, e in protocol.ENTRIES.items()}
#: Entries that remove masks (rows of samples.png and of the claims); the rest segment.
UNMASKING = tuple(name for name, e in protocol.ENTRIES.items() if e["unmasks"])
#: Entries whose output does not see an identity image.
IDENTITY_FREE = tuple(name for name in UNMASKING if not protocol.ENTRIES[name]["identity"])


class UsageError(Exception):
    """A user mistake (bad flag, missing data folder); the message says what to do."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/reproduce.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--scale", required=True, choices=protocol.ALL_SCALES)
    p.add_argument("--data", default="synthetic", choices=tuple(protocol.DATA))
    p.add_argument("--data_dir", default=None,
                   help="the data set's folder (lfw: .../lfw, celeba: .../celeba)")
    p.add_argument("--out", required=True, help="output folder (runs, logs, results)")
    p.add_argument("--systems", default=",".join(protocol.SYSTEMS),
                   help="comma-separated subset, in any order (default: all)")
    p.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def plan(systems_arg: str) -> list[str]:
    """The entries to run, in protocol order; an entry that reads its mask maps from another
    entry's run (``maps_from``, e.g. a two-stage system's stage 1) brings that entry."""
    wanted = [s.strip() for s in systems_arg.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in protocol.SYSTEMS]
    if unknown or not wanted:
        raise UsageError(f"--systems: unknown {', '.join(unknown) or '(none given)'}; choose "
                         f"from {', '.join(protocol.SYSTEMS)}")
    for name in list(wanted):
        dep = protocol.ENTRIES[name].get("maps_from")
        if dep and dep not in wanted:
            print(f"reproduce: {name} reads its mask maps from {dep}: adding {dep}")
            wanted.append(dep)
    return [s for s in protocol.SYSTEMS if s in wanted]


def command(system: str, args: argparse.Namespace, out: str) -> list[str]:
    """The documented command of one run, run from the project root (absolute workdirs and
    data folder)."""
    cmd = [args.python, "-m", "unmask_jax.main",
           f"--config=configs/reproduce.py:{system},{args.scale},{args.data}",
           f"--workdir={run_dir(out, system)}"]
    if args.data_dir:
        cmd.append(f"--config.data.data_dir={os.path.abspath(args.data_dir)}")
    dep = protocol.ENTRIES[system].get("maps_from")
    if dep:
        cmd.append(f"--config.model.segmenter_workdir={run_dir(out, dep)}")
    return cmd


def run_dir(out: str, system: str) -> str:
    return os.path.join(out, "runs", system)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def finished(out: str, system: str, cmd: list[str]) -> bool:
    """True when the run finished with this command; UsageError when DIR holds the same
    system's run under another protocol (another --scale/--data/--data_dir)."""
    marker = _read_json(os.path.join(run_dir(out, system), MARKER))
    if not marker:
        return False
    recorded = _protocol(marker.get("command") or [])
    if recorded != _protocol(cmd):
        raise UsageError(
            f"{run_dir(out, system)} holds a run of another protocol "
            f"({shlex.join(recorded) or 'unknown command'}); use another --out")
    return marker.get("status") == "ok"


def _protocol(cmd: Sequence[str]) -> list[str]:
    """The arguments that define a run's protocol: not the interpreter, nor the paths
    inside DIR (a moved DIR still resumes)."""
    return [a for a in list(cmd)[2:]
            if not a.startswith(("--workdir=", "--config.model.segmenter_workdir="))]


def train(system: str, cmd: list[str], out: str) -> dict[str, Any]:
    """Runs one system's command (stdout and stderr to DIR/logs/SYSTEM.log); writes the
    marker with the wall time of every attempt."""
    workdir = run_dir(out, system)
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    log_path = os.path.join(out, "logs", f"{system}.log")
    marker_path = os.path.join(workdir, MARKER)
    marker = _read_json(marker_path) or {}
    attempts = marker.get("attempts", [])
    start = time.time()
    print(f"reproduce: {system}: {shlex.join(cmd)}\n  log: {log_path}", flush=True)
    with open(log_path, "a") as log:
        log.write(f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} "
                  f"{shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.time() - start
    has_eval = os.path.exists(os.path.join(workdir, "eval", "latest.json"))
    status = "ok" if rc == 0 and has_eval else "failed"
    attempts.append({"started": datetime.datetime.fromtimestamp(start).isoformat(
        timespec="seconds"), "wall_s": round(wall, 1), "returncode": rc})
    marker = {"system": system, "command": cmd, "status": status, "attempts": attempts,
              "wall_s": round(sum(a["wall_s"] for a in attempts), 1)}
    with open(marker_path, "w") as f:
        json.dump(marker, f, indent=1)
    print(f"reproduce: {system}: {status} in {wall / 60:.1f} min"
          + ("" if status == "ok" else f" (exit status {rc}; see {log_path})"), flush=True)
    return marker


# ---------------------------------------------------------------------------------------------
# Results

def collect(out: str, systems: Sequence[str]) -> dict[str, dict[str, Any]]:
    """system -> {status, command, wall_s, eval (latest.json), train_speed}."""
    runs = {}
    for system in systems:
        workdir = run_dir(out, system)
        marker = _read_json(os.path.join(workdir, MARKER)) or {"status": "not run"}
        runs[system] = {"status": marker.get("status"), "command": marker.get("command"),
                        "wall_s": marker.get("wall_s"),
                        "eval": _read_json(os.path.join(workdir, "eval", "latest.json")),
                        "train_speed": _read_json(os.path.join(workdir, "train_speed.json"))}
    return runs


def table_rows(runs: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, metrics) rows: each system, GANMasker with the ground-truth map, baselines."""
    rows = []
    baselines = None
    for system, run in runs.items():
        ev = run["eval"]
        if not ev:
            rows.append((f"{LABELS[system]} ({run['status']})", {}))
            continue
        speed = run["train_speed"] or {}
        row = dict(ev, train_images_per_s=speed.get("images_per_s"),
                   train_minutes=(run["wall_s"] or 0) / 60 if run["wall_s"] else None)
        rows.append((LABELS[system], row))
        if "gt_mask" in ev:
            rows.append((f"{LABELS[system]}, ground-truth map", dict(ev["gt_mask"])))
        if baselines is None and ev.get("baselines"):
            baselines = ev["baselines"]
    for name, values in (baselines or {}).items():
        rows.append((report.BASELINE_TITLES.get(name, name), dict(values)))
    return rows


EXTRA_COLUMNS = (("ms_per_image", "ms/image", "{:.2f}"),
                 ("train_images_per_s", "train img/s", "{:.1f}"),
                 ("train_minutes", "train min", "{:.1f}"))


def results_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    cols = [(k, t, f) for k, t, f in report.METRICS if any(k in r for _, r in rows)]
    cols += [(f"raw_{k}", f"{t} (raw)", f) for k, t, f in report.METRICS[:4]
             if any(f"raw_{k}" in r for _, r in rows)]
    cols += list(EXTRA_COLUMNS)
    header = ["system", "step"] + [t for _, t, _ in cols]
    body = [[label, report.fmt(r.get("step"), "{}")]
            + [report.fmt(r.get(k), f) for k, _, f in cols] for label, r in rows]
    return report.markdown_table(header, body)


def _metric(runs, system, key):
    ev = (runs.get(system) or {}).get("eval") or {}
    return ev.get(key)


def claims(runs: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(claim, what these runs show, reproduced?) for the papers' claims."""
    out = []

    def compare(claim, a, b, key, higher=True):
        va, vb = _metric(runs, a, key), _metric(runs, b, key)
        if va is None or vb is None:
            out.append((claim, "not run", "—"))
            return
        ok = va > vb if higher else va < vb
        out.append((claim, f"{key}: {va:.4f} vs {vb:.4f}", "yes" if ok else "no"))

    for c in protocol.CLAIMS:
        if c["against"] != "identity_free":
            compare(c["claim"], c["entry"], c["against"], c["key"], c.get("higher", True))
            continue
        # The best of the entries that remove masks without an identity image.
        ours = _metric(runs, c["entry"], c["key"])
        others = {s: _metric(runs, s, c["key"]) for s in IDENTITY_FREE}
        others = {s: v for s, v in others.items() if v is not None}
        if ours is None or not others:
            out.append((c["claim"], "not run", "—"))
            continue
        best = (max if c.get("higher", True) else min)(others, key=others.get)
        ok = ours > others[best] if c.get("higher", True) else ours < others[best]
        out.append((c["claim"], f"{c['key']}: {ours:.4f} vs best identity-free "
                    f"{others[best]:.4f} ({best})", "yes" if ok else "no"))
    return out


def samples_image(out: str, systems: Sequence[str]) -> tuple[np.ndarray | None, str]:
    """The samples.png grid (rows: masked input, each unmasking system, target; a label
    column) and a note on whether every run's eval images were the same."""
    from unmask_jax import evaluate
    rows, labels, reference, differ = [], [], None, []
    for system in systems:
        s = evaluate.read_samples(run_dir(out, system))
        if s is None:
            continue
        if reference is None:
            reference = s
            rows.append(s["masked"])
            labels.append("masked input")
        elif not (np.array_equal(s["masked"], reference["masked"])
                  and np.array_equal(s["target"], reference["target"])):
            differ.append(system)
        if "output" in s:
            rows.append(s["output"])
            labels.append(system)
        elif "mask_pred" in s:  # stage 1: its map as grey
            rows.append(np.repeat(np.rint(s["mask_pred"] * 255).astype(np.uint8), 3, -1))
            labels.append(f"{system} map")
    if reference is None:
        return None, "no run has evaluation samples"
    rows.append(reference["target"])
    labels.append("target")
    note = ("every run was scored on the same eval images (masked inputs and targets "
            "identical)" if not differ else
            f"WARNING: the eval images of {', '.join(differ)} differ from the first run's")
    return _grid(rows, labels), note


def _grid(rows: list[np.ndarray], labels: list[str], pad: int = 2) -> np.ndarray:
    from PIL import Image, ImageDraw
    n = min(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    scale = min(1.0, TILE / max(h, w))
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    label_w = 150
    canvas = Image.new("RGB", (label_w + n * (tw + pad) + pad, len(rows) * (th + pad) + pad),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for i, (row, label) in enumerate(zip(rows, labels)):
        y = pad + i * (th + pad)
        draw.text((4, y + th // 2 - 6), label, fill="black")
        for j in range(n):
            tile = Image.fromarray(np.asarray(row[j], np.uint8))
            if (th, tw) != (h, w):
                tile = tile.resize((tw, th), Image.BILINEAR)
            canvas.paste(tile, (label_w + pad + j * (tw + pad), y))
    return np.asarray(canvas)


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else None, "platform": platform.platform(),
            "python": platform.python_version()}


def write_results(out: str, args: argparse.Namespace, systems: Sequence[str]) -> dict:
    runs = collect(out, systems)
    rows = table_rows(runs)
    grid, samples_note = samples_image(out, systems)
    if grid is not None:
        from unmask_jax import visualize
        visualize.write_png(os.path.join(out, "samples.png"), grid)
    hw = hardware()
    device = next((r["eval"].get("device") for r in runs.values() if r["eval"]), None)
    checked = claims(runs)
    total_min = sum((r["wall_s"] or 0) for r in runs.values()) / 60
    settings = protocol.SCALES.get(args.scale)
    lines = [f"# One protocol, every system: `--scale={args.scale} --data={args.data}`", "",
             f"Written {datetime.datetime.now().isoformat(timespec='minutes')} by "
             f"`{shlex.join(['python', 'benchmarks/reproduce.py'] + _flags(args))}`.", ""]
    if settings:
        lines.append(f"Common setting: {settings['resolution']}x{settings['resolution']}, "
                     f"batch {settings['batch_size']}, {settings['num_steps']} steps, "
                     f"{settings['eval_images']} eval images at most (configs/reproduce.py).")
    else:
        lines.append("Each paper's own config (resolution, widths, batch, schedule).")
    lines += ["", f"Hardware: {hw['cpu']}, {hw['affinity'] or hw['cpu_count']} usable cores; "
              f"JAX device {device or '—'}. Total training + evaluation time "
              f"{total_min:.1f} min.", "", results_table(rows).rstrip(), "",
              "PSNR/SSIM on the whole image and in the mask region, of the composited output "
              "(the network's output inside the true mask, the input outside; GANMasker "
              "two-stage: inside its own predicted map); `(raw)` is the network's whole "
              "output. LPIPS (AlexNet), ID-sim (dlib, output vs target), ID-sim vs reference "
              "(output vs the identity image, another photo of the same person). ms/image: "
              "the evaluation's prediction, batch of the eval; train img/s: median over the "
              "logging windows after compilation; train min: wall time of the run's "
              "process(es), evaluation included.", "",
              f"Eval images: {samples_note}.", "", "## Paper claims on these numbers", ""]
    lines.append(report.markdown_table(["claim", "measured", "reproduced"],
                                       [list(c) for c in checked]).rstrip())
    lines += ["", "## Runs", ""]
    for system, run in runs.items():
        cmd = run["command"] or command(system, args, out)
        lines.append(f"- `{system}` ({run['status']}): `{shlex.join(['python'] + cmd[1:])}`")
    if grid is not None:
        lines += ["", "![samples](samples.png)", ""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    result = {"scale": args.scale, "data": args.data,
              "data_dir": os.path.abspath(args.data_dir) if args.data_dir else None,
              "settings": settings, "hardware": hw, "device": device,
              "total_minutes": total_min, "samples": samples_note,
              "claims": [dict(zip(("claim", "measured", "reproduced"), c)) for c in checked],
              "rows": [{"label": label, **{k: v for k, v in r.items()
                                           if not isinstance(v, dict)}} for label, r in rows],
              "systems": runs}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True, default=str)
    return result


def _flags(args: argparse.Namespace) -> list[str]:
    flags = [f"--scale={args.scale}", f"--data={args.data}"]
    if args.data_dir:
        flags.append(f"--data_dir={args.data_dir}")
    flags.append(f"--out={args.out}")
    if args.systems != ",".join(protocol.SYSTEMS):
        flags.append(f"--systems={args.systems}")
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        systems = plan(args.systems)
        if args.data != "synthetic":
            if not args.data_dir:
                raise UsageError(f"--data={args.data} needs --data_dir (e.g. "
                                 f"../shared/data/{args.data})")
            if not os.path.isdir(args.data_dir):
                raise UsageError(f"--data_dir={args.data_dir} is not a folder")
        out = os.path.abspath(args.out)
        os.makedirs(out, exist_ok=True)
        todo = [(s, command(s, args, out)) for s in systems]
        done = {s for s, cmd in todo if finished(out, s, cmd)}
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_STATUS
    failed = []
    try:
        for system, cmd in todo:
            if system in done:
                print(f"reproduce: {system}: finished earlier, not trained again")
                continue
            dep = protocol.ENTRIES[system].get("maps_from")
            if dep in failed:
                print(f"reproduce: {system}: skipped, {dep} (its mask maps) failed")
                failed.append(system)
                continue
            if train(system, cmd, out)["status"] != "ok":
                failed.append(system)
    except KeyboardInterrupt:
        print("\nreproduce: interrupted; the same command resumes (finished systems are kept, "
              "the interrupted one continues from its last checkpoint)", file=sys.stderr)
        return 130
    write_results(out, args, systems)
    print(f"reproduce: wrote {os.path.join(out, 'results.md')}, results.json, samples.png"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
