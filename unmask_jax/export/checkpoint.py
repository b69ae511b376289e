"""Run-level export: a training run's checkpoint -> PyTorch weight files (UnVeilify's
``generator`` is the reference's whole ``MaskRemover``: pSp encoder and generator), and with
``write_onnx`` an ONNX file beside each (:mod:`unmask_jax.export.onnx_export`).

``--mode=export`` calls :func:`export_checkpoint`. (The reverse, starting a run from PyTorch
weights named by ``config.model.<network>_init``, is ``unmask_jax.state.init_pretrained``.)
Paths may be local or ``gs://`` (``etils.epath``, as for checkpoints).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import jax
from etils import epath

from unmask_jax import export, state as state_lib
from unmask_jax.export import onnx_export

log = logging.getLogger(__name__)


def export_checkpoint(config, workdir: str, export_dir: str | None = None, *,
                      write_pt: bool = False, write_onnx: bool = False,
                      networks: Sequence[str] | None = None,
                      linked_runs: bool = True) -> dict[str, Any]:
    """Writes the trained networks (all, or ``networks``) of the run's latest (or
    ``config.eval.checkpoint_step``) checkpoint as ``<network>.safetensors`` (+ ``.pt``) and
    ``manifest.json``: a weights folder, which predict and export read like a run. A weights
    folder given as ``workdir`` exports the networks it holds (the others would be zeros).

    With ``write_onnx`` each network is also written as ``<network>.onnx``, checked with
    onnxruntime against the Flax network and listed in the manifest
    (:func:`unmask_jax.export.onnx_export.add_onnx`).

    With ``linked_runs``, every run the config reads from (a config value naming a folder
    that holds a checkpoint or weights, e.g. ``model.segmenter_workdir``: an earlier stage) is
    exported too, into the subfolder named after the key's last part, and the recorded key
    names that subfolder relative to the export folder (``io.RELATIVE_KEYS``), so the folder
    is complete on its own.

    Raises FileNotFoundError for a workdir without a checkpoint and ValueError for a network
    that has no export mapping (naming it and the exportable ones) or is not in the run, and
    with ``write_onnx`` for a missing ONNX package, a network without an ONNX export or an
    ONNX file that does not match the Flax network (``onnx_export``'s errors).
    """
    from unmask_jax import checkpoints, systems

    exportable = systems.build(config).export_networks()
    if export.io.is_weights_folder(workdir):
        exportable = {n: v for n, v in exportable.items()
                      if n in export.io.read_manifest(workdir)["networks"]}
    unknown = sorted(set(networks or ()) - set(exportable))
    if unknown:
        raise ValueError(f"--export_networks: {', '.join(unknown)} not in this run; it has "
                         f"{', '.join(exportable)}")
    chosen = {n: v for n, v in exportable.items() if not networks or n in networks}
    for network, (name, _) in chosen.items():
        if name not in export.exportable_models():
            raise ValueError(f"{network} {name!r} has no PyTorch export mapping; exportable: "
                             f"{export.exportable_models()}")
    if write_onnx:  # before writing anything
        onnx_export.require_onnx()
        for network, (name, _) in chosen.items():
            onnx_export.check_supported(name, network)
    state, system, _ = state_lib.load_state(config, workdir, config.eval.checkpoint_step)
    out_dir = export_dir or os.fspath(epath.Path(workdir) / "export")
    step = int(jax.device_get(state.step))
    config_json = config.to_dict()
    relative = []
    if linked_runs:
        for key, value in checkpoints.flatten(checkpoints.config_to_json(config)).items():
            if not (isinstance(value, str) and value and _is_run(value)):
                continue
            sub = key.rsplit(".", 1)[-1].removesuffix("_workdir")
            from ml_collections import config_dict
            linked = config_dict.ConfigDict(checkpoints.recorded_config(value))
            log.info("exporting the run %s names (%s) into %s/%s", key, value, out_dir, sub)
            export_checkpoint(linked, value, os.fspath(epath.Path(out_dir) / sub),
                              write_pt=write_pt, write_onnx=write_onnx)
            _set_key(config_json, key, sub)
            relative.append(key)
    entries = {}
    for network, (name, kwargs) in chosen.items():
        variables = jax.device_get(state.nets[network].variables)
        entries[network] = export.export_variables(
            network, name, kwargs, variables, out_dir, step=step,
            config_json=config_json, write_pt=write_pt)
        log.info("exported %s (%s -> %s, %d tensors) to %s", network, name,
                 entries[network]["torch_class"], entries[network]["num_tensors"], out_dir)
        if write_onnx:
            entries[network] = _add_onnx(out_dir, network, name, kwargs, variables,
                                         system.networks[network].input_shapes(
                                             int(config.data.resolution)))
    export.io.set_manifest_field(out_dir, export.io.RELATIVE_KEYS, relative)
    return entries


def _add_onnx(out_dir: str, network: str, name: str, kwargs: dict[str, Any], variables: Any,
              input_shapes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Writes and checks ``<network>.onnx`` beside its .safetensors and logs the check;
    returns the network's updated manifest entry."""
    record = onnx_export.add_onnx(out_dir, network,
                                  onnx_export.flax_reference(name, kwargs, variables),
                                  input_shapes)
    log.info("exported %s to ONNX: %s.onnx (opset %d, %s %s -> %s %s), onnxruntime %s vs "
             "Flax: max|diff|/max|ref| = %.2e (batches %s, tolerance %g)", network, network,
             record["opset"], record["input_names"], record["input_shapes"],
             record["output_names"], record["output_shapes"], record["onnxruntime"],
             record["parity"]["max_abs_diff_over_max_abs_ref"],
             ", ".join(record["parity"]["per_batch"]), record["parity"]["tolerance"])
    return export.io.read_manifest(out_dir)["networks"][network]


def _is_run(path: str) -> bool:
    """``path`` is a folder holding a run's checkpoints or a weights folder."""
    from unmask_jax import checkpoints
    try:
        p = epath.Path(path)
        if not p.is_dir():
            return False
        ckpt = checkpoints.checkpoint_dir(path)
        return export.io.is_weights_folder(path) or (
            ckpt.exists() and any(c.name.isdigit() for c in ckpt.iterdir()))
    except (OSError, ValueError):
        return False


def _set_key(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value
