"""The reconstruction error of DDIM inversion (Song et al. 2021, Table 2): MSE and PSNR on the [0, 1] scale."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["reconstruction_mse", "mean_reconstruction_mse", "psnr"]


def _diff01(x, y):
    """(x - y)/2 in float64, i.e. the difference on the [0, 1] scale of images in [-1, 1]."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.shape != y.shape:
            raise ValueError(f"shapes differ: {tuple(x.shape)} and {tuple(y.shape)}")
        if x.ndim < 2:
            raise ValueError(f"expected a batch (N, ...), got shape {tuple(x.shape)}")
        return (x.double() - y.to(x.device).double()) / 2
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} and {y.shape}")
    if x.ndim < 2:
        raise ValueError(f"expected a batch (N, ...), got shape {x.shape}")
    return (x - y) / 2


def reconstruction_mse(x, y):
    """Per-image, per-dimension MSE on the [0, 1] scale between batches in [-1, 1]: mean(((x - y)/2)²).

    This is the reconstruction error of DDIM inversion reported in Song et al. 2021, Table 2.

    Args:
        x (`torch.Tensor` or `np.ndarray`): shape (N, ...), values in [-1, 1].
        y (`torch.Tensor` or `np.ndarray`): same shape as ``x``.

    Returns:
        `torch.Tensor` or `np.ndarray`: float64, shape (N,) (a tensor if either input is one).
    """
    d = _diff01(x, y)
    return (d**2).reshape(d.shape[0], -1).mean(1)


def mean_reconstruction_mse(x, y) -> float:
    """:func:`reconstruction_mse` averaged over the batch (a Python float)."""
    return float(reconstruction_mse(x, y).mean())


def psnr(x, y):
    """Per-image PSNR in dB on the [0, 1] scale, 10·log10(1 / MSE), for batches in [-1, 1] (∞ where x = y).

    Returns:
        `torch.Tensor` or `np.ndarray`: float64, shape (N,).
    """
    mse = reconstruction_mse(x, y)
    if isinstance(mse, torch.Tensor):
        return 10.0 * torch.log10(1.0 / mse)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse)
