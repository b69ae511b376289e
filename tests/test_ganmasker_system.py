"""GANMasker on the System interface: the stages, MURF, the two-stage chain in evaluation and
the perceptual backbone choice; Ye's Train C config."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ganmasker, ye
from tests.test_train import random_batch, set_keys
from unmask_jax import state as state_lib, summary, systems, train, validation


def tiny(variant, **overrides):
    c = ganmasker.get_config(variant)
    c.model.segmenter_kwargs.base_width = 4
    if "generator_kwargs" in c.model:  # stage 1 has no generator (nor its keys)
        c.model.generator_kwargs.base_width = 4
        c.model.discriminator_kwargs.ndf = 4
        c.loss.terms.perceptual.weight = 0.0  # VGG features: tested in test_systems
    c.data.source_options.num_records = 32
    c.train.batch_size = 4
    c.train.num_steps = 4
    c.train.log_every_steps = 2
    c.train.sample_every_steps = 4
    c.train.checkpoint_every_steps = 4
    c.train.eval_every_steps = 4
    c.eval.num_images = 8
    c.eval.batch_size = 4
    c.eval.lpips_net = ""
    c.eval.id_backbone = ""
    return set_keys(c, overrides)


def _init(config):
    system = systems.build(config)
    txs = system.optimizers(10)
    state = jax.jit(lambda: state_lib.create_state(system, txs, 0, 64))()
    return system, txs, state


@pytest.mark.parametrize("variant,nets", [
    ("seg", {"segmenter"}), ("unmask", {"generator", "discriminator"}),
    ("one_stage", {"generator", "discriminator"}), ("512", {"generator", "discriminator"})])
def test_variants_build_and_summarise(tmp_path, variant, nets):
    c = ganmasker.get_config(variant)
    validation.validate_config(c, "summary")
    result = summary.summary(c, str(tmp_path))
    assert set(result["networks"]) == nets
    assert all(v["params"] > 0 for v in result["networks"].values())


def test_unknown_variant_and_stage():
    with pytest.raises(ValueError, match="variant"):
        ganmasker.get_config("two_stage")
    c = ganmasker.get_config("seg")
    c.model.stage = "both"
    with pytest.raises(ValueError, match="model.stage"):
        systems.build(c)


@pytest.mark.slow
def test_seg_stage_trains_with_bce_and_dice():
    system, txs, state = _init(tiny("seg_quick"))
    step = jax.jit(lambda s, b: system.train_step(s, b, {"loss": {}}, txs))
    losses = []
    for i in range(8):
        state, m = step(state, random_batch(seed=0))
        losses.append(float(m["seg_loss"]))
    assert {"seg_bce", "seg_dice", "seg_loss", "nonfinite"} <= set(m)
    assert losses[-1] < losses[0]
    out = system.predict(state, random_batch())
    assert out["mask"].shape == (4, 64, 64, 1)
    assert float(jnp.min(out["mask"])) >= 0.0 and float(jnp.max(out["mask"])) <= 1.0


@pytest.mark.slow
def test_murf_keeps_pixels_outside_the_map_exactly():
    system, txs, state = _init(tiny("unmask_quick"))
    batch = random_batch()
    out = jax.jit(lambda s, b: system.predict(s, b, {}, mask_source="gt"))(state, batch)
    outside = np.broadcast_to(batch["mask"] == 0, out["output"].shape)
    np.testing.assert_array_equal(np.asarray(out["output"])[outside], batch["masked"][outside])
    assert not np.array_equal(np.asarray(out["raw"])[outside], batch["masked"][outside])
    # Training composites too: the loss sees the MURF output.
    step = jax.jit(lambda s, b: system.train_step(s, b, system.load_frozen(), txs))
    state, m = step(state, batch)
    assert float(m["nonfinite"]) == 0.0
    assert {"g_gan", "g_smooth_l1", "g_ssim"} <= set(m)


@pytest.mark.slow
def test_one_stage_has_no_map():
    system, _, state = _init(tiny("one_stage_quick"))
    assert system.networks["generator"].input_shapes(64) == ((1, 64, 64, 3),)
    out = system.predict(state, random_batch())
    np.testing.assert_array_equal(out["output"], out["raw"])


def test_perceptual_falls_back_to_vgg16_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("UNMASK_JAX_WEIGHTS", str(tmp_path))  # no converted VGG19 here
    c = ganmasker.get_config("unmask_quick")
    system = systems.build(c)
    assert system.perceptual_backbone == "vgg16"
    assert system.eval_info()["perceptual_backbone"] == "vgg16"
    (perceptual,) = [t for t in system.objective.terms if t.type == "perceptual"]
    assert dict(perceptual.options)["backbone"] == "vgg16"
    # A VGG19 file the user names and that does not exist is an error, not a fallback.
    c.loss.terms.perceptual.weights = str(tmp_path / "missing_vgg19.msgpack")
    with pytest.raises(FileNotFoundError, match="missing_vgg19"):
        systems.build(c)


@pytest.mark.slow
def test_two_stage_evaluation_chains_the_segmenter(tmp_path):
    """A tiny stage-1 run; stage 2 evaluates with the map stage 1 predicts (top level, with
    dice) and with the ground-truth map (gt_mask)."""
    seg_dir = tmp_path / "seg"
    train.train_and_evaluate(tiny("seg_quick"), str(seg_dir))
    seg_eval = json.loads((seg_dir / "eval" / "latest.json").read_text())
    assert 0.0 <= seg_eval["dice"] <= 1.0 and 0.0 <= seg_eval["pixel_accuracy"] <= 1.0
    assert "psnr" not in seg_eval and "baselines" not in seg_eval

    un_dir = tmp_path / "unmask"
    c = tiny("unmask_quick", **{"model.segmenter_workdir": str(seg_dir)})
    train.train_and_evaluate(c, str(un_dir))
    result = json.loads((un_dir / "eval" / "latest.json").read_text())
    for key in ("psnr", "ssim", "psnr_mask", "raw_psnr", "dice", "pixel_accuracy"):
        assert np.isfinite(result[key]), key
    assert set(result["gt_mask"]) >= {"psnr", "raw_psnr", "ssim_mask"}
    assert "dice" not in result["gt_mask"]
    assert result["stage"] == "unmask" and result["segmenter_workdir"] == str(seg_dir)
    assert result["perceptual_backbone"] in ("vgg16", "vgg19")
    # Without a stage-1 run, stage 2 refuses to evaluate rather than report gt-map numbers.
    with pytest.raises(ValueError, match="segmenter_workdir"):
        systems.build(tiny("unmask_quick")).eval_variants()
    with pytest.raises(ValueError, match="segmenter_workdir"):
        validation.validate_config(tiny("unmask_quick"))


@pytest.mark.slow
def test_ye_c_config():
    c = ye.get_config("c")
    assert c.model.generator == "ye_unet_c" and c.train.batch_size == 4
    assert c.model.generator_inputs == ("masked", "mask")
    system = systems.build(c)
    assert [(t.name, t.weight) for t in system.objective.terms] == [("gan", 1.0),
                                                                    ("ssim", 200.0)]
    q = ye.get_config("c_quick")
    system, txs, state = _init(q)
    step = jax.jit(lambda s, b: system.train_step(s, b, {"loss": {}}, txs))
    state, m = step(state, random_batch())
    assert float(m["nonfinite"]) == 0.0 and "g_ssim" in m and "g_l1" not in m
