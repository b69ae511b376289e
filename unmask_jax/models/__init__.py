"""Model registry: config name -> Flax Linen module constructor.

``create_model("pix2pix_unet", num_downs=8, ngf=64)`` builds a module; every module is
called as ``module.apply(variables, x, train, rngs={"dropout": key},
mutable=["batch_stats"])``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from unmask_jax.models.ganmasker import FUNet, MSeg, SNDiscriminator
from unmask_jax.models.pix2pix import PatchGANDiscriminator, UnetGenerator
from unmask_jax.models.tf_pix2pix import TFPatchGANDiscriminator, TFUnetGenerator
from unmask_jax.models.unveilify import (
    IdentityPatchDiscriminator, MaskRemover, PSPEncoder, UNetStyleGANGenerator,
    psp_variables_from_irse)
from unmask_jax.models.ye_custom import YeUnetC

MODELS: dict[str, Callable[..., nn.Module]] = {
    "pix2pix_unet": UnetGenerator,
    "patchgan": PatchGANDiscriminator,
    "tf_pix2pix_unet": TFUnetGenerator,
    "tf_patchgan": TFPatchGANDiscriminator,
    "ganmasker_mseg": MSeg,
    "ganmasker_funet": FUNet,
    "ganmasker_discriminator": SNDiscriminator,
    "ye_unet_c": YeUnetC,
    "unveilify_psp": PSPEncoder,
    "unveilify_generator": UNetStyleGANGenerator,
    "unveilify_mask_remover": MaskRemover,
    "unveilify_discriminator": IdentityPatchDiscriminator,
}


def model_fields(name: str) -> list[str]:
    """Constructor keyword arguments accepted by model ``name``."""
    cls = _lookup(name)
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {sorted(MODELS)}")
    return MODELS[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with constructor ``kwargs``.

    Raises ValueError for an unknown name (listing the choices) and TypeError for an
    unknown keyword (listing the accepted ones).
    """
    cls = _lookup(name)
    allowed = model_fields(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"model {name!r} got unknown argument(s) {unknown}; accepted: {allowed}")
    return cls(**kwargs)


def count_params(params: Any) -> int:
    """Total number of elements in a pytree (pass ``variables['params']`` for parameters).

    Works on concrete arrays and on ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``).
    """
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))


__all__ = [
    "MODELS",
    "create_model",
    "count_params",
    "model_fields",
    "UnetGenerator",
    "PatchGANDiscriminator",
    "TFUnetGenerator",
    "TFPatchGANDiscriminator",
    "MSeg",
    "FUNet",
    "SNDiscriminator",
    "YeUnetC",
    "PSPEncoder",
    "UNetStyleGANGenerator",
    "MaskRemover",
    "IdentityPatchDiscriminator",
    "psp_variables_from_irse",
]
