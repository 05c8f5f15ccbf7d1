"""The forward process, its posterior, and the one place where ε / x0 / v are converted.

Every prediction target is a view of the same (x0, ε) pair at noise level ᾱ_t:

    x_t = √ᾱ x0 + √(1-ᾱ) ε                      (DDPM eq. 4)
    v   = √ᾱ ε - √(1-ᾱ) x0                      (Salimans & Ho 2022, §4)

Conversions take the noise level as the pair a = √ᾱ, s = √(1-ᾱ) (EDM's α_t, σ_t), already cast to the
sample's dtype; :func:`levels` produces them from a schedule in float64.
"""

from __future__ import annotations

import torch

from .schedule import NoiseSchedule
from .self_condition import with_estimate

__all__ = [
    "PREDICTION_TYPES", "check_prediction_type", "levels", "add_noise", "to_x0_eps", "prediction_target",
    "posterior_coefficients", "posterior_mean_variance", "ddpm_mean_from_eps", "loss_weight", "timestep_probabilities",
    "training_loss",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_ALIASES = {"eps": "epsilon", "epsilon": "epsilon", "x0": "sample", "sample": "sample", "v": "v_prediction",
            "v_prediction": "v_prediction"}


def check_prediction_type(prediction_type: str) -> str:
    """Normalise a prediction type: ``epsilon``/``eps``, ``sample``/``x0``, ``v_prediction``/``v``."""
    try:
        return _ALIASES[prediction_type]
    except (KeyError, TypeError):
        raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of "
                         "epsilon (eps), sample (x0), v_prediction (v)") from None


def levels(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor):
    """(√ᾱ_t, √(1-ᾱ_t)) for a LongTensor ``t`` of shape (B,), shaped (B, 1, ..., 1) like ``like``.

    Both are computed in float64 and cast once: 1 - ᾱ in float32 loses three digits when ᾱ ≈ 1.
    """
    t = torch.as_tensor(t, dtype=torch.long).cpu()
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    T = schedule.num_train_timesteps
    if t.numel() and (t.min() < 0 or t.max() >= T):
        raise ValueError(f"timesteps must lie in [0, {T - 1}]")
    ab = schedule.alphas_cumprod[t]
    shape = ab.shape + (1,) * (like.ndim - ab.ndim)

    def cast(v):
        return v.reshape(shape).to(device=like.device, dtype=like.dtype)

    return cast(ab.sqrt()), cast((1 - ab).sqrt())


def add_noise(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x0): √ᾱ_t x0 + √(1-ᾱ_t) ε (DDPM eq. 4). ``t`` is a LongTensor of shape (B,) or a scalar."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    a, s = levels(schedule, t, x0)
    return a * x0 + s * noise


def to_x0_eps(pred: torch.Tensor, x_t: torch.Tensor, a, s, prediction_type: str):
    """Turn a network output into (x̂0, ε̂) at the level a = √ᾱ, s = √(1-ᾱ) (DDIM eq. 9 and analogues)."""
    prediction_type = check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a, pred
    if prediction_type == "sample":
        return pred, (x_t - a * pred) / s
    if prediction_type == "v_prediction":
        return a * x_t - s * pred, s * x_t + a * pred
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def prediction_target(x0: torch.Tensor, eps: torch.Tensor, a, s, prediction_type: str):
    """The training target at level a = √ᾱ, s = √(1-ᾱ): ε, x0 or v = a ε - s x0."""
    prediction_type = check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def posterior_coefficients(abar_t, abar_s):
    """Coefficients of q(x_s | x_t, x0) for s < t on any grid (DDPM eq. 6–7, with α'_t = ᾱ_t/ᾱ_s).

    ``abar_s = 1`` stands for the end of the chain (s < 0). Works elementwise on float64 tensors.
    Returns (c_x0, c_xt, var_small, var_large): mean = c_x0 x0 + c_xt x_t, variance β̃'_t or β'_t.
    """
    abar_t, abar_s = torch.as_tensor(abar_t, dtype=torch.float64), torch.as_tensor(abar_s, dtype=torch.float64)
    alpha = abar_t / abar_s
    beta = 1 - alpha
    c_x0 = abar_s.sqrt() * beta / (1 - abar_t)
    c_xt = alpha.sqrt() * (1 - abar_s) / (1 - abar_t)
    return c_x0, c_xt, (1 - abar_s) / (1 - abar_t) * beta, beta


def posterior_mean_variance(x0: torch.Tensor, x_t: torch.Tensor, abar_t, abar_s):
    """Mean and ("small") variance of q(x_s | x_t, x0); see :func:`posterior_coefficients`."""
    c_x0, c_xt, var, _ = posterior_coefficients(abar_t, abar_s)
    return c_x0.to(x0.dtype) * x0 + c_xt.to(x0.dtype) * x_t, var


def ddpm_mean_from_eps(eps: torch.Tensor, x_t: torch.Tensor, abar_t, abar_s):
    """The same posterior mean written with ε̂ (DDPM eq. 11): (x_t - β'_t/√(1-ᾱ_t) ε̂) / √α'_t."""
    abar_t, abar_s = torch.as_tensor(abar_t, dtype=torch.float64), torch.as_tensor(abar_s, dtype=torch.float64)
    alpha = abar_t / abar_s
    c_eps = ((1 - alpha) / (1 - abar_t).sqrt()).to(x_t.dtype)
    return (x_t - c_eps * eps) / alpha.sqrt().to(x_t.dtype)


