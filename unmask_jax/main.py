"""Entry point: flags -> distributed start-up -> mode.

    python -m unmask_jax.main --config=configs/pix2pix.py:quick --workdir=DIR \
        [--mode=train|evaluate|summary|export] [--config.train.batch_size=4 ...]
    python -m unmask_jax.main --mode=predict --input=PATH --output=OUT \
        [--weights=DIR | --config=CFG --workdir=DIR] [--config.predict.faces=largest ...]
    python -m unmask_jax.main --config=CFG --workdir=DIR --mode=compile --topology=v5e-256 \
        [--per_chip_batch=8] [--breakdown]

Predict with neither ``--workdir`` nor ``--weights`` uses the starter weights
(``weights/ganmasker_starter``); ``--config`` is then optional (its ``predict`` section
applies over the weights' recorded config).

A user mistake (unknown config key, bad value, missing dataset or weights file, a workdir
without a checkpoint or held by another run, a checkpoint this config cannot resume) prints
one message naming what to change and exits with status 2; no traceback. A failed training
(non-finite loss) exits with status 1 after saying where the last good checkpoint is.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from unmask_jax.exits import USER_ERROR_STATUS, UserError, exit_now, fail

#: Modes that read a weights folder (--weights) as well as a run.
WEIGHTS_MODES = ("predict", "export", "summary")
INTERRUPTED_STATUS = 130  # the shell's status for a process ended by Ctrl-C
MODES = ("train", "evaluate", "summary", "export", "predict", "compile")
log = logging.getLogger("unmask_jax")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The config ``--mode=predict`` starts from when none is given: the shared defaults (the
#: weights' recorded config replaces all but its ``predict`` section).
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.py")
#: The weights ``--mode=predict`` uses when given neither ``--workdir`` nor ``--weights``.
STARTER_WEIGHTS = os.path.join(ROOT, "weights", "ganmasker_starter")

_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Config file, e.g. configs/pix2pix.py:quick (required except "
    "for --mode=predict with weights)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "--mode=predict/export/summary: a weights folder (what --mode=export "
    "writes, e.g. weights/ganmasker_starter) instead of --workdir. Predict with neither (and "
    "summary with neither and no --config) uses the starter weights.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "--mode=export: output folder (default WORKDIR/export).")
_EXPORT_PT = flags.DEFINE_bool("export_pt", False, "--mode=export: also write .pt files.")
_EXPORT_ONNX = flags.DEFINE_bool(
    "export_onnx", False, "--mode=export: also write .onnx files (dynamic batch), each checked "
    "against the Flax network with onnxruntime; needs pip install -e \".[onnx]\".")
_EXPORT_NETWORKS = flags.DEFINE_list(
    "export_networks", [], "--mode=export: only these networks (default: all), e.g. "
    "generator; a run the config names (an earlier stage) is exported whole beside them.")
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
_BREAKDOWN = flags.DEFINE_bool(
    "breakdown", False, "--mode=compile: also account for each program's HBM bytes and FLOPs "
    "op by op, named by layer (the report's 'where the bytes go' tables).")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    try:  # ml_collections loads the file lazily: a missing or broken one fails here
        config.to_dict()
    except (OSError, AttributeError, ValueError, TypeError, SyntaxError, ImportError) as e:
        fail(f"--config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}: "
              f"{str(e).strip()}")
    mode = _MODE.value
    workdir = _run_folder(mode)

    import jax

    from unmask_jax import parallel, platforms
    from unmask_jax.backends import host_allocator
    if mode != "compile":  # compile reports its compilation times: compile afresh
        platforms.enable_compilation_cache()
    try:
        parallel.initialize_distributed(
            parallel.DistributedConfig.from_dict(config.distributed.to_dict()))
    except ValueError as e:
        fail(f"distributed start-up: {e}")
    # glibc arenas are per thread and fixed at a thread's first allocation: the settings must
    # come before the backend starts its threads (host_allocator.platform_before_start).
    log.info(host_allocator.configure(host_allocator.platform_before_start()
                                      or jax.default_backend()))
    try:
        # Evaluate, predict, export and compile on a run: its recorded config, with what the
        # mode may change taken from the command line.
        from unmask_jax import run_config, validation
        config = run_config.for_mode(config, workdir, mode)
        validation.validate_config(config, mode)
    except (ValueError, TypeError, KeyError) as e:
        fail(f"bad config {config.name!r}: {e}")
    except user_error_types() as e:  # e.g. a weights file the config names is missing
        fail(str(e))

    try:
        _run_mode(config, mode, workdir)
    except user_error_types() as e:
        if jax.process_count() > 1:
            log.error("%s", e)
            exit_now(jax.process_index())
        fail(str(e))
    except Exception:  # pylint: disable=broad-except
        if jax.process_count() > 1:
            exit_now(jax.process_index())
        raise


def _run_folder(mode: str) -> str | None:
    """The run (or weights folder) the mode reads; exits with a usage message when it is
    missing or ``--config`` is needed and was not given."""
    workdir, weights = _WORKDIR.value, _WEIGHTS.value
    if workdir and weights:
        raise app.UsageError("give --workdir (a run) or --weights (a weights folder), not both")
    if weights and mode not in WEIGHTS_MODES:
        raise app.UsageError(f"--weights is for --mode={', '.join(WEIGHTS_MODES)}; "
                             f"--mode={mode} takes --workdir")
    starter = mode == "predict" or (mode == "summary" and not flags.FLAGS["config"].present)
    if starter and not workdir and not weights:
        weights = STARTER_WEIGHTS
        if not os.path.isdir(weights):
            fail(f"no --workdir or --weights given and the starter weights are not at "
                 f"{weights}: name a trained run with --config=... --workdir=... or a weights "
                 "folder with --weights=DIR")
    if weights:
        from unmask_jax.export import io as export_io
        if not export_io.is_weights_folder(weights):
            fail(f"--weights={weights}: not a weights folder (it needs the manifest.json and "
                 ".safetensors that --mode=export writes)")
        return weights
    if not flags.FLAGS["config"].present:
        raise app.UsageError(f"--config is required for --mode={mode}")
    if mode != "summary" and not workdir:
        raise app.UsageError(f"--workdir is required for --mode={mode}")
    return workdir


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user has something to fix (message, no traceback)."""
    from data_pipelines.landmarks.detect import LandmarkDetectorUnavailable
    from unmask_jax import aot, checkpoints, early_stopping, train, workdir_lock
    from unmask_jax.features import MissingWeightsError
    return (UserError, aot.DoesNotFit, aot.CompileSetupError, train.DataSetupError,
            checkpoints.CheckpointError, workdir_lock.WorkdirLockedError,
            early_stopping.EarlyStoppingMetricError, MissingWeightsError,
            LandmarkDetectorUnavailable, FileNotFoundError, NotADirectoryError, PermissionError)


