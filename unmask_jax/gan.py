"""A conditional image-to-image GAN system: which networks, which inputs, which objectives.

A *system* (one per paper configuration) is data, not code: the generator and discriminator
modules from the registry, what each one sees, and the loss terms with their weights. The
trainer (train.py) owns everything else. All functions here are pure.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from unmask_jax import losses, models

Batch = Mapping[str, jax.Array]

GENERATOR_INPUTS = ("masked", "mask", "identity")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def reconstruction_losses() -> dict[str, Callable[[jax.Array, jax.Array], jax.Array]]:
    """Reconstruction terms a config may name in ``loss.reconstruction``."""
    return {
        "l1": losses.l1_loss,
        "smooth_l1": losses.smooth_l1_loss,
        "mse": losses.mse_loss,
        "ssim": losses.ssim_loss,
    }


@dataclasses.dataclass(frozen=True)
class GanSystem:
    generator: nn.Module
    discriminator: nn.Module
    generator_inputs: tuple[str, ...]
    composite_in_training: bool
    gan_kind: str
    gan_weight: float
    d_scale: float
    reconstruction: tuple[tuple[str, float], ...]

    def generator_input(self, batch: Batch) -> jax.Array:
        return jnp.concatenate([batch[name] for name in self.generator_inputs], axis=-1)

    def input_channels(self) -> int:
        return sum(1 if name == "mask" else 3 for name in self.generator_inputs)

    def discriminator_input(self, condition: jax.Array, image: jax.Array) -> jax.Array:
        return jnp.concatenate([condition, image], axis=-1)

    def reconstruction_loss(self, output: jax.Array, target: jax.Array
                            ) -> tuple[jax.Array, dict[str, jax.Array]]:
        terms = {}
        table = reconstruction_losses()
        total = jnp.zeros((), jnp.float32)
        for name, weight in self.reconstruction:
            value = table[name](output, target)
            terms[f"g_{name}"] = value
            total = total + weight * value
        return total, terms


def composite(output: jax.Array, batch: Batch) -> jax.Array:
    """Keeps the known pixels: output inside the mask map, the masked input outside it."""
    return output * batch["mask"] + batch["masked"] * (1.0 - batch["mask"])


def build_system(config) -> GanSystem:
    """Builds the system from a config (see configs/default.py); bad values fail here."""
    m, loss = config.model, config.loss
    dtype_name = config.train.compute_dtype
    if dtype_name not in COMPUTE_DTYPES:
        raise ValueError(f"config.train.compute_dtype={dtype_name!r}: choose one of "
                         f"{sorted(COMPUTE_DTYPES)}")
    dtype = COMPUTE_DTYPES[dtype_name]
    inputs = tuple(m.generator_inputs)
    bad = [name for name in inputs if name not in GENERATOR_INPUTS]
    if bad or not inputs:
        raise ValueError(f"config.model.generator_inputs={inputs}: each must be one of "
                         f"{GENERATOR_INPUTS}")
    table = reconstruction_losses()
    recon = tuple((str(k), float(v)) for k, v in dict(loss.reconstruction).items())
    unknown = [k for k, _ in recon if k not in table]
    if unknown:
        raise ValueError(f"config.loss.reconstruction: unknown term(s) {unknown}; choose from "
                         f"{sorted(table)}")
    if loss.gan not in losses.GAN_KINDS:
        raise ValueError(f"config.loss.gan={loss.gan!r}: choose one of {losses.GAN_KINDS}")
    generator = models.create_model(m.generator, dtype=dtype, **dict(m.generator_kwargs))
    discriminator = models.create_model(m.discriminator, dtype=dtype,
                                        **dict(m.discriminator_kwargs))
    return GanSystem(generator=generator, discriminator=discriminator, generator_inputs=inputs,
                     composite_in_training=bool(m.composite_in_training), gan_kind=loss.gan,
                     gan_weight=float(loss.gan_weight), d_scale=float(loss.d_scale),
                     reconstruction=recon)


def input_shapes(system: GanSystem, resolution: int) -> dict[str, tuple[int, ...]]:
    """Shapes (batch 1) of each network's input, for initialisation and summaries."""
    c = system.input_channels()
    return {"generator": (1, resolution, resolution, c),
            "discriminator": (1, resolution, resolution, c + 3)}


def init_variables(system: GanSystem, rng: jax.Array, resolution: int) -> dict[str, Any]:
    """Initial variables ({"params", "batch_stats"}) of both networks."""
    shapes = input_shapes(system, resolution)
    g_rng, d_rng = jax.random.split(rng)
    g = system.generator.init({"params": g_rng, "dropout": g_rng},
                              jnp.zeros(shapes["generator"], jnp.float32), train=False)
    d = system.discriminator.init({"params": d_rng},
                                  jnp.zeros(shapes["discriminator"], jnp.float32), train=False)
    return {"generator": dict(g), "discriminator": dict(d)}


def generate(system: GanSystem, params: Any, batch_stats: Any, batch: Batch
             ) -> dict[str, jax.Array]:
    """Eval-mode generator output: raw and composited (known pixels kept), in [-1, 1]."""
    raw = system.generator.apply({"params": params, "batch_stats": batch_stats},
                                 system.generator_input(batch), train=False)
    return {"output": composite(raw, batch), "raw": raw, "masked": batch["masked"],
            "target": batch["target"], "mask": batch["mask"]}
