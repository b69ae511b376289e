"""Normalisation layers with torch / Keras semantics, and selection by name.

- :class:`BatchNorm`: torch / Keras semantics. ``momentum`` is in the Flax convention
  (running = momentum * running + (1 - momentum) * batch; torch momentum 0.1 == 0.9 here).
  The running variance is updated with the unbiased batch variance (n / (n - 1)) like
  ``torch.nn.BatchNorm2d`` and Keras' fused batch norm (n = 1 falls back to the biased
  value, as TensorFlow does; torch raises there). Variables: params ``scale``/``bias``,
  batch_stats ``mean``/``var`` (same names as ``flax.linen.BatchNorm``).
- :class:`InstanceNorm`: ``torch.nn.InstanceNorm2d`` (eps 1e-5, affine configurable, no
  running statistics).
- :func:`apply_norm` / :func:`check_norm`: 'batch', 'instance' or 'none' by name.

Statistics are always computed in float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from unmask_jax.models.layers.common import Array, Dtype, Initializer, normal_init


class BatchNorm(nn.Module):
    """BatchNorm over all but the last axis with torch/Keras running-statistics semantics.

    Attributes:
      momentum: Flax convention, running = momentum * running + (1 - momentum) * batch.
        torch ``momentum=0.1`` is 0.9 here; Keras ``momentum=0.99`` is 0.99.
      epsilon: torch 1e-5, Keras 1e-3.
      unbiased_running_var: update ``var`` with the unbiased batch variance (torch, Keras
        fused); normalisation always uses the biased one.
      axis_name: optional mapped axis name for cross-replica statistics (shard_map / pmap);
        not needed under global-view ``jax.jit`` where the batch axis is already global.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    unbiased_running_var: bool = True
    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scale_init: Initializer = normal_init(0.02, mean=1.0)
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool) -> Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)
        axes = tuple(range(x.ndim - 1))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean = jnp.mean(x32, axis=axes)
            if self.axis_name is not None:
                mean = lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if self.axis_name is not None:
                var = lax.pmean(var, self.axis_name)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                if self.axis_name is not None:
                    n = n * lax.psum(1, self.axis_name)
                # n / (n - 1); n = 1 falls back to the biased value (TensorFlow's rule).
                factor = n / jnp.maximum(n - 1, 1)
                unbiased = var * factor if self.unbiased_running_var else var
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * lax.stop_gradient(mean)
                ra_var.value = m * ra_var.value + (1.0 - m) * lax.stop_gradient(unbiased)
        mul = lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
            mul = mul * scale.astype(jnp.float32)
        y = (x32 - mean) * mul
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (c,), self.param_dtype).astype(jnp.float32)
        return y.astype(self.dtype)


class InstanceNorm(nn.Module):
    """``torch.nn.InstanceNorm2d``: per-sample, per-channel normalisation over H, W.

    eps 1e-5, biased variance, ``affine=False`` by default (torch's default); with
    ``affine=True`` params ``scale`` (init 1) and ``bias`` (init 0). No running statistics.
    """

    epsilon: float = 1e-5
    affine: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x32 = x.astype(jnp.float32)
        axes = tuple(range(1, x.ndim - 1))
        mean = jnp.mean(x32, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
        y = (x32 - mean) * lax.rsqrt(var + self.epsilon)
        if self.affine:
            scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
            bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
            y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def apply_norm(
    kind: str,
    x: Array,
    train: bool,
    *,
    name: str,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    unbiased_running_var: bool = True,
    scale_init: Initializer = normal_init(0.02, mean=1.0),
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> Array:
    """Apply a normalisation by name inside a compact method (creates a submodule ``name``).

    'batch' -> :class:`BatchNorm` (running statistics when not ``train``), 'instance' ->
    :class:`InstanceNorm` (affine False, as pix2pix's ``InstanceNorm2d``), 'none' -> identity.
    """
    if kind == "batch":
        return BatchNorm(
            momentum=momentum,
            epsilon=epsilon,
            unbiased_running_var=unbiased_running_var,
            scale_init=scale_init,
            dtype=dtype,
            param_dtype=param_dtype,
            name=name,
        )(x, use_running_average=not train)
    if kind == "instance":
        return InstanceNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)(x)
    if kind == "none":
        return x
    raise ValueError(f"unknown norm {kind!r}; use 'batch', 'instance' or 'none'")


def check_norm(kind: str) -> None:
    """Raise ValueError for an unsupported norm name."""
    if kind not in ("batch", "instance", "none"):
        raise ValueError(f"unknown norm {kind!r}; use 'batch', 'instance' or 'none'")
