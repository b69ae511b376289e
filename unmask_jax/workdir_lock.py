"""One writer per workdir: a lock file ``<workdir>/.lock`` taken when training starts.

Two trainings that write the same workdir without coordinating (two shells, or
``launch/local_multiprocess.py`` with ``--config.distributed.mode=off``) destroy each other's
checkpoints: one of them dies inside Orbax at its first save. With the lock, the second one
stops at start-up with a :class:`WorkdirLockedError` naming the holder::

    with workdir_lock.acquire(workdir):       # every process calls it; process 0 takes it
        ...train...

or ``lock = workdir_lock.acquire(workdir)`` ... ``lock.release()``.

The file is JSON: host, pid, user, start time, command line, and a random token. In a
multi-process JAX run only process 0 takes it (the run is one writer) and every process learns
the outcome, so all of them raise together.

Stale locks: a holder that died without releasing (``kill -9``, a crash of the host) leaves the
file behind.

* Local paths (and shared file systems that support ``flock``): the holder also keeps an
  exclusive ``fcntl.flock`` on the file while it runs, which the kernel drops when the process
  dies. A lock file whose ``flock`` is free and whose holder ran on this host is stale and taken
  over (with a warning naming the previous holder); likewise when its pid no longer runs here.
* A lock file written on another host: whether that process still runs cannot be checked from
  here (``flock`` does not cross hosts on every file system), so the error says so and how to
  override: remove the file.
* ``gs://`` and other non-local paths (``etils.epath``): best effort. No atomic create: the
  file is checked, written, and read back after 0.5 s (the later of two writers wins, the
  other stops; two starts racing around that read-back can, rarely, both proceed), there is no
  ``flock``, and only a holder on the same host with a dead pid counts as stale.
"""
from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from etils import epath

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class WorkdirLockedError(Exception):
    """Another training holds the workdir; the message names it and says what to do."""


def _is_local(path: epath.Path) -> bool:
    text = os.fspath(path)
    return "://" not in text or text.startswith("file://")


def _hostname() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(info: dict[str, Any]) -> str:
    parts = [f"host {info.get('host', '?')}", f"pid {info.get('pid', '?')}"]
    if info.get("user"):
        parts.append(f"user {info['user']}")
    if info.get("started"):
        parts.append(f"since {info['started']}")
    text = ", ".join(parts)
    if info.get("command"):
        text += f" ({info['command']})"
    return text


def _new_info() -> dict[str, Any]:
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER", "")
    return {
        "host": _hostname(),
        "pid": os.getpid(),
        "user": user,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:500],
        "token": uuid.uuid4().hex,
    }


