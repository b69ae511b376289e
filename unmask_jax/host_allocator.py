"""Host-memory allocator settings for long-running CPU work (training, benchmarks).

XLA's CPU runtime allocates each step's temporary buffer (about 450 MB for the pix2pix
256x256 train step at batch 1) and PyTorch its large tensors with ``malloc``. glibc serves
such requests with a fresh ``mmap`` and unmaps them on ``free``, so every step touches
hundreds of MB of new pages: about 124k minor page faults per pix2pix step, 10-15% of a CPU
step (measured on 2 cores for both frameworks). ``configure`` makes glibc keep freed memory
for reuse instead:

- ``M_ARENA_MAX = 1``: one heap for all threads (worker threads otherwise get their own
  arenas, which always ``mmap`` large blocks);
- ``M_MMAP_MAX = 0``: large blocks come from that heap, not from ``mmap``;
- ``M_TRIM_THRESHOLD = 2 GiB - 1``: up to 2 GiB of free heap is kept, not returned to the OS.

The cost: the process keeps its peak heap resident (pix2pix batch-1 step: 2.60 GB peak RSS
instead of 2.24 GB). Call it before JAX starts its CPU client
(its worker threads pick their arena on first use). ``UNMASK_JAX_HOST_ALLOCATOR=system``
keeps glibc's defaults. Elsewhere than glibc (macOS, musl) it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "UNMASK_JAX_HOST_ALLOCATOR"
MODES = ("reuse", "system")

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def configure(mode: str | None = None) -> str:
    """Apply ``mode`` ('reuse' default, or 'system'; default from $UNMASK_JAX_HOST_ALLOCATOR)
    and return a one-line description of what is in effect."""
    mode = (mode or os.environ.get(ENV) or "reuse").lower()
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: choose one of {MODES}")
    if mode == "system":
        return "host allocator: system defaults (UNMASK_JAX_HOST_ALLOCATOR=system)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return (f"host allocator: system defaults ({platform.system()} "
                f"{platform.libc_ver()[0] or 'libc'}: the buffer-reuse settings are glibc-only)")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    failed = [param for param, value in settings if libc.mallopt(param, value) != 1]
    if failed:
        raise OSError(f"glibc mallopt refused parameters {failed}")
    return ("host allocator: glibc reuses freed buffers (one arena, no mmap, trim threshold "
            "2 GiB; UNMASK_JAX_HOST_ALLOCATOR=system to turn off)")
