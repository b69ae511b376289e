"""JAX vs PyTorch speed of the exportable networks, same process, same thread count.

For each system (pix2pix: ``pix2pix_unet`` + ``patchgan``; tf_pix2pix: the TF-tutorial pair):
- inference latency of the generator (eval mode) at batch 1 and a larger batch;
- training throughput (images/s) of one full GAN step: generator forward, discriminator
  update on (real, detached fake) with Adam, generator update (adversarial + 100 * L1)
  against the updated discriminator with Adam (lr 2e-4, betas (0.5, 0.999)).
  JAX uses the trainer's own step, ``unmask_jax.train.train_step``, jitted with the state
  donated; PyTorch runs the canonical pix2pix ``optimize_parameters`` sequence in eager mode
  (and with ``torch.compile`` when ``--torch-compile`` is given and it works).
Both frameworks start from the same weights (Flax init exported with
``unmask_jax.export``); the eval outputs are compared as a sanity check.

Optional ``--breakdown``: generator and discriminator forward+backward alone, and single
layers (k4 s2 conv; k4 s2 transposed conv in sub-pixel and ``lax.conv_transpose`` form).

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
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for both frameworks (0: all cores of this process)")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    p.add_argument("--breakdown", action="store_true", help="per-network and per-layer times")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def limit_threads(threads: int) -> int:
    """Pin this process to ``threads`` cores before JAX/PyTorch start their thread pools."""
    cores = sorted(os.sched_getaffinity(0))
    if threads > 0:
        cores = cores[:threads]
        os.sched_setaffinity(0, cores)
    return len(cores)


def median_time(fn: Callable[[], Any], iters: int) -> float:
    """Median wall time in seconds over ``iters`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


SYSTEMS = {
    # name: (generator, discriminator, D loss scale)
    "pix2pix": ("pix2pix_unet", "patchgan", 0.5),
    "tf_pix2pix": ("tf_pix2pix_unet", "tf_patchgan", 1.0),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n_threads = limit_threads(args.threads)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from unmask_jax import gan, train
    from unmask_jax.export import build_torch_module, keymaps
    from unmask_jax.models import create_model
    from unmask_jax.models.layers import conv2d, conv_transpose_subpixel, conv_transpose_xla

    torch.set_num_threads(n_threads)
    num_downs = int(round(np.log2(args.size)))
    rows: list[dict[str, Any]] = []
    load_start = os.getloadavg()

    def add(system, what, batch, jax_v, torch_v, compiled_v, unit):
        higher_better = unit == "img/s"
        ratio = (jax_v / torch_v) if higher_better else (torch_v / jax_v)
        rows.append({"system": system, "measurement": what, "batch": batch, "unit": unit,
                     "jax": jax_v, "torch_eager": torch_v, "torch_compile": compiled_v,
                     "jax_speedup": ratio})
        print(f"  {what:<28} batch {batch:>2}: JAX {jax_v:9.2f} {unit}  torch {torch_v:9.2f} "
              f"{unit}  compile {compiled_v if compiled_v is None else round(compiled_v, 2)}"
              f"  -> JAX speed-up {ratio:.2f}x", flush=True)

    for system_name in args.systems.split(","):
        g_name, d_name, d_scale = SYSTEMS[system_name]
        g_kwargs = {"num_downs": num_downs} if g_name in ("pix2pix_unet", "tf_pix2pix_unet") else {}
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
            t_jax = median_time(lambda: g_apply(g_vars, xj).block_until_ready(), args.iters)
            with torch.inference_mode():
                t_torch = median_time(lambda: tg(xt), args.iters)
                t_comp = None
                if compiled_g is not None:
                    try:
                        t_comp = median_time(lambda: compiled_g(xt), args.iters) * 1e3
                    except Exception as e:  # noqa: BLE001 - report and go on
                        print(f"  torch.compile inference failed: {e!r:.200}")
                if b == 1:
                    ref = tg(xt).numpy().transpose(0, 2, 3, 1)
                    ours = np.asarray(g_apply(g_vars, xj))
                    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
                    print(f"  eval parity max|diff|/max|ref| = {rel:.2e}")
            add(system_name, "G inference latency", b, t_jax * 1e3, t_torch * 1e3, t_comp, "ms")

        # ---------------- training step -----------------
        tx = optax.adam(2e-4, b1=0.5, b2=0.999)
        system = gan.GanSystem(generator=G, discriminator=D, generator_inputs=("masked",),
                               composite_in_training=False, gan_kind="vanilla", gan_weight=1.0,
                               d_scale=d_scale, reconstruction=(("l1", 100.0),))
        step = jax.jit(functools.partial(train.train_step, system=system, g_tx=tx, d_tx=tx),
                       donate_argnums=(0,))
        for b in [int(v) for v in args.train_batches.split(",")]:
            rng = np.random.default_rng(100 + b)
            a = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
            y = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
            batch = {"masked": jnp.asarray(a), "target": jnp.asarray(y),
                     "mask": jnp.ones((b, size, size, 1))}
            state = train.TrainState(
                step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0),
                generator=train.NetState(g_vars["params"], g_vars["batch_stats"],
                                         tx.init(g_vars["params"])),
                discriminator=train.NetState(d_vars["params"], d_vars["batch_stats"],
                                             tx.init(d_vars["params"])))
            state = jax.tree.map(jnp.array, state)  # private copies: the step donates them
            holder = {"state": state}

            def jax_step():
                holder["state"], metrics = step(holder["state"], batch)
                jax.block_until_ready(metrics)

            t_compile = time.perf_counter()
            jax_step()
            t_compile = time.perf_counter() - t_compile
            t_jax = median_time(jax_step, args.iters)
            at, yt = (torch.from_numpy(v.transpose(0, 3, 1, 2).copy()) for v in (a, y))
            t_torch = median_time(_torch_step_fn(torch, tg, td, at, yt, d_scale), args.iters)
            t_comp = None
            if args.torch_compile:
                cg, cd = _try_compile(torch, tg), _try_compile(torch, td)
                if cg is not None and cd is not None:
                    try:
                        t_comp = b / median_time(_torch_step_fn(torch, cg, cd, at, yt, d_scale,
                                                                params_from=(tg, td)),
                                                 args.iters)
                    except Exception as e:  # noqa: BLE001
                        print(f"  torch.compile train step failed: {e!r:.200}")
            print(f"  (JAX train step compile + first run {t_compile:.1f} s)")
            add(system_name, "train step (G+D)", b, b / t_jax, b / t_torch, t_comp, "img/s")
            del holder, state

        if args.breakdown:
            _breakdown(args, jax, jnp, np, torch, G, D, g_vars, d_vars, tg, td, size, add,
                       system_name)

    if args.breakdown:
        _layer_breakdown(args, jax, jnp, np, torch, conv2d, conv_transpose_subpixel,
                         conv_transpose_xla, add)

    load_end = os.getloadavg()
    print()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
          f"{n_threads} threads, load average {load_start[0]:.1f} -> {load_end[0]:.1f} "
          f"(machine cores: {os.cpu_count()})")
    print("| system | measurement | batch | JAX | PyTorch eager | torch.compile | "
          "JAX speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        comp = "n/a" if r["torch_compile"] is None else f"{r['torch_compile']:.2f} {r['unit']}"
        print(f"| {r['system']} | {r['measurement']} | {r['batch']} | {r['jax']:.2f} {r['unit']} "
              f"| {r['torch_eager']:.2f} {r['unit']} | {comp} | {r['jax_speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "threads": n_threads, "load": [load_start, load_end],
                       "jax": jax.__version__, "torch": torch.__version__}, f, indent=2)
    return 0


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
        return float(loss_g)

    return step


def _breakdown(args, jax, jnp, np, torch, G, D, g_vars, d_vars, tg, td, size, add, system):
    """Forward+backward (train mode) of each network alone, batch 1."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    xd = np.concatenate([x, x], -1)
    for name, module, variables, tmod, inp in [("G", G, g_vars, tg, x), ("D", D, d_vars, td, xd)]:
        def loss(params, v=variables, m=module, i=jnp.asarray(inp)):
            out, _ = m.apply({"params": params, "batch_stats": v["batch_stats"]}, i, True,
                             rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
            return jnp.mean(out)

        grad = jax.jit(jax.grad(loss))
        t_jax = median_time(lambda: jax.block_until_ready(grad(variables["params"])), args.iters)
        tmod.train()
        for p in tmod.parameters():
            p.requires_grad_(True)
        ti = torch.from_numpy(inp.transpose(0, 3, 1, 2).copy())

        def tstep(m=tmod, ti=ti):
            m.zero_grad(set_to_none=True)
            m(ti).mean().backward()

        t_torch = median_time(tstep, args.iters)
        add(system, f"{name} fwd+bwd (train mode)", 1, t_jax * 1e3, t_torch * 1e3, None, "ms")


def _layer_breakdown(args, jax, jnp, np, torch, conv2d, convt_sub, convt_xla, add):
    """Single layers, forward+backward w.r.t. input and kernel, batch 1."""
    rng = np.random.default_rng(0)
    for h, cin, cout in [(128, 64, 128), (32, 256, 512), (8, 512, 512)]:
        x = rng.standard_normal((1, h, h, cin)).astype(np.float32)
        k = (0.02 * rng.standard_normal((4, 4, cin, cout))).astype(np.float32)

        def conv_loss(x, k):
            return jnp.sum(jnp.square(conv2d(x, k, 2, 1)))

        g = jax.jit(jax.grad(conv_loss, argnums=(0, 1)))
        t_jax = median_time(lambda: jax.block_until_ready(g(x, k)), args.iters)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
        wt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).requires_grad_()

        def tconv():
            torch.nn.functional.conv2d(xt, wt, stride=2, padding=1).square().sum().backward()

        add("layer", f"conv k4s2 {h}^2 {cin}->{cout}", 1, t_jax * 1e3,
            median_time(tconv, args.iters) * 1e3, None, "ms")
        # Transposed conv from (h/2)^2 x cout back to h^2 x cin (the U-Net up path).
        xs = rng.standard_normal((1, h // 2, h // 2, cout)).astype(np.float32)
        kt = (0.02 * rng.standard_normal((4, 4, cin, cout))).astype(np.float32)
        xst = torch.from_numpy(xs.transpose(0, 3, 1, 2).copy()).requires_grad_()
        wtt = torch.from_numpy(kt.transpose(3, 2, 0, 1).copy()).requires_grad_()

        def tconvt():
            torch.nn.functional.conv_transpose2d(xst, wtt, stride=2, padding=1).square().sum(
            ).backward()

        t_torch = median_time(tconvt, args.iters) * 1e3
        for label, fn in [("subpixel", convt_sub), ("lax", convt_xla)]:
            gt = jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(jnp.square(fn(x, k, 2, 1))),
                                  argnums=(0, 1)))
            t = median_time(lambda: jax.block_until_ready(gt(xs, kt)), args.iters)
            add("layer", f"convT {label} {h // 2}^2 {cout}->{cin}", 1, t * 1e3, t_torch, None,
                "ms")


if __name__ == "__main__":
    sys.exit(main())
