"""Tests for launch/: the local multi-process launcher, tpu_pod.sh and slurm.sbatch.

The launcher tests run plain Python children (no JAX), so they take well under a
second each; the JAX multi-process runs live in test_parallel.py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU_POD = LAUNCH / "tpu_pod.sh"
SBATCH = LAUNCH / "slurm.sbatch"


def load_launcher():
    """Imports launch/local_multiprocess.py by path (launch/ is not a package)."""
    name = "unmask_local_multiprocess"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LAUNCH / "local_multiprocess.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lm = load_launcher()


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


# ----------------------------------------------------------------------------
# local_multiprocess.py

def test_child_environments_explicit():
    envs = lm.child_environments(3, 2, base_env={"XLA_FLAGS": "--xla_foo=1 "
                                                 "--xla_force_host_platform_device_count=9",
                                                 "SLURM_JOB_ID": "7", "KEEP": "1"},
                                 env={"EXTRA": "x"})
    assert len(envs) == 3
    coordinators = {e["UNMASK_COORDINATOR"] for e in envs}
    assert len(coordinators) == 1 and coordinators.pop().startswith("localhost:")
    assert [e["UNMASK_PROCESS_ID"] for e in envs] == ["0", "1", "2"]
    for e in envs:
        assert e["UNMASK_NUM_PROCESSES"] == "3"
        assert e["JAX_NUM_CPU_DEVICES"] == "2" and e["JAX_PLATFORMS"] == "cpu"
        assert e["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=2"
        assert e["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
        assert "SLURM_JOB_ID" not in e  # an outer SLURM job must not leak in
        assert e["KEEP"] == "1" and e["EXTRA"] == "x"
    with pytest.raises(ValueError, match="processes >= 1"):
        lm.child_environments(0, 1)


def test_fake_slurm_env_is_detected_by_jax(monkeypatch):
    """JAX's own SLURM detection turns the fake variables into the right cluster."""
    from jax._src.clusters.slurm_cluster import SlurmCluster

    envs = lm.child_environments(2, 2, fake_slurm=True, base_env={})
    assert all("UNMASK_COORDINATOR" not in e for e in envs)
    for i, child in enumerate(envs):
        for key, value in child.items():
            if key.startswith("SLURM_"):
                monkeypatch.setenv(key, value)
        monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
        assert SlurmCluster.is_env_present()
        assert SlurmCluster.get_process_count() == 2
        assert SlurmCluster.get_process_id() == i
        address = SlurmCluster.get_coordinator_address(None, None)
        host, port = address.split(":")
        assert host == "localhost" and 61440 <= int(port) <= 65535
        assert int(port) == 61440 + int(child["SLURM_JOB_ID"]) % 4096


def test_default_child_env_is_joined_by_the_default_auto_mode():
    """Issue 11 item 5: without a mode flag the children must form one run, not N."""
    from unmask_jax import parallel

    assert parallel.DistributedConfig().mode == "auto"
    for i, child in enumerate(lm.child_environments(2, 2, base_env={})):
        found, _ = parallel.detect_cluster(child, on_cloud_tpu_vm=False)
        assert found is not None and found.kind == "unmask_launcher"
        assert found.num_processes == 2
    for child in lm.child_environments(2, 1, fake_slurm=True, base_env={}):
        found, _ = parallel.detect_cluster(child, on_cloud_tpu_vm=False)
        assert found is not None and found.kind == "slurm" and found.num_processes == 2


def test_independent_mode_warning():
    assert lm.independent_mode_warning(["python", "-m", "unmask_jax.main"]) is None
    assert lm.independent_mode_warning(["--config.distributed.mode=auto"]) is None
    assert "independent" in lm.independent_mode_warning(["--config.distributed.mode=off"])
    assert "independent" in lm.independent_mode_warning(["--config.distributed.mode", "off"])


@pytest.mark.slow
def test_run_local_success_and_logs(tmp_path):
    code = """
        import os
        print("pid", os.environ["UNMASK_PROCESS_ID"], "of", os.environ["UNMASK_NUM_PROCESSES"],
              "devices", os.environ["JAX_NUM_CPU_DEVICES"], "extra", os.environ["EXTRA"])
    """
    result = lm.run_local(2, 3, py(code), timeout=30, env={"EXTRA": "ok"}, log_dir=tmp_path)
    assert result.ok and result.exit_code == 0, result.summary()
    assert result.returncodes == [0, 0] and result.killed_by_launcher == [False, False]
    assert result.log(0).strip() == "pid 0 of 2 devices 3 extra ok"
    assert result.log(1).strip() == "pid 1 of 2 devices 3 extra ok"
    assert result.log_paths[1] == tmp_path / "process_1.log"


