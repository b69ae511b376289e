"""Host-memory allocator settings for long-running CPU-backend work (training, benchmarks).

XLA's CPU runtime allocates each step's temporary buffer and PyTorch its large tensors with
``malloc``. glibc serves such requests with a fresh ``mmap`` and unmaps them on ``free``,
so every step touches hundreds of MB of new pages (minor page faults; their count and cost
per pix2pix step, measured on the CPU backend only: ``benchmarks/README.md``).
``configure`` makes glibc keep freed memory for reuse instead:

- ``M_ARENA_MAX = 1``: one heap for all threads (worker threads otherwise get their own
  arenas, which always ``mmap`` large blocks);
- ``M_MMAP_MAX = 0``: large blocks come from that heap, not from ``mmap``;
- ``M_TRIM_THRESHOLD = 2 GiB - 1``: up to 2 GiB of free heap is kept, not returned to the OS.

The cost: the process keeps its peak heap resident (a higher peak RSS).

The settings were measured on the CPU backend only, so ``configure(platform)`` applies
them only when ``platform`` (``jax.default_backend()``) is 'cpu'; on 'gpu', 'tpu', ... it
changes nothing. ``UNMASK_JAX_HOST_ALLOCATOR=system`` keeps glibc's defaults everywhere.
Elsewhere than glibc (macOS, musl) it does nothing. It always returns one line saying what
was applied, or why nothing was.

When to call it: before JAX starts its backend. The settings govern allocations made after
the call, and a thread that has already allocated keeps the arena glibc gave it; the JAX
CPU client's threads allocate as it starts, so after ``jax.default_backend()`` the settings
no longer reach the step's large temporaries (``benchmarks/host_allocator.py`` shows both
orders). :func:`platform_before_start` tells the platform without starting a backend
whenever that can be known (``JAX_PLATFORMS`` set, or no accelerator support installed).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import platform as pyplatform

ENV = "UNMASK_JAX_HOST_ALLOCATOR"
MODES = ("reuse", "system")

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def configure(platform: str, mode: str | None = None) -> str:
    """Apply the buffer-reuse settings when ``platform`` is 'cpu' (and glibc, and ``mode``
    is 'reuse'); return a one-line description of what was applied or why not.

    Args:
      platform: the JAX backend platform, ``jax.default_backend()`` ('cpu', 'gpu', 'tpu').
      mode: 'reuse' (default) or 'system'; default from $UNMASK_JAX_HOST_ALLOCATOR.
    """
    mode = (mode or os.environ.get(ENV) or "reuse").lower()
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: choose one of {MODES}")
    if mode == "system":
        return "host allocator: system defaults (UNMASK_JAX_HOST_ALLOCATOR=system)"
    if str(platform).lower() != "cpu":
        return (f"host allocator: system defaults (platform {platform}: the buffer-reuse "
                f"settings are CPU-backend tuning)")
    if pyplatform.system() != "Linux" or pyplatform.libc_ver()[0] != "glibc":
        return (f"host allocator: system defaults ({pyplatform.system()} "
                f"{pyplatform.libc_ver()[0] or 'libc'}: the buffer-reuse settings are "
                f"glibc-only)")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    failed = [param for param, value in settings if libc.mallopt(param, value) != 1]
    if failed:
        raise OSError(f"glibc mallopt refused parameters {failed}")
    return ("host allocator (platform cpu): glibc reuses freed buffers (one arena, no mmap, "
            "trim threshold 2 GiB; UNMASK_JAX_HOST_ALLOCATOR=system to turn off)")


def _accelerator_support_installed() -> bool:
    """Whether a non-CPU PJRT backend could load: a ``jax_plugins`` package or entry point
    (CUDA, ROCm, ...) or libtpu."""
    if importlib.util.find_spec("jax_plugins") is not None:
        return True
    if list(importlib.metadata.entry_points(group="jax_plugins")):
        return True
    return importlib.util.find_spec("libtpu") is not None or bool(
        os.environ.get("TPU_LIBRARY_PATH"))


def _requested_platforms() -> str:
    """``jax_platforms`` ($JAX_PLATFORMS or ``jax.config.update``), '' when unset."""
    import jax  # importing JAX starts no backend

    return jax.config.jax_platforms or ""


def platform_before_start() -> str | None:
    """The JAX platform when it is known without starting a JAX backend, else None.

    The first entry of ``jax_platforms`` ($JAX_PLATFORMS) when set; 'cpu' when no
    accelerator support is installed (then JAX can only run on the CPU); None otherwise
    (ask ``jax.default_backend()`` once the backend has started)."""
    requested = _requested_platforms().split(",")[0].strip().lower()
    if requested:
        return "gpu" if requested in ("cuda", "rocm") else requested
    return None if _accelerator_support_installed() else "cpu"
