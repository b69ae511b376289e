"""Orbax checkpoints of the whole run: train state, Grain iterator state, run metadata.

Layout: ``<workdir>/checkpoints/<step>/{state,data,meta}``. ``state`` is the train-state pytree
(written collectively by all processes, works on local paths and ``gs://`` through
``etils.epath``); ``data`` is each process's Grain iterator position; ``meta`` is JSON:

* ``format_version``: :data:`FORMAT_VERSION`, the layout of ``state`` this code writes and
  reads. A checkpoint with another version (or none: written before versions were recorded)
  is refused with a :class:`CheckpointError` instead of a shape error deep inside Orbax.
* ``config``: the run's config (``config.to_dict()`` made JSON-able). On resume it is
  compared with the current config: settings outside :data:`SAFE_CONFIG_KEYS` must not change
  (they change the networks, their inputs or the run itself), settings inside it may and are
  logged.
* ``process_count`` and ``step``: a restore onto a different number of processes keeps the
  data iterator's fresh position (Grain iterator states are per process shard).

Damaged checkpoints: :func:`restore_latest` reads the newest checkpoint; one that cannot be
read (a truncated or missing file) is moved aside to ``checkpoints/corrupt/<step>-<UTC
time>/`` (not deleted; Orbax no longer lists it), a warning names the lost step and the reason,
and the next older checkpoint is tried. A checkpoint that reads fine but does not fit the
current state (the model changed) is not damaged: that is a :class:`CheckpointError`, nothing
is moved. With an explicit ``step`` there is no fallback and nothing is moved.

Every user-facing failure is a :class:`CheckpointError` whose message says what to do;
``main`` prints it without a traceback.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Sequence

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from unmask_jax import parallel

log = logging.getLogger(__name__)

# Version of the checkpoint layout. 2: the train state is {step, rng, nets: {name: {params,
# state, opt_state}}} and ``meta`` records the format version and the config. Checkpoints
# without a version (format 1) were written by earlier releases and are not readable here.
FORMAT_VERSION = 2

ITEM_NAMES = ("state", "data", "meta")
CORRUPT_DIRNAME = "corrupt"

# Config keys that may change when a run is resumed (fnmatch patterns over dotted keys; "*"
# also matches dots). They change how long the run goes on, how often it logs, samples,
# checkpoints and evaluates, how it evaluates, how the processes start, from where and with how
# many threads / how much buffering the data is read. Every other key (model.*, loss.*,
# optim.*, the rest of data.*, seed, train.batch_size, train.compute_dtype, keys a newer version
# adds, ...) is unsafe: a change stops the resume with a CheckpointError naming it.
# data.num_workers is unsafe: the saved Grain iterator state depends on the worker count (with
# another count the restore fails or continues with other examples).
SAFE_CONFIG_KEYS = (
    "name",
    "train.num_steps",
    "train.num_epochs",
    "train.*_every_steps",
    "train.stop_after_steps",
    "train.max_checkpoints_to_keep",
    "train.num_samples",
    "eval.*",
    "distributed.*",
    "data.data_dir",
    "data.read_threads",
    "data.worker_buffer_size",
    # Initial weights from PyTorch files: only used when a run starts without a checkpoint
    # (a system's own such keys: System.resume_safe_keys).
    "model.generator_init",
    "model.discriminator_init",
    "train.early_stopping.*",
    # Prediction settings, and the frozen stage-1 run that evaluation/prediction read masks
    # from: neither changes the trained networks.
    "predict.*",
    "model.segmenter_workdir",
    # How the layers are computed on the platform (unmask_jax/backends): the same networks
    # and numbers up to float rounding.
    "model.backend_forms",
    # How the training state lies on the devices (state.STATE_SHARDINGS): a layout, the
    # same numbers up to float rounding; checkpoints hold whole arrays either way.
    "train.state_sharding",
    # What the backward pass keeps or recomputes (train.remat): the same numbers.
    "train.remat",
)

#: Keys added to the config after checkpoint format 2, with the value that keeps the earlier
#: behaviour: a checkpoint recorded without the key resumes when the current value is that one.
ADDED_KEYS = {
    "optim.warmup_shape": "linear",
    "optim.networks.*.warmup_shape": None,
    "data.vflip": False,
    "data.rot90": False,
    "data.identity_augment": "flip",
    "data.identity_rotation_fill": [128, 128, 128],
    "model.backend_forms": "auto",
    "predict.overwrite": False,
    "predict.save_faces": False,
    "train.state_sharding": "replicated",
    "train.remat": False,
}


#: How a config recorded by an earlier version reads today (:func:`upgrade_recorded`, applied
#: wherever a recorded config is compared or rebuilt: resume, evaluate, predict, export):
#: keys removed since (dropped from the recording), keys renamed (old -> new) and values
#: renamed (key -> {old: new}).
REMOVED_KEYS = (
    # The XLA CPU convolution choice, before model.backend_forms (systems now state their
    # XLA CPU library).
    "model.cpu_convolutions",
)
RENAMED_KEYS: dict[str, str] = {}
RENAMED_VALUES = {
    # The identity image's flips + rotation, named after the first system that used it.
    "data.identity_augment": {"unveilify": "flip_rotate"},
}


def upgrade_recorded(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded JSON config with :data:`REMOVED_KEYS`, :data:`RENAMED_KEYS` and
    :data:`RENAMED_VALUES` applied (a new dict; the recording itself is not changed)."""
    out = json.loads(json.dumps(recorded))

    def parent(key: str, create: bool = False):
        node = out
        *path, leaf = key.split(".")
        for part in path:
            if not isinstance(node.get(part), dict):
                if not create:
                    return None, leaf
                node[part] = {}
            node = node[part]
        return node, leaf

    for key in REMOVED_KEYS:
        node, leaf = parent(key)
        if node is not None:
            node.pop(leaf, None)
    for old, new in RENAMED_KEYS.items():
        node, leaf = parent(old)
        if node is not None and leaf in node:
            value = node.pop(leaf)
            dst, dleaf = parent(new, create=True)
            dst.setdefault(dleaf, value)
    for key, values in RENAMED_VALUES.items():
        node, leaf = parent(key)
        if node is not None and isinstance(node.get(leaf), str) and node[leaf] in values:
            node[leaf] = values[node[leaf]]
    return out


