import math

import pytest
import torch

import ddimkit as dk
from ddimkit.diffusion import ddpm_mean_from_eps, posterior_mean_variance
from oracles import Gaussian, PointMass, gaussian_moments

S = dk.NoiseSchedule.linear()


def _target(shape=(2, 1, 8, 8), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _noise(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- point-mass oracle ------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "quadratic"])
@pytest.mark.parametrize("steps", [1, 2, 10, 50, 100])
def test_point_mass_ddim_returns_the_image(spacing, steps):
    x_star = _target().double()
    model = PointMass(S, x_star)
    out = dk.sample(model, _noise(x_star.shape).double(), S, sampler="ddim", steps=steps, spacing=spacing)
    assert (out - x_star).abs().max() <= 1e-10
    # float32 too: 1e-5 holds unless the only step starts at ᾱ ≈ 4e-5, where x̂0 = (x - √(1-ᾱ) ε̂)/√ᾱ
    # amplifies the float32 rounding of ε̂ itself 150-fold (a property of ε-prediction, not the sampler).
    out32 = dk.sample(model, _noise(x_star.shape), S, sampler="ddim", steps=steps, spacing=spacing)
    tol = 1e-5 if steps > 1 or spacing in ("leading", "quadratic") else 5e-5
    assert (out32 - x_star.float()).abs().max() <= tol


def test_point_mass_full_grid_and_explicit_grid():
    x_star = _target()
    model = PointMass(S, x_star)
    for steps in (1000, [999, 700, 321, 5]):
        out = dk.sample(model, _noise(x_star.shape), S, sampler="ddim", steps=steps)
        assert (out - x_star).abs().max() <= 1e-5


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "quadratic"])
@pytest.mark.parametrize("steps", [10, 50])
def test_point_mass_invert_then_sample(spacing, steps):
    x_star = _target()
    model = PointMass(S, x_star)
    x_T = dk.ddim_invert(model, x_star, S, steps=steps, spacing=spacing)
    # For one image the ODE keeps x_t on the ray through x*: inversion must shrink it towards 0.
    assert x_T.shape == x_star.shape and x_T.abs().max() < 0.25 * x_star.abs().max()
    out = dk.sample(model, x_T, S, sampler="ddim", steps=steps, spacing=spacing)
    assert (out - x_star).abs().max() <= 1e-5


@pytest.mark.parametrize("pt", ["sample", "v_prediction"])
def test_point_mass_other_prediction_types(pt):
    x_star = _target()
    eps_model = PointMass(S, x_star)

    def model(x, t):
        eps = eps_model(x, t).double()
        ab = S.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = (x.double() - s * eps) / a
        return dk.prediction_target(x0, eps, a, s, pt).float()

    for sampler in ("ddim", "dpmpp-2m"):
        out = dk.sample(model, _noise(x_star.shape), S, sampler=sampler, steps=20, prediction_type=pt)
        assert (out - x_star).abs().max() <= 1e-5


def test_point_mass_dpmpp_2m_returns_the_image():
    x_star = _target().double()
    model = PointMass(S, x_star)
    for spacing in ("leading", "trailing", "linspace", "logsnr"):
        for steps in (1, 2, 5, 10, 20):
            out = dk.sample(model, _noise(x_star.shape).double(), S, sampler="dpmpp-2m", steps=steps,
                            spacing=spacing)
            assert (out - x_star).abs().max() <= 1e-10
    out32 = dk.sample(model, _noise(x_star.shape), S, sampler="dpmpp-2m", steps=10, spacing="logsnr")
    assert (out32 - x_star.float()).abs().max() <= 1e-5


# -- Gaussian oracle ---------------------------------------------------------------------------------

MU, VAR = 0.3, 0.25
N_SHAPE = (64, 1, 32, 32)  # 65,536 independent scalar samples


def _moments_ok(out, mean, var, n_se=5.0):
    n = out.numel()
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2.0 / n)
    assert abs(out.mean().item() - mean) < n_se * se_mean, (out.mean().item(), mean)
    assert abs(out.var().item() - var) < n_se * se_var, (out.var().item(), var)


