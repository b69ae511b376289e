"""The trainer: step semantics, data-parallel equivalence, resume, NaN guard, configs."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, masked_gan, pix2pix, ye
from unmask_jax import (checkpoints, main, programs, state as state_lib, summary, systems,
                        train, validation)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    """pix2pix at 64x64 with a 6-level, 8-filter U-Net: compiles in seconds."""
    c = pix2pix.get_config("quick")
    c.model.generator_kwargs.ngf = 8
    c.model.discriminator_kwargs.ndf = 8
    c.data.source_options.num_records = 64
    c.train.batch_size = 4
    c.train.num_steps = 6
    c.optim.constant_steps = 3
    c.optim.decay_steps = 3
    c.train.log_every_steps = 2
    c.train.sample_every_steps = 3
    c.train.checkpoint_every_steps = 3
    c.train.eval_every_steps = 6
    c.eval.num_images = 8
    c.eval.batch_size = 4
    return set_keys(c, overrides)


def set_keys(c, overrides):
    """Sets dotted config keys, e.g. {"model.generator_kwargs.ngf": 8}; returns ``c``."""
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def random_batch(n=4, res=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / res
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 3))
    target = (0.8 * np.sin(2 * np.pi * (xx + yy)[None, ..., None] + phase)).astype(np.float32)
    mask = np.zeros((n, res, res, 1), np.float32)
    mask[:, res // 2:, res // 4: 3 * res // 4] = 1
    masked = np.where(mask > 0, 0.8, target).astype(np.float32)
    return {"masked": masked, "target": target, "mask": mask}


def _setup(config):
    system = systems.build(config)
    txs = system.optimizers(10)
    frozen = system.load_frozen()
    state = jax.jit(lambda: state_lib.create_state(system, txs, 0, config.data.resolution))()
    step = jax.jit(lambda s, b: system.train_step(s, b, frozen, txs))
    return system, state, step


@pytest.mark.parametrize("get,variant,g,d", [
    (pix2pix.get_config, "", 54_413_955, 2_768_705),
    (ye.get_config, "a", 54_413_955, 2_768_705),
    (ye.get_config, "b", 54_414_979, 2_769_729),
    (masked_gan.get_config, "", 54_414_979, 2_768_641),
])
def test_summary_parameter_counts(tmp_path, get, variant, g, d):
    result = summary.summary(get(variant), str(tmp_path))
    assert result["networks"]["generator"]["params"] == g
    assert result["networks"]["discriminator"]["params"] == d
    assert json.loads((tmp_path / "summary.json").read_text()) == result


@pytest.fixture(scope="module")
def tiny_setup():
    """One compiled tiny step shared by the step-level tests of this module."""
    config = tiny_config()
    config.optim.schedule = "constant"
    return _setup(config)


@pytest.mark.slow
def test_short_training_lowers_losses(tiny_setup):
    _, state, step = tiny_setup
    batch = random_batch()
    l1 = []
    for _ in range(15):
        state, m = step(state, batch)
        l1.append(float(m["g_l1"]))
    assert l1[-1] < 0.8 * l1[0], l1
    assert int(state.step) == 15


def test_nonfinite_step_leaves_state_unchanged(tiny_setup):
    """A NaN in the batch: both networks' parameters, both optimizer states and both
    networks' BatchNorm statistics stay bit-identical; only the step counter moves. A good
    step afterwards changes all of them (so the comparison can fail)."""
    _, state, step = tiny_setup
    state, _ = step(state, random_batch(seed=3))  # non-trivial optimizer state and BN stats
    before = jax.device_get(state.nets)
    bad = random_batch()
    bad["target"][0, 0, 0, 0] = np.nan
    state, m = step(state, bad)
    assert float(m["nonfinite"]) == 1.0
    after = jax.device_get(state.nets)
    assert set(after) == {"generator", "discriminator"}
    for name in after:
        for part in ("params", "collections", "opt_state"):
            assert jax.tree.leaves(getattr(after[name], part)), (name, part)
            jax.tree.map(np.testing.assert_array_equal, getattr(before[name], part),
                         getattr(after[name], part))
    assert "batch_stats" in after["discriminator"].collections
    assert int(state.step) == 2
    state, m = step(state, random_batch(seed=4))
    assert float(m["nonfinite"]) == 0.0
    good = jax.device_get(state.nets)
    for name in good:
        for part in ("params", "collections", "opt_state"):
            changed = [not np.array_equal(a, b) for a, b in zip(
                jax.tree.leaves(getattr(after[name], part)),
                jax.tree.leaves(getattr(good[name], part)))]
            assert any(changed), (name, part)


@pytest.mark.slow
def test_one_device_step_equals_eight_device_step():
    """One step on a 1-device mesh equals it on 8 fake CPU devices, with the state replicated
    and split over the devices (``train.state_sharding`` optimizer and full): parameters, BN
    statistics, optimizer state and losses, max|diff| / max|ref| < 1e-5 per tensor."""
    script = textwrap.dedent("""
        import jax, numpy as np
        from tests.test_train import tiny_config, random_batch
        from unmask_jax import parallel, programs, state as state_lib, systems
        assert jax.device_count() == 8, jax.devices()
        import optax
        config = tiny_config(**{"model.generator_kwargs.num_downs": 5})
        system = systems.build(config)
        frozen = system.load_frozen()
        # SGD, not Adam: Adam's first update is lr * g / |g|, which turns float reduction-order
        # noise in near-zero gradients into lr-sized differences (an Adam property, not a
        # data-parallel one). The gradients, BN statistics and losses are what is compared;
        # the momentum is optimizer state that the split layouts divide over the devices.
        tx = optax.sgd(0.1, momentum=0.9)
        results = []
        txs = {"generator": tx, "discriminator": tx}
        init = lambda: state_lib.create_state(system, txs, 0, 64)
        for devices, how in ((jax.devices()[:1], "replicated"), (jax.devices(), "replicated"),
                             (jax.devices(), "optimizer"), (jax.devices(), "full")):
            mesh = parallel.make_data_mesh(devices)
            sharding = state_lib.state_sharding(jax.eval_shape(init), mesh, how)
            state = jax.jit(init, out_shardings=sharding)()
            step = programs.make_train_step(system, txs, mesh, sharding)
            state, m = step(state, parallel.global_batch(random_batch(8), mesh), frozen)
            results.append(jax.device_get((state.nets, m)))
        flat1 = jax.tree.leaves(results[0])
        for result in results[1:]:
            flat8 = jax.tree.leaves(result)
            assert len(flat1) == len(flat8) > 50
            # Per tensor: max|diff| / max|ref| (reduction order differs between meshes).
            rel = [float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))
                   for a, b in zip(flat1, flat8)]
            print("max relative diff", max(rel))
            assert max(rel) < 1e-5, max(rel)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]


