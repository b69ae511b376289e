"""Which implementation a convolution layer runs, decided per backend platform.

:class:`~unmask_jax.models.layers.Conv` and :class:`~unmask_jax.models.layers.ConvTranspose`
take ``impl='auto'`` and ``split_batch=None`` by default. What those resolve to depends on
the platform the layer is traced for:

- ``'cpu'``: the forms measured fastest on XLA CPU (figures and the commands that measure
  them: ``benchmarks/README.md``): ``Conv``: im2col + one GEMM for spatially small outputs
  (:func:`cpu_conv_impl`), otherwise a convolution on an explicitly pre-padded input, run
  per batch chunk; ``ConvTranspose``: one GEMM + col2im for spatially small inputs,
  otherwise the sub-pixel convolution per batch chunk forward with the GEMM form's
  gradients (:func:`cpu_conv_transpose_impl`).
- any other platform (``'gpu'``, ``'tpu'``, ...): XLA's own ops,
  ``lax.conv_general_dilated`` and ``lax.conv_transpose``, on the whole batch. The CPU
  tuning was never measured there.

An explicit ``impl`` or ``split_batch`` is honoured on every platform. All forms give the
same numbers up to float rounding.

The platform is read at trace time: the one set with :func:`set_platform` /
:func:`use_platform`, else ``jax.default_backend()``. A jitted function keeps the
implementation it was traced with (the jit cache does not key on this setting), so set it
before the first trace. The choice is logged once per platform (logger
``unmask_jax.models.layers.dispatch``).

XLA CPU's convolution library is a per-program compiler option, so it is chosen per jitted
program: :func:`jit` compiles with :func:`compiler_options` and traces under
:func:`use_cpu_convolutions`. 'ynnpack' (XLA's default: YNNPACK runs convolutions, dots and
reductions) keeps the forms above; 'eigen' (Eigen runs the convolutions; YNNPACK keeps the
dots and reductions) makes a ``Conv``'s 'auto' XLA's own convolution on the whole batch
(:func:`cpu_conv_impl`), the form measured fastest with that library (``benchmarks/
README.md``). A system chooses with ``config.model.cpu_convolutions``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax

from unmask_jax.models.layers.chunking import batch_chunked
from unmask_jax.models.layers.common import Array

log = logging.getLogger(__name__)

AUTO = "auto"
_override: str | None = None
_announced: set[str] = set()

#: XLA CPU convolution libraries a program can be compiled for (see the module docstring).
CPU_CONVOLUTIONS = ("ynnpack", "eigen")
#: The 'eigen' program: YNNPACK fusions for dots and reductions only (XLA's default list
#: also has individual convolutions), so convolutions fall back to Eigen.
EIGEN_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
_cpu_convolutions = "ynnpack"


def set_platform(platform: str | None) -> None:
    """Trace layers for ``platform`` ('cpu', 'gpu', 'tpu', ...); 'auto' or None (default):
    ``jax.default_backend()``."""
    global _override
    _override = None if platform in (None, AUTO) else str(platform).lower()


@contextlib.contextmanager
def use_platform(platform: str | None) -> Iterator[None]:
    """:func:`set_platform` for the duration of a ``with`` block (restores the previous)."""
    previous = _override
    set_platform(platform)
    try:
        yield
    finally:
        set_platform(previous)


def platform() -> str:
    """The platform layers are traced for now (override, else ``jax.default_backend()``)."""
    return _override if _override is not None else jax.default_backend()


def cpu_tuned() -> bool:
    """Whether the CPU-measured forms apply (the platform is 'cpu'); logs the choice once."""
    p = platform()
    if p not in _announced:
        _announced.add(p)
        if p == "cpu":
            log.info("conv layers (platform cpu): impl='auto' runs im2col/col2im GEMMs for "
                     "spatially small layers, pre-padded convolutions per batch chunk and "
                     "sub-pixel transposed convolutions (with the GEMM form's gradients) "
                     "otherwise (CPU-measured forms)")
        else:
            log.info("conv layers (platform %s): impl='auto' runs lax.conv_general_dilated / "
                     "lax.conv_transpose on the whole batch (the GEMM forms and batch "
                     "chunking are CPU-only tuning)", p)
    return p == "cpu"


def check_cpu_convolutions(library: str) -> str:
    """``library`` if it is one of :data:`CPU_CONVOLUTIONS`, else a ValueError."""
    if library not in CPU_CONVOLUTIONS:
        raise ValueError(f"unknown CPU convolution library {library!r}; choose one of "
                         f"{CPU_CONVOLUTIONS} (config.model.cpu_convolutions)")
    return library


def cpu_convolutions() -> str:
    """The XLA CPU convolution library layers are traced for now ('ynnpack' unless inside
    :func:`use_cpu_convolutions`)."""
    return _cpu_convolutions


@contextlib.contextmanager
def use_cpu_convolutions(library: str) -> Iterator[None]:
    """Trace layers for a program compiled with ``library``'s :func:`compiler_options`
    for the duration of a ``with`` block (restores the previous)."""
    global _cpu_convolutions
    previous = _cpu_convolutions
    _cpu_convolutions = check_cpu_convolutions(library)
    try:
        yield
    finally:
        _cpu_convolutions = previous


@functools.lru_cache(maxsize=None)
def _compiler_takes(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's XLA compiles a program with ``options`` (the flag is XLA's,
    experimental, and may be renamed in later versions)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
            jax.ShapeDtypeStruct((2,), "float32")).compile()
    except Exception as e:  # noqa: BLE001 - XLA raises its own error types here
        log.warning("XLA CPU does not take %s (%s): convolutions stay on XLA's default "
                    "library (YNNPACK) and the 'ynnpack' forms", dict(options),
                    str(e).splitlines()[0])
        return False
    return True


def compiler_options(library: str, platform: str | None = None) -> dict[str, str]:
    """XLA compiler options for a program run with ``library`` on ``platform`` (default
    ``jax.default_backend()``): empty for 'ynnpack' and off the CPU."""
    check_cpu_convolutions(library)
    if library == "ynnpack" or (platform or jax.default_backend()) != "cpu":
        return {}
    options = tuple(EIGEN_COMPILER_OPTIONS.items())
    return dict(options) if _compiler_takes(options) else {}


def jit(fn: Callable[..., Any], cpu_convolutions: str = "ynnpack", *,
        platform: str | None = None, **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **jit_kwargs)`` traced and compiled for ``platform`` (default
    ``jax.default_backend()``): the platform of the devices the program is compiled for,
    which differs from the host's when compiling ahead of time (a TPU program compiled on a
    CPU machine). The layers are traced under :func:`use_platform` (no CPU form reaches an
    accelerator program) and, on the CPU, for ``cpu_convolutions`` (its
    :func:`compiler_options`, traced under :func:`use_cpu_convolutions`, so that the layers'
    forms match the library that runs them). Off the CPU no CPU compiler option is passed.

    The returned function calls the program; its ``lower(*args)`` lowers it under the same
    settings (``.compile()`` then compiles it), e.g. for abstract arguments on
    compile-only devices."""
    target = (platform or jax.default_backend()).lower()
    options = compiler_options(cpu_convolutions, target)
    library = cpu_convolutions if options else "ynnpack"
    if library == "eigen" and "convolutions:eigen" not in _announced:
        _announced.add("convolutions:eigen")
        log.info("XLA CPU programs of this system: Eigen runs the convolutions (YNNPACK the "
                 "dots and reductions); Conv impl='auto' is XLA's own convolution")
    jitted = jax.jit(fn, compiler_options=options or None, **jit_kwargs)

    @contextlib.contextmanager
    def traced_for_target() -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if platform is not None:
                stack.enter_context(use_platform(target))
            stack.enter_context(use_cpu_convolutions(library))
            yield

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with traced_for_target():
            return jitted(*args, **kwargs)

    def lower(*args: Any, **kwargs: Any) -> Any:
        with traced_for_target():
            return jitted.lower(*args, **kwargs)

    call.jitted = jitted  # type: ignore[attr-defined]
    call.lower = lower  # type: ignore[attr-defined]
    call.cpu_convolutions = library  # type: ignore[attr-defined]
    call.platform = target  # type: ignore[attr-defined]
    return call


