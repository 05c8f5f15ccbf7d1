"""The batch size for sampling when the user gives none: all images at once on the CPU; on a GPU as many as fit,
capped where throughput stops growing, in batches of equal size.

A GPU's throughput saturates once a forward pass has enough work to fill it; past that a bigger batch only
delays the first images (and a compile of a bigger graph). :data:`SATURATION_FLOP` is that amount of work
per forward pass: 256 images of the ``ddpm-cifar10`` UNet at 32×32 (12.44 GFLOP each), where diffusers'
fp16 and ddimkit's compiled bf16 forward passes already run at full speed on an H100 (``../shared/GPU.md``).
The cap is a power of two (tensor-core friendly) and the n images are split into equal batches, so a
ragged last batch, which the compiled network pads to the full size, wastes little.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["batch_for_memory", "batch_for_speed", "balanced_batch", "auto_batch_size", "forward_flops",
           "SATURATION_FLOP"]

#: Work per forward pass past which a GPU runs no faster per image (256 × 12.44 GFLOP, see above).
SATURATION_FLOP = 256 * 12.44e9


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


def batch_for_speed(flop_per_image: float, saturation_flop: float = SATURATION_FLOP, smallest: int = 8) -> int:
    """The largest power of two whose forward pass stays within ``saturation_flop`` (at least ``smallest``)."""
    if flop_per_image <= 0:
        raise ValueError(f"FLOP per image must be positive, got {flop_per_image}")
    cap = smallest
    while cap * 2 * flop_per_image <= saturation_flop:
        cap *= 2
    return cap


def balanced_batch(n: int, cap: int, multiple: int = 8) -> int:
    """Split n images into the fewest batches of at most ``cap``, all of (nearly) equal size.

    The size is rounded up to a multiple of ``multiple`` but never above ``cap`` or n: 4096 at cap 256 gives
    256 (16 full batches); 300 gives 152 (152 + 148) rather than 256 + 44.
    """
    if n < 1 or cap < 1:
        raise ValueError(f"n and cap must be at least 1, got {n} and {cap}")
    k = -(-n // cap)
    size = -(-n // k)
    size = -(-size // multiple) * multiple
    return max(1, min(size, cap, n))


def forward_flops(net: Callable, x: torch.Tensor, t: torch.Tensor) -> float:
    """FLOPs of one forward pass ``net(x, t)``, counted by torch's FlopCounterMode (no gradients kept)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t)
    return float(counter.get_total_flops())


def auto_batch_size(net: Callable, image_shape: tuple[int, int, int], n: int, device: torch.device,
                    probe: int = 8) -> int:
    """Batch size for ``n`` images of ``image_shape`` through ``net(x, t)`` on ``device``.

    On CUDA, one forward pass of ``probe`` images measures the peak memory and the FLOPs per image; the batch
    fills at most 80% of the memory that is free after it, at most :func:`batch_for_speed`, split evenly by
    :func:`balanced_batch`. Elsewhere every image goes in one batch. Pass the network without
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
    flop_per_image = forward_flops(net, x, t) / probe
    torch.cuda.synchronize(device)
    per_image = (torch.cuda.max_memory_allocated(device) - base) / probe
    del x, t
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    fit = batch_for_memory(n, free, per_image)
    cap = batch_for_speed(flop_per_image) if flop_per_image > 0 else fit
    return balanced_batch(n, min(fit, cap))
