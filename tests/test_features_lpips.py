"""LPIPS: shipped weights equal the reference package's, values match a reference, jit."""

import hashlib

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from unmask_jax.features import lpips as lpips_lib
from unmask_jax.features import weights

# sha256 (first 16 hex digits) of the float32 bytes of lin0..lin4 in the reference PyPI
# ``lpips`` 0.1.4 wheel, lpips/weights/v0.1/{alex,vgg}.pth, key linK.model.1.weight.
REFERENCE_LIN_SHA = {
    "alex": ["1b21ee01e0de563a", "96b20e99719b4f1a", "ba5d4595d966dde9",
             "51c7dbf1c5c1e31d", "60b6388e7b80292d"],
    "vgg16": ["b4ee423bb7c8ef01", "7fd9e5e5d8d68cc0", "63d06a086d0592f7",
              "16246e8056f57bc5", "3735a0ea893525bd"],
}
# LPIPS of the pair below, measured once by running the reference ``lpips`` 0.1.4 package
# code (LPIPS(net=..., version='0.1'), its own lin weights) with torchvision replaced by a
# stub holding the same backbone weights (torchvision has no CPU wheel here).
REFERENCE_VALUE = {"alex": 0.41456007957458496, "vgg16": 0.6595408320426941}


def fixed_pair(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1)
    a = np.stack([np.sin(6.0 * xx + 2.0 * yy), np.cos(5.0 * yy - 3.0 * xx * yy),
                  2.0 * xx * yy - 1.0], -1)
    b = np.stack([np.cos(4.0 * xx + 3.0 * yy), np.sin(7.0 * xx * yy), 1.0 - 2.0 * xx], -1)
    return (np.clip(a, -1, 1).astype(np.float32)[None],
            np.clip(b, -1, 1).astype(np.float32)[None])


@pytest.mark.parametrize("net", ["alex", "vgg16"])
def test_shipped_linear_layers_are_the_reference_v01(net):
    params = weights.lpips_params(net)
    got = [hashlib.sha256(np.asarray(params[f"lin{i}"], "<f4").tobytes()).hexdigest()[:16]
           for i in range(5)]
    assert got == REFERENCE_LIN_SHA[net]


@pytest.mark.parametrize("net", ["alex", "vgg16"])
def test_value_on_fixed_pair(net):
    x, y = fixed_pair()
    variables = lpips_lib.load_lpips(net)
    d = jax.jit(lpips_lib.lpips_distance)(variables, jnp.asarray(x), jnp.asarray(y))
    assert d.shape == (1,)
    assert float(d[0]) == pytest.approx(REFERENCE_VALUE[net], abs=1e-5)


def test_alex_matches_torch_twin_batched_and_jitted():
    import torch
    from unmask_jax.features import torch_reference as tr

    variables = lpips_lib.load_lpips("alex")
    p = variables["params"]
    twin = tr.TorchAlex()
    sd = {}
    for name, idx in zip(["conv1", "conv2", "conv3", "conv4", "conv5"], [0, 3, 6, 8, 10]):
        sd[f"features.{idx}.weight"] = torch.from_numpy(
            np.asarray(p["backbone"][name]["kernel"]).transpose(3, 2, 0, 1).copy())
        sd[f"features.{idx}.bias"] = torch.from_numpy(np.array(p["backbone"][name]["bias"]))
    twin.load_state_dict(sd)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 48, 40, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    dist = jax.jit(lpips_lib.lpips_distance)
    ours = np.asarray(dist(variables, x, y))
    lin = [torch.from_numpy(np.array(p[f"lin{i}"])) for i in range(5)]
    with torch.no_grad():
        ref = tr.torch_lpips(twin.features, lin, "alex", torch.from_numpy(x.transpose(0, 3, 1, 2)),
                             torch.from_numpy(y.transpose(0, 3, 1, 2))).numpy()
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    same = dist(variables, x, x)
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-7)


def test_numpy_only_unpickler_refuses_code(tmp_path):
    import pickle

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(print))  # a pickle that names a callable
    with pytest.raises(pickle.UnpicklingError):
        weights.load_numpy_pickle(path)
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"a": {"b": np.arange(3.0)}}))
    np.testing.assert_array_equal(weights.load_numpy_pickle(ok)["a"]["b"], np.arange(3.0))


def test_masked_lpips_is_lpips_for_a_full_mask_and_follows_the_region():
    """``lpips_distance_masked``: with the whole image as the mask it is LPIPS itself; with
    the left half as the mask, a difference in the left half scores far more than the same
    difference in the right half (and the plain LPIPS cannot tell them apart)."""
    variables = lpips_lib.load_lpips("alex")
    a, b = fixed_pair(128)
    whole, masked = lpips_lib.lpips_distance_masked(variables, a, b, np.ones((1, 128, 128, 1)))
    np.testing.assert_allclose(masked, whole, rtol=1e-5)
    np.testing.assert_allclose(whole, lpips_lib.lpips_distance(variables, a, b), rtol=1e-6)
    left = np.zeros((1, 128, 128, 1), np.float32)
    left[:, :, :64] = 1
    in_left, in_right = a.copy(), a.copy()
    in_left[:, :, :64] = b[:, :, :64]
    in_right[:, :, 64:] = b[:, :, 64:]
    w_l, m_l = lpips_lib.lpips_distance_masked(variables, a, in_left, left)
    w_r, m_r = lpips_lib.lpips_distance_masked(variables, a, in_right, left)
    assert float(m_l[0]) > 3 * float(m_r[0])
    assert 0.5 < float(w_l[0]) / float(w_r[0]) < 2.0