def _final_params(workdir):
    config = tiny_config()
    state, _, _ = state_lib.load_state(config, str(workdir))
    return int(state.step), jax.device_get(state.generator.params), jax.device_get(
        state.discriminator.params)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted tiny training run (6 steps, checkpoints at 3 and 6, eval at 6)."""
    full = tmp_path_factory.mktemp("full_run")
    out = train.train_and_evaluate(tiny_config(), str(full))
    assert out["step"] == 6
    return full


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path, full_run):
    config = tiny_config()
    full = full_run
    # Interrupted: this run stops after 3 steps (checkpoint), a new run resumes to the end.
    part = tmp_path / "part"
    train.train_and_evaluate(tiny_config(**{"train.stop_after_steps": 3}), str(part))
    assert _final_params(part)[0] == 3
    train.train_and_evaluate(config, str(part))
    s_full, g_full, d_full = _final_params(full)
    s_part, g_part, d_part = _final_params(part)
    assert s_full == s_part == 6
    jax.tree.map(np.testing.assert_array_equal, g_full, g_part)
    jax.tree.map(np.testing.assert_array_equal, d_full, d_part)
    # Outputs of a run: eval JSON, sample PNGs, TensorBoard events.
    result = json.loads((full / "eval" / "latest.json").read_text())
    assert result["step"] == 6 and result["num_images"] == 8
    assert result["id_backbone"] == "dlib"
    for key in ("psnr", "ssim", "psnr_mask", "ssim_mask", "lpips", "id_sim"):
        assert np.isfinite(result[key])
        assert np.isfinite(result["baselines"]["masked_input"][key])
        assert np.isfinite(result["baselines"]["telea"][key])
    assert (full / "eval" / "step_6.json").exists()
    assert sorted(os.listdir(full / "samples")) == ["step_00000003.png", "step_00000006.png"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(full))


def test_bad_config_values_fail_validation():
    for key, value, match in [("train.compute_dtype", "fp16", "compute_dtype"),
                              ("loss.terms.gan.kind", "hinge", "loss.terms.gan"),
                              ("loss.update_order", "random", "update_order"),
                              ("eval.bn_statistics", "instance", "bn_statistics"),
                              ("system", "nope", "config.system"),
                              ("data.resolution", 32, "resolution"),
                              ("model.generator_inputs", ("masked", "depth"), "generator_inputs")]:
        with pytest.raises(ValueError, match=match):
            validation.validate_config(tiny_config(**{key: value}))
    c = tiny_config()
    c.optim.constant_epochs = 3
    with pytest.raises(ValueError, match="constant_steps"):
        validation.validate_config(c)


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["--config=configs/pix2pix.py:quick", "--mode=summary", "--config.train.no_such_key=1"],
     "no_such_key"),
    (["--config=configs/no_such_file.py", "--mode=summary"], "no_such_file.py"),
    (["--config=configs/pix2pix.py:quick", "--mode=summary", "--config.train.batch_size=x"],
     "batch_size"),
    (["--config=configs/pix2pix.py:quick", "--mode=evaluate", "--workdir={tmp}"],
     "no checkpoint"),
    (["--config=configs/pix2pix.py:quick", "--mode=train", "--workdir={tmp}",
      "--config.data.source=folder", "--config.data.data_dir={tmp}/nowhere"], "nowhere"),
])
def test_user_mistakes_give_one_message_and_no_traceback(tmp_path, args, needle):
    """A user mistake ends with status 2, a message naming the problem, no traceback."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "unmask_jax.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert needle in proc.stderr


