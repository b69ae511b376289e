"""Reading and writing exported state dicts (.safetensors, .pt) and the JSON manifest.

Paths go through ``etils.epath`` (the path layer of the checkpoints): local folders and
``gs://`` buckets alike.
"""

from __future__ import annotations

import io as _io
import json
import os
from typing import Any, Mapping

import numpy as np
import safetensors.numpy
from etils import epath

MANIFEST_NAME = "manifest.json"


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
    path = epath.Path(out_dir) / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    if path.parent.exists() and "://" not in os.fspath(path):
        tmp = path.parent / (MANIFEST_NAME + ".tmp")  # atomic on local disks
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)  # object stores: a single write is atomic
    return os.fspath(path)
