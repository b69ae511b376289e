"""Tests for unmask_jax.parallel: single-process units and real multi-process runs.

The multi-process tests start ``tests/multiprocess_worker.py`` (a toy worker) as 2
processes through ``launch/local_multiprocess.py``: cluster detection (fake SLURM
variables, the launcher's own), and a killed process ending the others within the JAX
heartbeat. What a multi-process *training* must keep (2x2 equals 1x4, a 2x2 checkpoint
restores on 1x4, disjoint data shards, SIGTERM) is tested once, on the real trainer, in
``test_train_multiprocess.py``. Each run takes a few seconds.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from unmask_jax import parallel

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
CHILD_ENV = {"PYTHONPATH": str(REPO)}


def load_launcher():
    """Imports launch/local_multiprocess.py by path (launch/ is not a package)."""
    name = "unmask_local_multiprocess"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "launch" / "local_multiprocess.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_worker(processes: int, devices: int, out: Path, *worker_args: str,
               timeout: float = 90, **kwargs):
    launcher = load_launcher()
    command = [sys.executable, str(WORKER), f"--out={out}", *worker_args]
    return launcher.run_local(processes, devices, command, timeout=timeout,
                              env=CHILD_ENV, log_dir=out / "logs", **kwargs)


def read_records(out: Path, processes: int) -> list[dict]:
    return [json.loads((out / f"process_{i}.json").read_text()) for i in range(processes)]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without cluster variables, plus ``extra``."""
    prefixes = ("SLURM_", "OMPI_", "UNMASK_", "JAX_COORDINATOR", "JAX_NUM_CPU_DEVICES",
                "XLA_FLAGS", "TPU_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **extra)
    return env


# ----------------------------------------------------------------------------
# Config

def test_config_from_dict_and_validation():
    cfg = parallel.DistributedConfig.from_dict(
        {"mode": "explicit", "num_processes": 4, "heartbeat_timeout_s": 7})
    assert (cfg.mode, cfg.num_processes, cfg.heartbeat_timeout_s) == ("explicit", 4, 7)
    assert parallel.DistributedConfig.from_dict(None) == parallel.DistributedConfig()
    with pytest.raises(ValueError, match="unknown distributed config keys.*heartbeat_timeout"):
        parallel.DistributedConfig.from_dict({"heartbeat_timeout": 5})
    with pytest.raises(ValueError, match="mode must be one of"):
        parallel.DistributedConfig(mode="slurm")
    with pytest.raises(ValueError, match="positive"):
        parallel.DistributedConfig(heartbeat_timeout_s=0)


def test_resolve_explicit_reads_env_and_fields_win(monkeypatch):
    monkeypatch.setenv("UNMASK_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("UNMASK_NUM_PROCESSES", "4")
    monkeypatch.setenv("UNMASK_PROCESS_ID", "3")
    cfg = parallel.DistributedConfig(mode="explicit")
    assert parallel.resolve_explicit(cfg) == ("10.0.0.1:1234", 4, 3)
    cfg = parallel.DistributedConfig(mode="explicit", coordinator_address="host:9",
                                     num_processes=2, process_id=0)
    assert parallel.resolve_explicit(cfg) == ("host:9", 2, 0)
    monkeypatch.setenv("UNMASK_PROCESS_ID", "4")
    with pytest.raises(ValueError, match="process_id < num_processes"):
        parallel.resolve_explicit(parallel.DistributedConfig(mode="explicit"))


def test_resolve_explicit_names_missing_fields(monkeypatch):
    for name in ("UNMASK_COORDINATOR", "UNMASK_NUM_PROCESSES", "UNMASK_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="UNMASK_COORDINATOR.*UNMASK_NUM_PROCESSES.*UNMASK_PROCESS_ID"):
        parallel.resolve_explicit(parallel.DistributedConfig(mode="explicit"))
    monkeypatch.setenv("UNMASK_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="not an integer"):
        parallel.resolve_explicit(parallel.DistributedConfig(
            mode="explicit", coordinator_address="h:1", process_id=0))


def test_off_mode_starts_nothing():
    parallel.initialize_distributed(parallel.DistributedConfig(mode="off"))
    assert not jax.distributed.is_initialized()
    assert parallel.process_shard() == (0, 1)
    assert parallel.is_main_process()
    parallel.sync_global("noop")  # single process: no barrier, returns


@pytest.mark.slow
def test_auto_mode_without_cluster_runs_single_process():
    """The default mode must neither fail nor hang on a laptop / CI machine."""
    code = textwrap.dedent("""
        import logging, time
        logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
        import jax
        from unmask_jax import parallel
        start = time.monotonic()
        parallel.initialize_distributed(parallel.DistributedConfig())
        print("INITIALIZED", jax.distributed.is_initialized(), jax.process_count(),
              round(time.monotonic() - start, 1))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                          text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert "INITIALIZED False 1" in proc.stdout, out
    assert "mode=auto found no multi-process environment" in out, out
    assert "running as a single process" in out, out


def test_auto_is_the_default_and_defaults_have_one_home():
    import dataclasses

    from configs import default

    assert parallel.DistributedConfig().mode == "auto"
    section = default.get_config().distributed
    assert section.to_dict() == dataclasses.asdict(parallel.DistributedConfig())
    assert parallel.DistributedConfig.from_dict(section.to_dict()) == parallel.DistributedConfig()
    section.num_processes = 2          # typed placeholders still take overrides
    section.coordinator_address = "h:1"
    with pytest.raises(TypeError):
        section.process_id = "zero"


@pytest.mark.slow
def test_detect_cluster():
    detect = functools.partial(parallel.detect_cluster, on_cloud_tpu_vm=False)
    assert detect({})[0] is None
    assert "no launcher, SLURM" in detect({})[1]
    env = {"UNMASK_COORDINATOR": "localhost:1", "UNMASK_NUM_PROCESSES": "2",
           "UNMASK_PROCESS_ID": "1"}
    found, _ = detect(env)
    assert found.kind == "unmask_launcher" and found.num_processes == 2
    assert detect({"UNMASK_PROCESS_ID": "0"})[0].kind == "unmask_launcher"  # partial: joins
    found, note = detect({**env, "UNMASK_NUM_PROCESSES": "1", "UNMASK_PROCESS_ID": "0"})
    assert found is None and "for one process" in note  # run_local(1, ...): nothing to join
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "n1"}
    found, _ = detect(slurm)
    assert found.kind == "slurm" and found.num_processes == 4
    found, note = detect({**slurm, "SLURM_STEP_NUM_TASKS": "1"})  # srun -n 1 in a big job
    assert found is None and "one task" in note
    assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})[0] is None
    assert detect({"OMPI_COMM_WORLD_SIZE": "4"})[0].kind == "openmpi"
    assert detect({"OMPI_COMM_WORLD_SIZE": "1"})[0] is None
    tpu = functools.partial(parallel.detect_cluster, on_cloud_tpu_vm=True)
    assert tpu({})[0].kind == "cloud_tpu"
    assert tpu({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"})[0].num_processes == 4
    found, note = tpu({"TPU_WORKER_HOSTNAMES": "w0"})
    assert found is None and "single-host" in note


def test_auto_mode_with_partial_launcher_variables_names_the_missing_ones(monkeypatch):
    for name in ("UNMASK_COORDINATOR", "UNMASK_NUM_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UNMASK_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="mode='auto' needs.*UNMASK_COORDINATOR"):
        parallel.resolve_explicit(parallel.DistributedConfig(mode="auto"))


# ----------------------------------------------------------------------------
# Mesh and batches in this process (however many devices it has)

def test_mesh_and_global_batch_in_process():
    mesh = parallel.make_data_mesh()
    n = jax.device_count()
    assert mesh.axis_names == ("data",) and mesh.devices.size == n
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
    assert parallel.batch_sharding(mesh).spec == jax.sharding.PartitionSpec("data")
    assert parallel.replicated_sharding(mesh).spec == jax.sharding.PartitionSpec()
    x = np.arange(2 * n * 3, dtype=np.float32).reshape(2 * n, 3)
    batch = parallel.global_batch({"x": x, "id": np.arange(2 * n)}, mesh)
    assert batch["x"].shape == (2 * n, 3)
    assert batch["x"].sharding.is_equivalent_to(parallel.batch_sharding(mesh), 2)
    host = parallel.fetch_to_host(batch)
    np.testing.assert_array_equal(host["x"], x)
    assert isinstance(host["id"], np.ndarray)
    with pytest.raises(ValueError, match="same leading batch dimension"):
        parallel.global_batch({"x": x, "y": x[:-1]}, mesh)


FOUR_DEVICE_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from unmask_jax import parallel
    out = {}
    mesh = parallel.make_data_mesh()
    out["mesh"] = dict(mesh.shape)
    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    batch = parallel.global_batch({"x": x}, mesh)["x"]
    out["shards"] = sorted((s.index[0].start, s.data.shape[0]) for s in batch.addressable_shards)
    out["roundtrip"] = bool(np.array_equal(parallel.fetch_to_host({"x": batch})["x"], x))
    replicated = jax.device_put(np.ones(3), parallel.replicated_sharding(mesh))
    out["replicated_devices"] = len(replicated.sharding.device_set)
    summed = jax.jit(lambda b: b.sum(), out_shardings=parallel.replicated_sharding(mesh))(batch)
    out["sum"] = float(parallel.fetch_to_host(summed))
    try:
        parallel.global_batch({"x": np.zeros((6, 2))}, mesh)
    except ValueError as err:
        out["uneven"] = str(err)
    sub = parallel.make_data_mesh(jax.devices()[:2])
    out["sub_mesh"] = dict(sub.shape)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_four_devices_one_process():
    proc = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICE_SCRIPT], capture_output=True, text=True, timeout=90,
        env=clean_env(JAX_NUM_CPU_DEVICES="4",
                      XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert line, proc.stdout + proc.stderr
    out = json.loads(line[0][len("RESULT"):])
    assert out["mesh"] == {"data": 4}
    assert out["shards"] == [[0, 2], [2, 2], [4, 2], [6, 2]]
    assert out["roundtrip"]
    assert out["replicated_devices"] == 4
    assert out["sum"] == float(np.arange(16).sum())
    assert "per-process batch size 6 does not divide evenly over the 4 local devices" in out["uneven"]
    assert out["sub_mesh"] == {"data": 2}


@pytest.mark.skipif(jax.distributed.is_initialized(), reason="needs a single-process run")
def test_preemption_monitor_single_process():
    previous = signal.getsignal(signal.SIGTERM)
    with parallel.PreemptionMonitor() as monitor:
        assert not monitor.distributed
        assert not monitor.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert monitor.reached(2)
    assert signal.getsignal(signal.SIGTERM) is previous


# ----------------------------------------------------------------------------
# Real multi-process runs (2 processes x 2 CPU devices)

STEPS = 5


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    """5 Adam steps on 2 processes x 2 devices, checkpoint saved at the end, started like
    ``srun`` would (fake SLURM_* variables, ``mode=auto``): cluster auto-detection. (The
    properties of a multi-process run itself -- 2x2 equals 1x4, a 2x2 checkpoint restores
    on 1x4, disjoint data shards, SIGTERM -- are tested on the real trainer in
    test_train_multiprocess.py.)"""
    out = tmp_path_factory.mktemp("two_by_two")
    result = run_worker(2, 2, out, "--mode=auto", f"--steps={STEPS}",
                        f"--ckpt_dir={out / 'ckpt'}", fake_slurm=True)
    assert result.ok, result.summary()
    return out, read_records(out, 2), result


@pytest.mark.slow
def test_fake_slurm_auto_detection(two_by_two):
    _, records, result = two_by_two
    assert [r["process_index"] for r in records] == [0, 1]
    for rec in records:
        assert rec["process_count"] == 2 and rec["device_count"] == 4
        assert rec["env_slurm"] and not rec["env_unmask"]  # found through SLURM_* only
    assert "mode=auto process 1 of 2" in result.log(1)


@pytest.mark.slow
def test_launcher_variables_are_joined_in_auto_mode(tmp_path):
    """local_multiprocess.py without --fake-slurm and the default mode: one 2-process run
    (issue 11 item 5: before, each child trained alone on the shared workdir)."""
    result = run_worker(2, 1, tmp_path, "--mode=auto", "--steps=2")
    assert result.ok, result.summary()
    records = read_records(tmp_path, 2)
    assert [(r["process_index"], r["process_count"]) for r in records] == [(0, 2), (1, 2)]
    assert all(r["env_unmask"] for r in records)
    assert "mode=auto found launch/local_multiprocess.py variables" in result.log(1)
    assert records[0]["final_state"] == records[1]["final_state"]


@pytest.mark.slow
def test_killed_process_makes_the_others_exit_within_heartbeat(tmp_path):
    heartbeat = 5
    result = run_worker(
        2, 2, tmp_path, "--steps=400", "--step_sleep=0.05", f"--heartbeat_timeout_s={heartbeat}",
        "--die_at_step=3", "--die_process=1", failure_grace_s=60, timeout=60)
    assert result.returncodes[1] == -signal.SIGKILL, result.summary()
    assert result.returncodes[0] != 0, result.summary()
    assert result.killed_by_launcher == [False, False], "process 0 hung; the launcher killed it"
    assert not result.timed_out
    assert result.exit_times_s[0] - result.exit_times_s[1] < 3 * heartbeat, result.summary()
