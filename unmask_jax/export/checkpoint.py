"""Run-level export and import: a training run's checkpoint <-> PyTorch weight files.

``--mode=export`` calls :func:`export_checkpoint`; ``config.model.generator_init`` /
``discriminator_init`` (a ``.safetensors`` or ``.pt`` state dict in the PyTorch layout of
the network, e.g. the canonical pix2pix one) make a new run start from PyTorch weights
through :func:`init_from_torch`.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from unmask_jax import export

log = logging.getLogger(__name__)

NETWORKS = ("generator", "discriminator")


def _model(config, network: str) -> tuple[str, dict[str, Any]]:
    return config.model[network], dict(config.model[f"{network}_kwargs"])


def export_checkpoint(config, workdir: str, export_dir: str | None = None, *,
                      write_pt: bool = False) -> dict[str, Any]:
    """Writes every network of the run's latest (or ``config.eval.checkpoint_step``)
    checkpoint as ``<network>.safetensors`` (+ ``.pt``) and ``manifest.json``.

    Raises FileNotFoundError for a workdir without a checkpoint and ValueError for a network
    that has no export mapping (naming it and the exportable ones).
    """
    from unmask_jax import train  # heavy; only for this mode

    for network in NETWORKS:
        name, _ = _model(config, network)
        if name not in export.exportable_models():
            raise ValueError(f"{network} {name!r} has no PyTorch export mapping; exportable: "
                             f"{export.exportable_models()}")
    state, _, _ = train.load_state(config, workdir, config.eval.checkpoint_step)
    out_dir = export_dir or os.path.join(workdir, "export")
    step = int(jax.device_get(state.step))
    entries = {}
    for network in NETWORKS:
        name, kwargs = _model(config, network)
        net_state = getattr(state, network)
        variables = jax.device_get({"params": net_state.params,
                                    "batch_stats": net_state.batch_stats})
        entries[network] = export.export_variables(
            network, name, kwargs, variables, out_dir, step=step,
            config_json=config.to_dict(), write_pt=write_pt)
        log.info("exported %s (%s -> %s, %d tensors) to %s", network, name,
                 entries[network]["torch_class"], entries[network]["num_tensors"], out_dir)
    return entries


def init_from_torch(config, variables: dict[str, Any]) -> dict[str, Any]:
    """Replaces networks' initial variables by the PyTorch state dicts the config names.

    ``variables``: {"generator": {"params", "batch_stats"}, "discriminator": {...}} (numpy or
    jax arrays). Returns the same structure; networks without an ``*_init`` path unchanged.
    """
    out = dict(variables)
    for network in NETWORKS:
        path = config.model.get(f"{network}_init")
        if not path:
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.model.{network}_init: no file {path}")
        name, kwargs = _model(config, network)
        template = jax.tree.map(np.asarray, jax.device_get(variables[network]))
        state_dict = export.io.load_state_dict(path)
        out[network] = export.import_torch_state_dict(name, kwargs, state_dict, template)
        log.warning("%s initialised from PyTorch weights %s (not the config's random init)",
                    network, path)
    return out
