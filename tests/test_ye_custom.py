"""Tests for the Ye Train C generator (``ye_unet_c``): shapes, parameter counts, PyTorch
export parity (strict load, eval mode) and import round trip."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unmask_jax import backends
from unmask_jax.export import (
    build_torch_module, export_variables, import_torch_state_dict, keymaps, load_torch_module)
from unmask_jax.models import count_params, create_model, model_fields

REL_TOL = 1e-5
SMALL = {"ngf": 16, "dilated_channels": 64}
# At 64x64 the bottom is 2x2: five InstanceNorms over 4 pixels amplify float32 rounding, and
# PyTorch's own fp32 output is ~1e-5 (relative) from its fp64 output. There the test asks
# that this port be about as close to the fp64 reference as torch fp32 is (within 3x) and
# within REL_TOL_64 of torch fp32; REL_TOL is checked at 128x128 (4x4 bottom). Measured
# here: 64x64 ours/torch32 1.3e-5, ours/torch64 1.1e-5, torch32/torch64 7.0e-6; 128x128
# ours/torch32 4.0e-6.
REL_TOL_64 = 3e-5


def _template(kwargs: dict, size: int, channels: int = 4, batch: int = 1):
    model = create_model("ye_unet_c", **kwargs)
    x = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
    return model, jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), x)


def _random_variables(template, seed: int):
    """Random variables with O(1) activations (the N(0, 0.02) init would give ~0 output)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        shape = leaf.shape
        if path[-1].key == "kernel":
            fan_in = shape[0] * shape[1] * min(shape[2], shape[3])
            v = rng.standard_normal(shape) / np.sqrt(fan_in)
        else:
            v = 0.1 * rng.standard_normal(shape)
        return jnp.asarray(v, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, template)


def _input(batch: int, size: int) -> np.ndarray:
    """Masked-face-like input: 3 channels in [-1, 1] and a binary mask channel."""
    x = np.random.default_rng(2).uniform(-1, 1, (batch, size, size, 4)).astype(np.float32)
    x[..., 3] = (x[..., 3] > 0).astype(np.float32)
    return x


