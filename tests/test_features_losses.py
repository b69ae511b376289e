"""VGG features, the perceptual loss, identity loss / similarity and the embed command."""

import json

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import flax.linen as nn

from unmask_jax.features import identity, perceptual, vgg, weights


random_variables = weights.random_variables


def test_vgg_feature_shapes_and_early_stop():
    m = vgg.VGGFeatures(arch="vgg19", layers=("relu1_1", "relu3_4", "relu5_4", "pool5"),
                        input_norm="none")
    x = jnp.zeros((2, 64, 64, 3))
    shapes = jax.eval_shape(m.init_with_output, jax.random.PRNGKey(0), x)
    feats, variables = shapes
    assert {k: v.shape for k, v in feats.items()} == {
        "relu1_1": (2, 64, 64, 64), "relu3_4": (2, 16, 16, 256),
        "relu5_4": (2, 4, 4, 512), "pool5": (2, 2, 2, 512)}
    assert len(variables["params"]) == 16
    m16 = vgg.VGGFeatures(arch="vgg16", layers=("relu2_2",))
    _, v16 = jax.eval_shape(m16.init_with_output, jax.random.PRNGKey(0), x)
    assert sorted(v16["params"]) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
    with pytest.raises(ValueError, match="unknown vgg16 layers"):
        jax.eval_shape(vgg.VGGFeatures(arch="vgg16", layers=("relu5_4",)).init,
                       jax.random.PRNGKey(0), x)


def test_input_normalisations():
    x = jnp.full((1, 1, 1, 3), -1.0)
    np.testing.assert_allclose(vgg.normalize_input(x, "imagenet")[0, 0, 0],
                               -np.array(vgg.IMAGENET_MEAN) / np.array(vgg.IMAGENET_STD),
                               rtol=1e-6)
    np.testing.assert_allclose(vgg.normalize_input(x, "none"), x)
    np.testing.assert_allclose(vgg.normalize_input(x, "lpips")[0, 0, 0],
                               (-1 - np.array(vgg.LPIPS_SHIFT)) / np.array(vgg.LPIPS_SCALE),
                               rtol=1e-6)


def test_vgg19_converter_round_trip():
    import torch
    from unmask_jax.features import torch_reference as tr

    twin = tr.randomize_(tr.TorchVGG("vgg19"), seed=3)
    sd = dict(twin.state_dict())
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision checkpoints carry it
    variables = weights.convert_torchvision_vgg(sd, "vgg19")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_2", "relu5_4")
    feats = jax.jit(vgg.VGGFeatures("vgg19", layers, "none").apply)(variables, jnp.asarray(x))
    taps = dict(zip(layers, (3, 8, 15, 22, 35)))
    h = torch.from_numpy(x.transpose(0, 3, 1, 2))
    with torch.no_grad():
        for i, layer in enumerate(twin.features):
            h = layer(h)
            for name, idx in taps.items():
                if idx == i:
                    ref = h.numpy().transpose(0, 2, 3, 1)
                    rel = np.abs(np.asarray(feats[name]) - ref).max() / np.abs(ref).max()
                    assert rel < 1e-5, name


def test_vgg16_real_weights_fit_module():
    params = weights.vgg16_imagenet_params()
    m = vgg.VGGFeatures(arch="vgg16", layers=("relu5_3",))
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes["params"]) == \
        jax.tree_util.tree_map(lambda a: a.shape, params)


def test_criteria_values():
    a = jnp.asarray([0.0, 0.5, 3.0])
    b = jnp.zeros(3)
    assert float(perceptual._criterion(a, b, "l1", 1.0)) == pytest.approx(3.5 / 3)
    assert float(perceptual._criterion(a, b, "mse", 1.0)) == pytest.approx(9.25 / 3)
    # SmoothL1 (torch, beta 1): 0.5 d^2 below beta, |d| - 0.5 above.
    assert float(perceptual._criterion(a, b, "smooth_l1", 1.0)) == pytest.approx(2.625 / 3)


def test_perceptual_loss_value_and_gradient():
    cfg = perceptual.PerceptualConfig.from_dict(
        {"backbone": "vgg16", "layers": ["relu1_2", "relu2_2"], "layer_weights": [1.0, 0.5],
         "criterion": "smooth_l1", "input_norm": "imagenet"})
    variables = random_variables(cfg.module(), (1, 16, 16, 3))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    loss = jax.jit(perceptual.perceptual_loss, static_argnums=0)
    assert float(loss(cfg, variables, x, x)) == 0.0
    value, g = jax.jit(jax.value_and_grad(
        lambda a: perceptual.perceptual_loss(cfg, variables, a, y)))(x)
    assert float(value) == pytest.approx(float(loss(cfg, variables, x, y)), rel=1e-5)
    assert float(value) > 0 and float(jnp.abs(g).sum()) > 0
    with pytest.raises(ValueError):
        perceptual.PerceptualConfig(layers=("relu1_2",), layer_weights=(1.0, 2.0))
    with pytest.raises(ValueError):
        perceptual.PerceptualConfig(criterion="l3")


