"""Several face sources read as one: ``source="lfw+celeba"``.

The parts are named sources (``SOURCES``) joined with ``+``. Each part reads
``<data_dir>/<part>`` when that folder exists, else ``data_dir`` itself, and takes the
source options it accepts (an option no part accepts is refused at config time);
``num_records`` caps each part. Records keep their fields, with two changes that keep
them distinct: ``key`` is prefixed ``<part>:``, and the identity labels of each part are
shifted past those of the parts before it (unknown stays -1). ``index`` is the index in the
mixture.

Splits: a part that has no such split or no records in it (``UnknownSplitError``,
``EmptySplitError``: LFW has no "validation", this CelebA copy holds back its "test") is
left out of that split, and the log names it; when no part has the split, the first part's
error is raised. ``parts`` records which parts a split holds.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data_pipelines.sources.base import (EmptySplitError, Record, UnknownSplitError,
                                         record_identities)

logger = logging.getLogger(__name__)

SEPARATOR = "+"


def part_names(name: str) -> tuple[str, ...]:
    """``"lfw+celeba"`` -> ``("lfw", "celeba")``; a plain name gives itself."""
    return tuple(p.strip() for p in name.split(SEPARATOR))


def part_dir(data_dir: str | os.PathLike[str] | None, part: str):
    """Where part ``part`` reads: ``<data_dir>/<part>`` if that folder exists, else
    ``data_dir``."""
    if data_dir is None:
        return None
    candidate = os.path.join(os.fspath(data_dir), part)
    return candidate if os.path.isdir(candidate) else data_dir


class MixedSource:
    """The records of ``sources`` one after another (picklable)."""

    def __init__(self, names: Sequence[str], sources: Sequence[Any]) -> None:
        if not sources:
            raise ValueError("mixed source: no parts")
        self.parts = tuple(names)
        self.sources = list(sources)
        self.name = SEPARATOR.join(self.parts)
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])
        self.has_identities = any(getattr(s, "has_identities", False) for s in self.sources)
        # Each part's labels shifted past the largest label of the parts before it.
        self._id_offsets: list[int] = []
        ids, offset = [], 0
        for source in self.sources:
            part_ids = record_identities(source)
            self._id_offsets.append(offset)
            ids.append(np.where(part_ids >= 0, part_ids + offset, -1))
            offset += int(part_ids.max()) + 1 if len(part_ids) and part_ids.max() >= 0 else 0
        self.identities = np.concatenate(ids).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={len(s)}" for n, s in zip(self.parts, self.sources))
        return f"MixedSource({parts})"

    def _locate(self, index: int) -> tuple[int, int]:
        i = int(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} records")
        part = int(np.searchsorted(self._starts, i, side="right")) - 1
        return part, i - int(self._starts[part])

    def __getitem__(self, index: int) -> Record:
        part, local = self._locate(index)
        record = dict(self.sources[part][local])
        record["key"] = f"{self.parts[part]}:{record['key']}"
        record["index"] = int(self._starts[part]) + local
        identity = record.get("identity")
        if identity is not None and identity >= 0:
            record["identity"] = int(identity) + self._id_offsets[part]
        return record

    def identity_indices(self, identity: int) -> np.ndarray:
        return np.flatnonzero(self.identities == int(identity)).astype(np.int64)

    @property
    def num_identities(self) -> int:
        return int(len(np.unique(self.identities[self.identities >= 0])))


def make_mixed(name: str, build: Callable[..., Any], accepted: Callable[[str], tuple[str, ...]],
               *, data_dir, split: str, seed: int, resolution: int,
               **options: Any) -> MixedSource:
    """Build every part of ``name`` with ``build(part, data_dir=..., split=..., **its
    options)`` and join them; see the module docstring for splits."""
    names, sources, first_error = [], [], None
    for part in part_names(name):
        own = {k: v for k, v in options.items() if k in accepted(part)}
        try:
            sources.append(build(part, data_dir=part_dir(data_dir, part), split=split,
                                 seed=seed, resolution=resolution, **own))
            names.append(part)
        except (EmptySplitError, UnknownSplitError) as err:
            first_error = first_error or err
            logger.warning("%s: part %r has no %r split; the split holds the other parts",
                           name, part, split)
    if not sources:
        raise first_error
    return MixedSource(names, sources)