@pytest.mark.slow
def test_run_local_failure_kills_the_rest_after_grace(tmp_path):
    code = """
        import os, sys, time
        if os.environ["UNMASK_PROCESS_ID"] == "1":
            sys.exit(3)
        time.sleep(60)
    """
    result = lm.run_local(2, 1, py(code), timeout=60, log_dir=tmp_path, failure_grace_s=0.5)
    assert result.returncodes == [-signal.SIGKILL, 3], result.summary()
    assert result.killed_by_launcher == [True, False]
    assert not result.ok and result.exit_code == 3 and not result.timed_out
    assert result.duration_s < 20


@pytest.mark.slow
def test_run_local_hard_timeout(tmp_path):
    result = lm.run_local(2, 1, py("import time; time.sleep(60)"), timeout=1.0,
                          log_dir=tmp_path)
    assert result.timed_out and result.exit_code == lm.TIMEOUT_EXIT_CODE
    assert result.killed_by_launcher == [True, True]
    assert result.duration_s < 20


@pytest.mark.slow
def test_run_local_signal_after_marker(tmp_path):
    code = """
        import os, signal, sys, time
        def on_term(signum, frame):
            print("got SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        time.sleep(0.3 * int(os.environ["UNMASK_PROCESS_ID"]))  # markers at different times
        print("READY", flush=True)
        time.sleep(60)
        sys.exit(5)
    """
    result = lm.run_local(2, 1, py(code), timeout=30, log_dir=tmp_path, signal_after_s=0.2,
                          signal_after_marker="READY")
    assert result.ok, result.summary()
    for i in range(2):
        assert result.log(i).split() == ["READY", "got", "SIGTERM"]


