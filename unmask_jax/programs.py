"""A system's jitted programs, with their shardings: the one home of how the train step and
the inference are compiled, for the trainer, ``--mode=compile`` and the benchmarks.

Both are jitted with ``System.jit`` for the platform of the mesh's devices (or an explicit
``platform``), over a 1-D ``data`` mesh: state and frozen variables replicated, the batch
split over every device of every process. This module is below the trainer: it imports no
data pipeline, so a machine with only JAX, Flax and Optax can run the real step
(``benchmarks/accelerator.py``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from unmask_jax import parallel


def make_train_step(system, txs, mesh, state_sharding, platform: str | None = None
                    ) -> Callable:
    """``system.train_step`` jitted (``system.jit``) for the mesh's devices: (state, batch,
    frozen) -> (state, metrics), explicit shardings, the state donated, the frozen variables
    an argument (not constants). ``--mode=compile`` lowers this same program for
    compile-only accelerator devices (its ``lower``). ``platform``: trace for this platform
    instead of the mesh's (``--mode=compile`` counts the target program's model FLOPs on a
    host device)."""
    step = functools.partial(system.train_step, txs=txs)
    rep = parallel.replicated_sharding(mesh)
    return system.jit(step, platform=platform or parallel.mesh_platform(mesh),
                      in_shardings=(state_sharding, parallel.batch_sharding(mesh), rep),
                      out_shardings=(state_sharding, rep), donate_argnums=(0,))


def make_predict(system, mesh, platform: str | None = None, **variant: Any) -> Callable:
    """``system.predict(state, batch, frozen, **variant)`` jitted for the mesh's devices:
    state and frozen variables replicated, the batch and the outputs split over the
    devices."""
    rep = parallel.replicated_sharding(mesh)
    batch_sh = parallel.batch_sharding(mesh)
    return system.jit(functools.partial(system.predict, **variant),
                      platform=platform or parallel.mesh_platform(mesh),
                      in_shardings=(rep, batch_sh, rep), out_shardings=batch_sh)
