"""Noise schedules and timestep grids.

A :class:`NoiseSchedule` is immutable data: the betas of the forward process in
float64 and everything derived from them. Samplers read ᾱ (``alphas_cumprod``)
and cast once, where it meets the sample's dtype.

A timestep grid (:func:`timesteps`) is also plain data: a strictly decreasing
LongTensor of the training timesteps a sampler visits. Respacing is choosing a
grid, nothing more (improved-diffusion's ``respace.py`` idea).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = ["NoiseSchedule", "timesteps", "SPACINGS"]

SPACINGS = ("leading", "trailing", "linspace", "quadratic", "logsnr")


def _check_betas(betas: torch.Tensor) -> torch.Tensor:
    betas = torch.as_tensor(betas, dtype=torch.float64).flatten().clone()
    if betas.numel() < 1:
        raise ValueError("a noise schedule needs at least one beta")
    if not torch.isfinite(betas).all():
        raise ValueError("betas must be finite")
    if (betas <= 0).any() or (betas > 1).any():
        raise ValueError("betas must lie in (0, 1]")
    return betas


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so that ᾱ_{T-1} = 0 and ᾱ_0 is unchanged (Lin et al. 2024, Algorithm 1)."""
    sqrt_ab = torch.cumprod(1.0 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I), for t = 0..T-1.

    Build one with a class method (:meth:`linear`, :meth:`scaled_linear`, :meth:`cosine`,
    :meth:`sigmoid`, :meth:`from_betas`) or from its JSON form with :meth:`from_config`.
    All tensors are float64 on the CPU and must not be modified.

    Attributes:
        betas: β_t, shape (T,).
        alphas: α_t = 1 - β_t.
        alphas_cumprod: ᾱ_t = ∏_{s≤t} α_s.
        config: the JSON-able recipe this schedule was made from.
    """

    betas: torch.Tensor
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        betas = _check_betas(self.betas)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas", 1.0 - betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, 0))
        if not self.config:
            object.__setattr__(self, "config", {"kind": "betas", "betas": betas.tolist()})

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def _make(cls, betas, config, rescale_zero_terminal_snr):
        betas = _check_betas(betas)
        if rescale_zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
        config = dict(config, rescale_zero_terminal_snr=bool(rescale_zero_terminal_snr))
        return cls(betas, config)

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               rescale_zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """β linear in t from ``beta_start`` to ``beta_end`` (DDPM, Ho et al. 2020, §4)."""
        T = _check_T(num_train_timesteps)
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls._make(betas, dict(kind="linear", num_train_timesteps=T, beta_start=beta_start,
                                     beta_end=beta_end), rescale_zero_terminal_snr)

    @classmethod
    def scaled_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012, rescale_zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """√β linear in t (the latent-diffusion schedule)."""
        T = _check_T(num_train_timesteps)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
        return cls._make(betas, dict(kind="scaled_linear", num_train_timesteps=T, beta_start=beta_start,
                                     beta_end=beta_end), rescale_zero_terminal_snr)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999,
               rescale_zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), β capped at ``max_beta`` (Nichol & Dhariwal 2021, eq. 17)."""
        T = _check_T(num_train_timesteps)

        def abar(u):
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)],
                             dtype=torch.float64)
        return cls._make(betas, dict(kind="cosine", num_train_timesteps=T, s=s, max_beta=max_beta),
                         rescale_zero_terminal_snr)

    @classmethod
    def sigmoid(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                rescale_zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """β follows a sigmoid over [-6, 6] scaled to [beta_start, beta_end] (GeoDiff's schedule)."""
        T = _check_T(num_train_timesteps)
        betas = torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
        return cls._make(betas, dict(kind="sigmoid", num_train_timesteps=T, beta_start=beta_start,
                                     beta_end=beta_end), rescale_zero_terminal_snr)

    @classmethod
    def from_betas(cls, betas: Sequence[float] | torch.Tensor,
                   rescale_zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """A schedule from explicit betas."""
        betas = _check_betas(betas)
        return cls._make(betas, dict(kind="betas", betas=betas.tolist()), rescale_zero_terminal_snr)

    @classmethod
    def from_name(cls, name: str, num_train_timesteps: int = 1000, **kwargs) -> "NoiseSchedule":
        """``linear``, ``scaled_linear`` (or ``scaled-linear``), ``cosine`` or ``sigmoid`` with defaults."""
        makers = {"linear": cls.linear, "scaled_linear": cls.scaled_linear, "cosine": cls.cosine,
                  "sigmoid": cls.sigmoid}
        key = name.replace("-", "_")
        if key not in makers:
            raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(makers)}")
        return makers[key](num_train_timesteps=num_train_timesteps, **kwargs)

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        """Rebuild a schedule from its :attr:`config` (as stored in checkpoints)."""
        config = dict(config)
        kind = config.pop("kind", None)
        if kind == "betas":
            return cls.from_betas(config["betas"], config.get("rescale_zero_terminal_snr", False))
        if kind not in ("linear", "scaled_linear", "cosine", "sigmoid"):
            raise ValueError(f"unknown schedule kind {kind!r} in config")
        return getattr(cls, kind)(**config)

    # -- derived quantities -------------------------------------------------------------------

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.numel()

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t)."""
        ab = self.alphas_cumprod
        return ab / (1.0 - ab)

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)

    def __repr__(self):
        desc = {k: v for k, v in self.config.items() if k != "betas"}
        return f"NoiseSchedule({desc})"


def _check_T(T) -> int:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {T!r}")
    return T


def timesteps(schedule: NoiseSchedule | int, steps: int | Sequence[int], spacing: str = "leading",
              steps_offset: int = 0) -> torch.Tensor:
    """The descending grid of training timesteps that a sampler visits.

    Args:
        schedule: the schedule (or just its number of training steps T, for the spacings that need no more).
        steps: N, the number of sampling steps (1 ≤ N ≤ T); or an explicit list of timesteps,
            which must be strictly decreasing and lie in [0, T).
        spacing: how N points are placed among the T (DDIM paper §D.2; Lin et al. 2024, Table 2):

            ``leading``    (arange(N)·(T//N))[::-1] + steps_offset
            ``trailing``   round(arange(T, 0, -T/N)) - 1
            ``linspace``   round(linspace(0, T-1, N))[::-1]
            ``quadratic``  int(linspace(0, √(0.8T), N)²)[::-1]  (the DDIM paper's CIFAR-10 grid; where it
                           repeats a timestep, the repeat moves up to the next free one)
            ``logsnr``     uniform in λ = ½ log SNR from t = T-1 to 0 (DPM-Solver's choice; needs a schedule)
        steps_offset: added to a ``leading`` grid (diffusers' ``steps_offset``).

    Returns:
        LongTensor of shape (N,), strictly decreasing.
    """
    T = schedule if isinstance(schedule, int) else schedule.num_train_timesteps
    if not isinstance(steps, int) or isinstance(steps, bool):
        return _check_grid(steps, T)
    if steps < 1 or steps > T:
        raise ValueError(f"steps must be between 1 and the {T} training timesteps, got {steps}")
    if spacing == "leading":
        grid = torch.arange(steps, dtype=torch.float64).mul(T // steps).round().long().flip(0) + steps_offset
    elif spacing == "trailing":
        # The float step can leave a spurious last point near 0: keep exactly N.
        grid = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long() - 1)[:steps]
    elif spacing == "linspace":
        grid = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().flip(0)
    elif spacing == "quadratic":
        up = (torch.linspace(0, math.sqrt(T * 0.8), steps, dtype=torch.float64) ** 2).long()
        grid = _distinct(up.tolist(), T)
    elif spacing == "logsnr":
        grid = _distinct(_logsnr_uniform(schedule, steps), T)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return _check_grid(grid, T)


def _distinct(up: list[int], T: int) -> torch.Tensor:
    """Descending grid from ascending points; a repeated point moves to the next free timestep.

    From ~30 steps on, the DDIM paper's quadratic grid repeats small timesteps (0, 0, 1, 3, ...); a repeat
    is a wasted model call, so the grid keeps N distinct points instead: repeats move up, and where that
    would pass T-1 the top points move down.
    """
    n = len(up)
    for i in range(1, n):
        up[i] = max(up[i], up[i - 1] + 1)
    up[-1] = min(up[-1], T - 1)
    for i in range(n - 2, -1, -1):
        up[i] = min(up[i], up[i + 1] - 1)
    return torch.tensor(up[::-1], dtype=torch.long)


def _logsnr_uniform(schedule, steps: int) -> list[int]:
    """Timesteps (ascending) whose log-SNR λ = ½ log(ᾱ/(1-ᾱ)) is uniform between λ_{T-1} and λ_0.

    DPM-Solver's steps are uniform in λ (Lu et al. 2022, §3.3); multistep solvers need steps of similar
    size in λ, which uniform-in-t grids are far from near t = 0.
    """
    if isinstance(schedule, int):
        raise ValueError("logsnr spacing needs the NoiseSchedule, not just T")
    ab = schedule.alphas_cumprod
    lam = 0.5 * (ab.log() - (1 - ab).log())
    if not torch.isfinite(lam).all():
        raise ValueError("logsnr spacing needs a finite SNR at every timestep (not a zero-terminal-SNR schedule)")
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    # λ decreases with t: for each target take the timestep with the nearest λ.
    nearest = (lam.unsqueeze(0) - targets.unsqueeze(1)).abs().argmin(1)
    return sorted(nearest.tolist())


def _check_grid(grid, T: int) -> torch.Tensor:
    try:
        grid = torch.as_tensor(grid)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"a timestep grid must be a list of integers: {e}") from None
    if grid.ndim != 1 or grid.numel() < 1:
        raise ValueError("a timestep grid must be a non-empty 1-D list of integers")
    if grid.is_floating_point() or grid.is_complex():
        if not torch.equal(grid, grid.round()):
            raise ValueError("a timestep grid must hold integers")
    grid = grid.long()
    if grid.min() < 0 or grid.max() >= T:
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got {grid.min().item()}..{grid.max().item()}")
    if (grid[:-1] <= grid[1:]).any():
        raise ValueError("a timestep grid must be strictly decreasing")
    return grid
