"""Self-conditioning (Chen, Zhang & Hinton 2022, "Analog Bits", §3.2): the network also sees its own last x̂0.

A self-conditioned network takes 2C input channels: the noisy image and an estimate of the clean one, zeros
when there is none. In training (:func:`ddimkit.diffusion.training_loss`), half of the batches first predict
without an estimate, with no gradient, and then train with that x̂0 as the estimate; the other half train
with zeros, which is what a sampler's first step gives. In sampling and inversion each network call gets the
x̂0 of the call before it on the same trajectory (:class:`SelfConditioning`), so a deterministic path can
correct the shape it committed to early instead of keeping it.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["with_estimate", "SelfConditioning"]


def with_estimate(x: torch.Tensor, estimate: torch.Tensor | None = None) -> torch.Tensor:
    """The network's input: ``x`` and the x̂0 ``estimate`` (zeros for none) stacked on the channel axis."""
    return torch.cat([x, torch.zeros_like(x) if estimate is None else estimate.to(x.dtype)], 1)


class SelfConditioning:
    """One trajectory's estimate for a self-conditioned network ``model(input of 2C channels, t)``.

    ``net`` is the network as a :class:`~ddimkit.denoiser.Denoiser` sees it (``net(x, t)`` on C channels),
    and ``track(denoiser)`` wraps that denoiser so that each x̂0 it returns becomes the next call's estimate.
    Make a new instance for every batch of every sampling or inversion call: the first call has no estimate.

    Example:
        >>> sc = SelfConditioning(model)
        >>> x = sample_ddim(sc.track(Denoiser(sc.net, "sample", clip_sample=1.0)), x_T, ab, grid)
    """

    def __init__(self, model: Callable):
        self.model, self.x0 = model, None

    def net(self, x: torch.Tensor, t) -> torch.Tensor:
        estimate = self.x0 if self.x0 is not None and self.x0.shape == x.shape else None
        return self.model(with_estimate(x, estimate), t)

    def track(self, denoiser: Callable) -> Callable:
        def call(x, t, a, s):
            x0, eps = denoiser(x, t, a, s)
            self.x0 = x0
            return x0, eps

        return call
