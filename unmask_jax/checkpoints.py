"""Orbax checkpoints of the whole run: train state, Grain iterator state, run metadata.

Layout: ``<workdir>/checkpoints/<step>/{state,data,meta}``. ``state`` is the TrainState pytree
(written collectively by all processes, works on local paths and ``gs://``); ``data`` is each
process's Grain iterator position; ``meta`` records the process count, so that a restore onto a
different number of processes can say what happens to the data position (it restarts, because
Grain iterator states are per process shard).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str) -> epath.Path:
    return epath.Path(workdir) / "checkpoints"


def make_manager(workdir: str, config=None, *, read_only: bool = False
                 ) -> ocp.CheckpointManager:
    keep = 3 if config is None else int(config.train.max_checkpoints_to_keep)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           read_only=read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=("state", "data", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter=None) -> None:
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave({"process_count": jax.process_count(), "step": step})}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    manager.save(step, args=ocp.args.Composite(**items), force=True)


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding targets for a restore onto the current topology."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


def restore_latest(manager: ocp.CheckpointManager, state: Any, data_iter=None,
                   step: int | None = None) -> tuple[Any, bool]:
    """Restores ``step`` (default: latest) into the shapes/shardings of ``state``.

    Returns (state, restored?). The data iterator is restored in place when the checkpoint was
    written by the same number of processes; otherwise it keeps its fresh position and a
    warning says so.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return state, False
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    items = {"state": ocp.args.StandardRestore(abstract_like(state))}
    same_topology = meta.get("process_count") == jax.process_count()
    if data_iter is not None and same_topology:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    elif data_iter is not None:
        log.warning("checkpoint step %d was written by %s processes, this run has %d: model "
                    "and optimizer state are restored, the data iterator is NOT (Grain "
                    "iterator states are per process shard); the data stream restarts from "
                    "its seeded beginning", step, meta.get("process_count"),
                    jax.process_count())
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], True


def require_checkpoint(workdir: str) -> ocp.CheckpointManager:
    """A read-only manager for a workdir that must hold a checkpoint (evaluate, export)."""
    path = checkpoint_dir(workdir)
    if not path.exists() or not any(p.name.isdigit() for p in path.iterdir()):
        raise FileNotFoundError(
            f"no checkpoint in {os.fspath(path)}: train first with --mode=train "
            f"--workdir={workdir}")
    return make_manager(workdir, read_only=True)
