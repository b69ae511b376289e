"""UnVeilify on the System interface: parameter counts, the identity gradient reaching the
generator, ImageNet input space, evaluation (with ``id_sim_reference``) and export of a
trained state to the reference's PyTorch layout."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unveilify
from tests.test_train import random_batch, set_keys
from unmask_jax import state as state_lib, summary, systems, validation
from unmask_jax.features import identity as identity_lib
from unmask_jax.systems import unveilify as unveilify_system


def tiny(**overrides):
    c = unveilify.get_config("quick")
    c.model.generator_kwargs.latent_dim = 16
    c.model.generator_kwargs.psp_width_div = 4
    c.model.generator_kwargs.generator_width_div = 8
    c.model.discriminator_kwargs.ndf = 4
    c.data.source_options.num_records = 32
    c.train.batch_size = 2
    c.train.num_steps = 2
    c.train.log_every_steps = 1
    c.train.sample_every_steps = 2
    c.train.checkpoint_every_steps = 2
    c.train.eval_every_steps = 2
    c.eval.num_images = 4
    c.eval.batch_size = 4
    c.eval.lpips_net = ""
    c.loss.terms.lpips.weight = 0.0      # LPIPS: tested in test_features_lpips
    c.loss.terms.identity.weight = 0.0   # switched on where a test needs it
    return set_keys(c, overrides)


def test_reference_parameter_counts_through_summary(tmp_path):
    c = unveilify.get_config("ref")
    validation.validate_config(c, "summary")
    result = summary.summary(c, str(tmp_path))
    nets = result["networks"]
    assert nets["generator"]["params"] == 192_518_241
    assert nets["generator"]["parts"] == {"psp_encoder": 176_474_816, "generator": 16_043_425}
    assert nets["discriminator"]["params"] == 2_767_808
    assert json.loads((tmp_path / "summary.json").read_text()) == result


def test_config_checks():
    c = tiny()
    c.data.identity_image = False
    with pytest.raises(ValueError, match="identity_image=True"):
        systems.build(c)
    c = tiny()
    c.model.input_norm = "zscore"
    with pytest.raises(ValueError, match="input_norm"):
        systems.build(c)
    c = tiny()
    c.data.resolution = 128
    with pytest.raises(ValueError, match="must equal config.data.resolution"):
        systems.build(c)
    with pytest.raises(ValueError, match="variant"):
        unveilify.get_config("full")


def test_imagenet_space_round_trip():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    y = unveilify_system.to_model_space(x, "imagenet")
    # Mid-grey (0) maps to (0.5 - mean) / std.
    want = (0.5 - np.asarray(unveilify_system.IMAGENET_MEAN)) / np.asarray(
        unveilify_system.IMAGENET_STD)
    np.testing.assert_allclose(unveilify_system.to_model_space(jnp.zeros(3), "imagenet"),
                               want, rtol=1e-6)
    np.testing.assert_allclose(unveilify_system.from_model_space(y, "imagenet"), x, atol=1e-6)
    assert unveilify_system.to_model_space(x, "unit") is x


def _batch(n=2, res=64):
    b = random_batch(n, res)
    b["identity"] = np.ascontiguousarray(b["target"][::-1])
    b["index"] = np.arange(n, dtype=np.int64)
    return {k: jnp.asarray(v) for k, v in b.items()}


class TinyEmbedder(nn.Module):
    """A stand-in face embedder (the real backbones are tested in test_features_*): the
    system's wiring of the identity term is what these tests check, at a small compile."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
        return nn.Dense(16)(jnp.tanh(x).reshape(x.shape[0], -1))


def _tiny_identity_net(backbone, weights=None, crop=None, resize="area", *, abstract=False,
                       dtype=jnp.float32):
    net = identity_lib.IdentityNet(backbone, TinyEmbedder(), (32, 32),
                                   tuple(crop) if crop else None, resize)
    return net, TinyEmbedder().init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))


@pytest.fixture(scope="module")
def stepped():
    """The system with the identity term on, its initial state, and its step compiled
    once."""
    c = tiny(**{"loss.terms.identity.weight": 0.5, "loss.terms.identity.backbone": "dlib"})
    system = systems.build(c)
    txs = system.optimizers(10)
    state = jax.jit(lambda: state_lib.create_state(system, txs, 0, 64))()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(identity_lib, "load_identity_net", _tiny_identity_net)
        frozen = system.load_frozen()
    step = jax.jit(lambda s, b, f: system.train_step(s, b, f, txs))
    return c, system, state, frozen, step


