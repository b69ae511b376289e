"""Which CPU forms still pay: each form of ``unmask_jax/backends/cpu.py`` switched off alone,
timed against the full rule (twice, for the A/A noise band) and against no forms, on the
CPU workloads users feel (predict and two-stage inference, the pix2pix train step at
batch 4).

Every variant's programs are compiled in this one process (the provider is swapped while a
program is traced), then timed round-robin, rotating the order each round, so that every
variant sees the same machine. A form whose gain (time without it / time with the full rule
- 1) is inside the A/A band of its workload does not measurably help there.

Workloads (256x256, random weights, the configs' widths):

* ``pix2pix G b1`` / ``pix2pix G b8``: the U-Net generator's eval forward (ms per call);
* ``pix2pix train b4``: the system's train step (sequential G/D order, as the PyTorch
  comparison runs it), state donated (ms per step);
* ``ganmasker two-stage b8``: ``GANMaskerSystem.predict(mask_source="segmenter")``, M-Seg +
  FU-Net + composite, compiled for the system's XLA CPU library (Eigen) (ms per call).

Forms (``-name`` = the full rule without it):

* ``conv_gemm``: im2col + GEMM convolutions on maps of at most 256 output pixels;
* ``conv_prepadded``: pre-padded, batch-chunked convolutions elsewhere (YNNPACK programs);
* ``convt_gemm``: GEMM + col2im transposed convolutions (small inputs, RGB last layers);
* ``convt_subpixel``: sub-pixel transposed convolutions (forward) with the GEMM gradients.

``ganmasker train b4`` (``--workloads``): the GANMasker stage-2 step (SSIM and SmoothL1 on
the composite, the SN discriminator; the perceptual term at weight 0).

Two forms this script measured inside the A/A band everywhere were removed after it ran
(the 2x2 max pool as reshape + max with select gradients, and SSIM's Gaussian blur as
shifted slices; both at commit 91017c9, figures in ``benchmarks/README.md``).

``off`` is ``model.backend_forms=off`` (plain ops and XLA's default library everywhere).
A variant that changes nothing in a workload (the convolution forms in GANMasker's Eigen
programs) is not compiled for it.

Usage::

    python benchmarks/cpu_forms_ablation.py --rounds 5 --iters 3 --json cpu_forms.json
    python benchmarks/cpu_forms_ablation.py --size 64 --rounds 1 --iters 1   # smoke
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMS = ("conv_gemm", "conv_prepadded", "convt_gemm", "convt_subpixel")
#: Which forms can change each workload's program.
APPLIES = {
    "pix2pix G b1": ("conv_gemm", "conv_prepadded", "convt_gemm", "convt_subpixel"),
    "pix2pix G b8": ("conv_gemm", "conv_prepadded", "convt_gemm", "convt_subpixel"),
    "pix2pix train b4": ("conv_gemm", "conv_prepadded", "convt_gemm", "convt_subpixel"),
    "ganmasker two-stage b8": ("convt_gemm", "convt_subpixel"),
    # Not among the workloads the rule keeps forms for: GANMasker's CPU training.
    "ganmasker train b4": ("convt_gemm", "convt_subpixel"),
}
#: Workloads run unless --workloads names others.
DEFAULT_WORKLOADS = ("pix2pix G b1", "pix2pix G b8", "pix2pix train b4",
                     "ganmasker two-stage b8")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="round-robin rounds")
    p.add_argument("--iters", type=int, default=3, help="timed calls per variant per round "
                   "(the median is kept)")
    p.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                   help="comma-separated, from: " + ", ".join(APPLIES))
    p.add_argument("--json", default="", help="also write the results here")
    return p.parse_args(argv)


def ablated_provider(library: str, disabled: frozenset[str]):
    """``cpu.CpuForms`` for ``library`` with the ``disabled`` forms run plain."""
    from unmask_jax.backends import cpu, cpu_forms as f

    class Ablated(cpu.CpuForms):
        name = "cpu-" + ",".join(sorted(disabled))

        def conv2d(self, plain, x, kernel, strides, padding, dilation):
            if self.library == "ynnpack":
                small = cpu._out_pixels(x.shape, kernel.shape[:2], strides, padding,
                                        dilation) <= cpu.GEMM_MAX_PIXELS
                if ("conv_gemm" if small else "conv_prepadded") in disabled:
                    return plain(x, kernel, strides, padding, dilation)
            return super().conv2d(plain, x, kernel, strides, padding, dilation)

        def conv_transpose(self, plain, x, kernel, strides, padding, output_padding):
            gemm = (x.shape[1] * x.shape[2] <= cpu.GEMM_MAX_PIXELS
                    or kernel.shape[2] <= cpu.GEMM_MAX_OUT_FEATURES)
            if ("convt_gemm" if gemm else "convt_subpixel") in disabled:
                return plain(x, kernel, strides, padding, output_padding)
            return super().conv_transpose(plain, x, kernel, strides, padding, output_padding)

    del f
    return Ablated(library)


@contextlib.contextmanager
def traced_with(variant: str):
    """Layers traced inside the block get ``variant``'s forms (``auto``, ``auto2``, ``off``
    or ``-form``)."""
    from unmask_jax import backends
    from unmask_jax.backends import cpu
    if variant == "off":
        with backends.use("cpu", "off"):
            yield "off"
        return
    disabled = frozenset({variant[1:]} if variant.startswith("-") else ())
    original = cpu.forms
    cpu.forms = functools.lru_cache(maxsize=None)(
        lambda library: ablated_provider(library, disabled))
    try:
        yield variant
    finally:
        cpu.forms = original


def _train_step_call(config, variant: str, state0, batch, tx):
    """The system's own train step (state donated, ``tx`` for every network) compiled under
    ``variant`` by its first call; returns the zero-argument timed call."""
    import jax
    import jax.numpy as jnp

    from unmask_jax import systems
    system = systems.build(config)
    frozen = system.load_frozen()
    holder = {"state": jax.tree.map(jnp.array, state0)}
    with traced_with(variant):
        step = system.jit(functools.partial(system.train_step,
                                            txs={n: tx for n in state0.nets}),
                          donate_argnums=(0,))

        def call():
            holder["state"], metrics = step(holder["state"], batch, frozen)
            jax.block_until_ready(metrics)
        call()
    return call


def build_workloads(size: int, names: list[str]):
    """{name: (make(variant) -> zero-argument timed call)}; each make compiles (first call)
    under its variant."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from configs import default, ganmasker, pix2pix
    from unmask_jax import backends, systems
    from unmask_jax.models import create_model
    from unmask_jax.state import NetState, TrainState

    num_downs = int(round(np.log2(size)))
    rng = np.random.default_rng(0)
    out = {}

    G = create_model("pix2pix_unet", num_downs=num_downs)
    D = create_model("patchgan")
    g_vars = jax.jit(lambda x: G.init(jax.random.key(0), x, False))(jnp.zeros((1, size, size, 3)))
    d_vars = jax.jit(lambda x: D.init(jax.random.key(1), x, False))(jnp.zeros((1, size, size, 6)))

    def g_infer(b):
        x = jnp.asarray(rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32))

        def make(variant):
            with traced_with(variant):
                fn = backends.jit(lambda v, x: G.apply(v, x, False), platform="cpu",
                                  forms="off" if variant == "off" else "auto")
                jax.block_until_ready(fn(g_vars, x))
            return lambda: jax.block_until_ready(fn(g_vars, x))
        return make

    for b in (1, 8):
        if f"pix2pix G b{b}" in names:
            out[f"pix2pix G b{b}"] = g_infer(b)

    if "pix2pix train b4" in names:
        tx = optax.adam(2e-4, b1=0.5, b2=0.999)
        b = 4
        a = jnp.asarray(rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32))
        y = jnp.asarray(rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32))
        batch = {"masked": a, "target": y, "mask": jnp.ones((b, size, size, 1))}
        state0 = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0), nets={
            n: NetState(v["params"], {"batch_stats": v["batch_stats"]}, tx.init(v["params"]))
            for n, v in (("generator", g_vars), ("discriminator", d_vars))})

        # (Bound here: the later workloads reuse these names.)
        def make_train(variant, state0=state0, batch=batch, tx=tx):
            cfg = pix2pix.family(default.get_config())
            cfg.model.generator, cfg.model.generator_kwargs = "pix2pix_unet", {
                "num_downs": num_downs}
            cfg.model.discriminator, cfg.model.discriminator_kwargs = "patchgan", {}
            cfg.loss.d_scale = 0.5
            cfg.loss.update_order = "sequential"
            cfg.model.backend_forms = "off" if variant == "off" else "auto"
            return _train_step_call(cfg, variant, state0, batch, tx)
        out["pix2pix train b4"] = make_train

    if "ganmasker two-stage b8" in names:
        cfg = ganmasker.get_config("unmask")
        cfg.data.resolution = size
        base = systems.build(cfg)
        variables = jax.jit(base.init_variables, static_argnums=1)(jax.random.key(0), size)
        m = cfg.model
        mseg = create_model(m.segmenter, **dict(m.segmenter_kwargs))
        seg_vars = jax.jit(lambda x: mseg.init(jax.random.key(1), x, False))(
            jnp.zeros((1, size, size, 3)))
        g = variables["generator"]
        inf_state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0), nets={
            "generator": NetState(g["params"], {k: c for k, c in g.items() if k != "params"},
                                  None)})
        x = jnp.asarray(rng.uniform(-1, 1, (8, size, size, 3)).astype(np.float32))
        frozen = {"segmenter": seg_vars}

        def make_two_stage(variant):
            c = cfg.copy_and_resolve_references()
            c.model.backend_forms = "off" if variant == "off" else "auto"
            system = systems.build(c)
            system._segmenter = mseg  # what _load_segmenter sets from a stage-1 run
            with traced_with(variant):
                predict = system.jit(functools.partial(system.predict,
                                                       mask_source="segmenter"))
                jax.block_until_ready(predict(inf_state, {"masked": x}, frozen))
            return lambda: jax.block_until_ready(predict(inf_state, {"masked": x}, frozen))
        out["ganmasker two-stage b8"] = make_two_stage

    if "ganmasker train b4" in names:
        cfg_t = ganmasker.get_config("unmask")
        cfg_t.data.resolution = size
        cfg_t.loss.terms.perceptual.weight = 0.0
        tx = optax.adam(1e-3, b1=0.5, b2=0.999)
        base_t = systems.build(cfg_t)
        vt = jax.jit(base_t.init_variables, static_argnums=1)(jax.random.key(0), size)
        state0 = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0), nets={
            n: NetState(v["params"], {k: c for k, c in v.items() if k != "params"},
                        tx.init(v["params"])) for n, v in vt.items()})
        b = 4
        target = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
        mask = np.zeros((b, size, size, 1), np.float32)
        mask[:, size // 2:] = 1.0
        batch = {"masked": jnp.asarray(target * (1 - mask)), "target": jnp.asarray(target),
                 "mask": jnp.asarray(mask)}

        def make_gm_train(variant, state0=state0, batch=batch, tx=tx):
            c = cfg_t.copy_and_resolve_references()
            c.model.backend_forms = "off" if variant == "off" else "auto"
            return _train_step_call(c, variant, state0, batch, tx)
        out["ganmasker train b4"] = make_gm_train
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n for n in args.workloads.split(",") if n]
    unknown = set(names) - set(APPLIES)
    if unknown:
        raise SystemExit(f"--workloads: unknown {sorted(unknown)}; choose from {list(APPLIES)}")
    import jax

    workloads = build_workloads(args.size, names)
    load_start = os.getloadavg()
    results = {}
    for name in names:
        variants = ["auto", "auto2", "off"] + [f"-{f}" for f in APPLIES[name]]
        calls = {}
        for v in variants:
            t0 = time.perf_counter()
            calls[v] = workloads[name](v)
            print(f"{name} [{v}]: compiled + first call {time.perf_counter() - t0:.1f} s",
                  flush=True)
        times = {v: [] for v in variants}
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                ts = []
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    calls[v]()
                    ts.append(time.perf_counter() - t0)
                times[v].append(statistics.median(ts))
        med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
        band = abs(med["auto2"] / med["auto"] - 1)
        results[name] = {"ms": med, "rounds_ms": {v: [x * 1e3 for x in t]
                                                  for v, t in times.items()},
                         "aa_band": band}
        print(f"\n{name}: A/A band {band:.1%}")
        for v in variants:
            gain = med[v] / med["auto"] - 1
            verdict = "" if v in ("auto", "auto2") else (
                "  (form helps)" if v.startswith("-") and gain > band else
                "  (inside the band)" if v.startswith("-") else "")
            print(f"  {v:16s} {med[v]:9.1f} ms  {gain:+7.1%}{verdict}", flush=True)
        del calls
    load_end = os.getloadavg()
    print(f"\njax {jax.__version__}, {os.cpu_count()} cores, load {load_start[0]:.2f} -> "
          f"{load_end[0]:.2f}, {args.rounds} rounds x {args.iters} calls")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"results": results, "size": args.size, "rounds": args.rounds,
             "iters": args.iters, "load": [load_start, load_end],
             "jax": jax.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