def test_gaussian_recursion_matches_design_figures():
    """The independent recursion reproduces the figures quoted for 1000-step DDPM with s² = 0.25."""
    model = Gaussian(S, MU, VAR)
    grid = dk.timesteps(S, 1000)
    _, v_small = gaussian_moments(model, grid, "ddpm", variance="small")
    _, v_large = gaussian_moments(model, grid, "ddpm", variance="large")
    assert v_small == pytest.approx(0.2461, abs=5e-5)
    assert v_large == pytest.approx(0.2508, abs=5e-5)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_gaussian_ddpm_1000_steps(variance):
    model = Gaussian(S, MU, VAR)
    g = torch.Generator().manual_seed(0)
    out = dk.sample(model, torch.randn(N_SHAPE, generator=g), S, sampler="ddpm", variance=variance, generator=g)
    mean, var = gaussian_moments(model, dk.timesteps(S, 1000), "ddpm", variance=variance)
    _moments_ok(out, mean, var)
    # ...and the target itself within sampling error plus the known discretisation bias (< 2%).
    assert abs(out.mean().item() - MU) < 0.01 and abs(out.var().item() - VAR) < 0.02 * VAR + 0.005


@pytest.mark.parametrize("pt", ["epsilon", "sample", "v_prediction"])
def test_gaussian_ddim_50_steps(pt):
    model = Gaussian(S, MU, VAR, prediction_type=pt)
    g = torch.Generator().manual_seed(0)
    out = dk.sample(model, torch.randn(N_SHAPE, generator=g), S, sampler="ddim", steps=50, eta=0.0,
                    prediction_type=pt)
    mean, var = gaussian_moments(model, dk.timesteps(S, 50), "ddim")
    _moments_ok(out, mean, var)
    # The target itself: the mean is right; 50 η=0 steps shrink the variance to 0.2237 (the
    # discretisation bias that the exact recursion above accounts for).
    assert abs(out.mean().item() - MU) < 0.01 and abs(out.var().item() - VAR) < 0.12 * VAR


@pytest.mark.parametrize("eta,spacing,steps", [(0.5, "trailing", 20), (1.0, "linspace", 100),
                                               (0.2, "quadratic", 10)])
def test_gaussian_ddim_stochastic_moments(eta, spacing, steps):
    model = Gaussian(S, MU, VAR)
    g = torch.Generator().manual_seed(3)
    out = dk.sample(model, torch.randn(N_SHAPE, generator=g), S, sampler="ddim", steps=steps, eta=eta,
                    spacing=spacing, generator=g)
    mean, var = gaussian_moments(model, dk.timesteps(S, steps, spacing), "ddim", eta=eta)
    _moments_ok(out, mean, var)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "quadratic"])
def test_gaussian_ddim_is_the_exact_affine_map(spacing):
    """η = 0 is deterministic and affine per pixel: compare every pixel with the float64 recursion."""
    model = Gaussian(S, MU, VAR)
    x_T = _noise((4, 1, 8, 8))
    grid = dk.timesteps(S, 10, spacing)
    m0, _ = gaussian_moments(model, grid, "ddim", mean=0.0, var=0.0)
    m1, _ = gaussian_moments(model, grid, "ddim", mean=1.0, var=0.0)
    expected = m0 + (m1 - m0) * x_T.double()
    out = dk.sample(model, x_T, S, sampler="ddim", steps=10, spacing=spacing)
    assert (out.double() - expected).abs().max() <= 1e-5
    out64 = dk.sample(model, x_T.double(), S, sampler="ddim", steps=10, spacing=spacing)
    assert (out64 - expected).abs().max() <= 1e-12


def _ode_solution(x_T, t_start):
    """The probability-flow ODE maps N(√ᾱ μ, ᾱs² + 1 - ᾱ) to N(μ, s²) by the monotone affine map."""
    ab = float(S.alphas_cumprod[t_start])
    return MU + VAR**0.5 * (x_T - ab**0.5 * MU) / (ab * VAR + 1 - ab) ** 0.5


def test_gaussian_dpmpp_is_second_order():
    """Against the exact ODE solution, DPM-Solver++(2M) beats DDIM by far and converges at second order."""
    model = Gaussian(S, MU, VAR)
    x_T = _noise((4, 1, 8, 8)).double()
    exact = _ode_solution(x_T, 999)
    err = {}
    for sampler in ("ddim", "dpmpp-2m"):
        for steps in (10, 20, 40):
            out = dk.sample(model, x_T, S, sampler=sampler, steps=steps, spacing="logsnr")
            err[sampler, steps] = (out - exact).abs().max().item()
    assert err["dpmpp-2m", 10] < err["ddim", 10] / 5
    assert err["dpmpp-2m", 10] < err["ddim", 40]  # 10 solver steps beat 40 DDIM steps
    assert err["ddim", 20] / err["ddim", 40] < 2.5  # DDIM: first order, error halves with twice the steps
    assert err["dpmpp-2m", 20] / err["dpmpp-2m", 40] > 3.0  # second order: error quarters