def _rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _torch_forward(module: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = module.eval()(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return y.numpy().transpose(0, 2, 3, 1)


def test_ye_unet_c_registry_fields_and_param_counts():
    fields = model_fields("ye_unet_c")
    for f in ("ngf", "dilated_channels", "dilation_rates", "se_reduction", "use_dropout",
              "dtype", "param_dtype"):
        assert f in fields
    _, default = _template({}, 256)
    assert "batch_stats" not in default  # InstanceNorm(affine=False): params only
    assert count_params(default["params"]) == 21_717_343
    _, small = _template(SMALL, 64)
    assert count_params(small["params"]) == 1_359_994
    names = sorted(default["params"])
    assert [n for n in names if n.startswith("se_")] == [
        "se_0_fc_0", "se_0_fc_1", "se_1_fc_0", "se_1_fc_1", "se_2_fc_0", "se_2_fc_1"]
    assert default["params"]["se_2_fc_0"]["kernel"].shape == (1, 1, 256, 16)  # r = 16
    assert [default["params"][f"dilated_conv_{i}"]["kernel"].shape for i in range(4)] == [
        (3, 3, 512, 256)] + [(3, 3, 256, 256)] * 3
    assert default["params"]["down_conv_0"]["kernel"].shape == (4, 4, 4, 64)
    assert default["params"]["up_conv_4"]["kernel"].shape == (4, 4, 512, 768)


def test_ye_unet_c_output_shapes_and_train_mode():
    """Output shape/dtype at the default size (traced only) and in training with dropout."""
    model, template = _template({}, 256)
    x = jax.ShapeDtypeStruct((1, 256, 256, 4), jnp.float32)
    y = jax.eval_shape(lambda v, x: model.apply(v, x, False), template, x)
    assert (y.shape, y.dtype) == ((1, 256, 256, 3), jnp.float32)
    kwargs = dict(SMALL, use_dropout=True)
    model, template = _template(kwargs, 64, batch=2)
    x = jax.ShapeDtypeStruct((2, 64, 64, 4), jnp.float32)
    y = jax.eval_shape(
        lambda v, x: model.apply(v, x, True, rngs={"dropout": jax.random.key(1)}), template, x)
    assert (y.shape, y.dtype) == ((2, 64, 64, 3), jnp.float32)
    with pytest.raises(ValueError, match="divisible by 32"):
        _template(kwargs, 48)


def test_ye_unet_c_export_parity_and_import(tmp_path):
    kwargs = dict(SMALL)
    model, template = _template(kwargs, 64, batch=2)
    variables = _random_variables(template, seed=1)
    entry = export_variables("generator", "ye_unet_c", kwargs, variables, str(tmp_path), step=5)
    assert entry["torch_class"] == "YeUnetC"
    assert entry["constructor_args"] == {
        "input_nc": 4, "output_nc": 3, "ngf": 16, "dilated_channels": 64,
        "dilation_rates": [2, 4, 8, 16], "se_reduction": 16, "use_dropout": False,
        "dropout_rate": 0.5}
    assert entry["num_parameters"] == 1_359_994
    tmodule = load_torch_module(str(tmp_path), "generator")  # strict=True, eval()
    assert not tmodule.training
    x = _input(2, 64)
    apply = jax.jit(lambda v, x: model.apply(v, x, False))
    ours = np.asarray(apply(variables, jnp.asarray(x)))
    ref = _torch_forward(tmodule, x)
    ref64 = _torch_forward(copy.deepcopy(tmodule).double(), x.astype(np.float64))
    assert ours.shape == ref.shape == (2, 64, 64, 3)
    assert np.std(ref) > 1e-3
    assert _rel_diff(ours, ref) < REL_TOL_64
    assert _rel_diff(ours, ref64) <= 3 * _rel_diff(ref, ref64)

    # Import weights that originate in PyTorch (its own init), then parity again.
    fresh = build_torch_module(entry["torch_class"], entry["constructor_args"])
    imported = import_torch_state_dict("ye_unet_c", kwargs, fresh.state_dict(), template)
    assert jax.tree_util.tree_structure(imported) == jax.tree_util.tree_structure(template)
    assert _rel_diff(apply(imported, jnp.asarray(x)), _torch_forward(fresh, x)) < REL_TOL
    # Round trip Flax -> torch -> Flax is exact.
    back = import_torch_state_dict("ye_unet_c", kwargs, tmodule.state_dict(), template)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ye_unet_c_default_torch_keys_match_flax():
    """The default (256-wide) model's state dict has exactly the torch twin's keys/shapes."""
    _, template = _template({}, 64)
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), template)
    sd = keymaps.flax_to_torch("ye_unet_c", {}, zeros)
    net = build_torch_module("YeUnetC", keymaps.torch_target("ye_unet_c", {}, zeros)
                             .constructor_args)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        k: tuple(v.shape) for k, v in net.state_dict().items()}
    with pytest.raises(keymaps.ExportError, match="unexpected key"):
        import_torch_state_dict("ye_unet_c", {}, {**sd, "extra.weight": np.zeros(1)}, template)


def test_ye_unet_c_parity_128():
    """REL_TOL parity at 128x128 (4x4 bottom); other widths, XLA's own convolutions (the
    plain forms: no backend form)."""
    kwargs = {"ngf": 8, "dilated_channels": 32, "se_reduction": 4}
    model, template = _template(kwargs, 128)
    variables = _random_variables(template, seed=4)
    sd = keymaps.flax_to_torch("ye_unet_c", kwargs, variables)
    net = build_torch_module("YeUnetC", keymaps.torch_target("ye_unet_c", kwargs, variables)
                             .constructor_args)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    x = _input(1, 128)
    with backends.use("cpu", forms="off"):
        ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, False))(variables,
                                                                         jnp.asarray(x)))
    ref = _torch_forward(net, x)
    assert np.std(ref) > 1e-3
    assert _rel_diff(ours, ref) < REL_TOL
