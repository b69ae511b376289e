"""Export Flax networks to PyTorch (and import PyTorch weights back), with parity.

``export_variables`` writes ``<out_dir>/<network>.safetensors`` (optionally ``.pt``) and
adds an entry to ``<out_dir>/manifest.json``: target PyTorch class and constructor
arguments, input normalisation, checkpoint step, config. pix2pix networks use the canonical
PyTorch layout (``keys/pix2pix_*.txt``: loads with ``strict=True`` into
``UnetGenerator(3, 3, 8, ngf=64, norm_layer=BatchNorm2d, use_dropout=True)`` and
``NLayerDiscriminator(6, 64, 3)``); the TF-tutorial networks target the project's own
modules in :mod:`unmask_jax.export.torch_modules`. UnVeilify's networks target the reference
layout (``keys/unveilify_*.txt``) through :mod:`unmask_jax.export.unveilify` and the twins in
:mod:`unmask_jax.export.torch_unveilify`; :func:`export_checkpoint` also writes the combined
``mask_remover`` state dict there.

Only :func:`build_torch_module` and :func:`load_torch_module` import torch.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Mapping

import numpy as np
from etils import epath

from unmask_jax.export import io, keymaps
from unmask_jax.export import unveilify  # noqa: F401  (registers the UnVeilify key maps)
from unmask_jax.export.keymaps import KEYMAPS, ExportError, TorchTarget

KEYS_DIR = os.path.join(os.path.dirname(__file__), "keys")


def exportable_models() -> list[str]:
    """Model names (registry names) that have a PyTorch mapping."""
    return sorted(KEYMAPS)


def _json_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in model_kwargs.items():
        out[k] = v if isinstance(v, (bool, int, float, str, type(None))) else str(
            np.dtype(v) if _is_dtype(v) else v)
    return out


def _is_dtype(v: Any) -> bool:
    try:
        np.dtype(v)
        return True
    except TypeError:
        return False


def export_variables(network_name: str, model_name: str, model_kwargs: Mapping[str, Any],
                     variables: Mapping[str, Any], out_dir: str, *, step: int,
                     config_json: Mapping[str, Any] | None = None, write_pt: bool = False,
                     input_normalisation: str | None = None) -> dict[str, Any]:
    """Write one network's weights in PyTorch layout and return its manifest entry.

    Args:
      network_name: file stem and manifest key, e.g. "generator".
      model_name: registry name (``unmask_jax.models.MODELS``), e.g. "pix2pix_unet".
      model_kwargs: the kwargs the Flax module was created with (dtype etc. allowed).
      variables: ``{"params": ..., "batch_stats": ...}`` (any float dtype; written fp32).
      out_dir: created if missing.
      step: checkpoint step (also written as BN ``num_batches_tracked``).
      config_json: the run config (JSON-serialisable) to record.
      write_pt: also write ``<network>.pt`` (needs torch).
      input_normalisation: overrides the model family's default description.
    """
    keymap = keymaps.get_keymap(model_name)
    target = keymaps.torch_target(model_name, model_kwargs, variables)
    state_dict = keymaps.flax_to_torch(model_name, model_kwargs, variables,
                                       num_batches_tracked=int(step))
    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)  # local or gs://
    files = {"safetensors": f"{network_name}.safetensors"}
    save_path = os.fspath(epath.Path(out_dir) / files["safetensors"])
    io.save_safetensors(save_path, state_dict, metadata={
        "network": network_name, "model": model_name, "torch_class": target.torch_class,
        "step": int(step)})
    if write_pt:
        files["pt"] = f"{network_name}.pt"
        io.save_pt(os.fspath(epath.Path(out_dir) / files["pt"]), state_dict)
    entry = {
        "network": network_name,
        "flax_model": model_name,
        "flax_model_kwargs": _json_kwargs(model_kwargs),
        "torch_class": target.torch_class,
        "torch_reference": target.reference,
        "torch_module": target.module,
        "constructor_args": target.constructor_args,
        "input_normalisation": input_normalisation or keymap.input_normalisation,
        "layout": "NCHW",
        "dtype": "float32",
        "step": int(step),
        "num_tensors": len(state_dict),
        "num_parameters": int(sum(v.size for k, v in state_dict.items()
                                  if not k.endswith(("running_mean", "running_var",
                                                     "num_batches_tracked")))),
        "files": files,
        "sha256": {kind: io.sha256_of(os.fspath(epath.Path(out_dir) / name))
                   for kind, name in files.items()},
        "config": dict(config_json) if config_json is not None else None,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    io.update_manifest(out_dir, network_name, entry)
    return entry


def import_torch_state_dict(model_name: str, model_kwargs: Mapping[str, Any],
                            state_dict: Mapping[str, Any],
                            variables_template: Mapping[str, Any]) -> dict[str, Any]:
    """PyTorch state dict (tensors or arrays) -> Flax variables like ``variables_template``."""
    return keymaps.torch_to_flax(model_name, model_kwargs, state_dict, variables_template)


#: Project modules that define PyTorch twins, searched in this order by class name.
TORCH_MODULES = ("unmask_jax.export.torch_modules", "unmask_jax.export.torch_unveilify")


def build_torch_module(torch_class: str, constructor_args: Mapping[str, Any],
                       torch_module: str | None = None):
    """Instantiate the PyTorch module named in a manifest entry (imports torch).

    ``torch_module`` (the manifest's ``torch_module``) names the defining module; without
    it the project's modules (:data:`TORCH_MODULES`) are searched by class name."""
    import importlib

    import torch

    if torch_module is not None and torch_module not in TORCH_MODULES:
        raise ExportError(f"unknown torch module {torch_module!r}; choices: {TORCH_MODULES}")
    for name in ((torch_module,) if torch_module else TORCH_MODULES):
        torch_modules = importlib.import_module(name)
        if hasattr(torch_modules, torch_class):
            break

    args = dict(constructor_args)
    if "norm_layer" in args:
        norm = args.pop("norm_layer")
        table = {"BatchNorm2d": torch.nn.BatchNorm2d, "InstanceNorm2d": torch.nn.InstanceNorm2d,
                 "none": lambda _channels: torch.nn.Identity()}
        if norm not in table:
            raise ExportError(f"unknown norm_layer {norm!r}; choices: {sorted(table)}")
        args["norm_layer"] = table[norm]
    cls = getattr(torch_modules, torch_class, None)
    if cls is None:
        raise ExportError(f"no PyTorch class {torch_class!r} in "
                          f"{torch_module or TORCH_MODULES}")
    return cls(**args)


def load_torch_module(out_dir: str, network_name: str, *, strict: bool = True):
    """Build the exported network's torch module, load its weights (strict) and eval()."""
    import torch

    entry = io.read_manifest(out_dir)["networks"].get(network_name)
    if entry is None:
        raise ExportError(f"no network {network_name!r} in {out_dir}/{io.MANIFEST_NAME}")
    module = build_torch_module(entry["torch_class"], entry["constructor_args"],
                                entry.get("torch_module"))
    sd = io.load_state_dict(os.fspath(epath.Path(out_dir) / entry["files"]["safetensors"]))
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                           strict=strict)
    return module.eval()


def read_key_list(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """A reference key list ``keys/<name>.txt`` as (key, shape) pairs."""
    pairs = []
    with open(os.path.join(KEYS_DIR, f"{name}.txt")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            key, shape = line.split(" ", 1)
            dims = shape.strip("()").replace(" ", "")
            pairs.append((key, tuple(int(d) for d in dims.split(",") if d)))
    return pairs


__all__ = [
    "ExportError",
    "TorchTarget",
    "exportable_models",
    "export_variables",
    "import_torch_state_dict",
    "build_torch_module",
    "load_torch_module",
    "read_key_list",
]
