"""dlib serialisation reader and the Flax dlib face-recognition ResNet (parity with dlib)."""

import dlib
import jax
import numpy as np
import pytest

from unmask_jax.features import dlib_serialize as ds
from unmask_jax.features import weights


def test_integer_float_string_round_trip():
    for v in (0, 1, -1, 127, 255, 256, -70000, 2**40 + 3):
        assert ds.DlibReader(ds.pack_int(v)).int() == v
    # Control byte: bit 7 = sign, low 4 bits = byte count, bytes little endian.
    assert ds.pack_int(-258) == bytes([0x82, 0x02, 0x01])
    for v in (0.04, 0.6, -122.782, 1e-30, 3.0):
        assert ds.DlibReader(ds.pack_float(v)).float() == pytest.approx(v, rel=1e-15)
    assert ds.DlibReader(ds.pack_string("con_4")).string() == "con_4"
    r = ds.DlibReader(b"10")
    assert r.bool() is True and r.bool() is False


@pytest.mark.parametrize("version", [1, 2])
def test_tensor_versions(version):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7.0 - 1.0
    out = ds.DlibReader(ds.pack_tensor(arr, version)).tensor()
    np.testing.assert_array_equal(out, arr)


def test_truncated_and_bad_data_raise():
    with pytest.raises(ds.DlibFormatError):
        ds.DlibReader(ds.pack_int(300)[:-1]).int()
    with pytest.raises(ds.DlibFormatError):
        ds.read_dlib_network(ds.pack_int(1) + ds.pack_string("loss_mmod_"))


def test_marker_roles_patterns_and_rejection():
    from unmask_jax.features.dlib_resnet import _marker_roles

    L = ds.DlibLayer
    ident = [L("marker"), L("con"), L("add_prev")]
    down = [L("marker"), L("con"), L("marker"), L("marker"), L("avg_pool"), L("add_prev")]
    roles = _marker_roles(ident + down)
    assert roles[0] == ("save", "x") and roles[2] == ("add", "x")
    assert [roles[i] for i in (3, 5, 6, 8)] == [("save", "x"), ("save", "y"),
                                                 ("restore", "x"), ("add", "y")]
    with pytest.raises(ds.DlibFormatError):
        _marker_roles([L("marker"), L("marker"), L("con"), L("add_prev")])


@pytest.fixture(scope="module")
def real_layers():
    return ds.read_dlib_network_file(str(weights.dlib_face_model_path()))


def test_real_file_structure(real_layers):
    kinds = [layer.kind for layer in real_layers]
    assert kinds[0] == "input_rgb_image_sized" and kinds[-1] == "loss_metric"
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14
    assert kinds.count("marker") == 22
    inp = real_layers[0].fields
    assert (inp["nr"], inp["nc"]) == (150, 150)
    np.testing.assert_allclose([inp["avg_red"], inp["avg_green"], inp["avg_blue"]],
                               [122.782, 117.001, 104.298], atol=1e-4)
    stem = real_layers[1]
    assert stem.arrays["filters"].shape == (32, 3, 7, 7)
    assert (stem.fields["stride_y"], stem.fields["padding_y"]) == (2, 0)
    fc = real_layers[-2]
    assert fc.kind == "fc" and fc.arrays["weights"].shape == (256, 128)
    assert "biases" not in fc.arrays


def _smooth_chip(seed: int) -> np.ndarray:
    """A smooth random 150x150 RGB chip (bicubic upsampling of 10x10 noise)."""
    from PIL import Image

    z = np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(z).resize((150, 150), Image.BICUBIC))


def test_parity_with_dlib_compute_face_descriptor(real_layers):
    from unmask_jax.features.dlib_resnet import DlibResNet, build_dlib_net

    spec, params = build_dlib_net(real_layers)
    apply = jax.jit(DlibResNet(spec).apply)
    rec = dlib.face_recognition_model_v1(str(weights.dlib_face_model_path()))
    chips = [_smooth_chip(0), _smooth_chip(1)]
    ours = np.asarray(apply({"params": params},
                            np.stack(chips).astype(np.float32) / 127.5 - 1.0))
    assert ours.shape == (2, 128)
    for chip, emb in zip(chips, ours):
        ref = np.asarray(rec.compute_face_descriptor(chip))
        cos = emb @ ref / np.linalg.norm(emb) / np.linalg.norm(ref)
        assert cos >= 0.999
        assert np.abs(emb - ref).max() < 1e-4  # measured 2e-7 .. 4e-7
    # Different chips give clearly different descriptors (the test can fail).
    assert np.linalg.norm(ours[0] - ours[1]) > 0.05
