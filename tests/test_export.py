"""Tests for unmask_jax.export: PyTorch layouts, strict loading, eval parity, import."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unmask_jax.export import (
    ExportError,
    build_torch_module,
    export_variables,
    exportable_models,
    import_torch_state_dict,
    io,
    keymaps,
    load_torch_module,
    read_key_list,
)
from unmask_jax.export.torch_modules import NLayerDiscriminator, UnetGenerator
from unmask_jax.models import count_params, create_model

REL_TOL = 1e-5


def _template(model_name: str, kwargs: dict, channels: int, size: int):
    model = create_model(model_name, **kwargs)
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    return model, jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), x)


def _random_variables(template, seed: int):
    """Random variables shaped like ``template`` with O(1) activations and non-trivial BN."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        shape, dtype = leaf.shape, leaf.dtype
        if name == "kernel":
            fan_in = shape[0] * shape[1] * min(shape[2], shape[3])
            v = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif name == "scale":
            v = rng.uniform(0.5, 1.5, shape)
        elif name == "var":
            v = rng.uniform(0.5, 2.0, shape)
        else:  # bias, mean
            v = 0.1 * rng.standard_normal(shape)
        return jnp.asarray(v, dtype)

    return jax.tree_util.tree_map_with_path(fill, template)


def _randomize_torch_buffers(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.num_batches_tracked.fill_(7)


def _rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _torch_forward(module: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = module.eval()(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return y.numpy().transpose(0, 2, 3, 1)


PARITY_CASES = [
    # (model, kwargs, input channels, size, batch)
    ("pix2pix_unet", {"num_downs": 7, "ngf": 8}, 3, 128, 2),
    ("pix2pix_unet", {"num_downs": 6, "ngf": 8}, 4, 64, 1),
    ("pix2pix_unet", {"num_downs": 6, "ngf": 8, "norm": "instance"}, 3, 64, 2),
    ("patchgan", {"ndf": 16}, 6, 64, 2),
    ("patchgan", {"ndf": 8, "n_layers": 2}, 7, 64, 1),
    ("tf_pix2pix_unet", {"num_downs": 7, "ngf": 8}, 3, 128, 2),
    ("tf_patchgan", {"ndf": 16}, 6, 64, 2),
]


@pytest.mark.slow
@pytest.mark.parametrize("model_name,kwargs,channels,size,batch", PARITY_CASES)
def test_export_parity_and_import(tmp_path, model_name, kwargs, channels, size, batch):
    model, template = _template(model_name, kwargs, channels, size)
    variables = _random_variables(template, seed=1)
    entry = export_variables("net", model_name, kwargs, variables, str(tmp_path), step=123,
                             config_json={"name": "test"})
    tmodule = load_torch_module(str(tmp_path), "net")  # strict=True
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, False))
    ours = np.asarray(apply(variables, jnp.asarray(x)))
    ref = _torch_forward(tmodule, x)
    assert ours.shape == ref.shape
    assert np.std(ref) > 1e-3
    assert _rel_diff(ours, ref) < REL_TOL
    assert entry["constructor_args"]["input_nc"] == channels
    if "running_mean" in str(list(tmodule.state_dict())):
        nbt = [v for k, v in tmodule.state_dict().items() if k.endswith("num_batches_tracked")]
        assert all(int(v) == 123 for v in nbt)

    # Import: weights that originate in PyTorch (fresh torch init + random BN buffers).
    fresh = build_torch_module(entry["torch_class"], entry["constructor_args"])
    _randomize_torch_buffers(fresh, seed=3)
    imported = import_torch_state_dict(model_name, kwargs, fresh.state_dict(), template)
    assert jax.tree_util.tree_structure(imported) == jax.tree_util.tree_structure(template)
    ours = np.asarray(apply(imported, jnp.asarray(x)))
    assert _rel_diff(ours, _torch_forward(fresh, x)) < REL_TOL
    # Round trip Flax -> torch -> Flax is exact.
    back = import_torch_state_dict(model_name, kwargs, tmodule.state_dict(), template)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_unet256_canonical_layout_and_parity(tmp_path):
    """The full unet_256 / 70x70 PatchGAN: exact canonical keys, strict load, parity."""
    model, template = _template("pix2pix_unet", {}, 3, 256)
    variables = _random_variables(template, seed=5)
    export_variables("generator", "pix2pix_unet", {}, variables, str(tmp_path), step=10,
                     config_json=None)
    sd = io.load_state_dict(os.path.join(tmp_path, "generator.safetensors"))
    assert sorted((k, tuple(v.shape)) for k, v in sd.items()) == sorted(
        read_key_list("pix2pix_unet256_generator"))
    net = UnetGenerator(3, 3, 8, ngf=64, norm_layer=torch.nn.BatchNorm2d, use_dropout=True)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    x = np.random.default_rng(6).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, False))(variables, jnp.asarray(x)))
    ref = _torch_forward(net, x)
    assert np.std(ref) > 1e-3
    assert _rel_diff(ours, ref) < REL_TOL

    # 4-channel generator: the canonical keys with a (64, 4, 4, 4) first kernel.
    _, g4 = _template("pix2pix_unet", {}, 4, 256)
    g4_sd = keymaps.flax_to_torch("pix2pix_unet", {}, _zeros(g4))
    expected = {k: s for k, s in read_key_list("pix2pix_unet256_generator")}
    expected["model.model.0.weight"] = (64, 4, 4, 4)
    assert {k: tuple(v.shape) for k, v in g4_sd.items()} == expected

    for channels, key_file in [(6, "pix2pix_patchgan_discriminator"), (7, None)]:
        _, d_template = _template("patchgan", {}, channels, 256)
        d_sd = keymaps.flax_to_torch("patchgan", {}, _zeros(d_template))
        net_d = NLayerDiscriminator(channels, 64, 3)
        net_d.load_state_dict({k: torch.from_numpy(v) for k, v in d_sd.items()}, strict=True)
        if key_file:
            assert sorted((k, tuple(v.shape)) for k, v in d_sd.items()) == sorted(
                read_key_list(key_file))


