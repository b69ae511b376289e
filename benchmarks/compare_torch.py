"""JAX vs PyTorch speed of the exportable networks, same process, same thread count.

For each system (pix2pix: ``pix2pix_unet`` + ``patchgan``; tf_pix2pix: the TF-tutorial pair):
- inference latency of the generator (eval mode) at batch 1 and a larger batch;
- training throughput (images/s) of one full GAN step: generator forward, discriminator
  update on (real, detached fake) with Adam, generator update (adversarial + 100 * L1)
  against the updated discriminator with Adam (lr 2e-4, betas (0.5, 0.999)).
  JAX uses the trainer's own step, the pix2pix system's ``train_step``, jitted with the state
  donated; PyTorch runs the canonical pix2pix ``optimize_parameters`` sequence in eager mode
  (and with ``torch.compile`` when ``--torch-compile`` is given and it works).
Both frameworks start from the same weights (Flax init exported with
``unmask_jax.export``); the eval outputs are compared as a sanity check.

Optional ``--breakdown``: generator and discriminator forward+backward alone, and single
layers in every form (``unmask_jax.backends.cpu_forms`` and the plain layers' forms of
``unmask_jax.models.layers``; k4 s2 conv: pre-padded, im2col GEMM,
``lax.conv_general_dilated`` with built-in padding; k4 s2 transposed conv: sub-pixel,
GEMM + col2im, ``lax.conv_transpose``).

Usage (CPU): ``python benchmarks/compare_torch.py --threads 2 --size 256``
Timings are medians over ``--iters`` runs after one warm-up (compilation) run. On a
shared machine, note the load average printed with the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any, Callable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", default="pix2pix,tf_pix2pix",
                   help="comma-separated: pix2pix, tf_pix2pix")
    p.add_argument("--size", type=int, default=256, help="image size (256: num_downs 8)")
    p.add_argument("--infer-batches", default="1,8")
    p.add_argument("--train-batches", default="1,4")
    p.add_argument("--iters", type=int, default=3, help="timed calls per block")
    p.add_argument("--rounds", type=int, default=2, help="alternating blocks per framework")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for both frameworks (0: all cores of this process)")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    p.add_argument("--breakdown", action="store_true", help="per-network and per-layer times")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    add_allocator_flag(p)
    return p.parse_args(argv)


def add_allocator_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-allocator", choices=("reuse", "system"), default="reuse",
                   help="glibc settings for both frameworks (unmask_jax.backends.host_allocator): "
                        "'reuse' keeps freed step buffers mapped (what unmask_jax.main "
                        "uses on the CPU backend), 'system' leaves glibc's defaults")


def configure_allocator(mode: str) -> str:
    """Same allocator settings for JAX and PyTorch. Applied before either starts when the
    platform is known then (``host_allocator.platform_before_start``), else for
    ``jax.default_backend()`` (they apply on 'cpu' only). Call before PyTorch starts."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from unmask_jax.backends import host_allocator

    platform = host_allocator.platform_before_start()
    if platform is None:
        import jax

        platform = jax.default_backend()
    return host_allocator.configure(platform, mode)


def limit_threads(threads: int) -> int:
    """Pin this process to ``threads`` cores before JAX/PyTorch start their thread pools."""
    cores = sorted(os.sched_getaffinity(0))
    if threads > 0:
        cores = cores[:threads]
        os.sched_setaffinity(0, cores)
    return len(cores)


def run_conditions(jax, torch, threads: int, load_start, load_end, rounds: int, iters: int,
                   allocator: str) -> str:
    """The line printed above a results table: versions, threads, load, timing blocks and
    the host allocator."""
    return (f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
            f"{threads} threads, load average {load_start[0]:.1f} -> {load_end[0]:.1f} "
            f"(machine cores: {os.cpu_count()}); {rounds} alternating blocks of {iters} timed "
            f"runs per framework; {allocator}")


def median_time(fn: Callable[[], Any], iters: int) -> float:
    """Median wall time in seconds over ``iters`` calls after one warm-up call."""
    return interleaved_times([fn], iters, rounds=1)[0][0]


