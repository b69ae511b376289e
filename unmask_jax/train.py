"""The one trainer: a jitted, data-parallel G/D step and the loop around it.

The step is a pure function ``(state, batch) -> (state, metrics)`` compiled once with explicit
shardings over a 1-D ``data`` mesh (state replicated, batch split over every device of every
process) and the state buffers donated. Under global-view jit, BatchNorm statistics cover the
global batch, so one device and eight devices compute the same step.

Per iteration, as in the PyTorch pix2pix reference: one generator forward pass; a
discriminator update on (real, detached fake); then a generator update against the *updated*
discriminator, reusing the same forward pass (its VJP) so the generator runs forward once.
A non-finite loss or gradient leaves the state unchanged for that step and is reported; the
loop then stops with a message and the last good checkpoint stays the latest.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines import pipeline
from unmask_jax import checkpoints, evaluate, gan, losses, optim, parallel, visualize

log = logging.getLogger(__name__)


class NetState(flax.struct.PyTreeNode):
    params: Any
    batch_stats: Any
    opt_state: Any


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    rng: jax.Array  # raw uint32 key data (checkpoint-friendly)
    generator: NetState
    discriminator: NetState


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient."""


# --------------------------------------------------------------------------------------------
# State and step (pure).
# --------------------------------------------------------------------------------------------


def create_state(system: gan.GanSystem, g_tx: optax.GradientTransformation,
                 d_tx: optax.GradientTransformation, seed: int, resolution: int) -> TrainState:
    rng = jax.random.PRNGKey(seed)
    init_rng, train_rng = jax.random.split(rng)
    variables = gan.init_variables(system, init_rng, resolution)

    def net(v, tx):
        return NetState(params=v["params"], batch_stats=v.get("batch_stats", {}),
                        opt_state=tx.init(v["params"]))

    return TrainState(step=jnp.zeros((), jnp.int32), rng=train_rng,
                      generator=net(variables["generator"], g_tx),
                      discriminator=net(variables["discriminator"], d_tx))


def _apply_train(module, params, batch_stats, x, rngs=None):
    out, mutated = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                rngs=rngs or {}, mutable=["batch_stats"])
    return out, mutated.get("batch_stats", batch_stats)


def _all_finite(*trees) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack(leaves))


