"""Models whose ideal predictions are known in closed form, for exact sampler tests."""

import torch

import ddimkit as dk


class PointMass(torch.nn.Module):
    """The ideal ε̂ when the data is the single image x*: ε̂ = (x_t - √ᾱ x*)/√(1-ᾱ)."""

    def __init__(self, schedule: dk.NoiseSchedule, target: torch.Tensor):
        super().__init__()
        self.ab = schedule.alphas_cumprod
        self.target = target

    def forward(self, x, t):
        ab = self.ab[t.cpu()].reshape(-1, *[1] * (x.ndim - 1))
        return ((x.double() - ab.sqrt() * self.target.double()) / (1 - ab).sqrt()).to(x.dtype)


class Gaussian(torch.nn.Module):
    """The ideal ε̂ when the data is N(μ, s²I): ε̂ = √(1-ᾱ)(x_t - √ᾱ μ)/(ᾱ s² + 1 - ᾱ).

    ``prediction_type`` converts the ideal ε̂ into the ideal x0 or v prediction.
    """

    def __init__(self, schedule: dk.NoiseSchedule, mu: float, var: float, prediction_type="epsilon"):
        super().__init__()
        self.ab, self.mu, self.var, self.pt = schedule.alphas_cumprod, mu, var, prediction_type

    def coefficients(self, t: int):
        """ε̂ = k x + c at timestep t (float64 scalars)."""
        ab = float(self.ab[t])
        k = (1 - ab) ** 0.5 / (ab * self.var + 1 - ab)
        return k, -k * ab**0.5 * self.mu

    def forward(self, x, t):
        ab = self.ab[t.cpu()].reshape(-1, *[1] * (x.ndim - 1))
        xd = x.double()
        eps = (1 - ab).sqrt() * (xd - ab.sqrt() * self.mu) / (ab * self.var + 1 - ab)
        x0 = (xd - (1 - ab).sqrt() * eps) / ab.sqrt()
        out = dk.prediction_target(x0, eps, ab.sqrt(), (1 - ab).sqrt(), self.pt)
        return out.to(x.dtype)


def gaussian_moments(model: Gaussian, grid, sampler: str, eta: float = 0.0, variance: str = "small",
                     mean: float = 0.0, var: float = 1.0):
    """Exact mean and variance of a sampler's output for the Gaussian oracle, by a float64 scalar recursion.

    Every step is x_s = A x_t + B + σ z, so the moments follow m' = A m + B, v' = A² v + σ².
    Written from the papers' formulas independently of ddimkit's samplers.
    """
    ab = model.ab
    grid = [int(t) for t in grid]
    for i, t in enumerate(grid):
        a_t = float(ab[t])
        a_s = float(ab[grid[i + 1]]) if i + 1 < len(grid) else 1.0
        k, c = model.coefficients(t)
        # x̂0 = (x - √(1-ᾱ_t) ε̂)/√ᾱ_t with ε̂ = k x + c
        x0_A, x0_B = (1 - (1 - a_t) ** 0.5 * k) / a_t**0.5, -(1 - a_t) ** 0.5 * c / a_t**0.5
        if sampler == "ddim":
            sig = eta * ((1 - a_s) / (1 - a_t)) ** 0.5 * (1 - a_t / a_s) ** 0.5
            d = max(1 - a_s - sig**2, 0.0) ** 0.5
            A, B = a_s**0.5 * x0_A + d * k, a_s**0.5 * x0_B + d * c
            noise = sig**2
        else:  # ddpm: posterior mean with x̂0, variance small or large; no noise on the last step
            alpha = a_t / a_s
            beta = 1 - alpha
            c0, ct = a_s**0.5 * beta / (1 - a_t), alpha**0.5 * (1 - a_s) / (1 - a_t)
            A, B = c0 * x0_A + ct, c0 * x0_B
            noise = 0.0 if i == len(grid) - 1 else ((1 - a_s) / (1 - a_t) * beta if variance == "small" else beta)
        mean, var = A * mean + B, A * A * var + noise
    return mean, var