def interleaved_times(fns: list[Callable[[], Any]], iters: int, rounds: int = 2
                      ) -> list[tuple[float, float, float]]:
    """(median wall s, median process CPU s, min wall s) per function, in alternating blocks.

    ``rounds`` times, each function runs one untimed warm-up call and then ``iters`` timed
    calls (A-block, B-block, A-block, B-block, ...): a shared machine's load changes hit all
    of them alike, and a framework's idle-spinning worker threads (OpenMP, Eigen) from the
    previous block only disturb the untimed warm-up call. Process CPU time (all threads)
    measures the work done independently of how long other processes held the cores.
    """
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            fn()
            for _ in range(iters):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return [(med(w), med(c), min(w)) for w, c in zip(wall, cpu)]


SYSTEMS = {
    # name: (generator, discriminator, D loss scale)
    "pix2pix": ("pix2pix_unet", "patchgan", 0.5),
    "tf_pix2pix": ("tf_pix2pix_unet", "tf_patchgan", 1.0),
}


class Table:
    """Rows of (JAX, PyTorch eager, torch.compile) timings; prints a markdown table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, system: str, what: str, batch: int, unit: str,
            jax_t: tuple[float, float, float], torch_t: tuple[float, float, float],
            compiled_t: tuple[float, float, float] | None = None) -> None:
        """Times are (median wall s, median CPU s, min wall s) per call; unit 'ms' (latency)
        or 'img/s' (throughput). Values shown are medians; speed-ups are torch / JAX time."""
        def value(t: float) -> float:
            return batch / t if unit == "img/s" else t * 1e3

        row = {"system": system, "measurement": what, "batch": batch, "unit": unit,
               "jax": value(jax_t[0]), "torch_eager": value(torch_t[0]),
               "torch_compile": None if compiled_t is None else value(compiled_t[0]),
               "jax_cpu_s": jax_t[1], "torch_cpu_s": torch_t[1],
               "cpu_speedup": torch_t[1] / max(jax_t[1], 1e-9),
               "best_speedup": torch_t[2] / jax_t[2],
               "jax_speedup": torch_t[0] / jax_t[0]}
        self.rows.append(row)
        comp = "" if compiled_t is None else f"  compile {row['torch_compile']:.2f} {unit}"
        print(f"  {what:<30} batch {batch:>2}: JAX {row['jax']:9.2f} {unit}  torch "
              f"{row['torch_eager']:9.2f} {unit}{comp}  speed-up CPU-time "
              f"{row['cpu_speedup']:.2f}x best {row['best_speedup']:.2f}x -> median "
              f"{row['jax_speedup']:.2f}x",
              flush=True)

    def markdown(self) -> str:
        lines = ["| system | measurement | batch | JAX | PyTorch eager | torch.compile | "
                 "CPU s/call JAX / torch | speed-up (CPU time) | speed-up (best wall) | "
                 "JAX speed-up (median wall) |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            comp = ("n/a" if r["torch_compile"] is None
                    else f"{r['torch_compile']:.2f} {r['unit']}")
            lines.append(
                f"| {r['system']} | {r['measurement']} | {r['batch']} | {r['jax']:.2f} "
                f"{r['unit']} | {r['torch_eager']:.2f} {r['unit']} | {comp} | "
                f"{r['jax_cpu_s']:.3f} / {r['torch_cpu_s']:.3f} | {r['cpu_speedup']:.2f}x | "
                f"{r['best_speedup']:.2f}x | {r['jax_speedup']:.2f}x |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n_threads = limit_threads(args.threads)
    allocator = configure_allocator(args.host_allocator)
    print(allocator, flush=True)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from configs import default, pix2pix
    from unmask_jax import state as state_lib, systems
    from unmask_jax.export import build_torch_module, keymaps
    from unmask_jax.models import create_model

    torch.set_num_threads(n_threads)
    num_downs = int(round(np.log2(args.size)))
    table = Table()
    load_start = os.getloadavg()
    it = args.iters

    for system_name in [name for name in args.systems.split(",") if name]:
        g_name, d_name, d_scale = SYSTEMS[system_name]
        g_kwargs = {"num_downs": num_downs}
        G = create_model(g_name, **g_kwargs)
        D = create_model(d_name)
        size = args.size
        g_vars = jax.jit(lambda x: G.init(jax.random.key(0), x, False))(
            jnp.zeros((1, size, size, 3)))
        d_vars = jax.jit(lambda x: D.init(jax.random.key(1), x, False))(
            jnp.zeros((1, size, size, 6)))
        tg = build_torch_module(**_target(keymaps.torch_target(g_name, g_kwargs, g_vars)))
        td = build_torch_module(**_target(keymaps.torch_target(d_name, {}, d_vars)))
        _load(tg, keymaps.flax_to_torch(g_name, g_kwargs, g_vars))
        _load(td, keymaps.flax_to_torch(d_name, {}, d_vars))
        print(f"{system_name}: G {g_name} {g_kwargs}, D {d_name}, {size}x{size}, "
              f"{n_threads} threads", flush=True)

        # ---------------- inference -----------------
        g_apply = jax.jit(lambda v, x: G.apply(v, x, False))
        tg.eval()
        compiled_g = _try_compile(torch, tg) if args.torch_compile else None
        for b in [int(v) for v in args.infer_batches.split(",")]:
            x = np.random.default_rng(b).uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
            xj, xt = jnp.asarray(x), torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
            fns = [lambda: g_apply(g_vars, xj).block_until_ready(), lambda: tg(xt)]
            if compiled_g is not None:
                fns.append(lambda: compiled_g(xt))
            with torch.inference_mode():
                if b == 1:
                    ref = tg(xt).numpy().transpose(0, 2, 3, 1)
                    ours = np.asarray(g_apply(g_vars, xj))
                    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
                    print(f"  eval parity max|diff|/max|ref| = {rel:.2e}")
                times = _guarded_times(fns, it, args.rounds)
            table.add(system_name, "G inference latency", b, "ms", *times)

        # ---------------- training step -----------------
        tx = optax.adam(2e-4, b1=0.5, b2=0.999)
        cfg = pix2pix.family(default.get_config())
        cfg.model.generator, cfg.model.generator_kwargs = g_name, g_kwargs
        cfg.model.discriminator, cfg.model.discriminator_kwargs = d_name, {}
        cfg.loss.d_scale = d_scale
        # The PyTorch reference below runs pix2pix's sequential G/D order: so does JAX here.
        cfg.loss.update_order = "sequential"
        system = systems.build(cfg)
        txs = {"generator": tx, "discriminator": tx}
        frozen = system.load_frozen()
        step = jax.jit(functools.partial(system.train_step, txs=txs), donate_argnums=(0,))
        compiled = None
        if args.torch_compile:
            cg, cd = _try_compile(torch, tg), _try_compile(torch, td)
            compiled = (cg, cd) if cg is not None and cd is not None else None
        for b in [int(v) for v in args.train_batches.split(",")]:
            rng = np.random.default_rng(100 + b)
            a = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
            y = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
            batch = {"masked": jnp.asarray(a), "target": jnp.asarray(y),
                     "mask": jnp.ones((b, size, size, 1))}
            state = state_lib.TrainState(
                step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0), nets={
                    name: state_lib.NetState(v["params"], {"batch_stats": v["batch_stats"]},
                                             tx.init(v["params"]))
                    for name, v in (("generator", g_vars), ("discriminator", d_vars))})
            holder = {"state": jax.tree.map(jnp.array, state)}  # private: the step donates it

            def jax_step():
                holder["state"], metrics = step(holder["state"], batch, frozen)
                jax.block_until_ready(metrics)

            t0 = time.perf_counter()
            jax_step()
            print(f"  (JAX train step batch {b}: compile + first run "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
            at, yt = (torch.from_numpy(v.transpose(0, 3, 1, 2).copy()) for v in (a, y))
            fns = [jax_step, _torch_step_fn(torch, tg, td, at, yt, d_scale)]
            if compiled is not None:
                fns.append(_torch_step_fn(torch, *compiled, at, yt, d_scale,
                                          params_from=(tg, td)))
            table.add(system_name, "train step (G+D)", b, "img/s",
                      *_guarded_times(fns, it, args.rounds))
            if args.breakdown and b == 1:
                # Diagnostic: the trainer's step without its non-finite guard (the finiteness
                # reduction over all gradients and the conditional commit), to show its cost.
                step_ng = jax.jit(functools.partial(_step_without_guard, system, txs, frozen),
                                  donate_argnums=(0,))
                holder_ng = {"state": jax.tree.map(jnp.array, state)}

                def jax_step_ng():
                    holder_ng["state"], metrics = step_ng(holder_ng["state"], batch)
                    jax.block_until_ready(metrics)

                table.add(system_name, "train step, no finite guard", b, "img/s",
                          *_guarded_times([jax_step_ng, fns[1]], it, args.rounds))
                del holder_ng
            del holder, state

        if args.breakdown:
            _breakdown(args, jax, jnp, np, torch, G, D, g_vars, d_vars, tg, td, size, table,
                       system_name)

    if args.breakdown:
        _layer_breakdown(args, jax, jnp, np, torch, table)

    load_end = os.getloadavg()
    print()
    print(run_conditions(jax, torch, n_threads, load_start, load_end, args.rounds, it,
                         allocator))
    print(table.markdown())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": table.rows, "threads": n_threads, "allocator": allocator,
                       "load": [load_start, load_end], "jax": jax.__version__,
                       "torch": torch.__version__}, f, indent=2)
    return 0


def _guarded_times(fns, iters, rounds):
    """interleaved_times; a failing torch.compile entry (the third) is reported and dropped."""
    if len(fns) > 2:
        try:
            fns[2]()
        except Exception as e:  # noqa: BLE001 - report and go on without it
            print(f"  torch.compile failed: {e!r:.300}")
            fns = fns[:2]
    times = interleaved_times(fns, iters, rounds)
    return times[0], times[1], (times[2] if len(times) > 2 else None)


def _step_without_guard(system, txs, frozen, state, batch):
    """The system's step traced with its non-finite check replaced by a constant True
    (XLA then drops the check and the conditional). Benchmark diagnostic only."""
    import jax.numpy as jnp

    from unmask_jax.systems import base

    original = base.all_finite
    base.all_finite = lambda *trees: jnp.array(True)
    try:
        return system.train_step(state, batch, frozen, txs)
    finally:
        base.all_finite = original


def _target(target) -> dict[str, Any]:
    return {"torch_class": target.torch_class, "constructor_args": target.constructor_args}


def _load(module, state_dict) -> None:
    import numpy as np
    import torch

    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                           strict=True)


def _try_compile(torch, module):
    try:
        return torch.compile(module)
    except Exception as e:  # noqa: BLE001
        print(f"  torch.compile unavailable: {e!r:.200}")
        return None


def _torch_step_fn(torch, G, D, a, y, d_scale, params_from=None):
    """The canonical pix2pix ``optimize_parameters`` (train mode, Adam 2e-4, (0.5, 0.999))."""
    g_mod, d_mod = params_from or (G, D)
    g_mod.train()
    d_mod.train()
    opt_g = torch.optim.Adam(g_mod.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d_mod.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = torch.nn.BCEWithLogitsLoss()

    def step():
        fake = G(a)
        for p in d_mod.parameters():
            p.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        pf = D(torch.cat([a, fake.detach()], 1))
        pr = D(torch.cat([a, y], 1))
        loss_d = d_scale * (bce(pf, torch.zeros_like(pf)) + bce(pr, torch.ones_like(pr)))
        loss_d.backward()
        opt_d.step()
        for p in d_mod.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        pf = D(torch.cat([a, fake], 1))
        loss_g = bce(pf, torch.ones_like(pf)) + 100.0 * torch.nn.functional.l1_loss(fake, y)
        loss_g.backward()
        opt_g.step()
        return loss_g.detach()

    return step


def _breakdown(args, jax, jnp, np, torch, G, D, g_vars, d_vars, tg, td, size, table, system):
    """Forward+backward (train mode) of each network alone, batch 1."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    xd = np.concatenate([x, x], -1)
    for name, module, variables, tmod, inp in [("G", G, g_vars, tg, x), ("D", D, d_vars, td, xd)]:
        def loss(params, v=variables, m=module, i=jnp.asarray(inp)):
            out, _ = m.apply({"params": params, "batch_stats": v["batch_stats"]}, i, True,
                             rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
            return jnp.mean(out)

        grad = jax.jit(jax.grad(loss))
        tmod.train()
        for p in tmod.parameters():
            p.requires_grad_(True)
        ti = torch.from_numpy(inp.transpose(0, 3, 1, 2).copy())

        def tstep(m=tmod, ti=ti):
            m.zero_grad(set_to_none=True)
            m(ti).mean().backward()

        jstep = (lambda g=grad, v=variables: jax.block_until_ready(g(v["params"])))
        table.add(system, f"{name} fwd+bwd (train mode)", 1, "ms",
                  *interleaved_times([jstep, tstep], args.iters, args.rounds))


def _layer_breakdown(args, jax, jnp, np, torch, table):
    """Single layers of the U-Net, forward+backward w.r.t. input and kernel, batch 1, in
    every form (the CPU forms of ``unmask_jax.backends.cpu_forms``, the plain ones of
    ``unmask_jax.models.layers``)."""
    from unmask_jax.backends import cpu_forms
    from unmask_jax.models import layers

    rng = np.random.default_rng(0)
    rounds = args.rounds
    for h, cin, cout in [(128, 64, 128), (32, 256, 512), (8, 512, 512)]:
        x = rng.standard_normal((1, h, h, cin)).astype(np.float32)
        k = (0.02 * rng.standard_normal((4, 4, cin, cout))).astype(np.float32)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
        wt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).requires_grad_()

        def tconv():
            torch.nn.functional.conv2d(xt, wt, stride=2, padding=1).square().sum().backward()

        for label, fn in [("conv", cpu_forms.conv2d), ("gemm", cpu_forms.conv2d_gemm),
                          ("xla", layers.conv2d_xla)]:
            g = jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(jnp.square(fn(x, k, 2, 1))),
                                 argnums=(0, 1)))
            table.add("layer", f"conv {label} {h}^2 {cin}->{cout} f+b", 1, "ms",
                      *interleaved_times([lambda g=g: jax.block_until_ready(g(x, k)), tconv],
                                         args.iters, rounds))
        # Transposed conv from (h/2)^2 x cout back to h^2 x cin (the U-Net up path).
        xs = rng.standard_normal((1, h // 2, h // 2, cout)).astype(np.float32)
        kt = (0.02 * rng.standard_normal((4, 4, cin, cout))).astype(np.float32)
        xst = torch.from_numpy(xs.transpose(0, 3, 1, 2).copy()).requires_grad_()
        wtt = torch.from_numpy(kt.transpose(3, 2, 0, 1).copy()).requires_grad_()

        def tconvt():
            torch.nn.functional.conv_transpose2d(xst, wtt, stride=2, padding=1).square().sum(
            ).backward()

        for label, fn in [("subpixel", cpu_forms.conv_transpose_subpixel),
                          ("gemm", cpu_forms.conv_transpose_gemm),
                          ("lax", layers.conv_transpose_xla)]:
            gt = jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(jnp.square(fn(x, k, 2, 1))),
                                  argnums=(0, 1)))
            table.add("layer", f"convT {label} {h // 2}^2 {cout}->{cin} f+b", 1, "ms",
                      *interleaved_times([lambda gt=gt: jax.block_until_ready(gt(xs, kt)),
                                          tconvt], args.iters, rounds))


if __name__ == "__main__":
    sys.exit(main())
