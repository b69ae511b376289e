"""The pix2pix family: one conditional generator, one PatchGAN conditioned on its input.

Covers paper 000 (pix2pix), Ye's Train A/B (3- or 4-channel input) and the TensorFlow
pix2pix-tutorial variant of paper 003. Config keys read here:

* ``model.generator`` / ``model.discriminator`` (+ ``*_kwargs``): registry names;
* ``model.generator_inputs``: "masked" (3 ch), "mask" (1 ch), "identity" (3 ch), concatenated
  on channels; the discriminator sees concat(generator input, image);
* ``model.composite_in_training``: MURF composite of G's output before the losses;
* ``loss.terms`` (:mod:`unmask_jax.loss_terms`; ``gan`` reads D's logits on the output),
  ``loss.d_scale`` (D loss = d_scale * (real + fake));
* ``loss.update_order`` (the step: :mod:`unmask_jax.systems.gan_step`):
  - ``sequential`` (the canonical PyTorch pix2pix ``optimize_parameters``): one G forward;
    D updated on (fake, real) with the fake detached, fake first; then G's loss against the
    *updated* D, reusing the same G forward pass (its VJP);
  - ``simultaneous`` (the TensorFlow tutorial's ``train_step``): one tape; D on real, then on
    fake; both gradients taken against the pre-update D; both applied.
* ``eval.bn_statistics``: how evaluation and prediction run the generator:
  - ``per_image``: in training mode on each image alone (BatchNorm normalises with the
    image's own statistics, dropout active with a fixed per-image key), as pix2pix's
    ``test.py`` (no ``--eval``, batch 1) and the tutorial's ``generator(x, training=True)``;
  - ``running``: eval mode, running statistics, no dropout (``model.eval()``).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from unmask_jax import loss_terms, models
from unmask_jax.state import TrainState
from unmask_jax.systems import base, gan_step

GENERATOR_INPUTS = {"masked": 3, "mask": 1, "identity": 3}
UPDATE_ORDERS = gan_step.UPDATE_ORDERS
BN_STATISTICS = ("per_image", "running")


class Pix2PixSystem(base.System):
    name = "pix2pix"

    def __init__(self, config, abstract_frozen: bool = False):
        super().__init__(config, abstract_frozen)
        m, loss = config.model, config.loss
        dtype = base.compute_dtype(config)
        inputs = tuple(m.generator_inputs)
        bad = [n for n in inputs if n not in GENERATOR_INPUTS]
        if bad or not inputs:
            raise ValueError(f"config.model.generator_inputs={inputs}: each must be one of "
                             f"{tuple(GENERATOR_INPUTS)}")
        if loss.update_order not in UPDATE_ORDERS:
            raise ValueError(f"config.loss.update_order={loss.update_order!r}: choose one of "
                             f"{UPDATE_ORDERS}")
        if config.eval.bn_statistics not in BN_STATISTICS:
            raise ValueError(f"config.eval.bn_statistics={config.eval.bn_statistics!r}: "
                             f"choose one of {BN_STATISTICS}")
        self.generator_inputs = inputs
        self.composite_in_training = bool(m.composite_in_training)
        self.d_scale = float(loss.d_scale)
        self.update_order = loss.update_order
        self.remat = bool(config.train.get("remat", False))
        self.bn_statistics = config.eval.bn_statistics
        self.objective = loss_terms.Objective.from_config(loss.terms, dtype=dtype)
        gan_terms = [t for t in self.objective.terms if t.type == "gan"]
        if len(gan_terms) != 1:
            raise ValueError("config.loss.terms: the pix2pix family needs exactly one 'gan' "
                             f"term, got {len(gan_terms)}")
        self.gan_kind = dict(gan_terms[0].options)["kind"]
        c_in = self.input_channels()
        g_kwargs, d_kwargs = dict(m.generator_kwargs), dict(m.discriminator_kwargs)
        self.networks = {
            "generator": base.Network(
                models.create_model(m.generator, dtype=dtype, **g_kwargs),
                lambda r: ((1, r, r, c_in),), m.generator, g_kwargs),
            "discriminator": base.Network(
                models.create_model(m.discriminator, dtype=dtype, **d_kwargs),
                lambda r: ((1, r, r, c_in + 3),), m.discriminator, d_kwargs),
        }
        self.G = self.networks["generator"].module
        self.D = self.networks["discriminator"].module

    def input_channels(self) -> int:
        return sum(GENERATOR_INPUTS[n] for n in self.generator_inputs)

    def predict_needs(self) -> base.PredictNeeds:
        return base.PredictNeeds(mask_map="mask" in self.generator_inputs,
                                 identity="identity" in self.generator_inputs)

    def describe(self) -> str:
        return (f"{self.input_channels()}-channel generator input "
                f"({' + '.join(self.generator_inputs)}), {self.update_order} G/D updates")

    def load_frozen(self, training: bool = True) -> dict[str, Any]:
        return {"loss": self.objective.load(self.abstract_frozen) if training else {}}

    def generator_input(self, batch: base.Batch) -> jax.Array:
        return jnp.concatenate([batch[name] for name in self.generator_inputs], axis=-1)

    def _d_input(self, condition: jax.Array, image: jax.Array) -> jax.Array:
        return jnp.concatenate([condition, image], axis=-1)

    def _g_objective(self, frozen, output, batch, fake_logits):
        inputs = {"output": output, "target": batch["target"], "fake_logits": fake_logits,
                  **{k: batch[k] for k in ("mask", "masked", "identity") if k in batch}}
        return self.objective(frozen["loss"], inputs)

    # -- training ----------------------------------------------------------------------------

    def train_step(self, state: TrainState, batch: base.Batch, frozen: Any,
                   txs: Mapping[str, optax.GradientTransformation]
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        """The shared G/D step (:mod:`unmask_jax.systems.gan_step`) in ``update_order``: D
        sees concat(generator input, image)."""
        rng = jax.random.fold_in(state.rng, state.step)
        g_in = self.generator_input(batch)
        parts = gan_step.GanParts(
            generate=self._generate(state, g_in, batch, rng),
            discriminate=lambda disc, d_params, image: base.apply_train(
                self.D, disc, self._d_input(g_in, image), params=d_params),
            real=batch["target"],
            g_objective=lambda output, logits: self._g_objective(frozen, output, batch, logits),
            gan_kind=self.gan_kind, d_scale=self.d_scale)
        return gan_step.train_step(self.update_order, state, txs, parts, remat=self.remat)

    def _generate(self, state, g_in, batch, rng):
        def generate(g_params):
            out, cols = base.apply_train(self.G, state.nets["generator"], g_in,
                                         params=g_params, rngs={"dropout": rng})
            if self.composite_in_training:
                out = base.composite(out, batch)
            return out, cols
        return generate

    # -- inference ---------------------------------------------------------------------------

    def predict(self, state: TrainState, batch: base.Batch, frozen: Any = None
                ) -> dict[str, jax.Array]:
        gen = state.nets["generator"]
        g_in = self.generator_input(batch)
        if self.bn_statistics == "running":
            raw = base.apply_eval(self.G, gen, g_in)
        else:
            n = g_in.shape[0]
            ids = batch["index"] if "index" in batch else jnp.arange(n)
            keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(
                ids.astype(jnp.uint32))

            def one(x, key):
                out, _ = base.apply_train(self.G, gen, x[None], rngs={"dropout": key})
                return out[0]
            raw = jax.vmap(one)(g_in, keys)
        return {"output": base.composite(raw, batch), "raw": raw}
