"""XLA CPU: which form each layer runs (:class:`CpuForms`), and the XLA options a CPU
program is compiled with. The forms themselves: :mod:`unmask_jax.backends.cpu_forms`; the
measurements behind every choice: ``benchmarks/README.md``.

Rules (``library`` is the XLA CPU library the program is compiled for):

- ``Conv``: with ``ynnpack``, im2col + one GEMM when the output has at most
  :data:`GEMM_MAX_PIXELS` pixels per image (the U-Nets' small inner blocks, where the
  GEMM's gradients are faster), else a convolution on an explicitly pre-padded input, run
  per batch chunk; with ``eigen`` or ``no_ynnpack``, XLA's own convolution on the whole
  batch (the form measured fastest with Eigen's convolutions).
- ``ConvTranspose``: GEMM + col2im for inputs of at most :data:`GEMM_MAX_PIXELS` pixels or
  at most :data:`GEMM_MAX_OUT_FEATURES` output channels (an RGB last layer), else the
  sub-pixel convolution forward (per batch chunk) with the GEMM form's gradients.

Libraries (a per-program compiler option, so chosen per jitted program): ``ynnpack``
(XLA's default: YNNPACK runs convolutions, dots and reductions), ``eigen`` (YNNPACK keeps
the dots and reductions, Eigen runs the convolutions), ``no_ynnpack`` (no YNNPACK fusion:
the MMOD face detector's 3 -> 16..45-channel 5x5 and 9x9 convolutions run 2-2.6x faster).
An option this jaxlib refuses is dropped with a warning, never silently.
"""
from __future__ import annotations

import functools
import logging
import math

import jax

from unmask_jax.backends import cpu_forms as f

log = logging.getLogger(__name__)

#: Conv / ConvTranspose: GEMM forms up to this many pixels per image (output for a
#: convolution, input for a transposed one).
GEMM_MAX_PIXELS = 256
#: Transposed convolutions with at most this many output channels (an image-producing last
#: layer) run the GEMM form at any size: forward and backward both faster there (128^2x128 ->
#: 3 at batch 4: forward 5 vs 17 ms).
GEMM_MAX_OUT_FEATURES = 8

#: XLA options per library ('ynnpack' is XLA's default: no option).
LIBRARY_OPTIONS = {
    "ynnpack": {},
    "eigen": {"xla_cpu_experimental_ynn_fusion_type":
              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
    "no_ynnpack": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


@functools.lru_cache(maxsize=None)
def _compiler_takes(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's XLA compiles a program with ``options`` (the flag is XLA's,
    experimental, and may be renamed in later versions)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
            jax.ShapeDtypeStruct((2,), "float32")).compile()
    except Exception as e:  # noqa: BLE001 - XLA raises its own error types here
        log.warning("XLA CPU does not take %s (%s): programs stay on XLA's default library "
                    "(YNNPACK)", dict(options), str(e).splitlines()[0])
        return False
    return True


def compiler_options(library: str) -> dict[str, str]:
    """The XLA options of a CPU program compiled for ``library`` ({} where this jaxlib
    refuses them: the program then runs, and its layers are traced, as 'ynnpack')."""
    options = tuple(LIBRARY_OPTIONS[library].items())
    return dict(options) if options and _compiler_takes(options) else {}


def _out_pixels(x_shape, kernel_hw, strides, padding, dilation) -> int:
    from unmask_jax.models.layers.common import pair
    from unmask_jax.models.layers.padding import out_size, resolved_padding
    strides, dilation = pair(strides), pair(dilation)
    pads = resolved_padding(padding, x_shape[1:3], kernel_hw, strides, dilation)
    return math.prod(out_size(n, k, s, p, d) for n, k, s, p, d in zip(
        x_shape[1:3], kernel_hw, strides, pads, dilation))


class CpuForms:
    """The CPU rule (see the module docstring) for a program compiled for ``library``."""

    name = "cpu"

    def __init__(self, library: str):
        if not compiler_options(library) and LIBRARY_OPTIONS[library]:
            library = "ynnpack"  # the option was refused (warned): XLA's default runs
        self.library = library

    def compiler_options(self) -> dict[str, str]:
        return compiler_options(self.library)

    def conv2d(self, plain, x, kernel, strides, padding, dilation):
        if self.library != "ynnpack":
            return plain(x, kernel, strides, padding, dilation)
        if _out_pixels(x.shape, kernel.shape[:2], strides, padding,
                       dilation) <= GEMM_MAX_PIXELS:
            return f.conv2d_gemm(x, kernel, strides, padding, dilation)
        return f.batch_chunked(f.conv2d, x, kernel, strides, padding, dilation)

    def conv_transpose(self, plain, x, kernel, strides, padding, output_padding):
        static = (strides, padding, output_padding)
        if (x.shape[1] * x.shape[2] <= GEMM_MAX_PIXELS
                or kernel.shape[2] <= GEMM_MAX_OUT_FEATURES):
            return f.conv_transpose_gemm(x, kernel, *static)
        return f.forward_with_grads_of(
            functools.partial(f.batch_chunked, f.conv_transpose_subpixel),
            f.conv_transpose_gemm, x, kernel, static)



@functools.lru_cache(maxsize=None)
def forms(library: str) -> CpuForms:
    return CpuForms(library)


__all__ = ["CpuForms", "GEMM_MAX_OUT_FEATURES", "GEMM_MAX_PIXELS", "LIBRARY_OPTIONS",
           "compiler_options", "forms"]
