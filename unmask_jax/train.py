"""The one trainer: any system's jitted, data-parallel step and the loop around it.

The system (``unmask_jax.systems``, chosen by ``config.system``) supplies its networks,
optimisers, frozen networks and a pure step ``(state, batch, frozen) -> (state, metrics)``.
The trainer compiles it once with explicit shardings over a 1-D ``data`` mesh (the state
laid out as ``train.state_sharding`` says: replicated, or its large optimizer-state and
parameter arrays split over the devices; frozen variables replicated; the batch split over
every device of every process), the state donated and the frozen variables not. Under
global-view jit, BatchNorm statistics cover the global batch, so one device and eight
devices compute the same step.

It owns the loop: data, checkpoints with the data iterator and the config, the workdir lock,
CLU metrics and sample grids, the evaluation schedule, preemption (SIGTERM saves and exits)
and the non-finite stop: a step whose loss or gradient is not finite leaves the state
unchanged (``systems.base.commit_if_finite``) and is reported; the loop then stops with a
message and the last good checkpoint stays the latest.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from data_pipelines import pipeline
from unmask_jax import checkpoints, early_stopping, evaluate, optim, parallel
from unmask_jax.programs import make_train_step
from unmask_jax import state as state_lib, systems, visualize, workdir_lock

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient."""


class DataSetupError(ValueError):
    """The configured data cannot be read (missing folder, empty split, bad option)."""


