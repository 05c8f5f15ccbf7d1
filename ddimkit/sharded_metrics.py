"""FID and KID statistics computed in shares across processes, equal to one process's to round-off.

Each process extracts the Inception features of its share of an image set (whole batches, in order:
:func:`ddimkit.distributed.shard`), so every image's features are bit-identical to one process's. FID then
needs only sufficient statistics, reduced in two passes exactly as ``np.cov`` computes them in one place:

    n = Σ_r n_r,   μ = Σ_r Σ_{i∈r} f_i / n,   Σ = Σ_r Σ_{i∈r} (f_i − μ)(f_i − μ)ᵀ / (n − 1)

Centring on the global mean before the outer products (not Σ f fᵀ − n μμᵀ) keeps the float64 sums free of
cancellation, so FID agrees with one process to ~1e-12 relative. KID needs the features themselves, so they
are gathered, in image order, to every process (KID's random subsets index the whole set).

In one process these functions are :func:`ddimkit.metrics.inception_features` and
:func:`ddimkit.metrics.feature_stats`, unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from . import distributed as D
from . import metrics

__all__ = ["features_share", "sharded_stats", "sharded_features"]


def features_share(images, model, batch_size: int = 50, device=None, progress: bool = False) -> np.ndarray:
    """Features (float64) of this process's share of ``images`` (all of them in one process)."""
    mine = D.shard(len(images), batch_size)
    with D.all_or_none("extracting features"):
        if len(mine) == 0:
            return np.empty((0, metrics.FEATURE_DIM), dtype=np.float64)
        return metrics.inception_features(images[mine.start:mine.stop], model, batch_size, device,
                                          progress=progress and D.is_main())


def stats_of_shares(local: np.ndarray) -> metrics.FIDStats:
    """:class:`~ddimkit.metrics.FIDStats` of the union of every process's ``local`` features (N_r, D)."""
    if D.world_size() == 1:
        return metrics.feature_stats(local)
    local = np.asarray(local, dtype=np.float64)
    d = local.shape[1]
    head = torch.from_numpy(np.concatenate([[local.shape[0]], local.sum(axis=0)]))
    head = D.all_reduce_sum(head, "summing the feature means").numpy()
    n = int(round(head[0]))
    if n < 2:
        raise ValueError(f"FID needs at least 2 images, got {n}")
    mu = head[1:] / n
    centred = local - mu
    scatter = D.all_reduce_sum(torch.from_numpy(centred.T @ centred), "summing the feature covariances")
    sigma = scatter.numpy().reshape(d, d) / (n - 1)
    return metrics.FIDStats(mu, sigma, n)


def sharded_stats(images, model, batch_size: int = 50, device=None, progress: bool = False) -> metrics.FIDStats:
    """FID statistics of ``images`` (uint8, N×C×H×W), each process extracting features of its share."""
    return stats_of_shares(features_share(images, model, batch_size, device, progress))


def sharded_features(images, model, batch_size: int = 50, device=None, progress: bool = False) -> np.ndarray:
    """All features of ``images`` in image order on every process (for KID), extracted in shares."""
    local = features_share(images, model, batch_size, device, progress)
    return D.all_gather(torch.from_numpy(local), "gathering the features").numpy()
