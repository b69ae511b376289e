"""The XLA CPU measurements behind the CPU convolution forms (``unmask_jax.backends``).

The forms are in ``unmask_jax.backends.cpu_forms``; the CPU rule that picks them
(``model.backend_forms=auto``) is ``unmask_jax.backends.cpu.CpuForms``. One case per claim:

- ``padding``: kernel gradient of a convolution with the padding built in
  (``conv2d_xla``) vs the same on an explicitly pre-padded input (``conv2d``), for the
  2x2 stride-1 convolution inside a 64x64x128 sub-pixel transposed convolution.
- ``weight_layout``: the GEMM form of an 8x8x1024 -> 512 k4 s2 transposed convolution
  (``conv_transpose_gemm``, 32 MB kernel), forward and forward + backward, with its GEMM
  left to autodiff (plain ``jnp.dot``, which may copy the weight into another layout) vs
  ``weight_matmul`` (the weight read in its stored layout only).
- ``batch``: forward + backward of a 128x128x64 -> 128 k4 s2 p1 convolution at batch 1 and
  4, whole batch vs per-image chunks (``batch_chunked``), against PyTorch.
- ``transpose``: the pix2pix U-Net's large transposed convolutions (k4 s2 p1) at
  ``--batch`` (default 4), forward and forward + backward, in the sub-pixel form per batch
  chunk, the GEMM + col2im form, and the sub-pixel forward with the GEMM form's gradients
  (``forward_with_grads_of``: what a large ``ConvTranspose`` runs on CPU), against PyTorch.
- ``library``: XLA CPU's convolution library (``System.cpu_library``; 'eigen' for
  GANMasker). A 3x3 stride-1 ``Conv`` at GANMasker's sizes, at ``--batch``: forward, input
  gradient and kernel gradient separately, each its own program: compiled for YNNPACK
  (XLA's default) with the CPU rule's form, for Eigen with its form (XLA's own convolution
  on the whole batch; ``unmask_jax.backends.jit(fn, cpu_library='eigen')``), and PyTorch
  (``conv2d``, ``torch.nn.grad.conv2d_input`` / ``conv2d_weight``). Then GANMasker's FU-Net
  and SN discriminator forward + backward (gradients of the parameters) both ways.
  Each pair runs twice in swapped order (A, B, B, A), as the order alone moves times by
  ~10% on a shared machine.

    python benchmarks/conv_forms.py [--cases padding,weight_layout,batch,transpose,library] \
        [--threads 2] [--batch 4]

(The ``winograd`` case, and the Winograd form it measured, are gone since the backend
seam: ``git show a1de79c:benchmarks/conv_forms.py``.)

Median wall times over ``--iters`` calls after a warm-up (see compare_torch.py). The
per-layer comparison of every form with PyTorch is ``compare_torch.py --breakdown``.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_torch  # noqa: E402  (timing helpers)

CASES = ("padding", "weight_layout", "batch", "transpose", "library")
#: The libraries the 'library' case compares (A, B, B, A).
LIBRARIES = ("ynnpack", "eigen")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=4,
                   help="batch of the 'transpose' and 'library' cases")
    compare_torch.add_allocator_flag(p)
    args = p.parse_args(argv)
    threads = compare_torch.limit_threads(args.threads)
    allocator = compare_torch.configure_allocator(args.host_allocator)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from unmask_jax.backends import cpu_forms
    from unmask_jax.models.layers import conv2d_xla

    rng = np.random.default_rng(0)
    ms = lambda t: f"{t[0] * 1e3:8.1f} ms"  # noqa: E731

    def timed(*fns):
        return compare_torch.interleaved_times(list(fns), args.iters, args.rounds)

    print(f"{jax.default_backend()}, {threads} threads, jax {jax.__version__}, load "
          f"{os.getloadavg()[0]:.1f}; {allocator}")
    cases = [c for c in args.cases.split(",") if c]
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; choose from {CASES}")
    if "padding" in cases:
        x = jnp.asarray(rng.standard_normal((1, 64, 64, 128)), jnp.float32)
        k = jnp.asarray(0.02 * rng.standard_normal((2, 2, 128, 256)), jnp.float32)
        grads = {name: jax.jit(jax.grad(
            lambda k, f=f: jnp.sum(jnp.square(f(x, k, 1, 1)))))
            for name, f in (("built-in padding", conv2d_xla),
                            ("pre-padded", cpu_forms.conv2d))}
        times = timed(*[lambda g=g: jax.block_until_ready(g(k)) for g in grads.values()])
        for name, t in zip(grads, times):
            print(f"padding: 2x2 conv 64x64x128 -> 256 kernel gradient, {name:>16}: {ms(t)}")
    if "weight_layout" in cases:
        def plain_matmul(a, w, w_transposed=False):
            return jnp.dot(a, w.T) if w_transposed else jnp.dot(a, w)

        x = jnp.asarray(rng.standard_normal((1, 8, 8, 1024)), jnp.float32)
        k = jnp.asarray(0.02 * rng.standard_normal((4, 4, 512, 1024)), jnp.float32)
        fns = {}
        for name, matmul in (("plain jnp.dot", plain_matmul),
                             ("weight_matmul", cpu_forms.weight_matmul)):
            weight_matmul = cpu_forms.weight_matmul
            cpu_forms.weight_matmul = matmul             # read at trace time, below
            try:
                fwd = jax.jit(lambda x, k: cpu_forms.conv_transpose_gemm(x, k, 2, 1))
                fb = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.square(
                    cpu_forms.conv_transpose_gemm(x, k, 2, 1))), argnums=(0, 1)))
                jax.block_until_ready((fwd(x, k), fb(x, k)))   # trace while patched
            finally:
                cpu_forms.weight_matmul = weight_matmul
            fns[f"{name}, forward"] = lambda f=fwd: jax.block_until_ready(f(x, k))
            fns[f"{name}, f+b"] = lambda f=fb: jax.block_until_ready(f(x, k))
        for name, t in zip(fns, timed(*fns.values())):
            print(f"weight_layout: 8x8x1024 -> 512 convT (GEMM form) {name:>24}: {ms(t)}")
    if "batch" in cases:
        import torch

        torch.set_num_threads(threads)
        k = (0.02 * rng.standard_normal((4, 4, 64, 128))).astype(np.float32)
        for b in (1, 4):
            x = rng.standard_normal((b, 128, 128, 64)).astype(np.float32)
            xj, kj = jnp.asarray(x), jnp.asarray(k)

            def loss(x, k, chunked):
                fn = ((lambda x, k: cpu_forms.batch_chunked(cpu_forms.conv2d, x, k, 2, 1))
                      if chunked else (lambda x, k: cpu_forms.conv2d(x, k, 2, 1)))
                return jnp.sum(jnp.square(fn(x, k)))

            whole = jax.jit(jax.grad(lambda x, k: loss(x, k, False), argnums=(0, 1)))
            chunks = jax.jit(jax.grad(lambda x, k: loss(x, k, True), argnums=(0, 1)))
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
            wt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).requires_grad_()

            def tstep():
                torch.nn.functional.conv2d(xt, wt, stride=2, padding=1).square().sum(
                ).backward()

            times = timed(lambda: jax.block_until_ready(whole(xj, kj)),
                          lambda: jax.block_until_ready(chunks(xj, kj)), tstep)
            for name, t in zip(("JAX whole batch", "JAX per image", "PyTorch"), times):
                print(f"batch: 128x128x64 -> 128 k4 s2 f+b, batch {b}, {name:>15}: {ms(t)}")
    if "transpose" in cases:
        import functools

        import torch

        torch.set_num_threads(threads)
        b = args.batch
        chunked = functools.partial(cpu_forms.batch_chunked, cpu_forms.conv_transpose_subpixel)
        forms = {
            "sub-pixel per chunk": lambda x, k: chunked(x, k, 2, 1),
            "GEMM + col2im": lambda x, k: cpu_forms.conv_transpose_gemm(x, k, 2, 1),
            "subpixel/gemm": lambda x, k: cpu_forms.forward_with_grads_of(
                chunked, cpu_forms.conv_transpose_gemm, x, k, (2, 1)),
        }
        for hi, cin, cout in ((128, 128, 3), (64, 256, 64), (32, 512, 128)):
            x = rng.standard_normal((b, hi, hi, cin)).astype(np.float32)
            k = (0.02 * rng.standard_normal((4, 4, cout, cin))).astype(np.float32)
            xj, kj = jnp.asarray(x), jnp.asarray(k)
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
            wt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).requires_grad_()

            def tfwd():
                with torch.no_grad():
                    torch.nn.functional.conv_transpose2d(xt, wt, stride=2, padding=1)

            def tfb():
                xt.grad = wt.grad = None
                torch.nn.functional.conv_transpose2d(xt, wt, stride=2, padding=1).square(
                ).sum().backward()

            fns = {"PyTorch": (tfwd, tfb)}
            for name, f in forms.items():
                fwd = jax.jit(f)
                fb = jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(jnp.square(f(x, k))),
                                      argnums=(0, 1)))
                fns[name] = (lambda fwd=fwd: jax.block_until_ready(fwd(xj, kj)),
                             lambda fb=fb: jax.block_until_ready(fb(xj, kj)))
            times = timed(*[fn for pair in fns.values() for fn in pair])
            for i, name in enumerate(fns):
                print(f"transpose: {hi}^2x{cin} -> {cout} convT, batch {b}, {name:>19}: "
                      f"forward {ms(times[2 * i])}, f+b {ms(times[2 * i + 1])}")
    if "library" in cases:
        _library_case(args, threads, timed, ms, rng)
    return 0


def _library_case(args, threads, timed, ms, rng) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from configs import ganmasker
    from unmask_jax.models import create_model
    from unmask_jax import backends
    from unmask_jax.models.layers import Conv

    torch.set_num_threads(threads)
    b = args.batch
    libraries = LIBRARIES
    for hi, c in ((256, 32), (128, 64), (64, 128), (32, 256), (16, 512)):
        x = jnp.asarray(rng.standard_normal((b, hi, hi, c)), jnp.float32)
        g = jnp.asarray(rng.standard_normal((b, hi, hi, c)), jnp.float32)
        layer = Conv(c, 3, 1, 1, use_bias=False)
        v = layer.init(jax.random.key(0), x)
        parts = {
            "forward": lambda v, x, g: layer.apply(v, x),
            "input gradient": lambda v, x, g: jax.vjp(lambda a: layer.apply(v, a), x)[1](g)[0],
            "kernel gradient": lambda v, x, g: jax.vjp(
                lambda p: layer.apply({"params": p}, x), v["params"])[1](g)[0],
        }
        xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
        gt = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())
        kt = torch.from_numpy(np.asarray(v["params"]["kernel"]).transpose(3, 2, 0, 1).copy())
        torch_parts = {
            "forward": lambda: torch.nn.functional.conv2d(xt, kt, padding=1),
            "input gradient": lambda: torch.nn.grad.conv2d_input(xt.shape, kt, gt, padding=1),
            "kernel gradient": lambda: torch.nn.grad.conv2d_weight(xt, kt.shape, gt, padding=1),
        }
        for name, fn in parts.items():
            fns = []
            for library in libraries:
                f = backends.jit(fn, cpu_library=library)
                jax.block_until_ready(f(v, x, g))
                fns.append(lambda f=f: jax.block_until_ready(f(v, x, g)))
            t = timed(fns[0], fns[1], fns[1], fns[0], torch_parts[name])
            print(f"library: {hi}^2x{c} -> {c} 3x3 conv {name}, batch {b}: YNNPACK "
                  f"{ms(t[0])} / {ms(t[3])}, Eigen {ms(t[1])} / {ms(t[2])}, "
                  f"PyTorch {ms(t[4])}")
    cfg = ganmasker.get_config("unmask")
    for net, cin in ((cfg.model.generator, 4), (cfg.model.discriminator, 7)):
        kwargs = dict(cfg.model.generator_kwargs if net == cfg.model.generator
                      else cfg.model.discriminator_kwargs)
        module = create_model(net, **kwargs)
        x = jnp.asarray(rng.uniform(-1, 1, (b, 256, 256, cin)), jnp.float32)
        variables = jax.jit(lambda x, m=module: m.init(jax.random.key(0), x, False))(x[:1])

        def loss(p, x, m=module, variables=variables):
            y, _ = m.apply({**variables, "params": p}, x, True, mutable=True)
            return jnp.sum(jnp.square(y))

        fns = []
        for library in libraries:
            f = backends.jit(jax.grad(loss), cpu_library=library)
            jax.block_until_ready(f(variables["params"], x))
            fns.append(lambda f=f: jax.block_until_ready(f(variables["params"], x)))
        t = timed(fns[0], fns[1], fns[1], fns[0])
        print(f"library: {net} (ganmasker.py:unmask) f+b, batch {b}: YNNPACK "
              f"{ms(t[0])} / {ms(t[3])}, Eigen {ms(t[1])} / {ms(t[2])}")


if __name__ == "__main__":
    raise SystemExit(main())