def test_evaluate_without_checkpoint_names_the_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        state_lib.load_state(tiny_config(), str(tmp_path))


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        ye.get_config("c_fast")
    assert default.get_config().train.batch_size == 1


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
    config = tiny_config(**{"train.compute_dtype": "bfloat16"})
    _, state, step = _setup(config)
    state, m = step(state, random_batch())
    assert np.isfinite(float(m["g_loss"])) and float(m["nonfinite"]) == 0.0
    dtypes = {x.dtype for x in jax.tree.leaves(state.generator.params)}
    assert dtypes == {np.dtype("float32")}


@pytest.mark.slow
def test_export_checkpoint_to_pytorch_and_back(tmp_path, full_run):
    """--mode=export of a run: safetensors + manifest in the canonical pix2pix layout; the
    generator loads strict into the PyTorch module and matches the JAX generator (eval mode);
    model.generator_init / discriminator_init bring the same weights back bit-exactly."""
    import torch
    from unmask_jax import export
    from unmask_jax.export import checkpoint as export_checkpoint
    config = tiny_config()
    out = tmp_path / "export"
    entries = export_checkpoint.export_checkpoint(config, str(full_run), str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["networks"]) == {"generator", "discriminator"}
    assert entries["generator"]["torch_class"] == "UnetGenerator"
    assert entries["generator"]["step"] == 6
    state, system, mesh = state_lib.load_state(config, str(full_run))
    module = export.load_torch_module(str(out), "generator").eval()
    batch = random_batch(2)
    jax_out = np.asarray(system.G.apply(state.generator.variables, batch["masked"],
                                        train=False))
    with torch.no_grad():
        ref = module(torch.from_numpy(batch["masked"].transpose(0, 3, 1, 2).copy()))
    ref = ref.numpy().transpose(0, 2, 3, 1)
    assert np.max(np.abs(ref - jax_out)) / np.max(np.abs(ref)) < 1e-5
    # Import: the exported files as initial weights of a new run.
    config.model.generator_init = str(out / "generator.safetensors")
    config.model.discriminator_init = str(out / "discriminator.safetensors")
    from unmask_jax import parallel
    rep = parallel.replicated_sharding(mesh)
    zeroed = state.replace(nets=jax.tree.map(jnp.zeros_like, state.nets))
    loaded = state_lib.init_pretrained(config, system, zeroed, rep)
    for n in ("generator", "discriminator"):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.nets[n].variables),
                     jax.device_get(state.nets[n].variables))


