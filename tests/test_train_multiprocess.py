"""The real trainer scales out: ``python -m unmask_jax.main`` as real multi-process CPU runs.

Every run goes through ``launch/local_multiprocess.py`` (``run_local``): N processes x M fake
CPU devices, gloo collectives, ``--config.distributed.mode=explicit`` (except the
single-process test), the pix2pix ``:quick`` config shrunk like ``tests/test_train.tiny_config``
(ngf 8, ndf 8, batch 4, a few steps, 8 eval images, LPIPS / identity metrics off).

Equal training on 2 x 2 and 1 x 4 devices needs the same global batches. The pipeline gives
that by construction (one global stream -- shuffle, repeat, per-example masks and
augmentation seeded by stream position -- dealt out to the processes by position; see
tests/test_pipeline.py::test_global_batches_are_the_same_examples_for_any_process_count).
The comparison runs here additionally read a ``paired`` folder (the mask is part of the data)
with jitter, flips, shuffling and dropout off, so that every per-example computation is
trivially deterministic: the global batch of step ``s`` is the set of records ``4s .. 4s + 3``
on 2 x 2 devices (in the order 0 2 1 3) and on 1 x 4 (0 1 2 3). BatchNorm statistics and mean
losses do not depend on the order, so the runs agree up to float reduction order. Their
config file is ``configs/pix2pix.py:quick`` with the source switched (the command line cannot
remove the synthetic ``num_records`` option).

Costs: every run starts Python, JAX and TensorFlow (clu) and compiles the step; the
single-process runs share this session's persistent XLA cache (conftest.py, see
``child_env``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import fixtures
from tests.test_parallel import load_launcher

REPO = Path(__file__).resolve().parents[1]
QUICK = "configs/pix2pix.py:quick"
LR = 5e-4  # configs/default.py quick(): optim.lr (constant for the first 3 steps here)

#: tiny_config()-sized model and run, the same compiled programs in every test (dropout off
#: everywhere, so the persistent compilation cache serves the later runs).
TINY_FLAGS = (
    "--config.model.generator_kwargs.ngf=8",
    "--config.model.discriminator_kwargs.ndf=8",
    "--config.model.generator_kwargs.use_dropout=False",
    "--config.train.batch_size=4",
    "--config.optim.constant_steps=3",
    "--config.optim.decay_steps=3",
    "--config.train.log_every_steps=1",
    "--config.train.sample_every_steps=1000",
    "--config.train.checkpoint_every_steps=1000",
    "--config.train.eval_every_steps=1000",
    "--config.eval.num_images=8",
    "--config.eval.batch_size=4",
    "--config.eval.lpips_net=",
    "--config.eval.id_backbone=",
)

PAIRED_CONFIG = '''\
"""pix2pix :quick reading a paired folder (written by tests/test_train_multiprocess.py)."""
from ml_collections import config_dict

from configs import pix2pix


def get_config():
    c = pix2pix.get_config("quick")
    c.name = "pix2pix_quick_paired"
    c.data.source = "paired"
    c.data.source_options = config_dict.ConfigDict()  # no synthetic num_records
    c.data.eval_split = "train"  # the folder has no test split
    return c
'''
NUM_PAIRS = 16  # 4 global batches of 4: one epoch is 4 steps
COMPARE_STEPS = 5  # step 5 opens the second epoch with records 0..3 again


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------



def child_env(compilation_cache: bool = False) -> dict[str, str]:
    """Extra environment of every child: the repository on the path and, for single-process
    runs, this test session's persistent XLA compilation cache (conftest.py).

    Not for multi-process runs: on CPU the cache key differs per process, so process 0
    would load the step while process 1 compiles it, and gloo gives up after 30 s when
    process 0 waits that long in the first collective (``Gloo context initialization
    failed: DEADLINE_EXCEEDED``) -- seen under ``pytest -n 2`` on a loaded machine.
    """
    env = {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "1"}
    cache = os.environ.get("UNMASK_TEST_XLA_CACHE")
    if cache and compilation_cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


@dataclasses.dataclass
class Run:
    """What a test needs from a finished run (also rebuilt from disk, see ``shared``)."""

    workdir: Path
    logs: list[str]
    returncodes: list[int]
    killed_by_launcher: list[bool]
    exit_times_s: list[float]
    summary: str

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.returncodes)


def run_main(processes: int, devices: int, workdir: Path, *flags: str, log_dir: Path,
             config: str = QUICK, distributed: bool = True, timeout: float = 300,
             **kwargs) -> Run:
    """``python -m unmask_jax.main --mode=train`` as ``processes`` x ``devices`` (run_local)."""
    command = [sys.executable, "-m", "unmask_jax.main", f"--config={config}",
               f"--workdir={workdir}", *TINY_FLAGS, *flags]
    if distributed:
        command.append("--config.distributed.mode=explicit")
    result = load_launcher().run_local(processes, devices, command, timeout=timeout,
                                       env=child_env(compilation_cache=processes == 1),
                                       log_dir=log_dir, cwd=REPO, **kwargs)
    return Run(workdir, [result.log(i) for i in range(processes)],
               [-124 if result.timed_out else code for code in result.returncodes],
               result.killed_by_launcher, result.exit_times_s, result.summary())


@contextlib.contextmanager
def shared(tmp_path_factory, worker_id: str, name: str):
    """A folder made once per pytest session, also under pytest-xdist: the first worker
    that needs it fills it while holding a lock, the others wait and reuse it."""
    if worker_id == "master":  # no xdist: the module-scoped fixture runs once anyway
        yield tmp_path_factory.mktemp(name), True
        return
    folder = tmp_path_factory.getbasetemp().parent / name  # this session's workers share it
    folder.mkdir(exist_ok=True)
    with open(folder.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder, not (folder / "done.json").exists()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_SCALARS = re.compile(r"logging_writer\.py:\d+\] \[(\d+)\] ([\w/]+=.*)$")


def logged_scalars(log: str) -> dict[int, dict[str, float]]:
    """Per step, the training scalars clu's LoggingWriter printed (eval/* left out)."""
    out: dict[int, dict[str, float]] = {}
    for line in log.splitlines():
        match = _SCALARS.search(line)
        if not match:
            continue
        values = dict(item.split("=", 1) for item in match.group(2).split(", "))
        values = {k: float(v) for k, v in values.items() if not k.startswith("eval/")}
        if values:
            out.setdefault(int(match.group(1)), {}).update(values)
    return out


