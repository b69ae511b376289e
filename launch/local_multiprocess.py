#!/usr/bin/env python3
"""Runs N JAX processes on this machine: the offline stand-in for a TPU pod.

    python launch/local_multiprocess.py --processes=2 --devices_per_process=2 \\
        [--timeout=120] [--fake-slurm] [--log_dir=DIR] -- python -m unmask_jax.main ...

Every child runs the same COMMAND on the CPU backend (``JAX_PLATFORMS=cpu``,
``JAX_NUM_CPU_DEVICES=M``, gloo cross-process collectives) and learns how to
join the run from its environment:

* default: ``UNMASK_COORDINATOR=localhost:PORT`` (a free port),
  ``UNMASK_NUM_PROCESSES=N``, ``UNMASK_PROCESS_ID=i`` -- read by
  ``distributed.mode=auto`` (the default) and ``explicit`` (``unmask_jax.parallel``),
  so ``python -m unmask_jax.main`` needs no extra flag to form one N-process run.
* ``--fake-slurm``: instead ``SLURM_JOB_ID``, ``SLURM_NTASKS``, ``SLURM_PROCID``,
  ``SLURM_LOCALID``, ``SLURM_STEP_NODELIST=localhost``... as ``srun`` would set
  them, so that ``distributed.mode=auto`` detects a SLURM step and calls the
  argument-less ``jax.distributed.initialize()``. JAX derives the
  coordinator port from the job id (``61440 + SLURM_JOB_ID % 4096``); the
  launcher picks a job id whose port is free here.

With ``--config.distributed.mode=off`` the children do not join: they are N
independent trainings, and on one workdir all but the first stop at start-up
(the workdir lock, ``unmask_jax.workdir_lock``); the launcher warns about it.

Each child's stdout+stderr goes to ``LOG_DIR/process_<i>.log`` (process 0 is
also echoed to stdout, prefixed ``[p0]``). If a child fails, the others get
``--failure_grace`` seconds to exit on their own (a real run aborts through the
JAX heartbeat) and are then killed; ``--timeout`` kills everything. The exit
status is 0 only if every child exited 0 (124 on timeout).

From Python (pytest), ``launch/`` is not a package: load this file by path::

    spec = importlib.util.spec_from_file_location("local_multiprocess", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_multiprocess"] = module
    spec.loader.exec_module(module)
    result = module.run_local(2, 2, [sys.executable, "worker.py"], timeout=60)
    assert result.ok, result.summary()
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

SLURM_PORT_BASE = 65535 - 2**12 + 1  # JAX's SlurmCluster: port = base + job_id % 4096
TIMEOUT_EXIT_CODE = 124
# Variables that would make a child join the wrong cluster if inherited.
_CLUSTER_ENV_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "UNMASK_COORDINATOR",
                         "UNMASK_NUM_PROCESSES", "UNMASK_PROCESS_ID",
                         "JAX_COORDINATOR_", "JAX_PROCESS_", "JAX_NUM_PROCESSES",
                         "JAX_LOCAL_DEVICE_IDS", "TPU_WORKER_", "MEGASCALE_")


@dataclasses.dataclass
class RunResult:
    """Outcome of a local multi-process run.

    Attributes:
      returncodes: exit status per process (negative: killed by that signal).
      killed_by_launcher: per process, whether the launcher had to kill it
        (timeout or after another process failed).
      log_paths: per-process log files (stdout and stderr together).
      log_dir: the folder holding them.
      timed_out: the hard timeout fired.
      duration_s: wall time from the first start to the last exit.
      exit_times_s: per process, seconds from start to its exit.
    """

    returncodes: list[int]
    killed_by_launcher: list[bool]
    log_paths: list[Path]
    log_dir: Path
    timed_out: bool
    duration_s: float
    exit_times_s: list[float]

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(code == 0 for code in self.returncodes)

    @property
    def exit_code(self) -> int:
        """0; 124 on timeout; else the status of the child that failed first
        (a child killed by signal S counts as 128 + S, like a shell)."""
        if self.timed_out:
            return TIMEOUT_EXIT_CODE
        failures = sorted((killed, time_s, code) for code, killed, time_s in zip(
            self.returncodes, self.killed_by_launcher, self.exit_times_s) if code != 0)
        if not failures:
            return 0
        code = failures[0][2]
        return code if code > 0 else 128 - code

    def log(self, process_id: int) -> str:
        return self.log_paths[process_id].read_text(errors="replace")

    def summary(self, tail_chars: int = 3000) -> str:
        """Return codes plus the tail of each log: for assertion messages."""
        parts = [f"returncodes={self.returncodes} killed={self.killed_by_launcher} "
                 f"timed_out={self.timed_out} duration={self.duration_s:.1f}s"]
        for i, path in enumerate(self.log_paths):
            text = path.read_text(errors="replace") if path.exists() else "<no log>"
            parts.append(f"----- process {i} ({path}) -----\n{text[-tail_chars:]}")
        return "\n".join(parts)


def _port_is_free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))
        except OSError as err:
            if family == socket.AF_INET6 and not socket.has_ipv6:
                continue
            if family == socket.AF_INET6 and err.errno in (97, 99):  # no IPv6 here
                continue
            return False
    return True


def free_port() -> int:
    """A TCP port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def free_slurm_job_id(seed: int | None = None) -> int:
    """A fake SLURM job id whose JAX-derived coordinator port is free."""
    start = (seed if seed is not None else os.getpid() + int(time.time())) % 2**12
    for offset in range(2**12):
        port_offset = (start + offset) % 2**12
        if _port_is_free(SLURM_PORT_BASE + port_offset):
            return 2**12 * 1000 + port_offset
    raise RuntimeError("no free port in the SLURM coordinator range 61440-65535")


