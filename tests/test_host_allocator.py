"""unmask_jax.backends.host_allocator: on the CPU platform, large freed buffers are reused, not
re-mapped every step; on other platforms nothing changes.

Each glibc case runs in a fresh interpreter (allocator settings are per process and must precede
the threads that allocate), allocating a 64 MiB block from a worker thread the way XLA's
runtime does, and reads glibc's own accounting (``mallinfo2``) and the page-fault counter.
"""
import json
import os
import platform
import subprocess
import sys

import pytest

from unmask_jax.backends import host_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_PROBE = r"""
import ctypes, json, resource, sys, threading
from unmask_jax.backends import host_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

print(host_allocator.configure(sys.argv[1], sys.argv[2]), file=sys.stderr)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
size = 64 << 20
result = {"mapped_while_live": [], "faults": []}

def step():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)  # touch every page, as a step's temporaries are written
    result["mapped_while_live"].append(libc.mallinfo2().hblkhd)
    libc.free(ctypes.c_void_p(p))

for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = threading.Thread(target=step)
    t.start(); t.join()
    result["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(result))
"""


def _probe(platform: str, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != host_allocator.ENV}
    out = subprocess.run([sys.executable, "-c", _PROBE, platform, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60, env=env)
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the settings are glibc-only")
def test_reuse_serves_large_blocks_from_the_heap_without_new_page_faults():
    pages = (64 << 20) // 4096
    reuse, system = _probe("cpu", "reuse"), _probe("cpu", "system")
    # glibc's defaults: a fresh mmap for every 64 MiB block (the probe can tell the two apart).
    assert min(system["mapped_while_live"]) >= 64 << 20, system
    # Reuse: the block is not mmapped (what is, was mapped before the settings took effect);
    # after the first step the same pages serve again.
    assert max(reuse["mapped_while_live"]) < 64 << 20, reuse
    assert max(reuse["faults"][1:]) < pages // 20, reuse


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the settings are glibc-only")
@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_non_cpu_platforms_keep_glibc_defaults(platform):
    """Asked to reuse buffers on a GPU/TPU backend, glibc still maps each large block."""
    probe = _probe(platform, "reuse")
    assert min(probe["mapped_while_live"]) >= 64 << 20, probe


@pytest.mark.parametrize("platform", ["gpu", "tpu", "GPU"])
def test_non_cpu_platforms_do_not_touch_libc(monkeypatch, platform):
    def no_libc(*args, **kwargs):
        raise AssertionError("libc loaded for a non-CPU platform")

    monkeypatch.setattr(host_allocator.ctypes, "CDLL", no_libc)
    monkeypatch.delenv(host_allocator.ENV, raising=False)
    message = host_allocator.configure(platform)
    assert message.startswith("host allocator: system defaults") and platform in message
    assert "\n" not in message


def test_modes_and_messages(monkeypatch):
    monkeypatch.delenv(host_allocator.ENV, raising=False)
    assert "system defaults" in host_allocator.configure("cpu", "system")
    monkeypatch.setenv(host_allocator.ENV, "system")
    assert "UNMASK_JAX_HOST_ALLOCATOR=system" in host_allocator.configure("cpu")
    assert "UNMASK_JAX_HOST_ALLOCATOR=system" in host_allocator.configure("gpu")
    with pytest.raises(ValueError, match="choose one of"):
        host_allocator.configure("cpu", "fast")
    monkeypatch.setenv(host_allocator.ENV, "fast")
    with pytest.raises(ValueError, match="choose one of"):
        host_allocator.configure("gpu")


def test_platform_before_start(monkeypatch):
    monkeypatch.setattr(host_allocator, "_accelerator_support_installed", lambda: False)
    monkeypatch.setattr(host_allocator, "_requested_platforms", lambda: "")
    assert host_allocator.platform_before_start() == "cpu"
    monkeypatch.setattr(host_allocator, "_accelerator_support_installed", lambda: True)
    assert host_allocator.platform_before_start() is None
    for requested, expected in (("cpu", "cpu"), ("cuda,cpu", "gpu"), ("tpu", "tpu")):
        monkeypatch.setattr(host_allocator, "_requested_platforms", lambda r=requested: r)
        assert host_allocator.platform_before_start() == expected


@pytest.mark.slow
def test_platform_before_start_starts_no_backend():
    code = ("import jax; from jax._src import xla_bridge;"
            "from unmask_jax.backends import host_allocator;"
            "p = host_allocator.platform_before_start();"
            "assert not xla_bridge._backends, xla_bridge._backends; print(p)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == "cpu"