def _run_mode(config, mode: str, workdir: str | None) -> None:
    if mode == "summary":
        from unmask_jax import summary
        summary.summary(config, workdir)
    elif mode == "train":
        from unmask_jax import train
        try:
            train.train_and_evaluate(config, workdir)
        except train.NonFiniteLossError as e:
            fail(f"training stopped: {e}", status=1)
    elif mode == "evaluate":
        from unmask_jax import evaluate
        evaluate.evaluate_checkpoint(config, workdir)
    elif mode == "export":
        from unmask_jax.export import checkpoint as export_checkpoint
        try:
            export_checkpoint.export_checkpoint(config, workdir, _EXPORT_DIR.value,
                                                write_pt=_EXPORT_PT.value,
                                                write_onnx=_EXPORT_ONNX.value,
                                                networks=_EXPORT_NETWORKS.value)
        except ValueError as e:
            raise UserError(str(e)) from None
    elif mode == "compile":
        if not _TOPOLOGY.value:
            raise UserError("--mode=compile needs --topology=<slice>, e.g. v5e-256, v5e:2x4, "
                            "v4-32 or h100:1x1x8")
        from unmask_jax import aot
        aot.compile_for(config, workdir, _TOPOLOGY.value, _PER_CHIP_BATCH.value,
                        aot.parse_programs(_COMPILE_PROGRAMS.value),
                        breakdown=_BREAKDOWN.value)
    elif mode == "predict":
        if not _INPUT.value or not _OUTPUT.value:
            raise UserError("--mode=predict needs --input=<image, folder or glob> and "
                            "--output=<folder>")
        from unmask_jax import predict
        try:
            predict.predict(config, workdir, _INPUT.value, _OUTPUT.value)
        except predict.PredictSetupError as e:
            raise UserError(str(e)) from None
        except predict.PredictInterrupted as e:
            fail(f"interrupted (Ctrl-C); the report of the files done so far is "
                 f"{e.report_path}", status=INTERRUPTED_STATUS)


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
