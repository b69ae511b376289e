"""pix2pix 256x256 train-step throughput: the trainer's jitted step in float32 and bfloat16
compute, against the canonical PyTorch pix2pix step on the same networks and weights, in the
same process with the same thread count. The ratio is the figure.

    python benchmarks/train_step.py [--threads 2] [--batches 1,4] [--iters 3]

The JAX side is ``unmask_jax.programs.make_train_step`` of ``configs/pix2pix.py`` (G and D
updates, donated state, explicit shardings over the device mesh); compute dtype via
``train.compute_dtype``. PyTorch runs ``optimize_parameters`` of the reference (eager,
float32; the torch step is shared with compare_torch.py). On an accelerator it also prints
model FLOP utilisation, counting ~94 GFLOP per 256^2 image per iteration (G forward +
backward, D on real and fake twice, as the pix2pix iteration does).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_torch  # noqa: E402  (shared timing helpers and the PyTorch step)

GFLOP_PER_IMAGE = 94.0
PEAK_TFLOPS = {"bfloat16": {"H100": 989.0, "H200": 989.0, "A100": 312.0},
               "float32": {"H100": 67.0, "H200": 67.0, "A100": 19.5}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16")
    compare_torch.add_allocator_flag(p)
    args = p.parse_args(argv)
    threads = compare_torch.limit_threads(args.threads)
    allocator = compare_torch.configure_allocator(args.host_allocator)

    import jax
    import numpy as np
    import torch

    from configs import pix2pix
    from unmask_jax import optim, parallel, programs, state as state_lib, systems
    from unmask_jax.export import build_torch_module, keymaps

    torch.set_num_threads(threads)
    device = jax.devices()[0]
    mesh = parallel.make_data_mesh()
    rep = parallel.replicated_sharding(mesh)
    rows = []
    torch_modules = None
    for dtype in args.dtypes.split(","):
        config = pix2pix.get_config()
        config.train.compute_dtype = dtype
        system = systems.build(config)
        tx = optim.adam(config.optim, 1000)
        txs = {"generator": tx, "discriminator": tx}
        frozen = jax.device_put(system.load_frozen(), rep)
        state0 = jax.jit(lambda: state_lib.create_state(system, txs, 0, 256),
                         out_shardings=rep)()
        if torch_modules is None:  # same initial weights for PyTorch
            mods = []
            for name, net in (("pix2pix_unet", state0.generator),
                              ("patchgan", state0.discriminator)):
                variables = jax.device_get(net.variables)
                kwargs = dict(config.model.generator_kwargs) if name == "pix2pix_unet" else {}
                target = keymaps.torch_target(name, kwargs, variables)
                module = build_torch_module(target.torch_class, target.constructor_args)
                compare_torch._load(module, keymaps.flax_to_torch(name, kwargs, variables))
                mods.append(module)
            torch_modules = tuple(mods)
        step = programs.make_train_step(system, txs, mesh, rep)
        for b in [int(v) for v in args.batches.split(",")]:
            rng = np.random.default_rng(b)
            a = rng.uniform(-1, 1, (b, 256, 256, 3)).astype(np.float32)
            y = rng.uniform(-1, 1, (b, 256, 256, 3)).astype(np.float32)
            batch = parallel.global_batch(
                {"masked": a, "target": y, "mask": np.ones((b, 256, 256, 1), np.float32)},
                mesh)
            holder = {"state": jax.tree.map(lambda x: x.copy(), state0)}

            def jax_step():
                holder["state"], m = step(holder["state"], batch, frozen)
                jax.block_until_ready(m)

            at, yt = (torch.from_numpy(v.transpose(0, 3, 1, 2).copy()) for v in (a, y))
            torch_step = compare_torch._torch_step_fn(torch, *torch_modules, at, yt, 0.5)
            (tj, cj, _), (tt, ct, _) = compare_torch.interleaved_times(
                [jax_step, torch_step], args.iters, args.rounds)
            row = {"dtype": dtype, "batch": b, "jax": b / tj, "torch": b / tt,
                   "ratio": tt / tj, "cpu_ratio": ct / cj}
            kind = next((k for k in PEAK_TFLOPS[dtype] if k in device.device_kind), None)
            if device.platform == "gpu" and kind:
                row["mfu"] = b / tj * GFLOP_PER_IMAGE / 1e3 / PEAK_TFLOPS[dtype][kind]
            rows.append(row)
            print(f"{dtype:>8} batch {b}: JAX {row['jax']:.2f} img/s, PyTorch fp32 "
                  f"{row['torch']:.2f} img/s, ratio {row['ratio']:.2f}x (CPU time "
                  f"{row['cpu_ratio']:.2f}x)", flush=True)
    print(f"\n{device.platform} ({device.device_kind}), {threads} threads, load "
          f"{os.getloadavg()[0]:.1f}, jax {jax.__version__}, torch {torch.__version__}; "
          f"{allocator}")
    print("| JAX compute | batch | JAX img/s | PyTorch fp32 img/s | JAX / PyTorch (wall) | "
          "(CPU time) | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{r['mfu'] * 100:.1f}%" if "mfu" in r else "n/a"
        print(f"| {r['dtype']} | {r['batch']} | {r['jax']:.2f} | {r['torch']:.2f} | "
              f"{r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {mfu} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