@pytest.mark.slow
def test_identity_gradient_reaches_the_generator_and_psp(stepped):
    """One compiled step run twice: with the identity network's weights, and with weights
    that make its embedding constant (so the term has no gradient). The generator's and the pSp
    encoder's updates differ between the two (the reference detaches the generator's
    embedding, which would leave them equal); the discriminator's do not (D is updated
    first, on the detached output)."""
    _, _, state, frozen, step = stepped
    batch = _batch()
    with_id, m1 = step(state, batch, frozen)
    # Kernels 0, biases 1: a constant embedding, so an identity term without gradient.
    constant = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if path[-1].key == "kernel" else jnp.ones_like(v),
        frozen["loss"]["identity"])
    without, m0 = step(state, batch, {**frozen, "loss": {**frozen["loss"],
                                                          "identity": constant}})
    assert 0.0 < float(m1["g_identity"]) < 2.0 and float(m0["g_identity"]) == 0.0
    assert float(m0["nonfinite"]) == float(m1["nonfinite"]) == 0.0
    g0, g1 = without.nets["generator"].params, with_id.nets["generator"].params

    def differs(a, b):
        return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                              jax.tree.leaves(b)))
    assert differs(g0["generator"], g1["generator"])
    assert differs(g0["psp_encoder"], g1["psp_encoder"])
    jax.tree.map(np.testing.assert_array_equal, without.nets["discriminator"].params,
                 with_id.nets["discriminator"].params)
    assert float(m0["d_loss"]) == float(m1["d_loss"])


def test_identity_term_falls_back_to_dlib_and_says_so(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("UNMASK_JAX_WEIGHTS", str(tmp_path))  # no converted IR-SE50 here
    c = tiny(**{"loss.terms.identity.weight": 0.5})
    system = systems.build(c)
    assert system.identity_backbone == "dlib"
    assert system.eval_info()["identity_loss_backbone"] == "dlib"
    assert "offline dlib" in caplog.text
    c.loss.terms.identity.weights = str(tmp_path / "missing.msgpack")
    with pytest.raises(Exception, match="missing.msgpack"):
        systems.build(c)


@pytest.mark.slow
def test_evaluate_and_export_to_the_reference_layout(stepped, tmp_path):
    """The evaluation JSON (identity similarity to the reference photo, for the system and
    the baselines; composited and raw), and export of the trained state to the
    reference's MaskRemover layout, which the PyTorch mirror loads with strict=True and runs
    to the same output."""
    import torch

    from unmask_jax import evaluate, export, parallel

    c, system, state, frozen, step = stepped
    state, _ = step(state, _batch(), frozen)
    mesh = parallel.make_data_mesh()
    result = evaluate.Evaluator(c, system, mesh, frozen={})(state, workdir=str(tmp_path))
    for key in ("psnr", "ssim", "id_sim", "id_sim_reference", "raw_id_sim_reference"):
        assert np.isfinite(result[key]), key
    # The composite keeps the known pixels: it is closer to the target than the raw output.
    assert result["psnr"] > result["raw_psnr"]
    assert "id_sim_reference" in result["baselines"]["masked_input"]
    assert result["identity_loss_backbone"] == "dlib" and result["psp_init"] == "random"

    out_dir = str(tmp_path / "export")
    for name, (model, kwargs) in system.export_networks().items():
        export.export_variables(name, model, kwargs, jax.device_get(state.nets[name].variables),
                                out_dir, step=1)
    module = export.load_torch_module(out_dir, "generator")
    batch = _batch()
    want = np.asarray(system.predict(state, batch)["raw"])
    norm = lambda x: np.asarray(unveilify_system.to_model_space(x, "imagenet"))  # noqa: E731
    with torch.no_grad():
        got = module(torch.from_numpy(norm(batch["masked"]).transpose(0, 3, 1, 2)),
                     torch.from_numpy(norm(batch["identity"]).transpose(0, 3, 1, 2)))
    got = np.asarray(unveilify_system.from_model_space(
        jnp.asarray(got.numpy().transpose(0, 2, 3, 1)), "imagenet"))
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_psp_body_starts_from_converted_irse50(stepped, tmp_path, caplog):
    """``model.psp_irse50_init``: the pSp input layer and body take the converted IR-SE
    weights; the rest stays. (Stand-in file: the input layer and body of another random pSp
    of the tiny config's widths, which IR-SE50 itself does not have.)"""
    from unmask_jax.features import weights

    c, system, state, _, _ = stepped
    psp_module = system.G.parts()[0]
    other = jax.device_get(psp_module.init(jax.random.PRNGKey(7), jnp.zeros((1, 64, 64, 3))))
    irse = {col: {k: v for k, v in tree.items() if k.startswith(("input_", "body_"))}
            for col, tree in other.items()}
    path = tmp_path / "irse50.msgpack"
    weights.save_variables(path, irse)
    c2 = c.copy_and_resolve_references()
    c2.model.psp_irse50_init = str(path)
    variables = jax.device_get(state.nets["generator"].variables)
    out = systems.build(c2).pretrained_variables("generator", variables)
    for col in ("params", "batch_stats"):
        for name, tree in out[col]["psp_encoder"].items():
            want = irse[col][name] if name in irse[col] else variables[col]["psp_encoder"][name]
            jax.tree.map(np.testing.assert_array_equal, tree, want)
    assert any(n.startswith("style") for n in out["params"]["psp_encoder"])
    jax.tree.map(np.testing.assert_array_equal, out["params"]["generator"],
                 variables["params"]["generator"])
    assert "initialised from IR-SE50 weights" in caplog.text
    assert system.pretrained_variables("generator", variables) is None  # unset: random init
    assert "random initialisation" in caplog.text
