"""What a TPU/GPU slice would run: every system's train step (and predict) compiled ahead of
time with ``--mode=compile``, one row per (config, topology), rendered into ``docs/scale.md``.

    python benchmarks/scale.py run [--rows v5e:2x4] [--only pix2pix.py,ganmasker.py:unmask]
        [--force] [--python PYTHON]
    python benchmarks/scale.py render [--pipeline-img-per-core 256=NNN]

``run`` compiles each row in its own process (``python -m unmask_jax.main --mode=compile
--config.train.compute_dtype=bfloat16 --per_chip_batch=8``) and keeps its report as
``docs/scale/<config>__<topology>.json``. A row whose report exists is skipped, so an
interrupted run resumes where it stopped (``--force`` recompiles). Each compile takes minutes
on 2 cores (the biggest, UnVeilify, about 20): run it in the background. GPU rows need
``jax[cuda12]`` in the interpreter given by ``--python`` (``JAX_PLATFORMS=cpu`` is set for
them); rows whose interpreter cannot compile for the GPU are reported and skipped.

``render`` writes ``docs/scale.md`` from the reports present. ``--pipeline-img-per-core``
(images per CPU second of the input pipeline at a resolution, from
``benchmarks/pipeline_throughput.py``) adds the host cores needed to feed each row's
projected rate.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "scale"
DOC = ROOT / "docs" / "scale.md"
#: The efficiency study (before/after rows, per-op accounts, the commands): written by hand
#: from ``--breakdown`` reports kept in docs/scale/after/, and rendered into the page.
EFFICIENCY = OUT / "efficiency.md"

ALL_CONFIGS = ("pix2pix.py", "ye.py:a", "ye.py:b", "ye.py:c", "masked_gan.py",
               "ganmasker.py:seg", "ganmasker.py:unmask", "ganmasker.py:one_stage",
               "unveilify.py")
#: (config, topology, programs), in the order they are compiled: the headline rows first.
ROWS = (
    [(c, "v5e:2x4", "train_step,predict") for c in
     ("pix2pix.py", "ganmasker.py:unmask", "unveilify.py")]
    + [(c, "v5e:2x4", "train_step,predict") for c in ALL_CONFIGS
       if c not in ("pix2pix.py", "ganmasker.py:unmask", "unveilify.py")]
    + [(c, "v5p:2x2x1", "train_step") for c in ("pix2pix.py", "ganmasker.py:unmask")]
    + [(c, "v5e-256", "train_step") for c in
       ("pix2pix.py", "ganmasker.py:unmask", "unveilify.py")]
    + [(c, "h100:1x1x8", "train_step") for c in ("pix2pix.py", "ganmasker.py:unmask")]
)
PER_CHIP_BATCH = 8
DTYPE = "bfloat16"


def report_path(config: str, topology: str) -> Path:
    stem = config.replace(".py", "").replace(":", "_")
    return OUT / f"{stem}__{topology.replace(':', '_')}.json"


def run_row(config: str, topology: str, programs: str, python: str) -> dict:
    """Compiles one row in a subprocess; returns its report (or {"error": ...})."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [python, "-m", "unmask_jax.main", f"--config=configs/{config}",
               f"--workdir={workdir}", "--mode=compile", f"--topology={topology}",
               f"--per_chip_batch={PER_CHIP_BATCH}", f"--compile_programs={programs}",
               f"--config.train.compute_dtype={DTYPE}"]
        env = dict(os.environ)
        if topology.startswith(("h100", "h200")):
            env["JAX_PLATFORMS"] = "cpu"
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        found = list(Path(workdir, "compile").glob("*.json"))
        if found:
            report = json.loads(found[0].read_text())
            report["wall_seconds"] = wall
            report["command"] = " ".join(["python"] + cmd[1:4] + ["--workdir=DIR"] + cmd[5:])
            if proc.returncode:
                report["exit_status"] = proc.returncode
            return report
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " / ".join(tail), "exit_status": proc.returncode,
                "wall_seconds": wall}