@pytest.mark.slow
def test_cli_exit_status_and_echo(tmp_path):
    script = str(LAUNCH / "local_multiprocess.py")
    ok = subprocess.run(
        [sys.executable, script, "--processes=2", "--devices_per_process=1",
         f"--log_dir={tmp_path / 'ok'}", "--", sys.executable, "-c", "print('hello')"],
        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[p0] hello" in ok.stdout
    assert (tmp_path / "ok" / "process_1.log").read_text().strip() == "hello"
    bad = subprocess.run(
        [sys.executable, script, "-n", "2", "--quiet", "--failure_grace=0.2",
         f"--log_dir={tmp_path / 'bad'}", "--", sys.executable, "-c",
         "import os,sys,time; sys.exit(4) if os.environ['UNMASK_PROCESS_ID']=='0' else time.sleep(60)"],
        capture_output=True, text=True, timeout=60)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "process 1 exit -9 (killed by launcher)" in bad.stdout
    off = subprocess.run(
        [sys.executable, script, "-n", "2", "--quiet", f"--log_dir={tmp_path / 'off'}", "--",
         sys.executable, "-c", "pass", "--config.distributed.mode=off"],
        capture_output=True, text=True, timeout=60)
    assert off.returncode == 0 and "distributed.mode=off starts independent" in off.stderr
    missing = subprocess.run([sys.executable, script, "--processes=2", "echo"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "missing '--'" in missing.stderr


# ----------------------------------------------------------------------------
# tpu_pod.sh and slurm.sbatch

def run_pod(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    full_env.update(env or {})
    return subprocess.run(["bash", str(TPU_POD), *args], capture_output=True, text=True,
                          timeout=30, env=full_env)


def gcloud_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [l[2:] for l in proc.stdout.splitlines() if l.startswith("+ ")]


@pytest.mark.slow
@pytest.mark.parametrize("script", [TPU_POD, SBATCH])
def test_scripts_parse_with_bash_n(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


COMMON = ("--name=pod1", "--zone=us-west4-a", "--project=proj", "--dry-run")


@pytest.mark.slow
def test_tpu_pod_dry_run_create_and_delete():
    lines = gcloud_lines(run_pod("create", *COMMON, "--accelerator-type=v5litepod-32", "--spot"))
    assert lines == ["gcloud compute tpus tpu-vm create pod1 --zone=us-west4-a --project=proj "
                     "--accelerator-type=v5litepod-32 --version=v2-alpha-tpuv5-lite --spot"]
    lines = gcloud_lines(run_pod("create", *COMMON, "--queued", "--version=v2-alpha-tpuv6e",
                                 "--accelerator-type=v6e-16", "--valid-until=6h"))
    assert lines == ["gcloud compute tpus queued-resources create pod1 --zone=us-west4-a "
                     "--project=proj --node-id=pod1 --accelerator-type=v6e-16 "
                     "--runtime-version=v2-alpha-tpuv6e --valid-until-duration=6h"]
    assert gcloud_lines(run_pod("delete", *COMMON)) == [
        "gcloud compute tpus tpu-vm delete pod1 --zone=us-west4-a --project=proj --quiet"]
    assert gcloud_lines(run_pod("delete", *COMMON, "--queued")) == [
        "gcloud compute tpus queued-resources delete pod1 --zone=us-west4-a --project=proj "
        "--force --quiet"]


@pytest.mark.slow
def test_tpu_pod_dry_run_setup_run_logs_stop():
    setup = gcloud_lines(run_pod("setup", *COMMON))
    assert len(setup) == 3
    assert setup[0].startswith("git -C ") and " archive --format=tar.gz" in setup[0]
    assert setup[1].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in setup[1]
    assert setup[2].startswith("gcloud compute tpus tpu-vm ssh pod1 --zone=us-west4-a")
    assert "--worker=all" in setup[2] and "jax[tpu]" in setup[2] and "pip install -e" in setup[2]
    clone = gcloud_lines(run_pod("setup", *COMMON, "--repo=https://example.com/u.git"))
    assert len(clone) == 1 and "git clone https://example.com/u.git" in clone[0]

    run = gcloud_lines(run_pod("run", *COMMON, "--workdir=gs://bucket/exp1",
                               "--config=configs/pix2pix.py:quick", "--extra=--config.seed=3"))
    assert len(run) == 1
    assert run[0].startswith("gcloud compute tpus tpu-vm ssh pod1 --zone=us-west4-a "
                             "--project=proj --worker=all '--command=")
    for part in ("python3 -m unmask_jax.main --config=configs/pix2pix.py:quick "
                 "--workdir=gs://bucket/exp1 --config.distributed.mode=auto --config.seed=3",
                 "nohup ", "~/unmask_logs/worker_${W}.log", "worker.pid"):
        assert part in run[0], part

    logs = gcloud_lines(run_pod("logs", *COMMON, "--worker=0", "--follow"))
    assert logs == ["gcloud compute tpus tpu-vm ssh pod1 --zone=us-west4-a --project=proj "
                    "--worker=0 '--command=tail -n 100 -F ~/unmask_logs/worker_*.log'"]
    fetch = gcloud_lines(run_pod("logs", *COMMON, "--fetch=/tmp/pod_logs"))
    assert fetch[-1].startswith("gcloud compute tpus tpu-vm scp 'pod1:unmask_logs/worker_*.log' "
                                "/tmp/pod_logs/")
    stop = gcloud_lines(run_pod("stop", *COMMON))
    assert len(stop) == 1 and "--worker=all" in stop[0] and "kill -TERM" in stop[0]


@pytest.mark.slow
def test_tpu_pod_dry_run_output_is_valid_shell():
    """Every printed line is a well-formed shell command (quotes balanced)."""
    proc = run_pod("run", *COMMON, "--workdir=gs://b/x", "--config=c.py:a,b=1")
    for line in gcloud_lines(proc):
        check = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
        assert check.returncode == 0, (line, check.stderr)


@pytest.mark.slow
def test_tpu_pod_rejects_bad_input():
    no_gs = run_pod("run", *COMMON, "--workdir=/tmp/local", "--config=c.py")
    assert no_gs.returncode != 0 and "gs://" in no_gs.stderr
    no_zone = run_pod("create", "--name=x", "--dry-run")
    assert no_zone.returncode != 0 and "--zone" in no_zone.stderr
    assert run_pod("create", "--zone=z", "--dry-run", env={"TPU_NAME": "fromenv"}).returncode == 0
    bad_verb = run_pod("launch", *COMMON)
    assert bad_verb.returncode != 0 and "unknown verb" in bad_verb.stderr
    bad_flag = run_pod("create", *COMMON, "--acelerator-type=v4-8")
    assert bad_flag.returncode != 0 and "unknown option" in bad_flag.stderr
    help_text = run_pod("--help")
    assert help_text.returncode == 0 and "TPU7x" in help_text.stdout


def test_slurm_template_uses_srun_and_auto_detection():
    text = SBATCH.read_text()
    assert "#SBATCH --nodes=" in text and "#SBATCH --gpus-per-task=1" in text
    assert "srun " in text and "python -m unmask_jax.main" in text
    assert "--config.distributed.mode=auto" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="real SLURM present")
def test_slurm_template_refuses_missing_arguments():
    proc = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "usage" in proc.stderr