def cpu_conv_impl(out_pixels: int, gemm_max_pixels: int) -> str:
    """The CPU form of a ``Conv``. In an 'eigen' program (:func:`use_cpu_convolutions`):
    'xla', XLA's own convolution on the whole batch. Otherwise (YNNPACK): 'gemm' for
    spatially small outputs (at most ``gemm_max_pixels`` per image), else 'conv'.

    Not chosen here: 'conv/conv:winograd' (the Winograd form's kernel gradient). It makes
    a lone 3x3 layer's forward + backward 25-45% faster at batch 4, but GANMasker's FU-Net
    and its stage-2 train step were no faster with it (``benchmarks/README.md``)."""
    if _cpu_convolutions == "eigen":
        return "xla"
    return "gemm" if out_pixels <= gemm_max_pixels else "conv"


#: Transposed convolutions with at most this many output channels (an image-producing last
#: layer) run the GEMM form on CPU at any size: forward and backward both faster there
#: (128^2x128 -> 3 at batch 4: forward 5 vs 17 ms; ``benchmarks/conv_forms.py --cases
#: transpose``).
CPU_GEMM_MAX_OUT_FEATURES = 8


def cpu_conv_transpose_impl(in_pixels: int, out_features: int, gemm_max_pixels: int) -> str:
    """The CPU form of a ``ConvTranspose``: 'gemm' (GEMM + col2im) for inputs of at most
    ``gemm_max_pixels`` pixels per image or few output channels, else 'subpixel/gemm': the
    sub-pixel convolution forward (faster forward), the GEMM form's gradients (faster
    backward)."""
    if in_pixels <= gemm_max_pixels or out_features <= CPU_GEMM_MAX_OUT_FEATURES:
        return "gemm"
    return "subpixel/gemm"