def cmd_run(args) -> int:
    only = set(filter(None, args.only.split(","))) if args.only else None
    topologies = set(filter(None, args.rows.split(","))) if args.rows else None
    OUT.mkdir(parents=True, exist_ok=True)
    for config, topology, programs in ROWS:
        if (only and config not in only) or (topologies and topology not in topologies):
            continue
        path = report_path(config, topology)
        if path.exists() and not args.force:
            print(f"{config} {topology}: done ({path.name})", flush=True)
            continue
        print(f"{config} {topology}: compiling {programs} ...", flush=True)
        report = run_row(config, topology, programs, args.python)
        if "error" in report and "programs" not in report:
            print(f"  failed after {report['wall_seconds']:.0f} s: {report['error']}",
                  flush=True)
            continue
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"  {report['wall_seconds']:.0f} s -> {path.relative_to(ROOT)}", flush=True)
    return 0


def _gib(n) -> str:
    return "-" if n is None else f"{n / (1 << 30):.2f}"


def _g(n, unit=1e9) -> str:
    return "-" if n is None else f"{n / unit:,.1f}"


def rows_table(reports: list[dict], program: str, rates: dict[int, float]) -> list[str]:
    head = ("| config | topology | memory/chip GiB (of HBM) | GFLOP/image (model) | "
            "HBM GB/image | collectives MB/step | bound | MFU bound | img/s/chip | "
            "img/s/slice | compile s |")
    if rates:
        head += " pipeline cores/host |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for rep in reports:
        r = rep.get("programs", {}).get(program)
        if r is None:
            continue
        t = rep["target"]
        name = rep["config_arg"]
        if "memory" not in r:
            lines.append(f"| {name} | {t['name']} | does not fit: {r.get('error', '')} |"
                         + " |" * (head.count("|") - 4))
            continue
        mem, cost, roof, col = r["memory"], r["cost"], r["roofline"], r["collectives"]
        mfu = roof["mfu_bound"]
        ips = roof["images_per_s_per_chip"]
        cells = [name, t["name"],
                 f"{_gib(mem.get('total_bytes'))} ({mem.get('fraction_of_hbm', 0):.0%})",
                 _g(cost["model_flops_per_image"]), _g(cost["bytes_per_image"]),
                 f"{col['bytes'] / 1e6:,.0f} ({col['count']} ops)", roof["bound"] or "-",
                 "-" if mfu is None else f"{mfu:.1%}",
                 "-" if ips is None else f"{ips:,.0f}",
                 "-" if ips is None else f"{ips * t['devices']:,.0f}",
                 f"{r['compile_seconds']:.0f}"]
        if rates:
            rate = rates.get(rep["resolution"])
            per_host = t["devices"] / max(1, t["hosts"])
            cells.append("-" if ips is None or rate is None else
                         f"{ips * per_host / rate:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cmd_render(args) -> int:
    rates = {}
    for item in filter(None, args.pipeline_img_per_core.split(",")):
        res, rate = item.split("=")
        rates[int(res)] = float(rate)
    reports = []
    for config, topology, _ in ROWS:
        path = report_path(config, topology)
        if path.exists():
            rep = json.loads(path.read_text())
            rep["config_arg"] = config
            reports.append(rep)
    missing = [f"{c} on {t}" for c, t, _ in ROWS if not report_path(c, t).exists()]
    versions = sorted({f"{k} {v}" for rep in reports for k, v in rep["versions"].items()})
    text = [
        "# At scale: what the compiler says each system costs on TPUs and GPUs",
        "",
        "Every row is the project's own program compiled ahead of time on a 2-core CPU "
        "machine for a slice that was not there (`--mode=compile`, `unmask_jax/aot.py`): "
        f"full paper configs, {DTYPE} compute with float32 parameters, {PER_CHIP_BATCH} "
        "images per chip, data parallel (state replicated, batch split over every chip). "
        "Regenerate with `python benchmarks/scale.py run` (resumes; minutes per row) then "
        "`python benchmarks/scale.py render"
        + (f" --pipeline-img-per-core {args.pipeline_img_per_core}" if rates else "")
        + "`; the reports are in `docs/scale/`. One row by hand:",
        "",
        "```bash",
        "python -m unmask_jax.main --config=configs/ganmasker.py:unmask --workdir=runs/aot \\",
        "    --mode=compile --topology=v5e:2x4 --config.train.compute_dtype=bfloat16",
        "```",
        "",
        "Columns, per chip and step unless stated: memory = arguments + outputs - aliased + "
        "temporaries + code (`memory_analysis`), against the chip's HBM; GFLOP/image = the "
        "model FLOPs (XLA's count of the unoptimised program at the per-chip batch, no "
        "padding or rematerialisation) / images per chip; HBM GB/image = the compiled "
        "program's bytes accessed (`cost_analysis`) / images per chip; collectives = the "
        "optimised program's collective ops and their result bytes; roofline: step time >= "
        "max(compiled FLOPs / peak, HBM bytes / bandwidth), bound = which term is larger, "
        "MFU bound = model FLOPs / (step time x peak), img/s = images per chip / step "
        "time. Chip peaks: `unmask_jax/accelerators.py` (v5e 197 TFLOP/s, 819 GB/s, 16 GiB; "
        "v5p 459 TFLOP/s, 2765 GB/s, 95 GiB; H100 SXM 989 TFLOP/s, 3.35 TB/s, 80 GB). "
        "Compile = lower + compile seconds on this 2-core machine.",
        "",
        "## Train step",
        "",
        *rows_table(reports, "train_step", rates),
        "",
    ]
    if rates:
        text += ["Pipeline cores/host: host CPU cores needed to feed the projected rate of "
                 "the chips on one host (img/s/chip x chips per host / the input pipeline's "
                 "images per CPU second, " + ", ".join(f"{r} px: {v:,.0f}" for r, v in
                                                       sorted(rates.items())) +
                 ", measured on LFW with `python benchmarks/pipeline_throughput.py "
                 "--data_dir=../shared/data/lfw --resolutions=256 --workers=0 --seconds=8`).",
                 ""]
    text += [
        "## Predict (the system's own inference)",
        "",
        *rows_table(reports, "predict", {}),
        "",
    ]
    over = [(r, name, p["cost"]) for r in reports for name, p in r["programs"].items()
            if (p["cost"].get("compiled_flops_per_step") or 0) and p["cost"][
                "model_flops_per_step"] > 1.05 * p["cost"]["compiled_flops_per_step"]]
    if over:
        text += ["Model FLOPs above the compiled count (" + "; ".join(
            f"{r['config']} {name} on {r['target']['name']}: "
            f"{c['model_flops_per_image'] / 1e9:,.1f} vs "
            f"{c['compiled_flops_per_image'] / 1e9:,.1f} GFLOP/image" for r, name, c in over)
            + "): XLA's count of the unoptimised program includes every tap of a padded "
            "convolution, and the TPU compiler turns 3x3 stride-2 convolutions on 1-4 px "
            "maps (the pSp encoder's style blocks) into dots over the taps that touch data. "
            "Such a row is compute-bound at the roofline, so its MFU bound is 100%.", ""]
    if EFFICIENCY.exists():  # the before/after study of the step's traffic, kept by hand
        text += [EFFICIENCY.read_text().rstrip(), ""]
    text += [
        "## What cannot be known without the hardware",
        "",
        "- Measured step time, img/s and MFU: the roofline is a bound from the compiler's "
        "cost model, not a measurement. Real steps lose to launch overheads, imperfect "
        "overlap of collectives with compute, and kernels below the roofline "
        "(`benchmarks/accelerator.py` measures them on a GPU).",
        "- GPU FLOPs and HBM bytes: XLA:GPU gives no cost analysis ahead of time, and "
        "without a GPU its kernels are not autotuned, so GPU rows have memory only.",
        "- Collective time: the bytes are counted, not timed; on a pod they travel over "
        "ICI (within a slice) or DCN (between slices) at rates this table does not model.",
        "- Input pipeline throughput on the pod's hosts, storage reads (GCS) and "
        "checkpoint time.",
        "",
        "Versions: " + ", ".join(versions) + ".",
    ]
    if missing:
        text += ["", "Not yet compiled (run `python benchmarks/scale.py run` to add them): "
                 + "; ".join(missing) + "."]
    DOC.write_text("\n".join(text) + "\n")
    print(f"wrote {DOC.relative_to(ROOT)} ({len(reports)} reports, {len(missing)} missing)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="compile the rows (resumes)")
    r.add_argument("--rows", default="", help="topologies to compile, comma-separated")
    r.add_argument("--only", default="", help="configs to compile, comma-separated")
    r.add_argument("--force", action="store_true", help="recompile rows already reported")
    r.add_argument("--python", default=sys.executable,
                   help="interpreter (one with jax[cuda12] for the GPU rows)")
    d = sub.add_parser("render", help="write docs/scale.md")
    d.add_argument("--pipeline-img-per-core", default="",
                   help="RES=IMG_PER_CORE[,...] from benchmarks/pipeline_throughput.py")
    args = p.parse_args(argv)
    return cmd_run(args) if args.cmd == "run" else cmd_render(args)


if __name__ == "__main__":
    sys.exit(main())
