"""A system's jitted programs, with their shardings: the one home of how the train step and
the inference are compiled, for the trainer, ``--mode=compile`` and the benchmarks.

Both are jitted with ``System.jit`` for the platform of the mesh's devices (or an explicit
``platform``), over a 1-D ``data`` mesh: the batch split over every device of every process,
the frozen variables replicated, the training state as ``train.state_sharding`` lays it out
(:func:`unmask_jax.state.state_sharding`: replicated, or its large optimizer-state and
parameter arrays split over the devices). This module is below the trainer: it imports no
data pipeline, so a machine with only JAX, Flax and Optax can run the real step
(``benchmarks/accelerator.py``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import optax

from unmask_jax import parallel, state as state_lib


def make_train_step(system, txs, mesh, state_sharding, platform: str | None = None
                    ) -> Callable:
    """``system.train_step`` jitted (``system.jit``) for the mesh's devices: (state, batch,
    frozen) -> (state, metrics), explicit shardings, the state donated, the frozen variables
    an argument (not constants). ``--mode=compile`` lowers this same program for
    compile-only accelerator devices (its ``lower``). ``platform``: trace for this platform
    instead of the mesh's (``--mode=compile`` counts the target program's model FLOPs on a
    host device)."""
    if isinstance(state_sharding, state_lib.TrainState):
        txs = {name: sharded_updates(tx, state_sharding.nets[name], mesh)
               for name, tx in txs.items()}
    step = functools.partial(system.train_step, txs=txs)
    rep = parallel.replicated_sharding(mesh)
    return system.jit(step, platform=platform or parallel.mesh_platform(mesh),
                      in_shardings=(state_sharding, parallel.batch_sharding(mesh), rep),
                      out_shardings=(state_sharding, rep), donate_argnums=(0,))


def sharded_updates(tx: optax.GradientTransformation, net_sharding: Any, mesh
                    ) -> optax.GradientTransformation:
    """``tx`` with its gradients laid out as the split optimizer state and its updates as the
    parameters (``net_sharding``: a ``NetState`` of shardings, :func:`state.state_sharding`).

    The constraints ask for ZeRO's traffic: the gradient sum as a reduce-scatter (each
    device receives only its slice), the optimizer on the slice, and one all-gather that
    rebuilds replicated parameters (none for split ones). The compiler decides: on TPU v5e
    it keeps the all-reduce, slices it and adds the gathers, so the split layouts cost
    traffic there (docs/scale.md, "Efficiency"). A layout only: the same numbers. ``tx``
    itself when nothing is split."""
    if all(s.is_fully_replicated for s in jax.tree.leaves(net_sharding.opt_state)):
        return tx
    param_sharding = net_sharding.params

    def update(grads, opt_state, params=None):
        # A gradient is split as the optimizer-state arrays of its parameter's shape are.
        grads = jax.lax.with_sharding_constraint(grads, jax.tree.map(
            lambda g: parallel.split_over_data(g.shape, mesh), grads))
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.lax.with_sharding_constraint(updates, param_sharding), opt_state

    return optax.GradientTransformation(tx.init, update)


def make_predict(system, mesh, platform: str | None = None, **variant: Any) -> Callable:
    """``system.predict(state, batch, frozen, **variant)`` jitted for the mesh's devices:
    state and frozen variables replicated, the batch and the outputs split over the
    devices."""
    rep = parallel.replicated_sharding(mesh)
    batch_sh = parallel.batch_sharding(mesh)
    return system.jit(functools.partial(system.predict, **variant),
                      platform=platform or parallel.mesh_platform(mesh),
                      in_shardings=(rep, batch_sh, rep), out_shardings=batch_sh)
