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


#: ``train.state_sharding``: how the training state lies on a data-parallel mesh.
#: ``replicated``: every device holds all of it. ``optimizer`` (ZeRO-1): each device holds
#: and updates 1/N of every large optimizer-state array (Adam's moments); parameters stay
#: whole. ``full`` (ZeRO-3 / FSDP): the large parameters are split too, and gathered where a
#: layer uses them. The numbers are the same (elementwise updates; the gradient sums up to
#: float rounding), so checkpoints move between the three and between device counts. On TPU
#: v5e the split layouts save argument memory but add traffic (docs/scale.md, "Efficiency").
STATE_SHARDINGS = ("replicated", "optimizer", "full")


def state_sharding(state: TrainState, mesh, how: str) -> TrainState:
    """The sharding of every leaf of ``state`` (arrays or shapes) for ``how`` (one of
    :data:`STATE_SHARDINGS`): a tree with ``state``'s structure, for ``jit``'s in/out
    shardings, ``device_put`` and restore targets. Collections (BatchNorm statistics), the
    step and the RNG stay replicated."""
    from unmask_jax import parallel

    if how not in STATE_SHARDINGS:
        raise ValueError(f"train.state_sharding={how!r}: choose one of {STATE_SHARDINGS}")
    rep = parallel.replicated_sharding(mesh)

    def split(tree, on: bool):
        return jax.tree.map(lambda x: parallel.split_over_data(np.shape(x), mesh) if on
                            else rep, tree)

    nets = {name: NetState(params=split(net.params, how == "full"),
                           collections=split(net.collections, False),
                           opt_state=split(net.opt_state, how != "replicated"))
            for name, net in state.nets.items()}
    return TrainState(step=rep, rng=rep, nets=nets)


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


def abstract_state(config, system, sharding) -> TrainState:
    """The shapes, dtypes and ``sharding`` of a new state, as ``jax.ShapeDtypeStruct`` leaves:
    a restore target that costs no compilation (loading a run for evaluation or prediction
    starts in a fraction of a second instead of compiling every network's initialiser)."""
    txs = system.optimizers(1)
    shapes = jax.eval_shape(functools.partial(create_state, system, txs, config.seed,
                                              config.data.resolution))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)


def load_state(config, workdir: str, step: int | None = None, *,
               check_config: bool = True):
    """The run's state at ``step`` (default latest) for evaluation, export and prediction.

    ``workdir`` may also be a weights folder (an export folder: ``manifest.json`` and the
    networks' PyTorch-layout safetensors, e.g. ``weights/<name>``): the networks it holds are
    read from it (no optimizer state); any other (a discriminator left out) is zeros, which
    inference never reads.

    Returns (state, system, mesh). Raises FileNotFoundError naming the workdir when it holds
    no checkpoint, and ``checkpoints.CheckpointError`` for one this config cannot restore
    (with ``check_config``, also for a config whose networks differ from the recorded one).
    """
    from unmask_jax import checkpoints, parallel, systems
    from unmask_jax.export import io as export_io

    if export_io.is_weights_folder(workdir):
        return _load_weights_folder(config, workdir, check_config=check_config)
    manager = checkpoints.require_checkpoint(workdir)
    system = systems.build(config)
    mesh = parallel.make_data_mesh()
    template = abstract_state(config, system, parallel.replicated_sharding(mesh))
    if step is not None and step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint for step {step} in {workdir}; available: "
                                f"{sorted(manager.all_steps())}")
    state, _ = checkpoints.restore_latest(manager, template, None, step=step,
                                          config=config if check_config else None,
                                          system_keys=system.resume_safe_keys)
    return state, system, mesh


def _load_weights_folder(config, folder: str, *, check_config: bool):
    """``load_state`` for a weights folder (see there); its step is the exported one."""
    from unmask_jax import checkpoints, export, parallel, systems
    from unmask_jax.export import io as export_io

    try:
        entries = export_io.weights_folder_networks(folder)
        recorded = export_io.weights_folder_config(folder)
    except export_io.WeightsFolderError as e:
        raise checkpoints.CheckpointError(str(e)) from None
    if check_config:
        unsafe, _ = checkpoints.compare_configs(
            checkpoints.upgrade_recorded(recorded), config,
            systems.system_class(config).resume_safe_keys)
        unsafe = [c for c in unsafe if not c[0].startswith(("data.", "predict.", "eval."))]
        if unsafe:
            lines = "\n".join(f"  {k}: {a} (weights) -> {b} (now)" for k, a, b in unsafe)
            raise checkpoints.CheckpointError(
                f"the weights in {folder} were trained with other network settings:\n{lines}")
    system = systems.build(config)
    mesh = parallel.make_data_mesh()
    rep = parallel.replicated_sharding(mesh)
    template = abstract_state(config, system, rep)
    networks = system.export_networks()
    nets = {}
    steps = set()
    for name, entry in entries.items():
        if name not in networks:
            raise checkpoints.CheckpointError(
                f"{folder} holds a network {name!r} that this {system.name} system does not "
                f"have ({', '.join(networks)})")
        model_name, kwargs = networks[name]
        try:
            loaded = export.import_torch_state_dict(
                model_name, kwargs, export.io.load_state_dict(entry["path"]),
                template.nets[name].variables)
        except (KeyError, ValueError) as e:
            raise checkpoints.CheckpointError(
                f"{entry['path']} does not fit {name} ({model_name}): {e}") from None
        # Inference reads parameters and collections only: no optimizer state.
        nets[name] = NetState(params=loaded["params"], opt_state=(), collections={
            k: v for k, v in loaded.items() if k != "params"})
        steps.add(int(entry.get("step", 0)))
    for name, net in template.nets.items():  # not in the folder (a discriminator): zeros
        if name not in nets:
            zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), net.variables)
            nets[name] = NetState(params=zeros["params"], opt_state=(), collections={
                k: v for k, v in zeros.items() if k != "params"})
    step = max(steps) if steps else 0
    state = TrainState(step=np.asarray(step, np.int32),
                       rng=np.zeros(template.rng.shape, template.rng.dtype), nets=nets)
    log.info("weights folder %s: %s at step %d", folder, ", ".join(entries), step)
    return jax.device_put(state, rep), system, mesh
