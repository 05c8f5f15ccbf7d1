"""Pictures: image grids, sampling trajectories, loss curves; and image/array files.

Every file is written atomically (temp file + rename), so an interrupted write never clobbers a
previous result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoint import atomic_write
from .data import to_uint8

__all__ = ["make_grid", "save_grid", "save_images", "save_npz", "save_figure", "plot_trajectory", "plot_loss",
           "labelled_grid", "show_noise"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def show_noise(z: torch.Tensor) -> torch.Tensor:
    """Noise (spread ~1) squeezed into [-1, 1] for display rather than clipped, as the notes' figures show x_t."""
    return z / max(1.0, float(z.abs().max()))


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images in [-1, 1] (N, C, H, W) into one uint8 array (H', W', C) with ``pad`` pixels of gap."""
    x = to_uint8(images).cpu()
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def _save_png(array: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return atomic_write(path, lambda p: img.save(p, format="PNG"))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save images in [-1, 1] as one PNG grid (``scale`` enlarges small images with nearest neighbours)."""
    grid = make_grid(images, nrow)
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return _save_png(grid, path)


def save_images(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save samples to ``.png`` (a grid) or ``.npz`` (uint8 array ``images``), by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return save_npz(images, path)
    if suffix == ".png":
        return save_grid(images, path, nrow)
    raise ValueError(f"output must end in .png or .npz, got {path}")


def save_npz(images: torch.Tensor, path: str | Path) -> Path:
    """uint8 images as ``images`` in an .npz: (N, H, W) for gray, (N, H, W, C) for colour."""
    x = to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()
    if x.shape[-1] == 1:
        x = x[..., 0]

    def write(p):
        with open(p, "wb") as f:
            np.savez_compressed(f, images=x)

    return atomic_write(path, write)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def labelled_grid(rows: Sequence[torch.Tensor], row_labels: Sequence[str], col_labels: Sequence[str],
                  path: str | Path, title: str | None = None, cell: float = 1.1) -> Path:
    """A grid of single images with row and column labels; ``rows[r]`` is (K, C, H, W) in [-1, 1]."""
    plt = _pyplot()
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(cell * nc + 1.2, cell * nr + (0.5 if title else 0.2)), squeeze=False)
    for r, imgs in enumerate(rows):
        for c in range(nc):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(imgs):
                im = to_uint8(imgs[c:c + 1])[0].permute(1, 2, 0).cpu().numpy()
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=255)
            if r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_trajectory(steps: Sequence[dict], path: str | Path, sample: int = 0, title: str | None = None) -> Path:
    """x_t (top row) and x̂0 (bottom row) at the recorded steps of one sample (from a sampler callback)."""
    xs = [d["x"][sample:sample + 1].float().cpu() for d in steps]
    x0s = [d["x0"][sample:sample + 1].float().cpu().clamp(-1, 1) for d in steps]
    # x_t has variance ~1: show it on [-1, 1] after scaling by its own spread, as noise is drawn.
    xs = [x / max(1.0, float(x.abs().max())) for x in xs]
    labels = [f"t={d['t']}" for d in steps]
    return labelled_grid([torch.cat(xs), torch.cat(x0s)], ["x_t", "x̂0"], labels, path, title)


def plot_loss(steps: Sequence[int], losses: Sequence[float], path: str | Path, title: str = "training loss") -> Path:
    """Loss against step, with a running mean over ~2% of the run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    s, l = np.asarray(steps), np.asarray(losses, dtype=float)
    ax.plot(s, l, lw=0.6, alpha=0.4, label="loss")
    k = max(1, len(l) // 50)
    if len(l) > k > 1:
        smooth = np.convolve(l, np.ones(k) / k, mode="valid")
        ax.plot(s[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