def forward_with_grads_of(forward: Callable[..., Array], grads_of: Callable[..., Array],
                          x: Array, kernel: Array, static: tuple[Any, ...],
                          kernel_grads_of: Callable[..., Array] | None = None) -> Array:
    """``forward(x, kernel, *static)``, differentiated as ``grads_of`` (the same function of
    x and kernel in another form): each form where XLA runs it fastest. With
    ``kernel_grads_of``, only the input gradient is ``grads_of``'s and the kernel gradient
    is ``kernel_grads_of``'s."""

    @jax.custom_vjp
    def f(x: Array, kernel: Array) -> Array:
        return forward(x, kernel, *static)

    def f_fwd(x: Array, kernel: Array):
        return forward(x, kernel, *static), (x, kernel)

    def f_bwd(res, g: Array):
        x, kernel = res
        if kernel_grads_of is None:
            _, vjp = jax.vjp(lambda a, k: grads_of(a, k, *static), x, kernel)
            return vjp(g)
        _, x_vjp = jax.vjp(lambda a: grads_of(a, kernel, *static), x)
        _, k_vjp = jax.vjp(lambda k: kernel_grads_of(x, k, *static), kernel)
        return x_vjp(g)[0], k_vjp(g)[0]

    f.defvjp(f_fwd, f_bwd)
    return f(x, kernel)


def split_batch(setting: bool | None) -> bool:
    """A module's ``split_batch``: None = on the CPU platform only."""
    return cpu_tuned() if setting is None else bool(setting)


def run_impl(module: nn.Module, fns: dict[str, Callable[..., Array]], impl: str,
             chunked_impl: str, x: Array, args: tuple[Any, ...]) -> Array:
    """``fns[impl](x, *args)`` in the module's compute dtype; ``chunked_impl`` runs per batch
    chunk when the module's ``split_batch`` says so (see :func:`batch_chunked`).

    ``impl`` may mix forms: 'FORWARD/GRADS' (e.g. 'subpixel/gemm'): ``fns[FORWARD]``
    computes the output, the gradients with respect to ``x`` and ``args[0]`` (the kernel)
    are those of ``fns[GRADS]``; 'FORWARD/X_GRADS:KERNEL_GRADS' (e.g. 'conv/conv:winograd')
    takes the input and the kernel gradients from two forms. The other args are static.
    """
    forward, _, grads = impl.partition("/")
    x_grads, _, kernel_grads = grads.partition(":")
    names = [name for name in (forward, x_grads, kernel_grads) if name]
    if any(name not in fns for name in names) or (kernel_grads and not x_grads):
        raise ValueError(f"unknown {type(module).__name__} impl {module.impl!r}; choose from "
                         f"{sorted(fns) + [AUTO]}, 'FORWARD/GRADS' or "
                         f"'FORWARD/X_GRADS:KERNEL_GRADS' of them")
    x = x.astype(module.dtype)
    chunked = split_batch(module.split_batch)

    def form(name: str) -> Callable[..., Array]:
        if name == chunked_impl and chunked:
            return functools.partial(batch_chunked, fns[name])
        return fns[name]

    if not grads or (x_grads == forward and kernel_grads in ("", forward)):
        return form(forward)(x, *args)
    return forward_with_grads_of(form(forward), form(x_grads), x, args[0], tuple(args[1:]),
                                 form(kernel_grads) if kernel_grads else None)