def train_step(state: TrainState, batch: gan.Batch, *, system: gan.GanSystem,
               g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One D update and one G update. Pure; jit it with ``make_train_step``."""
    G, D = system.generator, system.discriminator
    rng = jax.random.fold_in(state.rng, state.step)
    g_in = system.generator_input(batch)

    def generate(g_params):
        out, bs = _apply_train(G, g_params, state.generator.batch_stats, g_in,
                               rngs={"dropout": rng})
        if system.composite_in_training:
            out = gan.composite(out, batch)
        return out, bs

    fake, g_vjp, g_batch_stats = jax.vjp(generate, state.generator.params, has_aux=True)

    # Discriminator: real vs detached fake, two calls (separate BN batches, as in PyTorch).
    def d_loss_fn(d_params):
        fake_logits, bs = _apply_train(D, d_params, state.discriminator.batch_stats,
                                       system.discriminator_input(g_in,
                                                                  jax.lax.stop_gradient(fake)))
        real_logits, bs = _apply_train(D, d_params, bs,
                                       system.discriminator_input(g_in, batch["target"]))
        loss = losses.discriminator_loss(real_logits, fake_logits, system.gan_kind,
                                         system.d_scale)
        return loss, bs

    (d_loss, d_batch_stats), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state.discriminator.params)
    d_updates, d_opt_state = d_tx.update(d_grads, state.discriminator.opt_state,
                                         state.discriminator.params)
    d_params = optax.apply_updates(state.discriminator.params, d_updates)

    # Generator: adversarial term against the updated D plus reconstruction terms.
    def g_loss_fn(output):
        logits, bs = _apply_train(D, d_params, d_batch_stats,
                                  system.discriminator_input(g_in, output))
        adv = losses.generator_gan_loss(logits, system.gan_kind)
        recon, terms = system.reconstruction_loss(output, batch["target"])
        return system.gan_weight * adv + recon, (bs, adv, terms)

    (g_loss, (d_batch_stats, g_adv, g_terms)), d_output = jax.value_and_grad(
        g_loss_fn, has_aux=True)(fake)
    (g_grads,) = g_vjp(d_output)

    # Commit only a finite step. The generator's optimizer update runs *inside* the taken
    # branch, so the common path writes the new parameters once and copies nothing; the
    # other branch keeps the old buffers. (A select or a conditional over the finished new
    # state copied the whole G state every step: 10-20% of a CPU step.)
    finite = _all_finite(d_loss, g_loss, d_grads, g_grads)

    def commit(operands):
        g_params, g_opt_state, g_grads, d_params, d_opt_state = operands
        g_updates, g_opt_state = g_tx.update(g_grads, g_opt_state, g_params)
        return optax.apply_updates(g_params, g_updates), g_opt_state, d_params, d_opt_state

    def keep(operands):
        g_params, g_opt_state = operands[:2]
        return g_params, g_opt_state, state.discriminator.params, state.discriminator.opt_state

    g_params, g_opt_state, d_params, d_opt_state = jax.lax.cond(
        finite, commit, keep,
        (state.generator.params, state.generator.opt_state, g_grads, d_params, d_opt_state))
    g_batch_stats, d_batch_stats = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), (g_batch_stats, d_batch_stats),
        (state.generator.batch_stats, state.discriminator.batch_stats))
    new_state = TrainState(
        step=state.step + 1, rng=state.rng,
        generator=NetState(g_params, g_batch_stats, g_opt_state),
        discriminator=NetState(d_params, d_batch_stats, d_opt_state))
    metrics = {"d_loss": d_loss, "g_loss": g_loss, "g_gan": g_adv,
               "nonfinite": 1.0 - finite.astype(jnp.float32), **g_terms}
    return new_state, metrics


def make_train_step(system, g_tx, d_tx, mesh, state_sharding) -> Callable:
    """``train_step`` jitted with explicit shardings and the state donated."""
    step = functools.partial(train_step, system=system, g_tx=g_tx, d_tx=d_tx)
    return jax.jit(step, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                   out_shardings=(state_sharding, parallel.replicated_sharding(mesh)),
                   donate_argnums=(0,))


def make_generate(system: gan.GanSystem, mesh) -> Callable:
    """Jitted eval-mode generator: (state, batch) -> composited output in [-1, 1]."""
    def generate(state: TrainState, batch):
        return gan.generate(system, state.generator.params, state.generator.batch_stats, batch)
    return jax.jit(generate, out_shardings=parallel.replicated_sharding(mesh))


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------


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
    from clu import metric_writers  # imports TensorFlow: keep it out of module import time

    data_cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
    system = gan.build_system(config)
    mesh = parallel.make_data_mesh()
    parallel.log_topology(mesh)
    pid, pcount = parallel.process_shard()
    local_batch = _per_process_batch(config.train.batch_size, "config.train.batch_size")

    source = pipeline.build_source(data_cfg, data_cfg.train_split)
    spe = steps_per_epoch(config, len(source))
    num_steps = optim.resolve_steps(config.train, "num", spe)
    g_tx = optim.adam(config.optim, spe)
    d_tx = optim.adam(config.optim, spe)

    state_sharding = parallel.replicated_sharding(mesh)
    init = jax.jit(functools.partial(create_state, system, g_tx, d_tx, config.seed,
                                     data_cfg.resolution), out_shardings=state_sharding)
    state = init()
    data = pipeline.train_dataset(data_cfg, batch_size=local_batch, process_index=pid,
                                  process_count=pcount, source=source)
    data_iter = iter(data)

    manager = checkpoints.make_manager(workdir, config)
    state, resumed = checkpoints.restore_latest(manager, state, data_iter)
    start = int(state.step)
    if resumed:
        log.info("resumed from %s at step %d", workdir, start)
    elif config.model.generator_init or config.model.discriminator_init:
        state = _init_from_torch(config, state, state_sharding)

    writer = metric_writers.create_default_writer(
        workdir, just_logging=not parallel.is_main_process())
    if start == 0:
        writer.write_hparams({k: str(v) for k, v in _flatten(config.to_dict()).items()})
    step_fn = make_train_step(system, g_tx, d_tx, mesh, state_sharding)
    generate = make_generate(system, mesh)
    lr_fn = optim.learning_rate_schedule(config.optim, spe)
    feature_metrics = evaluate.FeatureMetrics.from_config(config)
    sample_batch = None

    preempt = parallel.PreemptionMonitor()
    stop_at = num_steps
    if config.train.stop_after_steps is not None:
        stop_at = min(num_steps, start + int(config.train.stop_after_steps))
    pending: list[dict[str, jax.Array]] = []
    last_eval: dict[str, Any] = {}
    t_log, n_log = time.perf_counter(), 0
    t_start = time.perf_counter()
    step = start
    log.info("training %s: steps %d -> %d of %d, global batch %d (%d per process), "
             "%d steps per epoch", config.name, start, stop_at, num_steps,
             config.train.batch_size, local_batch, spe)
    try:
        while step < stop_at:
            batch = parallel.global_batch(next(data_iter), mesh)
            if sample_batch is None:
                sample_batch = batch  # the first batch, kept on device for sample grids
            state, metrics = step_fn(state, batch)
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
                summary.update({"lr": float(lr_fn(step - 1)), "step_time_s": dt,
                                "images_per_s": config.train.batch_size / dt})
                writer.write_scalars(step, summary)
                eta = (num_steps - step) * dt
                log.info("step %d/%d  %s  %.3fs/step  %.1f img/s  ETA %s", step, num_steps,
                         "  ".join(f"{k}={summary[k]:.4f}" for k in ("d_loss", "g_loss")),
                         dt, summary["images_per_s"], _fmt_time(eta))
                t_log, n_log = now, 0
                if summary["nonfinite"] > 0:
                    manager.wait_until_finished()
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at step <= {step} "
                        f"({summary['nonfinite'] * 100:.0f}% of the last steps); those "
                        f"updates were not applied. Last good checkpoint: step "
                        f"{manager.latest_step()} in {workdir}. Lower optim.lr or use float32.")
            if step % config.train.sample_every_steps == 0 or step == stop_at:
                _write_samples(writer, workdir, step, generate(state, sample_batch),
                               config.train.num_samples)
            preempted = preempt.reached(step)
            if step % config.train.checkpoint_every_steps == 0 or step == stop_at or preempted:
                checkpoints.save(manager, step, state, data_iter)
            if preempted:
                log.warning("preemption: checkpoint saved at step %d; exiting", step)
                manager.wait_until_finished()
                return {"step": step, "preempted": True}
            if step % config.train.eval_every_steps == 0 or step == num_steps:
                last_eval = evaluate.evaluate(config, state, workdir=workdir, mesh=mesh,
                                              system=system, writer=writer,
                                              features=feature_metrics)
    finally:
        manager.wait_until_finished()
        preempt.close()
        writer.flush()
    log.info("done: %d steps in %s", step - start, _fmt_time(time.perf_counter() - t_start))
    return {"step": step, "eval": last_eval}


def _init_from_torch(config, state: TrainState, sharding) -> TrainState:
    """Initial weights from PyTorch state dicts (config.model.*_init); optimizer state is
    shape-only at step 0 and stays as initialised."""
    from unmask_jax.export import checkpoint as export_checkpoint
    nets = ("generator", "discriminator")
    variables = {n: {"params": getattr(state, n).params,
                     "batch_stats": getattr(state, n).batch_stats} for n in nets}
    loaded = export_checkpoint.init_from_torch(config, variables)
    for n in nets:
        net = getattr(state, n).replace(params=loaded[n]["params"],
                                        batch_stats=loaded[n].get("batch_stats", {}))
        state = state.replace(**{n: net})
    return jax.device_put(state, sharding)


def _summarise(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
    fetched = jax.device_get(pending)  # one host transfer per logging interval
    keys = fetched[0].keys()
    return {k: float(np.mean([m[k] for m in fetched])) for k in keys}


def _write_samples(writer, workdir, step, generated: dict[str, jax.Array], n: int) -> None:
    """Sample grid (rows: masked | output | target) to TensorBoard and samples/*.png."""
    if parallel.is_main_process():
        g = {k: np.asarray(v[:n]) for k, v in generated.items() if k != "raw"}
        grid = visualize.sample_grid(g["masked"], g["output"], g["target"])
        writer.write_images(step, {"samples": grid[None]})
        visualize.write_png(os.path.join(workdir, "samples", f"step_{step:08d}.png"), grid)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def load_state(config, workdir: str, step: int | None = None):
    """The run's state at ``step`` (default latest) for evaluation/export.

    Returns (state, system, mesh). Raises FileNotFoundError naming the workdir when it holds
    no checkpoint.
    """
    manager = checkpoints.require_checkpoint(workdir)
    data_cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
    system = gan.build_system(config)
    mesh = parallel.make_data_mesh()
    g_tx = optim.adam(config.optim, 1)
    d_tx = optim.adam(config.optim, 1)
    template = jax.jit(functools.partial(create_state, system, g_tx, d_tx, config.seed,
                                         data_cfg.resolution),
                       out_shardings=parallel.replicated_sharding(mesh))()
    if step is not None and step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint for step {step} in {workdir}; available: "
                                f"{sorted(manager.all_steps())}")
    state, _ = checkpoints.restore_latest(manager, template, None, step=step)
    return state, system, mesh
