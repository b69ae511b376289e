"""unmask_jax.backends: every CPU and TPU form equals the plain XLA form (values, input and
kernel gradients), and the seam picks the forms by target (platform, forms, CPU library)."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unmask_jax import backends
from unmask_jax.backends import cpu
from unmask_jax.backends import cpu_forms as forms
from unmask_jax.backends import tpu
from unmask_jax.models import create_model
from unmask_jax.models.layers import Conv, ConvTranspose, conv2d_xla, conv_transpose_xla

FORWARD_TOL, GRAD_TOL = 1e-5, 1e-4


def _rel(got, want) -> float:
    """max|got - want| / max|want| (0 where both are 0)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).max()
    diff = np.abs(got - want).max()
    return float(diff / scale) if scale else float(diff)


def _assert_same_function(form, plain, *args, seed=0):
    """``form(*args)`` equals ``plain(*args)`` per tensor to FORWARD_TOL, and so do the
    gradients with respect to every argument (input and kernel) to GRAD_TOL, for a random
    cotangent."""
    got, got_vjp = jax.vjp(form, *args)
    want, want_vjp = jax.vjp(plain, *args)
    assert _rel(got, want) <= FORWARD_TOL, _rel(got, want)
    cot = jnp.asarray(np.random.default_rng(seed).standard_normal(want.shape), want.dtype)
    for i, (g, w) in enumerate(zip(got_vjp(cot), want_vjp(cot))):
        assert _rel(g, w) <= GRAD_TOL, (i, _rel(g, w))


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


# -- convolutions ----------------------------------------------------------------------------

CONV_CASES = [
    # (input shape, kernel hw, out features, strides, padding, dilation)
    ((2, 9, 7, 3), (3, 3), 4, 1, 1, 1),             # odd sizes
    ((2, 8, 8, 3), (4, 4), 5, 2, 1, 1),             # the U-Nets' k4 s2 p1
    ((1, 9, 8, 2), (4, 4), 3, 2, 1, 1),             # odd input, stride 2
    ((1, 8, 8, 5), (3, 3), 4, 1, 0, 1),             # no padding
    ((1, 8, 8, 5), (3, 3), 4, 1, "VALID", 1),
    ((1, 6, 5, 2), (3, 3), 3, 1, "SAME", 1),
    ((2, 7, 7, 2), (4, 4), 3, 2, "SAME", 1),
    ((2, 10, 11, 4), (3, 3), 6, 1, ((2, 0), (1, 1)), 1),  # asymmetric explicit padding
    ((1, 8, 9, 3), (3, 5), 2, (1, 2), (1, 2), 1),   # rectangular kernel, per-axis stride
    ((1, 9, 9, 3), (3, 3), 4, 1, 2, 2),             # dilation 2 ('same' size)
    ((1, 8, 8, 3), (3, 3), 4, 2, 3, (3, 2)),        # dilation per axis, stride 2
    ((2, 4, 4, 3), (3, 3), 4, 1, 4, 4),             # dilation as large as the input: taps
    ((1, 2, 2, 3), (3, 3), 2, 1, 8, 8),             # that read only padding (left out)
    ((2, 6, 6, 4), (1, 1), 3, 1, 0, 1),             # 1x1
    ((2, 6, 6, 4), (1, 1), 3, 2, 0, 1),             # 1x1 stride 2
]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["pre-padded", "gemm"])
@pytest.mark.parametrize("shape,kernel_hw,features,strides,padding,dilation", CONV_CASES)
def test_conv_forms_equal_lax(form, shape, kernel_hw, features, strides, padding, dilation):
    rng = np.random.default_rng(sum(shape) + sum(kernel_hw))
    x = _normal(rng, shape)
    k = _normal(rng, kernel_hw + (shape[-1], features))
    fn = {"pre-padded": forms.conv2d, "gemm": forms.conv2d_gemm}[form]
    _assert_same_function(lambda x, k: fn(x, k, strides, padding, dilation),
                          lambda x, k: conv2d_xla(x, k, strides, padding, dilation), x, k)


def test_conv_gemm_leaves_out_padding_only_taps():
    """A 3x3 kernel at dilation 8 on a 2x2 input: only the centre tap reads the input, so
    the GEMM's contraction is one tap (in channels) long."""
    rng = np.random.default_rng(3)
    x, k = _normal(rng, (1, 2, 2, 3)), _normal(rng, (3, 3, 3, 2))
    jaxpr = jax.make_jaxpr(lambda x, k: forms.conv2d_gemm(x, k, 1, 8, 8))(x, k)
    text = str(jaxpr)
    assert "conv_general_dilated" not in text
    assert "f32[4,3]" in text  # (b*ho*wo, taps*in) = (4, 1*3): the centre tap only


