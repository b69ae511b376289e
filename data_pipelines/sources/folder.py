"""Any folder of face images (searched recursively; .jpg .jpeg .png .bmp .webp).

Identities: none by default (identity -1, ``has_identities`` False); with
``identity_from="parent_dir"`` each distinct parent folder (path relative to the root) is
one identity, ids 0..K-1 from the sorted folder paths (images directly in the root get -1).

Split: a folder has no official split. ``test_fraction`` (default 0: there is no "test"
split, everything is "train"/"all") holds out a deterministic hash split
(``images.in_test_split``) of *groups* chosen by ``split_by``:

* ``"parent_dir"`` -- whole parent folders go to one side (identity-disjoint when a folder
  is one person); images directly in the root are split one by one;
* ``"file"`` -- file by file: images of one person in one folder can land on both sides,
  so test faces may have been seen in training;
* ``"auto"`` (default) -- ``"parent_dir"`` when ``identity_from="parent_dir"`` or when the
  folders look like one-folder-per-person: no image directly in the root and at least
  ``MIN_IDENTITY_FOLDERS`` (8) distinct parent folders; otherwise ``"file"``. The choice is
  logged and kept in ``split_by_resolved``. A few top-level folders (``male/``,
  ``female/``) are not identities, hence the threshold; force either mode when the guess
  is wrong.

``num_records`` (default None = all): keep at most that many records of the split, spread
over identities (or over the split groups without identities; ``subsets.spread_order``).

Landmarks: ``"auto"`` (default) / ``"dlib"`` -- landmark cache, else dlib on the fly;
``"template"`` -- fixed template for aligned crops; ``"none"``.

A ``mask_maps/`` folder at the root (written by the paired source) is not listed.
"""
from __future__ import annotations

import logging
import os
from pathlib import PurePosixPath

import numpy as np

from data_pipelines.sources.base import DatasetNotFoundError
from data_pipelines.sources.images import (DEFAULT_MIN_SIZE, ImageFileSource, check_split,
                                           empty_split_error, keep_for_split, list_images,
                                           make_landmark_strategy, require_dir)
from data_pipelines.subsets import limit_records

logger = logging.getLogger(__name__)

LANDMARK_MODES: tuple[str, ...] = ("auto", "dlib", "template", "none")
IDENTITY_MODES: tuple[str | None, ...] = (None, "none", "parent_dir")
SPLIT_BY_MODES: tuple[str, ...] = ("auto", "parent_dir", "file")
MIN_IDENTITY_FOLDERS = 8
SKIP_DIRS: tuple[str, ...] = ("mask_maps",)
EXPECTED = "image files (.jpg .jpeg .png .bmp .webp) anywhere under <root>"


class FolderSource(ImageFileSource):
    """Images under a folder (see module docstring)."""

    name = "folder"

    def __init__(self, data_dir: str | os.PathLike[str] | None, split: str = "train",
                 identity_from: str | None = None, test_fraction: float = 0.0,
                 landmarks: str = "auto", min_size: int = DEFAULT_MIN_SIZE,
                 cache_dir: str | None = None,
                 face_box: tuple[float, float, float, float] | None = None,
                 split_by: str = "auto", num_records: int | None = None) -> None:
        check_split("folder", split, test_fraction)
        if identity_from not in IDENTITY_MODES:
            raise ValueError(f"folder: unknown identity_from={identity_from!r}; choose None or "
                             "'parent_dir'")
        if split_by not in SPLIT_BY_MODES:
            raise ValueError(f"folder: unknown split_by={split_by!r}; choose one of "
                             f"{SPLIT_BY_MODES}")
        root = require_dir("folder", data_dir, EXPECTED)
        all_keys = list_images(root, recursive=True, skip_dirs=SKIP_DIRS)
        if not all_keys:
            raise DatasetNotFoundError(f"folder: no images found under {root}; expected {EXPECTED}")
        by_parent = identity_from == "parent_dir"
        parents = [str(PurePosixPath(k).parent) for k in all_keys]
        folders = sorted(set(parents) - {"."})
        folder_ids = {p: i for i, p in enumerate(folders)}
        if split_by == "auto":
            looks_like_people = "." not in parents and len(folders) >= MIN_IDENTITY_FOLDERS
            split_by = "parent_dir" if by_parent or looks_like_people else "file"
            if test_fraction > 0.0:
                logger.info("folder: %s split of %s by %s (split_by='auto': %d folders%s)",
                            split, root, "parent folder" if split_by == "parent_dir"
                            else "file", len(folders),
                            ", images in the root" if "." in parents else "")
        self.split_by_resolved = split_by
        keys: list[str] = []
        identities: list[int] = []
        groups: list[int] = []
        for key, parent in zip(all_keys, parents):
            split_name = parent if split_by == "parent_dir" and parent != "." else key
            if not keep_for_split(split_name, split, test_fraction):
                continue
            keys.append(key)
            identities.append(folder_ids.get(parent, -1) if by_parent else -1)
            groups.append(folder_ids.get(parent, -1) if split_by == "parent_dir" else -1)
        if not keys:
            raise empty_split_error("folder", split, test_fraction,
                                    f"among the {len(all_keys)} images under {root}")
        kept = limit_records(identities if by_parent else groups, num_records, "folder")
        if kept is not None:
            keys = [keys[i] for i in kept]
            identities = [identities[i] for i in kept]
        self.split = split
        self.landmarks_mode = landmarks
        strategy = make_landmark_strategy(landmarks, source_name=self.name, root=root,
                                          cache_dir=cache_dir, allowed=LANDMARK_MODES,
                                          face_box=face_box)
        super().__init__(root, keys, np.asarray(identities, dtype=np.int64), strategy,
                         min_size=min_size)
        self.identity_names = sorted(folder_ids, key=folder_ids.__getitem__) if by_parent else []
