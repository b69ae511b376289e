"""Fréchet Inception Distance: Gaussian statistics of pool3 features and the distance.

FID(x, y) = |mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x S_y)^(1/2)), with the means and
(unbiased, N - 1) covariances of the 2048-d pool3 features of the FID Inception
(:mod:`unmask_jax.features.inception`). Everything here is float64 numpy.

``tr((S_x S_y)^(1/2))`` is computed as the sum of the square roots of the eigenvalues of the
symmetric matrix ``S_x^(1/2) S_y S_x^(1/2)`` (same eigenvalues as ``S_x S_y``; both PSD, so
they are real and >= 0 up to rounding), which avoids the complex intermediate results of a
general matrix square root; tests check it against ``scipy.linalg.sqrtm`` and closed forms.

The value depends strongly on N (it is biased upwards for small N, and the covariance is
rank-deficient below 2049 images): always report N beside it (the evaluation JSON has
``fid_num_images``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from unmask_jax.features.inception import POOL3_DIM


def sqrt_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (negative rounding noise in the
    eigenvalues clipped to 0)."""
    a = np.asarray(a, np.float64)
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray,
                       sqrt_sigma1: np.ndarray | None = None) -> float:
    """tr((sigma1 @ sigma2)^(1/2)) for symmetric PSD matrices; ``sqrt_sigma1`` (from
    :func:`sqrt_psd`) saves the one eigendecomposition of sigma1 when it is reused."""
    s1 = sqrt_psd(sigma1) if sqrt_sigma1 is None else np.asarray(sqrt_sigma1, np.float64)
    m = s1 @ np.asarray(sigma2, np.float64) @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, sqrt_sigma1: np.ndarray | None = None) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64); pass
    ``sqrt_sigma1 = sqrt_psd(sigma1)`` to compare many distributions with one reference."""
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shapes differ: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} "
                         f"/ {sigma2.shape}")
    diff = mu1 - mu2
    value = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
             - 2.0 * trace_sqrt_product(sigma1, sigma2, sqrt_sigma1))
    return float(max(value, 0.0))


class GaussianStats:
    """Running count, sum and sum of outer products of feature vectors (float64), from which
    the mean and the unbiased covariance follow; sums from several batches or processes add
    up (:meth:`vector` / :meth:`from_vector`)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.sum = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def add(self, features: np.ndarray) -> "GaussianStats":
        f = np.asarray(features, np.float64).reshape(-1, self.dim)
        self.count += len(f)
        self.sum += f.sum(axis=0)
        self.outer += f.T @ f
        return self

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        self.count += other.count
        self.sum += other.sum
        self.outer += other.outer
        return self

    def vector(self) -> np.ndarray:
        """[count, sum..., outer...] (flat float64) for cross-process sums."""
        return np.concatenate([[float(self.count)], self.sum, self.outer.ravel()])

    @classmethod
    def from_vector(cls, vec: np.ndarray, dim: int) -> "GaussianStats":
        out = cls(dim)
        out.count = int(round(float(vec[0])))
        out.sum = np.array(vec[1:1 + dim], np.float64)
        out.outer = np.array(vec[1 + dim:], np.float64).reshape(dim, dim)
        return out

    @property
    def mu(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (like ``np.cov(features, rowvar=False)``)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs >= 2 feature vectors, have {self.count}")
        mu = self.mu
        return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)


def fid_from_stats(reference: GaussianStats, other: GaussianStats,
                   sqrt_reference: np.ndarray | None = None) -> float:
    """FID between two feature statistics (symmetric; ``sqrt_reference`` =
    ``sqrt_psd(reference.sigma)``, computed here when not given)."""
    return frechet_distance(reference.mu, reference.sigma, other.mu, other.sigma,
                            sqrt_reference)


def load_fid_variables(path: str | os.PathLike) -> dict[str, Any]:
    """FID Inception variables from a converted file (``.msgpack``/``.npz``) or straight from
    pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (``.pth``/``.pt``; needs torch).
    Raises MissingWeightsError when the file does not exist."""
    from unmask_jax.features import weights

    path = os.fspath(path)
    if path.endswith((".pth", ".pt")):
        return weights.convert_fid_inception(weights.load_torch_state_dict(path,
                                                                           "fid_inception"))
    if not os.path.isfile(path):
        raise weights.MissingWeightsError(
            f"FID Inception weights {path} not found (eval.fid_weights). Nothing is "
            f"downloaded: bring {weights.CONVERTIBLE_KINDS['fid_inception']} and point "
            f"eval.fid_weights at it, or convert it once with:\n  "
            f"{weights.converter_command('fid_inception', path)}")
    return weights.load_variables(path)


class FIDFeatures:
    """Jitted pool3 features of uint8 RGB images (resized to ``input_size``, 299 for FID)."""

    def __init__(self, variables: Any, input_size: int = 299, weights_path: str | None = None):
        import jax

        from unmask_jax.features import inception

        self.input_size = input_size
        self.dim = POOL3_DIM
        self.weights_path = weights_path
        net = inception.FIDInceptionV3(resize_to=input_size)
        self._variables = jax.tree_util.tree_map(jax.numpy.asarray, variables)
        self._fn = jax.jit(net.apply)

    @classmethod
    def from_file(cls, path: str | os.PathLike, input_size: int = 299) -> "FIDFeatures":
        return cls(load_fid_variables(path), input_size, os.fspath(path))

    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
        x = np.asarray(images_uint8, np.float32) / 127.5 - 1.0
        return np.asarray(self._fn(self._variables, x), np.float64)