def test_weight_matmul_values_and_gradients():
    """The custom-VJP GEMM (weight read in its stored layout only) equals plain autodiff."""
    rng = np.random.default_rng(1)
    a = _normal(rng, (6, 20))
    w_kn = _normal(rng, (20, 9))
    for w, transposed, ref in [(w_kn, False, lambda a, w: a @ w),
                               (w_kn.T, True, lambda a, w: a @ w.T)]:
        _assert_same_function(lambda a, w, t=transposed: forms.weight_matmul(a, w, t), ref,
                              a, w)


@pytest.mark.slow
def test_batch_chunked_equals_the_whole_batch():
    rng = np.random.default_rng(5)
    x = _normal(rng, (5, 12, 12, 3))
    k = _normal(rng, (4, 4, 3, 4))
    kt = _normal(rng, (4, 4, 4, 3))
    _assert_same_function(
        lambda x, k: forms.batch_chunked(forms.conv2d, x, k, 2, 1, 1, max_chunks=3),
        lambda x, k: conv2d_xla(x, k, 2, 1, 1), x, k)
    _assert_same_function(
        lambda x, k: forms.batch_chunked(forms.conv_transpose_subpixel, x, k, 2, 1),
        lambda x, k: conv_transpose_xla(x, k, 2, 1), x, kt)
    # 5 images in at most 3 chunks (sizes 2, 2, 1); at most 8 by default; 1: no split.
    for max_chunks, want in ((3, [2, 2, 1]), (8, [1] * 5), (1, [5])):
        chunks = []
        forms.batch_chunked(lambda c: chunks.append(c.shape[0]) or c, x,
                            max_chunks=max_chunks)
        assert chunks == want


CONVT_CASES = [
    # (kernel, stride, padding, output_padding, H, W)
    (4, 2, 1, 0, 5, 7),
    (4, 2, 1, 0, 1, 1),
    (3, 2, 1, 1, 6, 5),
    (2, 2, 0, 0, 4, 4),
    (5, 3, 2, 1, 4, 3),
    (5, 3, 2, 2, 3, 4),
    (4, 1, 2, 0, 5, 5),
    (3, 1, 0, 0, 4, 6),
]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["subpixel", "gemm"])
@pytest.mark.parametrize("k,s,p,op,h,w", CONVT_CASES)
def test_conv_transpose_forms_equal_lax(form, k, s, p, op, h, w):
    rng = np.random.default_rng(k * 100 + s * 10 + p + op)
    x = _normal(rng, (2, h, w, 5))
    kernel = _normal(rng, (k, k, 3, 5))  # (kH, kW, out, in)
    fn = {"subpixel": forms.conv_transpose_subpixel, "gemm": forms.conv_transpose_gemm}[form]
    out = fn(x, kernel, s, p, op)
    assert out.shape[1:3] == ((h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op)
    _assert_same_function(lambda x, kk: fn(x, kk, s, p, op),
                          lambda x, kk: conv_transpose_xla(x, kk, s, p, op), x, kernel)


def test_conv_transpose_forms_refuse_bad_arguments():
    x = jnp.zeros((1, 4, 4, 3))
    for fn in (forms.conv_transpose_subpixel, forms.conv_transpose_gemm):
        with pytest.raises(ValueError, match="output_padding"):
            fn(x, jnp.zeros((4, 4, 2, 3)), 2, 1, 2)
        with pytest.raises(ValueError, match="channels"):
            fn(x, jnp.zeros((4, 4, 2, 5)), 2, 1)


@pytest.mark.slow
def test_subpixel_forward_with_gemm_gradients():
    """What a large ConvTranspose runs on the CPU: the sub-pixel form (per batch chunk)
    forward, the GEMM form's gradients, through a custom VJP; equal to lax's."""
    rng = np.random.default_rng(7)
    x, kernel = _normal(rng, (3, 10, 10, 6)), _normal(rng, (4, 4, 5, 6))
    forward = functools.partial(forms.batch_chunked, forms.conv_transpose_subpixel)

    def mixed(x, k, grads_of=forms.conv_transpose_gemm):
        return forms.forward_with_grads_of(forward, grads_of, x, k, (2, 1, 0))

    _assert_same_function(mixed, lambda x, k: conv_transpose_xla(x, k, 2, 1), x, kernel)
    assert "custom_vjp" in str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(mixed(x, kernel))))(x))
    # The gradients really come from ``grads_of``: a doubled stand-in doubles them and
    # leaves the forward alone.
    doubled = lambda *a: 2.0 * forms.conv_transpose_gemm(*a)  # noqa: E731
    y, vjp = jax.vjp(functools.partial(mixed, grads_of=doubled), x, kernel)
    y0, vjp0 = jax.vjp(mixed, x, kernel)
    assert _rel(y, y0) <= FORWARD_TOL
    cot = jnp.ones_like(y)
    for g, g0 in zip(vjp(cot), vjp0(cot)):
        assert _rel(g, 2.0 * g0) <= GRAD_TOL


