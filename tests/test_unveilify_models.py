"""UnVeilify networks: reference parameter counts and state-dict layout at 256^2 (shapes
only), eval-mode parity with the PyTorch twins on a reduced configuration, both conversion
directions, the three-network and the one-MaskRemover export, and the IR-SE50 -> pSp copy.

CPU cost is kept low: full-size checks use ``jax.eval_shape`` (and torch's meta device);
the numerical parity runs a 32^2, narrow configuration through one jitted function.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import torch
from flax import traverse_util

from unmask_jax import export
from unmask_jax.export import keymaps, torch_unveilify as tu, unveilify as ux
from unmask_jax.features import arcface
from unmask_jax.models import count_params, create_model
from unmask_jax.models.irse import irse_units
from unmask_jax.models.unveilify import n_styles_for, psp_variables_from_irse

S = jax.ShapeDtypeStruct
F32 = jnp.float32

# Reduced configuration for the numerical checks (same code paths as the reference: every
# style group, both lateral layers, stride-2 and stride-1 IR-SE units, 3 decoder stages).
RES = 32
SMALL = dict(resolution=RES, latent_dim=16, psp_blocks=(1, 2, 1, 1), psp_width_div=4,
             generator_width_div=8)
NDF = 8


def _shapes(module, *inputs):
    return jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, False), *inputs)


def _random_variables(template, seed):
    """Random values in a variables template: N(0, 1) raw equalized weights, small biases,
    non-trivial BatchNorm statistics, mix weights in (0.3, 0.7), the fixed blur kernel."""
    rng = np.random.default_rng(seed)
    out = {}
    for collection, tree in template.items():
        flat = {}
        for path, s in traverse_util.flatten_dict(tree).items():
            leaf, shape = path[-1], s.shape
            if leaf == "smooth_kernel":
                k = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32)
                v = k / k.sum()
            elif leaf == "mean":
                v = rng.normal(0, 0.2, shape)
            elif leaf == "var":
                v = rng.uniform(0.5, 1.5, shape)
            elif leaf == "scale":
                v = rng.normal(1.0, 0.1, shape)
            elif leaf == "a":
                v = rng.uniform(0.3, 0.7, shape)
            elif leaf == "weight":  # PReLU
                v = rng.uniform(0.1, 0.4, shape)
            elif leaf == "bias":
                v = rng.normal(0, 0.1, shape)
            elif len(shape) >= 2 and ("modulated_conv" in path or "to_style" in path):
                v = rng.normal(0, 1, shape)  # equalized: raw N(0, 1)
            else:
                fan_in = int(np.prod(shape[:-1]))
                v = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            flat[path] = np.asarray(v, np.float32)
        out[collection] = traverse_util.unflatten_dict(flat)
    return out


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _load(target, state_dict):
    module = export.build_torch_module(target.torch_class, target.constructor_args,
                                       target.module)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                           strict=True)
    return module.eval()


# ----------------------------------------------------------------------------------------
# Full size: counts and layout, no arrays.
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_templates():
    x, w = S((1, 256, 256, 3), F32), S((1, 14, 512), F32)
    return {
        "psp": _shapes(create_model("unveilify_psp"), x),
        "generator": _shapes(create_model("unveilify_generator"), x, w),
        "discriminator": _shapes(create_model("unveilify_discriminator"), x, x),
        "mask_remover": _shapes(create_model("unveilify_mask_remover"), x, x),
    }


@pytest.mark.slow
def test_reference_parameter_counts(full_templates):
    counts = {k: count_params(v["params"]) for k, v in full_templates.items()}
    assert counts == {"psp": 176_474_816, "generator": 16_043_425,
                      "discriminator": 2_767_808, "mask_remover": 192_518_241}
    assert n_styles_for(256) == 14


def test_full_size_output_shapes(full_templates):
    x = S((2, 256, 256, 3), F32)
    w = jax.eval_shape(lambda v, i: create_model("unveilify_psp").apply(v, i, False),
                       full_templates["psp"], x)
    assert w.shape == (2, 14, 512)
    y = jax.eval_shape(lambda v, m, s: create_model("unveilify_generator").apply(v, m, s, False),
                       full_templates["generator"], x, w)
    assert y.shape == (2, 256, 256, 3)
    d = jax.eval_shape(
        lambda v, a, b: create_model("unveilify_discriminator").apply(v, a, b, False),
        full_templates["discriminator"], x, x)
    assert d.shape == (2, 16, 16, 1)


def test_full_size_state_dict_layout_is_the_reference(full_templates):
    ref_mr = export.read_key_list("unveilify_mask_remover")
    ref_d = export.read_key_list("unveilify_discriminator")
    # Flax -> torch keys / shapes, in both the one-network and the three-network form.
    assert ux.mask_remover_torch_shapes(full_templates["mask_remover"]) == dict(ref_mr)
    split = {f"psp_encoder.{k}": v for k, v in
             ux.torch_shapes(ux.PSP, full_templates["psp"]).items()}
    split.update({f"generator.{k}": v for k, v in
                  ux.torch_shapes(ux.GENERATOR, full_templates["generator"]).items()})
    assert split == dict(ref_mr)
    assert ux.torch_shapes(ux.DISCRIMINATOR, full_templates["discriminator"]) == dict(ref_d)
    # The torch twins at their defaults: same keys, same order, same shapes.
    with torch.device("meta"):
        mr, d = tu.MaskRemover(), tu.Discriminator()
    assert [(k, tuple(v.shape)) for k, v in mr.state_dict().items()] == ref_mr
    assert [(k, tuple(v.shape)) for k, v in d.state_dict().items()] == ref_d
    assert sum(p.numel() for p in mr.generator.parameters()) == 16_043_425
    assert sum(p.numel() for p in mr.psp_encoder.parameters()) == 176_474_816
    assert sum(p.numel() for p in d.parameters()) == 2_767_808
    # Targets of the exported reference configuration.
    target = keymaps.torch_target("unveilify_mask_remover", {}, full_templates["mask_remover"])
    assert (target.torch_class, target.constructor_args) == (
        "MaskRemover", {"output_resolution": 256, "latent_dim": 512,
                        "generator_arch": "UNetStyleGAN"})


# ----------------------------------------------------------------------------------------
# Numerical parity (reduced configuration).
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    masked = rng.normal(size=(2, RES, RES, 3)).astype(np.float32)
    identity = rng.normal(size=(2, RES, RES, 3)).astype(np.float32)
    mr = create_model("unveilify_mask_remover", **SMALL)
    disc = create_model("unveilify_discriminator", ndf=NDF)
    v_mr = _random_variables(_shapes(mr, masked, identity), 1)
    v_d = _random_variables(_shapes(disc, masked, identity), 2)
    psp, gen = mr.parts()

    @jax.jit
    def run(v_mr, v_d, masked, identity):
        # = mr.apply(v_mr, masked, identity, False), with w kept.
        w = psp.apply({c: t["psp_encoder"] for c, t in v_mr.items()}, identity, False)
        out = gen.apply({c: t["generator"] for c, t in v_mr.items()}, masked, w, False)
        return w, out, disc.apply(v_d, out, identity, False)

    w, out, logits = run(v_mr, v_d, masked, identity)
    return dict(mr=mr, disc=disc, psp=psp, gen=gen, v_mr=v_mr, v_d=v_d, masked=masked,
                identity=identity, w=np.asarray(w), out=np.asarray(out),
                logits=np.asarray(logits))


@pytest.mark.slow
def test_eval_parity_with_torch_twins(small):
    sd = keymaps.flax_to_torch("unveilify_mask_remover", SMALL, small["v_mr"],
                               num_batches_tracked=5)
    tm = _load(keymaps.torch_target("unveilify_mask_remover", SMALL, small["v_mr"]), sd)
    sd_d = keymaps.flax_to_torch("unveilify_discriminator", {"ndf": NDF}, small["v_d"])
    td = _load(keymaps.torch_target("unveilify_discriminator", {"ndf": NDF}, small["v_d"]),
               sd_d)
    with torch.no_grad():
        w_ref = tm.psp_encoder(_nchw(small["identity"])).numpy()
        out_ref = tm(_nchw(small["masked"]), _nchw(small["identity"])).numpy()
        prob_ref = td(_nchw(small["out"]), _nchw(small["identity"])).numpy()
    assert small["w"].shape == w_ref.shape == (2, n_styles_for(RES), SMALL["latent_dim"])
    assert _rel(small["w"], w_ref) < 1e-5
    assert small["out"].shape == (2, RES, RES, 3)
    assert _rel(small["out"], out_ref.transpose(0, 2, 3, 1)) < 1e-5
    prob = 1.0 / (1.0 + np.exp(-small["logits"]))
    assert small["logits"].shape == (2, RES // 16, RES // 16, 1)
    assert _rel(prob, prob_ref.transpose(0, 2, 3, 1)) < 1e-5
    assert int(sd["psp_encoder.input_layer.1.num_batches_tracked"]) == 5


def test_three_network_export_matches_the_mask_remover(small):
    """pSp + generator as separate Flax networks -> the same MaskRemover state dict, and
    each alone loads strictly into its torch twin."""
    parts = {"psp": {c: t["psp_encoder"] for c, t in small["v_mr"].items()},
             "generator": {c: t["generator"] for c, t in small["v_mr"].items()},
             "discriminator": small["v_d"]}
    sds = ux.export_unveilify(parts)
    assert set(sds) == {"mask_remover", "discriminator"}
    whole = keymaps.flax_to_torch("unveilify_mask_remover", SMALL, small["v_mr"])
    assert sds["mask_remover"].keys() == whole.keys()
    assert all(np.array_equal(sds["mask_remover"][k], whole[k]) for k in whole)
    for name, model, kwargs in (("psp", ux.PSP, small["mr"].psp_kwargs()),
                                ("generator", ux.GENERATOR, small["mr"].generator_kwargs())):
        kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
        target = keymaps.torch_target(model, kwargs, parts[name])
        _load(target, keymaps.flax_to_torch(model, kwargs, parts[name]))
    # The combined network is recognised too.
    again = ux.export_unveilify({"generator": small["v_mr"], "discriminator": small["v_d"]})
    assert again["mask_remover"].keys() == whole.keys()


def test_import_round_trip_from_torch(small):
    """torch state dict (the twin's own init + random BN statistics) -> Flax -> torch is
    the identity, for the one-network and the three-network forms."""
    torch.manual_seed(0)
    tm = _load(keymaps.torch_target("unveilify_mask_remover", SMALL, small["v_mr"]),
               keymaps.flax_to_torch("unveilify_mask_remover", SMALL, small["v_mr"]))
    for name, buf in tm.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_(0, 0.2)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
    sd = {k: v.clone() for k, v in tm.state_dict().items()}
    flax_vars = export.import_torch_state_dict("unveilify_mask_remover", SMALL, sd,
                                               small["v_mr"])
    assert jax.tree_util.tree_structure(flax_vars) == jax.tree_util.tree_structure(
        small["v_mr"])
    back = keymaps.flax_to_torch("unveilify_mask_remover", SMALL, flax_vars)
    assert back.keys() == sd.keys()
    for k, v in sd.items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
    templates = {"psp_encoder": {c: t["psp_encoder"] for c, t in small["v_mr"].items()},
                 "generator": {c: t["generator"] for c, t in small["v_mr"].items()},
                 "discriminator": small["v_d"]}
    d_sd = keymaps.flax_to_torch("unveilify_discriminator", {}, small["v_d"])
    split = ux.import_unveilify({"mask_remover": sd, "discriminator": d_sd}, templates)
    for part in ("psp_encoder", "generator"):
        for c in flax_vars:
            jax.tree_util.tree_map(np.testing.assert_array_equal, split[part][c],
                                   flax_vars[c][part])
    jax.tree_util.tree_map(np.testing.assert_array_equal, split["discriminator"], small["v_d"])


def test_import_rejects_mismatches(small):
    sd = keymaps.flax_to_torch("unveilify_mask_remover", SMALL, small["v_mr"])
    name = "unveilify_mask_remover"
    missing = {k: v for k, v in sd.items() if k != "generator.first_style_block.weights"}
    with pytest.raises(export.ExportError, match="first_style_block.weights"):
        keymaps.torch_to_flax(name, SMALL, missing, small["v_mr"])
    extra = dict(sd, **{"generator.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(export.ExportError, match="unexpected"):
        keymaps.torch_to_flax(name, SMALL, extra, small["v_mr"])
    key = "psp_encoder.latlayer1.weight"
    bad = dict(sd, **{key: np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(export.ExportError, match="shape mismatch"):
        keymaps.torch_to_flax(name, SMALL, bad, small["v_mr"])
    blur = dict(sd, **{"generator.upsample.smooth.kernel": np.ones((1, 1, 3, 3), np.float32)})
    with pytest.raises(export.ExportError, match="blur"):
        keymaps.torch_to_flax(name, SMALL, blur, small["v_mr"])


def test_export_files_load_strictly(small, tmp_path):
    entry = export.export_variables("generator", "unveilify_mask_remover", SMALL,
                                    small["v_mr"], str(tmp_path), step=3)
    export.export_variables("discriminator", "unveilify_discriminator", {"ndf": NDF},
                            small["v_d"], str(tmp_path), step=3)
    assert entry["torch_class"] == "MaskRemover"
    assert entry["torch_module"] == "unmask_jax.export.torch_unveilify"
    tm = export.load_torch_module(str(tmp_path), "generator")  # strict=True, eval()
    td = export.load_torch_module(str(tmp_path), "discriminator")
    with torch.no_grad():
        out = tm(_nchw(small["masked"]), _nchw(small["identity"])).numpy()
        prob = td(_nchw(small["out"]), _nchw(small["identity"])).numpy()
    assert _rel(small["out"], out.transpose(0, 2, 3, 1)) < 1e-5
    assert _rel(1 / (1 + np.exp(-small["logits"])), prob.transpose(0, 2, 3, 1)) < 1e-5


# ----------------------------------------------------------------------------------------
# IR-SE50 -> pSp initialisation.
# ----------------------------------------------------------------------------------------


def test_psp_variables_from_irse():
    blocks = (1, 1, 2, 1)
    psp = create_model("unveilify_psp", blocks=blocks, n_styles=4, input_resolution=32,
                       latent_dim=8)
    irse = arcface.IRSE(units=irse_units(blocks=blocks))
    p_vars = _random_variables(_shapes(psp, S((1, 32, 32, 3), F32)), 3)
    i_vars = _random_variables(jax.eval_shape(
        lambda: irse.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), False)), 4)
    out = psp_variables_from_irse(p_vars, i_vars)
    for c in ("params", "batch_stats"):
        for name, tree in out[c].items():
            src = i_vars[c] if name.startswith(("input_", "body_")) else p_vars[c]
            jax.tree_util.tree_map(np.testing.assert_array_equal, tree, src[name])
    assert "output_fc" not in out["params"]
    # The inputs are not modified.
    assert not np.array_equal(p_vars["params"]["body_0"]["res_conv1"]["kernel"],
                              i_vars["params"]["body_0"]["res_conv1"]["kernel"])
    deeper = arcface.IRSE(units=irse_units(blocks=(1, 1, 3, 1)))
    d_vars = jax.eval_shape(lambda: deeper.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                False))
    with pytest.raises(ValueError, match="body units"):
        psp_variables_from_irse(p_vars, d_vars)
    narrow = create_model("unveilify_psp", blocks=blocks, widths=(64, 128, 128, 512),
                          n_styles=4, input_resolution=32, latent_dim=8)
    n_vars = _random_variables(_shapes(narrow, S((1, 32, 32, 3), F32)), 5)
    with pytest.raises(ValueError, match="differs"):
        psp_variables_from_irse(n_vars, i_vars)


def test_bad_inputs_are_rejected():
    psp = create_model("unveilify_psp", blocks=(1, 1, 1, 1), n_styles=8, input_resolution=32)
    with pytest.raises(ValueError, match="32"):
        _shapes(psp, S((1, 64, 64, 3), F32))
    gen = create_model("unveilify_generator", resolution=32, latent_dim=16)
    with pytest.raises(ValueError, match="w must be"):
        _shapes(gen, S((1, 32, 32, 3), F32), S((1, 2, 16), F32))
    with pytest.raises(TypeError, match="accepted"):
        create_model("unveilify_discriminator", norm="batch")
