"""High-level entry points: a model, a schedule and options in; a grid, a denoiser and a sampler out.

``sample`` and ``ddim_invert`` only validate and assemble: the math lives in :mod:`ddimkit.samplers`,
the parameterisation in :mod:`ddimkit.denoiser`, the grids in :mod:`ddimkit.schedule`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .denoiser import Denoiser
from .guidance import check_guidance, conditioned
from .noise import Generator
from .samplers import invert_ddim, sample_ddim, sample_ddpm, sample_dpmpp_2m
from .schedule import NoiseSchedule, timesteps
from .self_condition import SelfConditioning

__all__ = ["SAMPLERS", "sample", "ddim_invert", "check_eta"]

SAMPLERS = ("ddpm", "ddim", "dpmpp-2m")


def check_eta(eta) -> float | str:
    """η is a number ≥ 0, or ``"large"`` for the σ̂ variant of the DDIM paper (DDPM's β'_t variance)."""
    if isinstance(eta, str):
        if eta == "large":
            return eta
        try:
            eta = float(eta)
        except ValueError:
            raise ValueError(f"eta must be a number >= 0 or 'large', got {eta!r}") from None
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0 or 'large', got {eta!r}")
    return float(eta)


def _grid(schedule, steps, spacing, steps_offset, default):
    return timesteps(schedule, default if steps is None else steps, spacing, steps_offset)


def _check_input(x: torch.Tensor, name: str):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor")
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch (B, ...), got shape {tuple(x.shape)}")


def _labels(class_labels, x: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    if labels.numel() != x.shape[0]:
        raise ValueError(f"got {labels.numel()} class labels for a batch of {x.shape[0]}")
    return labels


SELF_CONDITION = (None, "feedback", "empty")


def _denoiser(model: Callable, self_condition: str | None, *args) -> tuple[Denoiser, Callable]:
    """The :class:`Denoiser` of ``model`` and what the samplers call (:mod:`ddimkit.self_condition`): for a
    plain network (``None``) both are the same; for a self-conditioned one, ``"feedback"`` gives each call
    the x̂0 of the call before on a fresh trajectory, ``"empty"`` gives every call none."""
    if self_condition not in SELF_CONDITION:
        raise ValueError(f"self_condition must be one of {SELF_CONDITION}, got {self_condition!r}")
    if self_condition is None:
        d = Denoiser(model, *args)
        return d, d
    sc = SelfConditioning(model)
    d = Denoiser(sc.net, *args)
    return d, (sc.track(d) if self_condition == "feedback" else d)


def _check_start(schedule: NoiseSchedule, grid: torch.Tensor, denoiser: Denoiser):
    if denoiser.prediction_type == "epsilon" and schedule.alphas_cumprod[grid[0]] == 0:
        raise ValueError("an epsilon-prediction model cannot start at zero SNR (ᾱ = 0); "
                         "use v_prediction or sample, or a grid that skips the last timestep")


def sample(model: Callable, x_T: torch.Tensor, schedule: NoiseSchedule, sampler: str = "ddim",
           steps: int | Sequence[int] | None = None, eta: float | str = 0.0, spacing: str = "leading",
           prediction_type: str = "epsilon", clip_sample: float | None = None, generator: Generator = None,
           callback: Callable | None = None, variance: str = "small", thresholding: float | None = None,
           sample_max_value: float = 1.0, use_clipped_model_output: bool = False, steps_offset: int = 0,
           set_alpha_to_one: bool = True, self_condition: str | None = None,
           class_labels: torch.Tensor | None = None, guidance_scale: float = 1.0,
           null_label: int | None = None) -> torch.Tensor:
    """Generate samples from the starting noise ``x_T``.

    Args:
        model: ``model(x, t) -> tensor`` with ``t`` a LongTensor of shape (batch,).
        x_T: starting noise, a float tensor (B, C, H, W) (any shape with a batch dimension works).
        schedule: the model's training :class:`NoiseSchedule`.
        sampler: ``ddim``, ``ddpm`` (ancestral; respaced on a sub-grid) or ``dpmpp-2m`` (DPM-Solver++(2M)).
        steps: number of steps N (default: T for ``ddpm``, 50 otherwise), or an explicit decreasing grid.
        eta: DDIM's η ≥ 0 (0 = deterministic, 1 on the full grid = DDPM); ``"large"`` gives the σ̂ variant
            of DDIM's Table 1, i.e. ancestral steps with DDPM's large variance β'_t on the DDIM grid.
        spacing: ``leading``, ``trailing``, ``linspace`` or ``quadratic`` (see :func:`timesteps`).
        prediction_type: what the model predicts: ``epsilon``, ``sample`` (x0) or ``v_prediction``.
        clip_sample: ``None`` for no clipping, or r to clip x̂0 to [-r, r].
        generator: a ``torch.Generator`` for the per-step noise, or one per sample (per-sample seeds).
        callback: called every step with ``{"i", "t", "x", "x0", "eps"}``.
        variance: for ``ddpm``: ``small`` (β̃) or ``large`` (β).
        thresholding: dynamic-thresholding quantile (e.g. 0.995), instead of ``clip_sample``.
        sample_max_value: the largest threshold dynamic thresholding may use.
        use_clipped_model_output: re-derive ε̂ from the clipped x̂0 (off, as in diffusers' DDIM).
        steps_offset: added to a ``leading`` grid.
        set_alpha_to_one: the last step goes to ᾱ = 1 (the clean image); otherwise to ᾱ_0.
        self_condition: ``None`` for a plain ``model``; for a self-conditioned one (2C input channels,
            :mod:`ddimkit.self_condition`) ``"feedback"`` (each step sees the x̂0 of the step before: its
            sampler) or ``"empty"`` (no step sees an estimate: a path that depends on (x, t) alone).
        class_labels: for a class-conditional ``model(x, t, class_labels)``, a LongTensor (B,) of labels.
        guidance_scale: classifier-free guidance's w (:mod:`ddimkit.guidance`): 1 (the conditional network
            alone), 0 (the unconditional one) or more; any value but 1 needs ``null_label``.
        null_label: the label the network was trained to read as "no class".

    Returns:
        The samples x_0, same shape and dtype as ``x_T``.

    Example:
        >>> s = NoiseSchedule.linear()
        >>> x = sample(model, torch.randn(4, 1, 28, 28), s, sampler="ddim", steps=50, eta=0.0)
    """
    _check_input(x_T, "x_T")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    eta = check_eta(eta)
    check_guidance(class_labels, guidance_scale, null_label)
    if class_labels is not None:
        model = conditioned(model, _labels(class_labels, x_T), guidance_scale, null_label)
    denoiser, call = _denoiser(model, self_condition, prediction_type, clip_sample, thresholding, sample_max_value,
                               use_clipped_model_output)
    grid = _grid(schedule, steps, spacing, steps_offset, schedule.num_train_timesteps if sampler == "ddpm" else 50)
    _check_start(schedule, grid, denoiser)
    ab = schedule.alphas_cumprod
    final = 1.0 if set_alpha_to_one else float(ab[0])
    if sampler == "ddpm" or eta == "large":
        if sampler == "ddpm" and eta not in (0.0, "large"):
            raise ValueError("eta applies to the ddim sampler; ddpm takes variance='small' or 'large'")
        variance = "large" if eta == "large" else variance
        return sample_ddpm(call, x_T, ab, grid, variance, generator, callback, final)
    if sampler == "dpmpp-2m":
        if eta != 0:
            raise ValueError("dpmpp-2m is deterministic; eta must be 0")
        return sample_dpmpp_2m(call, x_T, ab, grid, callback, final)
    return sample_ddim(call, x_T, ab, grid, eta, generator, callback, final)


def ddim_invert(model: Callable, x0: torch.Tensor, schedule: NoiseSchedule, steps: int | Sequence[int] = 50,
                spacing: str = "leading", prediction_type: str = "epsilon", refine: int = 0,
                callback: Callable | None = None, steps_offset: int = 0,
                set_alpha_to_one: bool = True, self_condition: str | None = None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Map images ``x0`` (in [-1, 1]) to the noise from which DDIM (η = 0, same grid) regenerates them.

    Deterministic and never clipped. ``refine`` fixed-point iterations per step (one model call each) make
    the round trip ``sample(model, ddim_invert(model, x0, s), s, steps=...)`` near-exact. A self-conditioned
    model inverts with ``self_condition="empty"``, and decodes the same way: the estimates a sampler feeds
    back depend on the path taken, so only the path without them runs both ways. A class-conditional
    model takes ``class_labels`` (B,), and decodes with the same labels, unguided.

    Returns:
        x_T at the highest grid point, same shape as ``x0``.
    """
    _check_input(x0, "x0")
    if class_labels is not None:
        model = conditioned(model, _labels(class_labels, x0))
    denoiser, call = _denoiser(model, self_condition, prediction_type)
    grid = timesteps(schedule, steps, spacing, steps_offset)
    _check_start(schedule, grid, denoiser)
    final = 1.0 if set_alpha_to_one else float(schedule.alphas_cumprod[0])
    return invert_ddim(call, x0, schedule.alphas_cumprod, grid, refine, callback, final)