# -- TPU: few-channel convolutions as shifted slices ------------------------------------------

@pytest.mark.parametrize("shape,kernel_shape,padding", [
    ((2, 16, 12, 2), (7, 7, 2, 1), 3),               # CBAM's spatial attention
    ((1, 9, 8, 1), (3, 3, 1, 2), 1),                 # odd sizes, two outputs
    ((2, 8, 8, 2), (3, 5, 2, 2), ((2, 0), (1, 3))),  # rectangular, asymmetric padding
    ((1, 6, 7, 4), (3, 3, 4, 1), "SAME"),
    ((1, 6, 6, 1), (2, 2, 1, 1), "VALID"),
    ((2, 8, 8, 16), (1, 1, 16, 3), 0),               # 1 x 1 to an image (FU-Net's last)
    ((2, 8, 8, 32), (1, 1, 32, 1), 0),               # 1 x 1 to a mask map (M-Seg's last)
    ((1, 6, 6, 3), (3, 3, 3, 2), 1),                 # wider than the rule takes: still exact
])
def test_tpu_taps_form_equals_lax(shape, kernel_shape, padding):
    rng = np.random.default_rng(11)
    x, kernel = _normal(rng, shape), _normal(rng, kernel_shape)
    _assert_same_function(lambda a, k: tpu.conv2d_taps(a, k, padding),
                          lambda a, k: conv2d_xla(a, k, 1, padding, 1), x, kernel)


def test_tpu_taps_form_keeps_the_compute_dtype():
    """bfloat16 in, bfloat16 out (summed in float32), close to the plain bfloat16 conv."""
    rng = np.random.default_rng(12)
    x = _normal(rng, (2, 16, 16, 2)).astype(jnp.bfloat16)
    kernel = (0.1 * _normal(rng, (7, 7, 2, 1))).astype(jnp.bfloat16)
    got = tpu.conv2d_taps(x, kernel, 3)
    want = conv2d_xla(x.astype(jnp.float32), kernel.astype(jnp.float32), 1, 3, 1)
    assert got.dtype == jnp.bfloat16
    assert _rel(got.astype(jnp.float32), want) < 1e-2


def test_cbam_with_the_tpu_forms_equals_plain_cbam():
    """CBAM traced for a TPU (its spatial convolution as taps) and run here equals plain
    CBAM: output, input gradient and every parameter's gradient."""
    from unmask_jax.models.blocks import CBAM
    rng = np.random.default_rng(13)
    x = _normal(rng, (2, 12, 10, 16))
    module = CBAM(reduction=4)
    variables = module.init(jax.random.key(1), x)
    cot = _normal(rng, x.shape)

    def run(target):
        def fn(v, a):
            y, vjp = jax.vjp(lambda v, a: module.apply(v, a), v, a)
            return y, vjp(cot)
        with backends.use(**target):
            return jax.jit(fn).lower(variables, x).compile()(variables, x)

    (got, got_grads), (want, want_grads) = run(dict(platform="tpu")), run(
        dict(platform="tpu", forms="off"))
    assert _rel(got, want) <= FORWARD_TOL
    leaves = zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads))
    assert all(_rel(g, w) <= GRAD_TOL for g, w in leaves)


