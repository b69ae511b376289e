"""Reading and writing exported state dicts (.safetensors, .pt) and the JSON manifest.

Paths go through ``etils.epath`` (the path layer of the checkpoints): local folders and
``gs://`` buckets alike.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
from typing import Any, Mapping

import numpy as np
import safetensors.numpy
from etils import epath

MANIFEST_NAME = "manifest.json"
#: Top-level manifest key: config keys whose values are folders relative to the export
#: folder (an earlier stage's run exported beside it, e.g. ``model.segmenter_workdir``).
RELATIVE_KEYS = "config_paths_relative_to_this_folder"


class WeightsFolderError(Exception):
    """A weights folder (an export folder read as a run) that cannot be used: say why."""


def sha256_of(path: str) -> str:
    return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()


def is_weights_folder(path: str | os.PathLike | None) -> bool:
    """``path`` is an export folder (``manifest.json`` with networks) and holds no
    checkpoints: a finished run's weights, read by predict and export like a run."""
    if not path:
        return False
    p = epath.Path(path)
    return (p / MANIFEST_NAME).exists() and not (p / "checkpoints").exists()


def weights_folder_config(path: str | os.PathLike) -> dict:
    """The run config a weights folder recorded (every network records the same one), with
    the folder-relative config paths (:data:`RELATIVE_KEYS`) made absolute."""
    manifest = read_manifest(os.fspath(path))
    configs = [e.get("config") for e in manifest.get("networks", {}).values()]
    if not configs or configs[0] is None:
        raise WeightsFolderError(f"{os.fspath(path)}/{MANIFEST_NAME} records no config: it "
                                 "was written by an older version; export the run again")
    config = json.loads(json.dumps(configs[0]))
    root = os.path.abspath(os.fspath(path))
    for key in manifest.get(RELATIVE_KEYS, ()):
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) or {}
        if node.get(leaf):
            node[leaf] = os.path.join(root, node[leaf])
    return config


def weights_folder_networks(path: str | os.PathLike) -> dict[str, dict]:
    """network -> its manifest entry, after checking each file against its recorded
    sha256 (a changed or missing file is a :class:`WeightsFolderError`)."""
    manifest = read_manifest(os.fspath(path))
    out = {}
    for name, entry in manifest.get("networks", {}).items():
        file = epath.Path(path) / entry["files"]["safetensors"]
        if not file.exists():
            raise WeightsFolderError(f"{os.fspath(file)} is missing ({os.fspath(path)}/"
                                     f"{MANIFEST_NAME} lists it)")
        want = entry.get("sha256", {}).get("safetensors")
        if want and sha256_of(os.fspath(file)) != want:
            raise WeightsFolderError(f"{os.fspath(file)} does not match the sha256 its "
                                     f"manifest records ({want[:12]}...): the file changed")
        out[name] = dict(entry, path=os.fspath(file))
    return out


def save_safetensors(path: str, state_dict: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write a flat dict of numpy arrays (made contiguous) to ``path``."""
    # np.ascontiguousarray would turn 0-d arrays (num_batches_tracked) into shape (1,).
    tensors = {k: np.array(v, order="C", copy=True) for k, v in state_dict.items()}
    data = safetensors.numpy.save(tensors, metadata={k: str(v) for k, v in
                                                     (metadata or {}).items()})
    epath.Path(path).write_bytes(data)


def save_pt(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
    """Write a ``torch.save`` file of torch tensors (imports torch)."""
    import torch

    buffer = _io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, buffer)
    epath.Path(path).write_bytes(buffer.getvalue())


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a .safetensors or .pt state dict as numpy arrays."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return dict(safetensors.numpy.load(epath.Path(path).read_bytes()))
    if path.endswith((".pt", ".pth")):
        import torch

        sd = torch.load(_io.BytesIO(epath.Path(path).read_bytes()), map_location="cpu",
                        weights_only=True)
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}
    raise ValueError(f"unknown state dict format {path!r}: use .safetensors or .pt")


def read_manifest(out_dir: str) -> dict[str, Any]:
    """The manifest of an export directory ({"networks": {}} when there is none yet)."""
    path = epath.Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return {"format": "unmask-jax-torch-export/1", "networks": {}}
    return json.loads(path.read_text())


def update_manifest(out_dir: str, network_name: str, entry: Mapping[str, Any]) -> str:
    """Add/replace one network's entry in ``out_dir/manifest.json``; returns the path."""
    manifest = read_manifest(out_dir)
    manifest.setdefault("networks", {})[network_name] = dict(entry)
    return _write_manifest(out_dir, manifest)


def set_manifest_field(out_dir: str, key: str, value: Any) -> str:
    """Set one top-level field of ``out_dir/manifest.json``; returns the path."""
    manifest = read_manifest(out_dir)
    manifest[key] = value
    return _write_manifest(out_dir, manifest)


def _write_manifest(out_dir: str, manifest: Mapping[str, Any]) -> str:
    path = epath.Path(out_dir) / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    if path.parent.exists() and "://" not in os.fspath(path):
        tmp = path.parent / (MANIFEST_NAME + ".tmp")  # atomic on local disks
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)  # object stores: a single write is atomic
    return os.fspath(path)
