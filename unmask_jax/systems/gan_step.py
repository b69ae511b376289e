"""The conditional-GAN train step every G/D system shares, in its two update orders.

A system gives the parts (:class:`GanParts`): how G generates (train mode, its collections),
what D sees for an image (the condition is the system's: the generator input for the pix2pix
family, the identity image for UnVeilify), the real image in that space, and G's objective
given its output and D's logits on it. The step does the rest: the losses' order, the
gradients, the optimiser updates and the non-finite guard (:func:`base.commit_if_finite`).

* ``sequential`` (pix2pix's PyTorch reference): one G forward; D updated on the detached
  fake then the real image (two D calls: separate BatchNorm batches, as PyTorch); G's loss
  against the *updated* D; G's gradient through the saved forward (``jax.vjp``).
* ``simultaneous`` (the TF pix2pix tutorial): one tape: D on the real pair, then the fake;
  both gradients against the pre-update D.

With ``remat`` (``train.remat``) each of G, D and G's objective keeps only its
convolutions' outputs for the backward pass and recomputes the rest there (normalisations,
activations; ``jax.checkpoint`` with the ``checkpoint_dots`` policy).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from unmask_jax import losses
from unmask_jax.state import NetState, TrainState
from unmask_jax.systems import base

UPDATE_ORDERS = ("sequential", "simultaneous")


@dataclasses.dataclass(frozen=True)
class GanParts:
    """What a system's G/D step is made of.

    generate(g_params) -> (fake, generator collections)   G in train mode
    discriminate(disc, d_params, image) -> (logits, discriminator collections)
                                        D in train mode on ``image`` with its condition
    real                                the real image, in the space D sees
    g_objective(fake, fake_logits) -> (total, {term: value})
    gan_kind, d_scale                   D's loss (``losses.discriminator_loss``)
    """

    generate: Callable[[Any], tuple[jax.Array, Any]]
    discriminate: Callable[[NetState, Any, jax.Array], tuple[jax.Array, Any]]
    real: jax.Array
    g_objective: Callable[[jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    gan_kind: str
    d_scale: float


def train_step(order: str, state: TrainState, txs: Mapping[str, optax.GradientTransformation],
               parts: GanParts, remat: bool = False
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of ``order`` (:data:`UPDATE_ORDERS`) on the ``generator`` and
    ``discriminator`` of ``state``; metrics ``d_loss``, ``g_loss``, ``nonfinite`` and G's
    terms. ``remat``: recompute in the backward pass (see the module docstring)."""
    if remat:
        keep = jax.checkpoint_policies.checkpoint_dots
        parts = dataclasses.replace(
            parts, generate=jax.checkpoint(parts.generate, policy=keep),
            discriminate=jax.checkpoint(parts.discriminate, policy=keep),
            g_objective=jax.checkpoint(parts.g_objective, policy=keep))
    if order == "sequential":
        return _sequential(state, txs, parts)
    if order == "simultaneous":
        return _simultaneous(state, txs, parts)
    raise ValueError(f"G/D update order {order!r}: choose one of {UPDATE_ORDERS}")


def _metrics(d_loss, g_loss, finite, g_terms) -> dict[str, jax.Array]:
    return {"d_loss": d_loss, "g_loss": g_loss,
            "nonfinite": 1.0 - finite.astype(jnp.float32), **g_terms}


def _sequential(state, txs, p: GanParts):
    gen, disc = state.nets["generator"], state.nets["discriminator"]
    fake, g_vjp, g_cols = jax.vjp(p.generate, gen.params, has_aux=True)

    # Discriminator: detached fake then real, two calls.
    def d_loss_fn(d_params):
        fake_logits, cols = p.discriminate(disc, d_params, jax.lax.stop_gradient(fake))
        real_logits, cols = p.discriminate(disc.replace(collections=cols), d_params, p.real)
        return losses.discriminator_loss(real_logits, fake_logits, p.gan_kind,
                                         p.d_scale), cols

    (d_loss, d_cols), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(disc.params)
    d_updates, d_opt_state = txs["discriminator"].update(d_grads, disc.opt_state, disc.params)
    d_params = optax.apply_updates(disc.params, d_updates)

    # Generator: its objective against the updated D.
    def g_loss_fn(output):
        logits, cols = p.discriminate(disc.replace(collections=d_cols), d_params, output)
        total, terms = p.g_objective(output, logits)
        return total, (cols, terms)

    (g_loss, (d_cols, g_terms)), d_output = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = g_vjp(d_output)

    finite = base.all_finite(d_loss, g_loss, d_grads, g_grads)
    nets = base.commit_if_finite(
        finite, state.nets, txs=txs, grads={"generator": g_grads},
        updated={"discriminator": (d_params, d_opt_state)},
        collections={"generator": g_cols, "discriminator": d_cols})
    return state.replace(step=state.step + 1, nets=nets), _metrics(d_loss, g_loss, finite,
                                                                    g_terms)


def _simultaneous(state, txs, p: GanParts):
    gen, disc = state.nets["generator"], state.nets["discriminator"]

    def both_losses(g_params, d_params):
        fake, g_cols = p.generate(g_params)
        real_logits, d_cols = p.discriminate(disc, d_params, p.real)
        fake_logits, d_cols = p.discriminate(disc.replace(collections=d_cols), d_params, fake)
        g_loss, terms = p.g_objective(fake, fake_logits)
        d_loss = losses.discriminator_loss(real_logits, fake_logits, p.gan_kind, p.d_scale)
        return (g_loss, d_loss), (g_cols, d_cols, terms)

    (g_loss, d_loss), vjp, (g_cols, d_cols, g_terms) = jax.vjp(
        both_losses, gen.params, disc.params, has_aux=True)
    one, zero = jnp.ones((), g_loss.dtype), jnp.zeros((), d_loss.dtype)
    g_grads, _ = vjp((one, zero))
    _, d_grads = vjp((zero, one))
    finite = base.all_finite(d_loss, g_loss, d_grads, g_grads)
    nets = base.commit_if_finite(
        finite, state.nets, txs=txs, grads={"generator": g_grads, "discriminator": d_grads},
        collections={"generator": g_cols, "discriminator": d_cols})
    return state.replace(step=state.step + 1, nets=nets), _metrics(d_loss, g_loss, finite,
                                                                    g_terms)
