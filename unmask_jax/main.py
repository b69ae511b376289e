"""Entry point: flags -> distributed start-up -> mode.

    python -m unmask_jax.main --config=configs/pix2pix.py:quick --workdir=DIR \
        [--mode=train|evaluate|summary|export] [--config.train.batch_size=4 ...]
    python -m unmask_jax.main --config=CFG --workdir=DIR --mode=predict --input=PATH \
        --output=OUT [--config.predict.faces=largest ...]
    python -m unmask_jax.main --config=CFG --workdir=DIR --mode=compile --topology=v5e-256 \
        [--per_chip_batch=8]

A user mistake (unknown config key, bad value, missing dataset or weights file, a workdir
without a checkpoint or held by another run, a checkpoint this config cannot resume) prints
one message naming what to change and exits with status 2; no traceback. A failed training
(non-finite loss) exits with status 1 after saying where the last good checkpoint is.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import NoReturn

from absl import app, flags
from ml_collections import config_flags

MODES = ("train", "evaluate", "summary", "export", "predict", "compile")
USER_ERROR_STATUS = 2

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pix2pix.py:quick", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "--mode=export: output folder (default WORKDIR/export).")
_EXPORT_PT = flags.DEFINE_bool("export_pt", False, "--mode=export: also write .pt files.")
_INPUT = flags.DEFINE_string("input", None,
                             "--mode=predict: an image, a folder (recursive) or a glob.")
_OUTPUT = flags.DEFINE_string("output", None,
                              "--mode=predict: output folder (same relative paths, "
                              "report.json).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "--mode=compile: the slice to compile for: a TPU pod name (v5e-256, "
    "v4-32), a libtpu topology (v5e:2x4) or a GPU slice (h100:1x1x8).")
_PER_CHIP_BATCH = flags.DEFINE_integer("per_chip_batch", 8,
                                       "--mode=compile: images per device per step.")
_COMPILE_PROGRAMS = flags.DEFINE_string(
    "compile_programs", "train_step,predict",
    "--mode=compile: the programs to compile (train_step, predict), comma-separated.")
flags.mark_flags_as_required(["config"])

log = logging.getLogger("unmask_jax")


class UserError(Exception):
    """A mistake in the command, config or files, with a message saying what to change."""


def validate_config(config, mode: str = "train") -> None:
    """Fails fast on values the trainer would only reject later (after compiling)."""
    from data_pipelines import pipeline
    from unmask_jax import early_stopping, optim, systems

    pipeline.DataConfig.from_dict(config.data.to_dict())
    # A compile reads no weights file: the configured frozen networks, as shapes.
    system = systems.build(config, abstract_frozen=mode == "compile")
    if mode in ("train", "evaluate"):
        system.eval_variants()  # e.g. a two-stage evaluation that needs its first stage's run
        fid_weights = config.eval.get("fid_weights")
        if fid_weights and not os.path.isfile(fid_weights):
            from unmask_jax.features import fid
            fid.load_fid_variables(fid_weights)  # MissingWeightsError naming file and command
    if mode == "predict":
        from unmask_jax.predict import PredictOptions
        PredictOptions.from_config(config)
    optim.resolve_steps(config.train, "num", steps_per_epoch=1)
    rule = early_stopping.EarlyStopping.from_config(config.train.get("early_stopping"))
    if rule is not None:
        from unmask_jax.evaluate import METRIC_NAMES
        name = rule.metric.split("/")[-1]
        if name.removeprefix("raw_") not in METRIC_NAMES:
            raise ValueError(f"config.train.early_stopping.metric={rule.metric!r}: not an "
                             f"evaluation metric; choose one of {METRIC_NAMES} (raw_<name> for "
                             "the raw output, <variant>/<name> for a variant such as gt_mask)")
    for network in system.networks:
        optim.learning_rate_schedule(optim.network_settings(config.optim, network),
                                     steps_per_epoch=1)
    for key in ("log_every_steps", "sample_every_steps", "checkpoint_every_steps",
                "eval_every_steps", "batch_size"):
        if int(config.train[key]) <= 0:
            raise ValueError(f"config.train.{key}={config.train[key]} must be positive")


def summary(config, workdir: str | None) -> dict:
    """Parameter counts of every network; writes WORKDIR/summary.json and prints a table."""
    import jax
    from etils import epath

    from unmask_jax import models, systems

    system = systems.build(config)
    shapes = jax.eval_shape(
        lambda: system.init_variables(jax.random.PRNGKey(0), config.data.resolution))
    result = {"system": system.name, "networks": {}}
    for name, v in shapes.items():
        info = {"params": models.count_params(v["params"])}
        parts = {p: models.count_params(v["params"][p]) for p in system.summary_parts(name)
                 if p in v["params"]}
        if parts:
            info["parts"] = parts
        result["networks"][name] = info
    width = max([len(n) for n in result["networks"]] + [
        len(p) + 2 for info in result["networks"].values() for p in info.get("parts", {})])
    print(f"{config.name} (system {system.name}): {system.describe()}, "
          f"{config.data.resolution}x{config.data.resolution}")
    for name, info in result["networks"].items():
        print(f"  {name:<{width}}  {info['params']:>14,d} params")
        for part, count in info.get("parts", {}).items():
            print(f"    {part:<{width - 2}}  {count:>14,d}")
    if workdir:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user has something to fix (message, no traceback)."""
    from data_pipelines.landmarks.detect import LandmarkDetectorUnavailable
    from unmask_jax import aot, checkpoints, early_stopping, train, workdir_lock
    from unmask_jax.features import MissingWeightsError
    return (UserError, aot.DoesNotFit, aot.CompileSetupError, train.DataSetupError,
            checkpoints.CheckpointError, workdir_lock.WorkdirLockedError,
            early_stopping.EarlyStoppingMetricError, MissingWeightsError,
            LandmarkDetectorUnavailable, FileNotFoundError, NotADirectoryError, PermissionError)


