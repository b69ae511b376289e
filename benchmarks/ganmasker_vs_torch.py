"""GANMasker (configs/ganmasker.py:unmask) JAX vs PyTorch: two-stage inference and the
stage-2 train step, same process, same weights, same threads, same host allocator.

Rows (images/s; the ratio columns are JAX speed / PyTorch speed):

* ``two-stage inference``: stage 1 M-Seg (eval mode) -> map thresholded at
  ``model.mask_threshold`` (0.5) -> FU-Net (eval mode) on concat(masked, map) -> MURF composite
  ``G(x) * m + x * (1 - m)``. JAX: the system's own ``GANMaskerSystem.predict(...,
  mask_source="segmenter")``, jitted, with the stage-1 module set on the system and its
  variables passed as ``frozen["segmenter"]`` (what ``load_frozen`` does from a stage-1 run).
  PyTorch: the twins ``GANMaskerMSeg`` / ``GANMaskerFUNet`` in eval mode under
  ``torch.inference_mode``, the same threshold and composite, written out here.
* ``stage-2 train step (G+D)``: JAX: the system's ``train_step`` (sequential order: one G
  forward; D updated on the detached fake then the real pair; G's loss against the updated D),
  jitted with the state donated, non-finite guard included (it is the trainer's step).
  PyTorch: the same sequence by hand with the twins in train mode (BatchNorm batch statistics,
  spectral-norm power iteration on each D call): D loss 0.5 * ((D(real) - 1)^2 + D(fake)^2),
  G loss (D(fake) - 1)^2 + 50 * SmoothL1(beta 1) + 50 * (1 - SSIM) on the MURF output; the D
  input is concat(masked, mask, image) (7 channels); Adam lr 1e-3, betas (0.5, 0.999) for
  both networks in both frameworks. SSIM on the torch side follows ``unmask_jax.losses.ssim``
  (dm_pix): images mapped to [0, 1], separable Gaussian 11 / sigma 1.5, valid filtering, K1
  0.01, K2 0.03, dm_pix's variance clipping, mean over pixels.

  The perceptual term (weight 10 in the config) is set to weight 0 on both sides: the torch
  side would need a VGG with the same weights. The figures are therefore for the step
  *without* the VGG forward/backward.

Both frameworks start from the same Flax initialisation, exported with
``keymaps.flax_to_torch`` and loaded with ``load_state_dict(strict=True)``. The script checks
parity once per batch size: max|diff| / max|ref| of the inference outputs (and how many map
pixels the threshold put on different sides), and the first train step's D and G losses.
An untrained M-Seg outputs 0.5 +- ~1e-6 everywhere, so the 0.5 threshold sits on a knife
edge: a few map pixels on different sides (and an output difference at those pixels) are
rounding, not a mismatch; the stage-1 map's own difference is the check that matters.

Usage (CPU, the config's widths at 256x256)::

    python benchmarks/ganmasker_vs_torch.py --threads 2 --iters 3 --rounds 2
    python benchmarks/ganmasker_vs_torch.py ... --host-allocator system
    python benchmarks/ganmasker_vs_torch.py ... --cpu-library eigen,ynnpack

The JAX programs are compiled with the system's ``jit`` (``model.backend_forms`` and the
system's ``cpu_library``, 'eigen' for GANMasker), as the trainer and ``--mode=predict``
compile them; ``--cpu-library`` times other XLA CPU libraries beside it
(``unmask_jax.backends.CPU_LIBRARIES``).

Per-part forward + backward (FU-Net blocks, CBAM, pools, up-sampling, the SN
discriminator, SSIM, SmoothL1), JAX vs the twins' submodules with the same weights::

    python benchmarks/ganmasker_vs_torch.py --threads 1 --iters 3 --rounds 2 \
        --breakdown 1,4 --only-breakdown

Smoke run (tiny)::

    python benchmarks/ganmasker_vs_torch.py --size 64 --iters 1 --rounds 1 \
        --mseg-width 4 --funet-width 4 --ndf 4 --d-layers 2 \
        --batches-infer 1 --batches-train 1

Timing helpers, thread limits and the allocator come from ``benchmarks/compare_torch.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compare_torch as ct  # noqa: E402  (stdlib-only at import: JAX/torch start later)

D_SCALE = 0.5
SMOOTH_L1_WEIGHT = 50.0
SSIM_WEIGHT = 50.0
LR, BETAS = 1e-3, (0.5, 0.999)
SYSTEM = "ganmasker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="image size (a multiple of 32)")
    p.add_argument("--batches-infer", default="1,8", help="comma-separated; '' skips")
    p.add_argument("--batches-train", default="1,4", help="comma-separated; '' skips")
    p.add_argument("--iters", type=int, default=3, help="timed calls per block")
    p.add_argument("--rounds", type=int, default=2, help="alternating blocks per framework")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for both frameworks (0: all cores of this process)")
    p.add_argument("--mseg-width", type=int, default=None,
                   help="M-Seg base_width (default: configs/ganmasker.py:unmask, 32)")
    p.add_argument("--funet-width", type=int, default=None,
                   help="FU-Net base_width (default: the config's, 32)")
    p.add_argument("--ndf", type=int, default=None,
                   help="discriminator ndf (default: the config's, 64)")
    p.add_argument("--d-layers", type=int, default=None,
                   help="discriminator n_layers (default: the config's, 3)")
    p.add_argument("--cpu-library", default="",
                   help="XLA CPU libraries to compile the JAX rows for, comma-separated, from "
                        "unmask_jax.backends.CPU_LIBRARIES (ynnpack, eigen, no_ynnpack); "
                        "default: the system's (GANMaskerSystem.cpu_library, 'eigen'). "
                        "Several give one row each, timed in this process")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--breakdown", default="",
                   help="comma-separated batch sizes for a per-part forward+backward table "
                        "(FU-Net blocks, CBAM, pools, up-sampling, D, losses); '' skips")
    p.add_argument("--only-breakdown", action="store_true",
                   help="skip the inference and train-step rows (with --breakdown)")
    ct.add_allocator_flag(p)
    return p.parse_args(argv)


def _batches(spec: str) -> list[int]:
    return [int(v) for v in spec.split(",") if v.strip()]


def _libraries(args) -> list[str]:
    """``--cpu-library`` as a list ([] : the system's)."""
    return [v.strip() for v in args.cpu_library.split(",") if v.strip()]


def build_config(args):
    """configs/ganmasker.py:unmask with the width overrides and no perceptual term."""
    from configs import ganmasker

    c = ganmasker.get_config("unmask")
    c.data.resolution = args.size
    if args.mseg_width is not None:
        c.model.segmenter_kwargs.base_width = args.mseg_width
    if args.funet_width is not None:
        c.model.generator_kwargs.base_width = args.funet_width
    if args.ndf is not None:
        c.model.discriminator_kwargs.ndf = args.ndf
    if args.d_layers is not None:
        c.model.discriminator_kwargs.n_layers = args.d_layers
    c.loss.terms.perceptual.weight = 0.0  # no VGG on the torch side (see the docstring)
    c.loss.terms.perceptual.backbone = "vgg16"  # unused at weight 0: skips the VGG19 lookup
    c.loss.update_order = "sequential"
    return c


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.size % 32:
        raise SystemExit(f"--size {args.size}: M-Seg needs a multiple of 32")
    n_threads = ct.limit_threads(args.threads)
    allocator = ct.configure_allocator(args.host_allocator)
    print(allocator, flush=True)

    import jax
    import jax.numpy as jnp
    import torch

    from unmask_jax import backends, systems
    from unmask_jax.export import build_torch_module, keymaps
    from unmask_jax.models import create_model
    from unmask_jax.state import NetState

    try:
        libraries = [backends.check_cpu_library(v) for v in _libraries(args)]
    except ValueError as e:
        raise SystemExit(f"--cpu-library: {e}")
    torch.set_num_threads(n_threads)
    cfg = build_config(args)
    size = args.size
    system = systems.build(cfg)
    assert system.stage == "unmask" and system.update_order == "sequential"
    assert set(t.name for t in system.objective.terms) == {"gan", "smooth_l1", "ssim"}, \
        [t.name for t in system.objective.terms]
    m = cfg.model
    names = {"generator": (m.generator, dict(m.generator_kwargs)),
             "discriminator": (m.discriminator, dict(m.discriminator_kwargs)),
             "segmenter": (m.segmenter, dict(m.segmenter_kwargs))}

    # Same initial weights for both frameworks.
    variables = jax.jit(system.init_variables, static_argnums=1)(jax.random.key(0), size)
    mseg = create_model(m.segmenter, **names["segmenter"][1])
    variables["segmenter"] = jax.jit(lambda x: mseg.init(jax.random.key(1), x, False))(
        jnp.zeros((1, size, size, 3)))
    variables = jax.device_get(variables)

    def torch_twin(net: str):
        model_name, kwargs = names[net]
        target = keymaps.torch_target(model_name, kwargs, variables[net])
        module = build_torch_module(target.torch_class, target.constructor_args)
        ct._load(module, keymaps.flax_to_torch(model_name, kwargs, variables[net]))
        return module

    def net_state(net: str, tx=None) -> NetState:
        v = variables[net]
        return NetState(params=v["params"],
                        collections={k: c for k, c in v.items() if k != "params"},
                        opt_state=None if tx is None else tx.init(v["params"]))

    print(f"{SYSTEM}: M-Seg {names['segmenter'][1]}, FU-Net {names['generator'][1]}, "
          f"D {names['discriminator'][1]}, {size}x{size}, {n_threads} threads; "
          f"loss terms {system.objective.names()} (perceptual weight 0 on both sides)",
          flush=True)
    table = ct.Table()
    load_start = os.getloadavg()
    parity: dict[str, float] = {}

    for library in libraries or [system.cpu_library]:
        _run_rows(args, library, cfg, variables, mseg, torch_twin, net_state, table, parity)

    for b in _batches(args.breakdown):
        _breakdown(args, b, variables, names, torch_twin, table)

    load_end = os.getloadavg()
    print()
    print(ct.run_conditions(jax, torch, n_threads, load_start, load_end, args.rounds,
                            args.iters, allocator))
    print(_markdown(table.rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": table.rows, "parity": parity, "threads": n_threads,
                       "allocator": allocator, "load": [load_start, load_end],
                       "jax": jax.__version__, "torch": torch.__version__,
                       "size": size, "widths": {k: v[1] for k, v in names.items()},
                       "iters": args.iters, "rounds": args.rounds,
                       "cpu_library": libraries or [system.cpu_library]}, f, indent=2)
    return 0


def _run_rows(args, library, cfg, variables, mseg, torch_twin, net_state, table,
              parity) -> None:
    """The two-stage inference and train-step rows, the JAX side compiled for ``library``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from unmask_jax import systems
    from unmask_jax.state import TrainState

    size = args.size
    # ---------------- two-stage inference ----------------
    system = systems.build(cfg)
    system.cpu_library = library  # read by system.jit (the class states the default)
    label = "" if len(_libraries(args)) < 2 else f" [{library}]"
    system._segmenter = mseg  # what _load_segmenter sets from a stage-1 run
    # Weights on the device once, as a loaded model's are: numpy weights would be copied
    # to the device on every call, which PyTorch does not pay.
    frozen_inf = jax.device_put({"segmenter": variables["segmenter"]})
    predict = system.jit(functools.partial(system.predict, mask_source="segmenter"))
    inf_state = jax.device_put(TrainState(step=jnp.zeros((), jnp.int32),
                                          rng=jax.random.PRNGKey(0),
                                          nets={"generator": net_state("generator")}))
    t_seg, t_gen = torch_twin("segmenter").eval(), torch_twin("generator").eval()
    threshold = system.threshold

    def torch_two_stage(x):
        prob = t_seg(x)
        mask = (prob >= threshold).to(x.dtype)
        raw = t_gen(torch.cat([x, mask], 1))
        return raw * mask + x * (1.0 - mask), prob

    for b in ([] if args.only_breakdown else _batches(args.batches_infer)):
        x = _masked_faces(np, b, size, seed=b)[0]
        xj = jnp.asarray(x)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        batch = {"masked": xj}
        with torch.inference_mode():
            t0 = time.perf_counter()
            ours = jax.device_get(predict(inf_state, batch, frozen_inf))
            print(f"  (JAX two-stage batch {b}, programs for {system.cpu_library}: "
                  f"compile + first run "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
            ref, ref_prob = (v.numpy().transpose(0, 2, 3, 1) for v in torch_two_stage(xt))
            rel = float(np.abs(ours["output"] - ref).max() / np.abs(ref).max())
            rel_prob = float(np.abs(ours["mask"] - ref_prob).max() / np.abs(ref_prob).max())
            flips = int(np.sum((ours["mask"] >= threshold) != (ref_prob >= threshold)))
            print(f"  two-stage parity batch {b}: output max|diff|/max|ref| = {rel:.2e}, "
                  f"stage-1 map {rel_prob:.2e}, thresholded map pixels that differ: {flips} "
                  f"of {ref_prob.size} (map mean {float(ref_prob.mean()):.3f})", flush=True)
            parity[f"infer_b{b}_output"], parity[f"infer_b{b}_map"] = rel, rel_prob
            parity[f"infer_b{b}_map_flips"] = flips
            fns = [lambda: jax.block_until_ready(predict(inf_state, batch, frozen_inf)),
                   lambda: torch_two_stage(xt)]
            times = ct.interleaved_times(fns, args.iters, args.rounds)
        table.add(SYSTEM, "two-stage inference (M-Seg + FU-Net + MURF)" + label, b, "img/s",
                  *times)
    del t_seg, t_gen, inf_state

    # ---------------- stage-2 train step ----------------
    tx = optax.adam(LR, b1=BETAS[0], b2=BETAS[1])
    txs = {"generator": tx, "discriminator": tx}
    frozen = system.load_frozen()  # {"loss": {}}: no feature network without the VGG term
    step = system.jit(functools.partial(system.train_step, txs=txs), donate_argnums=(0,))
    for b in ([] if args.only_breakdown else _batches(args.batches_train)):
        masked, target, mask = _masked_faces(np, b, size, seed=100 + b)
        batch = {"masked": jnp.asarray(masked), "target": jnp.asarray(target),
                 "mask": jnp.asarray(mask)}
        state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0), nets={
            net: net_state(net, tx) for net in ("generator", "discriminator")})
        holder = {"state": jax.tree.map(jnp.array, state)}  # private: the step donates it

        def jax_step():
            holder["state"], metrics = step(holder["state"], batch, frozen)
            return jax.block_until_ready(metrics)

        t0 = time.perf_counter()
        first = jax_step()
        print(f"  (JAX train step batch {b}: compile + first run "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
        tg, td = torch_twin("generator"), torch_twin("discriminator")  # fresh initial weights
        nchw = lambda v: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)))  # noqa
        torch_step = _torch_step_fn(torch, tg, td, nchw(masked), nchw(target), nchw(mask))
        d_ref, g_ref = torch_step()
        for name, ours_v, ref_v in (("d_loss", first["d_loss"], d_ref),
                                    ("g_loss", first["g_loss"], g_ref)):
            rel = abs(float(ours_v) - ref_v) / max(abs(ref_v), 1e-12)
            parity[f"train_b{b}_{name}"] = rel
            print(f"  train step parity batch {b}, first step {name}: JAX {float(ours_v):.6f} "
                  f"torch {ref_v:.6f} (rel diff {rel:.1e})", flush=True)
        table.add(SYSTEM, "stage-2 train step (G+D, no VGG term)" + label, b, "img/s",
                  *ct.interleaved_times([jax_step, torch_step], args.iters, args.rounds))
        del holder, state, tg, td


def _markdown(rows) -> str:
    lines = ["| measurement | batch | JAX | PyTorch | JAX / PyTorch (wall) | "
             "(CPU time) | (best wall) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = "img/s" if r["unit"] == "img/s" else "ms"
        lines.append(f"| {r['measurement']} | {r['batch']} | {r['jax']:.2f} {unit} | "
                     f"{r['torch_eager']:.2f} {unit} | {r['jax_speedup']:.2f} | "
                     f"{r['cpu_speedup']:.2f} | {r['best_speedup']:.2f} |")
    return "\n".join(lines)


def _breakdown(args, b: int, variables, names, torch_twin, table) -> None:
    """Forward + backward (train mode: BN batch statistics, one power iteration) of the parts
    of the stage-2 step, each alone, JAX (jitted) vs the twin's submodule with the same
    weights. The gradient is taken with respect to the part's input and parameters of
    ``sum(out * cotangent)``, a fixed random cotangent."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch.nn.functional as F

    from unmask_jax import losses
    from unmask_jax.models import create_model, ganmasker as gm

    size = args.size
    rng = np.random.default_rng(1000 + b)
    g_kwargs, d_kwargs = names["generator"][1], names["discriminator"][1]
    funet = create_model(names["generator"][0], **g_kwargs)
    kw = funet.block_kwargs()
    widths = [funet.base_width * 2**i for i in range(gm.NUM_LEVELS)]
    g_vars = variables["generator"]
    tg = torch_twin("generator").train()

    class Part(nn.Module):
        fn: Any

        @nn.compact
        def __call__(self, *xs):
            return self.fn(*xs)

    def sub(prefix: str):
        return {c: {k: v for k, v in g_vars[c].items() if k.startswith(prefix)}
                for c in g_vars}

    def add(label: str, jax_fn, torch_fn, shapes, params=None, collections=None):
        """jax_fn(params, *xs) / torch_fn(*xs) -> output; params None: no parameters."""
        params = jax.device_put(params)  # not copied from numpy on every call
        xs = [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]
        out_shape = jax.eval_shape(lambda *a: jax_fn(params, *a), *xs).shape
        cot = np.asarray(rng.standard_normal(out_shape), np.float32)

        def loss(p, c, *a):  # the cotangent is an argument: a constant could be folded
            return jnp.sum(jax_fn(p, *a) * c)

        grad = jax.jit(jax.grad(loss, argnums=(0,) + tuple(range(2, len(xs) + 2))))
        jxs = [jnp.asarray(cot)] + [jnp.asarray(x) for x in xs]
        txs = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)) if x.ndim == 4
                                else x).requires_grad_() for x in xs]
        tcot = torch.from_numpy(np.ascontiguousarray(np.moveaxis(cot, -1, 1)) if cot.ndim == 4
                                else cot)

        def tstep():
            for t in txs:
                t.grad = None
            tg.zero_grad(set_to_none=True)
            (torch_fn(*txs) * tcot).sum().backward()

        table.add("part", label, b, "ms", *ct.interleaved_times(
            [lambda: jax.block_until_ready(grad(params, *jxs)), tstep], args.iters,
            args.rounds))
        print(f"    {table.rows[-1]['measurement']}: JAX {table.rows[-1]['jax']:.1f} ms, "
              f"torch {table.rows[-1]['torch_eager']:.1f} ms", flush=True)

    def flax_part(fn, prefix):
        v = sub(prefix)
        part = Part(fn)

        def run(p, *xs):
            out, _ = part.apply({**v, "params": p}, *xs, mutable=["batch_stats"])
            return out
        return run, v["params"]

    gm_up_t = lambda h: F.interpolate(h, scale_factor=2, mode=funet.upsample,  # noqa: E731
                                      align_corners=False if funet.upsample == "bilinear"
                                      else None)

    # Whole generator.
    def g_full(p, x):
        out, _ = funet.apply({**g_vars, "params": p}, x, True, mutable=["batch_stats"])
        return out
    add("FU-Net whole G", g_full, tg, [(b, size, size, 4)], g_vars["params"])
    ins = [4] + widths[:-1]
    for i, f in enumerate(widths):
        s = size // 2**i
        fn, p = flax_part(lambda h, f=f, i=i: gm.ge_block(h, f, f"enc_{i}_", False, **kw),
                          f"enc_{i}_")
        add(f"Ge-block {i} ({s}^2 {ins[i]}->{f})", fn, tg.enc[i], [(b, s, s, ins[i])], p)
        from unmask_jax.models.blocks import cbam
        fn, p = flax_part(lambda h, i=i: cbam(
            h, reduction=kw["cbam_reduction"], spatial_kernel=kw["cbam_kernel"],
            prefix=f"enc_{i}_cbam_"), f"enc_{i}_cbam_")
        add(f"  of which CBAM {i} ({s}^2 {f})", fn, tg.enc[i].cbam, [(b, s, s, f)], p)
        if i < gm.NUM_LEVELS - 1:
            add(f"max pool {i} ({s}^2 {f})", lambda p, h: gm._max_pool(h),
                lambda h: F.max_pool2d(h, 2), [(b, s, s, f)])
        if i == 0:  # the other form, for the figure in benchmarks/README.md
            add(f"  max pool {i} as nn.max_pool ({s}^2 {f})",
                lambda p, h: nn.max_pool(h, (2, 2), strides=(2, 2)),
                lambda h: F.max_pool2d(h, 2), [(b, s, s, f)])
    s = size // 2**(gm.NUM_LEVELS - 1)

    def mid_fn(h):
        for k, rate in enumerate(funet.dilation_rates):
            h = gm.dilated_block(h, rate, f"mid_{k}_", False, **kw)
        return h

    def mid_torch(h):
        for block in tg.mid:
            h = F.leaky_relu(block(h), funet.leaky_slope)
        return h
    fn, p = flax_part(mid_fn, "mid_")
    add(f"dilated bottleneck ({s}^2 {widths[-1]})", fn, mid_torch, [(b, s, s, widths[-1])], p)
    for j in range(gm.NUM_LEVELS - 1):
        f = widths[gm.NUM_LEVELS - 1 - j]
        s = size // 2**(gm.NUM_LEVELS - 1 - j)
        up = j > 0
        fn, p = flax_part(lambda h, k, j=j, up=up: gm.decoder_block(
            gm.upsample2x(h, funet.upsample) if up else h, k,
            widths[gm.NUM_LEVELS - 2 - j], f"dec_{j}_", False, **kw), f"dec_{j}_")

        def dec_torch(h, k, j=j, up=up):
            h = gm_up_t(h) if up else h
            return F.leaky_relu(tg.dec[j](torch.cat([h, k], 1)), funet.leaky_slope)
        hs = s // 2 if up else s
        add(f"decoder {j} ({'up + ' if up else ''}{s}^2 {f}+{f} -> "
            f"{widths[gm.NUM_LEVELS - 2 - j]})", fn, dec_torch, [(b, hs, hs, f), (b, s, s, f)], p)
    last = gm.NUM_LEVELS - 1
    fn, p = flax_part(lambda h, k: gm.output_block(
        gm.upsample2x(h, funet.upsample), k, funet.out_channels, f"dec_{last}_", False,
        final_norm=funet.final_norm, **kw), f"dec_{last}_")
    add(f"output block (up + {size}^2 {widths[1]}+{widths[0]} -> 3)", fn,
        lambda h, k: torch.tanh(tg.dec[last](torch.cat([gm_up_t(h), k], 1))),
        [(b, size // 2, size // 2, widths[0]), (b, size, size, widths[0])], p)
    for s, f in ((size // 2, widths[0]), (size // 16, widths[-1])):
        add(f"upsample2x ({s}^2 {f})", lambda p, h: gm.upsample2x(h, funet.upsample),
            gm_up_t, [(b, s, s, f)])

    # Discriminator, train mode (one power iteration per call), on the 7-channel input.
    disc = create_model(names["discriminator"][0], **d_kwargs)
    d_vars = variables["discriminator"]
    td = torch_twin("discriminator").train()

    def d_fn(p, x):
        out, _ = disc.apply({**d_vars, "params": p}, x, True, mutable=["spectral"])
        return out
    add("SN discriminator (one call)", d_fn, td, [(b, size, size, 7)], d_vars["params"])

    # Losses on images.
    add("SSIM loss", lambda p, a, t: losses.ssim_loss(a, t),
        lambda a, t: 1.0 - _ssim_torch(torch, a, t), [(b, size, size, 3)] * 2)
    add("SmoothL1 loss", lambda p, a, t: losses.smooth_l1_loss(a, t),
        lambda a, t: F.smooth_l1_loss(a, t, beta=1.0), [(b, size, size, 3)] * 2)


def _masked_faces(np, b: int, size: int, seed: int):
    """(masked, target, mask) NHWC float32: a smooth random 'face' in [-1, 1], a mask over
    the lower part of each image (a band of random height), the masked pixels filled grey."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    target = np.empty((b, size, size, 3), np.float32)
    for i in range(b):
        f = rng.uniform(1, 4, (3, 2))
        ph = rng.uniform(0, 2 * np.pi, (3,))
        for c in range(3):
            target[i, ..., c] = 0.8 * np.sin(2 * np.pi * (f[c, 0] * yy + f[c, 1] * xx) + ph[c])
    target += rng.normal(0, 0.1, target.shape).astype(np.float32)
    target = np.clip(target, -1, 1)
    mask = np.zeros((b, size, size, 1), np.float32)
    for i in range(b):
        top = int(size * rng.uniform(0.45, 0.6))
        left, right = int(size * 0.2), int(size * 0.8)
        mask[i, top:int(size * 0.9), left:right] = 1.0
    masked = (target * (1.0 - mask) + 0.5 * mask).astype(np.float32)
    return masked, target, mask


def _ssim_torch(torch, a, b):
    """Mean SSIM of NCHW images in [-1, 1], the conventions of ``unmask_jax.losses.ssim``
    (dm_pix.ssim on [0, 1]: Gaussian 11 / 1.5, valid, K1 0.01, K2 0.03, variance clipping)."""
    import torch.nn.functional as F

    a, b = (a + 1.0) * 0.5, (b + 1.0) * 0.5
    n = 11
    g = torch.exp(-0.5 * ((torch.arange(n, dtype=a.dtype) - n // 2) / 1.5) ** 2)
    g = g / g.sum()
    c = a.shape[1]
    gx = g.view(1, 1, 1, n).repeat(c, 1, 1, 1)
    gy = g.view(1, 1, n, 1).repeat(c, 1, 1, 1)

    def filt(z):
        return F.conv2d(F.conv2d(z, gx, groups=c), gy, groups=c)

    mu0, mu1 = filt(a), filt(b)
    mu00, mu11, mu01 = mu0 * mu0, mu1 * mu1, mu0 * mu1
    eps = torch.finfo(torch.float32).eps ** 2
    s00 = torch.clamp(filt(a * a) - mu00, min=eps)
    s11 = torch.clamp(filt(b * b) - mu11, min=eps)
    s01 = filt(a * b) - mu01
    s01 = torch.sign(s01) * torch.minimum(torch.sqrt(s00 * s11), s01.abs())
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu01 + c1) * (2 * s01 + c2)) / ((mu00 + mu11 + c1) * (s00 + s11 + c2))
    return ssim_map.mean(dim=(1, 2, 3)).mean()


def _torch_step_fn(torch, G, D, masked, target, mask):
    """The stage-2 step by hand: twins in train mode, sequential G/D order, Adam 1e-3."""
    import torch.nn.functional as F

    G.train()
    D.train()
    opt_g = torch.optim.Adam(G.parameters(), lr=LR, betas=BETAS)
    opt_d = torch.optim.Adam(D.parameters(), lr=LR, betas=BETAS)
    g_in = torch.cat([masked, mask], 1)

    def step():
        raw = G(g_in)
        fake = raw * mask + masked * (1.0 - mask)  # MURF
        for p in D.parameters():
            p.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        pf = D(torch.cat([g_in, fake.detach()], 1))
        pr = D(torch.cat([g_in, target], 1))
        loss_d = D_SCALE * (torch.mean((pr - 1.0) ** 2) + torch.mean(pf ** 2))
        loss_d.backward()
        opt_d.step()
        for p in D.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        pf = D(torch.cat([g_in, fake], 1))
        loss_g = (torch.mean((pf - 1.0) ** 2)
                  + SMOOTH_L1_WEIGHT * F.smooth_l1_loss(fake, target, beta=1.0)
                  + SSIM_WEIGHT * (1.0 - _ssim_torch(torch, fake, target)))
        loss_g.backward()
        opt_g.step()
        return float(loss_d.detach()), float(loss_g.detach())

    return step


if __name__ == "__main__":
    sys.exit(main())