def steps_per_epoch(config, source_len: int) -> int:
    return max(1, source_len // config.train.batch_size)


def _per_process_batch(global_batch: int, what: str) -> int:
    n, count = jax.device_count(), jax.process_count()
    if global_batch % n:
        raise ValueError(f"{what}={global_batch} must be a multiple of the device count {n} "
                         "(data parallel: every device takes an equal slice)")
    return global_batch // count


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, returns the last
    evaluation and training metrics."""
    with workdir_lock.acquire(workdir):
        return _train(config, workdir)


def _train(config, workdir: str) -> dict[str, Any]:
    from clu import metric_writers  # imports TensorFlow: keep it out of module import time

    data_cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
    system = systems.build(config)
    mesh = parallel.make_data_mesh()
    parallel.log_topology(mesh)
    pid, pcount = parallel.process_shard()
    local_batch = _per_process_batch(config.train.batch_size, "config.train.batch_size")

    # Both splits are built and checked now, not at the first evaluation.
    try:
        source, eval_source = pipeline.build_sources(data_cfg)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        raise DataSetupError(f"data: {e}") from None
    spe = steps_per_epoch(config, len(source))
    num_steps = optim.resolve_steps(config.train, "num", spe)
    txs = system.optimizers(spe)
    rep = parallel.replicated_sharding(mesh)
    frozen = jax.device_put(system.load_frozen(), rep)

    init = functools.partial(state_lib.create_state, system, txs, config.seed,
                             data_cfg.resolution)
    layout = config.train.get("state_sharding", "replicated")
    state_sharding = state_lib.state_sharding(jax.eval_shape(init), mesh, layout)
    state = jax.jit(init, out_shardings=state_sharding)()
    data = pipeline.train_dataset(data_cfg, batch_size=local_batch, process_index=pid,
                                  process_count=pcount, source=source)
    data_iter = iter(data)

    manager = checkpoints.make_manager(workdir, config)
    state, resumed = checkpoints.restore_latest(manager, state, data_iter, config=config,
                                                system_keys=system.resume_safe_keys)
    start = int(state.step)
    if resumed:
        log.info("resumed from %s at step %d", workdir, start)
    else:
        state = state_lib.init_pretrained(config, system, state, state_sharding)

    writer = metric_writers.create_default_writer(
        workdir, just_logging=not parallel.is_main_process())
    if start == 0:
        writer.write_hparams({k: str(v) for k, v in
                             checkpoints.flatten(config.to_dict()).items()})
    step_fn = make_train_step(system, txs, mesh, state_sharding)
    evaluator = evaluate.Evaluator(config, system, mesh, frozen=frozen, source=eval_source)
    lr_fns = {name: optim.learning_rate_schedule(optim.network_settings(config.optim, name),
                                                 spe) for name in txs}
    sample_batch = None

    rule = early_stopping.EarlyStopping.from_config(config.train.get("early_stopping"))
    history = early_stopping.read_history(workdir, rule, start) if rule else []
    if rule and rule.status(history)[0]:
        _log_early_stop(rule, history, start)
        return {"step": start, "eval": {}, "early_stopped": True}

    preempt = parallel.PreemptionMonitor()
    stop_at = num_steps
    if config.train.stop_after_steps is not None:
        stop_at = min(num_steps, start + int(config.train.stop_after_steps))
    pending: list[dict[str, jax.Array]] = []
    last_eval: dict[str, Any] = {}
    t_log, n_log = time.perf_counter(), 0
    first_window = True  # the first logging window after a start includes compilation
    t_start = time.perf_counter()
    step = start
    log.info("training %s (system %s: %s): steps %d -> %d of %d, global batch %d (%d per "
             "process), %d steps per epoch", config.name, system.name, system.describe(),
             start, stop_at, num_steps, config.train.batch_size, local_batch, spe)
    try:
        while step < stop_at:
            batch = parallel.global_batch(next(data_iter), mesh)
            if sample_batch is None:
                sample_batch = batch  # the first batch, kept on device for sample grids
            state, metrics = step_fn(state, batch, frozen)
            step += 1
            if pending:
                # At most two steps in flight: the next batch is prepared while this step
                # runs, and SIGTERM / NaN checks see the device's step, not one far ahead.
                jax.block_until_ready(pending[-1])
            pending.append(metrics)
            n_log += 1
            if step % config.train.log_every_steps == 0 or step == stop_at:
                now = time.perf_counter()
                summary = _summarise(pending)
                pending.clear()
                dt = (now - t_log) / max(n_log, 1)
                for name, fn in lr_fns.items():
                    summary["lr" if len(lr_fns) == 1 or name == "generator"
                            else f"lr_{name}"] = float(fn(step - 1))
                summary.update({"step_time_s": dt, "images_per_s": config.train.batch_size / dt})
                writer.write_scalars(step, summary)
                if parallel.is_main_process():
                    record_speed(workdir, config.train.batch_size, step, dt,
                                 first_window=first_window)
                eta = (num_steps - step) * dt
                shown = [k for k in summary if k.endswith("_loss")]
                log.info("step %d/%d  %s  %.3fs/step  %.1f img/s  ETA %s", step, num_steps,
                         "  ".join(f"{k}={summary[k]:.4f}" for k in shown),
                         dt, summary["images_per_s"], _fmt_time(eta))
                t_log, n_log, first_window = now, 0, False
                if summary.get("nonfinite", 0) > 0:
                    manager.wait_until_finished()
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at step <= {step} "
                        f"({summary['nonfinite'] * 100:.0f}% of the last steps); those "
                        f"updates were not applied. Last good checkpoint: step "
                        f"{manager.latest_step()} in {workdir}. Lower optim.lr or use float32.")
            if step % config.train.sample_every_steps == 0 or step == stop_at:
                _write_samples(writer, workdir, step, evaluator.predict(state, sample_batch),
                               config.train.num_samples)
            preempted = preempt.reached(step)
            saved = step % config.train.checkpoint_every_steps == 0 or step == stop_at
            if saved or preempted:
                checkpoints.save(manager, step, state, data_iter, config=config)
            if preempted:
                log.warning("preemption: checkpoint saved at step %d; exiting", step)
                manager.wait_until_finished()
                return {"step": step, "preempted": True}
            if step % config.train.eval_every_steps == 0 or step == num_steps:
                last_eval = evaluator(state, workdir=workdir, writer=writer)
                if rule:
                    try:
                        history.append((step, rule.value(last_eval)))
                        stop = rule.status(history)[0]
                    except early_stopping.EarlyStoppingMetricError:  # keep the work, then say
                        if not saved:
                            checkpoints.save(manager, step, state, data_iter, config=config)
                        raise
                    if stop:
                        if not saved:
                            checkpoints.save(manager, step, state, data_iter, config=config)
                        _log_early_stop(rule, history, step)
                        return {"step": step, "eval": last_eval, "early_stopped": True}
    finally:
        manager.wait_until_finished()
        preempt.close()
        writer.flush()
    log.info("done: %d steps in %s", step - start, _fmt_time(time.perf_counter() - t_start))
    return {"step": step, "eval": last_eval}


SPEED_FILE = "train_speed.json"
#: Logging windows kept in ``train_speed.json`` (the newest ones).
SPEED_WINDOWS = 1000


def record_speed(workdir: str, batch_size: int, step: int, step_time_s: float, *,
                 first_window: bool) -> dict[str, Any]:
    """Adds one logging window's mean step time to ``<workdir>/train_speed.json`` and
    rewrites its summary: ``step_time_s`` / ``images_per_s`` are the median over the windows
    (across resumes). The first window after each start holds the compilation and is kept
    apart (``first_windows``); it counts only while no other window exists."""
    path = epath.Path(workdir) / SPEED_FILE
    record: dict[str, Any] = {"windows": [], "first_windows": []}
    if path.exists():
        try:
            record.update(json.loads(path.read_text()))
        except (json.JSONDecodeError, OSError):
            log.warning("%s is unreadable; the training speed record starts again", path)
    key = "first_windows" if first_window else "windows"
    record[key] = [w for w in record[key] if w[0] != step][-(SPEED_WINDOWS - 1):]
    record[key].append([int(step), float(step_time_s)])
    times = [t for _, t in (record["windows"] or record["first_windows"])]
    median = float(np.median(times))
    record.update({"batch_size": int(batch_size), "step_time_s": median,
                   "images_per_s": batch_size / median if median > 0 else None,
                   "includes_compilation": not record["windows"],
                   **evaluate.device_description()})
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _log_early_stop(rule, history, step: int) -> None:
    _, best_step, best, since = rule.status(history)
    log.warning("early stopping at step %d: %s has not improved on %.4f (step %d) for %d "
                "evaluations (patience %d)", step, rule.metric, best, best_step, since,
                rule.patience)


def _summarise(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
    fetched = jax.device_get(pending)  # one host transfer per logging interval
    keys = fetched[0].keys()
    return {k: float(np.mean([m[k] for m in fetched])) for k in keys}


def _write_samples(writer, workdir, step, generated: dict[str, jax.Array], n: int) -> None:
    """Sample grid (rows: masked | [predicted map | true map] | [output] | target) to
    TensorBoard and samples/*.png."""
    if parallel.is_main_process():
        g = {k: np.asarray(v[:n]) for k, v in generated.items()}
        rows = [g["input_masked"]]
        if "mask" in g:  # a predicted mask map: shown next to the true one
            rows += [g["mask"] * 2.0 - 1.0, g["input_mask"] * 2.0 - 1.0]
        if "output" in g:
            rows.append(g["output"])
        grid = visualize.sample_grid(*rows, g["input_target"])
        writer.write_images(step, {"samples": grid[None]})
        visualize.write_png(os.path.join(workdir, "samples", f"step_{step:08d}.png"), grid)


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
