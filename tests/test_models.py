"""Tests for the Flax networks and torch-compatible layers (unmask_jax.models)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unmask_jax import backends
from unmask_jax.models import MODELS, count_params, create_model
from unmask_jax.models import layers
from unmask_jax.models.layers import (
    BatchNorm,
    Conv,
    ConvTranspose,
    InstanceNorm,
    conv_transpose_xla,
)


def _abstract_variables(name: str, channels: int, size: int, **kwargs):
    model = create_model(name, **kwargs)
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x, False), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, False), variables, x)
    return variables, out


@pytest.mark.parametrize(
    "name,channels,params,total",
    [
        ("pix2pix_unet", 3, 54_413_955, None),
        ("pix2pix_unet", 4, 54_414_979, None),
        ("patchgan", 6, 2_768_705, None),
        ("patchgan", 7, 2_769_729, None),
        # TF tutorial: G on the 3-channel input image, D on concat(input, target) = 6.
        ("tf_pix2pix_unet", 3, 54_414_979, 54_425_859),
        ("tf_patchgan", 6, 2_768_641, 2_770_433),
    ],
)
def test_parameter_counts(name, channels, params, total):
    variables, out = _abstract_variables(name, channels, 256)
    assert count_params(variables["params"]) == params
    if total is not None:
        assert count_params(variables) == total
    expected = (1, 256, 256, 3) if "unet" in name else (1, 30, 30, 1)
    assert out.shape == expected and out.dtype == jnp.float32


def test_unet128_shape_and_bn_stats_layout():
    variables, out = _abstract_variables("pix2pix_unet", 4, 128, num_downs=7)
    assert out.shape == (1, 128, 128, 3)
    stats = variables["batch_stats"]
    # Down norms at levels 1..5, up norms at levels 1..6 (innermost down has none).
    assert sorted(stats) == sorted(
        [f"down_norm_{d}" for d in range(1, 6)] + [f"up_norm_{d}" for d in range(1, 7)]
    )
    assert "down_norm_6" not in variables["params"]
    assert "bias" in variables["params"]["up_conv_0"]
    assert "bias" not in variables["params"]["up_conv_1"]
    assert "bias" not in variables["params"]["down_conv_0"]


def test_unet128_and_tf_shapes():
    _, out = _abstract_variables("tf_pix2pix_unet", 3, 128, num_downs=7)
    assert out.shape == (1, 128, 128, 3)
    _, out = _abstract_variables("patchgan", 6, 128)
    assert out.shape == (1, 14, 14, 1)


@pytest.fixture(scope="module")
def small_unet():
    """A small U-Net (dropout at level 4) initialised once (jitted init: one compile)."""
    model = create_model("pix2pix_unet", num_downs=6, ngf=16)
    x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3), minval=-1, maxval=1)
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, False))(x)
    return model, x, variables


def test_init_statistics(small_unet):
    _, _, variables = small_unet
    params = variables["params"]
    kernels = np.concatenate(
        [np.ravel(params[k]["kernel"]) for k in params if "conv" in k]
    )
    assert kernels.size > 100_000
    assert abs(kernels.mean()) < 1e-3
    assert abs(kernels.std() - 0.02) < 5e-4
    scales = np.concatenate([np.ravel(params[k]["scale"]) for k in params if "norm" in k])
    assert abs(scales.mean() - 1.0) < 3e-3 and abs(scales.std() - 0.02) < 3e-3
    assert np.all(np.asarray(params["up_conv_0"]["bias"]) == 0)
    for k in params:
        if "norm" in k:
            assert np.all(np.asarray(params[k]["bias"]) == 0)
            assert np.all(np.asarray(variables["batch_stats"][k]["mean"]) == 0)
            assert np.all(np.asarray(variables["batch_stats"][k]["var"]) == 1)
    # TF variant: Keras BN gamma init is exactly 1, convs N(0, 0.02).
    tf_model = create_model("tf_patchgan", ndf=8)
    tf_vars = jax.jit(lambda x: tf_model.init(jax.random.key(0), x, False))(
        jnp.zeros((1, 32, 32, 6)))
    assert np.all(np.asarray(tf_vars["params"]["norm"]["scale"]) == 1)
    assert abs(float(jnp.std(tf_vars["params"]["conv"]["kernel"])) - 0.02) < 1e-3


CONVT_CASES = [
    # (kernel, stride, padding, output_padding, H, W)
    (4, 2, 1, 0, 5, 7),
    (4, 2, 1, 0, 1, 1),
    (3, 2, 1, 1, 6, 5),
    (2, 2, 0, 0, 4, 4),
    (5, 3, 2, 1, 4, 3),
    (4, 1, 2, 0, 5, 5),
]


@pytest.mark.parametrize("k,s,p,op,h,w", CONVT_CASES)
def test_conv_transpose_xla_matches_torch(k, s, p, op, h, w):
    """The plain form (the CPU forms equal it: tests/test_backends.py)."""
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    cin, cout = 5, 3
    x = rng.standard_normal((2, h, w, cin)).astype(np.float32)
    kernel = rng.standard_normal((k, k, cout, cin)).astype(np.float32)
    ours = np.asarray(conv_transpose_xla(jnp.asarray(x), jnp.asarray(kernel), s, p, op))
    ref_torch = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))),
        stride=s, padding=p, output_padding=op,
    ).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == ref_torch.shape
    assert ours.shape[1:3] == ((h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op)
    np.testing.assert_allclose(ours, ref_torch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("forms", ["auto", "off"])
def test_conv_transpose_module_matches_torch_module(forms):
    """``ConvTranspose`` vs ``torch.nn.ConvTranspose2d``, traced with the CPU forms and
    with the plain one."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 4, 6)).astype(np.float32)
    layer = ConvTranspose(5, 4, 2, 1, use_bias=True)
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    kernel = np.asarray(variables["params"]["kernel"])
    assert kernel.shape == (4, 4, 5, 6)  # (kH, kW, out, in)
    bias = rng.standard_normal(5).astype(np.float32)
    variables = {"params": {"kernel": variables["params"]["kernel"], "bias": jnp.asarray(bias)}}
    tconv = torch.nn.ConvTranspose2d(6, 5, 4, 2, 1)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        tconv.bias.copy_(torch.from_numpy(bias))
        ref = tconv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    with backends.use("cpu", forms=forms):
        out = layer.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("forms", ["auto", "off"])
