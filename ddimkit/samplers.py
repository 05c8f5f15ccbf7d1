"""Samplers as pure functions over (denoiser, x, ᾱ, grid).

Each sampler walks a strictly decreasing grid of training timesteps t_0 > t_1 > ... > t_{N-1} and steps
from t_i to the next grid point, the last step going to ᾱ = ``final_alpha_cumprod`` (1: the clean image).
Nothing is stored between calls: the grid, the generator and the callback are arguments, and per-step
coefficients are computed once in float64 before the loop and cast to the sample's dtype and device, so
the loop itself never waits on the host.

``denoiser(x, t, a, s) -> (x̂0, ε̂)`` is a :class:`~ddimkit.denoiser.Denoiser` (or any callable of that
form); ``t`` is a LongTensor of shape (B,), and a = √ᾱ_t, s = √(1-ᾱ_t).

``callback`` receives a dict per step: ``i`` (step index), ``t`` (int timestep), ``x`` (x_t before the step),
``x0`` (x̂0) and ``eps`` (ε̂).
"""

from __future__ import annotations

from typing import Callable

import torch

from .diffusion import posterior_coefficients
from .noise import Generator, randn

__all__ = ["sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "invert_ddim", "ddim_sigmas"]


def _levels(alphas_cumprod: torch.Tensor, grid: torch.Tensor, final_alpha_cumprod: float):
    """ᾱ at each grid point and at the point each step goes to (float64, CPU)."""
    ab = alphas_cumprod.to(torch.float64).cpu()
    grid = grid.cpu()
    ab_t = ab[grid]
    ab_s = torch.cat([ab[grid[1:]], torch.tensor([float(final_alpha_cumprod)], dtype=torch.float64)])
    return ab_t, ab_s


def _table(like: torch.Tensor, *rows: torch.Tensor) -> list[torch.Tensor]:
    """Stack float64 per-step rows, cast once to the sample's dtype and device."""
    table = torch.stack(rows).to(device=like.device, dtype=like.dtype)
    return list(table.unbind(0))


class _FiniteWatch:
    """Remembers, on the device, the first step whose x̂0 or ε̂ is not finite; raises once at the end."""

    def __init__(self, like: torch.Tensor, grid: torch.Tensor):
        self.first = torch.full((), -1, dtype=torch.long, device=like.device)
        self.grid = grid.cpu()

    def see(self, i: int, x0: torch.Tensor, eps: torch.Tensor):
        ok = torch.isfinite(x0).all() & torch.isfinite(eps).all()
        self.first = torch.where((self.first < 0) & ~ok, i, self.first)

    def check(self):
        i = int(self.first)
        if i >= 0:
            raise ValueError(f"the model output is not finite at step {i} (t={int(self.grid[i])})")


def _model_t(grid: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-step LongTensors of shape (B,), on the device, made before the loop."""
    return list(grid.to(x.device).unsqueeze(1).expand(-1, x.shape[0]).unbind(0))


def _emit(callback, i, grid, x, x0, eps):
    if callback is not None:
        callback({"i": i, "t": int(grid[i]), "x": x, "x0": x0, "eps": eps})


def ddim_sigmas(ab_t: torch.Tensor, ab_s: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_s)  (DDIM eq. 16), elementwise in float64."""
    return eta * ((1 - ab_s) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_s).sqrt()


@torch.no_grad()
def sample_ddim(denoiser: Callable, x: torch.Tensor, alphas_cumprod: torch.Tensor, grid: torch.Tensor,
                eta: float = 0.0, generator: Generator = None, callback: Callable | None = None,
                final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_s = √ᾱ_s x̂0 + √(1-ᾱ_s-σ²) ε̂ + σ z, with σ from eq. 16.

    η = 0 is deterministic; η = 1 on the full grid is DDPM with the small variance. With η > 0 one
    noise tensor is drawn on every step, in step order (the randomness contract).
    """
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ab_t, ab_s = _levels(alphas_cumprod, grid, final_alpha_cumprod)
    sigma = ddim_sigmas(ab_t, ab_s, eta)
    direction = 1 - ab_s - sigma**2
    if (direction < -1e-12).any():
        raise ValueError(f"eta={eta} is too large for this grid: σ² exceeds 1-ᾱ of the next step")
    a, s, a_next, d_next, sig = _table(x, ab_t.sqrt(), (1 - ab_t).sqrt(), ab_s.sqrt(),
                                       direction.clamp(min=0).sqrt(), sigma)
    ts, watch = _model_t(grid, x), _FiniteWatch(x, grid)
    for i in range(len(ts)):
        x0, eps = denoiser(x, ts[i], a[i], s[i])
        watch.see(i, x0, eps)
        _emit(callback, i, grid, x, x0, eps)
        x_next = a_next[i] * x0 + d_next[i] * eps
        if eta > 0:
            x_next = x_next + sig[i] * randn(x.shape, generator, x.dtype, x.device)
        x = x_next
    watch.check()
    return x


@torch.no_grad()
def sample_ddpm(denoiser: Callable, x: torch.Tensor, alphas_cumprod: torch.Tensor, grid: torch.Tensor,
                variance: str = "small", generator: Generator = None, callback: Callable | None = None,
                final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020, Alg. 2) on any grid: x_s ~ q(x_s | x_t, x̂0).

    On a sub-grid this is respaced DDPM (Nichol & Dhariwal 2021, §4): α'_t = ᾱ_t/ᾱ_s replaces α_t.
    ``variance`` is ``small`` (β̃'_t, the posterior's) or ``large`` (β'_t; the σ̂ row of DDIM's Table 1).
    Noise is drawn on every step but the last, which returns the mean (the randomness contract).
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    ab_t, ab_s = _levels(alphas_cumprod, grid, final_alpha_cumprod)
    c_x0, c_xt, var_small, var_large = posterior_coefficients(ab_t, ab_s)
    std = (var_small if variance == "small" else var_large).clamp(min=0).sqrt()
    a, s, c0, ct, sd = _table(x, ab_t.sqrt(), (1 - ab_t).sqrt(), c_x0, c_xt, std)
    ts, watch = _model_t(grid, x), _FiniteWatch(x, grid)
    last = len(ts) - 1
    for i in range(len(ts)):
        x0, eps = denoiser(x, ts[i], a[i], s[i])
        watch.see(i, x0, eps)
        _emit(callback, i, grid, x, x0, eps)
        x_next = c0[i] * x0 + ct[i] * x
        if i < last:
            x_next = x_next + sd[i] * randn(x.shape, generator, x.dtype, x.device)
        x = x_next
    watch.check()
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Callable, x: torch.Tensor, alphas_cumprod: torch.Tensor, grid: torch.Tensor,
                    callback: Callable | None = None, final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order in the data prediction (Lu et al. 2022, Alg. 2).

    With λ = log(α/σ), h = λ_s - λ_t and r = h_prev/h:
        D   = (1 + 1/(2r)) x̂0_t - 1/(2r) x̂0_prev
        x_s = (σ_s/σ_t) x_t - α_s (e^{-h} - 1) D
    The first step and the final step (to σ = 0, where h is infinite) are first order, which is DDIM.
    Deterministic: no noise is drawn.
    """
    ab_t, ab_s = _levels(alphas_cumprod, grid, final_alpha_cumprod)
    n = len(grid)
    lam_t = 0.5 * (ab_t.log() - (1 - ab_t).log())
    lam_s = 0.5 * (ab_s.log() - (1 - ab_s).log())
    h = lam_s - lam_t
    # Ratio of the previous step size to this one; unused (set to 1) on first-order steps.
    r = torch.ones(n, dtype=torch.float64)
    r[1:] = h[:-1] / h[1:]
    second = torch.zeros(n, dtype=torch.bool)
    second[1:] = torch.isfinite(h[1:]) & (ab_s[1:] < 1)
    w_prev = torch.where(second, -1 / (2 * r), torch.zeros(n, dtype=torch.float64))
    # x_s = (σ_s/σ_t) x_t + α_s (1 - e^{-h}) D; at σ_s = 0 this is α_s D.
    c_x = ((1 - ab_s) / (1 - ab_t)).sqrt()
    c_d = ab_s.sqrt() * (-torch.expm1(-h)).nan_to_num(nan=1.0)
    a, s, cx, cd, wp = _table(x, ab_t.sqrt(), (1 - ab_t).sqrt(), c_x, c_d, w_prev)
    ts, watch = _model_t(grid, x), _FiniteWatch(x, grid)
    x0_prev = None
    for i in range(n):
        x0, eps = denoiser(x, ts[i], a[i], s[i])
        watch.see(i, x0, eps)
        _emit(callback, i, grid, x, x0, eps)
        d = x0 if x0_prev is None or not second[i] else (1 - wp[i]) * x0 + wp[i] * x0_prev
        x = cx[i] * x + cd[i] * d
        x0_prev = x0
    watch.check()
    return x


@torch.no_grad()
def invert_ddim(denoiser: Callable, x0: torch.Tensor, alphas_cumprod: torch.Tensor, grid: torch.Tensor,
                refine: int = 0, callback: Callable | None = None,
                final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    """DDIM inversion: run the η = 0 step backwards, image → noise, over the same grid.

    From level ᾱ_lo to the next higher grid point ᾱ_hi (DDIM eq. 13 read upwards):
        x_hi = √ᾱ_hi x̂0(x_lo, ε̂) + √(1-ᾱ_hi) ε̂.
    Plain inversion evaluates ε̂ at the lower point (at the first step, where the lower point is the
    clean image, at the first grid point). The exact inverse of a DDIM step needs ε̂ at the *upper* point,
    which depends on x_hi itself; ``refine`` fixed-point iterations x_hi ← f(x_lo, ε̂(x_hi, t_hi)) solve
    for it, each costing one more model call, and make image → noise → image near-exact.
    The denoiser must not clip (inversion never clips). Returns x at the highest grid point.
    """
    if not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be a non-negative integer, got {refine!r}")
    ab_t, ab_s = _levels(alphas_cumprod, grid, final_alpha_cumprod)
    # Walk the grid upwards: step k goes from level lo_k to the grid point hi_k.
    up = grid.flip(0)
    ab_hi, ab_lo = ab_t.flip(0), ab_s.flip(0)
    a_hi, s_hi, a_lo, s_lo = _table(x0, ab_hi.sqrt(), (1 - ab_hi).sqrt(), ab_lo.sqrt(), (1 - ab_lo).sqrt())
    t_hi = _model_t(up, x0)
    # ε̂ for the plain step is taken at the lower grid point, or at the first point for the first step.
    t_eval = t_hi[:1] + t_hi[:-1]
    a_eval, s_eval = torch.cat([a_hi[:1], a_hi[:-1]]), torch.cat([s_hi[:1], s_hi[:-1]])
    watch = _FiniteWatch(x0, up)
    x = x0
    for k in range(len(up)):
        x0_hat, eps = denoiser(x, t_eval[k], a_eval[k], s_eval[k])
        watch.see(k, x0_hat, eps)
        _emit(callback, k, up, x, x0_hat, eps)
        x_hi = a_hi[k] * (x - s_lo[k] * eps) / a_lo[k] + s_hi[k] * eps
        for _ in range(refine):
            _, eps = denoiser(x_hi, t_hi[k], a_hi[k], s_hi[k])
            x_hi = a_hi[k] * (x - s_lo[k] * eps) / a_lo[k] + s_hi[k] * eps
        x = x_hi
    watch.check()
    return x
