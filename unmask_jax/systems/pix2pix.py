"""The pix2pix family: one conditional generator, one PatchGAN conditioned on its input.

Covers paper 000 (pix2pix), Ye's Train A/B (3- or 4-channel input) and the TensorFlow
pix2pix-tutorial variant of paper 003. Config keys read here:

* ``model.generator`` / ``model.discriminator`` (+ ``*_kwargs``): registry names;
* ``model.generator_inputs``: "masked" (3 ch), "mask" (1 ch), "identity" (3 ch), concatenated
  on channels; the discriminator sees concat(generator input, image);
* ``model.composite_in_training``: MURF composite of G's output before the losses;
* ``loss.terms`` (:mod:`unmask_jax.loss_terms`; ``gan`` reads D's logits on the output),
  ``loss.d_scale`` (D loss = d_scale * (real + fake));
* ``loss.update_order``:
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

from unmask_jax import loss_terms, losses, models
from unmask_jax.state import TrainState
from unmask_jax.systems import base

GENERATOR_INPUTS = {"masked": 3, "mask": 1, "identity": 3}
UPDATE_ORDERS = ("sequential", "simultaneous")
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
        if self.update_order == "sequential":
            return self._sequential_step(state, batch, frozen, txs)
        return self._simultaneous_step(state, batch, frozen, txs)

    def _generate(self, state, g_in, batch, rng):
        def generate(g_params):
            out, cols = base.apply_train(self.G, state.nets["generator"], g_in,
                                         params=g_params, rngs={"dropout": rng})
            if self.composite_in_training:
                out = base.composite(out, batch)
            return out, cols
        return generate

    def _sequential_step(self, state, batch, frozen, txs):
        gen, disc = state.nets["generator"], state.nets["discriminator"]
        rng = jax.random.fold_in(state.rng, state.step)
        g_in = self.generator_input(batch)
        fake, g_vjp, g_cols = jax.vjp(self._generate(state, g_in, batch, rng), gen.params,
                                      has_aux=True)

        # Discriminator: detached fake then real, two calls (separate BN batches, as PyTorch).
        def d_loss_fn(d_params):
            fake_logits, cols = base.apply_train(
                self.D, disc, self._d_input(g_in, jax.lax.stop_gradient(fake)),
                params=d_params)
            real_logits, cols = base.apply_train(
                self.D, disc.replace(collections=cols),
                self._d_input(g_in, batch["target"]), params=d_params)
            loss = losses.discriminator_loss(real_logits, fake_logits, self.gan_kind,
                                             self.d_scale)
            return loss, cols

        (d_loss, d_cols), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(disc.params)
        d_updates, d_opt_state = txs["discriminator"].update(d_grads, disc.opt_state,
                                                             disc.params)
        d_params = optax.apply_updates(disc.params, d_updates)

        # Generator: adversarial term against the updated D plus the other terms.
        def g_loss_fn(output):
            logits, cols = base.apply_train(
                self.D, disc.replace(collections=d_cols), self._d_input(g_in, output),
                params=d_params)
            total, terms = self._g_objective(frozen, output, batch, logits)
            return total, (cols, terms)

        (g_loss, (d_cols, g_terms)), d_output = jax.value_and_grad(
            g_loss_fn, has_aux=True)(fake)
        (g_grads,) = g_vjp(d_output)

        finite = base.all_finite(d_loss, g_loss, d_grads, g_grads)
        nets = base.commit_if_finite(
            finite, state.nets, txs=txs, grads={"generator": g_grads},
            updated={"discriminator": (d_params, d_opt_state)},
            collections={"generator": g_cols, "discriminator": d_cols})
        metrics = {"d_loss": d_loss, "g_loss": g_loss,
                   "nonfinite": 1.0 - finite.astype(jnp.float32), **g_terms}
        return state.replace(step=state.step + 1, nets=nets), metrics

    def _simultaneous_step(self, state, batch, frozen, txs):
        gen, disc = state.nets["generator"], state.nets["discriminator"]
        rng = jax.random.fold_in(state.rng, state.step)
        g_in = self.generator_input(batch)
        generate = self._generate(state, g_in, batch, rng)

        def both_losses(g_params, d_params):
            fake, g_cols = generate(g_params)
            real_logits, d_cols = base.apply_train(
                self.D, disc, self._d_input(g_in, batch["target"]), params=d_params)
            fake_logits, d_cols = base.apply_train(
                self.D, disc.replace(collections=d_cols), self._d_input(g_in, fake),
                params=d_params)
            g_loss, terms = self._g_objective(frozen, fake, batch, fake_logits)
            d_loss = losses.discriminator_loss(real_logits, fake_logits, self.gan_kind,
                                               self.d_scale)
            return (g_loss, d_loss), (g_cols, d_cols, terms)

        (g_loss, d_loss), vjp, (g_cols, d_cols, g_terms) = jax.vjp(
            both_losses, gen.params, disc.params, has_aux=True)
        one, zero = jnp.ones((), g_loss.dtype), jnp.zeros((), d_loss.dtype)
        g_grads, _ = vjp((one, zero))
        _, d_grads = vjp((zero, one))
        finite = base.all_finite(d_loss, g_loss, d_grads, g_grads)
        nets = base.commit_if_finite(
            finite, state.nets, txs=txs,
            grads={"generator": g_grads, "discriminator": d_grads},
            collections={"generator": g_cols, "discriminator": d_cols})
        metrics = {"d_loss": d_loss, "g_loss": g_loss,
                   "nonfinite": 1.0 - finite.astype(jnp.float32), **g_terms}
        return state.replace(step=state.step + 1, nets=nets), metrics

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
