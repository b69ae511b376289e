"""Tests for the Flax networks and torch-compatible layers (unmask_jax.models)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unmask_jax.models import MODELS, count_params, create_model
from unmask_jax.models import layers
from unmask_jax.models.layers import (
    BatchNorm,
    Conv,
    ConvTranspose,
    InstanceNorm,
    batch_chunked,
    conv2d,
    conv2d_gemm,
    conv2d_xla,
    conv_transpose_gemm,
    weight_matmul,
    conv_transpose_subpixel,
    conv_transpose_xla,
    use_platform,
)
from unmask_jax.models.layers import dispatch


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
def test_subpixel_conv_transpose_matches_torch_and_lax(k, s, p, op, h, w):
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    cin, cout = 5, 3
    x = rng.standard_normal((2, h, w, cin)).astype(np.float32)
    kernel = rng.standard_normal((k, k, cout, cin)).astype(np.float32)
    ours = np.asarray(conv_transpose_subpixel(jnp.asarray(x), jnp.asarray(kernel), s, p, op))
    gemm = np.asarray(conv_transpose_gemm(jnp.asarray(x), jnp.asarray(kernel), s, p, op))
    ref_lax = np.asarray(conv_transpose_xla(jnp.asarray(x), jnp.asarray(kernel), s, p, op))
    ref_torch = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))),
        stride=s, padding=p, output_padding=op,
    ).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == ref_torch.shape
    assert ours.shape[1:3] == ((h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op)
    np.testing.assert_allclose(ours, ref_torch, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, ref_lax, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gemm, ref_torch, rtol=1e-5, atol=1e-5)


def test_subpixel_conv_transpose_gradients_match_lax():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((4, 4, 3, 4)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((2, 12, 12, 3)), jnp.float32)

    def loss(fn):
        return lambda x, k: jnp.sum(fn(x, k, 2, 1) * cot)

    rx, rk = jax.jit(jax.grad(loss(conv_transpose_xla), argnums=(0, 1)))(x, kernel)
    for fn in (conv_transpose_subpixel, conv_transpose_gemm):
        gx, gk = jax.jit(jax.grad(loss(fn), argnums=(0, 1)))(x, kernel)
        np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gk, rk, rtol=1e-4, atol=1e-4)
    # Same for the im2col convolution against lax's.
    xc = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
    kc = jnp.asarray(rng.standard_normal((4, 4, 3, 5)), jnp.float32)
    cc = jnp.asarray(rng.standard_normal((2, 4, 4, 5)), jnp.float32)
    for stride, pad in [(2, 1), (1, "SAME")]:
        co = cc if stride == 2 else jnp.tile(cc, (1, 2, 2, 1))
        grads = [jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(f(x, k, stride, pad) * co),
                                  argnums=(0, 1)))(xc, kc)
                 for f in (conv2d, conv2d_gemm, conv2d_xla)]
        for other in grads[1:]:
            for a, b in zip(grads[0], other):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_weight_matmul_values_and_gradients():
    """The custom-VJP GEMM (weight kept in its stored layout) equals plain autodiff."""
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((6, 20)), jnp.float32)
    w_kn = jnp.asarray(rng.standard_normal((20, 9)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((6, 9)), jnp.float32)
    for w, transposed, ref in [(w_kn, False, lambda a, w: a @ w),
                               (w_kn.T, True, lambda a, w: a @ w.T)]:
        np.testing.assert_allclose(weight_matmul(a, w, transposed), ref(a, w), rtol=1e-5)
        got = jax.grad(lambda a, w: jnp.sum(weight_matmul(a, w, transposed) * cot),
                       argnums=(0, 1))(a, w)
        want = jax.grad(lambda a, w: jnp.sum(ref(a, w) * cot), argnums=(0, 1))(a, w)
        for g, r in zip(got, want):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["auto", "subpixel", "gemm", "xla", "subpixel/gemm"])
def test_conv_transpose_module_matches_torch_module(impl):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 4, 6)).astype(np.float32)
    layer = ConvTranspose(5, 4, 2, 1, use_bias=True, impl=impl)
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
    np.testing.assert_allclose(layer.apply(variables, jnp.asarray(x)), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["conv", "gemm", "xla"])
@pytest.mark.parametrize("stride,padding", [(2, 1), (1, 1), (2, "SAME")])
def test_conv_matches_torch(stride, padding, impl):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    layer = Conv(4, 4, stride, padding, use_bias=True, impl=impl,
                 bias_init=jax.nn.initializers.normal(1.0))
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    kernel = np.asarray(variables["params"]["kernel"])
    bias = np.asarray(variables["params"]["bias"])
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))),
        torch.from_numpy(bias), stride=stride, padding=1,
    ).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(layer.apply(variables, jnp.asarray(x)), ref, rtol=1e-5, atol=1e-5)


def test_forward_with_gradients_of_another_form():
    """'subpixel/gemm' (and 'conv/gemm'): the first form's output, the second form's
    gradients (w.r.t. input and kernel); both equal the plain forms' up to rounding, and
    the backward pass goes through the custom VJP."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((3, 20, 20, 6)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((3, 40, 40, 5)), jnp.float32)
    mixed, plain = ConvTranspose(5, impl="subpixel/gemm"), ConvTranspose(5, impl="subpixel")
    v = plain.init(jax.random.key(0), x)

    def loss(module):
        return lambda v, x: jnp.sum(module.apply(v, x) * cot)

    np.testing.assert_allclose(mixed.apply(v, x), plain.apply(v, x), rtol=1e-6, atol=1e-6)
    for got, want in zip(jax.tree.leaves(jax.grad(loss(mixed), argnums=(0, 1))(v, x)),
                         jax.tree.leaves(jax.grad(loss(plain), argnums=(0, 1))(v, x))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    bwd = jax.make_jaxpr(jax.grad(loss(mixed)))(v, x)
    assert "custom_vjp_call" in str(bwd) or "custom_vjp" in str(bwd)
    conv_mixed, conv_plain = Conv(4, impl="conv/gemm"), Conv(4, impl="conv")
    cv = conv_plain.init(jax.random.key(1), x)
    g1 = jax.grad(lambda v: jnp.sum(conv_mixed.apply(v, x) ** 2))(cv)
    g2 = jax.grad(lambda v: jnp.sum(conv_plain.apply(v, x) ** 2))(cv)
    np.testing.assert_allclose(g1["params"]["kernel"], g2["params"]["kernel"], rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ValueError, match="FORWARD/GRADS"):
        ConvTranspose(5, impl="subpixel/winograd").init(jax.random.key(0), x)


@pytest.mark.parametrize("shape,padding", [
    ((2, 9, 7, 3), 1),                  # odd output sizes: an extra zero row / column
    ((1, 8, 8, 5), 0),                  # VALID
    ((2, 10, 11, 4), ((2, 0), (1, 1))),  # asymmetric explicit padding
    ((1, 6, 5, 2), "SAME"),
])
def test_winograd_form_equals_the_direct_convolution(shape, padding):
    """F(2x2, 3x3): output, input gradient and kernel gradient equal lax's convolution's
    up to float rounding, for odd sizes and every padding style."""
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 6)), jnp.float32)
    want, want_vjp = jax.vjp(lambda x, k: layers.conv2d_xla(x, k, 1, padding), x, k)
    got, got_vjp = jax.vjp(lambda x, k: layers.conv2d_winograd(x, k, 1, padding), x, k)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    for g, w in zip(got_vjp(cot), want_vjp(cot)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_winograd_form_refuses_other_geometries():
    x = jnp.zeros((1, 8, 8, 2))
    for kernel, stride, dilation in (((4, 4), 2, 1), ((3, 3), 2, 1), ((3, 3), 1, 2),
                                     ((1, 1), 1, 1)):
        with pytest.raises(ValueError, match="3x3 kernels with stride 1 and dilation 1"):
            layers.conv2d_winograd(x, jnp.zeros(kernel + (2, 3)), stride, 1, dilation)


def test_input_and_kernel_gradients_from_two_forms(monkeypatch):
    """'conv/conv:winograd': the convolution's output and input gradient, the Winograd
    form's kernel gradient; equal to 'conv' up to rounding. A doubled stand-in for the
    Winograd form doubles the kernel gradient only, so each gradient really comes from the
    named form."""
    from unmask_jax.models.layers import conv as conv_module
    rng = np.random.default_rng(12)
    x = jnp.asarray(rng.standard_normal((3, 12, 10, 4)), jnp.float32)
    mixed, plain = Conv(5, 3, 1, 1, impl="conv/conv:winograd"), Conv(5, 3, 1, 1, impl="conv")
    v = plain.init(jax.random.key(0), x)

    def grads(module):
        return jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2), argnums=(0, 1))(v, x)

    np.testing.assert_allclose(mixed.apply(v, x), plain.apply(v, x), rtol=1e-6, atol=1e-6)
    (gv_mixed, gx_mixed), (gv_plain, gx_plain) = grads(mixed), grads(plain)
    np.testing.assert_allclose(gx_mixed, gx_plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(gv_mixed), jax.tree.leaves(gv_plain)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    winograd = conv_module.CONV_FORMS["winograd"]
    monkeypatch.setitem(conv_module.CONV_FORMS, "winograd",
                        lambda *args: 2.0 * winograd(*args))
    gv_doubled, gx_same = grads(mixed)
    np.testing.assert_allclose(gx_same, gx_plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gv_doubled["params"]["kernel"],
                               2.0 * gv_plain["params"]["kernel"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gv_doubled["params"]["bias"], gv_plain["params"]["bias"],
                               rtol=1e-5, atol=1e-5)
    for bad in ("conv/:winograd", "conv/conv:nope", "conv/conv:winograd:gemm"):
        with pytest.raises(ValueError, match="X_GRADS:KERNEL_GRADS"):
            Conv(5, 3, 1, 1, impl=bad).init(jax.random.key(0), x)


def test_cpu_rules_pick_the_mixed_transposed_conv():
    """On CPU, a large transposed convolution runs the sub-pixel form forward (per batch
    chunk) and the GEMM form's gradients; a small one, or one with an image's few output
    channels, the GEMM form throughout."""
    assert dispatch.cpu_conv_transpose_impl(16 * 16, 64, 256) == "gemm"
    assert dispatch.cpu_conv_transpose_impl(32 * 32, 64, 256) == "subpixel/gemm"
    assert dispatch.cpu_conv_transpose_impl(128 * 128, 3, 256) == "gemm"  # an RGB output
    assert dispatch.cpu_conv_impl(16 * 16, 256) == "gemm"
    assert dispatch.cpu_conv_impl(32 * 32, 256) == "conv"


def test_batch_chunking_gives_same_numbers():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((5, 20, 20, 3)), jnp.float32)
    conv_a = Conv(4, 4, 2, 1, impl="conv", split_batch=True)
    conv_b = Conv(4, 4, 2, 1, impl="conv", split_batch=False)
    v = conv_a.init(jax.random.key(0), x)
    np.testing.assert_allclose(conv_a.apply(v, x), conv_b.apply(v, x), rtol=1e-6, atol=1e-6)
    up_a = ConvTranspose(4, 4, 2, 1, impl="subpixel", split_batch=True)
    up_b = ConvTranspose(4, 4, 2, 1, impl="subpixel", split_batch=False)
    v = up_a.init(jax.random.key(0), x)
    np.testing.assert_allclose(up_a.apply(v, x), up_b.apply(v, x), rtol=1e-6, atol=1e-6)
    # 5 images in at most 3 chunks (sizes 2, 2, 1).
    chunks = []
    batch_chunked(lambda c: chunks.append(c.shape[0]) or c, x, max_chunks=3)
    assert chunks == [2, 2, 1]


def test_batchnorm_matches_torch_train_and_eval():
    rng = np.random.default_rng(3)
    bn = BatchNorm(momentum=0.9, epsilon=1e-5)
    xs = [rng.standard_normal((2, 3, 3, 4)).astype(np.float32) * 3 + 1 for _ in range(3)]
    variables = bn.init(jax.random.key(0), jnp.asarray(xs[0]), use_running_average=False)
    scale = np.asarray(variables["params"]["scale"])
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


def _eqns(jaxpr):
    """All equations of ``jaxpr``, nested jaxprs (jit, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)          # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)


def _traced(fn, *args) -> list:
    return list(_eqns(jax.make_jaxpr(fn)(*args).jaxpr))


def _primitives(fn, *args) -> set[str]:
    return {eqn.primitive.name for eqn in _traced(fn, *args)}


def test_auto_impl_follows_the_platform():
    """'auto' runs the CPU-measured GEMM forms on 'cpu' only; elsewhere XLA's convolutions
    with the padding built in, on the whole batch. Explicit impls are kept everywhere."""
    x = jnp.zeros((3, 8, 8, 4))          # small: the GEMM forms on CPU
    conv, up = Conv(6, 4, 2, 1), ConvTranspose(6, 4, 2, 1)
    cv, uv = conv.init(jax.random.key(0), x), up.init(jax.random.key(0), x)
    with use_platform("cpu"):
        assert dispatch.platform() == "cpu"
        assert "dot_general" in _primitives(conv.apply, cv, x)
        assert "dot_general" in _primitives(up.apply, uv, x)
        assert "conv_general_dilated" not in _primitives(conv.apply, cv, x)
    for name in ("gpu", "tpu"):
        with use_platform(name):
            assert dispatch.platform() == name
            for module, variables in ((conv, cv), (up, uv)):
                convs = [e for e in _traced(module.apply, variables, x)
                         if e.primitive.name == "conv_general_dilated"]
                assert len(convs) == 1 and "dot_general" not in _primitives(
                    module.apply, variables, x)
                assert convs[0].invars[0].aval.shape[0] == 3           # whole batch
                assert any(lo or hi for lo, hi in convs[0].params["padding"])  # built in
            explicit = Conv(6, 4, 2, 1, impl="gemm")
            assert "dot_general" in _primitives(explicit.apply, cv, x)
    big = jnp.zeros((3, 40, 40, 4))      # large: chunked per image on CPU only
    bv = conv.init(jax.random.key(0), big)
    with use_platform("cpu"):
        assert [e.invars[0].aval.shape[0] for e in _traced(conv.apply, bv, big)
                if e.primitive.name == "conv_general_dilated"] == [1, 1, 1]
    assert dispatch.platform() == jax.default_backend()   # restored after the blocks


def test_eigen_programs_run_xla_convolutions_on_the_whole_batch():
    """In a program compiled for Eigen convolutions, a Conv's 'auto' is XLA's own
    convolution (padding built in, whole batch) at every size; transposed convolutions keep
    their CPU forms; the setting is restored after the block."""
    small, big = jnp.zeros((3, 8, 8, 4)), jnp.zeros((3, 40, 40, 4))
    conv, up = Conv(6, 4, 2, 1), ConvTranspose(6, 4, 2, 1)
    uv = up.init(jax.random.key(0), small)
    with use_platform("cpu"), dispatch.use_cpu_convolutions("eigen"):
        assert dispatch.cpu_convolutions() == "eigen"
        for x in (small, big):
            v = conv.init(jax.random.key(0), x)
            convs = [e for e in _traced(conv.apply, v, x)
                     if e.primitive.name == "conv_general_dilated"]
            assert len(convs) == 1 and "dot_general" not in _primitives(conv.apply, v, x)
            assert convs[0].invars[0].aval.shape[0] == 3
            assert any(lo or hi for lo, hi in convs[0].params["padding"])
        assert "dot_general" in _primitives(up.apply, uv, small)   # the GEMM form, as before
    assert dispatch.cpu_convolutions() == "ynnpack"
    with pytest.raises(ValueError, match="cpu_convolutions"):
        with dispatch.use_cpu_convolutions("mkl"):
            pass


def test_compiler_options_per_library_and_platform():
    assert dispatch.compiler_options("ynnpack", "cpu") == {}
    assert dispatch.compiler_options("eigen", "gpu") == {}
    # This jaxlib's XLA takes the option (a later one that does not gets {} and a warning).
    assert dispatch.compiler_options("eigen", "cpu") == dispatch.EIGEN_COMPILER_OPTIONS
    with pytest.raises(ValueError, match="choose one of"):
        dispatch.compiler_options("onednn")


def _entry_ops(compiled_text: str) -> str:
    return compiled_text[compiled_text.index("ENTRY"):]


def test_jit_for_eigen_compiles_and_traces_for_eigen():
    """``dispatch.jit(fn, 'eigen')`` traces under the setting (the layers pick the Eigen
    forms) and compiles the convolutions outside YNNPACK's fusions; the numbers, gradients
    included, equal XLA's default program's."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 32)), jnp.float32)
    conv = Conv(32, 3, 1, 1)
    v = conv.init(jax.random.key(0), x)
    seen = []

    def loss(v, x):
        seen.append(dispatch.cpu_convolutions())
        return jnp.mean(jnp.square(conv.apply(v, x)))

    fns = {lib: dispatch.jit(jax.value_and_grad(loss, argnums=(0, 1)), lib)
           for lib in dispatch.CPU_CONVOLUTIONS}
    results = {lib: f(v, x) for lib, f in fns.items()}
    assert seen == ["ynnpack", "eigen"] and dispatch.cpu_convolutions() == "ynnpack"
    assert fns["eigen"].cpu_convolutions == "eigen"
    for a, b in zip(jax.tree.leaves(results["ynnpack"]), jax.tree.leaves(results["eigen"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                   atol=1e-6 * max(1.0, float(np.abs(a).max())))
    texts = {lib: f.jitted.lower(v, x).compile().as_text() for lib, f in fns.items()}
    # XLA's default program runs the convolutions inside YNNPACK fusions; the Eigen one
    # as plain convolution ops, with YNNPACK still there for its dots and reductions.
    assert "convolution(" not in _entry_ops(texts["ynnpack"])
    assert "convolution(" in _entry_ops(texts["eigen"])
    assert "__ynn_fusion" in texts["eigen"]


def test_non_cpu_path_matches_cpu_path(small_unet):
    """The U-Net traced for a non-CPU platform (forced here, run on this machine) gives
    the CPU path's outputs, batch statistics and gradients up to float32 rounding."""
    model, x, variables = small_unet

    def loss(params, x):
        y, upd = model.apply({**variables, "params": params}, x, True,
                             rngs={"dropout": jax.random.key(7)}, mutable=["batch_stats"])
        return jnp.mean(jnp.square(y - 0.5)), (y, upd)

    results = {}
    for name in ("cpu", "gpu"):
        with use_platform(name):
            fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
            results[name] = fn(variables["params"], x)
            eval_y = jax.jit(lambda v, x: model.apply(v, x, False))(variables, x)
            results[name] += (eval_y,)
    for a, b in zip(jax.tree.leaves(results["cpu"]), jax.tree.leaves(results["gpu"])):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(a).max()))


def test_platform_choice_is_logged_once(monkeypatch, caplog):
    x = jnp.zeros((1, 8, 8, 4))
    conv = Conv(6, 4, 2, 1)
    v = conv.init(jax.random.key(0), x)
    monkeypatch.setattr(dispatch, "_announced", set())
    with caplog.at_level("INFO", logger=dispatch.__name__):
        for name in ("gpu", "gpu", "cpu", "cpu"):
            with use_platform(name):
                conv.apply(v, x)
    messages = [r.getMessage() for r in caplog.records if r.name == dispatch.__name__]
    assert len(messages) == 2, messages
    assert "platform gpu" in messages[0] and "lax.conv_general_dilated" in messages[0]
    assert "platform cpu" in messages[1] and "GEMM" in messages[1]


def test_public_names_kept():
    """Every name the repository uses from ``unmask_jax.models.layers`` (models, tests,
    benchmarks) is still importable from the package."""
    for name in ("BatchNorm", "Conv", "ConvTranspose", "InstanceNorm", "apply_norm",
                 "batch_chunked", "check_norm", "conv2d", "conv2d_gemm",
                 "conv_transpose_gemm", "conv_transpose_subpixel", "conv_transpose_xla",
                 "leaky_relu", "normal_init", "torch_padding", "weight_matmul"):
        assert callable(getattr(layers, name)), name