def test_tpu_rule_takes_the_taps_form_for_few_channels_only():
    """Traced for a TPU, CBAM's 7 x 7 2 -> 1 convolution (and its gradients) and a 1 x 1
    convolution to an image have no convolution op; a wider or strided one stays XLA's
    convolution; other targets never take the TPU form."""
    x2, x3 = jnp.zeros((2, 16, 16, 2)), jnp.zeros((2, 16, 16, 3))
    spatial = Conv(1, 7, 1, 3, use_bias=False)
    sv = spatial.init(jax.random.key(0), x2)
    assert tpu.TAPS_MAX_CHANNELS == 4
    for grad in (False, True):
        assert _count(_lowered(spatial, sv, x2, grad=grad, platform="tpu"),
                      "convolution") == 0, grad
    for target in (dict(platform="gpu"), dict(platform="tpu", forms="off"),
                   dict(platform="cpu", cpu_library="eigen")):
        assert _count(_lowered(spatial, sv, x2, **target), "convolution") == 1, target
    x16 = jnp.zeros((2, 16, 16, 16))
    rgb = Conv(3, 1, 1, 0)                            # 1 x 1 to 3 channels: taps
    assert _count(_lowered(rgb, rgb.init(jax.random.key(0), x16), x16, platform="tpu"),
                  "convolution") == 0
    assert (tpu.POINTWISE_MAX_OUT, tpu.POINTWISE_MAX_IN) == (4, 64)
    for conv, x in ((Conv(2, 3, 1, 1), x3),          # 3 x 2 = 6 > 4 channels
                    (Conv(1, 4, 2, 1), x2),          # strided
                    (Conv(5, 1, 1, 0), x16),         # 1 x 1 to 5 > 4 channels
                    (Conv(3, 1, 1, 0), jnp.zeros((2, 4, 4, 65))),  # from 65 > 64 channels
                    (Conv(3, 3, 1, 1), x16)):        # 3 x 3, 16 x 3 channels
        v = conv.init(jax.random.key(0), x)
        assert _count(_lowered(conv, v, x, platform="tpu"), "convolution") == 1


# -- the rule: which form a target gets ------------------------------------------------------

def _lowered(module, variables, x, grad: bool = False, **target) -> str:
    """StableHLO of ``module.apply`` (or its gradient w.r.t. variables and input) traced
    under ``backends.use(**target)``; a fresh function each time (the jit cache does not key
    on the target)."""
    def fn(v, x):
        return module.apply(v, x)

    if grad:
        fn = jax.grad(lambda v, x, f=fn: jnp.sum(f(v, x)), argnums=(0, 1))
    with backends.use(**target):
        return jax.jit(fn).lower(variables, x).as_text()


def _count(text: str, op: str) -> int:
    return text.count(f"stablehlo.{op}")


def _is_plain_convolution(text: str, batch: int) -> bool:
    """One convolution of the whole batch, padding built in, no GEMM."""
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    return (len(convs) == 1 and _count(text, "dot_general") == 0
            and f"tensor<{batch}x" in convs[0] and "pad = [[0, 0], [0, 0]]" not in convs[0])


@pytest.fixture(scope="module")
def layers_and_inputs():
    small, big = jnp.zeros((3, 8, 8, 4)), jnp.zeros((3, 40, 40, 4))
    # 16 output channels: more than an image's (GEMM_MAX_OUT_FEATURES), so the transposed
    # convolution's rule goes by its input size.
    conv, up = Conv(6, 4, 2, 1), ConvTranspose(16, 4, 2, 1)
    assert up.features > cpu.GEMM_MAX_OUT_FEATURES
    with backends.use("cpu", forms="off"):
        cv = conv.init(jax.random.key(0), small)
        uv = up.init(jax.random.key(0), small)
        bv = conv.init(jax.random.key(0), big)
    return conv, up, cv, uv, bv, small, big


@pytest.mark.slow
def test_cpu_rule_gemm_for_small_outputs_convolution_for_large(layers_and_inputs):
    conv, up, cv, uv, bv, small, big = layers_and_inputs
    text = _lowered(conv, cv, small, platform="cpu")          # 4x4 output: GEMM
    assert _count(text, "dot_general") == 1 and _count(text, "convolution") == 0
    text = _lowered(conv, bv, big, platform="cpu")            # 20x20 output: convolution,
    assert _count(text, "dot_general") == 0                   # pre-padded, per image
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert len(convs) == 3 and all("tensor<1x" in line for line in convs)
    assert all("pad = [[0, 0], [0, 0]]" in line for line in convs)
    # The boundary: 16x16 = GEMM_MAX_PIXELS output pixels is a GEMM, 17x17 is not.
    assert cpu.GEMM_MAX_PIXELS == 256
    same = Conv(2, 3, 1, 1)
    for n, gemm in ((16, True), (17, False)):
        x = jnp.zeros((1, n, n, 2))
        text = _lowered(same, same.init(jax.random.key(0), x), x, platform="cpu")
        assert (_count(text, "dot_general") > 0) == gemm, n
        assert (_count(text, "convolution") > 0) != gemm, n


