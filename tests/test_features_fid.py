"""FID: the Flax FID Inception against a PyTorch mirror (random weights, converted state
dict), the Fréchet distance against closed forms and ``scipy.linalg.sqrtm``, the running
statistics against ``np.cov``, and the weights-file handling."""
import numpy as np
import pytest
import scipy.linalg

from unmask_jax.features import fid, inception, weights


def _scipy_fid(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    a, b = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-12)
    # Same eigenbasis, rotated: covariances Q diag Q^T commute, same closed form.
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    got = fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-10)
    assert _scipy_fid(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(
        want, rel=1e-8)
    # Identical Gaussians: 0; only the means differ: the squared distance of the means.
    s = q @ np.diag(a) @ q.T
    assert fid.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-10)
    assert fid.frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2),
                                                                 rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_general_covariances():
    rng = np.random.default_rng(1)
    for dim, n in ((8, 50), (64, 200), (64, 40)):  # the last one rank-deficient
        x = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
        y = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + 0.3
        mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
        mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
        want = _scipy_fid(mu1, s1, mu2, s2)
        assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-7), (dim, n)
        # Symmetric, and the reference's square root may be computed once and reused.
        assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-7)
        assert fid.frechet_distance(mu1, s1, mu2, s2, sqrt_sigma1=fid.sqrt_psd(s1)) == (
            pytest.approx(want, rel=1e-7))


def test_gaussian_stats_accumulate_to_numpy_mean_and_covariance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(37, 12)).astype(np.float32) * 3 + 5
    stats = fid.GaussianStats(12)
    for chunk in np.array_split(x, 5):
        stats.add(chunk)
    np.testing.assert_allclose(stats.mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x.astype(np.float64), rowvar=False),
                               rtol=1e-9, atol=1e-10)
    # Split over "processes" and summed through the flat vector: the same statistics.
    a, b = fid.GaussianStats(12).add(x[:10]), fid.GaussianStats(12).add(x[10:])
    merged = fid.GaussianStats.from_vector(a.vector() + b.vector(), 12)
    assert merged.count == 37
    np.testing.assert_allclose(merged.sigma, stats.sigma, rtol=1e-12)
    with pytest.raises(ValueError, match=">= 2"):
        _ = fid.GaussianStats(3).add(np.zeros((1, 3))).sigma


@pytest.fixture(scope="module")
def torch_inception():
    torch = pytest.importorskip("torch")
    from unmask_jax.features import torch_reference as tr

    torch.manual_seed(0)
    net = tr.randomize_(tr.TorchFIDInception(resize_to=75), seed=3)
    sd = dict(net.state_dict())
    assert "fc.weight" in sd and sd["fc.weight"].shape == (1008, 2048)
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)  # torchvision's aux head: ignored
    return torch, net, sd


@pytest.mark.slow
def test_flax_fid_inception_matches_the_pytorch_mirror(torch_inception, tmp_path):
    import jax

    torch, net, sd = torch_inception
    # Through the file route users take: .pth -> convert -> .msgpack -> load.
    src = tmp_path / "pt_inception.pth"
    torch.save(sd, src)
    dst = weights.convert_checkpoint("fid_inception", src, tmp_path / "fid.msgpack")
    variables = fid.load_fid_variables(dst)
    assert set(variables) == {"params", "batch_stats"}
    x = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(jax.jit(inception.FIDInceptionV3(resize_to=75).apply)(
        variables, 2 * x - 1))
    assert got.shape == (1, inception.POOL3_DIM)
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    print(f"FID Inception pool3 parity (64 -> 75 px): max|diff|/max|ref| = {err:.2e}")
    assert err < 1e-4
    # Straight from the .pth (eval.fid_weights may name it) gives the same variables.
    direct = fid.load_fid_variables(src)
    np.testing.assert_array_equal(direct["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"],
                                  variables["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"])


def test_converter_names_unused_and_missing_keys(torch_inception):
    torch, _, sd = torch_inception
    sd = dict(sd)
    sd["Mixed_5b.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="not used"):
        weights.convert_fid_inception(sd)
    del sd["Mixed_5b.extra.weight"], sd["Mixed_7c.branch_pool.conv.weight"]
    with pytest.raises(KeyError, match="Mixed_7c.branch_pool.conv.weight"):
        weights.convert_fid_inception(sd)


def test_missing_fid_weights_name_the_file_and_the_converter(tmp_path):
    with pytest.raises(weights.MissingWeightsError) as e:
        fid.load_fid_variables(tmp_path / "nope.msgpack")
    assert "pt_inception-2015-12-05" in str(e.value)
    assert "--kind=fid_inception" in str(e.value)
