"""Feature networks in a lower compute dtype (bfloat16) and their abstract variables.

* ``perceptual_variable_shapes`` / ``lpips_variable_shapes`` / ``load_identity_net(...,
  abstract=True)`` give ``jax.ShapeDtypeStruct`` trees equal (structure, shapes, dtypes) to
  the real loaded variables, without reading converted weights files;
* with ``dtype=jnp.bfloat16`` every convolution in the lowered program is bf16, one per conv
  layer of the network;
* bf16 results are close to float32 ones, and the float32 default is the explicit-float32
  computation bit for bit.
"""

import re

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from unmask_jax.features import arcface, identity, lpips as lpips_lib, perceptual, weights

PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


def signature(tree):
    """(tree structure, [(shape, dtype) per leaf]): equal for a loaded tree and its shapes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [(tuple(a.shape), jnp.dtype(a.dtype)) for a in leaves]


def assert_abstract(shapes, variables):
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree_util.tree_leaves(shapes))
    assert signature(shapes) == signature(variables)
    assert {a.dtype for a in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}


_RESULT_TYPE = re.compile(r"->\s*tensor<(?:[0-9]+x)*([a-z0-9]+)>")


def op_result_dtypes(hlo: str, op: str) -> list[str]:
    """The element type of each ``op`` result (e.g. ``stablehlo.convolution``) in the text of
    a lowered StableHLO module, in order."""
    out = []
    pattern = re.compile(rf"(?<![\w.]){re.escape(op)}(?![\w.])")
    for line in hlo.splitlines():
        if pattern.search(line):
            m = _RESULT_TYPE.search(line)
            assert m is not None, line
            out.append(m.group(1))
    return out


def assert_bf16_convs(fn, args, n_convs: int) -> None:
    """Every convolution of ``jit(fn)`` lowered is bf16, and there are ``n_convs``."""
    hlo = jax.jit(fn).lower(*args).as_text()
    kinds = op_result_dtypes(hlo, "stablehlo.convolution")
    assert kinds.count("f32") == 0, kinds
    assert kinds == ["bf16"] * n_convs, kinds


def images(seed: int, shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_hlo_result_dtype_parser():
    def f(x, k):
        y = jax.lax.conv_general_dilated(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                         (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO",
                                                                            "NHWC"))
        return jax.lax.conv_general_dilated(y.astype(jnp.float32), k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    hlo = jax.jit(f).lower(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))).as_text()
    assert op_result_dtypes(hlo, "stablehlo.convolution") == ["bf16", "f32"]
    hlo = jax.jit(lambda a, b: (a @ b, a.astype(jnp.bfloat16) @ b.astype(jnp.bfloat16))
                  ).lower(jnp.zeros((2, 3)), jnp.zeros((3, 4))).as_text()
    assert op_result_dtypes(hlo, "stablehlo.dot_general") == ["f32", "bf16"]


# --------------------------------------------------------------------------- perceptual


@pytest.fixture(scope="module")
def perceptual_setup():
    cfg = perceptual.PerceptualConfig(backbone="vgg16", layers=PERCEPTUAL_LAYERS,
                                      layer_weights=(1.0, 0.5, 0.5, 1.0), criterion="l1")
    return cfg, perceptual.load_perceptual_variables(cfg)


def test_perceptual_shapes_equal_loaded_variables(perceptual_setup):
    cfg, variables = perceptual_setup
    shapes = perceptual.perceptual_variable_shapes(cfg)
    assert_abstract(shapes, variables)
    # Only the convs up to relu4_3 are loaded (and described).
    assert sorted(shapes["params"]) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2",
                                        "conv3_1", "conv3_2", "conv3_3", "conv4_1",
                                        "conv4_2", "conv4_3"]
    assert cfg.used_convs() == tuple(sorted(shapes["params"]))
    # An earlier layer needs fewer convs.
    small = perceptual.PerceptualConfig(backbone="vgg19", layers=("relu2_1",),
                                        layer_weights=(1.0,))
    assert sorted(perceptual.perceptual_variable_shapes(small)["params"]) == [
        "conv1_1", "conv1_2", "conv2_1"]


@pytest.mark.slow
def test_perceptual_bf16_convs_value_and_float32_default(perceptual_setup):
    cfg, variables = perceptual_setup
    x, y = images(0, (2, 32, 32, 3)), images(1, (2, 32, 32, 3))

    def loss_bf16(v, a, b):
        return perceptual.perceptual_loss(cfg, v, a, b, dtype=jnp.bfloat16)

    # x and y run as two passes: one convolution per conv layer each (10 up to relu4_3), and
    # the input gradient adds one per layer of x's pass only (y's features are constants),
    # also bf16.
    assert_bf16_convs(loss_bf16, (variables, x, y), 20)
    assert_bf16_convs(jax.grad(loss_bf16, argnums=1), (variables, x, y), 30)
    lo = jax.jit(loss_bf16)(variables, x, y)
    assert lo.dtype == jnp.float32 and lo.shape == ()

    f32 = jax.jit(lambda v, a, b: perceptual.perceptual_loss(cfg, v, a, b))(variables, x, y)
    # The float32 default = the module applied in explicit float32, criterion by hand.
    feats = jax.jit(cfg.module(jnp.float32).apply)(variables, jnp.concatenate([x, y]))
    ref = jnp.zeros((), jnp.float32)
    for name, w in zip(cfg.layers, cfg.layer_weights):
        ref = ref + w * jnp.mean(jnp.abs(feats[name][:2] - feats[name][2:]))
    assert all(f.dtype == jnp.float32 for f in feats.values())
    np.testing.assert_allclose(np.asarray(f32), np.asarray(ref), rtol=1e-6)
    assert float(perceptual.perceptual_loss(cfg, variables, x, y)) == \
        float(perceptual.perceptual_loss(cfg, variables, x, y, dtype=jnp.float32))
    assert rel_diff(lo, f32) < 5e-2
    hlo32 = jax.jit(lambda v, a, b: perceptual.perceptual_loss(cfg, v, a, b)).lower(
        variables, x, y).as_text()
    assert op_result_dtypes(hlo32, "stablehlo.convolution") == ["f32"] * 20


# --------------------------------------------------------------------------- LPIPS

LPIPS_CONVS = {"alex": 5, "vgg16": 13}  # per pass; the distance runs one on x, one on y


@pytest.mark.parametrize("net", ["alex", "vgg16"])
def test_lpips_shapes_bf16_convs_and_value(net):
    variables = lpips_lib.load_lpips(net)
    shapes = lpips_lib.lpips_variable_shapes(net)
    assert_abstract(shapes, variables)

    x, y = images(2, (2, 64, 64, 3)), images(3, (2, 64, 64, 3))

    def dist_bf16(v, a, b):
        return lpips_lib.lpips_distance(v, a, b, dtype=jnp.bfloat16)

    assert_bf16_convs(dist_bf16, (variables, x, y), 2 * LPIPS_CONVS[net])
    # The distance itself (lin weights, spatial mean) is float32: its output, and the
    # five 1x1 lin products, are f32.
    hlo = jax.jit(dist_bf16).lower(variables, x, y).as_text()
    assert op_result_dtypes(hlo, "stablehlo.dot_general") == ["f32"] * 5
    d16 = jax.jit(dist_bf16)(variables, x, y)
    assert d16.dtype == jnp.float32 and d16.shape == (2,)

    d32 = jax.jit(lpips_lib.lpips_distance)(variables, x, y)
    explicit = jax.jit(lpips_lib.LPIPS(net=net, dtype=jnp.float32).apply)(variables, x, y)
    np.testing.assert_array_equal(np.asarray(d32), np.asarray(explicit))
    assert rel_diff(d16, d32) < 5e-2
    # Shapes work as the variables of an abstract evaluation.
    out = jax.eval_shape(dist_bf16, shapes, x, y)
    assert out.shape == (2,) and out.dtype == jnp.float32


def test_lpips_shapes_unknown_net():
    with pytest.raises(ValueError, match="alex"):
        lpips_lib.lpips_variable_shapes("squeeze")


# --------------------------------------------------------------------------- identity: dlib


@pytest.fixture(scope="module")
def dlib_nets():
    """(f32 net, variables, bf16 net, abstract shapes); the .dat is parsed twice."""
    net, variables = identity.load_identity_net("dlib")
    net16, shapes = identity.load_identity_net("dlib", abstract=True, dtype=jnp.bfloat16)
    return net, variables, net16, shapes


def test_dlib_abstract_shapes_equal_loaded_variables(dlib_nets):
    net, variables, net16, shapes = dlib_nets
    assert_abstract(shapes, variables)
    assert net16.dtype == jnp.bfloat16 and net16.module.dtype == jnp.bfloat16
    assert net.dtype == jnp.float32 and net16.input_size == net.input_size == (150, 150)
    out = jax.eval_shape(net16.embed, shapes, jax.ShapeDtypeStruct((2, 150, 150, 3),
                                                                   jnp.float32))
    assert out.shape == (2, 128) and out.dtype == jnp.float32


def _embed_and_distances(net, variables, x, y):
    """(embeddings of x, identity distances x vs y, the module applied by hand to the
    pre-processed x): one compiled program per net."""
    return (net.embed(variables, x), identity.identity_distances(net, variables, x, y),
            net.module.apply(variables, net.preprocess(x)))


_run_identity = jax.jit(_embed_and_distances, static_argnums=0)
_run_embed = jax.jit(lambda net, v, x: (net.embed(v, x), net.module.apply(v, net.preprocess(x))),
                     static_argnums=0)


@pytest.mark.slow
def test_dlib_bf16_convs_and_values(dlib_nets):
    net, variables, net16, _ = dlib_nets
    n_convs = sum(op[0] == "conv" for op in net.module.spec.program)
    assert n_convs == 29
    x = images(4, (2, 64, 64, 3))  # area-resized to 150x150 in float32, then cast
    y = x[::-1] * 0.7
    assert_bf16_convs(net16.embed, (variables, x), n_convs)
    hlo = jax.jit(net16.embed).lower(variables, x).as_text()
    dots = op_result_dtypes(hlo, "stablehlo.dot_general")
    assert dots.count("bf16") == 1  # the fc; the area resize (einsum) is float32
    e16, d16, _ = _run_identity(net16, variables, x, y)
    e32, d32, explicit = _run_identity(net, variables, x, y)
    assert e16.dtype == e32.dtype == d16.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(e32), np.asarray(explicit))
    assert rel_diff(e16, e32) < 5e-2
    assert float(jnp.min(identity.cosine(e16, e32))) > 0.999
    assert rel_diff(d16, d32) < 5e-2


# --------------------------------------------------------------------------- identity: ArcFace


# Parameter counts as in tests/test_features_arcface.py (the torch twins' counts).
@pytest.mark.slow
@pytest.mark.parametrize("kind,n_params", [("arcface_iresnet50", 43_590_848),
                                           ("arcface_iresnet100", 65_156_160),
                                           ("irse50", 43_797_696)])
def test_arcface_abstract_needs_no_weights_file(kind, n_params, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))  # an empty weights dir
    with pytest.raises(weights.MissingWeightsError):
        identity.load_identity_net(kind)
    net, shapes = identity.load_identity_net(kind, abstract=True, dtype=jnp.bfloat16)
    assert sorted(shapes) == ["batch_stats", "params"]
    leaves = jax.tree_util.tree_leaves(shapes)
    assert all(isinstance(a, jax.ShapeDtypeStruct) and a.dtype == jnp.float32 for a in leaves)
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"])) \
        == n_params
    # The converter's template (what a converted file holds) has the same tree.
    template = weights._template(arcface.make_arcface(kind), 112)
    assert signature(shapes) == signature(template)
    out = jax.eval_shape(net.embed, shapes, jax.ShapeDtypeStruct((2, 112, 112, 3),
                                                                 jnp.float32))
    assert out.shape == (2, 512) and out.dtype == jnp.float32


SMALL_ARCFACE = {
    "arcface_iresnet50": lambda dtype: arcface.IResNet((1, 1, 1, 1), dtype=dtype),
    "irse50": lambda dtype: arcface.IRSE(units=((64, 64, 2), (64, 128, 2), (128, 256, 2),
                                                (256, 512, 2)), dtype=dtype),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SMALL_ARCFACE))
@pytest.mark.parametrize("suffix", [".msgpack", ".npz"])
def test_arcface_abstract_equals_converted_file(kind, suffix, tmp_path, monkeypatch):
    """A reduced-depth network (same code, fewer blocks) through the real converter and file
    format: ``load_identity_net(kind, file)`` and ``abstract=True`` give the same tree."""
    monkeypatch.setattr(arcface, "make_arcface",
                        lambda k, dtype=jnp.float32: SMALL_ARCFACE[k](dtype))
    rng = np.random.default_rng(0)
    torch_shapes = weights.arcface_torch_shapes(kind, SMALL_ARCFACE[kind](jnp.float32))
    state_dict = {k: rng.normal(0, 0.01, s).astype(np.float32) for k, s in torch_shapes.items()}
    variables = weights.convert_arcface(state_dict, kind, SMALL_ARCFACE[kind](jnp.float32))
    path = tmp_path / f"{kind}{suffix}"
    weights.save_variables(path, variables)
    net, loaded = identity.load_identity_net(kind, str(path))
    net16, shapes = identity.load_identity_net(kind, str(path), abstract=True,
                                               dtype=jnp.bfloat16)
    assert_abstract(shapes, loaded)
    assert net16.module.dtype == jnp.bfloat16 and net.module.dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SMALL_ARCFACE))
def test_arcface_bf16(kind):
    """bf16 ArcFace: bf16 convolutions (IResNet: every conv layer), float32 embedding close
    to the float32 one; the float32 default equals the explicit-float32 module."""
    m32, m16 = SMALL_ARCFACE[kind](jnp.float32), SMALL_ARCFACE[kind](jnp.bfloat16)
    variables = weights.random_variables(m32, (1, 32, 32, 3), seed=1)
    net = identity.IdentityNet(kind, m32, (32, 32))
    net16 = identity.IdentityNet(kind, m16, (32, 32), dtype=jnp.bfloat16)
    x = images(5, (2, 32, 32, 3))
    hlo = jax.jit(net16.embed).lower(variables, x).as_text()
    convs = op_result_dtypes(hlo, "stablehlo.convolution")
    dots = op_result_dtypes(hlo, "stablehlo.dot_general")
    assert "f32" not in convs and "f32" not in dots
    if kind == "arcface_iresnet50":
        # stem + 2 per block + a downsample conv per stage (4 blocks, all downsampling)
        assert convs == ["bf16"] * (1 + 4 * 3) and dots == ["bf16"]  # + the fc
    else:  # the IR-SE units' convs may run as GEMMs on CPU: convolutions or dots, all bf16
        assert len(convs) + len(dots) >= 1 + 4 * 3
    e16, _ = _run_embed(net16, variables, x)
    e32, explicit = _run_embed(net, variables, x)
    assert e16.dtype == e32.dtype == jnp.float32 and e16.shape == (2, 512)
    np.testing.assert_array_equal(np.asarray(e32), np.asarray(explicit))
    assert float(jnp.min(identity.cosine(e16, e32))) > 0.99
    assert rel_diff(e16, e32) < 5e-2


# --------------------------------------------------------------------------- loss terms


@pytest.mark.slow
def test_objective_compiled_on_abstract_shapes_runs_on_loaded_variables():
    """The use ``loss_terms`` makes of all this: a bf16 objective lowered and compiled on
    the abstract variables, then run with the loaded ones, matches the float32 objective."""
    from unmask_jax import loss_terms

    spec = {"perceptual": {"weight": 1.0, "layers": ("relu1_2", "relu2_2"),
                           "layer_weights": (1.0, 1.0)},
            "lpips": {"weight": 1.0, "net": "alex"}}
    obj16 = loss_terms.Objective.from_config(spec, dtype=jnp.bfloat16)
    shapes = obj16.load(abstract=True)
    real = obj16.load()
    assert signature(shapes) == signature(real)
    inputs = {"output": images(6, (2, 64, 64, 3)), "target": images(7, (2, 64, 64, 3))}
    compiled = jax.jit(obj16.__call__).lower(shapes, inputs).compile()
    total16, values16 = compiled(real, inputs)
    obj32 = loss_terms.Objective.from_config(spec)
    total32, values32 = obj32(obj32.load(), inputs)
    assert total16.dtype == jnp.float32
    assert rel_diff(total16, total32) < 5e-2
    for k in values32:
        assert rel_diff(values16[k], values32[k]) < 5e-2, k
