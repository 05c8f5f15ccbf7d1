"""The batch size for sampling when the user gives none: all images at once on the CPU, as many as fit on a GPU."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["batch_for_memory", "auto_batch_size"]


def batch_for_memory(n: int, free_bytes: float, bytes_per_image: float, fraction: float = 0.8,
                     multiple: int = 8) -> int:
    """The largest batch ≤ ``n`` whose working memory fits in ``fraction`` of ``free_bytes``.

    Batches above ``multiple`` are rounded down to a multiple of it (tensor-core friendly shapes); the result
    is at least 1, so a model that barely fits still runs one image at a time.
    """
    if n < 1:
        raise ValueError(f"number of images must be at least 1, got {n}")
    if bytes_per_image <= 0:
        return n
    fit = int(fraction * free_bytes // bytes_per_image)
    if fit > multiple:
        fit -= fit % multiple
    return max(1, min(n, fit))


def auto_batch_size(net: Callable, image_shape: tuple[int, int, int], n: int, device: torch.device,
                    probe: int = 8) -> int:
    """Batch size for ``n`` images of ``image_shape`` through ``net(x, t)`` on ``device``.

    On CUDA, one forward pass of ``probe`` images measures the peak memory per image, and the batch fills 80%
    of the memory that is free after it. Elsewhere every image goes in one batch. Pass the network without
    ``torch.compile``: the probe's batch shape should not be the one that gets compiled.
    """
    device = torch.device(device)
    if device.type != "cuda" or n <= probe:
        return n
    x = torch.randn(probe, *image_shape, device=device)
    t = torch.zeros(probe, dtype=torch.long, device=device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        net(x, t)
    torch.cuda.synchronize(device)
    per_image = (torch.cuda.max_memory_allocated(device) - base) / probe
    del x, t
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return batch_for_memory(n, free, per_image)