def test_export_without_checkpoint_names_the_workdir(tmp_path):
    from unmask_jax.export import checkpoint as export_checkpoint
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_checkpoint.export_checkpoint(tiny_config(), str(tmp_path))


@pytest.mark.slow
def test_other_modes_run_with_the_runs_recorded_config(tmp_path, full_run, caplog):
    """Export, evaluate, predict and compile on a run start from the config its checkpoint
    recorded: the config file alone (without the run's overrides: batch size, widths) is
    enough, training-only differences are logged and not used, and each mode takes only
    what it may change from the command line."""
    from configs import pix2pix
    from unmask_jax import run_config
    from unmask_jax.export import checkpoint as export_checkpoint
    given = pix2pix.get_config("quick")  # ngf 64, batch 16: the run had ngf 8, batch 4
    given.train.batch_size = 16
    given.eval.num_images = 4
    given.predict.batch_size = 2
    given.train.compute_dtype = "bfloat16"
    given.model.generator_kwargs.extra = 3   # a key the run never had
    with caplog.at_level("INFO"):
        export_cfg = run_config.for_mode(given, str(full_run), "export")
    assert export_cfg.train.batch_size == 4
    assert export_cfg.model.generator_kwargs.to_dict() == \
        tiny_config().model.generator_kwargs.to_dict()
    assert export_cfg.eval.num_images == 8
    assert "train.batch_size: 4 -> 16" in caplog.text
    entries = export_checkpoint.export_checkpoint(export_cfg, str(full_run),
                                                  str(tmp_path / "export"))
    assert entries["generator"]["step"] == 6
    # Without the recorded config, the same given config is refused (networks differ).
    with pytest.raises(checkpoints.CheckpointError, match="generator_kwargs.ngf"):
        export_checkpoint.export_checkpoint(pix2pix.get_config("quick"), str(full_run),
                                            str(tmp_path / "x"))
    ev = run_config.for_mode(given, str(full_run), "evaluate")
    assert (ev.eval.num_images, ev.train.batch_size) == (4, 4)
    pr = run_config.for_mode(given, str(full_run), "predict")
    assert (pr.predict.batch_size, pr.eval.num_images) == (2, 8)
    co = run_config.for_mode(given, str(full_run), "compile")
    assert (co.train.compute_dtype, co.train.batch_size) == ("bfloat16", 4)
    # Training, or a workdir without a checkpoint: the given config as it is.
    assert run_config.for_mode(given, str(full_run), "train") is given
    assert run_config.for_mode(given, str(tmp_path / "none"), "export") is given


def test_two_step_run_checkpoints_and_evaluates(tmp_path):
    """The trainer end to end at its smallest (the fast tier's run of train.py): two steps,
    a checkpoint and an evaluation."""
    out = train.train_and_evaluate(tiny_config(**{
        "train.num_steps": 2, "optim.constant_steps": 1, "optim.decay_steps": 1,
        "train.checkpoint_every_steps": 2, "train.eval_every_steps": 2,
        "train.sample_every_steps": 2, "eval.num_images": 4}), str(tmp_path))
    assert out["step"] == 2
    assert checkpoints.checkpoint_dir(tmp_path).joinpath("2").exists()
    assert json.loads((tmp_path / "eval" / "latest.json").read_text())["step"] == 2


def test_main_dispatches_a_mode_and_knows_user_mistakes(tmp_path, capsys):
    """main's dispatch in-process (the CLI itself runs in the slow subprocess tests)."""
    from unmask_jax import exits
    main._run_mode(tiny_config(), "summary", str(tmp_path))
    assert "generator" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["system"] == "pix2pix"
    kinds = main.user_error_types()
    assert exits.UserError in kinds and checkpoints.CheckpointError in kinds
    with pytest.raises(SystemExit) as e:
        exits.fail("a message")
    assert e.value.code == exits.USER_ERROR_STATUS == 2
    assert "error: a message" in capsys.readouterr().err