def losses(log: str) -> dict[int, tuple[float, ...]]:
    keys = ("d_loss", "g_loss", "g_gan", "g_l1")
    return {step: tuple(v[k] for k in keys) for step, v in logged_scalars(log).items()}


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def data_positions(workdir: Path, step: int) -> dict[str, int]:
    """Per process file, the Grain iterator position stored in checkpoint ``step``."""
    folder = workdir / "checkpoints" / str(step) / "data"
    return {p.name: json.loads(p.read_text())["next_index"]
            for p in sorted(folder.glob("process_*.json"))}


def named_leaves(tree) -> dict[tuple[str, ...], np.ndarray]:
    """Leaves keyed by their path names, so that a TrainState and the plain nested
    containers Orbax reads back without a target compare leaf by leaf."""
    import jax
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = tuple(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))
                    for k in path)
        out[key] = np.asarray(leaf)
    return out


def raw_state(workdir: Path, step: int) -> dict[tuple[str, ...], np.ndarray]:
    """The ``state`` item of checkpoint ``step`` read straight into numpy (no target, no
    mesh): what the processes wrote, independent of the restore code under test."""
    import jax
    import orbax.checkpoint as ocp
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return named_leaves(checkpointer.restore(path, restore_args=args))


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a| of one tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))


# --------------------------------------------------------------------------------------------
# 2 processes x 2 devices vs 1 process x 4 devices, same global batches (paired source).
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paired_2x2(tmp_path_factory, worker_id):
    """The paired folder, its config and flags, and 5 steps on 2 processes x 2 devices with
    a checkpoint after every step and the evaluation at step 5."""
    with shared(tmp_path_factory, worker_id, "train_multiprocess_paired") as (root, first):
        data, config, workdir = root / "data", root / "pix2pix_paired.py", root / "run_2x2"
        flags = (f"--config.data.data_dir={data}", "--config.data.jitter_scale=1.0",
                 "--config.data.flip=False", "--config.data.shuffle=False",
                 "--config.train.checkpoint_every_steps=1",
                 f"--config.train.max_checkpoints_to_keep={COMPARE_STEPS}")
        if first:
            fixtures.write_paired(data, count=NUM_PAIRS, size=64)
            from data_pipelines.sources.paired import PairedSource
            source = PairedSource(data)  # computes and stores the mask maps before the runs
            assert len(source) == NUM_PAIRS
            assert all(not source[i]["error"] for i in range(len(source)))
            config.write_text(PAIRED_CONFIG)
            run = run_main(2, 2, workdir, *flags, f"--config.train.num_steps={COMPARE_STEPS}",
                           log_dir=root / "logs_2x2", config=str(config))
            (root / "done.json").write_text(json.dumps(dataclasses.asdict(run), default=str))
        else:
            run = Run(**json.loads((root / "done.json").read_text()))
            run.workdir = Path(run.workdir)
    assert run.ok, run.summary
    return str(config), flags, run