class CheckpointError(Exception):
    """A checkpoint problem the user has to act on; the message says what happened and what to
    do (print it, no traceback needed)."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """The workdir holds no (readable) checkpoint, or not the requested step."""


# ---------------------------------------------------------------------------------------------
# Manager and save

def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    """``<workdir>/checkpoints``; a relative local workdir is made absolute (Orbax refuses
    relative checkpoint paths when it writes; ``gs://`` paths are left as they are)."""
    workdir = os.fspath(workdir)
    if "://" not in workdir:
        workdir = os.path.abspath(workdir)
    return epath.Path(workdir) / "checkpoints"


def make_manager(workdir: str | os.PathLike, config=None, *, read_only: bool = False
                 ) -> ocp.CheckpointManager:
    keep = 3 if config is None else int(config.train.max_checkpoints_to_keep)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           read_only=read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=ITEM_NAMES)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return repr(value)


def config_to_json(config: Any) -> dict[str, Any]:
    """The config as plain JSON data: tuples become lists, None stays None (JSON null),
    non-finite floats and other objects become their ``repr``."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(_jsonable(data)))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter=None, *,
         config=None) -> None:
    """Saves ``state`` (and the Grain iterator position) as checkpoint ``step``; collective.

    ``meta`` records :data:`FORMAT_VERSION`, the process count and ``config`` (JSON), which a
    later :func:`restore_latest` compares with the config it is given.
    """
    meta = {"format_version": FORMAT_VERSION, "process_count": jax.process_count(),
            "step": int(step), "config": None if config is None else config_to_json(config)}
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    manager.save(step, args=ocp.args.Composite(**items), force=True)


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding targets for a restore onto the current topology."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


# ---------------------------------------------------------------------------------------------
# Config comparison

_UNSET = "<unset>"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of the leaves; an empty section contributes nothing."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def is_safe_config_key(key: str, system_keys: Sequence[str] = ()) -> bool:
    """True if ``key`` (dotted) may change when a run resumes (see :data:`SAFE_CONFIG_KEYS`;
    ``system_keys``: the patterns the run's system declares, ``System.resume_safe_keys``)."""
    return any(fnmatch.fnmatchcase(key, pattern)
               for pattern in (*SAFE_CONFIG_KEYS, *system_keys))


def compare_configs(recorded: Mapping[str, Any], current: Any, system_keys: Sequence[str] = ()
                    ) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(unsafe changes, safe changes) between a recorded JSON config (read as today's code
    reads it: :func:`upgrade_recorded`) and the current config; ``system_keys``: the
    resume-safe keys the system declares.

    Each change is (dotted key, recorded value, current value); a side that lacks the key has
    the value ``"<unset>"``.
    """
    old = flatten(upgrade_recorded(recorded))
    new = flatten(config_to_json(current))
    unsafe, safe = [], []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, _UNSET), new.get(key, _UNSET)
        if before is _UNSET and any(fnmatch.fnmatchcase(key, pattern) and after == default
                                    for pattern, default in ADDED_KEYS.items()):
            continue  # a setting newer than the checkpoint, at its behaviour-keeping value
        if before != after:
            (safe if is_safe_config_key(key, system_keys) else unsafe).append(
                (key, before, after))
    return unsafe, safe


def _fmt_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key}: {json.dumps(a) if a is not _UNSET else a} -> "
                     f"{json.dumps(b) if b is not _UNSET else b}" for key, a, b in changes)


def check_meta(meta: Mapping[str, Any], step: int, where: str, config=None,
               system_keys: Sequence[str] = ()) -> None:
    """Raises CheckpointError unless checkpoint ``step`` (its ``meta``) fits this code and
    ``config`` (``system_keys``: :func:`compare_configs`); logs the safe config changes."""
    version = meta.get("format_version")
    if version is None:
        raise CheckpointError(
            f"checkpoint step {step} in {where} was written by an older version of unmask-jax "
            f"(no checkpoint format version recorded; this version reads format "
            f"{FORMAT_VERSION}, whose train state is laid out differently) and cannot be "
            f"restored by this one. Start a new run with a new --workdir, or evaluate/export it "
            f"with the unmask-jax version that wrote it.")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"checkpoint step {step} in {where} has checkpoint format {version}; this version "
            f"of unmask-jax reads format {FORMAT_VERSION} only. "
            + ("Update unmask-jax to the version that wrote it." if newer else
               "Start a new run with a new --workdir, or use the unmask-jax version that "
               "wrote it."))
    recorded = meta.get("config")
    if config is None or recorded is None:
        if config is not None:
            log.info("checkpoint step %d records no config: nothing to compare", step)
        return
    unsafe, safe = compare_configs(recorded, config, system_keys)
    if unsafe:
        lines = "\n".join(f"  {key}: {json.dumps(a) if a is not _UNSET else a} -> "
                          f"{json.dumps(b) if b is not _UNSET else b}" for key, a, b in unsafe)
        raise CheckpointError(
            f"checkpoint step {step} in {where} was written with a different configuration; "
            f"these settings change the networks, their inputs or the training itself and "
            f"cannot change in a resumed run (checkpoint -> now):\n{lines}\n"
            f"Revert these overrides (or use the config file the run was started with) to "
            f"resume, or start a new run with a new --workdir.")
    if safe:
        log.info("checkpoint step %d: resuming with changed settings (safe to change): %s",
                 step, _fmt_changes(safe))


# ---------------------------------------------------------------------------------------------
# Restore

_OK, _INCOMPATIBLE, _CORRUPT = 0, 1, 2


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    text = text.split(" [tensorstore_spec=")[0]  # tensorstore appends its whole spec
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _read_item(step_dir: epath.Path, **items) -> dict[str, Any]:
    """Restores some items of one checkpoint with Orbax's handlers, without the manager's
    cross-process barrier (so that a read failing on one process cannot hang the others)."""
    handler = ocp.CompositeCheckpointHandler()
    try:
        return handler.restore(step_dir, args=ocp.args.Composite(**items))
    finally:
        handler.close()


def _path_str(path: tuple) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts)


def _state_differences(step_dir: epath.Path, target: Any) -> list[str]:
    """Where the saved ``state`` (its Orbax metadata) and ``target`` differ in tree structure,
    shape or dtype; empty if they agree. Raises if the metadata cannot be read.

    Tells a checkpoint that does not fit the current state (the model changed: not damage)
    apart from one whose files cannot be read (damage)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        meta = handler.metadata(step_dir / "state")
    finally:
        handler.close()
    tree = getattr(meta, "tree", meta)
    saved = {_path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    wanted = {_path_str(path): _as_stored(leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}
    diffs = [f"{key} only in the checkpoint" for key in sorted(set(saved) - set(wanted))]
    diffs += [f"{key} only in this run" for key in sorted(set(wanted) - set(saved))]
    for key in sorted(set(saved) & set(wanted)):
        old_shape = tuple(getattr(saved[key], "shape", ()) or ())
        new_shape = tuple(np.shape(wanted[key]))
        if old_shape != new_shape:
            diffs.append(f"{key} shape {old_shape} in the checkpoint, {new_shape} now")
        old_dtype = _dtype_name(getattr(saved[key], "dtype", None))
        new_dtype = _dtype_name(getattr(wanted[key], "dtype", None))
        if old_dtype and new_dtype and old_dtype != new_dtype:
            diffs.append(f"{key} dtype {old_dtype} in the checkpoint, {new_dtype} now")
    return diffs


def _as_stored(leaf: Any) -> Any:
    """Typed PRNG keys are stored as their key data (e.g. uint32 (2,) per key)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return jax.eval_shape(jax.random.key_data,
                              jax.ShapeDtypeStruct(np.shape(leaf), dtype))
    return leaf


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    try:
        return str(np.dtype(dtype))
    except TypeError:  # e.g. typed PRNG keys
        return str(dtype)


def _data_state_unreadable(step_dir: epath.Path) -> str | None:
    """None if this process's saved Grain iterator state is present and valid JSON, else why
    not (the file name is Grain's: ``data/process_<i>-of-<n>.json``)."""
    path = step_dir / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    try:
        json.loads(path.read_text())
    except Exception as err:  # pylint: disable=broad-except
        return _first_line(err)
    return None


class _Attempt:
    """Outcome of one process's attempt at one checkpoint."""

    def __init__(self, code: int, reason: str = "", state: Any = None,
                 error: CheckpointError | None = None):
        self.code, self.reason, self.state, self.error = code, reason, state, error


def _try_step(directory: epath.Path, step: int, state: Any, data_iter, config,
              system_keys: Sequence[str] = ()) -> _Attempt:
    step_dir = directory / str(step)
    where = os.fspath(directory)
    # 1. meta: format version, config, process count.
    try:
        meta = _read_item(step_dir, meta=ocp.args.JsonRestore())["meta"]
        if not isinstance(meta, Mapping):
            raise ValueError(f"meta is a {type(meta).__name__}, not a JSON object")
    except Exception as err:  # pylint: disable=broad-except
        return _Attempt(_CORRUPT, f"meta: {_first_line(err)}")
    try:
        check_meta(meta, step, where, config, system_keys)
    except CheckpointError as err:
        return _Attempt(_INCOMPATIBLE, str(err), error=err)
    # 2. state, into the current shapes and shardings.
    try:
        restored = _read_item(step_dir, state=ocp.args.StandardRestore(abstract_like(state)))
    except Exception as err:  # pylint: disable=broad-except
        try:
            diffs = _state_differences(step_dir, abstract_like(state))
        except Exception as meta_err:  # pylint: disable=broad-except
            return _Attempt(_CORRUPT, f"state metadata: {_first_line(meta_err)}")
        if not diffs:  # same structure, shapes and dtypes: the files are what fails
            return _Attempt(_CORRUPT, f"state: {_first_line(err)}")
        shown = "; ".join(diffs[:8]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 8 else "")
        return _Attempt(_INCOMPATIBLE, error=CheckpointError(
            f"checkpoint step {step} in {where} does not fit this run's train state: {shown}. "
            f"The networks or the train state of this code differ from those that wrote it; "
            f"restore it with the config and unmask-jax version that wrote it, or start a new "
            f"run with a new --workdir."))
    # 3. the data iterator, last: it is restored in place, and only from a readable checkpoint.
    if data_iter is not None:
        if meta.get("process_count") == jax.process_count():
            try:
                _read_item(step_dir, data=grain.checkpoint.CheckpointRestore(data_iter))
            except Exception as err:  # pylint: disable=broad-except
                damage = _data_state_unreadable(step_dir)
                if damage is not None:
                    return _Attempt(_CORRUPT, f"data iterator: {damage}")
                return _Attempt(_INCOMPATIBLE, error=CheckpointError(
                    f"checkpoint step {step} in {where}: the saved data-iterator position is "
                    f"readable but this run's input pipeline does not accept it "
                    f"({_first_line(err)}); the data settings or the pipeline code changed. "
                    f"Revert them to resume, or start a new run with a new --workdir."))
        else:
            log.warning(
                "checkpoint step %d was written by %s processes, this run has %d: model and "
                "optimizer state are restored, the data iterator is NOT (Grain iterator states "
                "are per process shard); the data stream restarts from its seeded beginning",
                step, meta.get("process_count"), jax.process_count())
    return _Attempt(_OK, state=restored["state"])


def _move_aside(directory: epath.Path, step: int) -> epath.Path:
    """Renames ``<directory>/<step>`` to ``<directory>/corrupt/<step>-<UTC time>``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target_dir = directory / CORRUPT_DIRNAME
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{step}-{stamp}"
    suffix = 1
    while target.exists():
        target = target_dir / f"{step}-{stamp}-{suffix}"
        suffix += 1
    (directory / str(step)).rename(target)
    return target


def _agreed_latest(manager: ocp.CheckpointManager) -> int | None:
    latest = manager.latest_step()
    agreed = parallel.broadcast_from_main(-1 if latest is None else int(latest))
    return None if agreed < 0 else agreed


def restore_latest(manager: ocp.CheckpointManager, state: Any, data_iter=None,
                   step: int | None = None, *, config=None,
                   system_keys: Sequence[str] = ()) -> tuple[Any, bool]:
    """Restores ``step`` (default: the newest readable checkpoint) into the shapes and shardings
    of ``state``; every process calls it.

    Returns ``(state, restored?)``: ``(state, False)`` when the manager lists no checkpoint and
    no ``step`` was asked for. The data iterator is restored in place when the checkpoint was
    written by the same number of processes; otherwise it keeps its fresh position and a
    warning says so.

    With ``config``, the recorded config is compared with it (:func:`check_meta`): an unsafe
    change raises :class:`CheckpointError`, safe changes are logged. A checkpoint of another
    :data:`FORMAT_VERSION` (or without one) raises :class:`CheckpointError`.

    Without ``step``, an unreadable newest checkpoint is moved aside by process 0 (to
    ``checkpoints/corrupt/``), a warning names the lost step and why, the manager is reloaded
    in place (``manager.reload()``: the caller's manager stays valid and no longer lists it),
    and the next older one is tried; all processes agree on each step and outcome. If none is
    readable: :class:`NoCheckpointError`. With ``step``: :class:`NoCheckpointError` if it is
    not there, :class:`CheckpointError` if it cannot be read; nothing is moved.
    """
    directory = epath.Path(manager.directory)
    where = os.fspath(directory)
    if step is not None:
        step = int(step)
        available = sorted(manager.all_steps())
        if step not in available:
            raise NoCheckpointError(
                f"no checkpoint for step {step} in {where}; available: {available}")
        attempt = _try_step(directory, step, state, data_iter, config, system_keys)
        code = parallel.all_processes_max(attempt.code)
        if code == _OK:
            return attempt.state, True
        if code == _INCOMPATIBLE:
            raise attempt.error or CheckpointError(
                f"checkpoint step {step} in {where} cannot be restored (see process 0's log)")
        raise CheckpointError(
            f"checkpoint step {step} in {where} cannot be read: "
            f"{attempt.reason or 'damaged on another process (see its log)'}. Choose another "
            f"step (available: {available}) or leave out eval.checkpoint_step to use the newest "
            f"readable one.")

    lost: list[tuple[int, str, str]] = []
    while True:
        candidate = _agreed_latest(manager)
        if candidate is None:
            if not lost:
                return state, False
            details = "; ".join(f"step {s}: {reason} (moved to {moved})"
                                for s, reason, moved in lost)
            raise NoCheckpointError(
                f"no readable checkpoint left in {where}: {details}. Start a new run with a new "
                f"--workdir (or remove {where}).")
        attempt = _try_step(directory, candidate, state, data_iter, config,
                           system_keys)
        code = parallel.all_processes_max(attempt.code)
        if code == _OK:
            if lost:
                log.warning(
                    "restored checkpoint step %d of %s; newer checkpoint(s) could not be read "
                    "and were moved aside, their training is lost and will be redone: %s",
                    candidate, where, "; ".join(f"step {s} ({reason}) -> {moved}"
                                                for s, reason, moved in lost))
            return attempt.state, True
        if code == _INCOMPATIBLE:
            raise attempt.error or CheckpointError(
                f"checkpoint step {candidate} in {where} cannot be restored (see process 0's "
                f"log)")
        reason = attempt.reason or "damaged on another process (see its log)"
        moved = ""
        if parallel.is_main_process():
            try:
                moved = os.fspath(_move_aside(directory, candidate))
            except Exception as err:  # pylint: disable=broad-except
                moved = f"FAILED: {_first_line(err)}"
        failed = parallel.all_processes_max(1 if moved.startswith("FAILED") else 0)
        if failed:
            raise CheckpointError(
                f"checkpoint step {candidate} in {where} cannot be read ({reason}) and could "
                f"not be moved aside ({moved or 'see process 0 log'}); remove or rename "
                f"{where}/{candidate} by hand and start again.")
        moved = moved or f"{where}/{CORRUPT_DIRNAME}/"
        log.warning("checkpoint step %d in %s cannot be read (%s); moved it to %s and trying "
                    "the next older checkpoint", candidate, where, reason, moved)
        lost.append((candidate, reason, moved))
        parallel.sync_global(f"checkpoint_moved_aside_{candidate}")
        manager.reload()


def require_checkpoint(workdir: str | os.PathLike) -> ocp.CheckpointManager:
    """A read-only manager for a workdir that must hold a checkpoint (evaluate, export).

    Raises :class:`NoCheckpointError` (a :class:`CheckpointError` and a ``FileNotFoundError``)
    naming the workdir when it holds none. Whether the checkpoints are readable is checked by
    :func:`restore_latest`, which moves damaged ones aside.
    """
    path = checkpoint_dir(workdir)
    if not path.exists() or not any(p.name.isdigit() for p in path.iterdir()):
        corrupt = path / CORRUPT_DIRNAME
        moved = sorted(p.name for p in corrupt.iterdir()) if corrupt.exists() else []
        note = (f" (unreadable checkpoints were moved to {os.fspath(corrupt)}: "
                f"{', '.join(moved)})" if moved else "")
        raise NoCheckpointError(
            f"no checkpoint in {os.fspath(path)}{note}: train first with --mode=train "
            f"--workdir={workdir}")
    return make_manager(workdir, read_only=True)


def recorded_config(workdir: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The config (JSON data) that checkpoint ``step`` (default: the latest) of ``workdir``
    was written with, e.g. to rebuild an earlier stage's networks from its own run.

    Raises NoCheckpointError when there is no checkpoint, CheckpointError when it records no
    config (written by an older version). A weights folder (an export folder,
    ``export.io.is_weights_folder``) is read as a run: the config its networks recorded.
    """
    from unmask_jax.export import io as export_io
    if export_io.is_weights_folder(workdir):
        try:
            return upgrade_recorded(export_io.weights_folder_config(workdir))
        except export_io.WeightsFolderError as e:
            raise CheckpointError(str(e)) from None
    manager = require_checkpoint(workdir)
    step = manager.latest_step() if step is None else step
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_meta(meta, step, os.fspath(checkpoint_dir(workdir)))
    if meta.get("config") is None:
        raise CheckpointError(f"checkpoint step {step} in {workdir} records no config")
    return upgrade_recorded(meta["config"])