def test_cpu_rule_for_transposed_convolutions(layers_and_inputs):
    conv, up, cv, uv, bv, small, big = layers_and_inputs
    text = _lowered(up, uv, small, platform="cpu")     # small input: GEMM + col2im
    assert _count(text, "dot_general") == 1 and _count(text, "convolution") == 0
    x = jnp.zeros((2, 20, 20, 4))                      # large: sub-pixel forward per image,
    text = _lowered(up, uv, x, platform="cpu")         # the GEMM form's gradients
    assert _count(text, "convolution") == 2 and _count(text, "dot_general") == 0
    assert "dot_general" in _lowered(up, uv, x, grad=True, platform="cpu")
    rgb = ConvTranspose(3, 4, 2, 1)                    # few output channels: GEMM at any size
    text = _lowered(rgb, rgb.init(jax.random.key(0), x), x, platform="cpu")
    assert _count(text, "dot_general") == 1 and _count(text, "convolution") == 0


@pytest.mark.parametrize("target", [
    dict(platform="cpu", cpu_library="eigen"),
    dict(platform="cpu", cpu_library="no_ynnpack"),
    dict(platform="tpu"),
    dict(platform="gpu"),
    dict(platform="cpu", forms="off"),
], ids=["cpu-eigen", "cpu-no_ynnpack", "tpu", "gpu", "cpu-off"])
def test_plain_convolutions_off_the_cpu_rule(layers_and_inputs, target):
    """Eigen / no-YNNPACK CPU programs, other platforms and forms 'off': a Conv is XLA's own
    convolution (padding built in, whole batch) at every size."""
    conv, up, cv, uv, bv, small, big = layers_and_inputs
    for v, x in ((cv, small), (bv, big)):
        assert _is_plain_convolution(_lowered(conv, v, x, **target), 3), (target, x.shape)
    text = _lowered(up, uv, small, **target)
    if target.get("cpu_library", "ynnpack") != "ynnpack" and target.get("forms") != "off":
        # Transposed convolutions keep their CPU forms in Eigen programs.
        assert _count(text, "dot_general") == 1
    else:
        assert _count(text, "convolution") == 1 and _count(text, "dot_general") == 0


def test_the_cpu_and_tpu_rules_apply_on_their_platforms_only():
    with backends.use("cpu"):
        assert isinstance(backends.forms(), cpu.CpuForms)
    with backends.use("tpu"):
        assert backends.forms() is tpu.FORMS
    for target in (dict(platform="gpu"), dict(platform="cpu", forms="off"),
                   dict(platform="tpu", forms="off")):
        with backends.use(**target):
            assert backends.forms() is backends.PLAIN


def test_use_sets_and_restores_the_target():
    outside = backends.target()
    assert outside == backends.Target(jax.default_backend())
    with backends.use("TPU") as t:
        assert t == backends.target() == backends.Target("tpu")
        with backends.use("cpu", forms="off", cpu_library="eigen"):
            assert backends.target() == backends.Target("cpu", "off", "eigen")
        assert backends.target() == t
    assert backends.target() == outside
    with pytest.raises(ValueError, match="backend_forms"):
        with backends.use("cpu", forms="fast"):
            pass
    with pytest.raises(ValueError, match="choose one of"):
        with backends.use("cpu", cpu_library="mkl"):
            pass
    assert backends.target() == outside