@pytest.mark.slow
def test_2x2_run_matches_1x4_run(paired_2x2, tmp_path):
    """Same config, same global batches on 2 x 2 and 1 x 4 devices: the same training.

    Compared: the losses of every step (step 1: rtol 1e-5, the same computation up to
    reduction order; later steps rtol 3e-4, measured <= 7e-5), and after step 1 the
    well-conditioned state: BatchNorm running statistics and Adam's moments mu ~ g and
    nu ~ g^2 (max |diff| / max |ref| < 1e-4 per tensor, measured ~2e-6). Parameters are
    not compared at that tolerance: Adam's first update is lr * g / |g|, so a parameter
    whose gradient is float noise (near zero) moves by +lr or -lr depending on the
    reduction order of the mesh, and later steps inherit these lr-sized differences (after
    5 steps mu differs by up to ~30% in the innermost layers). After step 1 every parameter
    agrees to within 2 lr, and fewer than 1% per tensor differ by more than lr / 10.
    The evaluation (8 fixed images, sharded over the processes) has the same baselines
    (functions of the eval data only: every image counted once) and close model metrics.
    Process 0 alone writes TensorBoard events, sample grids and the evaluation.
    """
    config, flags, run2 = paired_2x2
    run1 = run_main(1, 4, tmp_path / "run_1x4", *flags,
                    f"--config.train.num_steps={COMPARE_STEPS}", log_dir=tmp_path / "logs",
                    config=config)
    assert run1.ok, run1.summary
    assert "process 0 of 1, platform cpu, 4 local / 4 global devices" in run1.logs[0]
    for p in range(2):
        assert f"process {p} of 2, platform cpu, 2 local / 4 global devices" in run2.logs[p]

    l2, l2_other, l1 = losses(run2.logs[0]), losses(run2.logs[1]), losses(run1.logs[0])
    steps = list(range(1, COMPARE_STEPS + 1))
    assert sorted(l2) == sorted(l1) == steps, (l2, l1)
    assert l2 == l2_other  # both processes log the same replicated metrics
    for step in steps:
        np.testing.assert_allclose(l2[step], l1[step], rtol=1e-5 if step == 1 else 3e-4,
                                   err_msg=f"step {step}: 2x2 and 1x4 losses differ")
    assert abs(l1[COMPARE_STEPS][1] - l1[1][1]) > 1e-2 * abs(l1[1][1])  # losses do move

    s2, s1 = raw_state(run2.workdir, 1), raw_state(run1.workdir, 1)
    assert s2.keys() == s1.keys()
    counts = {"mu": 0, "nu": 0, "batch_stats": 0, "params": 0, "other": 0}
    for key, ref in s1.items():
        kind = next((k for k in ("mu", "nu", "batch_stats", "params") if k in key), "other")
        counts[kind] += 1
        if kind == "params":
            diff = np.abs(ref - s2[key])
            assert diff.max() <= 2.02 * LR, (key, diff.max())
            assert np.mean(diff > LR / 10) < 0.01, (key, np.mean(diff > LR / 10))
        elif kind == "other":  # step, rng, optimizer step counts
            np.testing.assert_array_equal(ref, s2[key], err_msg=str(key))
        else:
            assert relative_diff(ref, s2[key]) < 1e-4, (key, relative_diff(ref, s2[key]))
    assert min(counts.values()) >= 2 and counts["params"] > 30, counts
    assert int(s1[("step",)]) == 1

    eval2 = json.loads((run2.workdir / "eval" / "latest.json").read_text())
    eval1 = json.loads((run1.workdir / "eval" / "latest.json").read_text())
    assert eval2["step"] == eval1["step"] == COMPARE_STEPS
    assert eval2["num_images"] == eval1["num_images"] == 8
    for baseline in ("masked_input", "telea"):
        for key, value in eval1["baselines"][baseline].items():
            assert eval2["baselines"][baseline][key] == pytest.approx(value, rel=1e-6), key
    for key in ("psnr", "ssim", "psnr_mask", "ssim_mask"):
        assert eval2[key] == pytest.approx(eval1[key], rel=1e-3), key

    # Outputs: process 0 writes them, process 1 only logs its own progress.
    assert (run2.workdir / "samples" / f"step_{COMPARE_STEPS:08d}.png").is_file()
    assert len(list(run2.workdir.glob("events.out.tfevents*"))) == 1
    assert "Got images" in run2.logs[0] and "Got images" not in run2.logs[1]
    assert "eval/psnr=" in run2.logs[0] and "eval/psnr=" not in run2.logs[1]


