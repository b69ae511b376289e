"""Entry point: flags -> distributed start-up -> mode.

    python -m unmask_jax.main --config=configs/pix2pix.py:quick --workdir=DIR \
        [--mode=train|evaluate|summary|export] [--config.train.batch_size=4 ...]

Unknown config keys (``--config.nope=1``) and bad values stop at start-up with a message.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import NoReturn

from absl import app, flags
from ml_collections import config_flags

MODES = ("train", "evaluate", "summary", "export")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pix2pix.py:quick", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "--mode=export: output folder (default WORKDIR/export).")
_EXPORT_PT = flags.DEFINE_bool("export_pt", False, "--mode=export: also write .pt files.")
flags.mark_flags_as_required(["config"])

log = logging.getLogger("unmask_jax")


def validate_config(config) -> None:
    """Fails fast on values the trainer would only reject later (after compiling)."""
    from data_pipelines import pipeline
    from unmask_jax import gan, optim

    pipeline.DataConfig.from_dict(config.data.to_dict())
    gan.build_system(config)
    optim.resolve_steps(config.train, "num", steps_per_epoch=1)
    optim.learning_rate_schedule(config.optim, steps_per_epoch=1)
    for key in ("log_every_steps", "sample_every_steps", "checkpoint_every_steps",
                "eval_every_steps", "batch_size"):
        if int(config.train[key]) <= 0:
            raise ValueError(f"config.train.{key}={config.train[key]} must be positive")


def summary(config, workdir: str | None) -> dict:
    """Parameter counts of every network; writes WORKDIR/summary.json and prints a table."""
    import jax
    from etils import epath

    from unmask_jax import gan, models

    system = gan.build_system(config)
    shapes = jax.eval_shape(
        lambda: gan.init_variables(system, jax.random.PRNGKey(0), config.data.resolution))
    result = {"networks": {name: {"params": models.count_params(v["params"])}
                           for name, v in shapes.items()}}
    width = max(len(n) for n in result["networks"])
    print(f"{config.name}: {system.input_channels()}-channel generator input, "
          f"{config.data.resolution}x{config.data.resolution}")
    for name, info in result["networks"].items():
        print(f"  {name:<{width}}  {info['params']:>14,d} params")
    if workdir:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    mode = _MODE.value
    workdir = _WORKDIR.value
    if mode != "summary" and not workdir:
        raise app.UsageError(f"--workdir is required for --mode={mode}")

    from unmask_jax import host_allocator, parallel  # before any device access
    log.info(host_allocator.configure())
    parallel.initialize_distributed(
        parallel.DistributedConfig.from_dict(config.distributed.to_dict()))
    try:
        validate_config(config)
    except (ValueError, TypeError, KeyError) as e:
        raise app.UsageError(f"bad config {config.name!r}: {e}") from None

    try:
        _run_mode(config, mode, workdir)
    except Exception:  # pylint: disable=broad-except
        import jax
        if jax.process_count() > 1:
            _exit_now(jax.process_index())
        raise


def _run_mode(config, mode: str, workdir: str | None) -> None:
    if mode == "summary":
        summary(config, workdir)
    elif mode == "train":
        from unmask_jax import train
        try:
            train.train_and_evaluate(config, workdir)
        except train.NonFiniteLossError as e:
            log.error("training stopped: %s", e)
            sys.exit(1)
    elif mode == "evaluate":
        from unmask_jax import evaluate
        evaluate.evaluate_checkpoint(config, workdir)
    elif mode == "export":
        from unmask_jax.export import checkpoint as export_checkpoint
        export_checkpoint.export_checkpoint(config, workdir, _EXPORT_DIR.value,
                                            write_pt=_EXPORT_PT.value)


def _exit_now(process_index: int) -> NoReturn:
    """Ends this process at once (status 1) after an exception in a multi-process run.

    A normal exit would wait at JAX's distributed shutdown barrier (up to 300 s) for the
    other processes, which wait in their next collective for this one: the whole job would
    hang. Exiting now, without the barrier, makes the others abort after
    ``distributed.heartbeat_timeout_s``, as when a process crashes.
    """
    log.exception("process %d failed; exiting now so that the other processes stop too",
                  process_index)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def run() -> None:
    logging.getLogger().setLevel(logging.INFO)
    app.run(main)


if __name__ == "__main__":
    run()
