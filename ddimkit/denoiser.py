"""Wrap a network ``net(x, t)`` with its parameterisation: it then returns (x̂0, ε̂) for samplers.

This is the only place where a network's output is interpreted, clipped or thresholded; samplers see
(x̂0, ε̂) pairs and know nothing about prediction types (EDM's preconditioning-wrapper idea).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .diffusion import check_prediction_type, to_x0_eps

__all__ = ["Denoiser", "dynamic_threshold"]


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3).

    Per sample, s = the ``ratio`` quantile of |x̂0|, held in [1, max_value]; x̂0 is clipped to [-s, s] and
    divided by s. With s = 1 this is plain clipping to [-1, 1].
    """
    flat = x0.float().flatten(1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(1, max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape).to(x0.dtype)


@dataclass(frozen=True)
class Denoiser:
    """A network with its prediction type, returning (x̂0, ε̂) for a noisy batch.

    Args:
        net: callable ``net(x, t)`` with ``t`` a LongTensor of shape (B,); may return a tensor or an object
            with a ``.sample`` tensor (as diffusers' models do).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction`` (aliases eps, x0, v).
        clip_sample: ``None`` for no clipping, or r to clip x̂0 to [-r, r].
        thresholding: ``None``, or the quantile ratio for :func:`dynamic_threshold` (0.995 in Imagen);
            takes precedence over ``clip_sample``.
        sample_max_value: upper bound of the dynamic threshold s.
        use_clipped_model_output: after clipping, re-derive ε̂ from the clipped x̂0 (Glide, improved-diffusion).
            The default, False, keeps the network's ε̂, as diffusers' DDIM does.
    """

    net: Callable
    prediction_type: str = "epsilon"
    clip_sample: float | None = None
    thresholding: float | None = None
    sample_max_value: float = 1.0
    use_clipped_model_output: bool = False

    def __post_init__(self):
        object.__setattr__(self, "prediction_type", check_prediction_type(self.prediction_type))
        if self.clip_sample is not None and not self.clip_sample > 0:
            raise ValueError(f"clip_sample must be None or a positive range, got {self.clip_sample}")
        if self.thresholding is not None and not 0 < self.thresholding <= 1:
            raise ValueError(f"thresholding ratio must lie in (0, 1], got {self.thresholding}")

    @property
    def clips(self) -> bool:
        return self.clip_sample is not None or self.thresholding is not None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        """(x̂0, ε̂) for ``x`` at timesteps ``t`` (LongTensor (B,)) of level a = √ᾱ_t, s = √(1-ᾱ_t)."""
        out = self.net(x, t)
        out = getattr(out, "sample", out)
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        x0, eps = to_x0_eps(out.to(x.dtype), x, a, s, self.prediction_type)
        if self.thresholding is not None:
            x0 = dynamic_threshold(x0, self.thresholding, self.sample_max_value)
        elif self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        if self.clips and self.use_clipped_model_output:
            eps = (x - a * x0) / s
        return x0, eps
