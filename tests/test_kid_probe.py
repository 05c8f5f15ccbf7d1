"""benchmarks/kid_probe.py's sampling-time corrections: each against its closed form."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ddimkit.schedule import NoiseSchedule

BENCHMARKS = str(Path(__file__).parents[1] / "benchmarks")


@pytest.fixture
def kp(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import kid_probe

    return kid_probe


def test_gaussian_denoiser_is_the_posterior_mean_of_the_images_gaussian_fit(kp):
    """μ + Σ a (a² Σ + s² I)⁻¹ (x_t - a μ), solved directly, for the images' own mean and covariance; and x_t/a
    itself where the noise vanishes."""
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(400, 1, 4, 4, generator=g) * 255).to(torch.uint8)
    ab = NoiseSchedule.from_name("linear", 100).alphas_cumprod
    gauss = kp.GaussianDenoiser(images, ab)
    x = images.double().flatten(1) / 127.5 - 1
    mu, cov = x.mean(0), torch.cov(x.T, correction=0)
    xt = torch.randn(3, 1, 4, 4, generator=g)
    for t in (0, 50, 99):
        a, s2 = ab[t].double().sqrt(), 1 - ab[t].double()
        rhs = (xt.double().flatten(1) - a * mu).T
        want = mu + (a * cov @ torch.linalg.solve(a * a * cov + s2 * torch.eye(16), rhs)).T
        got = gauss(xt, torch.full((3,), t))
        assert torch.allclose(got.double().flatten(1), want, atol=1e-5), t
    tiny = kp.GaussianDenoiser(images, torch.tensor([1 - 1e-12], dtype=torch.float64))
    assert torch.allclose(tiny(xt, torch.zeros(3, dtype=torch.long)), xt, atol=1e-4)


class _Const(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, t):
        return torch.full_like(x, self.value)


def test_eps_scaling_and_the_guidance_interval_are_their_formulas(kp):
    """ε̂/λ's x̂0 is x̂0/λ + (1 - 1/λ) x_t/√ᾱ_t; outside the interval the guide is the model, so that
    g + w (m - g) is m, and inside it is the guide."""
    sched = NoiseSchedule.from_name("linear", 100)
    pipe = SimpleNamespace(prediction_type="sample", schedule=sched, model=_Const(0.5), guide=_Const(-0.5))
    kp._eps_scaled(pipe, 1.25)
    x, t = torch.ones(2, 1, 2, 2), torch.full((2,), 40)
    a = sched.alphas_cumprod[40].sqrt()
    assert torch.allclose(pipe.model(x, t), 0.5 / 1.25 + (1 - 1 / 1.25) * x / a)
    assert torch.allclose(pipe.guide(x, t), -0.5 / 1.25 + (1 - 1 / 1.25) * x / a)
    model, guide = _Const(0.5), _Const(-0.5)
    inside = kp._GuideInInterval(model, guide, 10, 50)
    for step, want in ((10, 0.5), (11, -0.5), (50, -0.5), (51, 0.5)):
        assert torch.equal(inside(x, torch.full((2,), step)), torch.full_like(x, want))
