"""Tests for unmask_jax.checkpoints: recorded format/config, damaged checkpoints, fallbacks.

A small dict of arrays stands in for the train state; no trainer and no real data.
"""
from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import config_dict

from unmask_jax import checkpoints
from unmask_jax.checkpoints import CheckpointError, NoCheckpointError

REPO = Path(__file__).resolve().parents[1]


def make_config(**overrides) -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.name = "tiny"
    c.seed = 0
    c.model = config_dict.ConfigDict(dict(
        generator="pix2pix_unet", generator_kwargs=dict(ngf=32, num_downs=6),
        generator_inputs=("masked",), generator_init=config_dict.placeholder(str)))
    c.data = config_dict.ConfigDict(dict(resolution=64, num_workers=0, read_threads=2,
                                         data_dir=config_dict.placeholder(str)))
    c.train = config_dict.ConfigDict(dict(num_steps=300, batch_size=16, log_every_steps=50,
                                          max_checkpoints_to_keep=5))
    c.eval = config_dict.ConfigDict(dict(num_images=64))
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


def make_state(width: int = 8) -> dict:
    """Shaped like the train state: step, a typed PRNG key, per-network trees."""
    return {"step": jnp.int32(0), "rng": jax.random.key(0),
            "params": {"w": jnp.arange(width, dtype=jnp.float32),
                       "b": jnp.ones((2, 3), jnp.float32)}}


def scaled(state: dict, step: int) -> dict:
    return {"step": jnp.int32(step), "rng": jax.random.fold_in(state["rng"], step),
            "params": jax.tree.map(lambda x: x * step, state["params"])}


def write_run(workdir: Path, steps=(1, 2, 3), config=None, data_iter=None, width: int = 8):
    config = make_config() if config is None else config
    manager = checkpoints.make_manager(workdir, config)
    for step in steps:
        if data_iter is not None:
            next(data_iter)
        checkpoints.save(manager, step, scaled(make_state(width), step), data_iter,
                         config=config)
    manager.wait_until_finished()
    manager.close()
    return config


