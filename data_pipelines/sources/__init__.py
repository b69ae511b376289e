"""Face sources and their registry.

``make_source(name, data_dir=..., split=..., seed=..., resolution=..., **options)`` builds
one of ``SOURCES``. Options per source (``source_options(name)`` lists them; all are
``config.data.source_options.<option>`` keys):

* ``synthetic`` -- procedurally rendered faces (``SyntheticFaces``); no ``data_dir``.
  ``split`` picks a disjoint seed stream: seed + ``SYNTHETIC_SPLIT_SEED_OFFSET[split]``
  (train/all +0, validation +2**30, test +2**31; keep ``seed`` < 2**30). Options:
  ``num_records`` (records per split, default 10000), ``images_per_identity`` (8).
* ``lfw`` -- LFW folder layout; identity-disjoint hash split (``lfw.py``). Options:
  ``landmarks``, ``test_fraction``, ``min_size``, ``cache_dir``, ``face_box``,
  ``num_records``.
* ``celeba`` -- CelebA aligned files or TFDS (``celeba.py``). Options: ``landmarks``,
  ``backend``, ``min_size``, ``cache_dir``, ``num_records``.
* ``folder`` -- any folder of images (``folder.py``). Options: ``landmarks``,
  ``identity_from``, ``test_fraction``, ``split_by``, ``min_size``, ``cache_dir``,
  ``face_box``, ``num_records``.
* ``paired`` -- masked/unmasked pairs with a stored mask map (``paired.py``). Options:
  ``landmarks``, ``masked_dir``, ``unmasked_dir``, ``diff_threshold``, ``strip_tokens``,
  ``test_fraction``, ``min_size``, ``cache_dir``, ``mask_cache_dir``, ``num_records``.

``num_records`` is accepted by every source, so the ``:quick`` config variants work with
any of them: for ``synthetic`` it is the number of records rendered; for the file sources a
cap -- at most that many records of the split, chosen deterministically and spread over
identities (``data_pipelines.subsets``), not the first N file names.

Several sources read as one: ``a+b`` (e.g. ``lfw+celeba`` with ``data_dir`` the folder
holding ``lfw/`` and ``celeba/``); see ``mixed.py``. Its options are those of its parts.

``seed`` and ``resolution`` only concern ``synthetic``: file sources split by hashing
names and return images at their native size (the pipeline crops and resizes).
Unknown names and options raise ``ValueError`` naming the choices; a missing or empty data
path raises ``DatasetNotFoundError`` saying what was expected where, an empty split its
subclass ``EmptySplitError``.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from data_pipelines.sources.base import (DatasetNotFoundError, EmptySplitError, FaceSource,
                                         Record, UnknownSplitError, error_record)

__all__ = ["SOURCES", "OPTION_TYPES", "make_source", "source_options", "is_known",
           "DatasetNotFoundError", "UnknownSplitError",
           "EmptySplitError", "FaceSource", "Record", "error_record",
           "SYNTHETIC_SPLIT_SEED_OFFSET"]

PathLike = str | os.PathLike[str] | None

SYNTHETIC_SPLIT_SEED_OFFSET: dict[str, int] = {
    "train": 0, "all": 0, "validation": 2**30, "test": 2**31}


def _synthetic(*, data_dir: PathLike, split: str, seed: int, resolution: int,
               num_records: int = 10000, images_per_identity: int = 8) -> FaceSource:
    from data_pipelines.sources.synthetic import SyntheticFaces

    if data_dir is not None:
        raise ValueError(f"synthetic: takes no data_dir (got {data_dir!r})")
    if split not in SYNTHETIC_SPLIT_SEED_OFFSET:
        raise UnknownSplitError(f"synthetic: unknown split {split!r}; choose one of "
                         f"{tuple(SYNTHETIC_SPLIT_SEED_OFFSET)}")
    if not 0 <= seed < 2**30:
        raise ValueError(
            f"synthetic: seed must be in [0, 2**30) so splits stay disjoint, got {seed}")
    return SyntheticFaces(seed=seed + SYNTHETIC_SPLIT_SEED_OFFSET[split],
                          num_records=num_records, resolution=resolution,
                          images_per_identity=images_per_identity)


def _lfw(*, data_dir: PathLike, split: str, seed: int, resolution: int,
         **options: Any) -> FaceSource:
    from data_pipelines.sources.lfw import LFWSource
    return LFWSource(data_dir, split=split, **options)


def _celeba(*, data_dir: PathLike, split: str, seed: int, resolution: int,
            **options: Any) -> FaceSource:
    from data_pipelines.sources.celeba import make_celeba
    return make_celeba(data_dir, split=split, **options)


def _folder(*, data_dir: PathLike, split: str, seed: int, resolution: int,
            **options: Any) -> FaceSource:
    from data_pipelines.sources.folder import FolderSource
    return FolderSource(data_dir, split=split, **options)


def _paired(*, data_dir: PathLike, split: str, seed: int, resolution: int,
            **options: Any) -> FaceSource:
    from data_pipelines.sources.paired import PairedSource
    return PairedSource(data_dir, split=split, **options)


#: name -> factory(*, data_dir, split, seed, resolution, **options) -> FaceSource.
SOURCES: dict[str, Callable[..., FaceSource]] = {
    "synthetic": _synthetic,
    "lfw": _lfw,
    "celeba": _celeba,
    "folder": _folder,
    "paired": _paired,
}


#: Every option that some source accepts, with its value type: ``configs/default.py``
#: declares each as a ``config.data.source_options`` placeholder (None = unset, not passed).
#: tests/test_sources.py checks that this is exactly the union of ``source_options(name)``.
OPTION_TYPES: dict[str, type] = {
    "num_records": int, "images_per_identity": int, "landmarks": str, "test_fraction": float,
    "min_size": int, "cache_dir": str, "face_box": tuple, "identity_from": str,
    "split_by": str, "backend": str, "masked_dir": str, "unmasked_dir": str,
    "diff_threshold": int, "strip_tokens": tuple, "mask_cache_dir": str,
}


def _option_target(name: str) -> Callable[..., Any]:
    """The callable whose keyword parameters are ``name``'s options."""
    if name == "synthetic":
        return _synthetic
    module_attr = {"lfw": ("lfw", "LFWSource"), "celeba": ("celeba", "make_celeba"),
                   "folder": ("folder", "FolderSource"), "paired": ("paired", "PairedSource")}
    module_name, attr = module_attr[name]
    module = __import__(f"data_pipelines.sources.{module_name}", fromlist=[attr])
    return getattr(module, attr)


