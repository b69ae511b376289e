"""Optimisers and the papers' learning-rate schedules, with durations in steps or epochs.

Every duration in the config comes as a ``*_steps`` / ``*_epochs`` pair of which exactly one is
set; ``resolve_steps`` turns it into steps given the epoch length.

Schedules (``optim.schedule``); a schedule whose durations are given in epochs changes the
rate once per epoch, as a PyTorch scheduler stepped once per epoch does; one given in steps
changes it every step:

* ``constant``: ``lr``.
* ``linear_decay`` (pix2pix ``lr_policy='linear'``): ``constant`` units at ``lr``, then
  ``lr * (1 - (u + 1 - constant) / (decay + 1))`` in unit ``u`` (0-based), the canonical
  ``LambdaLR`` rule ``1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1)``
  with ``epoch_count = 1``; the last of 100 + 100 epochs runs at ``lr / 101``.
* ``step``: ``lr`` times ``decay_factor`` at each of ``boundaries_steps``.
* ``warmup_cosine_restarts`` (UnVeilify): a warm-up of ``warmup`` units, then PyTorch's
  ``CosineAnnealingWarmRestarts(T_0=restart_period, T_mult=restart_mult,
  eta_min=min_lr)``: ``min_lr + (lr - min_lr) * (1 + cos(pi * T_cur / T_i)) / 2``.
  ``warmup_shape``: ``linear`` (unit ``u`` runs at ``lr * (u + 1) / warmup``) or ``exp10``
  (UnVeilify's ``LambdaLR(lambda u: 1 / 10 ** (warmup - u))`` before its ``SequentialLR``
  milestone: ``lr * 10 ** (u - warmup)``, i.e. lr/1e5 ... lr/10 over 5 epochs).

Per-network optimisers: ``optim`` holds the defaults; ``optim.networks.<name>`` overrides any
of ``lr, b1, b2, eps, schedule`` and the duration keys for one network (a ``None`` keeps the
default). ``for_network(cfg, name, steps_per_epoch)`` builds that network's Adam.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "linear_decay", "step", "warmup_cosine_restarts")
#: Keys a per-network override may set (``optim.networks.<name>.<key>``).
OVERRIDABLE = ("lr", "b1", "b2", "eps", "schedule", "constant_steps", "constant_epochs",
               "decay_steps", "decay_epochs", "boundaries_steps", "decay_factor",
               "warmup_steps", "warmup_epochs", "restart_period_steps",
               "restart_period_epochs", "restart_mult", "min_lr", "warmup_shape")
WARMUP_SHAPES = ("linear", "exp10")


def resolve_steps(cfg: Mapping[str, Any], name: str, steps_per_epoch: int,
                  required: bool = True) -> int | None:
    """Reads ``{name}_steps`` or ``{name}_epochs`` (exactly one set) as a number of steps."""
    steps = cfg.get(f"{name}_steps")
    epochs = cfg.get(f"{name}_epochs")
    if steps is not None and epochs is not None:
        raise ValueError(f"set either {name}_steps ({steps}) or {name}_epochs ({epochs}), "
                         "not both")
    if steps is not None:
        return int(steps)
    if epochs is not None:
        return int(round(float(epochs) * steps_per_epoch))
    if required:
        raise ValueError(f"one of {name}_steps or {name}_epochs must be set")
    return None


def _durations(cfg: Mapping[str, Any], names: tuple[str, ...], steps_per_epoch: int
               ) -> tuple[list[float], int]:
    """The durations ``names`` in one unit, and the unit's length in steps: all in epochs
    (unit = one epoch) or all in steps (unit = one step)."""
    in_epochs = [cfg.get(f"{n}_epochs") is not None for n in names]
    for n in names:
        resolve_steps(cfg, n, steps_per_epoch)  # exactly one of each pair
    if any(in_epochs) and not all(in_epochs):
        raise ValueError(f"schedule {cfg['schedule']!r}: give {', '.join(names)} all in "
                         "epochs or all in steps")
    if all(in_epochs):
        return [float(cfg[f"{n}_epochs"]) for n in names], max(1, steps_per_epoch)
    return [float(cfg[f"{n}_steps"]) for n in names], 1


def _linear_decay(lr: float, constant: float, decay: float, unit: int) -> optax.Schedule:
    def schedule(step):
        u = jnp.floor_divide(step, unit).astype(jnp.float32)
        factor = 1.0 - jnp.maximum(0.0, u + 1.0 - constant) / (decay + 1.0)
        return lr * jnp.maximum(factor, 0.0)
    return schedule


def _warmup_cosine_restarts(lr: float, warmup: float, period: float, mult: float,
                            min_lr: float, unit: int, shape: str = "linear") -> optax.Schedule:
    if period <= 0 or mult < 1:
        raise ValueError("restart_period must be > 0 and restart_mult >= 1")
    if shape not in WARMUP_SHAPES:
        raise ValueError(f"warmup_shape={shape!r}: choose one of {WARMUP_SHAPES}")

    def schedule(step):
        u = jnp.floor_divide(step, unit).astype(jnp.float32)
        if shape == "linear":
            warm = lr * (u + 1.0) / max(warmup, 1.0)
        else:
            warm = lr * 10.0 ** (u - warmup)
        t = u - warmup  # units since the end of the warm-up
        if mult == 1.0:
            cycle_start, t_i = jnp.floor(t / period) * period, jnp.asarray(period, jnp.float32)
        else:
            # Cycle n starts at period * (mult^n - 1) / (mult - 1).
            n = jnp.floor(jnp.log(t * (mult - 1.0) / period + 1.0) / math.log(mult))
            cycle_start = period * (mult ** n - 1.0) / (mult - 1.0)
            # Float rounding at a boundary: put t into the cycle it belongs to.
            n = jnp.where(t < cycle_start, n - 1.0, n)
            n = jnp.where(t >= period * (mult ** (n + 1.0) - 1.0) / (mult - 1.0), n + 1.0, n)
            cycle_start = period * (mult ** n - 1.0) / (mult - 1.0)
            t_i = period * mult ** n
        cos = min_lr + (lr - min_lr) * (1.0 + jnp.cos(jnp.pi * (t - cycle_start) / t_i)) / 2.0
        return jnp.where(u < warmup, warm, cos)
    return schedule


def learning_rate_schedule(cfg: Mapping[str, Any], steps_per_epoch: int) -> optax.Schedule:
    """The schedule named by ``cfg.schedule`` (see the module docstring)."""
    lr = float(cfg["lr"])
    kind = cfg["schedule"]
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "linear_decay":
        (constant, decay), unit = _durations(cfg, ("constant", "decay"), steps_per_epoch)
        return _linear_decay(lr, constant, decay, unit)
    if kind == "step":
        boundaries = [int(b) for b in cfg["boundaries_steps"]]
        factor = float(cfg["decay_factor"])
        return optax.piecewise_constant_schedule(lr, {b: factor for b in boundaries})
    if kind == "warmup_cosine_restarts":
        (warmup, period), unit = _durations(cfg, ("warmup", "restart_period"),
                                            steps_per_epoch)
        return _warmup_cosine_restarts(lr, warmup, period, float(cfg["restart_mult"]),
                                       float(cfg["min_lr"]), unit,
                                       cfg.get("warmup_shape") or "linear")
    raise ValueError(f"config.optim.schedule={kind!r}: choose one of {SCHEDULES}")


def network_settings(cfg: Mapping[str, Any], network: str) -> dict[str, Any]:
    """``cfg`` (config.optim) with ``cfg.networks.<network>``'s non-None keys applied."""
    settings = {k: v for k, v in dict(cfg).items() if k != "networks"}
    overrides = (cfg.get("networks") or {}).get(network) or {}
    unknown = sorted(set(dict(overrides)) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"config.optim.networks.{network}: unknown key(s) {unknown}; "
                         f"choose from {OVERRIDABLE}")
    for k, v in dict(overrides).items():
        if v is not None:
            settings[k] = v
    return settings


def adam(cfg: Mapping[str, Any], steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with the configured betas/eps and schedule (torch.optim.Adam semantics)."""
    return optax.adam(learning_rate_schedule(cfg, steps_per_epoch), b1=float(cfg["b1"]),
                      b2=float(cfg["b2"]), eps=float(cfg["eps"]))


def for_network(cfg: Mapping[str, Any], network: str, steps_per_epoch: int
                ) -> optax.GradientTransformation:
    """The Adam of one network: ``config.optim`` defaults plus its overrides."""
    return adam(network_settings(cfg, network), steps_per_epoch)