def test_adaptive_pool_matches_torch():
    import torch
    x = np.random.default_rng(0).normal(size=(1, 188, 188, 2)).astype(np.float32)
    ours = np.asarray(identity.resize_images(jnp.asarray(x), (112, 112), "area"))
    ref = torch.nn.AdaptiveAvgPool2d((112, 112))(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


@pytest.mark.slow
def test_identity_loss_gradient_reaches_generator():
    from unmask_jax.features import arcface

    # A reduced IR-SE (same code path as IR-SE50) keeps the fwd+bwd compile small; crop and
    # area resize 44 -> 32 are part of the differentiated graph.
    units = ((64, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 2))
    net = identity.IdentityNet("irse50", arcface.IRSE(units=units), (32, 32),
                               crop=(2, 46, 2, 46), resize="area")
    variables = random_variables(net.module, (1, 32, 32, 3), seed=1)

    class TinyGenerator(nn.Module):
        @nn.compact
        def __call__(self, z):
            return jnp.tanh(nn.Conv(3, (3, 3))(z))

    gen = TinyGenerator()
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(2, 48, 48, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(-1, 1, (2, 48, 48, 3)), jnp.float32)
    gparams = random_variables(gen, z.shape)

    def loss_fn(p):
        return identity.identity_loss(net, variables, gen.apply(p, z), target)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(gparams)
    assert 0.0 < float(loss) < 2.0
    gnorm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads))
    assert gnorm > 0.0 and np.isfinite(gnorm)
    sim = jax.jit(identity.identity_similarity, static_argnums=0)(net, variables, target,
                                                                  target[::-1])
    assert sim.shape == (2,) and float(sim[0]) == pytest.approx(float(sim[1]), abs=1e-5)
    assert float(sim[0]) < 0.9999


def test_embed_command_writes_json(tmp_path):
    from PIL import Image
    import dlib

    from unmask_jax.features.__main__ import main

    rng = np.random.default_rng(5)
    chip = np.clip(np.kron(rng.uniform(0, 255, (15, 15, 3)), np.ones((10, 10, 1))), 0,
                   255).astype(np.uint8)
    Image.fromarray(chip).save(tmp_path / "a.png")
    out = tmp_path / "emb.json"
    assert main(["embed", "--backbone=dlib", f"--out={out}", str(tmp_path / "a.png")]) == 0
    doc = json.loads(out.read_text())
    assert doc["backbone"] == "dlib" and doc["input_size"] == [150, 150]
    emb = np.array(doc["embeddings"][0]["embedding"])
    ref = np.asarray(dlib.face_recognition_model_v1(
        str(weights.dlib_face_model_path())).compute_face_descriptor(chip))
    assert emb @ ref / np.linalg.norm(emb) / np.linalg.norm(ref) >= 0.999


def test_identity_term_reduction_sum_is_batch_times_mean(monkeypatch):
    """The identity term's ``reduction`` through the config registry: ``sum`` (UnVeilify's
    reference loop) is the batch size times ``mean``, both from ``identity_distances``."""
    from unmask_jax import loss_terms

    class TinyEmbedder(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(8)(x.reshape(x.shape[0], -1))

    def load(backbone, weights=None, crop=None, resize="area", *, abstract=False,
             dtype=jnp.float32):
        net = identity.IdentityNet(backbone, TinyEmbedder(), (32, 32))
        return net, random_variables(net.module, (1, 32, 32, 3), seed=2)

    monkeypatch.setattr(identity, "load_identity_net", load)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
    values = {}
    for reduction in ("mean", "sum"):
        objective = loss_terms.Objective.from_config(
            {"identity": {"weight": 2.0, "reduction": reduction}})
        total, terms = objective(objective.load(), {"output": x, "target": y})
        values[reduction] = float(terms["g_identity"])
        assert float(total) == pytest.approx(2.0 * values[reduction], rel=1e-6)
    net, variables = load("dlib")
    d = identity.identity_distances(net, variables, x, y)
    assert values["mean"] == pytest.approx(float(jnp.mean(d)), rel=1e-6)
    assert values["sum"] == pytest.approx(3 * values["mean"], rel=1e-6)
    assert values["mean"] > 0
    with pytest.raises(ValueError, match="reduction"):
        loss_terms.parse_terms({"identity": {"weight": 1.0, "reduction": "median"}})
