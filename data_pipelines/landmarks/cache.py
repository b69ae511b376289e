"""Per-dataset cache of detected 68-point landmarks, so dlib runs once per image.

One file per (source, data root): ``landmarks_<source>.npz`` holding

* ``keys``      (N,) str   -- record keys (file paths relative to the source root),
* ``landmarks`` (N, 68, 2) float32 -- NaN rows for images where no face was found,
* ``has_face``  (N,) bool  -- the "no face" marker (False = detector found no face),
* ``source``, ``data_dir`` -- what the cache belongs to (informational).

Where it lives (``cache_location``), first match wins:

1. ``<cache_dir>/<hash>/landmarks_<source>.npz`` when ``cache_dir`` is given explicitly;
2. ``<data_dir>/landmarks_<source>.npz`` if it exists;
3. ``~/.cache/unmask_jax/landmarks/<hash>/landmarks_<source>.npz`` if it exists
   (``$UNMASK_JAX_CACHE`` replaces ``~/.cache/unmask_jax``);
4. for a new cache: next to the data when ``data_dir`` is writable, else 3.

``<hash>`` is the first 16 hex digits of sha256 of the absolute data path.

Resumable and mergeable: ``save`` writes atomically (temporary file + ``os.replace``), so a
killed run loses at most the entries since its last save. Independent jobs can each write a
shard (``landmarks_<source>.shard-<i>-of-<n>.npz`` next to the main file, ``open(...,
shard=(i, n))``); opening the cache without ``shard`` merges every shard it finds, and
``save`` then folds them into the main file and deletes them. Run that merge only after the
shard jobs have finished.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
import numpy as np


class _Missing:
    """Sentinel type: the key has never been looked at."""

    _instance: "_Missing | None" = None

    def __new__(cls) -> "_Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


#: Returned by ``LandmarkCache.get`` for keys not in the cache (``None`` means "no face").
MISSING = _Missing()

FORMAT_VERSION = 1


def default_cache_root() -> Path:
    """``$UNMASK_JAX_CACHE/landmarks`` or ``~/.cache/unmask_jax/landmarks``."""
    base = os.environ.get("UNMASK_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "unmask_jax")
    return Path(base) / "landmarks"


def data_dir_hash(data_dir: str | os.PathLike[str]) -> str:
    """First 16 hex digits of sha256 of the absolute data path."""
    return hashlib.sha256(os.path.abspath(os.fspath(data_dir)).encode()).hexdigest()[:16]


def cache_filename(source_name: str) -> str:
    if not source_name or any(c in source_name for c in "/\\"):
        raise ValueError(f"invalid source name for a landmark cache: {source_name!r}")
    return f"landmarks_{source_name}.npz"


def _is_writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def cache_location(source_name: str, data_dir: str | os.PathLike[str],
                   cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the main cache file for this source and data root (see module docstring)."""
    name = cache_filename(source_name)
    digest = data_dir_hash(data_dir)
    if cache_dir is not None:
        return Path(cache_dir) / digest / name
    next_to_data = Path(data_dir) / name
    in_cache_root = default_cache_root() / digest / name
    if next_to_data.exists():
        return next_to_data
    if in_cache_root.exists():
        return in_cache_root
    return next_to_data if _is_writable_dir(Path(data_dir)) else in_cache_root


def _shard_path(main: Path, shard: tuple[int, int]) -> Path:
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    return main.with_name(f"{main.stem}.shard-{index}-of-{count}.npz")


def _shard_files(main: Path) -> list[Path]:
    if not main.parent.is_dir():
        return []
    return sorted(main.parent.glob(f"{main.stem}.shard-*-of-*.npz"))


