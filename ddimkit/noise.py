"""The randomness contract: where and in which order Gaussian noise is drawn.

Every stochastic draw goes through :func:`randn`, so one ``torch.Generator`` gives the same images as
diffusers' pipelines (same starting noise, same per-step draws in the same order). A *list* of generators,
one per sample, makes each sample depend on its own seed only, not on the batch it was drawn in.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["Generator", "randn", "generators_from_seeds"]

Generator = torch.Generator | Sequence[torch.Generator] | None


def randn(shape, generator: Generator = None, dtype=None, device=None) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn on the generator's device and moved to ``device``.

    Drawing on the generator's device keeps a CPU generator's numbers the same whatever device samples.
    With a list of generators, sample ``i`` of the batch is drawn from ``generator[i]``.
    """
    shape = tuple(shape)
    device = torch.device(device) if device is not None else None
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([randn((1,) + shape[1:], g, dtype, device) for g in generator])
    draw_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=draw_on).to(device)


def generators_from_seeds(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One seeded generator per sample: a sample then depends on its seed alone."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
