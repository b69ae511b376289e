"""GANMasker networks (unmask_jax.models.ganmasker), the shared blocks (CBAM, SE, SNConv)
and their PyTorch export: shapes, spectral-norm semantics, eval/train parity with torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unmask_jax.export import (
    build_torch_module, export_variables, import_torch_state_dict, load_torch_module)
from unmask_jax.export.keymaps import flax_to_torch, torch_target
from unmask_jax.models import MODELS, count_params, create_model
from unmask_jax.models.blocks import CBAM, SNConv, SqueezeExcitation, spectral_normalise

REL_TOL = 1e-5
SIZE = 64


def _rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _random_variables(template, seed: int):
    """Random variables like ``template`` with O(1) activations and non-trivial BN."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        shape = leaf.shape
        if name == "kernel":
            fan_in = shape[0] * shape[1] * min(shape[2], shape[3])
            v = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif name == "scale":
            v = rng.uniform(0.5, 1.5, shape)
        elif name == "var":
            v = rng.uniform(0.5, 2.0, shape)
        elif name in ("u", "v"):
            v = rng.standard_normal(shape)
            v = v / np.linalg.norm(v)
        else:  # bias, mean
            v = 0.1 * rng.standard_normal(shape)
        return jnp.asarray(v, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, template)


def _template(model, channels: int, size: int = SIZE):
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), x)


def test_registry_names():
    for name in ("ganmasker_mseg", "ganmasker_funet", "ganmasker_discriminator"):
        assert name in MODELS
    assert create_model("ganmasker_mseg", base_width=8).base_width == 8


def test_cbam_and_se_shapes():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    for module, names in ((CBAM(), {"mlp_0", "mlp_1", "spatial"}),
                          (SqueezeExcitation(reduction=4), {"fc_0", "fc_1"})):
        v = jax.jit(module.init)(jax.random.key(1), x)
        assert set(v["params"]) == names
        y = jax.jit(module.apply)(v, x)
        assert y.shape == x.shape and y.dtype == x.dtype
    v = jax.eval_shape(CBAM(reduction=16).init, jax.random.key(1), x)
    assert v["params"]["mlp_0"]["kernel"].shape == (1, 1, 32, 2)
    assert v["params"]["spatial"]["kernel"].shape == (7, 7, 2, 1)
    v = jax.eval_shape(SqueezeExcitation(reduction=4).init, jax.random.key(1), x)
    assert v["params"]["fc_0"]["kernel"].shape == (1, 1, 32, 8)


