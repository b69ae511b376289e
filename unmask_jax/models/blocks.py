"""Attention and normalisation building blocks shared by several networks (Flax Linen, NHWC).

- :class:`SqueezeExcitation` / :func:`squeeze_excitation`: Hu et al. 2018, "Squeeze-and-
  Excitation Networks": global average pool -> FC(C / r) -> ReLU -> FC(C) -> sigmoid ->
  channel-wise scale of the input.
- :class:`CBAM` / :func:`cbam`: Woo et al. 2018, "CBAM: Convolutional Block Attention
  Module": channel attention (average- and max-pooled descriptors through one shared
  two-layer MLP, summed, sigmoid) followed by spatial attention (channel-wise mean and max
  maps concatenated in that order, one k x k convolution, sigmoid).
- :class:`SNConv` / :func:`spectral_normalise`: a ``torch.nn.Conv2d`` wrapped in
  ``torch.nn.utils.spectral_norm`` (Miyato et al. 2018); see :class:`SNConv` for the exact
  semantics and its ``"spectral"`` collection.

The fully connected layers are 1x1 :class:`~unmask_jax.models.layers.Conv` layers applied to
the (N, 1, 1, C) pooled descriptor: numerically the same as ``nn.Linear`` and exported to
PyTorch as ``nn.Conv2d(C, C', 1)`` by the generic kernel transpose of
``unmask_jax.export.keymaps``. Both MLP layers have a bias (as ``nn.Linear`` in the reference
implementations); the spatial convolution of CBAM has none (the paper's equation
``sigma(f7x7([AvgPool(F); MaxPool(F)]))`` has no bias and no normalisation).

Reduction ratio: the hidden width is ``max(C // reduction, 1)``. Both papers use r = 16 as
their default, which is taken here; networks built from these blocks may pass another.

Flat names. Each block exists twice: as a Module (its layers nest under the module's name)
and as a function that must be called inside another module's compact method and creates
its layers *directly in that module*, named ``prefix + <layer>``. The export key maps of
``unmask_jax.export.keymaps`` only walk top-level submodules, so the networks that are
exported to PyTorch call the functions with a prefix (e.g. ``enc_0_cbam_``). Layer names
(after the prefix): SE ``fc_0``, ``fc_1``; CBAM ``mlp_0``, ``mlp_1``, ``spatial``.

Outputs are in the compute ``dtype``; pooling and the sigmoid gates are computed in float32.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from unmask_jax import backends
from unmask_jax.models.layers import Conv, normal_init
from unmask_jax.models.layers.common import Initializer, PaddingLike, add_bias, pair
from unmask_jax.models.layers.conv import conv2d_xla

Array = jax.Array
Dtype = Any


def hidden_width(channels: int, reduction: int) -> int:
    """Hidden width of an SE / CBAM bottleneck MLP: ``max(channels // reduction, 1)``."""
    if reduction < 1:
        raise ValueError(f"reduction must be >= 1, got {reduction}")
    return max(channels // reduction, 1)


def _fc(features: int, name: str, dtype: Dtype, param_dtype: Dtype) -> Conv:
    """A fully connected layer as a 1x1 convolution with bias."""
    return Conv(features, 1, 1, 0, use_bias=True, dtype=dtype, param_dtype=param_dtype,
                name=name)


def squeeze_excitation(x: Array, *, reduction: int = 16, prefix: str = "",
                       dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> Array:
    """SE block on ``x`` (N, H, W, C); layers ``prefix + 'fc_0'`` (C -> C // r) and
    ``prefix + 'fc_1'`` (-> C) are created in the calling module (call it inside a compact
    method)."""
    c = x.shape[-1]
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(dtype)
    s = _fc(hidden_width(c, reduction), prefix + "fc_0", dtype, param_dtype)(s)
    s = nn.relu(s)
    s = _fc(c, prefix + "fc_1", dtype, param_dtype)(s)
    gate = jax.nn.sigmoid(s.astype(jnp.float32))
    return (x.astype(jnp.float32) * gate).astype(dtype)


def cbam(x: Array, *, reduction: int = 16, spatial_kernel: int = 7, prefix: str = "",
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> Array:
    """CBAM on ``x`` (N, H, W, C): channel then spatial attention. Layers
    ``prefix + 'mlp_0'`` (C -> C // r, bias), ``prefix + 'mlp_1'`` (-> C, bias) and
    ``prefix + 'spatial'`` (2 -> 1, k x k, padding k // 2, no bias) are created in the
    calling module (call it inside a compact method)."""
    if spatial_kernel % 2 != 1:
        raise ValueError(f"spatial_kernel must be odd, got {spatial_kernel}")
    c = x.shape[-1]
    x32 = x.astype(jnp.float32)
    fc0 = _fc(hidden_width(c, reduction), prefix + "mlp_0", dtype, param_dtype)
    fc1 = _fc(c, prefix + "mlp_1", dtype, param_dtype)

    def mlp(d: Array) -> Array:
        return fc1(nn.relu(fc0(d.astype(dtype)))).astype(jnp.float32)

    avg = jnp.mean(x32, axis=(1, 2), keepdims=True)
    mx = jnp.max(x32, axis=(1, 2), keepdims=True)
    x32 = x32 * jax.nn.sigmoid(mlp(avg) + mlp(mx))
    maps = jnp.concatenate([jnp.mean(x32, axis=-1, keepdims=True),
                            jnp.max(x32, axis=-1, keepdims=True)], axis=-1)
    s = Conv(1, spatial_kernel, 1, spatial_kernel // 2, use_bias=False, dtype=dtype,
             param_dtype=param_dtype, name=prefix + "spatial")(maps.astype(dtype))
    return (x32 * jax.nn.sigmoid(s.astype(jnp.float32))).astype(dtype)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018); output shape = input shape.

    Attributes:
      reduction: r; hidden width ``max(C // r, 1)`` (paper default 16).
    Variables: params ``fc_0/{kernel,bias}`` (1, 1, C, C // r), ``fc_1/{kernel,bias}``.
    """

    reduction: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no batch statistics
        return squeeze_excitation(x, reduction=self.reduction, dtype=self.dtype,
                                  param_dtype=self.param_dtype)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018); output shape = input shape.

    Attributes:
      reduction: r of the channel-attention MLP; hidden width ``max(C // r, 1)``. The
        GANMasker paper gives none; 16 is the CBAM paper's default.
      spatial_kernel: k of the spatial-attention convolution (paper: 7).
    Variables: params ``mlp_0``, ``mlp_1`` (1x1 convs with bias), ``spatial`` (k x k, 2 -> 1,
    no bias).
    """

    reduction: int = 16
    spatial_kernel: int = 7
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no batch statistics
        return cbam(x, reduction=self.reduction, spatial_kernel=self.spatial_kernel,
                    dtype=self.dtype, param_dtype=self.param_dtype)


# ----------------------------------------------------------------------------------------
# Spectral normalisation.
# ----------------------------------------------------------------------------------------

SPECTRAL = "spectral"  # the mutable collection holding the power-iteration vectors


def _l2_normalise(x: Array, eps: float) -> Array:
    """``torch.nn.functional.normalize(x, dim=0, eps=eps)``: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x))), eps)


def _mv(a: Array, b: Array) -> Array:
    return jnp.dot(a, b, precision=lax.Precision.HIGHEST)


def spectral_normalise(w_mat: Array, u: Array, v: Array, *, power_iterations: int,
                       eps: float) -> tuple[Array, Array, Array]:
    """``torch.nn.utils.spectral_norm``'s ``compute_weight`` on a matrix ``w_mat`` (out, -1).

    Runs ``power_iterations`` steps (v = normalize(W^T u), u = normalize(W v)) on the
    stop-gradient of ``w_mat`` and returns ``(w_mat / sigma, u, v)`` with
    ``sigma = u^T W v``: u and v are constants for the gradient, sigma is differentiated
    through W (as in torch). ``power_iterations=0`` is torch's eval mode (stored u, v).
    """
    w_const = lax.stop_gradient(w_mat)
    for _ in range(power_iterations):
        v = _l2_normalise(_mv(w_const.T, u), eps)
        u = _l2_normalise(_mv(w_const, v), eps)
    u, v = lax.stop_gradient(u), lax.stop_gradient(v)
    sigma = jnp.dot(u, _mv(w_mat, v))
    return w_mat / sigma, u, v


class SNConv(nn.Module):
    """``torch.nn.utils.spectral_norm(torch.nn.Conv2d(...))`` in NHWC.

    The trained parameter is the raw kernel (params ``kernel`` (kH, kW, in, out), torch
    ``weight_orig`` = ``kernel.transpose(3, 2, 0, 1)``) and ``bias``. The convolution uses
    ``kernel / sigma``, sigma the largest singular value of the torch-layout weight reshaped
    to (out, in * kH * kW), estimated by power iteration with the vectors held in the
    mutable collection ``"spectral"`` (not ``batch_stats``): ``u`` (out,) and ``v``
    (in * kH * kW,), torch's ``weight_u`` / ``weight_v``. Both start as normalised N(0, 1)
    draws (from the 'params' rng at init), like torch.

    - ``train=True``: ``power_iterations`` steps (torch default 1) from the stored u, then
      sigma = u^T W v; the new u, v are stored when ``"spectral"`` is mutable (pass
      ``mutable=["batch_stats", "spectral"]``); if it is not, the forward still uses the
      iterated vectors but nothing is stored. ``init`` never iterates, so the initial
      vectors are the random draws.
    - ``train=False``: torch's eval mode: no iteration, sigma = u^T W v from the stored u, v.

    ``eps`` 1e-12 (torch's). Other fields as :class:`~unmask_jax.models.layers.Conv`
    (torch-style ``padding``; the convolution is :func:`~unmask_jax.models.layers.conv2d_xla`
    or the platform's form of it, :func:`unmask_jax.backends.forms`).
    """

    features: int
    kernel_size: int | Sequence[int] = 4
    strides: int | Sequence[int] = 2
    padding: PaddingLike = 1
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    power_iterations: int = 1
    eps: float = 1e-12
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = normal_init(0.02)
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kh, kw = pair(self.kernel_size)
        cin = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, cin, self.features),
                            self.param_dtype)
        width = cin * kh * kw

        def init_vec(size: int) -> Callable[[], Array]:
            def init() -> Array:
                draw = jax.random.normal(self.make_rng("params"), (size,), jnp.float32)
                return _l2_normalise(draw, self.eps)
            return init

        u_var = self.variable(SPECTRAL, "u", init_vec(self.features))
        v_var = self.variable(SPECTRAL, "v", init_vec(width))
        # torch layout (out, in, kH, kW) flattened to (out, in * kH * kW).
        w_mat = kernel.astype(jnp.float32).transpose(3, 2, 0, 1).reshape(self.features, width)
        iterate = train and not self.is_initializing()
        w_mat, u, v = spectral_normalise(
            w_mat, u_var.value, v_var.value,
            power_iterations=self.power_iterations if iterate else 0, eps=self.eps)
        if iterate and self.is_mutable_collection(SPECTRAL):
            u_var.value, v_var.value = u, v
        w = w_mat.reshape(self.features, cin, kh, kw).transpose(2, 3, 1, 0)
        y = backends.forms().conv2d(conv2d_xla, x.astype(self.dtype), w.astype(self.dtype),
                                    self.strides, self.padding, self.dilation)
        return add_bias(self, y)