def _read_file(path: Path) -> dict[str, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as data:
        keys = data["keys"]
        landmarks = data["landmarks"].astype(np.float32, copy=False)
        has_face = data["has_face"].astype(bool, copy=False)
    if landmarks.shape != (len(keys), 68, 2) or has_face.shape != (len(keys),):
        raise ValueError(f"landmark cache {path} is malformed: keys {keys.shape}, "
                         f"landmarks {landmarks.shape}, has_face {has_face.shape}")
    return {str(k): (landmarks[i] if has_face[i] else None) for i, k in enumerate(keys)}


class LandmarkCache:
    """Mapping key -> (68, 2) float32 landmarks, or None for "no face found".

    Use ``LandmarkCache.open(...)``; ``get`` returns ``MISSING`` for unknown keys.
    """

    def __init__(self, path: Path, source_name: str, data_dir: str,
                 entries: dict[str, np.ndarray | None], shard_path: Path | None = None,
                 merged_shards: Iterable[Path] = ()) -> None:
        self.path = path
        self.source_name = source_name
        self.data_dir = data_dir
        self._entries = entries
        self._shard_path = shard_path
        self._merged_shards = list(merged_shards)
        self._dirty = False

    @classmethod
    def open(cls, source_name: str, data_dir: str | os.PathLike[str],
             cache_dir: str | os.PathLike[str] | None = None,
             shard: tuple[int, int] | None = None) -> "LandmarkCache":
        """Load the cache for ``source_name`` at ``data_dir`` (empty if none exists yet),
        merging any shard files. With ``shard=(i, n)``, ``save`` writes that shard file."""
        data_dir = os.path.abspath(os.fspath(data_dir))
        path = cache_location(source_name, data_dir, cache_dir)
        entries: dict[str, np.ndarray | None] = {}
        if path.exists():
            entries.update(_read_file(path))
        shards = _shard_files(path)
        for shard_file in shards:
            entries.update(_read_file(shard_file))
        shard_path = None if shard is None else _shard_path(path, shard)
        return cls(path, source_name, data_dir, entries, shard_path,
                   merged_shards=() if shard is not None else shards)

    @staticmethod
    def exists(source_name: str, data_dir: str | os.PathLike[str],
               cache_dir: str | os.PathLike[str] | None = None) -> bool:
        """Whether a cache (main file or any shard) exists for this source and data root."""
        path = cache_location(source_name, os.path.abspath(os.fspath(data_dir)), cache_dir)
        return path.exists() or bool(_shard_files(path))

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str) -> np.ndarray | None | _Missing:
        """Landmarks (68, 2) float32 (a copy), None for "no face", or ``MISSING``."""
        if key not in self._entries:
            return MISSING
        value = self._entries[key]
        return None if value is None else value.copy()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> Iterator[str]:
        return iter(self._entries)

    @property
    def num_faces(self) -> int:
        return sum(v is not None for v in self._entries.values())

    @property
    def num_no_face(self) -> int:
        return sum(v is None for v in self._entries.values())

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: str, landmarks: np.ndarray | None) -> None:
        """Record the landmarks of ``key`` (None = no face found)."""
        if landmarks is not None:
            landmarks = np.asarray(landmarks, dtype=np.float32)
            if landmarks.shape != (68, 2) or not np.all(np.isfinite(landmarks)):
                raise ValueError(f"landmarks for {key!r} must be finite (68, 2), "
                                 f"got {landmarks.shape}")
            landmarks = landmarks.copy()
        self._entries[str(key)] = landmarks
        self._dirty = True

    def put_many(self, items: Iterable[tuple[str, np.ndarray | None]]) -> None:
        for key, landmarks in items:
            self.put(key, landmarks)

    def save(self) -> Path:
        """Write the cache atomically; returns the file written. Without a shard, also
        folds the shard files merged at ``open`` into the main file and deletes them."""
        target = self._shard_path or self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._entries)
        landmarks = np.full((len(keys), 68, 2), np.nan, dtype=np.float32)
        has_face = np.zeros((len(keys),), dtype=bool)
        for i, key in enumerate(keys):
            value = self._entries[key]
            if value is not None:
                landmarks[i] = value
                has_face[i] = True
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys, dtype=str), landmarks=landmarks,
                     has_face=has_face, source=np.asarray(self.source_name),
                     data_dir=np.asarray(self.data_dir),
                     version=np.asarray(FORMAT_VERSION))
        os.replace(tmp, target)
        if self._shard_path is None:
            for shard_file in self._merged_shards:
                shard_file.unlink(missing_ok=True)
            self._merged_shards = []
        self._dirty = False
        return target

    @property
    def dirty(self) -> bool:
        """Whether ``save`` has work to do: unsaved entries or shard files to fold in."""
        return self._dirty or bool(self._merged_shards)

    def __repr__(self) -> str:
        return (f"LandmarkCache({self.source_name!r}, {self.data_dir!r}, entries={len(self)}, "
                f"path={str(self.path)!r})")