def damage(step_dir: Path) -> Path:
    """Truncates the largest array-data file of a checkpoint's state item."""
    files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    with open(target, "r+b") as fh:
        fh.truncate(target.stat().st_size // 2)
    return target


def restored_step(state) -> int:
    return int(np.asarray(state["step"]))


# ---------------------------------------------------------------------------------------------
# Recorded format version and config

def test_save_records_format_version_and_json_config(tmp_path):
    write_run(tmp_path, steps=(1,))
    meta = json.loads((tmp_path / "checkpoints" / "1" / "meta" / "metadata").read_text())
    assert meta["format_version"] == checkpoints.FORMAT_VERSION == 2
    assert meta["process_count"] == 1 and meta["step"] == 1
    assert meta["config"]["model"]["generator_kwargs"]["ngf"] == 32
    assert meta["config"]["model"]["generator_inputs"] == ["masked"]  # tuple -> list
    assert meta["config"]["model"]["generator_init"] is None


def test_real_configs_are_json_able_and_compare_equal_to_themselves():
    from configs import pix2pix, ye
    for config in (pix2pix.get_config("quick"), ye.get_config("b")):
        recorded = checkpoints.config_to_json(config)
        json.dumps(recorded, allow_nan=False)
        assert checkpoints.compare_configs(recorded, config) == ([], [])


def test_restore_roundtrip_with_same_config(tmp_path):
    config = write_run(tmp_path)
    manager = checkpoints.make_manager(tmp_path, config)
    state, restored = checkpoints.restore_latest(manager, make_state(), config=config)
    assert restored and restored_step(state) == 3
    np.testing.assert_array_equal(state["params"]["w"], np.arange(8) * 3)
    np.testing.assert_array_equal(jax.random.key_data(state["rng"]),
                                  jax.random.key_data(jax.random.fold_in(jax.random.key(0), 3)))


def test_changed_model_width_stops_with_the_key_named(tmp_path):
    write_run(tmp_path)
    changed = make_config(**{"model.generator_kwargs.ngf": 48})
    manager = checkpoints.make_manager(tmp_path, changed)
    with pytest.raises(CheckpointError) as info:
        checkpoints.restore_latest(manager, make_state(), config=changed)
    message = str(info.value)
    assert "model.generator_kwargs.ngf: 32 -> 48" in message
    assert "--workdir" in message and "Revert" in message
    assert "strict" not in message  # not Orbax's misleading hint
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2", "3"]


def test_changed_unsafe_keys_are_all_listed(tmp_path):
    write_run(tmp_path)
    changed = make_config(**{"data.resolution": 128, "train.batch_size": 4,
                             "model.generator_inputs": ("masked", "mask")})
    changed.model.generator_kwargs.extra = 1  # a key the checkpoint does not have
    with pytest.raises(CheckpointError) as info:
        checkpoints.restore_latest(checkpoints.make_manager(tmp_path, changed), make_state(),
                                   config=changed)
    message = str(info.value)
    for text in ("data.resolution: 64 -> 128", "train.batch_size: 16 -> 4",
                 'model.generator_inputs: ["masked"] -> ["masked", "mask"]',
                 "model.generator_kwargs.extra: <unset> -> 1"):
        assert text in message, message


def test_safe_changes_are_allowed_and_logged(tmp_path, caplog):
    write_run(tmp_path)
    changed = make_config(**{"train.num_steps": 600, "train.log_every_steps": 10,
                             "eval.num_images": 8, "data.data_dir": "/elsewhere",
                             "name": "renamed"})
    manager = checkpoints.make_manager(tmp_path, changed)
    with caplog.at_level(logging.INFO, logger="unmask_jax.checkpoints"):
        state, restored = checkpoints.restore_latest(manager, make_state(), config=changed)
    assert restored and restored_step(state) == 3
    lines = [r.getMessage() for r in caplog.records if "safe to change" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    for text in ("train.num_steps: 300 -> 600", "train.log_every_steps: 50 -> 10",
                 "eval.num_images: 64 -> 8", 'data.data_dir: null -> "/elsewhere"',
                 'name: "tiny" -> "renamed"'):
        assert text in lines[0]


@pytest.mark.parametrize("key,safe", [
    ("train.num_steps", True), ("train.num_epochs", True), ("train.eval_every_steps", True),
    ("train.checkpoint_every_steps", True), ("train.stop_after_steps", True),
    ("eval.lpips_net", True), ("distributed.mode", True), ("data.read_threads", True),
    ("model.generator_init", True), ("name", True),
    ("model.generator_kwargs.ngf", False), ("loss.gan_weight", False), ("optim.lr", False),
    ("data.resolution", False), ("data.num_workers", False), ("train.batch_size", False),
    ("train.compute_dtype", False), ("seed", False), ("system", False),
])
def test_safe_key_list(key, safe):
    assert checkpoints.is_safe_config_key(key) is safe


def write_old_format(workdir: Path, step: int = 5) -> None:
    """A checkpoint as the previous release wrote it: meta without format_version/config."""
    manager = ocp.CheckpointManager(checkpoints.checkpoint_dir(workdir),
                                    item_names=checkpoints.ITEM_NAMES)
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"g_params": {"w": np.ones(4, np.float32)}}),
        meta=ocp.args.JsonSave({"process_count": 1, "step": step})))
    manager.wait_until_finished()
    manager.close()


@pytest.mark.parametrize("with_config", [True, False])
def test_old_format_checkpoint_says_older_version(tmp_path, with_config):
    write_old_format(tmp_path)
    config = make_config() if with_config else None
    manager = checkpoints.make_manager(tmp_path, config)
    with pytest.raises(CheckpointError, match="older version of unmask-jax") as info:
        checkpoints.restore_latest(manager, make_state(), config=config)
    assert "new --workdir" in str(info.value)
    assert (tmp_path / "checkpoints" / "5").is_dir()  # not treated as damage


def test_newer_format_checkpoint_is_refused(tmp_path):
    manager = ocp.CheckpointManager(checkpoints.checkpoint_dir(tmp_path),
                                    item_names=checkpoints.ITEM_NAMES)
    manager.save(1, args=ocp.args.Composite(
        state=ocp.args.StandardSave(make_state()),
        meta=ocp.args.JsonSave({"format_version": 99, "process_count": 1, "step": 1})))
    manager.wait_until_finished()
    with pytest.raises(CheckpointError, match="format 99.*Update unmask-jax"):
        checkpoints.restore_latest(checkpoints.make_manager(tmp_path), make_state())


