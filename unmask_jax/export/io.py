"""Reading and writing exported state dicts (.safetensors, .pt) and the JSON manifest."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file

MANIFEST_NAME = "manifest.json"


def save_safetensors(path: str, state_dict: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write a flat dict of numpy arrays (made contiguous) to ``path``."""
    # np.ascontiguousarray would turn 0-d arrays (num_batches_tracked) into shape (1,).
    tensors = {k: np.array(v, order="C", copy=True) for k, v in state_dict.items()}
    save_file(tensors, path, metadata={k: str(v) for k, v in (metadata or {}).items()})


def save_pt(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
    """Write a ``torch.save`` file of torch tensors (imports torch)."""
    import torch

    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a .safetensors or .pt state dict as numpy arrays."""
    if path.endswith(".safetensors"):
        return dict(load_file(path))
    if path.endswith((".pt", ".pth")):
        import torch

        sd = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}
    raise ValueError(f"unknown state dict format {path!r}: use .safetensors or .pt")


def read_manifest(out_dir: str) -> dict[str, Any]:
    """The manifest of an export directory ({"networks": {}} when there is none yet)."""
    path = os.path.join(out_dir, MANIFEST_NAME)
    if not os.path.exists(path):
        return {"format": "unmask-jax-torch-export/1", "networks": {}}
    with open(path) as f:
        return json.load(f)


def update_manifest(out_dir: str, network_name: str, entry: Mapping[str, Any]) -> str:
    """Add/replace one network's entry in ``out_dir/manifest.json``; returns the path."""
    manifest = read_manifest(out_dir)
    manifest.setdefault("networks", {})[network_name] = dict(entry)
    path = os.path.join(out_dir, MANIFEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path
