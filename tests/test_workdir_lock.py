"""Tests for unmask_jax.workdir_lock: one writer per workdir, stale locks, other hosts."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unmask_jax import workdir_lock
from unmask_jax.workdir_lock import WorkdirLockedError

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys, time
    from unmask_jax import workdir_lock
    lock = workdir_lock.acquire(sys.argv[1], coordinate=False)
    print("HELD", flush=True)
    time.sleep(120)
""")


def start_holder(workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline()
    assert line.strip() == "HELD", line + proc.stdout.read()
    return proc


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(workdir: Path, **info) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": dead_pid(), "user": "someone",
              "started": "2026-01-01T00:00:00+00:00", "command": "python -m unmask_jax.main",
              "token": "abc"}
    record.update(info)
    (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(record))


def test_acquire_writes_holder_and_release_removes_it(tmp_path):
    with workdir_lock.acquire(tmp_path / "wd") as lock:
        assert lock.held
        info = json.loads((tmp_path / "wd" / ".lock").read_text())
        assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
        assert info["started"] and info["token"]
        assert workdir_lock.read_holder(tmp_path / "wd")["pid"] == os.getpid()
    assert not (tmp_path / "wd" / ".lock").exists()
    lock.release()  # idempotent
    with workdir_lock.acquire(tmp_path / "wd"):  # free again
        pass


def test_second_acquire_in_this_process_is_refused(tmp_path):
    with workdir_lock.acquire(tmp_path):
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            workdir_lock.acquire(tmp_path)


@pytest.mark.slow
def test_running_holder_blocks_a_second_training_then_its_death_frees_it(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(WorkdirLockedError) as info:
            workdir_lock.acquire(tmp_path)
        message = str(info.value)
        assert f"pid {holder.pid}" in message and f"host {socket.gethostname()}" in message
        assert "still running" in message and "another --workdir" in message
    finally:
        holder.kill()  # like kill -9: the file stays behind
        holder.wait()
    assert (tmp_path / ".lock").exists()
    with workdir_lock.acquire(tmp_path) as lock:  # stale: resumed run is not blocked
        assert lock.held and lock.info["pid"] == os.getpid()


def test_stale_lock_of_dead_pid_on_this_host_is_taken_over(tmp_path, caplog):
    write_lock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="unmask_jax.workdir_lock"):
        with workdir_lock.acquire(tmp_path) as lock:
            assert lock.info["pid"] == os.getpid()
    assert "stale lock" in caplog.text


def test_lock_from_another_host_says_so_and_how_to_override(tmp_path):
    write_lock(tmp_path, host="node-17.cluster", pid=4242)
    with pytest.raises(WorkdirLockedError) as info:
        workdir_lock.acquire(tmp_path)
    message = str(info.value)
    assert "host node-17.cluster" in message and "pid 4242" in message
    assert "another host" in message and f"remove {tmp_path / '.lock'}" in message
    (tmp_path / ".lock").unlink()  # the documented override
    with workdir_lock.acquire(tmp_path):
        pass


@pytest.mark.slow
def test_without_flock_a_live_pid_blocks_and_a_dead_one_does_not(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock, "fcntl", None)  # a file system without flock
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, pid=sleeper.pid)
        with pytest.raises(WorkdirLockedError, match=f"pid {sleeper.pid}"):
            workdir_lock.acquire(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    with workdir_lock.acquire(tmp_path):
        pass


def test_non_local_path_best_effort(tmp_path, monkeypatch):
    """The gs:// code path (epath read/write/read-back), exercised on a local folder."""
    monkeypatch.setattr(workdir_lock, "_is_local", lambda path: False)
    lock = workdir_lock.acquire(tmp_path)
    assert json.loads((tmp_path / ".lock").read_text())["token"] == lock.info["token"]
    with pytest.raises(WorkdirLockedError, match="still running"):
        workdir_lock.acquire(tmp_path)
    lock.release()
    assert not (tmp_path / ".lock").exists()
    write_lock(tmp_path, host="tpu-worker-0")
    with pytest.raises(WorkdirLockedError, match="another host"):
        workdir_lock.acquire(tmp_path)
    write_lock(tmp_path)  # dead pid on this host
    with workdir_lock.acquire(tmp_path):
        pass


# ---------------------------------------------------------------------------------------------
# Issue 11 item 5: two launches on one workdir

LOCKING_PROCESS = textwrap.dedent("""
    import sys, time
    from unmask_jax import parallel, workdir_lock
    parallel.initialize_distributed(parallel.DistributedConfig(mode=sys.argv[2]))
    import jax
    try:
        lock = workdir_lock.acquire(sys.argv[1])
    except workdir_lock.WorkdirLockedError as err:
        print("LOCKED:", err, flush=True)
        sys.exit(3)
    print(f"ACQUIRED process {jax.process_index()} of {jax.process_count()} held={lock.held}",
          flush=True)
    parallel.sync_global("acquired")
    time.sleep(float(sys.argv[3]))  # hold it while the other process starts
    lock.release()
    parallel.sync_global("released")
""")


def _run_pair(tmp_path: Path, mode: str, hold_s: float):
    from tests.test_parallel import load_launcher
    script = tmp_path / "locking_process.py"
    script.write_text(LOCKING_PROCESS)
    return load_launcher().run_local(
        2, 1, [sys.executable, str(script), str(tmp_path / "wd"), mode, str(hold_s)], timeout=120,
        env={"PYTHONPATH": str(REPO)}, log_dir=tmp_path / f"logs_{mode}", failure_grace_s=30)


@pytest.mark.slow
def test_launcher_processes_in_default_auto_mode_are_one_writer(tmp_path):
    result = _run_pair(tmp_path, "auto", 0.5)
    assert result.ok, result.summary()
    assert "ACQUIRED process 0 of 2 held=True" in result.log(0)
    assert "ACQUIRED process 1 of 2 held=False" in result.log(1)
    assert not (tmp_path / "wd" / ".lock").exists()


@pytest.mark.slow
def test_uncoordinated_processes_on_one_workdir_stop_at_start(tmp_path):
    result = _run_pair(tmp_path, "off", 10)  # independent trainings, as before mode=auto was default
    assert sorted(result.returncodes) == [0, 3], result.summary()
    loser = result.returncodes.index(3)
    winner = 1 - loser
    text = result.log(loser)
    assert "LOCKED:" in text and "in use by another training" in text
    assert f"host {socket.gethostname()}" in text
    held_line = [l for l in result.log(winner).splitlines() if l.startswith("ACQUIRED")]
    assert held_line == ["ACQUIRED process 0 of 1 held=True"]
