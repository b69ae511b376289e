"""Run-level export: a training run's checkpoint -> PyTorch weight files (UnVeilify's
``generator`` is the reference's whole ``MaskRemover``: pSp encoder and generator).

``--mode=export`` calls :func:`export_checkpoint`. (The reverse, starting a run from PyTorch
weights named by ``config.model.<network>_init``, is ``unmask_jax.state.init_pretrained``.)
Paths may be local or ``gs://`` (``etils.epath``, as for checkpoints).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
from etils import epath

from unmask_jax import export, state as state_lib

log = logging.getLogger(__name__)


def export_checkpoint(config, workdir: str, export_dir: str | None = None, *,
                      write_pt: bool = False) -> dict[str, Any]:
    """Writes every trained network of the run's latest (or ``config.eval.checkpoint_step``)
    checkpoint as ``<network>.safetensors`` (+ ``.pt``) and ``manifest.json``.

    Raises FileNotFoundError for a workdir without a checkpoint and ValueError for a network
    that has no export mapping (naming it and the exportable ones).
    """
    from unmask_jax import systems

    networks = systems.build(config).export_networks()
    for network, (name, _) in networks.items():
        if name not in export.exportable_models():
            raise ValueError(f"{network} {name!r} has no PyTorch export mapping; exportable: "
                             f"{export.exportable_models()}")
    state, _, _ = state_lib.load_state(config, workdir, config.eval.checkpoint_step)
    out_dir = export_dir or os.fspath(epath.Path(workdir) / "export")
    step = int(jax.device_get(state.step))
    entries = {}
    for network, (name, kwargs) in networks.items():
        variables = jax.device_get(state.nets[network].variables)
        entries[network] = export.export_variables(
            network, name, kwargs, variables, out_dir, step=step,
            config_json=config.to_dict(), write_pt=write_pt)
        log.info("exported %s (%s -> %s, %d tensors) to %s", network, name,
                 entries[network]["torch_class"], entries[network]["num_tensors"], out_dir)
    return entries