@pytest.mark.parametrize("size,stride,padding", [(8, 2, 1), (8, 1, 1), (8, 2, "SAME"),
                                                 (40, 2, 1)])
def test_conv_matches_torch(size, stride, padding, forms):
    """``Conv`` vs ``torch.nn.functional.conv2d``, traced with the CPU forms (a GEMM for the
    small outputs, a pre-padded convolution per image for the 40x40 input) and with the
    plain one."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    layer = Conv(4, 4, stride, padding, use_bias=True,
                 bias_init=jax.nn.initializers.normal(1.0))
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    kernel = np.asarray(variables["params"]["kernel"])
    bias = np.array(variables["params"]["bias"])  # writable: torch.from_numpy
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))),
        torch.from_numpy(bias), stride=stride, padding=1,
    ).numpy().transpose(0, 2, 3, 1)
    with backends.use("cpu", forms=forms):
        out = layer.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_matches_torch_train_and_eval():
    rng = np.random.default_rng(3)
    bn = BatchNorm(momentum=0.9, epsilon=1e-5)
    xs = [rng.standard_normal((2, 3, 3, 4)).astype(np.float32) * 3 + 1 for _ in range(3)]
    variables = bn.init(jax.random.key(0), jnp.asarray(xs[0]), use_running_average=False)
    scale = np.array(variables["params"]["scale"])  # writable: torch.from_numpy
    tbn = torch.nn.BatchNorm2d(4, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(scale))
    tbn.train()
    for x in xs:
        y, updates = bn.apply(variables, jnp.asarray(x), use_running_average=False,
                              mutable=["batch_stats"])
        variables = {**variables, **updates}
        ref = tbn(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
        np.testing.assert_allclose(y, ref.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    stats = variables["batch_stats"]
    np.testing.assert_allclose(stats["mean"], tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], tbn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    # Hand-computed momentum-0.1 update from the initial (0, 1) statistics.
    first = xs[0].reshape(-1, 4)
    one_step = bn.apply(bn.init(jax.random.key(0), jnp.asarray(xs[0]), use_running_average=False),
                        jnp.asarray(xs[0]), use_running_average=False, mutable=["batch_stats"])[1]
    np.testing.assert_allclose(one_step["batch_stats"]["mean"], 0.1 * first.mean(0), rtol=1e-5)
    np.testing.assert_allclose(one_step["batch_stats"]["var"], 0.9 + 0.1 * first.var(0, ddof=1),
                               rtol=1e-5)
    tbn.eval()
    x = xs[0]
    y = bn.apply(variables, jnp.asarray(x), use_running_average=True)
    ref = tbn(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_instance_norm_matches_torch():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32) * 2 + 0.5
    layer = InstanceNorm()
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    assert variables == {} or not jax.tree_util.tree_leaves(variables)
    ref = torch.nn.InstanceNorm2d(3)(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(layer.apply(variables, jnp.asarray(x)),
                               ref.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_train_and_bn_stats_update(small_unet):
    model, x, variables = small_unet

    @jax.jit
    def fwd(v, x, k):
        y_eval = model.apply(v, x, False)
        y_train, upd = model.apply(v, x, True, rngs={"dropout": k}, mutable=["batch_stats"])
        return y_eval, y_train, upd

    e1, t1, upd1 = fwd(variables, x, jax.random.key(2))
    e2, t1b, _ = fwd(variables, x, jax.random.key(2))
    e3, t2, _ = fwd(variables, x, jax.random.key(3))
    np.testing.assert_array_equal(e1, e3)  # eval: no dropout, independent of the key
    np.testing.assert_array_equal(t1, t1b)  # train: deterministic given the key
    assert float(jnp.max(jnp.abs(t1 - t2))) > 1e-4  # ... and the key matters
    assert float(jnp.max(jnp.abs(t1 - e1))) > 1e-4
    # Running statistics moved (momentum 0.1) in train mode; eval apply returns none.
    old = variables["batch_stats"]["up_norm_4"]["mean"]
    new = upd1["batch_stats"]["up_norm_4"]["mean"]
    assert float(jnp.max(jnp.abs(new - old))) > 0
    no_drop = create_model("pix2pix_unet", num_downs=6, ngf=16, use_dropout=False)
    nd = jax.jit(lambda v, x: [no_drop.apply(v, x, True, rngs={"dropout": jax.random.key(i)},
                                             mutable=["batch_stats"])[0] for i in (2, 3)])
    a, b = nd(variables, x)
    np.testing.assert_array_equal(a, b)


def test_bfloat16_compute_returns_float32(small_unet):
    model, x, variables = small_unet
    g16 = create_model("pix2pix_unet", num_downs=6, ngf=16, dtype=jnp.bfloat16)
    y32, y16 = jax.jit(lambda v, x: (model.apply(v, x, False), g16.apply(v, x, False)))(
        variables, x)
    assert y16.dtype == jnp.float32
    assert 0 < float(jnp.max(jnp.abs(y16 - y32))) < 0.1
    shapes = jax.eval_shape(lambda x: g16.init(jax.random.key(1), x, False), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    d16 = create_model("patchgan", ndf=8, n_layers=2, dtype=jnp.bfloat16)
    xd = jnp.concatenate([x, x], -1)
    logits = jax.jit(lambda xd: d16.apply(d16.init(jax.random.key(2), xd, False), xd, True,
                                          mutable=["batch_stats"])[0])(xd)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 14, 14, 1)


def test_registry_errors():
    assert set(MODELS) == {"pix2pix_unet", "patchgan", "tf_pix2pix_unet", "tf_patchgan",
                           "ganmasker_mseg", "ganmasker_funet", "ganmasker_discriminator",
                           "ye_unet_c", "unveilify_psp", "unveilify_generator",
                           "unveilify_mask_remover", "unveilify_discriminator"}
    with pytest.raises(ValueError, match="choices"):
        create_model("resnet_9blocks")
    with pytest.raises(TypeError, match="num_downz"):
        create_model("pix2pix_unet", num_downz=8)
    with pytest.raises(ValueError, match="norm"):
        create_model("pix2pix_unet", norm="group").init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), False)


def test_public_names_kept():
    """Every name the repository uses from ``unmask_jax.models.layers`` (models, tests,
    benchmarks) is importable from the package; the CPU forms are not there (they live in
    ``unmask_jax.backends.cpu_forms``)."""
    for name in ("BatchNorm", "Conv", "ConvTranspose", "InstanceNorm", "apply_norm",
                 "check_norm", "conv2d_xla", "conv_transpose_xla", "leaky_relu",
                 "normal_init", "torch_padding"):
        assert callable(getattr(layers, name)), name
    for name in ("conv2d", "conv2d_gemm", "conv_transpose_gemm", "conv_transpose_subpixel",
                 "batch_chunked", "weight_matmul", "use_platform", "dispatch"):
        assert not hasattr(layers, name), name
    for name in ("impl", "auto_gemm_max_pixels", "split_batch"):
        assert name not in Conv.__dataclass_fields__, name
        assert name not in ConvTranspose.__dataclass_fields__, name
