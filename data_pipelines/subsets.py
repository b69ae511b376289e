"""Deterministic subsets spread over identities (the ``num_records`` cap and the eval set).

``spread_order(groups)`` orders record indices round-robin over groups: first one record of
every group, then a second record of every group that has one, and so on. Within a round the
groups come in a fixed pseudo-random order (a 64-bit hash of the group label, the same in
every process, run and Python version); within a group the records come in index order, so
the first record of a person is taken first. Records whose group is negative (identity
unknown) are each a group of their own, ordered by a hash of their index.

So the first ``n`` indices of the order hold as many different people as possible, are not
biased towards the alphabetically first names, and are a prefix of the first ``n + 1``: a
larger subset contains every smaller one.
"""
from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix64(values: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 finaliser of ``values + salt`` (uint64, wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(salt & _MASK64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


_KNOWN_SALT = 0x9E3779B97F4A7C15
_UNKNOWN_SALT = 0xD1B54A32D192ED03


def spread_order(groups: np.ndarray | list[int], n: int | None = None) -> np.ndarray:
    """int64 record indices, round-robin over ``groups`` (see the module docstring); the
    first ``n`` of them (all when ``n`` is None)."""
    groups = np.asarray(groups, dtype=np.int64).reshape(-1)
    m = len(groups)
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    index = np.arange(m, dtype=np.int64)
    known = groups >= 0
    # One label per group; unknown records are singletons with labels that cannot collide.
    label = np.where(known, groups, -1 - index)
    # Rank of each record within its group (0 for the group's first record).
    by_group = np.lexsort((index, label))
    sorted_label = label[by_group]
    starts = np.flatnonzero(np.r_[True, sorted_label[1:] != sorted_label[:-1]])
    sizes = np.diff(np.r_[starts, m])
    rank = np.empty(m, dtype=np.int64)
    rank[by_group] = index - np.repeat(starts, sizes)
    priority = np.where(known, _mix64(groups, _KNOWN_SALT), _mix64(index, _UNKNOWN_SALT))
    order = np.lexsort((index, priority, rank))  # last key is the primary one
    return order if n is None else order[:n]


def limit_records(groups: np.ndarray | list[int], num_records: int | None,
                  what: str = "source") -> np.ndarray | None:
    """Sorted indices of the records kept by the source option ``num_records`` (at most
    that many, ``spread_order`` over ``groups``), or None to keep everything (``num_records``
    None or at least the number of records). Sources keep the kept records in their usual
    (sorted) order."""
    if num_records is None:
        return None
    if isinstance(num_records, bool) or int(num_records) != num_records or num_records < 1:
        raise ValueError(f"{what}: num_records must be a positive integer or None, "
                         f"got {num_records!r}")
    groups = np.asarray(groups, dtype=np.int64).reshape(-1)
    if int(num_records) >= len(groups):
        return None
    return np.sort(spread_order(groups, int(num_records)))


def count_groups(groups: np.ndarray) -> int:
    """Number of distinct non-negative labels."""
    groups = np.asarray(groups, dtype=np.int64)
    return int(np.unique(groups[groups >= 0]).size)
