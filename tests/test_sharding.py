"""The training state's layout over a data-parallel mesh, and the traffic between chips.

* ``train.state_sharding``: with ``optimizer`` (ZeRO-1) each device holds 1/N of the large
  optimizer-state arrays, with ``full`` of the parameters too: the compiled step's per-device
  argument bytes shrink as devices are added at an equal per-device batch, and stay put
  when replicated.
* Checkpoints hold whole arrays: a state saved from one layout and device count restores
  into another bit-exactly.
* The only collectives a data-parallel step needs are reductions (gradients, BatchNorm
  statistics) and, with a split state, the gathers of what was split: no collective-permute
  and no all-to-all in any system's compiled train step (the features that compared an output
  with its target used to join the two along the batch axis, which moved every tapped map
  between chips).

Everything runs in one subprocess with 8 CPU devices (``--xla_force_host_platform_device_
count``), the programs traced for TPU (the accelerator program, not a CPU form) and compiled
by XLA's CPU backend, whose SPMD partitioner is the one TPUs and GPUs use.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from unmask_jax import parallel, state as state_lib

REPO = Path(__file__).resolve().parents[1]

#: One small variant of each system (the collective structure does not depend on widths or
#: resolution).
SYSTEM_CONFIGS = ("configs/pix2pix.py:quick", "configs/ye.py:c_quick",
                  "configs/masked_gan.py:quick", "configs/ganmasker.py:seg_quick",
                  "configs/ganmasker.py:unmask_quick", "configs/ganmasker.py:one_stage_quick",
                  "configs/unveilify.py:quick")

_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    import jax, numpy as np, optax
    from unmask_jax import aot, backends, checkpoints, parallel, systems
    from unmask_jax import state as state_lib
    assert jax.device_count() == 8, jax.devices()
    out = {"arguments": {}, "collectives": {}}

    def load(spec):
        path, _, arg = spec.partition(":")
        s = importlib.util.spec_from_file_location("cfg", path)
        m = importlib.util.module_from_spec(s)
        s.loader.exec_module(m)
        return m.get_config(arg) if arg else m.get_config()

    def train_program(config):
        system = systems.build(config, abstract_frozen=True)
        with backends.use("tpu"):
            return aot._programs(config, system, ("train_step",))[0]

    # 1. Per-device argument bytes against device count, per layout.
    from tests.test_train import tiny_config, random_batch
    config = tiny_config()
    for how in ("replicated", "optimizer", "full"):
        config.train.state_sharding = how
        program = train_program(config)
        for n in (1, 2, 4, 8):
            mesh = parallel.make_data_mesh(jax.devices()[:n])
            compiled = program.make(mesh, "tpu").lower(*program.args(mesh, 2 * n)).compile()
            out["arguments"][f"{how}/{n}"] = int(
                compiled.memory_analysis().argument_size_in_bytes)

    # 2. Collectives of every system's train step on 8 devices, the default layout.
    for spec in json.loads(sys.argv[2]):
        config = load(spec)
        config.train.compute_dtype = "bfloat16"
        program = train_program(config)
        mesh = parallel.make_data_mesh(jax.devices())
        compiled = program.make(mesh, "tpu").lower(*program.args(mesh, 16)).compile()
        found = aot.collectives(compiled.as_text())["by_kind"]
        out["collectives"][spec] = {k: v["count"] for k, v in found.items()}

    # 3. A trained state saved from one layout and device count, restored into others.
    config = tiny_config()
    system = systems.build(config)
    frozen = system.load_frozen()
    txs = system.optimizers(1)
    init = lambda: state_lib.create_state(system, txs, 0, 64)
    shapes = jax.eval_shape(init)

    def layout(n, how):
        mesh = parallel.make_data_mesh(jax.devices()[:n])
        return mesh, state_lib.state_sharding(shapes, mesh, how)

    mesh8, sh8 = layout(8, "optimizer")
    state = jax.jit(init, out_shardings=sh8)()
    from unmask_jax import programs
    step = programs.make_train_step(system, txs, mesh8, sh8)
    state, _ = step(state, parallel.global_batch(random_batch(8), mesh8), frozen)
    split = [len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(state.nets["generator"].opt_state)]
    out["opt_state_split_leaves"] = int(sum(split))
    reference = jax.device_get(state)
    manager = checkpoints.make_manager(sys.argv[1], config)
    checkpoints.save(manager, 1, state, config=config)
    manager.wait_until_finished()
    out["restored"] = {}
    for n, how in ((1, "replicated"), (2, "full"), (4, "optimizer")):
        _, sh = layout(n, how)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              shapes, sh)
        restored, ok = checkpoints.restore_latest(
            checkpoints.make_manager(sys.argv[1], config, read_only=True), target)
        same = all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(reference), jax.tree.leaves(jax.device_get(restored))))
        devices = {len(x.sharding.device_set) for x in jax.tree.leaves(restored)}
        out["restored"][f"{how}/{n}"] = {"ok": bool(ok), "bit_exact": bool(same),
                                         "devices": sorted(devices)}
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def sharding_run(tmp_path_factory):
    """The subprocess's results (see the module docstring)."""
    checkpoint_dir = tmp_path_factory.mktemp("sharded_run")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(checkpoint_dir),
                           json.dumps(SYSTEM_CONFIGS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_the_split_dimension_is_the_largest_the_devices_divide():
    assert parallel.split_axis((4, 4, 64, 128), 1, 16) is None      # one device
    assert parallel.split_axis((4, 4, 64, 128), 8, 16) == 3
    assert parallel.split_axis((4, 4, 128, 64), 8, 16) == 2
    assert parallel.split_axis((3, 3, 24, 6), 8, 16) == 2           # 24 divides, 6 not
    assert parallel.split_axis((3, 3, 3, 3), 8, 16) is None          # nothing divides
    assert parallel.split_axis((64, 64), 8, 16) == 1                 # a tie: the last
    assert parallel.split_axis((64,), 8) is None                     # too small to split
    assert parallel.split_axis((), 8, 0) is None                     # a scalar
    mesh = parallel.make_data_mesh(jax.devices()[:1])
    assert parallel.split_over_data((4, 4, 64, 128), mesh).is_fully_replicated


@pytest.mark.parametrize("how", state_lib.STATE_SHARDINGS)
def test_state_sharding_is_a_tree_like_the_state_and_names_the_choices(how):
    from tests.test_train import tiny_config
    from unmask_jax import systems
    config = tiny_config()
    system = systems.build(config)
    shapes = jax.eval_shape(lambda: state_lib.create_state(system, system.optimizers(1), 0,
                                                           64))
    mesh = parallel.make_data_mesh(jax.devices()[:1])
    tree = state_lib.state_sharding(shapes, mesh, how)
    assert jax.tree.structure(tree) == jax.tree.structure(shapes)
    with pytest.raises(ValueError, match="choose one of"):
        state_lib.state_sharding(shapes, mesh, "zero9")


@pytest.mark.slow
def test_split_state_shrinks_per_device_arguments_as_devices_are_added(sharding_run):
    args = sharding_run["arguments"]
    rep = [args[f"replicated/{n}"] for n in (1, 2, 4, 8)]
    opt = [args[f"optimizer/{n}"] for n in (1, 2, 4, 8)]
    full = [args[f"full/{n}"] for n in (1, 2, 4, 8)]
    assert len(set(rep)) == 1, rep                       # replicated: every device holds all
    assert opt[0] == full[0] == rep[0]                   # one device: nothing to split
    assert all(a > b for a, b in zip(opt, opt[1:])), opt
    assert all(a > b for a, b in zip(full, full[1:])), full
    assert all(f < o for f, o in zip(full[1:], opt[1:])), (full, opt)
    # Adam's two moments are 2/3 of the state: 8 devices keep 1/8 of them each (the small
    # arrays, BatchNorm statistics and the batch stay whole: 0.47 and 0.20 here).
    assert opt[3] < 0.5 * rep[0], (opt, rep)
    assert full[3] < 0.25 * rep[0], (full, rep)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SYSTEM_CONFIGS)
def test_train_step_moves_nothing_between_chips_but_reductions_and_gathers(sharding_run,
                                                                           spec):
    found = sharding_run["collectives"][spec]
    assert found.get("all-reduce", 0) > 0, found        # the gradients are summed
    assert found.get("collective-permute", 0) == 0, found
    assert found.get("all-to-all", 0) == 0, found


@pytest.mark.slow
def test_a_split_state_checkpoint_restores_into_other_layouts_and_device_counts(sharding_run):
    assert sharding_run["opt_state_split_leaves"] > 10
    restored = sharding_run["restored"]
    assert restored["replicated/1"] == {"ok": True, "bit_exact": True, "devices": [1]}
    assert restored["full/2"] == {"ok": True, "bit_exact": True, "devices": [2]}
    assert restored["optimizer/4"] == {"ok": True, "bit_exact": True, "devices": [4]}
