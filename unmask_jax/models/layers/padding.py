"""Torch-style convolution padding: conversion to lax's explicit form, output sizes, and
explicit pre-padding of the input."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from jax import lax

from unmask_jax.models.layers.common import Array, PaddingLike


def torch_padding(padding: PaddingLike) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """Convert torch-style padding (int or (ph, pw)) to lax padding ((ph, ph), (pw, pw)).

    Strings ('SAME', 'VALID') and explicit pairs of pairs are passed through.
    """
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(padding)
    if len(pads) == 2 and all(isinstance(p, int) for p in pads):
        return ((pads[0], pads[0]), (pads[1], pads[1]))
    if len(pads) == 2 and all(len(p) == 2 for p in pads):
        return (tuple(pads[0]), tuple(pads[1]))  # type: ignore[return-value]
    raise ValueError(f"unsupported padding {padding!r}")


def resolved_padding(padding: PaddingLike, spatial: Sequence[int], kernel: Sequence[int],
                     strides: Sequence[int], dilation: Sequence[int]
                     ) -> tuple[tuple[int, int], ...]:
    """Explicit ((lo, hi), (lo, hi)) padding for torch-style ints or 'SAME'/'VALID'."""
    pads = torch_padding(padding)
    if isinstance(pads, str):
        eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
        pads = lax.padtype_to_pads(tuple(spatial), eff, tuple(strides), pads)
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def out_size(n: int, k: int, s: int, pad: tuple[int, int], d: int) -> int:
    """Output length of a convolution along one axis."""
    return (n + pad[0] + pad[1] - (k - 1) * d - 1) // s + 1


def pre_pad(x: Array, padding: PaddingLike, kernel_hw: Sequence[int],
            strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
    """``x`` (NHWC) explicitly zero-padded by the torch-style / 'SAME' / 'VALID' padding."""
    pads = resolved_padding(padding, x.shape[1:3], kernel_hw, strides, dilation)
    if any(p != 0 for pair in pads for p in pair):
        x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    return x