def test_gaussian_dpmpp_moments():
    model = Gaussian(S, MU, VAR)
    x_T = torch.randn(N_SHAPE, generator=torch.Generator().manual_seed(0))
    var_err = {}
    for sampler in ("ddim", "dpmpp-2m"):
        out = dk.sample(model, x_T, S, sampler=sampler, steps=20, spacing="logsnr")
        assert abs(out.mean().item() - MU) < 0.01
        var_err[sampler] = abs(out.var().item() - VAR)
    assert var_err["dpmpp-2m"] < 0.05 * VAR and var_err["dpmpp-2m"] < var_err["ddim"] / 3


# -- identities ---------------------------------------------------------------------------------------

class SmallNet(torch.nn.Module):
    """A fixed random network that depends on t, for identities that must hold for any model."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x, t):
        tt = (t.float() / 1000).reshape(-1, 1, 1, 1).expand_as(x)
        return torch.tanh(self.conv(torch.cat([x, tt], 1))) + 0.5 * x


def test_ddim_eta1_full_grid_equals_ddpm_small():
    net = SmallNet()
    x_T = _noise((2, 1, 8, 8))
    a = dk.sample(net, x_T, S, sampler="ddim", steps=1000, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = dk.sample(net, x_T, S, sampler="ddpm", variance="small", generator=torch.Generator().manual_seed(5))
    assert (a - b).abs().max() <= 1e-4
    c = dk.sample(net, x_T, S, sampler="ddpm", variance="small", generator=torch.Generator().manual_seed(6))
    assert (a - c).abs().max() > 1e-2  # the comparison is not vacuous: noise matters


def test_ddim_eta1_respaced_equals_respaced_ddpm():
    net = SmallNet()
    x_T = _noise((2, 1, 8, 8))
    for spacing in ("trailing", "quadratic"):
        a = dk.sample(net, x_T, S, sampler="ddim", steps=20, eta=1.0, spacing=spacing,
                      generator=torch.Generator().manual_seed(5))
        b = dk.sample(net, x_T, S, sampler="ddpm", steps=20, spacing=spacing,
                      generator=torch.Generator().manual_seed(5))
        assert (a - b).abs().max() <= 1e-4


def test_clipping_breaks_the_eta1_identity():
    """With x̂0 clipped the two samplers differ (DDIM keeps the unclipped ε̂); the DDIM note's finding."""
    net = lambda x, t: 1.5 * torch.tanh(3 * x)  # noqa: E731 — an x0 model whose x̂0 leaves [-1, 1]
    x_T = _noise((2, 1, 8, 8))
    kw = dict(prediction_type="sample", generator=torch.Generator().manual_seed(5))
    a = dk.sample(net, x_T, S, sampler="ddim", steps=1000, eta=1.0, clip_sample=1.0, **kw)
    kw["generator"] = torch.Generator().manual_seed(5)
    b = dk.sample(net, x_T, S, sampler="ddpm", clip_sample=1.0, **kw)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3
    kw["generator"] = torch.Generator().manual_seed(5)
    c = dk.sample(net, x_T, S, sampler="ddim", steps=1000, eta=1.0, clip_sample=1.0, use_clipped_model_output=True,
                  **kw)
    assert (c - b).abs().max() <= 1e-4  # ...unless ε̂ is re-derived from the clipped x̂0


def test_two_ddpm_forms_agree():
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    grid = [999, 500, 123, 1, 0]
    ab = S.alphas_cumprod
    for i, t in enumerate(grid):
        ab_t = ab[t]
        ab_s = ab[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x_t - (1 - ab_t).sqrt().float() * eps) / ab_t.sqrt().float()
        m1, _ = posterior_mean_variance(x0, x_t, ab_t, ab_s)
        m2 = ddpm_mean_from_eps(eps, x_t, ab_t, ab_s)
        assert (m1 - m2).abs().max() <= 2e-4 * max(1.0, m1.abs().max().item())


