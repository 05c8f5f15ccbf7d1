"""KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): unbiased MMD² of Inception features with a cubic
polynomial kernel, the better choice than FID for small sets.
"""

from __future__ import annotations

import numpy as np

from .frechet import _check_features

__all__ = ["kid"]


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(a, b) = (a·b/d + 1)³."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    # U-statistic: the diagonals k(x_i, x_i) are left out of the within-set terms.
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def _kid_bootstrap_std(x: np.ndarray, y: np.ndarray, rounds: int, seed: int) -> float:
    """Standard deviation of the unbiased MMD² over bootstrap resamples of both sets.

    A resample repeats items; pairs of copies of one item are left out of the within-set sums (as the
    diagonal is in the U-statistic), so duplicates do not bias the resampled estimates.
    """
    n, d = x.shape
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(max(2, rounds)):
        i, j = rng.integers(0, n, n), rng.integers(0, n, n)
        within = 0.0
        for k, idx in ((kxx, i), (kyy, j)):
            sub = k[np.ix_(idx, idx)]
            same = idx[:, None] == idx[None, :]
            within += sub[~same].sum() / max(1, (~same).sum())
        vals.append(within - 2.0 * kxy[np.ix_(i, j)].mean())
    return float(np.std(vals))


def kid(features_a, features_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with a cubic polynomial kernel.

    The estimate is averaged over ``subsets`` random subsets (drawn without replacement) of
    ``subset_size`` features from each side; ``subset_size`` is clipped to the smaller set. Unlike FID,
    the estimator is unbiased, so it is usable on small sets (and can be slightly negative).

    Args:
        features_a (`np.ndarray`): shape (N_a, D).
        features_b (`np.ndarray`): shape (N_b, D).
        subsets (`int`, *optional*, defaults to 100): number of subsets.
        subset_size (`int`, *optional*, defaults to 1000): features per subset and side.
        seed (`int`, *optional*, defaults to 0): seed of the subset draws.

    Returns:
        `tuple[float, float]`: mean and standard deviation of the subset estimates. When one set is no
        larger than ``subset_size`` (so every subset holds all of it), the deviation is a bootstrap's, which
        resamples both sides.
    """
    fa = _check_features(features_a, "features_a")
    fb = _check_features(features_b, "features_b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} and {fb.shape[1]}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets ≥ 1 and subset_size ≥ 2, got {subsets} and {subset_size}")
    m = min(subset_size, fa.shape[0], fb.shape[0])
    if m == fa.shape[0] == fb.shape[0]:
        # Every subset would be the whole of both sets (the estimator is permutation-invariant), so subsets
        # say nothing about the spread: the standard deviation is the bootstrap's, of the same estimate.
        return _mmd2_unbiased(fa, fb), _kid_bootstrap_std(fa, fb, subsets, seed)
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(fa.shape[0], m, replace=False), rng.choice(fb.shape[0], m, replace=False))
             for _ in range(subsets)]
    vals = np.array([_mmd2_unbiased(fa[i], fb[j]) for i, j in draws])
    if m in (fa.shape[0], fb.shape[0]):
        # One side is whole in every subset, so the subsets show only the other side's spread (1,000
        # samples against 10,000 reference images); a bootstrap of one m-against-m draw shows both.
        i, j = draws[0]
        return float(vals.mean()), _kid_bootstrap_std(fa[i], fb[j], subsets, seed)
    return float(vals.mean()), float(vals.std())
