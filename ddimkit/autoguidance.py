"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"): sampling with
a network guided by a weaker copy of itself, for any model, class-conditional or not.

The guide is the same network with less training: training keeps the EMA weights of an early step
(``TrainConfig.autoguidance_at``, a fraction of the run) beside the final ones. Both networks err in the
same directions where the data is hard, the guide more, so a sampler that moves away from the guide's
prediction moves against the error (the paper's eq. 2, its D_0 the guide and D_1 the model)::

    guided = g + w (m − g)        m = model(x, t), g = guide(x, t)

w = 1 is the model alone, and w > 1 extrapolates. As with classifier-free guidance
(:mod:`ddimkit.guidance`) the mix is made on the networks' raw outputs: for every parameterisation, x̂0 and ε̂
are affine in the output with coefficients that depend on (x_t, t) alone, so mixing outputs mixes x̂0 and
ε̂ alike, and :class:`~ddimkit.denoiser.Denoiser` stays the one place that reads them. Each step then costs
two network evaluations.
"""

from __future__ import annotations

from typing import Callable

import torch

from .guidance import _output

__all__ = ["autoguided", "check_autoguidance"]


def check_autoguidance(scale: float, guide) -> None:
    """Refuse a scale the model cannot run: negative, or other than 1 without a guiding network."""
    if not scale >= 0:
        raise ValueError(f"autoguidance scale must be >= 0, got {scale}")
    if scale != 1 and guide is None:
        raise ValueError("autoguidance needs a guiding network; this model has none (train with "
                         "--autoguidance-at, or sample with autoguidance scale 1)")


def autoguided(model: Callable, guide: Callable | None, scale: float = 1.0) -> Callable:
    """``net(x, t, *labels)``: ``model``'s output, guided by ``guide``'s when ``scale`` ≠ 1.

    Args:
        model: the network, ``model(x, t, *labels)``.
        guide: the weaker network of the same kind (None: only scale 1 is possible).
        scale: w above; 1 calls the model alone, 0 the guide alone, any other value both.
    """
    check_autoguidance(scale, guide)
    if scale == 1:
        return lambda x, t, *labels: _output(model(x, t, *labels))
    if scale == 0:
        return lambda x, t, *labels: _output(guide(x, t, *labels))

    def net(x: torch.Tensor, t, *labels) -> torch.Tensor:
        g = _output(guide(x, t, *labels))
        return g + scale * (_output(model(x, t, *labels)) - g)

    return net
