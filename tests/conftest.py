"""Suite-wide settings: a persistent XLA compilation cache shared by the tests.

Many tests compile the same small networks; the cache (one directory per pytest run,
shared by xdist workers) turns the repeated compiles into loads.
"""
import os
import sys
import tempfile

import jax
import pytest

_CACHE = os.environ.setdefault(
    "UNMASK_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "unmask_jax_test_xla_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True)
def _seed_torch_per_test():
    """Every test starts from the same torch RNG state, whichever tests ran before it in
    this worker (xdist hands files to workers dynamically), so no result depends on order."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
    yield
