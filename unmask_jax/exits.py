"""How a run ends on a mistake: user mistakes print one message and exit with status 2 (no
traceback); a failure in a multi-process run ends this process at once so the others stop
too."""
from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

USER_ERROR_STATUS = 2

log = logging.getLogger("unmask_jax")


class UserError(Exception):
    """A mistake in the command, config or files, with a message saying what to change."""


def fail(message: str, status: int = USER_ERROR_STATUS) -> NoReturn:
    """Prints ``error: <message>`` (and logs it) and exits with ``status``."""
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(status)


def exit_now(process_index: int) -> NoReturn:
    """Ends this process at once (status 1) after an exception in a multi-process run.

    A normal exit would wait at JAX's distributed shutdown barrier (up to 300 s) for the
    other processes, which wait in their next collective for this one: the whole job would
    hang. Exiting now, without the barrier, makes the others abort after
    ``distributed.heartbeat_timeout_s``, as when a process crashes.
    """
    log.exception("process %d failed; exiting now so that the other processes stop too",
                  process_index)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
