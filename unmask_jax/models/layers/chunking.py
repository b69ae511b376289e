"""Batch chunking: a function applied to slices of the batch, results concatenated."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from unmask_jax.models.layers.common import Array


def batch_chunked(fn: Callable[..., Array], x: Array, *args: Any,
                  max_chunks: int = 8) -> Array:
    """``fn(x, *args)`` applied to at most ``max_chunks`` batch chunks, concatenated.

    XLA CPU's convolutions (forward and gradients) scale worse than linearly with the
    batch; running the images separately restores linear scaling (figures:
    ``benchmarks/README.md``). Same numbers as ``fn(x, *args)`` for per-image ``fn``.
    """
    b = x.shape[0]
    chunks = min(b, max_chunks)
    if chunks <= 1:
        return fn(x, *args)
    size = -(-b // chunks)
    return jnp.concatenate([fn(x[i:i + size], *args) for i in range(0, b, size)], axis=0)