@pytest.mark.slow
def test_2x2_checkpoint_restores_on_1x4_and_training_continues(paired_2x2, tmp_path):
    """Save on 2 x 2, resume on 1 x 4: the step counter and every state buffer come back
    bit for bit (``state.load_state`` vs the raw checkpoint), the data iterator restarts
    with a warning (the process count changed), and the resumed step 5 equals step 5 of the
    uninterrupted 2 x 2 run: the same state, and the same global batch (the restarted
    1-process stream begins with records 0..3, and so does the 2 x 2 run's second epoch)."""
    import jax

    from tests.test_train import tiny_config
    from unmask_jax import state as state_lib

    config, flags, run2 = paired_2x2
    # The raw buffers are compared here, not the run's config (a paired source, no dropout).
    restored, _, _ = state_lib.load_state(tiny_config(), str(run2.workdir), step=4,
                                          check_config=False)
    got, want = named_leaves(restored), raw_state(run2.workdir, 4)
    assert got.keys() == want.keys() and len(got) > 100
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=f"restore changed {key}")
    assert int(restored.step) == 4
    kernel = restored.generator.params["down_conv_0"]["kernel"]
    assert kernel.sharding.is_fully_replicated
    assert len(kernel.sharding.device_set) == jax.device_count()

    workdir = tmp_path / "resumed_1x4"
    shutil.copytree(run2.workdir, workdir)
    shutil.rmtree(workdir / "checkpoints" / str(COMPARE_STEPS))  # the latest is now step 4
    run = run_main(1, 4, workdir, *flags, "--config.train.num_steps=6",  # no eval at 5
                   "--config.train.stop_after_steps=1", log_dir=tmp_path / "logs",
                   config=config)
    assert run.ok, run.summary
    log = run.logs[0]
    assert f"resumed from {workdir} at step 4" in log
    assert "checkpoint step 4 was written by 2 processes, this run has 1" in log
    assert "the data iterator is NOT" in log
    assert sorted(losses(log)) == [COMPARE_STEPS]
    np.testing.assert_allclose(losses(log)[COMPARE_STEPS],
                               losses(run2.logs[0])[COMPARE_STEPS], rtol=1e-5)
    assert checkpoint_steps(workdir)[-1] == COMPARE_STEPS
    # The 1-process stream restarted: one batch of 4 consumed (not 2 x 5 per process).
    assert data_positions(workdir, COMPARE_STEPS) == {"process_0-of-1.json": 4}
    assert data_positions(run2.workdir, COMPARE_STEPS) == {"process_0-of-2.json": 10,
                                                           "process_1-of-2.json": 10}


# --------------------------------------------------------------------------------------------
# Data sharding: two real processes read disjoint shards that together cover each batch.
# --------------------------------------------------------------------------------------------

SHARD_SCRIPT = """
import json, os, sys
from configs import pix2pix
from data_pipelines import pipeline
pid, count = int(os.environ["UNMASK_PROCESS_ID"]), int(os.environ["UNMASK_NUM_PROCESSES"])
config = pix2pix.get_config("quick")
config.data.source_options.num_records = %(records)d
cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
it = iter(pipeline.train_dataset(cfg, batch_size=%(local)d, process_index=pid,
                                 process_count=count))
batches = [next(it) for _ in range(%(steps)d)]
json.dump({"index": [b["index"].tolist() for b in batches],
           "shapes": [list(b["masked"].shape) for b in batches]},
          open(os.path.join(sys.argv[1], f"process_{pid}.json"), "w"))
"""


