"""``weight_matmul``: a matrix product with a large weight whose gradients never transpose
that weight (a custom VJP)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from unmask_jax.models.layers.common import Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def weight_matmul(a: Array, w: Array, w_transposed: bool = False) -> Array:
    """``a @ w`` (w: (K, N)) or, with ``w_transposed``, ``a @ w.T`` (w: (N, K)), for a
    small activation matrix ``a`` (M, K) and a large weight, with the forward and both
    backward products arranged so that the weight is only ever read in its stored layout.

    XLA CPU's GEMMs take their operands in (M, K) x (K, N) form and otherwise copy the
    operand into it. Left to autodiff, the input gradient ``dy @ w.T`` (and, for a
    transposed convolution's (kH, kW, out, in) kernel, the forward product too) transposes
    the whole weight every step: 16-32 MB per inner U-Net layer (what that copy costs:
    ``benchmarks/README.md``). Here only the small activation-sized operands are
    transposed.
    """
    return jnp.dot(w, a.T).T if w_transposed else jnp.dot(a, w)


def _weight_matmul_fwd(a, w, w_transposed):
    return weight_matmul(a, w, w_transposed), (a, w)


def _weight_matmul_bwd(w_transposed, res, dy):
    a, w = res
    if w_transposed:  # y = a @ w.T, w (N, K)
        return jnp.dot(dy, w), jnp.dot(dy.T, a)
    return jnp.dot(w, dy.T).T, jnp.dot(a.T, dy)  # y = a @ w, w (K, N)


weight_matmul.defvjp(_weight_matmul_fwd, _weight_matmul_bwd)