def test_state_that_does_not_fit_is_an_error_not_damage(tmp_path):
    write_run(tmp_path, width=8)
    manager = checkpoints.make_manager(tmp_path)
    with pytest.raises(CheckpointError) as info:  # config=None: only the state shapes differ
        checkpoints.restore_latest(manager, make_state(width=6))
    assert "params.w shape (8,) in the checkpoint, (6,) now" in str(info.value)
    assert "does not fit" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2", "3"]


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints

def test_damaged_latest_falls_back_and_is_moved_aside(tmp_path, caplog):
    config = write_run(tmp_path)
    damage(tmp_path / "checkpoints" / "3")
    manager = checkpoints.make_manager(tmp_path, config)
    assert manager.latest_step() == 3
    with caplog.at_level(logging.WARNING, logger="unmask_jax.checkpoints"):
        state, restored = checkpoints.restore_latest(manager, make_state(), config=config)
    assert restored and restored_step(state) == 2
    np.testing.assert_array_equal(state["params"]["w"], np.arange(8) * 2)
    # The caller's manager no longer lists the damaged step, nor does a new one.
    assert manager.all_steps() == [1, 2] and manager.latest_step() == 2
    assert checkpoints.make_manager(tmp_path, config).all_steps() == [1, 2]
    moved = list((tmp_path / "checkpoints" / "corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("3-") and (moved[0] / "state").is_dir()
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "checkpoint step 3" in warnings and "cannot be read" in warnings
    assert "restored checkpoint step 2" in warnings and "lost" in warnings
    # Saving continues in the same manager after the fallback.
    checkpoints.save(manager, 3, scaled(make_state(), 3), config=config)
    manager.wait_until_finished()
    assert manager.all_steps() == [1, 2, 3]


def test_damaged_meta_falls_back(tmp_path):
    config = write_run(tmp_path)
    (tmp_path / "checkpoints" / "3" / "meta" / "metadata").write_text('{"format_ver')
    state, restored = checkpoints.restore_latest(
        checkpoints.make_manager(tmp_path, config), make_state(), config=config)
    assert restored and restored_step(state) == 2


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    config = write_run(tmp_path, steps=(1, 2))
    for step in (1, 2):
        damage(tmp_path / "checkpoints" / str(step))
    manager = checkpoints.make_manager(tmp_path, config)
    with pytest.raises(NoCheckpointError) as info:
        checkpoints.restore_latest(manager, make_state(), config=config)
    message = str(info.value)
    assert "no readable checkpoint" in message and "step 2" in message and "step 1" in message
    assert isinstance(info.value, CheckpointError)
    assert len(list((tmp_path / "checkpoints" / "corrupt").iterdir())) == 2
    with pytest.raises(NoCheckpointError, match="unreadable checkpoints were moved to .*corrupt"):
        checkpoints.require_checkpoint(tmp_path)  # what evaluate sees next


def test_explicit_damaged_step_is_an_error_not_a_fallback(tmp_path):
    config = write_run(tmp_path)
    damage(tmp_path / "checkpoints" / "3")
    manager = checkpoints.require_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint step 3 .* cannot be read"):
        checkpoints.restore_latest(manager, make_state(), step=3, config=config)
    assert (tmp_path / "checkpoints" / "3").is_dir()  # nothing moved
    with pytest.raises(NoCheckpointError, match="no checkpoint for step 7.*available: \\[1, 2, 3\\]"):
        checkpoints.restore_latest(manager, make_state(), step=7, config=config)
    state, restored = checkpoints.restore_latest(manager, make_state(), step=2, config=config)
    assert restored and restored_step(state) == 2


def test_require_checkpoint_then_latest_falls_back_read_only(tmp_path):
    config = write_run(tmp_path)
    damage(tmp_path / "checkpoints" / "3")
    manager = checkpoints.require_checkpoint(tmp_path)  # read-only, as evaluate/export use it
    state, restored = checkpoints.restore_latest(manager, make_state(), config=config)
    assert restored and restored_step(state) == 2
    assert manager.all_steps() == [1, 2]


def test_require_checkpoint_on_empty_workdir(tmp_path):
    with pytest.raises(NoCheckpointError, match="no checkpoint in .*train first") as info:
        checkpoints.require_checkpoint(tmp_path)
    assert isinstance(info.value, FileNotFoundError)  # what callers caught before


def test_no_checkpoint_returns_state_unrestored(tmp_path):
    state = make_state()
    out, restored = checkpoints.restore_latest(checkpoints.make_manager(tmp_path), state)
    assert not restored and out is state


# ---------------------------------------------------------------------------------------------
# Data iterator

def data_iterator():
    return iter(grain.MapDataset.range(1000).batch(2).to_iter_dataset())


def test_data_iterator_restored_and_damaged_data_falls_back(tmp_path):
    it = data_iterator()
    config = write_run(tmp_path, data_iter=it)  # one batch consumed per step
    fresh = data_iterator()
    checkpoints.restore_latest(checkpoints.make_manager(tmp_path, config), make_state(), fresh,
                               config=config)
    np.testing.assert_array_equal(next(fresh), [6, 7])
    (tmp_path / "checkpoints" / "3" / "data" / "process_0-of-1.json").write_text('{"next_ind')
    fresh = data_iterator()
    state, _ = checkpoints.restore_latest(checkpoints.make_manager(tmp_path, config),
                                          make_state(), fresh, config=config)
    assert restored_step(state) == 2
    np.testing.assert_array_equal(next(fresh), [4, 5])


# ---------------------------------------------------------------------------------------------
# Two processes: every process restores the same step, only process 0 moves the damaged one

MP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import jax, jax.numpy as jnp, numpy as np
    from unmask_jax import checkpoints, parallel
    parallel.initialize_distributed(parallel.DistributedConfig(mode="auto"))
    workdir = Path(sys.argv[1])
    mesh = parallel.make_data_mesh()
    repl = parallel.replicated_sharding(mesh)
    def state_at(step):
        return jax.device_put({"step": np.int32(step),
                               "w": np.arange(8, dtype=np.float32) * step}, repl)
    manager = checkpoints.make_manager(workdir)
    for step in (1, 2, 3):
        checkpoints.save(manager, step, state_at(step))
    manager.wait_until_finished()
    parallel.sync_global("saved")
    if jax.process_index() == 0:
        d = workdir / "checkpoints" / "3" / "state" / "d"
        target = max(d.iterdir(), key=lambda p: p.stat().st_size)
        with open(target, "r+b") as fh:
            fh.truncate(target.stat().st_size // 2)
    parallel.sync_global("damaged")
    state, ok = checkpoints.restore_latest(manager, state_at(0))
    host = parallel.fetch_to_host(state)
    print("RESULT" + json.dumps({"process": jax.process_index(), "count": jax.process_count(),
                                 "step": int(host["step"]), "w1": float(host["w"][1]),
                                 "steps": list(manager.all_steps())}), flush=True)
    parallel.sync_global("done")
""")


@pytest.mark.slow
def test_two_processes_agree_on_the_fallback_step(tmp_path):
    from tests.test_parallel import load_launcher
    script = tmp_path / "mp_restore.py"
    script.write_text(MP_SCRIPT)
    result = load_launcher().run_local(
        2, 1, [sys.executable, str(script), str(tmp_path / "wd")], timeout=120,
        env={"PYTHONPATH": str(REPO)}, log_dir=tmp_path / "logs")
    assert result.ok, result.summary()
    records = []
    for i in range(2):
        [line] = [l for l in result.log(i).splitlines() if l.startswith("RESULT")]
        records.append(json.loads(line[len("RESULT"):]))
    assert [r["count"] for r in records] == [2, 2]
    assert [r["step"] for r in records] == [2, 2] and [r["w1"] for r in records] == [2.0, 2.0]
    assert all(r["steps"] == [1, 2] for r in records)
    assert len(list((tmp_path / "wd" / "checkpoints" / "corrupt").iterdir())) == 1


def test_settings_added_later_resume_at_their_old_behaviour():
    """A run recorded before optim.warmup_shape existed resumes when the key is at its
    behaviour-keeping default, and refuses when it is not."""
    from configs import pix2pix
    config = pix2pix.get_config("quick")
    recorded = checkpoints.config_to_json(config)
    del recorded["optim"]["warmup_shape"]
    for net in recorded["optim"]["networks"].values():
        del net["warmup_shape"]
    assert checkpoints.compare_configs(recorded, config) == ([], [])
    config.optim.warmup_shape = "exp10"
    unsafe, _ = checkpoints.compare_configs(recorded, config)
    assert [k for k, _, _ in unsafe] == ["optim.warmup_shape"]


def test_runs_recorded_by_the_previous_release_still_resume():
    """Configs as checkpoints recorded them at c5df566 (tests/data): today's configs differ
    from them only in keys that may change or were added at their behaviour-keeping value."""
    from configs import ganmasker, masked_gan, pix2pix, ye
    recorded = json.loads((Path(__file__).parent / "data" /
                           "recorded_configs_c5df566.json").read_text())
    current = {"pix2pix:quick": pix2pix.get_config("quick"),
               "ganmasker:unmask": ganmasker.get_config("unmask"),
               "ye:c": ye.get_config("c"), "masked_gan:": masked_gan.get_config()}
    for name, config in current.items():
        unsafe, _ = checkpoints.compare_configs(recorded[name], config)
        assert unsafe == [], (name, unsafe)


def test_a_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    """The README's --workdir=runs/<name>: Orbax refuses relative paths when it writes."""
    monkeypatch.chdir(tmp_path)
    config = write_run(Path("runs") / "rel", steps=(1, 2))
    assert (tmp_path / "runs" / "rel" / "checkpoints" / "2").is_dir()
    manager = checkpoints.make_manager("runs/rel", config)
    state, restored = checkpoints.restore_latest(manager, make_state(), config=config)
    assert restored and int(state["step"]) == 2


def test_recorded_configs_read_renamed_and_removed_keys_and_values():
    recorded = {"model": {"cpu_convolutions": "eigen", "generator": "g"},
                "data": {"identity_augment": "unveilify", "resolution": 64}}
    up = checkpoints.upgrade_recorded(recorded)
    assert up == {"model": {"generator": "g"},
                  "data": {"identity_augment": "flip_rotate", "resolution": 64}}
    assert recorded["data"]["identity_augment"] == "unveilify"
    current = {"model": {"generator": "g"},
               "data": {"identity_augment": "flip_rotate", "resolution": 64}}
    assert checkpoints.compare_configs(recorded, current) == ([], [])
    current["data"]["identity_augment"] = "flip"
    assert checkpoints.compare_configs(recorded, current)[0] == [
        ("data.identity_augment", "flip_rotate", "flip")]


def test_runs_recorded_before_the_backend_seam_resume_and_rebuild():
    """Configs as checkpoints recorded them at a1de79c (tests/data), with
    ``model.cpu_convolutions`` and without ``model.backend_forms``: today's configs differ
    from them only in keys that may change, and each recorded config still builds its
    system (evaluation and prediction rebuild a run's stage 1 from its recorded config)."""
    from ml_collections import config_dict

    from configs import ganmasker, pix2pix, unveilify, ye
    from unmask_jax import systems
    recorded = json.loads((Path(__file__).parent / "data" /
                           "recorded_configs_a1de79c.json").read_text())
    current = {"pix2pix:quick": pix2pix.get_config("quick"),
               "ganmasker:unmask": ganmasker.get_config("unmask"),
               "ganmasker:seg": ganmasker.get_config("seg"), "ye:c": ye.get_config("c"),
               "unveilify:": unveilify.get_config()}
    for name, config in current.items():
        assert "cpu_convolutions" in recorded[name]["model"], name
        system_keys = systems.system_class(config).resume_safe_keys
        unsafe, safe = checkpoints.compare_configs(recorded[name], config, system_keys)
        assert unsafe == [], (name, unsafe)
        # model.cpu_convolutions is a removed key (checkpoints.REMOVED_KEYS): dropped.
        # Stage 1 no longer records the pix2pix family's keys (configs/default.py holds only
        # what every system shares): each is a safe change to <unset> for its system.
        if name == "ganmasker:seg":
            assert safe and all(after == "<unset>" for _, _, after in safe), safe
            assert {k for k, _, _ in safe} >= {"model.generator", "loss.terms.gan.kind",
                                               "loss.update_order",
                                               "optim.networks.generator.lr"}
            assert unsafe == [] and checkpoints.compare_configs(recorded[name], config)[0]
        else:
            assert safe == [], (name, safe)
        upgraded = checkpoints.upgrade_recorded(recorded[name])
        assert "cpu_convolutions" not in upgraded["model"]
        assert "cpu_convolutions" in recorded[name]["model"]  # the recording is not changed
        system = systems.build(config_dict.ConfigDict(upgraded))
        assert system.backend_forms == "auto"
        assert system.cpu_library == ("eigen" if name.startswith("ganmasker") else "ynnpack")
