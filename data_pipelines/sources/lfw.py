"""Labeled Faces in the Wild (LFW), read from its official folder layout.

Layout: ``<root>/<Person_Name>/<Person_Name>_NNNN.jpg`` (250x250 RGB JPEGs for the
original, funneled and deep-funneled releases). ``data_dir`` may be ``<root>`` itself or a
folder containing ``lfw/``, ``lfw-deepfunneled/`` or ``lfw_funneled/`` (first found).

Identities: one per person folder, integer ids 0..P-1 from the sorted names of *all* person
folders present (so ids do not depend on the split).

Split: LFW defines verification pairs, not a train/test split of images. This source makes
a deterministic, identity-disjoint split: a person is in "test" when the first 8 bytes of
sha256(person folder name), read as an unsigned integer and divided by 2**64, are below
``test_fraction`` (default 0.05), else in "train"; "all" keeps everybody
(``images.in_test_split``). The assignment of
a person never depends on which other people are present.

``num_records`` (default None = all): keep at most that many records of the split, spread
over the people (``subsets.spread_order``: one image of every person in a fixed hashed order
before anybody's second image), not the first N in alphabetical order. Deterministic; the
identity ids stay the global ones.

Landmarks: LFW has none. ``landmarks="auto"``/``"dlib"`` use the precomputed cache
(``python -m data_pipelines.landmarks --source=lfw --data_dir=...``) or detect on the fly;
``"template"`` places the fixed template (only sensible for funneled crops); ``"none"``
leaves them None for the pipeline.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data_pipelines.sources.base import DatasetNotFoundError
from data_pipelines.sources.images import (DEFAULT_MIN_SIZE, ImageFileSource, check_split,
                                           empty_split_error, is_image_file, keep_for_split,
                                           make_landmark_strategy, require_dir)
from data_pipelines.subsets import limit_records

LFW_SUBDIRS: tuple[str, ...] = ("lfw", "lfw-deepfunneled", "lfw_funneled", "lfw-funneled")
LANDMARK_MODES: tuple[str, ...] = ("auto", "dlib", "template", "none")
SPLITS: tuple[str, ...] = ("train", "test", "all")
EXPECTED = "<root>/<Name>/<Name>_0001.jpg (one folder per person)"


def _person_files(person_dir: Path) -> list[str]:
    try:
        names = os.listdir(person_dir)
    except OSError:
        return []
    return sorted(n for n in names if is_image_file(n))


def find_lfw_root(data_dir: Path) -> Path:
    """The folder holding the person folders (``data_dir`` or a known subfolder)."""
    for sub in LFW_SUBDIRS:
        candidate = data_dir / sub
        if candidate.is_dir():
            return candidate
    return data_dir


# Where the face sits in LFW deep-funneled 250x250 images, as (x0, y0, x1, y1) fractions of the
# MEAN_FACE_68 box: least-squares fit of the mean template to the mean of dlib's 68 landmarks
# on 58 random LFW images (4 px RMS; faces vary by ~9 px around it). Used by
# ``landmarks="template"``.
LFW_DEEPFUNNELED_FACE_BOX = (0.31, 0.38, 0.68, 0.76)


class LFWSource(ImageFileSource):
    """LFW images with folder identities (see module docstring)."""

    name = "lfw"

    def __init__(self, data_dir: str | os.PathLike[str] | None, split: str = "train",
                 test_fraction: float = 0.05, landmarks: str = "auto",
                 min_size: int = DEFAULT_MIN_SIZE, cache_dir: str | None = None,
                 face_box: tuple[float, float, float, float] | None = None,
                 num_records: int | None = None) -> None:
        check_split("lfw", split, test_fraction)
        root = find_lfw_root(require_dir("lfw", data_dir, EXPECTED))
        people = sorted(d.name for d in os.scandir(root)
                        if d.is_dir() and not d.name.startswith("."))
        keys: list[str] = []
        identities: list[int] = []
        num_people = 0
        for person_id, person in enumerate(people):
            files = _person_files(root / person)
            if not files:
                continue
            num_people += 1
            if not keep_for_split(person, split, test_fraction):
                continue
            keys.extend(f"{person}/{f}" for f in files)
            identities.extend([person_id] * len(files))
        if num_people == 0:
            raise DatasetNotFoundError(
                f"lfw: no person folders with images found under {root}; expected {EXPECTED}")
        if not keys:
            raise empty_split_error("lfw", split, test_fraction,
                                    f"among the {num_people} people under {root}")
        kept = limit_records(identities, num_records, "lfw")
        if kept is not None:
            keys = [keys[i] for i in kept]
            identities = [identities[i] for i in kept]
        self.split = split
        self.test_fraction = float(test_fraction)
        self.landmarks_mode = landmarks
        strategy = make_landmark_strategy(landmarks, source_name=self.name, root=root,
                                          cache_dir=cache_dir, allowed=LANDMARK_MODES,
                                          face_box=face_box or LFW_DEEPFUNNELED_FACE_BOX)
        super().__init__(root, keys, np.asarray(identities, dtype=np.int64), strategy,
                         min_size=min_size)
        self.people = people  # id -> name