def _parse(text: str) -> dict[str, Any] | None:
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def read_holder(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The recorded holder of ``workdir``'s lock (host, pid, user, started, command), or None
    if there is no lock file (or it is unreadable)."""
    path = epath.Path(workdir) / LOCK_NAME
    try:
        return _parse(path.read_text())
    except (FileNotFoundError, OSError):
        return None


def _locked_message(path: epath.Path, info: dict[str, Any] | None, *, alive: bool,
                    flock_held: bool = False) -> str:
    who = _describe(info) if info else "an unknown process (the lock file is unreadable)"
    if info and info.get("host") not in (None, _hostname()):
        if flock_held:
            return (f"workdir {path.parent} is in use by another training on another host, "
                    f"still running (it holds the file lock): {who}. Two trainings writing one "
                    f"workdir destroy each other's checkpoints: wait for it to end, stop it, or "
                    f"use another --workdir.")
        return (f"workdir {path.parent} is in use by another training: {who}. It was started "
                f"on another host, so whether it still runs cannot be checked from here. Two "
                f"trainings writing one workdir destroy each other's checkpoints. If that run "
                f"has ended (its host crashed), remove {path} and start again; otherwise use "
                f"another --workdir.")
    state = "still running" if alive else "holding the lock"
    return (f"workdir {path.parent} is in use by another training, {state}: {who}. Two "
            f"trainings writing one workdir destroy each other's checkpoints: wait for it to "
            f"end, stop it, or use another --workdir. (For several processes of one run, start "
            f"them with launch/local_multiprocess.py, srun or on every TPU worker with "
            f"--config.distributed.mode=auto, the default.)")


_HELD_LOCK = threading.Lock()
_HELD: set[str] = set()  # lock files held by this process (refuses a second acquire in-process)


class WorkdirLock:
    """A held (or, on processes other than 0 of a multi-process run, a no-op) workdir lock."""

    def __init__(self, path: epath.Path, info: dict[str, Any] | None, fd: int | None = None):
        self.path = path
        self.info = info
        self._fd = fd

    @property
    def held(self) -> bool:
        """True if this process holds the lock file (process 0 of a run)."""
        return self.info is not None

    def release(self) -> None:
        """Removes the lock file if it is still ours; idempotent."""
        if self.info is None:
            return
        try:
            current = _parse(self.path.read_text())
            if current is not None and current.get("token") == self.info.get("token"):
                self.path.unlink()
            else:
                log.warning("workdir lock %s was taken over by %s; leaving it",
                            self.path, _describe(current) if current else "someone else")
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove workdir lock %s: %s", self.path, err)
        finally:
            if self._fd is not None:
                os.close(self._fd)  # drops the flock
                self._fd = None
            with _HELD_LOCK:
                _HELD.discard(os.fspath(self.path).removeprefix("file://"))
            self.info = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # Dropped without release(): let go of the flock and the in-process record; the file
        # stays and counts as stale (same host, flock free) for the next acquire.
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
            with _HELD_LOCK:
                _HELD.discard(os.fspath(self.path).removeprefix("file://"))


def _acquire_local(path: epath.Path) -> WorkdirLock:
    fspath = os.fspath(path).removeprefix("file://")
    with _HELD_LOCK:
        if fspath in _HELD:
            raise WorkdirLockedError(_locked_message(path, read_holder(path.parent), alive=True))
    os.makedirs(os.path.dirname(fspath) or ".", exist_ok=True)
    for _ in range(20):
        fd = os.open(fspath, os.O_RDWR | os.O_CREAT, 0o644)
        flocked = False
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    flocked = True
                except BlockingIOError:
                    info = _parse(_read_fd(fd))
                    raise WorkdirLockedError(_locked_message(
                        path, info, alive=True, flock_held=True)) from None
                except OSError as err:  # file system without flock: pid checks only
                    if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS,
                                         errno.EINVAL):
                        raise
            # The file may have been unlinked (released) between open and flock: retry then.
            try:
                if os.fstat(fd).st_ino != os.stat(fspath).st_ino:
                    os.close(fd)
                    fd = None
                    continue
            except FileNotFoundError:
                os.close(fd)
                fd = None
                continue
            previous = _parse(_read_fd(fd))
            if previous is not None:
                _check_stale(path, previous, flocked=flocked)
            elif _read_fd(fd).strip() and not flocked:
                raise WorkdirLockedError(_locked_message(path, None, alive=False))
            info = _new_info()
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info, indent=1) + "\n").encode(), 0)
            os.fsync(fd)
            with _HELD_LOCK:
                _HELD.add(fspath)
            lock = WorkdirLock(path, info, fd)
            fd = None
            return lock
        finally:
            if fd is not None:
                os.close(fd)
    raise WorkdirLockedError(f"could not take the workdir lock {path}: it kept changing")


def _read_fd(fd: int) -> str:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode(errors="replace")


def _check_stale(path: epath.Path, previous: dict[str, Any], *, flocked: bool) -> None:
    """Returns if ``previous`` (the recorded holder) is stale; raises WorkdirLockedError if not."""
    same_host = previous.get("host") == _hostname()
    pid = previous.get("pid")
    pid = pid if isinstance(pid, int) else -1
    if not same_host:
        raise WorkdirLockedError(_locked_message(path, previous, alive=False))
    if flocked or not _pid_alive(pid):
        # flock free on this host: the holder is gone (the kernel drops it when a process
        # dies), even if its pid was reused since.
        log.warning("workdir lock %s: taking over the stale lock of %s (no longer running)",
                    path, _describe(previous))
        return
    raise WorkdirLockedError(_locked_message(path, previous, alive=True))


def _acquire_remote(path: epath.Path) -> WorkdirLock:
    key = os.fspath(path)
    with _HELD_LOCK:
        if key in _HELD:
            raise WorkdirLockedError(_locked_message(path, read_holder(path.parent), alive=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        previous = read_holder(path.parent)
        if previous is None:
            raise WorkdirLockedError(_locked_message(path, None, alive=False))
        _check_stale(path, previous, flocked=False)
    info = _new_info()
    path.write_text(json.dumps(info, indent=1) + "\n")
    time.sleep(0.5)  # let a concurrent writer's file land, then see whose token won
    current = read_holder(path.parent)
    if current is None or current.get("token") != info["token"]:
        raise WorkdirLockedError(_locked_message(path, current, alive=True))
    with _HELD_LOCK:
        _HELD.add(key)
    return WorkdirLock(path, info)


def acquire(workdir: str | os.PathLike, *, coordinate: bool = True) -> WorkdirLock:
    """Takes ``<workdir>/.lock`` for this training; raises WorkdirLockedError if it is held.

    Call it in every process of a run, after ``parallel.initialize_distributed`` and before
    the checkpoint manager is made. With ``coordinate`` (default) and several JAX processes,
    only process 0 takes the lock and the outcome is broadcast (a collective), so that every
    process raises or proceeds together; the returned lock is then a no-op on the others.
    With one process (or ``coordinate=False``) this process takes it.

    The returned :class:`WorkdirLock` is a context manager; ``release()`` removes the file.
    """
    path = epath.Path(workdir) / LOCK_NAME
    take = _acquire_local if _is_local(path) else _acquire_remote
    count = 1
    if coordinate:
        import jax  # the trainer has it initialised by now
        count = jax.process_count()
    if count == 1:
        return take(path)

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = take(path)
        except Exception as err:  # pylint: disable=broad-except  # re-raised after the broadcast
            error = err
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(0 if error is None else 1)))
    if error is not None:
        raise error
    if failed:
        holder = read_holder(workdir)
        raise WorkdirLockedError(
            _locked_message(path, holder, alive=True) if holder else
            f"workdir {workdir} is in use by another training (process 0 could not take "
            f"{path}; see its log)")
    return lock if lock is not None else WorkdirLock(path, None)