def is_known(name: str) -> bool:
    """``name`` is a source of ``SOURCES`` or a ``+`` join of them."""
    from data_pipelines.sources.mixed import part_names
    parts = part_names(name)
    return all(p in SOURCES for p in parts) and len(set(parts)) == len(parts)


def _check_name(name: str) -> None:
    if not is_known(name):
        raise ValueError(f"unknown source {name!r}; choose one of {sorted(SOURCES)}, or "
                         "several different ones joined with '+' (e.g. 'lfw+celeba')")


def source_options(name: str) -> tuple[str, ...]:
    """Names of the extra options ``make_source(name, ...)`` accepts (for ``a+b``: those of
    either part)."""
    from data_pipelines.sources.mixed import part_names
    _check_name(name)
    if len(part_names(name)) > 1:
        seen: dict[str, None] = {}
        for part in part_names(name):
            seen.update(dict.fromkeys(source_options(part)))
        return tuple(seen)
    fixed = {"data_dir", "split", "seed", "resolution", "self"}
    params = inspect.signature(_option_target(name)).parameters
    return tuple(p for p in params if p not in fixed
                 and params[p].kind in (inspect.Parameter.KEYWORD_ONLY,
                                        inspect.Parameter.POSITIONAL_OR_KEYWORD))


def make_source(name: str, *, data_dir: PathLike = None, split: str = "train", seed: int = 0,
                resolution: int = 256, **options: Any) -> FaceSource:
    """Build the face source ``name`` (one of ``SOURCES``, or several joined with ``+``);
    see the module docstring."""
    from data_pipelines.sources.mixed import make_mixed, part_names
    _check_name(name)
    allowed = source_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; {name} accepts "
                         f"{sorted(allowed)}")
    if len(part_names(name)) > 1:
        return make_mixed(name, make_source, source_options, data_dir=data_dir, split=split,
                          seed=seed, resolution=resolution, **options)
    return SOURCES[name](data_dir=data_dir, split=split, seed=seed, resolution=resolution,
                         **options)
