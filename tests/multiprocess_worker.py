"""A tiny data-parallel training job for the multi-process tests.

Run by ``launch/local_multiprocess.py`` (one copy per process) or directly
(one process). It uses ``unmask_jax.parallel`` the way the trainer does:
distributed start-up, a ``data`` mesh, a disjoint per-process data shard
assembled into global batches, one jitted step with explicit shardings, Orbax
checkpoints written collectively, and the preemption monitor. Each process
writes ``OUT/process_<i>.json`` with what it saw and computed.

Data: a deterministic global dataset of ``--num_examples`` rows. Process ``p``
of ``P`` reads the shard ``ids[p::P]`` and takes ``global_batch / P`` rows per
step, so at step ``s`` the processes together cover exactly
``ids[s*B:(s+1)*B]``: the same examples a single process reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unmask_jax import parallel

FEATURES = 6
HIDDEN = 16
READY_MARKER = "WORKER_TRAINING_STARTED"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="explicit", choices=parallel.MODES)
    parser.add_argument("--out", required=True, help="folder for process_<i>.json")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--global_batch", type=int, default=8)
    parser.add_argument("--num_examples", type=int, default=64)
    parser.add_argument("--heartbeat_timeout_s", type=int, default=100)
    parser.add_argument("--init_timeout_s", type=int, default=60)
    parser.add_argument("--ckpt_dir", default=None, help="save here at the end / on SIGTERM")
    parser.add_argument("--restore_dir", default=None, help="restore the latest step from here")
    parser.add_argument("--step_sleep", type=float, default=0.0)
    parser.add_argument("--die_at_step", type=int, default=-1)
    parser.add_argument("--die_process", type=int, default=1)
    return parser.parse_args(argv)


def dataset(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    x = rng.normal(size=(num_examples, FEATURES)).astype(np.float32)
    true_w = rng.normal(size=(FEATURES, 1)).astype(np.float32)
    y = np.tanh(x @ true_w) + 0.1 * rng.normal(size=(num_examples, 1)).astype(np.float32)
    return x, y.astype(np.float32)


def local_ids(step: int, global_batch: int, num_examples: int,
              process_index: int, process_count: int) -> np.ndarray:
    """Example ids this process reads at ``step`` (its shard is ids[p::P])."""
    local = global_batch // process_count
    shard = np.arange(num_examples)[process_index::process_count]
    start = (step * local) % len(shard)
    return np.take(shard, np.arange(start, start + local), mode="wrap")


def init_params(key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (FEATURES, HIDDEN)) * 0.3,
            "b1": jnp.zeros((HIDDEN,)),
            "w2": jax.random.normal(k2, (HIDDEN, 1)) * 0.3,
            "b2": jnp.zeros((1,))}


def loss_fn(params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    pred = hidden @ params["w2"] + params["b2"]
    return jnp.mean((pred - batch["y"]) ** 2)


def to_lists(tree) -> dict:
    host = parallel.fetch_to_host(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf).tolist()
            for path, leaf in jax.tree_util.tree_flatten_with_path(host)[0]}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax is chatty at INFO
    cfg = parallel.DistributedConfig(mode=args.mode,
                                     initialization_timeout_s=args.init_timeout_s,
                                     heartbeat_timeout_s=args.heartbeat_timeout_s)
    parallel.initialize_distributed(cfg)
    parallel.initialize_distributed(cfg)  # idempotent
    mesh = parallel.make_data_mesh()
    parallel.log_topology(mesh)
    pid, nproc = parallel.process_shard()
    repl = parallel.replicated_sharding(mesh)
    data_sharding = parallel.batch_sharding(mesh)

    tx = optax.adam(1e-2)

    def init_state():
        params = init_params(jax.random.key(0))
        return {"params": params, "opt_state": tx.init(params)}

    state = jax.jit(init_state, out_shardings=repl)()

    def train_step(state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state}, loss

    train_step = jax.jit(train_step, in_shardings=(repl, data_sharding),
                         out_shardings=(repl, repl), donate_argnums=0)

    manager = None
    if args.ckpt_dir or args.restore_dir:
        import orbax.checkpoint as ocp
    if args.ckpt_dir:
        manager = ocp.CheckpointManager(
            os.path.abspath(args.ckpt_dir), options=ocp.CheckpointManagerOptions(max_to_keep=2))

    record: dict = {"process_index": pid, "process_count": nproc,
                    "local_device_count": jax.local_device_count(),
                    "device_count": jax.device_count(),
                    "env_unmask": "UNMASK_COORDINATOR" in os.environ,
                    "env_slurm": "SLURM_JOB_ID" in os.environ,
                    "seen_ids": [], "losses": []}
    start_step = 0
    if args.restore_dir:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
            jax.eval_shape(init_state))
        with ocp.CheckpointManager(os.path.abspath(args.restore_dir)) as reader:
            start_step = reader.latest_step()
            restored = reader.restore(start_step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        state = restored["state"]
        record["restored_step"] = start_step
        record["restored_data"] = restored["data"]
        record["restored_state"] = to_lists(state)
        record["restored_sharding_ok"] = all(
            leaf.sharding.is_equivalent_to(repl, leaf.ndim) for leaf in jax.tree.leaves(state))

    record["start_state"] = to_lists(state)
    x_all, y_all = dataset(args.num_examples)
    monitor = parallel.PreemptionMonitor()
    step = start_step
    preempted = False
    while step < start_step + args.steps:
        ids = local_ids(step, args.global_batch, args.num_examples, pid, nproc)
        batch = parallel.global_batch({"x": x_all[ids], "y": y_all[ids]}, mesh)
        if step == args.die_at_step and pid == args.die_process:
            print(f"process {pid}: SIGKILL myself at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        state, loss = train_step(state, batch)
        step += 1
        record["seen_ids"].append(ids.tolist())
        record["losses"].append(float(parallel.fetch_to_host(loss)))
        if step == start_step + 1:
            print(READY_MARKER, flush=True)
        if monitor.reached(step):
            preempted = True
            break
        if args.step_sleep:
            time.sleep(args.step_sleep)
    monitor.close()

    record["final_step"] = step
    record["preempted"] = preempted
    if manager is not None:
        data_state = {"global_examples_seen": step * args.global_batch,
                      "process_count": nproc}
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            force=True)
        manager.wait_until_finished()
        manager.close()
        record["saved_step"] = step
    record["final_state"] = to_lists(state)
    parallel.sync_global("worker_done")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"process_{pid}.json").write_text(json.dumps(record))
    print(f"process {pid}: done at step {step} (preempted={preempted})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