def test_compiler_options_per_library():
    assert cpu.compiler_options("ynnpack") == {}
    # This jaxlib's XLA takes the options (a later one that does not gets {} and a warning).
    assert cpu.compiler_options("eigen") == cpu.LIBRARY_OPTIONS["eigen"]
    assert cpu.compiler_options("eigen") == {
        "xla_cpu_experimental_ynn_fusion_type":
            "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    assert cpu.compiler_options("no_ynnpack") == cpu.LIBRARY_OPTIONS["no_ynnpack"]
    assert set(cpu.LIBRARY_OPTIONS) == set(backends.CPU_LIBRARIES)
    assert backends.PLAIN.compiler_options() == {}


def test_jit_traces_for_its_platform():
    """``backends.jit(fn, platform='tpu')``: traced (and lowered) for a TPU, plain forms, no
    CPU options; the target outside is left alone."""
    seen = []
    conv = Conv(4, 4, 2, 1)
    x = jnp.zeros((2, 8, 8, 3))
    v = jax.eval_shape(lambda x: conv.init(jax.random.key(0), x), x)

    def fn(v, x):
        seen.append(backends.target())
        return conv.apply(v, x)

    f = backends.jit(fn, platform="tpu")
    assert f.target == backends.Target("tpu") and f.compiler_options == {}
    text = f.lower(v, jax.ShapeDtypeStruct(x.shape, x.dtype)).as_text()
    assert seen == [backends.Target("tpu")]
    assert _is_plain_convolution(text, 2)
    assert backends.target() == backends.Target(jax.default_backend())
    g = backends.jit(fn, platform="cpu", cpu_library="eigen")
    assert g.target == backends.Target("cpu", "auto", "eigen")
    assert g.compiler_options == cpu.LIBRARY_OPTIONS["eigen"]


def _entry_ops(compiled_text: str) -> str:
    return compiled_text[compiled_text.index("ENTRY"):]


def test_jit_for_eigen_compiles_and_traces_for_eigen():
    """``backends.jit(fn, cpu_library='eigen')`` traces under that setting and compiles the
    convolutions outside YNNPACK's fusions; values and gradients equal XLA's default
    program's."""
    rng = np.random.default_rng(3)
    x = _normal(rng, (2, 16, 16, 8))
    conv = Conv(8, 3, 1, 1)
    v = conv.init(jax.random.key(0), x)
    seen = []

    def loss(v, x):
        seen.append(backends.target().cpu_library)
        return jnp.mean(jnp.square(conv.apply(v, x)))

    fns = {lib: backends.jit(jax.value_and_grad(loss, argnums=(0, 1)), platform="cpu",
                             cpu_library=lib)
           for lib in ("ynnpack", "eigen")}
    results = {lib: f(v, x) for lib, f in fns.items()}
    assert seen == ["ynnpack", "eigen"]
    for a, b in zip(jax.tree.leaves(results["ynnpack"]), jax.tree.leaves(results["eigen"])):
        assert _rel(a, b) <= GRAD_TOL
    texts = {lib: f.lower(v, x).compile().as_text() for lib, f in fns.items()}
    # XLA's default program runs the convolutions inside YNNPACK fusions; the Eigen one
    # as plain convolution ops, with YNNPACK still there for its dots and reductions.
    assert "convolution(" not in _entry_ops(texts["ynnpack"])
    assert "convolution(" in _entry_ops(texts["eigen"])
    assert "__ynn_fusion" in texts["eigen"]


def test_forms_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(backends, "_announced", set())
    with caplog.at_level(logging.INFO, logger=backends.__name__):
        for platform in ("gpu", "gpu", "cpu", "cpu"):
            with backends.use(platform):
                backends.forms()
    messages = [r.getMessage() for r in caplog.records if r.name == backends.__name__]
    assert len(messages) == 2, messages
    assert "gpu" in messages[0] and "plain forms" in messages[0]
    assert "cpu" in messages[1] and "cpu forms" in messages[1]


# -- a network: the CPU forms vs the plain ones ----------------------------------------------

@pytest.mark.slow
def test_unet_with_cpu_forms_equals_plain_unet():
    """A small U-Net traced with the CPU forms and with plain XLA ops: same outputs, batch
    statistics and gradients up to float32 rounding."""
    model = create_model("pix2pix_unet", num_downs=6, ngf=16)
    x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3), minval=-1, maxval=1)
    with backends.use("cpu", forms="off"):
        variables = jax.jit(lambda x: model.init(jax.random.key(1), x, False))(x)

    def loss(params, x):
        y, upd = model.apply({**variables, "params": params}, x, True,
                             rngs={"dropout": jax.random.key(7)}, mutable=["batch_stats"])
        return jnp.mean(jnp.square(y - 0.5)), (y, upd)

    results = {}
    for name in ("auto", "off"):
        fn = backends.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                          platform="cpu", forms=name)
        evaluate = backends.jit(lambda v, x: model.apply(v, x, False), platform="cpu",
                                forms=name)
        results[name] = (fn(variables["params"], x), evaluate(variables, x))
    for a, b in zip(jax.tree.leaves(results["auto"]), jax.tree.leaves(results["off"])):
        assert _rel(a, b) <= GRAD_TOL
