"""The config a mode runs with on an existing run: the run's own, recorded in its checkpoint.

Training records its config in every checkpoint (and an export folder, a weights folder, in
its manifest). ``--mode=evaluate``, ``predict``, ``export``, ``compile`` and ``summary`` on a
workdir that holds one start from that recording (read as today's code reads it:
``checkpoints.upgrade_recorded``), so a run trained with, say,
``--config.train.batch_size=2`` exports without repeating the flag. From the config given on
the command line (file + overrides) a mode takes only what it may change
(:data:`MODE_KEYS`, and the keys that may change in a resumed run); every other difference
is logged and left at the run's value, never a reason to refuse. A workdir without a
checkpoint (a compile before any training, PyTorch weights for predict) runs the given
config.
"""
from __future__ import annotations

import fnmatch
import json
import logging
from typing import Any, Sequence

from ml_collections import config_dict

log = logging.getLogger(__name__)

#: Keys each mode takes from the command line over the recorded config (fnmatch patterns).
MODE_KEYS: dict[str, tuple[str, ...]] = {
    # Other data to score (evaluate.EVAL_DATA_KEYS) and the evaluation's own settings.
    "evaluate": ("data.source", "data.data_dir", "data.eval_split", "data.source_options.*",
                 "data.mask.*", "data.framing", "data.face_scale", "data.num_workers",
                 "data.read_threads", "data.worker_buffer_size", "eval.*"),
    "predict": ("predict.*", "eval.checkpoint_step"),
    "export": ("eval.checkpoint_step",),
    # What a pod would run: the compute dtype (topology and batch are flags).
    "compile": ("train.compute_dtype", "train.state_sharding", "train.remat"),
    # The run's networks as they are.
    "summary": (),
}
MODES = tuple(MODE_KEYS)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _set(config: config_dict.ConfigDict, key: str, value: Any) -> None:
    """``config[key] = value`` for a dotted key, creating sections; a JSON list becomes a
    tuple (the configs hold sequences as tuples)."""
    *path, leaf = key.split(".")
    node = config
    for part in path:
        if part not in node or not isinstance(node[part], config_dict.ConfigDict):
            node[part] = config_dict.ConfigDict()
        node = node[part]
    if isinstance(value, list):  # JSON has no tuples; config sequences are tuples
        value = _tuples(value)
    try:
        node[leaf] = value
    except TypeError:  # a typed placeholder or another type: replace the field
        del node[leaf]
        node[leaf] = value


def merge(recorded: dict[str, Any], given: config_dict.ConfigDict, mode: str,
          system_keys: Sequence[str] = ()) -> tuple[config_dict.ConfigDict,
                                                    list[tuple[str, Any, Any]]]:
    """(the mode's config, the given values not used: (key, run's, given)). The given config
    with every recorded value put back except where the mode may change it."""
    from unmask_jax import checkpoints
    allowed = MODE_KEYS[mode]
    out = config_dict.ConfigDict(given.to_dict())
    rec = checkpoints.flatten(checkpoints.upgrade_recorded(recorded))
    now = checkpoints.flatten(checkpoints.config_to_json(given))
    ignored = []
    def kept(key: str) -> bool:  # the given value stands
        return any(fnmatch.fnmatchcase(key, p) for p in allowed)

    with out.unlocked():
        for key, value in rec.items():
            if not kept(key) and now.get(key, "<unset>") != value:
                if not checkpoints.is_safe_config_key(key, system_keys):
                    ignored.append((key, value, now.get(key, "<unset>")))
                _set(out, key, value)
        # Keys the run did not have (e.g. another config's network arguments) go, except
        # settings newer than the run (checkpoints.ADDED_KEYS) and those that may change.
        for key, value in now.items():
            if key in rec or kept(key) or checkpoints.is_safe_config_key(key, system_keys):
                continue
            if any(fnmatch.fnmatchcase(key, p) for p in checkpoints.ADDED_KEYS):
                continue
            ignored.append((key, "<unset>", value))
            _delete(out, key)
    return out, ignored


def _delete(config: config_dict.ConfigDict, key: str) -> None:
    """Delete ``key``, and the sections it leaves empty (another config's whole entry, e.g.
    a loss term the run did not have)."""
    *path, leaf = key.split(".")
    nodes = [config]
    for part in path:
        nodes.append(nodes[-1][part])
    del nodes[-1][leaf]
    for parent, part, node in zip(reversed(nodes[:-1]), reversed(path), reversed(nodes[1:])):
        if len(node):
            break
        del parent[part]


def for_mode(config: config_dict.ConfigDict, workdir: str | None, mode: str
             ) -> config_dict.ConfigDict:
    """The config ``mode`` runs with on ``workdir`` (see the module docstring)."""
    if mode not in MODE_KEYS or not workdir:
        return config
    from unmask_jax import checkpoints, systems
    try:
        recorded = checkpoints.recorded_config(workdir, config.eval.get("checkpoint_step"))
    except (checkpoints.CheckpointError, FileNotFoundError, KeyError, ValueError):
        return config  # no (readable) checkpoint here: the mode says what is missing
    # (recorded_config has applied checkpoints.upgrade_recorded already.)
    system_keys = (systems.system_class(config_dict.ConfigDict(recorded)).resume_safe_keys
                   if recorded.get("system") in systems.SYSTEMS else ())
    merged, ignored = merge(recorded, config, mode, system_keys)
    if ignored:
        log.info("--mode=%s uses the run's recorded config; these values given here are "
                 "not used (run -> given): %s", mode, ", ".join(
                     f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, a, b in ignored))
    return config_dict.ConfigDict(merged.to_dict())
