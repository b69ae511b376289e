"""Optimisers and the papers' learning-rate schedules, with durations in steps or epochs.

Every duration in the config comes as a ``*_steps`` / ``*_epochs`` pair of which exactly one is
set; ``resolve_steps`` turns it into steps given the epoch length.
"""
from __future__ import annotations

from typing import Any, Mapping

import optax

SCHEDULES = ("constant", "linear_decay", "step")


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


def learning_rate_schedule(cfg: Mapping[str, Any], steps_per_epoch: int) -> optax.Schedule:
    """The schedule named by ``cfg.schedule`` (see configs/default.py)."""
    lr = float(cfg["lr"])
    kind = cfg["schedule"]
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "linear_decay":
        # pix2pix "linear" policy: constant for N steps, then linearly to 0 over M steps.
        constant = resolve_steps(cfg, "constant", steps_per_epoch)
        decay = resolve_steps(cfg, "decay", steps_per_epoch)
        return optax.join_schedules(
            [optax.constant_schedule(lr), optax.linear_schedule(lr, 0.0, max(decay, 1))],
            boundaries=[constant])
    if kind == "step":
        boundaries = [int(b) for b in cfg["boundaries_steps"]]
        factor = float(cfg["decay_factor"])
        return optax.piecewise_constant_schedule(lr, {b: factor for b in boundaries})
    raise ValueError(f"config.optim.schedule={kind!r}: choose one of {SCHEDULES}")


def adam(cfg: Mapping[str, Any], steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with the configured betas/eps and schedule (torch.optim.Adam semantics)."""
    return optax.adam(learning_rate_schedule(cfg, steps_per_epoch), b1=float(cfg["b1"]),
                      b2=float(cfg["b2"]), eps=float(cfg["eps"]))