def test_ddpm_sampler_equals_eps_form_loop():
    """The sampler (posterior form, x̂0) equals a loop written with DDPM eq. 11 (ε̂ form)."""
    net = SmallNet()
    x = _noise((2, 1, 8, 8))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    grid = dk.timesteps(S, 25, "leading")
    out = dk.sample(net, x.clone(), S, sampler="ddpm", steps=25, generator=g1)
    ab = S.alphas_cumprod
    for i, t in enumerate(grid.tolist()):
        ab_t, ab_s = ab[t], (ab[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64))
        eps = net(x, torch.full((2,), t))
        mean = ddpm_mean_from_eps(eps, x, ab_t, ab_s)
        if i + 1 < len(grid):
            var = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
            mean = mean + var.sqrt().float() * torch.randn(x.shape, generator=g2)
        x = mean
    assert (out - x).abs().max() <= 1e-4


def test_eta0_ignores_generator_and_eta_positive_uses_it():
    net = SmallNet()
    x_T = _noise((2, 1, 8, 8))
    outs = [dk.sample(net, x_T, S, steps=20, eta=0.0, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert torch.equal(outs[0], outs[1])
    outs = [dk.sample(net, x_T, S, steps=20, eta=0.5, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert not torch.allclose(outs[0], outs[1])


def test_per_sample_generators_make_samples_batch_independent():
    net = SmallNet()
    seeds = [11, 12, 13]
    x = torch.cat([torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    full = dk.sample(net, x, S, steps=10, eta=1.0, generator=dk.generators_from_seeds(seeds))
    alone = dk.sample(net, x[1:2], S, steps=10, eta=1.0, generator=dk.generators_from_seeds(seeds[1:2]))
    assert (full[1:2] - alone).abs().max() < 1e-5  # batched conv rounding only
    shared = dk.sample(net, x, S, steps=10, eta=1.0, generator=torch.Generator().manual_seed(12))
    assert (shared[1:2] - alone).abs().max() > 1e-2  # one generator for the batch gives other noise
    with pytest.raises(ValueError, match="generators for a batch"):
        dk.sample(net, x, S, steps=10, eta=1.0, generator=dk.generators_from_seeds(seeds[:2]))


def test_noise_draw_order_is_the_contract():
    """DDIM with η>0 draws once per step; DDPM draws on all steps but the last."""
    for sampler, steps, draws in (("ddim", 7, 7), ("ddpm", 7, 6)):
        g = torch.Generator().manual_seed(0)
        dk.sample(lambda x, t: 0 * x, torch.zeros(2, 3), S, sampler=sampler, steps=steps, eta=0.3 if sampler == "ddim"
                  else 0.0, generator=g)
        ref = torch.Generator().manual_seed(0)
        for _ in range(draws):
            torch.randn((2, 3), generator=ref)
        assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=ref))


@pytest.mark.parametrize("pt", ["epsilon", "sample", "v_prediction"])
def test_conversions_round_trip(pt):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    a, s = dk.levels(S, t, x0)
    x_t = dk.add_noise(S, x0, eps, t)
    assert torch.allclose(x_t, a * x0 + s * eps)
    target = dk.prediction_target(x0, eps, a, s, pt)
    x0_hat, eps_hat = dk.to_x0_eps(target, x_t, a, s, pt)
    assert torch.allclose(x0_hat, x0, atol=1e-9) and torch.allclose(eps_hat, eps, atol=1e-9)


def test_v_target_definition():
    x0, eps = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    a, s = dk.levels(S, torch.tensor([500]), x0)
    v = dk.prediction_target(x0, eps, a, s, "v")
    assert float(v) == pytest.approx(float(a * 2 - s * 1))


def test_callback_sees_every_step():
    x_star = _target()
    seen = []
    dk.sample(PointMass(S, x_star), _noise(x_star.shape), S, steps=5,
              callback=lambda d: seen.append((d["i"], d["t"], d["x"].shape, (d["x0"] - x_star).abs().max().item())))
    assert [s[0] for s in seen] == list(range(5)) and [s[1] for s in seen] == [800, 600, 400, 200, 0]
    assert all(err < 1e-4 for *_, err in seen)


def test_clipping_and_thresholding():
    net = lambda x, t: torch.full_like(x, 5.0)  # noqa: E731 — an x0 model predicting far out of range
    x = torch.zeros(2, 1, 4, 4)
    seen = []
    dk.sample(net, x, S, steps=3, prediction_type="sample", clip_sample=1.0, callback=lambda d: seen.append(d["x0"]))
    assert all(float(v.max()) == 1.0 for v in seen)
    out = dk.Denoiser(net, "sample", thresholding=0.995, sample_max_value=2.5)
    x0, _ = out(x, torch.zeros(2, dtype=torch.long), torch.tensor(0.5), torch.tensor(0.5 ** 0.5))
    assert torch.allclose(x0, torch.ones_like(x0))  # clip to s = 2.5, then divide by s
    ramp = torch.linspace(-3, 3, 32).reshape(1, 2, 4, 4)
    y = dk.dynamic_threshold(ramp, 1.0, 2.0)
    assert torch.allclose(y, ramp.clamp(-2, 2) / 2)


def test_use_clipped_model_output_rederives_eps():
    net = lambda x, t: torch.full_like(x, 5.0)  # noqa: E731
    x = torch.randn(2, 1, 4, 4)
    a, s = torch.tensor(0.8), torch.tensor(0.6)
    d = dk.Denoiser(net, "sample", clip_sample=1.0, use_clipped_model_output=True)
    x0, eps = d(x, torch.zeros(2, dtype=torch.long), a, s)
    assert torch.allclose(a * x0 + s * eps, x, atol=1e-6)


# -- DDIM inversion ------------------------------------------------------------------------------------

def test_fixed_point_refinement_makes_round_trip_near_exact():
    model = SmallNet()
    x0 = _target((2, 1, 8, 8)) * 0.8
    errs = []
    for refine in (0, 1, 2, 5):
        x_T = dk.ddim_invert(model, x0, S, steps=50, refine=refine)
        rec = dk.sample(model, x_T, S, sampler="ddim", steps=50)
        errs.append((rec - x0).abs().max().item())
    assert errs[0] > 0.1  # plain inversion is only approximate for a real network...
    assert errs[0] > errs[1] > errs[2] > errs[3]  # ...each fixed-point iteration contracts...
    assert errs[3] < 1e-4  # ...and closes the gap


def test_inversion_of_gaussian_oracle_is_exact_affine_inverse():
    model = Gaussian(S, MU, VAR)
    x0 = _target()
    x_T = dk.ddim_invert(model, x0.double(), S, steps=50, refine=10)
    rec = dk.sample(model, x_T, S, steps=50)
    assert (rec - x0.double()).abs().max() < 1e-9


# -- bad input -----------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_value_errors():
    net = SmallNet()
    x = _noise((1, 1, 4, 4))
    cases = [
        (dict(steps=0), "steps must be between 1"),
        (dict(steps=1001), "steps must be between 1"),
        (dict(eta=-0.1), "eta must be"),
        (dict(eta="big"), "eta must be"),
        (dict(spacing="geometric"), "unknown spacing"),
        (dict(sampler="euler"), "unknown sampler"),
        (dict(prediction_type="score"), "unknown prediction type"),
        (dict(steps=[10, 20]), "strictly decreasing"),
        (dict(steps=[1000, 5]), "lie in"),
        (dict(clip_sample=-1.0), "clip_sample"),
        (dict(sampler="ddpm", eta=0.5), "eta applies to the ddim sampler"),
        (dict(sampler="ddpm", variance="medium"), "variance must be"),
        (dict(eta=5.0, steps=10), "too large"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            dk.sample(net, x, S, **kwargs)
    with pytest.raises(ValueError, match="refine"):
        dk.ddim_invert(net, x, S, refine=-1)


def test_non_finite_model_output_names_the_step():
    def net(x, t):
        return torch.where(t.reshape(-1, 1, 1, 1) < 300, torch.full_like(x, float("nan")), x * 0)

    with pytest.raises(ValueError, match=r"not finite at step 35 \(t=280\)"):
        dk.sample(net, _noise((1, 1, 4, 4)), S, steps=50)


def test_zero_terminal_snr_needs_a_non_epsilon_model():
    z = dk.NoiseSchedule.linear(rescale_zero_terminal_snr=True)
    with pytest.raises(ValueError, match="zero SNR"):
        dk.sample(SmallNet(), _noise((1, 1, 4, 4)), z, steps=10, spacing="trailing")
    out = dk.sample(SmallNet(), _noise((1, 1, 4, 4)), z, steps=10, spacing="trailing", prediction_type="v")
    assert torch.isfinite(out).all()