def test_spectral_norm_converges_and_collections():
    conv = SNConv(8, 3, 1, 1)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables = conv.init(jax.random.key(1), x)
    assert set(variables) == {"params", "spectral"}
    assert variables["spectral"]["u"].shape == (8,)
    assert variables["spectral"]["v"].shape == (27,)
    kernel0 = np.asarray(variables["params"]["kernel"])

    # Eval mode: no update of the vectors (and no error without mutable).
    _, upd = conv.apply(variables, x, False, mutable=["spectral"])
    np.testing.assert_array_equal(upd["spectral"]["u"], variables["spectral"]["u"])

    step = jax.jit(lambda v: conv.apply(v, x, True, mutable=["spectral"]))
    spectral = variables["spectral"]
    _, upd = step(variables)
    assert not np.allclose(upd["spectral"]["u"], spectral["u"])  # train mode updates u
    for _ in range(30):
        _, upd = step({"params": variables["params"], **upd})
    np.testing.assert_array_equal(np.asarray(variables["params"]["kernel"]), kernel0)
    w_mat = kernel0.transpose(3, 2, 0, 1).reshape(8, -1)
    normed, _, _ = spectral_normalise(jnp.asarray(w_mat), upd["spectral"]["u"],
                                      upd["spectral"]["v"], power_iterations=0, eps=1e-12)
    top = np.linalg.svd(np.asarray(normed, np.float64), compute_uv=False)[0]
    assert abs(top - 1.0) < 1e-2
    # The forward really uses kernel / sigma.
    y = conv.apply({"params": variables["params"], **upd}, x, False)
    ref = jax.lax.conv_general_dilated(
        x, jnp.asarray(normed).reshape(8, 3, 3, 3).transpose(2, 3, 1, 0), (1, 1),
        ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = ref + variables["params"]["bias"]
    assert _rel_diff(y, ref) < 1e-5


def test_spectral_train_step_matches_torch():
    """One training-mode forward: same output and same updated u, v as torch's hook."""
    model = create_model("ganmasker_discriminator", ndf=8)
    template = _template(model, 7)
    variables = _random_variables(template, seed=4)
    sd = flax_to_torch("ganmasker_discriminator", {"ndf": 8}, variables)
    target = torch_target("ganmasker_discriminator", {"ndf": 8}, variables)
    tmodule = build_torch_module(target.torch_class, target.constructor_args)
    tmodule.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                            strict=True)
    x = np.random.default_rng(5).uniform(-1, 1, (2, SIZE, SIZE, 7)).astype(np.float32)
    ours, upd = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["spectral"]))(
        variables, jnp.asarray(x))
    with torch.no_grad():
        ref = tmodule.train()(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    assert _rel_diff(ours, ref) < REL_TOL
    tsd = tmodule.state_dict()
    for k in range(5):
        for leaf in ("u", "v"):
            np.testing.assert_allclose(np.asarray(upd["spectral"][f"conv_{k}"][leaf]),
                                       tsd[f"convs.{k}.weight_{leaf}"].numpy(),
                                       rtol=1e-4, atol=1e-6)


PARITY_CASES = [
    # (model, kwargs, input channels, batch)
    ("ganmasker_mseg", {"base_width": 4, "cbam_reduction": 2}, 3, 2),
    ("ganmasker_funet", {"base_width": 4, "cbam_reduction": 2}, 4, 2),
    ("ganmasker_funet", {"base_width": 4, "final_norm": True, "dilation_rates": (2, 4),
                         "upsample": "nearest"}, 3, 1),
    ("ganmasker_discriminator", {"ndf": 4, "n_layers": 2}, 6, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("model_name,kwargs,channels,batch", PARITY_CASES)
def test_export_parity_and_import(tmp_path, model_name, kwargs, channels, batch):
    model = create_model(model_name, **kwargs)
    template = _template(model, channels)
    variables = _random_variables(template, seed=1)
    x = np.random.default_rng(2).uniform(-1, 1, (batch, SIZE, SIZE, channels)).astype(np.float32)
    if "spectral" in variables:  # a few training forwards so u, v are realistic
        train = jax.jit(lambda v: model.apply(v, jnp.asarray(x), True, mutable=["spectral"]))
        for _ in range(3):
            _, upd = train(variables)
            variables = {**variables, **upd}
    entry = export_variables("net", model_name, kwargs, variables, str(tmp_path), step=5)
    tmodule = load_torch_module(str(tmp_path), "net")  # strict=True, eval()
    if "spectral" in variables:
        assert "convs.0.weight_orig" in tmodule.state_dict()
        assert "convs.0.weight_u" in tmodule.state_dict()
    apply = jax.jit(lambda v, x: model.apply(v, x, False))
    ours = np.asarray(apply(variables, jnp.asarray(x)))
    with torch.no_grad():
        ref = tmodule(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == ref.shape
    assert np.std(ref) > 1e-3
    assert _rel_diff(ours, ref) < REL_TOL
    assert entry["constructor_args"]["input_nc"] == channels
    if model_name == "ganmasker_mseg":
        assert ours.shape == (batch, SIZE, SIZE, 1)
        assert ours.min() >= 0.0 and ours.max() <= 1.0
    if model_name == "ganmasker_funet":
        assert ours.shape == (batch, SIZE, SIZE, 3)
        assert np.abs(ours).max() <= 1.0

    # Import weights that originate in torch; round trip Flax -> torch -> Flax is exact.
    torch.manual_seed(3)  # torch's global RNG depends on which tests ran before
    fresh = build_torch_module(entry["torch_class"], entry["constructor_args"])
    if "spectral" in variables:
        # A fresh torch spectral norm has random u, v: sigma = u.Wv can be ~0 and the
        # output ~1e8, where float32 rounding alone exceeds REL_TOL. A few power
        # iterations (training forwards) give the realistic, well-conditioned case.
        with torch.no_grad():
            for _ in range(3):
                fresh.train()(_nchw(x))
    imported = import_torch_state_dict(model_name, kwargs, fresh.state_dict(), template)
    assert jax.tree_util.tree_structure(imported) == jax.tree_util.tree_structure(template)
    with torch.no_grad():
        fresh_ref = fresh.eval()(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    assert _rel_diff(apply(imported, jnp.asarray(x)), fresh_ref) < REL_TOL
    back = import_torch_state_dict(model_name, kwargs, tmodule.state_dict(), template)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mseg_output_range_train_mode():
    model = create_model("ganmasker_mseg", base_width=4)
    x = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3), minval=-1, maxval=1)
    variables = _random_variables(_template(model, 3), seed=6)
    y, upd = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]))(
        variables, x)
    assert y.shape == (2, SIZE, SIZE, 1)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert set(upd) == {"batch_stats"}
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(lambda x: model.init(jax.random.key(1), x, False),
                       jnp.zeros((1, 48, 48, 3)))


DEFAULT_COUNTS = {  # params at the default widths (256x256; counts do not depend on size)
    ("ganmasker_mseg", 3): 4_749_194,
    ("ganmasker_funet", 4): 17_511_819,
    ("ganmasker_funet", 3): 17_511_499,
    ("ganmasker_discriminator", 7): 2_768_833,
}


@pytest.mark.parametrize("model_name,channels", sorted(DEFAULT_COUNTS))
def test_default_parameter_counts(model_name, channels):
    model = create_model(model_name)
    shapes = _template(model, channels, size=256)
    counts = {k: count_params(v) for k, v in shapes.items()}
    print(f"{model_name} ({channels} input channels, 256x256): {counts}")
    assert counts["params"] == DEFAULT_COUNTS[(model_name, channels)]
