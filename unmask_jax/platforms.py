"""Which JAX platforms a process starts: no TPU initialisation on a machine without a TPU.

``jax[tpu]`` (installed by the test extra for ``--mode=compile``) makes every JAX process
try to start a TPU first. On a machine without one, libtpu prints a failed initialisation
with a source-location trace and start-up takes longer. :func:`skip_absent_tpu` sets
``JAX_PLATFORMS=cpu`` (the environment, for child processes, and JAX's config, before any
backend starts) when

* ``JAX_PLATFORMS`` is not set already (a user's choice always wins),
* this machine has no TPU device (``/dev/accel*``, ``/dev/vfio/<n>``, or the Cloud TPU VM
  variable ``TPU_ACCELERATOR_TYPE``), and
* no GPU plugin of JAX is installed (a GPU machine keeps its default choice).

So a TPU VM still picks its TPU, a GPU machine its GPU, and a CPU machine starts quietly.
Compile-only TPU and GPU devices (``jax.experimental.topologies``, ``--mode=compile``) do not
need the platform started and work either way. It runs when ``unmask_jax`` is imported.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                "jax_rocm7_plugin", "jax_plugins.xla_cuda12", "jax_plugins.xla_rocm60")


def tpu_present(environ=None) -> bool:
    """Whether this machine has TPU devices (device nodes, or a Cloud TPU VM's variable)."""
    env = os.environ if environ is None else environ
    return bool(env.get("TPU_ACCELERATOR_TYPE") or glob.glob("/dev/accel*")
                or glob.glob("/dev/vfio/[0-9]*"))


def gpu_plugin_installed() -> bool:
    for name in _GPU_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def skip_absent_tpu() -> str | None:
    """Sets ``JAX_PLATFORMS=cpu`` where that changes nothing but the failed TPU start (see
    the module docstring); returns the value set, or None when it left the choice alone."""
    if os.environ.get("JAX_PLATFORMS") is not None or tpu_present() or gpu_plugin_installed():
        return None
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax = sys.modules.get("jax")
    if jax is not None:  # imported before us: its config read the environment already
        try:
            jax.config.update("jax_platforms", "cpu")
        except Exception as e:  # noqa: BLE001 - a backend already started: too late, harmless
            log.debug("jax_platforms not updated: %s", e)
    return "cpu"


#: ``UNMASK_JAX_COMPILATION_CACHE``: a folder for JAX's persistent compilation cache, or
#: "off". Default: ``$UNMASK_JAX_CACHE/jax`` (``~/.cache/unmask_jax/jax``).
CACHE_ENV = "UNMASK_JAX_COMPILATION_CACHE"


def compilation_cache_dir(environ=None) -> str | None:
    """Where :func:`enable_compilation_cache` keeps compiled programs (None: off)."""
    env = os.environ if environ is None else environ
    chosen = env.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "0", "off", "false", "no") else chosen
    root = env.get("UNMASK_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                       "unmask_jax")
    return os.path.join(root, "jax")


def enable_compilation_cache(environ=None) -> str | None:
    """Turns on JAX's persistent compilation cache (programs compiled once are read back on
    the next run: predict's second start skips its compilations). A cache the user set up
    (``JAX_COMPILATION_CACHE_DIR``) is left alone. Returns the folder, or None when off."""
    import jax
    env = os.environ if environ is None else environ
    if env.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir or env.get("JAX_COMPILATION_CACHE_DIR")
    folder = compilation_cache_dir(env)
    if folder is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:  # a read-only home: run without the cache, and say so
        log.warning("compilation cache off: cannot create %s (%s)", folder, e)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