def _zeros(template):
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template)


@pytest.mark.parametrize("model_name,kwargs,channels,size,batch", [
    ("pix2pix_unet", {"num_downs": 6, "ngf": 8, "use_dropout": False}, 4, 64, 2),
    # Batch 1: the TF generator's innermost BN sees one value per channel (Keras rule).
    ("tf_pix2pix_unet", {"num_downs": 6, "ngf": 8, "use_dropout": False}, 3, 64, 1),
    ("patchgan", {"ndf": 8}, 6, 64, 2),
])
def test_train_mode_parity_and_running_stats(model_name, kwargs, channels, size, batch):
    """Train-mode BN: same outputs and same running-statistics updates as PyTorch."""
    model, template = _template(model_name, kwargs, channels, size)
    variables = _random_variables(template, seed=8)
    target = keymaps.torch_target(model_name, kwargs, variables)
    tmodule = build_torch_module(target.torch_class, target.constructor_args)
    tmodule.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                             keymaps.flax_to_torch(model_name, kwargs, variables).items()})
    x = np.random.default_rng(9).uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)
    ours, updates = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]))(
        variables, jnp.asarray(x))
    tmodule.train()
    with torch.no_grad():
        ref = tmodule(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert _rel_diff(ours, ref.transpose(0, 2, 3, 1)) < 1e-4
    updated = keymaps.flax_to_torch(model_name, kwargs,
                                    {"params": variables["params"], **updates})
    torch_sd = tmodule.state_dict()
    stats = [k for k in updated if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k in stats:
        np.testing.assert_allclose(updated[k], torch_sd[k].numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=k)


def test_manifest_pt_and_4ch_constructor(tmp_path):
    g_kwargs = {"num_downs": 8, "ngf": 8}
    _, template = _template("pix2pix_unet", g_kwargs, 4, 256)
    entry = export_variables("generator", "pix2pix_unet", g_kwargs, _zeros(template),
                             str(tmp_path), step=50_000, config_json={"lr": 2e-4},
                             write_pt=True)
    _, d_template = _template("patchgan", {"ndf": 8}, 7, 256)
    export_variables("discriminator", "patchgan", {"ndf": 8}, _zeros(d_template),
                     str(tmp_path), step=50_000, config_json={"lr": 2e-4})
    with open(tmp_path / "manifest.json") as f:
        manifest = json.load(f)
    assert set(manifest["networks"]) == {"generator", "discriminator"}
    g = manifest["networks"]["generator"]
    assert g == json.loads(json.dumps(entry))
    assert g["torch_class"] == "UnetGenerator"
    assert g["constructor_args"] == {"input_nc": 4, "output_nc": 3, "num_downs": 8, "ngf": 8,
                                     "norm_layer": "BatchNorm2d", "use_dropout": True}
    assert g["step"] == 50_000 and g["config"] == {"lr": 2e-4}
    assert g["files"] == {"safetensors": "generator.safetensors", "pt": "generator.pt"}
    assert g["num_parameters"] == count_params(template["params"])
    d = manifest["networks"]["discriminator"]
    assert d["num_parameters"] == count_params(d_template["params"])
    assert d["constructor_args"] == {"input_nc": 7, "ndf": 8, "n_layers": 3,
                                     "norm_layer": "BatchNorm2d"}
    # The .pt file holds the same tensors as the .safetensors file.
    st = io.load_state_dict(str(tmp_path / "generator.safetensors"))
    pt = io.load_state_dict(str(tmp_path / "generator.pt"))
    assert sorted(st) == sorted(pt)
    assert all(np.array_equal(st[k], pt[k]) and st[k].dtype == pt[k].dtype for k in st)
    nbt = st["model.model.1.model.2.num_batches_tracked"]
    assert nbt.dtype == np.int64 and nbt.shape == () and int(nbt) == 50_000
    # Both load strictly into the canonical constructors.
    load_torch_module(str(tmp_path), "generator")
    load_torch_module(str(tmp_path), "discriminator")


def test_bfloat16_variables_export_as_float32(tmp_path):
    kwargs = {"ndf": 8, "n_layers": 2, "dtype": jnp.bfloat16, "param_dtype": jnp.bfloat16}
    _, template = _template("patchgan", kwargs, 6, 32)
    assert template["params"]["conv_0"]["kernel"].dtype == jnp.bfloat16
    variables = _random_variables(template, seed=0)
    entry = export_variables("d", "patchgan", kwargs, variables, str(tmp_path), step=1)
    sd = io.load_state_dict(str(tmp_path / "d.safetensors"))
    assert all(v.dtype == np.float32 for k, v in sd.items() if "num_batches" not in k)
    np.testing.assert_array_equal(
        sd["model.0.weight"],
        np.asarray(variables["params"]["conv_0"]["kernel"]).astype(np.float32).transpose(
            3, 2, 0, 1))
    assert entry["flax_model_kwargs"]["dtype"] == "bfloat16"
    load_torch_module(str(tmp_path), "d")


def test_errors_name_the_problem(tmp_path):
    assert exportable_models() == ["ganmasker_discriminator", "ganmasker_funet", "ganmasker_mseg",
                                   "patchgan", "pix2pix_unet", "tf_patchgan", "tf_pix2pix_unet",
                                   "unveilify_discriminator", "unveilify_generator",
                                   "unveilify_mask_remover", "unveilify_psp", "ye_unet_c"]
    _, template = _template("patchgan", {"ndf": 8}, 6, 32)
    variables = _random_variables(template, seed=0)
    with pytest.raises(ExportError, match="no PyTorch export mapping.*exportable"):
        export_variables("x", "no_such_model", {}, variables, str(tmp_path), step=0)
    sd = keymaps.flax_to_torch("patchgan", {}, variables)
    bad = dict(sd)
    bad["model.2.weight"] = np.zeros((3, 3, 4, 4), np.float32)
    with pytest.raises(ExportError, match=r"model\.2\.weight"):
        import_torch_state_dict("patchgan", {}, bad, template)
    missing = {k: v for k, v in sd.items() if k != "model.3.running_var"}
    with pytest.raises(ExportError, match=r"model\.3\.running_var"):
        import_torch_state_dict("patchgan", {}, missing, template)
    with pytest.raises(ExportError, match=r"model\.99\.weight"):
        import_torch_state_dict("patchgan", {}, {**sd, "model.99.weight": np.zeros(1)}, template)
    with pytest.raises(ExportError, match="n_layers"):
        export_variables("x", "patchgan", {"n_layers": 2}, variables, str(tmp_path), step=0)
    with pytest.raises(ExportError, match="bn_epsilon"):
        export_variables("x", "patchgan", {"bn_epsilon": 1e-3}, variables, str(tmp_path), step=0)
    # Strict loading into a wrongly configured torch module fails loudly.
    with pytest.raises(RuntimeError):
        NLayerDiscriminator(7, 8, 3).load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
