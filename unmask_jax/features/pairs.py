"""Two image batches through one feature network call, without traffic between chips.

A loss or metric that compares an output with its target runs the backbone once on both.
Joining them end to end along the batch axis (``concatenate([x, y])`` then ``f[:n]``,
``f[n:]``) puts, on a mesh that splits the batch over chips, each chip's outputs and
targets on different chips, so every tapped feature map crosses chips twice
(collective-permutes in the compiled program). Interleaving them per image keeps each pair
on the chip that holds the image: the joined batch is ``(n, 2, ...)`` reshaped to
``(2n, ...)``, and a split over the leading axis stays a split over images.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def interleave(x: jax.Array, y: jax.Array) -> jax.Array:
    """``(2n, ...)``: x[0], y[0], x[1], y[1], ... (same shapes required)."""
    if x.shape != y.shape:
        raise ValueError(f"the two batches differ in shape: {x.shape} vs {y.shape}")
    return jnp.stack([x, y], axis=1).reshape((2 * x.shape[0],) + x.shape[1:])


def deinterleave(joined: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The inverse of :func:`interleave` for any per-image result of the joined batch."""
    pairs = joined.reshape((joined.shape[0] // 2, 2) + joined.shape[1:])
    return pairs[:, 0], pairs[:, 1]
