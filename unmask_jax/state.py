"""The training state of any system, and creating, restoring and loading it.

``TrainState`` = step, RNG key data and a mapping ``nets`` of trained networks, each a
``NetState`` (parameters, mutable collections such as BatchNorm statistics, optimizer state).
This module is below the trainer: evaluation, export and prediction load a run's state here
and never import ``unmask_jax.train``.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

log = logging.getLogger(__name__)


class NetState(flax.struct.PyTreeNode):
    params: Any
    collections: Any  # {collection name: tree}, e.g. {"batch_stats": ...}; {} if none
    opt_state: Any

    @property
    def variables(self) -> dict[str, Any]:
        """Flax variables ``{"params", **collections}`` for ``module.apply``."""
        return {"params": self.params, **self.collections}


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    rng: jax.Array  # raw uint32 key data (checkpoint-friendly)
    nets: dict[str, NetState]

    def __getattr__(self, name: str) -> NetState:
        # state.generator == state.nets["generator"] (read-only convenience).
        nets = self.__dict__.get("nets")
        if nets is not None and name in nets:
            return nets[name]
        raise AttributeError(name)


def create_state(system, txs: Mapping[str, optax.GradientTransformation], seed: int,
                 resolution: int) -> TrainState:
    """Initial state (pure: jit it with the state sharding as ``out_shardings``)."""
    rng = jax.random.PRNGKey(seed)
    init_rng, train_rng = jax.random.split(rng)
    variables = system.init_variables(init_rng, resolution)
    nets = {}
    for name, v in variables.items():
        params = v["params"]
        collections = {k: c for k, c in v.items() if k != "params"}
        nets[name] = NetState(params=params, collections=collections,
                              opt_state=txs[name].init(params))
    return TrainState(step=jnp.zeros((), jnp.int32), rng=train_rng, nets=nets)


def init_pretrained(config, system, state: TrainState, sharding) -> TrainState:
    """A new run's initial variables from the weights files the config names: whole
    networks from PyTorch state dicts (``config.model.<network>_init``: ``.safetensors`` /
    ``.pt`` in the network's PyTorch layout), and parts such as a backbone through
    ``system.pretrained_variables``. Optimizer state is shape-only at step 0 and stays as
    initialised."""
    from etils import epath

    from unmask_jax import export

    nets = dict(state.nets)
    changed = False
    for name, (model_name, kwargs) in system.export_networks().items():
        path = config.model.get(f"{name}_init")
        if not path:
            variables = system.pretrained_variables(name, nets[name].variables)
            if variables is not None:
                changed = True
                nets[name] = nets[name].replace(
                    params=variables["params"],
                    collections={k: v for k, v in variables.items() if k != "params"})
            continue
        if not epath.Path(path).is_file():
            raise FileNotFoundError(f"config.model.{name}_init: no file {path}")
        template = jax.tree.map(np.asarray, jax.device_get(nets[name].variables))
        loaded = export.import_torch_state_dict(model_name, kwargs,
                                                export.io.load_state_dict(path), template)
        nets[name] = nets[name].replace(
            params=loaded["params"],
            collections={k: v for k, v in loaded.items() if k != "params"})
        changed = True
        log.warning("%s initialised from PyTorch weights %s (not the config's random init)",
                    name, path)
    return jax.device_put(state.replace(nets=nets), sharding) if changed else state


def load_state(config, workdir: str, step: int | None = None, *,
               check_config: bool = True):
    """The run's state at ``step`` (default latest) for evaluation, export and prediction.

    Returns (state, system, mesh). Raises FileNotFoundError naming the workdir when it holds
    no checkpoint, and ``checkpoints.CheckpointError`` for one this config cannot restore
    (with ``check_config``, also for a config whose networks differ from the recorded one).
    """
    from unmask_jax import checkpoints, parallel, systems

    manager = checkpoints.require_checkpoint(workdir)
    system = systems.build(config)
    mesh = parallel.make_data_mesh()
    txs = system.optimizers(1)
    template = jax.jit(functools.partial(create_state, system, txs, config.seed,
                                         config.data.resolution),
                       out_shardings=parallel.replicated_sharding(mesh))()
    if step is not None and step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint for step {step} in {workdir}; available: "
                                f"{sorted(manager.all_steps())}")
    state, _ = checkpoints.restore_latest(manager, template, None, step=step,
                                          config=config if check_config else None,
                                          system_keys=system.resume_safe_keys)
    return state, system, mesh
