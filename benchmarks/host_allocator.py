"""What ``unmask_jax.backends.host_allocator`` changes on the CPU backend, per jitted pix2pix step:
XLA's temporary buffer size, minor page faults, step time and peak resident set, for
glibc's defaults ('system') and the buffer-reuse settings ('reuse') applied either before
JAX starts its CPU client (``configure(platform_before_start())``) or right after it found
its backend (``configure(jax.default_backend())``).

    python benchmarks/host_allocator.py [--size 256] [--batch 1] [--steps 5] [--threads 2]

Each setting runs in a fresh interpreter (allocator settings are per process). The step is
the pix2pix system's own train step (``system.train_step``, as the trainer jits it: U-Net G
and PatchGAN D forward and backward, GAN + 100 * L1, Adam on both, state donated).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import compare_torch  # noqa: E402  (thread pinning)

SETTINGS = (("system", "after"), ("reuse", "after"), ("reuse", "before"))


def child(args) -> dict:
    import resource
    import time

    compare_torch.limit_threads(args.threads)
    from unmask_jax.backends import host_allocator

    if args.when == "before":  # unknown before the start only with accelerator support
        message = host_allocator.configure(host_allocator.platform_before_start() or "cpu",
                                           args.mode)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    if args.when == "after":
        message = host_allocator.configure(jax.default_backend(), args.mode)
    from configs import pix2pix
    from unmask_jax import state as state_lib, systems

    # The trainer's own step: configs/pix2pix.py (U-Net G, PatchGAN D, GAN + 100 * L1, Adam
    # on both, sequential order), state donated.
    size, b = args.size, args.batch
    config = pix2pix.get_config()
    config.data.resolution = size
    config.model.generator_kwargs.num_downs = int(round(np.log2(size)))
    system = systems.build(config)
    txs = {name: optax.adam(2e-4, b1=0.5, b2=0.999) for name in system.networks}
    state = jax.jit(lambda: state_lib.create_state(system, txs, 0, size))()
    frozen = system.load_frozen()
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.uniform(-1, 1, (b, size, size, c)), jnp.float32)
             for k, c in (("masked", 3), ("target", 3), ("mask", 1))}
    compiled = system.jit(functools.partial(system.train_step, txs=txs),
                          donate_argnums=(0,)).lower(state, batch, frozen).compile()
    analysis = compiled.memory_analysis()
    temp = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
    state, metrics = compiled(state, batch, frozen)
    jax.block_until_ready(metrics)
    faults, times = [], []
    for _ in range(args.steps):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        state, metrics = compiled(state, batch, frozen)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"mode": args.mode, "when": args.when, "platform": jax.default_backend(),
            "allocator": message, "temp_mb": None if temp is None else temp / 2**20,
            "faults_per_step": med(faults), "step_s": med(times),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="reuse", help=argparse.SUPPRESS)
    p.add_argument("--when", default="after", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    env = {k: v for k, v in os.environ.items() if k != "UNMASK_JAX_HOST_ALLOCATOR"}
    print("| allocator | applied | XLA temp MB | minor faults / step | step s | peak RSS GB |")
    print("|---|---|---|---|---|---|")
    for mode, when in SETTINGS:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode,
               "--when", when, "--size", str(args.size), "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        temp = "n/a" if r["temp_mb"] is None else f"{r['temp_mb']:.0f}"
        applied = "glibc defaults" if mode == "system" else f"{when} JAX starts"
        print(f"| {mode} | {applied} | {temp} | {r['faults_per_step']} | {r['step_s']:.3f} | "
              f"{r['peak_rss_gb']:.2f} |", flush=True)
    print(f"platform {r['platform']}, size {args.size}, batch {args.batch}, load "
          f"{os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