@pytest.mark.slow
def test_processes_read_disjoint_shards_covering_each_global_batch(tmp_path):
    """The trainer's data path (``pipeline.train_dataset`` with the process index and count,
    default shuffling and augmentation) in 2 real processes: every global batch has 4
    distinct records, 2 from each process; within an epoch the processes' records are
    disjoint; one epoch (8 steps) covers the 32 records exactly once; the next epoch is
    reshuffled."""
    records, local, epoch_steps = 32, 2, 8
    script = SHARD_SCRIPT % {"records": records, "local": local, "steps": 2 * epoch_steps}
    result = load_launcher().run_local(
        2, 1, [sys.executable, "-c", script, str(tmp_path)], timeout=120, env=child_env(),
        log_dir=tmp_path / "logs", cwd=REPO)
    assert result.ok, result.summary()
    seen = [json.loads((tmp_path / f"process_{p}.json").read_text()) for p in range(2)]
    for p, rec in enumerate(seen):
        assert rec["shapes"] == [[local, 64, 64, 3]] * (2 * epoch_steps)
    for epoch in range(2):
        per_process = [{i for step in range(epoch * epoch_steps, (epoch + 1) * epoch_steps)
                        for i in seen[p]["index"][step]} for p in range(2)]
        assert not per_process[0] & per_process[1], (epoch, per_process)
        covered = []
        for step in range(epoch * epoch_steps, (epoch + 1) * epoch_steps):
            batch = seen[0]["index"][step] + seen[1]["index"][step]
            assert len(set(batch)) == 2 * local, (step, batch)
            covered += batch
        assert sorted(covered) == list(range(records)), (epoch, sorted(covered))
    for p in range(2):
        assert seen[p]["index"][:epoch_steps] != seen[p]["index"][epoch_steps:]


# --------------------------------------------------------------------------------------------
# Preemption: SIGTERM -> checkpoint at the same step everywhere, exit 0, resume.
# --------------------------------------------------------------------------------------------

LONG = ("--config.train.num_steps=1000", "--config.data.source_options.num_records=64")


def preempted_step(log: str) -> int:
    match = re.search(r"preemption: checkpoint saved at step (\d+); exiting", log)
    assert match, log[-3000:]
    return int(match.group(1))


def progress_marker(step: int) -> str:
    """train.py's progress line of ``step`` (printed by every process)."""
    return f"step {step}/1000 "


@pytest.mark.slow
def test_sigterm_on_2x2_saves_the_same_step_everywhere_and_resumes(tmp_path):
    """SIGTERM to both processes after step 2: both save at the same step K, with each
    process's data iterator position (2 records per step), and exit 0. (Resuming from a
    checkpoint with the iterators restored is covered by test_train's resume test and by
    the 2x2 -> 1x4 restore here.)"""
    workdir = tmp_path / "run"
    run = run_main(2, 2, workdir, *LONG, log_dir=tmp_path / "logs", signal_after_s=0.0,
                   signal_after_marker=progress_marker(2))
    assert run.returncodes == [0, 0], run.summary
    steps = {preempted_step(log) for log in run.logs}
    assert len(steps) == 1, f"processes stopped at different steps: {steps}"
    [step] = steps
    assert 2 <= step < 1000
    assert checkpoint_steps(workdir) == [step]
    assert data_positions(workdir, step) == {"process_0-of-2.json": 2 * step,
                                             "process_1-of-2.json": 2 * step}
    assert not (workdir / "eval").exists()  # stopped early: no evaluation


@pytest.mark.slow
def test_sigterm_single_process_saves_and_exits_zero(tmp_path):
    """No distributed runtime (mode off, 1 process x 4 devices): PreemptionMonitor's Python
    SIGTERM handler stops the loop at the next step, which is saved; exit status 0."""
    workdir = tmp_path / "run"
    run = run_main(1, 4, workdir, *LONG, "--config.distributed.mode=off",
                   log_dir=tmp_path / "logs", distributed=False,
                   signal_after_s=0.0, signal_after_marker=progress_marker(2))
    assert run.returncodes == [0], run.summary
    log = run.logs[0]
    assert "distributed: mode=off" in log and "received signal 15" in log
    step = preempted_step(log)
    assert 2 <= step < 1000
    assert checkpoint_steps(workdir) == [step]
    assert max(losses(log)) == step


@pytest.mark.slow
def test_an_exception_in_one_process_ends_every_process(tmp_path):
    """Process 0 alone fails (it cannot write its sample grid: WORKDIR/samples is a file).
    It exits at once with status 1 (main.py skips JAX's shutdown barrier, which would wait
    up to 300 s for process 1 while process 1 waits in the next collective for process 0),
    and process 1 then aborts too: the run ends within seconds instead of hanging."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "samples").write_text("a file where process 0 wants its samples folder")
    run = run_main(2, 2, workdir, *LONG, "--config.train.sample_every_steps=1",
                   "--config.distributed.heartbeat_timeout_s=10", log_dir=tmp_path / "logs",
                   timeout=240, failure_grace_s=60)
    assert all(code not in (0, -124) for code in run.returncodes), run.summary
    assert run.killed_by_launcher == [False, False], run.summary
    assert "process 0 failed; exiting now" in run.logs[0], run.summary
    assert "samples" in run.logs[0] and "Error" in run.logs[0]
    assert abs(run.exit_times_s[1] - run.exit_times_s[0]) < 30, run.summary
