"""VGG16 / VGG19 feature extractors (torchvision ``features`` layout) and AlexNet features.

``VGGFeatures`` returns a dict of named activations (``conv1_1``, ``relu1_1``, ...,
``relu5_4``, ``pool1`` ... ``pool5``) and stops after the deepest one requested. The input is
an NHWC image batch in [-1, 1]; how it is normalised before the first conv is an explicit
choice, because the conventions differ:

* ``"imagenet"``: map to [0, 1], then subtract the ImageNet mean (0.485, 0.456, 0.406) and
  divide by the std (0.229, 0.224, 0.225): the torchvision training convention.
* ``"none"``: feed the [-1, 1] image as it is (pix2pixHD's ``VGGLoss`` does this).
* ``"lpips"``: LPIPS's ScalingLayer, (x - shift) / scale with shift (-0.030, -0.088,
  -0.188) and scale (0.458, 0.448, 0.450).

``AlexFeatures`` is torchvision AlexNet's ``features`` up to relu5 (the LPIPS backbone).
Parameter names: ``conv{block}_{index}`` (VGG), ``conv1`` ... ``conv5`` (AlexNet), Flax
kernels (kh, kw, in, out).

``dtype`` (both modules): the compute dtype of the convolutions and activations (e.g.
``jnp.bfloat16``); the parameters stay float32 and are cast inside each conv, and the input
normalisation is computed in float32 before the cast. The returned activations are in
``dtype``. The default float32 gives the original results bit for bit.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

VGG_CONFIGS: dict[str, tuple[int, ...]] = {
    # Convs per block; widths 64, 128, 256, 512, 512.
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
VGG_WIDTHS = (64, 128, 256, 512, 512)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
INPUT_NORMS = ("imagenet", "none", "lpips")


def normalize_input(x: jax.Array, mode: str) -> jax.Array:
    """Maps an image in [-1, 1] to what a backbone expects (see module docstring); float32."""
    x = x.astype(jnp.float32)
    if mode == "imagenet":
        x = (x + 1.0) * 0.5
        return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    if mode == "lpips":
        return (x - jnp.asarray(LPIPS_SHIFT)) / jnp.asarray(LPIPS_SCALE)
    if mode == "none":
        return x
    raise ValueError(f"unknown input normalisation {mode!r}; choose one of {INPUT_NORMS}")


def vgg_layer_names(arch: str) -> list[str]:
    """All activation names of ``arch`` in forward order."""
    if arch not in VGG_CONFIGS:
        raise ValueError(f"unknown VGG arch {arch!r}; choose one of {sorted(VGG_CONFIGS)}")
    names = []
    for block, n in enumerate(VGG_CONFIGS[arch], start=1):
        for i in range(1, n + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


def torchvision_vgg_indices(arch: str) -> dict[str, int]:
    """Flax conv name -> index in torchvision's ``features`` Sequential."""
    out, idx = {}, 0
    for block, n in enumerate(VGG_CONFIGS[arch], start=1):
        for i in range(1, n + 1):
            out[f"conv{block}_{i}"] = idx
            idx += 2  # conv, relu
        idx += 1  # max pool
    return out


class VGGFeatures(nn.Module):
    """Named VGG activations. ``layers`` must be names from :func:`vgg_layer_names`."""

    arch: str = "vgg19"
    layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_2")
    input_norm: str = "imagenet"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        order = vgg_layer_names(self.arch)
        unknown = [n for n in self.layers if n not in order]
        if unknown:
            raise ValueError(f"unknown {self.arch} layers {unknown}; valid: {order}")
        last = max(order.index(n) for n in self.layers)
        wanted = set(self.layers)
        out: dict[str, jax.Array] = {}
        x = normalize_input(x, self.input_norm).astype(self.dtype)
        pos = 0
        for block, n in enumerate(VGG_CONFIGS[self.arch], start=1):
            for i in range(1, n + 1):
                name = f"conv{block}_{i}"
                x = nn.Conv(VGG_WIDTHS[block - 1], (3, 3), padding=((1, 1), (1, 1)),
                            dtype=self.dtype, param_dtype=jnp.float32, name=name)(x)
                if name in wanted:
                    out[name] = x
                x = nn.relu(x)
                if f"relu{block}_{i}" in wanted:
                    out[f"relu{block}_{i}"] = x
                pos += 2
                if pos > last:
                    return out
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            if f"pool{block}" in wanted:
                out[f"pool{block}"] = x
            pos += 1
            if pos > last:
                return out
        return out


ALEX_LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")


class AlexFeatures(nn.Module):
    """torchvision AlexNet ``features`` activations relu1 ... relu5 (LPIPS taps)."""

    input_norm: str = "lpips"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        x = normalize_input(x, self.input_norm).astype(self.dtype)
        kw = dict(dtype=self.dtype, param_dtype=jnp.float32)
        out = {}
        x = nn.relu(nn.Conv(64, (11, 11), strides=(4, 4), padding=((2, 2), (2, 2)),
                            name="conv1", **kw)(x))
        out["relu1"] = x
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(nn.Conv(192, (5, 5), padding=((2, 2), (2, 2)), name="conv2", **kw)(x))
        out["relu2"] = x
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(nn.Conv(384, (3, 3), padding=((1, 1), (1, 1)), name="conv3", **kw)(x))
        out["relu3"] = x
        x = nn.relu(nn.Conv(256, (3, 3), padding=((1, 1), (1, 1)), name="conv4", **kw)(x))
        out["relu4"] = x
        x = nn.relu(nn.Conv(256, (3, 3), padding=((1, 1), (1, 1)), name="conv5", **kw)(x))
        out["relu5"] = x
        return out
