"""Any folder of face images (searched recursively; .jpg .jpeg .png .bmp .webp).

Identities: none by default (identity -1, ``has_identities`` False); with
``identity_from="parent_dir"`` each distinct parent folder (path relative to the root) is
one identity, ids 0..K-1 from the sorted folder paths (images directly in the root get -1).

Split: a folder has no official split. ``test_fraction`` (default 0: everything is
"train"/"all") holds out a deterministic hash split (``images.in_test_split``) of the file
keys, or of the parent folders when identities come from them (identity-disjoint).

Landmarks: ``"auto"`` (default) / ``"dlib"`` -- landmark cache, else dlib on the fly;
``"template"`` -- fixed template for aligned crops; ``"none"``.

A ``mask_maps/`` folder at the root (written by the paired source) is not listed.
"""
from __future__ import annotations

import os
from pathlib import PurePosixPath

import numpy as np

from data_pipelines.sources.base import DatasetNotFoundError
from data_pipelines.sources.images import (DEFAULT_MIN_SIZE, ImageFileSource, check_split,
                                           keep_for_split, list_images, make_landmark_strategy,
                                           require_dir, split_hint)

LANDMARK_MODES: tuple[str, ...] = ("auto", "dlib", "template", "none")
IDENTITY_MODES: tuple[str | None, ...] = (None, "none", "parent_dir")
SKIP_DIRS: tuple[str, ...] = ("mask_maps",)
EXPECTED = "image files (.jpg .jpeg .png .bmp .webp) anywhere under <root>"


class FolderSource(ImageFileSource):
    """Images under a folder (see module docstring)."""

    name = "folder"

    def __init__(self, data_dir: str | os.PathLike[str] | None, split: str = "train",
                 identity_from: str | None = None, test_fraction: float = 0.0,
                 landmarks: str = "auto", min_size: int = DEFAULT_MIN_SIZE,
                 cache_dir: str | None = None,
                 face_box: tuple[float, float, float, float] | None = None) -> None:
        check_split("folder", split, test_fraction)
        if identity_from not in IDENTITY_MODES:
            raise ValueError(f"folder: unknown identity_from={identity_from!r}; choose None or "
                             "'parent_dir'")
        root = require_dir("folder", data_dir, EXPECTED)
        all_keys = list_images(root, recursive=True, skip_dirs=SKIP_DIRS)
        if not all_keys:
            raise DatasetNotFoundError(f"folder: no images found under {root}; expected {EXPECTED}")
        by_parent = identity_from == "parent_dir"
        parents = [str(PurePosixPath(k).parent) for k in all_keys]
        folder_ids = {p: i for i, p in enumerate(sorted(set(parents) - {"."}))}
        keys: list[str] = []
        identities: list[int] = []
        for key, parent in zip(all_keys, parents):
            split_name = parent if by_parent and parent != "." else key
            if not keep_for_split(split_name, split, test_fraction):
                continue
            keys.append(key)
            identities.append(folder_ids.get(parent, -1) if by_parent else -1)
        if not keys:
            raise DatasetNotFoundError(
                f"folder: split {split!r} (test_fraction={test_fraction}) is empty among the "
                f"{len(all_keys)} images under {root}{split_hint(test_fraction)}")
        self.split = split
        self.landmarks_mode = landmarks
        strategy = make_landmark_strategy(landmarks, source_name=self.name, root=root,
                                          cache_dir=cache_dir, allowed=LANDMARK_MODES,
                                          face_box=face_box)
        super().__init__(root, keys, np.asarray(identities, dtype=np.int64), strategy,
                         min_size=min_size)
        self.identity_names = sorted(folder_ids, key=folder_ids.__getitem__) if by_parent else []
