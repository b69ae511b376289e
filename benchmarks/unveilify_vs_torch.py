"""UnVeilify networks JAX vs PyTorch: MaskRemover inference and a G + D train step, same
process, same weights, same threads, interleaved timing blocks.

Rows (images/s; the ratio columns are JAX speed / PyTorch speed):

* ``inference (pSp + generator)``: the Flax ``MaskRemover`` (``unveilify_mask_remover``) in
  eval mode (running BatchNorm statistics), jitted, vs the PyTorch twin
  (``unmask_jax.export.torch_unveilify.MaskRemover``) in eval mode under
  ``torch.inference_mode``.
* ``train step (G+pSp, D)``: one generator forward in train mode (batch statistics); the
  discriminator updated on (real, detached fake) with BCE-with-logits, loss
  0.5 * (real + fake); then the generator (pSp encoder included) updated with
  ``L1_WEIGHT`` * L1(fake, target) + BCE(D(fake), 1) against the updated D, through the same
  forward pass. Adam (lr 2e-4, betas (0.5, 0.9), eps 1e-8) for both networks on both sides.
  The torch D outputs sigmoid probabilities (the reference's), so its loss is ``BCELoss`` on
  them; the Flax D outputs logits with ``sigmoid_binary_cross_entropy``: the same function.
  No LPIPS / identity terms (the torch side would need those networks with the same weights).
  JAX: the system's own ``train_step`` (configs/unveilify.py with these widths, only the L1
  and GAN terms, inputs taken as already in the networks' space), jitted with the state
  donated as the trainer does; PyTorch: the same sequence by hand.

Both frameworks start from the same Flax initialisation, exported with
``keymaps.flax_to_torch`` and loaded with ``load_state_dict(strict=True)``. The script checks
parity once per batch size (inference output max|diff| / max|ref|, first step's D and G
losses). At initialisation the eval-mode forward is ill-conditioned (running statistics 0 / 1
let the activations of the 24-unit pSp body grow to ~1e4): the script also prints the torch
twin's own fp32-vs-fp64 difference, which is of the same order as JAX-vs-torch there.

Usage (CPU)::

    python benchmarks/unveilify_vs_torch.py --threads 2 --res 128 --batch 1 --iters 2 \
        --rounds 2
    python benchmarks/unveilify_vs_torch.py --res 256 --batch 1      # the reference size
    python benchmarks/unveilify_vs_torch.py ... --cpu-library eigen   # Eigen convolutions

Smoke run (tiny)::

    python benchmarks/unveilify_vs_torch.py --res 32 --iters 1 --rounds 1 --psp-blocks 1,1,1,1 \
        --psp-width-div 4 --generator-width-div 8 --latent-dim 16 --ndf 8

Timing helpers, thread limits and the allocator come from ``benchmarks/compare_torch.py``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compare_torch as ct  # noqa: E402  (stdlib-only at import: JAX/torch start later)

LR, BETAS, EPS = 2e-4, (0.5, 0.9), 1e-8
L1_WEIGHT = 20.0
D_SCALE = 0.5
SYSTEM = "unveilify"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--res", type=int, default=256, help="image size (a power of two >= 32)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--iters", type=int, default=3, help="timed calls per block")
    p.add_argument("--rounds", type=int, default=2, help="alternating blocks per framework")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for both frameworks (0: all cores of this process)")
    p.add_argument("--skip-train", action="store_true", help="inference rows only")
    p.add_argument("--latent-dim", type=int, default=512)
    p.add_argument("--psp-blocks", default="", help="e.g. 1,1,1,1 (default IR-SE50 3,4,14,3)")
    p.add_argument("--psp-width-div", type=int, default=1)
    p.add_argument("--generator-width-div", type=int, default=1)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--backend-forms", default="auto",
                   help="forms of the JAX layers: 'auto' (the platform's measured forms) or "
                        "'off' (plain XLA ops); unmask_jax.backends.FORMS, "
                        "config.model.backend_forms")
    p.add_argument("--cpu-library", default="ynnpack",
                   help="XLA CPU library of the JAX programs, from "
                        "unmask_jax.backends.CPU_LIBRARIES: 'ynnpack' (the system's), "
                        "'eigen' or 'no_ynnpack' (unmask_jax.backends.jit)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    ct.add_allocator_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n_threads = ct.limit_threads(args.threads)
    allocator = ct.configure_allocator(args.host_allocator)
    print(allocator, flush=True)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from unmask_jax import backends
    from unmask_jax.export import build_torch_module, keymaps
    from unmask_jax.models import count_params, create_model

    try:
        backends.check_forms(args.backend_forms)
        backends.check_cpu_library(args.cpu_library)
    except ValueError as e:
        raise SystemExit(str(e))
    jit = functools.partial(backends.jit, forms=args.backend_forms,
                            cpu_library=args.cpu_library)

    torch.set_num_threads(n_threads)
    res = args.res
    g_kwargs = dict(resolution=res, latent_dim=args.latent_dim,
                    psp_width_div=args.psp_width_div,
                    generator_width_div=args.generator_width_div)
    if args.psp_blocks:
        g_kwargs["psp_blocks"] = tuple(int(v) for v in args.psp_blocks.split(","))
    d_kwargs = dict(ndf=args.ndf)
    G = create_model("unveilify_mask_remover", **g_kwargs)
    D = create_model("unveilify_discriminator", **d_kwargs)
    x0 = jnp.zeros((1, res, res, 3))
    t0 = time.perf_counter()
    g_vars = jax.device_get(jax.jit(lambda k: G.init(k, x0, x0, False))(jax.random.key(0)))
    d_vars = jax.device_get(jax.jit(lambda k: D.init(k, x0, x0, False))(jax.random.key(1)))
    print(f"{SYSTEM}: MaskRemover {g_kwargs} ({count_params(g_vars['params']):,} params), "
          f"D {d_kwargs} ({count_params(d_vars['params']):,}), {res}x{res}, {n_threads} "
          f"threads, JAX programs with {args.backend_forms} forms for {args.cpu_library}; "
          f"init "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    def twin(model_name, kwargs, variables):
        target = keymaps.torch_target(model_name, kwargs, variables)
        module = build_torch_module(target.torch_class, target.constructor_args, target.module)
        sd = keymaps.flax_to_torch(model_name, kwargs, variables)
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                               strict=True)
        return module

    nchw = lambda v: torch.from_numpy(np.ascontiguousarray(np.asarray(v).transpose(0, 3, 1, 2)))  # noqa: E731,E501
    table = ct.Table()
    load_start = os.getloadavg()
    parity: dict[str, float] = {}
    batches = [int(v) for v in args.batch.split(",") if v.strip()]

    # ---------------- inference ----------------
    predict = jit(lambda v, m, i: G.apply(v, m, i, False))
    tg = twin("unveilify_mask_remover", g_kwargs, g_vars).eval()
    # On the device once, as a loaded model is: numpy weights would be copied to the
    # device on every call (~770 MB with the pSp encoder), which PyTorch does not pay.
    g_dev = jax.device_put(g_vars)
    for b in batches:
        rng = np.random.default_rng(b)
        masked = rng.normal(size=(b, res, res, 3)).astype(np.float32)
        identity = rng.normal(size=(b, res, res, 3)).astype(np.float32)
        mj, ij, mt, it = jnp.asarray(masked), jnp.asarray(identity), nchw(masked), nchw(identity)
        t0 = time.perf_counter()
        ours = np.asarray(predict(g_dev, mj, ij))
        print(f"  (JAX inference batch {b}: compile + first run {time.perf_counter() - t0:.1f} s)",
              flush=True)
        with torch.inference_mode():
            ref = tg(mt, it).numpy().transpose(0, 2, 3, 1)
            rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
            # Context: the same twin in float64. At initialisation, eval mode (running
            # statistics 0 / 1) lets the activations of the deep pSp body grow unchecked, so
            # fp32 results of any two implementations can differ by percents; the reduced,
            # well-conditioned parity check is tests/test_unveilify_models.py.
            tg64 = copy.deepcopy(tg).double()
            ref64 = tg64(mt.double(), it.double()).numpy().transpose(0, 2, 3, 1)
            del tg64
            rel64 = float(np.abs(ref - ref64).max() / np.abs(ref64).max())
            parity[f"infer_b{b}"], parity[f"infer_b{b}_torch32_vs_64"] = rel, rel64
            print(f"  inference parity batch {b}: max|diff|/max|ref| = {rel:.2e} (JAX vs "
                  f"torch fp32; torch fp32 vs fp64: {rel64:.2e})", flush=True)
            times = ct.interleaved_times(
                [lambda: jax.block_until_ready(predict(g_dev, mj, ij)), lambda: tg(mt, it)],
                args.iters, args.rounds)
        table.add(SYSTEM, "inference (pSp + generator)", b, "img/s", *times)
    del tg, g_dev

    # ---------------- train step ----------------
    # The system's own step (``UnVeilifySystem.train_step``, as the trainer jits it), on
    # configs/unveilify.py with the benchmark's widths, inputs already in the networks' space
    # (input_norm 'unit': the batch below is), and only the L1 and GAN terms (the torch twin's
    # loss below).
    from ml_collections import config_dict

    from configs import unveilify as unveilify_config
    from unmask_jax import systems
    from unmask_jax.state import NetState, TrainState

    tx = optax.adam(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS)
    cfg = unveilify_config.get_config("ref")
    cfg.data.resolution = res
    cfg.model.generator_kwargs = config_dict.ConfigDict(g_kwargs)
    cfg.model.discriminator_kwargs = config_dict.ConfigDict(d_kwargs)
    cfg.model.input_norm = "unit"
    cfg.model.backend_forms = args.backend_forms
    cfg.loss.terms = config_dict.ConfigDict({
        "gan": {"weight": 1.0, "kind": "vanilla"},
        "l1": {"weight": L1_WEIGHT, "pred": "output_model", "target": "target_model"}})
    cfg.loss.d_scale = D_SCALE
    system = systems.build(cfg)
    system.cpu_library = args.cpu_library
    txs = {"generator": tx, "discriminator": tx}
    frozen = system.load_frozen()
    step = system.jit(functools.partial(system.train_step, txs=txs), donate_argnums=(0,))

    def net_state(variables):
        return NetState(variables["params"],
                        {k: v for k, v in variables.items() if k != "params"},
                        tx.init(variables["params"]))

    for b in ([] if args.skip_train else batches):
        rng = np.random.default_rng(100 + b)
        masked, identity, target = (rng.normal(size=(b, res, res, 3)).astype(np.float32)
                                    for _ in range(3))
        mj, ij, yj = jnp.asarray(masked), jnp.asarray(identity), jnp.asarray(target)
        state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0),
                           nets={"generator": net_state(g_vars),
                                 "discriminator": net_state(d_vars)})
        holder = {"state": jax.tree.map(jnp.array, state)}
        batch = {"masked": mj, "identity": ij, "target": yj}

        def run_jax():
            holder["state"], metrics = step(holder["state"], batch, frozen)
            return jax.block_until_ready(metrics)

        t0 = time.perf_counter()
        first = run_jax()
        print(f"  (JAX train step batch {b}: compile + first run "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
        tgt = twin("unveilify_mask_remover", g_kwargs, g_vars).train()
        tdt = twin("unveilify_discriminator", d_kwargs, d_vars).train()
        opt_g = torch.optim.Adam(tgt.parameters(), lr=LR, betas=BETAS, eps=EPS)
        opt_d = torch.optim.Adam(tdt.parameters(), lr=LR, betas=BETAS, eps=EPS)
        mt, it, yt = nchw(masked), nchw(identity), nchw(target)
        bce_t = torch.nn.BCELoss()

        def run_torch():
            fake = tgt(mt, it)
            opt_d.zero_grad(set_to_none=True)
            p = tdt(torch.cat([yt, fake.detach()]), torch.cat([it, it]))
            real_p, fake_p = p.chunk(2)
            d_loss = D_SCALE * (bce_t(real_p, torch.ones_like(real_p))
                                + bce_t(fake_p, torch.zeros_like(fake_p)))
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad(set_to_none=True)
            p = tdt(fake, it)
            g_loss = L1_WEIGHT * (fake - yt).abs().mean() + bce_t(p, torch.ones_like(p))
            g_loss.backward()
            opt_g.step()
            return float(d_loss), float(g_loss)

        d_ref, g_ref = run_torch()
        for name, ours_v, ref_v in (("d_loss", first["d_loss"], d_ref),
                                    ("g_loss", first["g_loss"], g_ref)):
            rel = abs(float(ours_v) - ref_v) / max(abs(ref_v), 1e-12)
            parity[f"train_b{b}_{name}"] = rel
            print(f"  train step parity batch {b}, first step {name}: JAX {float(ours_v):.6f} "
                  f"torch {ref_v:.6f} (rel diff {rel:.1e})", flush=True)
        table.add(SYSTEM, "train step (G+pSp fwd/bwd, L1 + GAN; D step)", b, "img/s",
                  *ct.interleaved_times([run_jax, run_torch], args.iters, args.rounds))
        del holder, state, tgt, tdt, opt_g, opt_d

    load_end = os.getloadavg()
    print()
    print(ct.run_conditions(jax, torch, n_threads, load_start, load_end, args.rounds,
                            args.iters, allocator))
    print(_markdown(table.rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": table.rows, "parity": parity, "threads": n_threads,
                       "allocator": allocator, "load": [load_start, load_end],
                       "jax": jax.__version__, "torch": torch.__version__, "res": res,
                       "generator_kwargs": {k: str(v) for k, v in g_kwargs.items()},
                       "discriminator_kwargs": d_kwargs, "iters": args.iters,
                       "rounds": args.rounds, "backend_forms": args.backend_forms,
                       "cpu_library": args.cpu_library}, f, indent=2)
    return 0


def _markdown(rows) -> str:
    lines = ["| measurement | batch | JAX | PyTorch | JAX / PyTorch (wall) | "
             "(CPU time) | (best wall) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = "img/s" if r["unit"] == "img/s" else "ms"
        lines.append(f"| {r['measurement']} | {r['batch']} | {r['jax']:.2f} {unit} | "
                     f"{r['torch_eager']:.2f} {unit} | {r['jax_speedup']:.2f} | "
                     f"{r['cpu_speedup']:.2f} | {r['best_speedup']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