def _xla_flags(existing: str, devices: int) -> str:
    kept = [f for f in existing.split() if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def child_environments(processes: int, devices_per_process: int, *,
                       fake_slurm: bool = False, env: Mapping[str, str] | None = None,
                       base_env: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """The environment of each child process (see the module docstring)."""
    if processes < 1 or devices_per_process < 1:
        raise ValueError(f"need processes >= 1 and devices_per_process >= 1, got "
                         f"{processes} and {devices_per_process}")
    base = {k: v for k, v in (os.environ if base_env is None else base_env).items()
            if not k.startswith(_CLUSTER_ENV_PREFIXES)}
    base.update({
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(devices_per_process),
        "XLA_FLAGS": _xla_flags(base.get("XLA_FLAGS", ""), devices_per_process),
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "PYTHONUNBUFFERED": "1",
    })
    base.update(env or {})
    envs = []
    if fake_slurm:
        job_id = free_slurm_job_id()
        for i in range(processes):
            child = dict(base)
            child.update({
                "SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id),
                "SLURM_NTASKS": str(processes), "SLURM_NPROCS": str(processes),
                "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "SLURM_NODEID": "0",
                "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1",
                "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": str(processes),
                "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost",
                "SLURM_STEP_NODELIST": "localhost",
                "SLURM_TASKS_PER_NODE": str(processes),
            })
            envs.append(child)
    else:
        coordinator = f"localhost:{free_port()}"
        for i in range(processes):
            child = dict(base)
            child.update({"UNMASK_COORDINATOR": coordinator,
                          "UNMASK_NUM_PROCESSES": str(processes),
                          "UNMASK_PROCESS_ID": str(i)})
            envs.append(child)
    return envs


def _pump(stream: IO[bytes], log_file: IO[bytes], echo_prefix: str | None,
          marker: bytes | None, seen_marker: threading.Event) -> None:
    """Copies a child's output to its log (and optionally stdout)."""
    for line in iter(stream.readline, b""):
        log_file.write(line)
        log_file.flush()
        if marker is not None and marker in line:
            seen_marker.set()
        if echo_prefix is not None:
            sys.stdout.write(echo_prefix + line.decode(errors="replace"))
            sys.stdout.flush()
    stream.close()


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_local(processes: int, devices_per_process: int, command: Sequence[str],
              timeout: float = 300.0, env: Mapping[str, str] | None = None,
              fake_slurm: bool = False, log_dir: str | os.PathLike | None = None, *,
              failure_grace_s: float = 30.0, signal_after_s: float | None = None,
              signal_name: str = "TERM", signal_after_marker: str | None = None,
              echo: bool = False, cwd: str | os.PathLike | None = None) -> RunResult:
    """Runs ``command`` as ``processes`` cooperating JAX processes on the CPU.

    Args:
      processes: number of processes N.
      devices_per_process: fake CPU devices per process M.
      command: argv run by every child.
      timeout: hard limit in seconds; everything is killed after it.
      env: extra environment for every child (e.g. ``PYTHONPATH``).
      fake_slurm: set SLURM_* variables instead of UNMASK_* (auto-detection).
      log_dir: where ``process_<i>.log`` go (default: a new temp folder).
      failure_grace_s: after a child fails, how long the others may take to
        exit on their own before they are killed.
      signal_after_s: send ``SIG<signal_name>`` to every child this many seconds
        after start, or after every child printed ``signal_after_marker``.
      echo: copy process 0's output to stdout, prefixed ``[p0]``.
      cwd: working folder of the children.
    """
    if not command:
        raise ValueError("no command to run")
    log_dir = Path(log_dir) if log_dir is not None else Path(
        tempfile.mkdtemp(prefix="unmask_local_mp_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    envs = child_environments(processes, devices_per_process, fake_slurm=fake_slurm, env=env)
    sig = getattr(signal, "SIG" + signal_name.upper().removeprefix("SIG"))
    marker = signal_after_marker.encode() if signal_after_marker else None

    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    log_files = []
    markers = [threading.Event() for _ in range(processes)]
    log_paths = [log_dir / f"process_{i}.log" for i in range(processes)]
    start = time.monotonic()
    try:
        for i in range(processes):
            log_file = open(log_paths[i], "wb")
            log_files.append(log_file)
            proc = subprocess.Popen(list(command), env=envs[i], cwd=cwd,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            procs.append(proc)
            thread = threading.Thread(
                target=_pump, daemon=True,
                args=(proc.stdout, log_file, f"[p{i}] " if echo and i == 0 else None,
                      marker, markers[i]))
            thread.start()
            threads.append(thread)

        exit_times: list[float | None] = [None] * processes
        killed = [False] * processes
        timed_out = False
        first_failure: float | None = None
        signal_sent = signal_after_s is None
        marker_time: float | None = None if marker else start
        while True:
            now = time.monotonic()
            for i, proc in enumerate(procs):
                if exit_times[i] is None and proc.poll() is not None:
                    exit_times[i] = now - start
                    if proc.returncode != 0 and first_failure is None:
                        first_failure = now
            if all(t is not None for t in exit_times):
                break
            if marker_time is None and all(m.is_set() for m in markers):
                marker_time = now
            if (not signal_sent and marker_time is not None
                    and now - marker_time >= signal_after_s):
                for i, proc in enumerate(procs):
                    if exit_times[i] is None:
                        try:
                            proc.send_signal(sig)
                        except ProcessLookupError:
                            pass
                signal_sent = True
            must_kill = now - start > timeout
            timed_out = timed_out or must_kill
            if first_failure is not None and now - first_failure > failure_grace_s:
                must_kill = True
            if must_kill:
                for i, proc in enumerate(procs):
                    if exit_times[i] is None:
                        killed[i] = True
                        _kill_group(proc)
                for i, proc in enumerate(procs):
                    if exit_times[i] is None:
                        proc.wait()
                        exit_times[i] = time.monotonic() - start
                break
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()
            else:  # leftover grandchildren of a finished child
                _kill_group(proc)
        for thread in threads:
            thread.join(timeout=5)
        for log_file in log_files:
            log_file.close()
    return RunResult(
        returncodes=[proc.returncode for proc in procs], killed_by_launcher=killed,
        log_paths=log_paths, log_dir=log_dir, timed_out=timed_out,
        duration_s=time.monotonic() - start,
        exit_times_s=[float(t) for t in exit_times])


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit("usage: local_multiprocess.py [options] -- COMMAND... (missing '--')")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(
        description="Run N local JAX processes (CPU, gloo) as a stand-in for a pod.",
        usage="%(prog)s [options] -- COMMAND...")
    parser.add_argument("--processes", "-n", type=int, required=True)
    parser.add_argument("--devices_per_process", "--devices-per-process", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="hard timeout in seconds (exit 124)")
    parser.add_argument("--fake-slurm", "--fake_slurm", dest="fake_slurm",
                        action="store_true", help="set SLURM_* instead of UNMASK_*")
    parser.add_argument("--log_dir", "--log-dir", default=None)
    parser.add_argument("--failure_grace", "--failure-grace", type=float, default=30.0,
                        help="seconds the others may run on after one process failed")
    parser.add_argument("--signal-after", "--signal_after", dest="signal_after",
                        type=float, default=None, help="send --signal after S seconds")
    parser.add_argument("--signal", default="TERM", help="signal name (TERM, INT, ...)")
    parser.add_argument("--signal-after-marker", "--signal_after_marker",
                        dest="signal_after_marker", default=None,
                        help="count --signal-after from when every process printed this")
    parser.add_argument("--quiet", action="store_true", help="do not echo process 0")
    args = parser.parse_args(options)
    if not command:
        parser.error("no COMMAND after '--'")
    return args, command


def independent_mode_warning(command: Sequence[str]) -> str | None:
    """A warning if ``command`` asks for ``distributed.mode=off`` (the children would not join)."""
    for i, arg in enumerate(command):
        value = None
        if arg.startswith("--config.distributed.mode="):
            value = arg.split("=", 1)[1]
        elif arg == "--config.distributed.mode" and i + 1 < len(command):
            value = command[i + 1]
        if value is not None and value.strip("'\"") == "off":
            return ("local_multiprocess: warning: --config.distributed.mode=off starts "
                    "independent single-process runs that do not share gradients; on one "
                    "--workdir all but one stop at start (workdir lock). Leave the mode at "
                    "its default (auto) to run one multi-process training.")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    warning = independent_mode_warning(command)
    if warning and args.processes > 1:
        print(warning, file=sys.stderr, flush=True)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="unmask_local_mp_")
    print(f"local_multiprocess: {args.processes} processes x {args.devices_per_process} "
          f"CPU devices, logs in {log_dir}", flush=True)
    result = run_local(args.processes, args.devices_per_process, command,
                       timeout=args.timeout, fake_slurm=args.fake_slurm, log_dir=log_dir,
                       failure_grace_s=args.failure_grace, signal_after_s=args.signal_after,
                       signal_name=args.signal, signal_after_marker=args.signal_after_marker,
                       echo=not args.quiet)
    for i, (code, killed) in enumerate(zip(result.returncodes, result.killed_by_launcher)):
        note = " (killed by launcher)" if killed else ""
        print(f"local_multiprocess: process {i} exit {code}{note}, log {result.log_paths[i]}",
              flush=True)
    if result.timed_out:
        print(f"local_multiprocess: hard timeout after {args.timeout:.0f}s", flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
