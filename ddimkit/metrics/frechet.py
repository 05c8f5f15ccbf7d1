"""FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to two sets of Inception features.

FID is strongly biased at small sample sizes; below 2,048 images the feature covariance (2048×2048) is
rank-deficient, and 10,000+ images a side are needed for numbers that mean anything.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from .inception import _check_images, inception_features, load_inception

__all__ = ["SmallSampleWarning", "FIDStats", "frechet_distance", "feature_stats", "save_stats", "load_stats",
           "fid_from_stats", "fid_from_features", "fid"]

# Below this many images a side the 2048×2048 covariance cannot have full rank.
MIN_FID_IMAGES = 2048


class SmallSampleWarning(UserWarning):
    """FID computed on too few images to be meaningful."""


@dataclass(frozen=True, eq=False)
class FIDStats:
    """Gaussian statistics of a feature set: mean ``mu`` (D,), covariance ``sigma`` (D, D), image count ``n``.

    Unpacks as ``mu, sigma = stats``; ``n`` is an attribute, kept so that FID can warn about small sets.
    ``n`` is ``None`` for statistics files that do not record it (e.g. pytorch-fid's ``.npz``, which uses
    the same ``mu``/``sigma`` keys and the same network, so it loads here).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None

    def __iter__(self):
        return iter((self.mu, self.sigma))

    def __len__(self):
        return 2


def _check_psd(w: np.ndarray, name: str):
    if w.size and w.min() < -1e-6 * max(1.0, float(np.abs(w).max())):
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g})")


def _psd_sqrt(a: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix; round-off negatives are clipped to 0."""
    w, v = np.linalg.eigh(a)
    _check_psd(w, name)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    r"""Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (Dowson & Landau 1982; FID: Heusel et al. 2017).

    d² = ‖μ1 - μ2‖² + Tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^{1/2}), in float64.

    Σ1Σ2 is similar to the symmetric PSD matrix M = Σ1^{1/2} Σ2 Σ1^{1/2}, so Tr (Σ1Σ2)^{1/2} = Σ √λ_i(M).
    Two symmetric eigen-decompositions give it exactly, also for the singular covariances of fewer images
    than feature dimensions, with no regularisation; ``scipy.linalg.sqrtm`` of the non-symmetric product,
    the usual route, agrees to ~1e-7 and is over ten times slower at 2048×2048 (tens of seconds on a small
    CPU).

    Args:
        mu1 (`np.ndarray`): mean of the first Gaussian, shape (D,).
        sigma1 (`np.ndarray`): covariance of the first Gaussian, shape (D, D).
        mu2 (`np.ndarray`): mean of the second Gaussian, shape (D,).
        sigma2 (`np.ndarray`): covariance of the second Gaussian, shape (D, D).

    Returns:
        `float`: the squared Fréchet distance (what is reported as "FID").

    Raises:
        `ValueError`: on mismatched or malformed shapes, non-finite inputs, or a covariance that is not
            positive semi-definite.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be 1-D of the same length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}) to match the means, got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has non-finite values")
    # Covariances are symmetric up to round-off; make them exactly so for eigh.
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1, "sigma1")
    _check_psd(np.linalg.eigvalsh(sigma2), "sigma2")
    m = root1 @ sigma2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def _check_features(features, name: str = "features", min_n: int = 2) -> np.ndarray:
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {f.shape}")
    if f.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} images, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} has non-finite values")
    return f


def feature_stats(features) -> FIDStats:
    """Mean and (unbiased, N-1) covariance of a feature set, in float64.

    Args:
        features (`np.ndarray` or `torch.Tensor`): shape (N, D), N ≥ 2.

    Returns:
        `FIDStats`: unpacks as ``mu, sigma = feature_stats(f)``; ``.n`` is the image count.
    """
    f = _check_features(features)
    return FIDStats(f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False)), int(f.shape[0]))


def save_stats(path: str | os.PathLike, mu, sigma, n: int | None = None) -> Path:
    """Write ``mu``, ``sigma`` (float64) and the image count ``n`` to an ``.npz`` file, atomically.

    Returns:
        `Path`: the file written (exactly ``path``; no suffix is added).
    """
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object, so that numpy does not append ".npz"
            np.savez(f, mu=mu, sigma=sigma, n=np.int64(-1 if n is None else n))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_stats(path: str | os.PathLike) -> FIDStats:
    """Read statistics written by :func:`save_stats` (or any ``.npz`` with ``mu`` and ``sigma`` keys).

    Raises:
        `FileNotFoundError`: no such file.
        `ValueError`: the file is not a readable statistics file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            mu = np.asarray(z["mu"], dtype=np.float64)
            sigma = np.asarray(z["sigma"], dtype=np.float64)
            n = int(z["n"]) if "n" in z.files else -1
    except Exception as e:  # BadZipFile, KeyError, pickled objects, truncated arrays, ...
        raise ValueError(f"{path} is not a valid FID statistics file ({type(e).__name__}: {e})") from e
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    return FIDStats(mu, sigma, None if n < 0 else n)


_StatsLike = Union[FIDStats, Sequence, str, os.PathLike]


def _as_stats(s: _StatsLike) -> FIDStats:
    if isinstance(s, (str, os.PathLike)):
        return load_stats(s)
    if isinstance(s, FIDStats):
        return s
    s = tuple(s)
    if len(s) not in (2, 3):
        raise ValueError("statistics must be (mu, sigma), (mu, sigma, n), FIDStats or a path to an .npz")
    return FIDStats(*s)


def _warn_small(n: int | None) -> None:
    if n is not None and n < MIN_FID_IMAGES:
        warnings.warn(f"FID needs ≥ 2,048 images (10,000 recommended); got {n:,}", SmallSampleWarning, stacklevel=3)


def fid_from_stats(a: _StatsLike, b: _StatsLike) -> float:
    """FID between two sets of statistics (:class:`FIDStats`, ``(mu, sigma[, n])`` tuples or ``.npz`` paths).

    Warns (:class:`SmallSampleWarning`) when a side records fewer than 2,048 images.
    """
    a, b = _as_stats(a), _as_stats(b)
    ns = [n for n in (a.n, b.n) if n is not None]
    _warn_small(min(ns) if ns else None)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_from_features(features_a, features_b) -> float:
    """FID between two feature sets of shape (N, D) (Heusel et al. 2017).

    Warns (:class:`SmallSampleWarning`) below 2,048 images a side; refuses fewer than 2 (``ValueError``).
    """
    fa = _check_features(features_a, "features_a")
    fb = _check_features(features_b, "features_b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} and {fb.shape[1]}")
    _warn_small(min(fa.shape[0], fb.shape[0]))
    a, b = feature_stats(fa), feature_stats(fb)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid(
    images_a,
    images_b,
    model=None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> float:
    """FID between two uint8 image sets (N, C, H, W): :func:`inception_features` then :func:`fid_from_features`."""
    for name, im in (("images_a", images_a), ("images_b", images_b)):
        if _check_images(im, name)[0] < 2:  # fail before minutes of feature extraction
            raise ValueError(f"{name} needs at least 2 images, got {im.shape[0]}")
    if model is None:
        model = load_inception(device=device)
    fa = inception_features(images_a, model, batch_size, device, progress)
    fb = inception_features(images_b, model, batch_size, device, progress)
    return fid_from_features(fa, fb)
