"""ArcFace backbones: converter round trips from torch state dicts, full-net structure."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import torch

from unmask_jax.features import arcface, weights
from unmask_jax.features import torch_reference as tr

SMALL_IRSE_UNITS = ((64, 64, 2), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 512, 2))


def _compare(torch_model, flax_model, variables, size=32, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out = np.asarray(jax.jit(flax_model.apply)(variables, jnp.asarray(x)))
    assert out.shape == ref.shape == (2, 512)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def test_iresnet_round_trip_reduced_depth():
    # Same code path as IResNet-50/100 (downsample blocks, non-first blocks, NCHW flatten of a
    # 2x2 map, features BN1d); fewer blocks and a 32x32 input keep it cheap.
    tm = tr.randomize_(tr.TorchIResNet((1, 2, 1, 1), input_size=32), seed=1)
    fm = arcface.IResNet((1, 2, 1, 1))
    variables = weights.convert_arcface(tm.state_dict(), "arcface_iresnet50", fm, 32)
    assert _compare(tm, fm, variables) < 1e-5


def test_irse_round_trip_reduced_depth():
    tm = tr.randomize_(tr.TorchIRSE(units=SMALL_IRSE_UNITS, input_size=32), seed=2)
    fm = arcface.IRSE(units=SMALL_IRSE_UNITS)
    variables = weights.convert_arcface(tm.state_dict(), "irse50", fm, 32)
    assert _compare(tm, fm, variables) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("kind,n_params,torch_layers", [
    ("arcface_iresnet50", 43_590_848, (3, 4, 14, 3)),
    ("arcface_iresnet100", 65_156_160, (3, 13, 30, 3)),
    ("irse50", 43_797_696, None),
])
def test_full_net_keys_shapes_and_counts(kind, n_params, torch_layers):
    module = arcface.make_arcface(kind)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 112, 112, 3), jnp.float32))
    assert sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes["params"])) \
        == n_params
    out = jax.eval_shape(module.apply, shapes, jax.ShapeDtypeStruct((2, 112, 112, 3),
                                                                    jnp.float32))
    assert out.shape == (2, 512)
    with torch.device("meta"):
        twin = tr.TorchIResNet(torch_layers) if torch_layers else tr.TorchIRSE(50)
    expected = {k: tuple(v.shape) for k, v in twin.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert weights.arcface_torch_shapes(kind) == expected


def test_converter_rejects_mismatched_checkpoints():
    tm = tr.TorchIResNet((1, 1, 1, 1), input_size=32)
    fm = arcface.IResNet((1, 1, 1, 1))
    sd = dict(tm.state_dict())
    extra = dict(sd, **{"layer1.0.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="not used"):
        weights.convert_arcface(extra, "arcface_iresnet50", fm, 32)
    missing = {k: v for k, v in sd.items() if k != "prelu.weight"}
    with pytest.raises(KeyError, match="prelu.weight"):
        weights.convert_arcface(missing, "arcface_iresnet50", fm, 32)
    # A DataParallel 'module.' prefix is accepted.
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    weights.convert_arcface(prefixed, "arcface_iresnet50", fm, 32)


@pytest.mark.parametrize("suffix", [".msgpack", ".npz"])
def test_save_load_round_trip(tmp_path, suffix):
    variables = {"params": {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
                 "batch_stats": {"bn": {"mean": np.ones(3, np.float32)}}}
    path = tmp_path / f"w{suffix}"
    weights.save_variables(path, variables)
    back = weights.load_variables(path)
    np.testing.assert_array_equal(back["params"]["a"]["kernel"], variables["params"]["a"]["kernel"])
    np.testing.assert_array_equal(back["batch_stats"]["bn"]["mean"], np.ones(3))


def test_missing_weights_message_names_file_and_converter(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.resolve_converted("irse50")
    msg = str(err.value)
    assert str(tmp_path / "irse50.msgpack") in msg
    assert "python -m unmask_jax.features convert --kind=irse50" in msg
    from unmask_jax.features import identity

    with pytest.raises(weights.MissingWeightsError):
        identity.load_identity_net("arcface_iresnet100")


@pytest.mark.slow
def test_convert_command_end_to_end(tmp_path):
    """The CLI converts a full-size pSp-layout checkpoint built here, loadable by IRSE(50)."""
    from unmask_jax.features.__main__ import main

    twin = tr.TorchIRSE(50)
    torch.save(twin.state_dict(), tmp_path / "model_ir_se50.pth")
    dst = tmp_path / "irse50.msgpack"
    assert main(["convert", "--kind=irse50", f"--src={tmp_path / 'model_ir_se50.pth'}",
                 f"--dst={dst}"]) == 0
    loaded = weights.load_variables(dst)
    np.testing.assert_array_equal(
        loaded["params"]["body_23"]["res_conv2"]["kernel"],
        twin.state_dict()["body.23.res_layer.3.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["batch_stats"]["output_bn1d"]["var"],
                                  twin.state_dict()["output_layer.4.running_var"].numpy())
    assert set(loaded) == {"params", "batch_stats"}
