"""The contract every face source fulfils.

A source is a random-access, picklable object (Grain workers pickle it):

* ``len(source)`` -- number of records.
* ``source[i]`` -> ``Record`` dict (see below). Reading must not raise on bad files:
  it returns a record whose ``error`` field names the problem, and the pipeline skips and
  counts it.
* ``source.identity_indices(identity) -> np.ndarray`` of record indices of that identity
  (for identity-conditioned models), and ``source.has_identities``.
* ``source.name`` -- short name for logs.

Record fields:

``image``      uint8 (H, W, 3) RGB, or None when ``error`` is set.
``landmarks``  float32 (68, 2) x, y in pixels of ``image`` (iBUG/dlib 68 convention), or
               None when unknown (the pipeline then detects/looks up per its config).
``landmark_source`` str: "dataset", "dataset5", "synthetic", "dlib", "cache", "template", "".
``identity``   int64 identity label, -1 when unknown.
``index``      int record index in the source.
``key``        str stable name (relative file path or "synthetic/<seed>/<index>").
``error``      str, "" when the record is good; otherwise a short reason
               ("corrupt", "too_small", "no_face", ...).
``target``     (paired sources only) uint8 (H, W, 3) unmasked image; then ``image`` is the
               masked one and ``mask`` uint8 (H, W) {0,1} is the stored mask map.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

Record = dict[str, Any]


class FaceSource(Protocol):
    name: str
    has_identities: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...

    def identity_indices(self, identity: int) -> np.ndarray: ...


def error_record(index: int, key: str, reason: str) -> Record:
    """A record for an input that cannot be used; the pipeline skips and counts it."""
    return {
        "image": None, "landmarks": None, "landmark_source": "",
        "identity": -1, "index": int(index), "key": key, "error": reason,
    }


def record_identities(source) -> np.ndarray:
    """int64 (len(source),) identity label of every record without reading any (-1 =
    unknown): the ``identities`` array of file sources, else rebuilt from
    ``identity_indices`` over ``num_identities`` (synthetic)."""
    n = len(source)
    ids = getattr(source, "identities", None)
    if ids is not None and len(ids) == n:
        return np.asarray(ids, dtype=np.int64)
    out = np.full((n,), -1, dtype=np.int64)
    count = getattr(source, "num_identities", None)
    if getattr(source, "has_identities", False) and count is not None:
        for identity in range(int(count)):
            out[source.identity_indices(identity)] = identity
    return out


class DatasetNotFoundError(FileNotFoundError):
    """A dataset path is missing or holds nothing the source can read."""


class UnknownSplitError(ValueError):
    """The source has no split of that name (a ``ValueError``: a config mistake for one
    source; a mixture leaves such a part out of that split)."""


class EmptySplitError(DatasetNotFoundError):
    """The dataset is there but the requested split has no records.

    ``available`` names the splits that do have records (when the source knows them) and
    ``split_option`` the source option that makes a held-out split ("" when the split comes
    from the dataset's own files), so that callers can say what to change.
    """

    def __init__(self, message: str, *, split: str, available: tuple[str, ...] = (),
                 split_option: str = "") -> None:
        super().__init__(message)
        self.split = split
        self.available = tuple(available)
        self.split_option = split_option

    def __reduce__(self):  # keep the keyword fields through pickling (worker processes)
        return (_rebuild_empty_split, (str(self), self.split, self.available,
                                       self.split_option))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _rebuild_empty_split(message: str, split: str, available: tuple[str, ...],
                         split_option: str) -> EmptySplitError:
    return EmptySplitError(message, split=split, available=available,
                           split_option=split_option)