def _fail(message: str, status: int = USER_ERROR_STATUS) -> NoReturn:
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(status)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    try:  # ml_collections loads the file lazily: a missing or broken one fails here
        config.to_dict()
    except (OSError, AttributeError, ValueError, TypeError, SyntaxError, ImportError) as e:
        _fail(f"--config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}: "
              f"{str(e).strip()}")
    mode = _MODE.value
    workdir = _WORKDIR.value
    if mode != "summary" and not workdir:
        raise app.UsageError(f"--workdir is required for --mode={mode}")

    import jax

    from unmask_jax import parallel
    from unmask_jax.backends import host_allocator
    try:
        parallel.initialize_distributed(
            parallel.DistributedConfig.from_dict(config.distributed.to_dict()))
    except ValueError as e:
        _fail(f"distributed start-up: {e}")
    # glibc arenas are per thread and fixed at a thread's first allocation: the settings must
    # come before the backend starts its threads (host_allocator.platform_before_start).
    log.info(host_allocator.configure(host_allocator.platform_before_start()
                                      or jax.default_backend()))
    try:
        # Evaluate, predict, export and compile on a run: its recorded config, with what the
        # mode may change taken from the command line.
        from unmask_jax import run_config
        config = run_config.for_mode(config, workdir, mode)
        validate_config(config, mode)
    except (ValueError, TypeError, KeyError) as e:
        _fail(f"bad config {config.name!r}: {e}")
    except _user_error_types() as e:  # e.g. a weights file the config names is missing
        _fail(str(e))

    try:
        _run_mode(config, mode, workdir)
    except _user_error_types() as e:
        if jax.process_count() > 1:
            log.error("%s", e)
            _exit_now(jax.process_index())
        _fail(str(e))
    except Exception:  # pylint: disable=broad-except
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
            _fail(f"training stopped: {e}", status=1)
    elif mode == "evaluate":
        from unmask_jax import evaluate
        evaluate.evaluate_checkpoint(config, workdir)
    elif mode == "export":
        from unmask_jax.export import checkpoint as export_checkpoint
        try:
            export_checkpoint.export_checkpoint(config, workdir, _EXPORT_DIR.value,
                                                write_pt=_EXPORT_PT.value)
        except ValueError as e:
            raise UserError(str(e)) from None
    elif mode == "compile":
        if not _TOPOLOGY.value:
            raise UserError("--mode=compile needs --topology=<slice>, e.g. v5e-256, v5e:2x4, "
                            "v4-32 or h100:1x1x8")
        from unmask_jax import aot
        aot.compile_for(config, workdir, _TOPOLOGY.value, _PER_CHIP_BATCH.value,
                        aot.parse_programs(_COMPILE_PROGRAMS.value))
    elif mode == "predict":
        if not _INPUT.value or not _OUTPUT.value:
            raise UserError("--mode=predict needs --input=<image, folder or glob> and "
                            "--output=<folder>")
        from unmask_jax import predict
        try:
            predict.predict(config, workdir, _INPUT.value, _OUTPUT.value)
        except predict.PredictSetupError as e:
            raise UserError(str(e)) from None


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


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a config mistake (a missing config file, an unknown key, a
    value of the wrong type) ending in one message and status 2 instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError, ValueError, TypeError, OSError, SyntaxError,
            ImportError) as e:
        message = f"{type(e).__name__}: {e}"
    print(f"error: {message}\nUsage: python -m unmask_jax.main --config=configs/<system>.py"
          "[:variant] --workdir=DIR [--mode=train|evaluate|summary|export|predict|compile] "
          "[--config.<key>=<value> ...]", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


def run() -> None:
    logging.getLogger().setLevel(logging.INFO)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