def loss_weight(snr: torch.Tensor, prediction_type: str, min_snr_gamma: float | None) -> torch.Tensor:
    """Per-sample loss weight that makes each target's MSE equal to min(SNR, γ)-weighted x0 error.

    Min-SNR-γ (Hang et al. 2023, eq. 9): weight the x0 error by min(SNR, γ). An ε error equals the x0 error
    times SNR, a v error the x0 error times (SNR + 1), hence the divisions. ``None`` means unweighted.
    """
    if min_snr_gamma is None:
        return torch.ones_like(snr)
    if min_snr_gamma <= 0:
        raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
    clipped = snr.clamp(max=min_snr_gamma)
    if prediction_type == "epsilon":
        # min(SNR, γ)/SNR → 1 as SNR → 0 (a zero-terminal-SNR schedule reaches it).
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))
    if prediction_type == "sample":
        return clipped
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def timestep_probabilities(schedule: NoiseSchedule, min_snr_gamma: float | None,
                           uniform_share: float = 0.1) -> torch.Tensor:
    """Importance sampling of training timesteps, float64, summing to 1: p(t) ∝ min(SNR_t, γ), mixed with
    ``uniform_share`` of the uniform distribution.

    With uniform t, min-SNR-γ spends much of a batch where its weight is small: on the linear schedule,
    t > 600 weighs under a tenth of t < 400. Drawing t from p and dividing each sample's loss by T·p(t)
    (``training_loss(..., probabilities=p)``) keeps the expected loss, and so the expected gradient, that
    of uniform t, while the samples' weights become nearly equal (lower variance). The uniform share keeps
    every t drawn, the zero-SNR end of a rescaled schedule included. ``None`` (unweighted) gives uniform t.
    """
    if not 0 < uniform_share <= 1:
        raise ValueError(f"uniform_share must lie in (0, 1], got {uniform_share}")
    snr = schedule.snr.to(torch.float64)
    w = torch.ones_like(snr) if min_snr_gamma is None else snr.clamp(max=float(min_snr_gamma))
    return (1 - uniform_share) * w / w.sum() + uniform_share / len(w)


def _with_labels(model, class_labels: torch.Tensor):
    return lambda x, t: model(x, t, class_labels)


def training_loss(model, x0: torch.Tensor, schedule: NoiseSchedule, t: torch.Tensor, noise: torch.Tensor,
                  prediction_type: str = "epsilon", min_snr_gamma: float | None = None,
                  probabilities: torch.Tensor | None = None, input_noise: torch.Tensor | None = None,
                  self_condition: bool | None = None, estimator=None,
                  class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample denoising loss: ‖model(x_t, t) - target‖² averaged over pixels (DDPM eq. 14, L_simple).

    The caller draws ``t`` and ``noise`` so that randomness stays explicit: ``t`` uniform over [0, T), or
    from ``probabilities`` (:func:`timestep_probabilities`), whose samples are then weighted by 1/(T p(t))
    so that the expected loss is the uniform one. ``input_noise``, when given, replaces ``noise`` in the
    network's input x_t only, the target keeping ``noise``: input perturbation (Ning et al. 2023, eq. 9),
    which trains the network on inputs a little off the forward process, as a sampler's own errors make
    them. ``self_condition`` is ``None`` for a plain network; for a self-conditioned one
    (:mod:`ddimkit.self_condition`) ``False`` gives it no estimate and ``True`` its own x̂0 from a first pass
    without gradient, clipped to [-1, 1]; the caller draws which. ``estimator`` runs that first pass
    (default: ``model``): the trainer passes the plain network, so that a compiled one is only ever called
    with gradients on and compiles one graph. ``class_labels`` (B,) go to a class-conditional network as
    ``model(x_t, t, class_labels)`` (:mod:`ddimkit.guidance`). Returns a tensor of shape (B,); take
    ``.mean()`` for the batch loss.
    """
    if class_labels is not None:
        model, estimator = (None if m is None else _with_labels(m, class_labels) for m in (model, estimator))
    prediction_type = check_prediction_type(prediction_type)
    a, s = levels(schedule, t, x0)
    x_t = a * x0 + s * (noise if input_noise is None else input_noise)
    if self_condition is not None:
        estimate = None
        if self_condition:
            with torch.no_grad():
                first = (model if estimator is None else estimator)(with_estimate(x_t), t)
                estimate = to_x0_eps(getattr(first, "sample", first).float(), x_t.float(), a, s,
                                     prediction_type)[0].clamp(-1, 1)
        x_t = with_estimate(x_t, estimate)
    out = model(x_t, t)
    out = getattr(out, "sample", out)
    target = prediction_target(x0, noise, a, s, prediction_type)
    per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)
    snr = schedule.snr[t.cpu()].to(per_sample.device, per_sample.dtype)
    weight = loss_weight(snr, prediction_type, min_snr_gamma)
    if probabilities is not None:
        p = probabilities[t.cpu()].to(per_sample.device, per_sample.dtype)
        weight = weight / (schedule.num_train_timesteps * p)
    return per_sample * weight
