"""ddimkit's samplers against diffusers' DDPMScheduler / DDIMScheduler step loops (same noise, same generator)."""

import pytest
import torch

import ddimkit as dk

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 8, 8)


class Net(torch.nn.Module):
    """A fixed random network that depends on t; its outputs push x̂0 out of [-1, 1] so clipping matters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x, t):
        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0])
        tt = (t.float() / 1000).reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return 1.5 * torch.tanh(self.conv(torch.cat([x, tt], 1))) + 0.3 * x


def _x_T(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _diffusers_loop(scheduler, net, x, steps, generator, **step_kwargs):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t), t, x, generator=generator, **step_kwargs).prev_sample
    return x


CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


@pytest.mark.parametrize("pt", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_matches_diffusers(pt, eta, clip):
    net = Net()
    sched = diffusers.DDIMScheduler(**CONFIG, clip_sample=clip, prediction_type=pt, set_alpha_to_one=True,
                                    steps_offset=0, timestep_spacing="leading")
    ref = _diffusers_loop(sched, net, _x_T(), 20, torch.Generator().manual_seed(1), eta=eta)
    out = dk.sample(net, _x_T(), dk.NoiseSchedule.linear(), sampler="ddim", steps=20, eta=eta, spacing="leading",
                    prediction_type=pt, clip_sample=1.0 if clip else None, generator=torch.Generator().manual_seed(1))
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("pt", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance", ["small", "large"])
def test_respaced_ddpm_matches_diffusers(pt, clip, variance):
    net = Net()
    sched = diffusers.DDPMScheduler(**CONFIG, clip_sample=clip, prediction_type=pt,
                                    variance_type="fixed_" + variance, timestep_spacing="leading")
    ref = _diffusers_loop(sched, net, _x_T(), 25, torch.Generator().manual_seed(2))
    out = dk.sample(net, _x_T(), dk.NoiseSchedule.linear(), sampler="ddpm", steps=25, variance=variance,
                    prediction_type=pt, clip_sample=1.0 if clip else None, generator=torch.Generator().manual_seed(2))
    assert (out - ref).abs().max() <= 1e-4


def test_full_ddpm_matches_diffusers():
    net = Net()
    sched = diffusers.DDPMScheduler(**CONFIG, clip_sample=True)
    ref = _diffusers_loop(sched, net, _x_T(), 1000, torch.Generator().manual_seed(3))
    out = dk.sample(net, _x_T(), dk.NoiseSchedule.linear(), sampler="ddpm", clip_sample=1.0,
                    generator=torch.Generator().manual_seed(3))
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_dynamic_thresholding_matches_diffusers(sampler):
    net = Net()
    kw = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.3)
    if sampler == "ddim":
        sched = diffusers.DDIMScheduler(**CONFIG, **kw)
        ref = _diffusers_loop(sched, net, _x_T(), 10, torch.Generator().manual_seed(4), eta=0.3)
    else:
        sched = diffusers.DDPMScheduler(**CONFIG, **kw)
        ref = _diffusers_loop(sched, net, _x_T(), 10, torch.Generator().manual_seed(4))
    out = dk.sample(net, _x_T(), dk.NoiseSchedule.linear(), sampler=sampler, steps=10, eta=0.3 if sampler == "ddim"
                    else 0.0, thresholding=0.9, sample_max_value=1.3, generator=torch.Generator().manual_seed(4))
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("make,name,kw", [
    (lambda: dk.NoiseSchedule.cosine(), "squaredcos_cap_v2", {}),
    (lambda: dk.NoiseSchedule.scaled_linear(), "scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
    (lambda: dk.NoiseSchedule.sigmoid(), "sigmoid", {}),
    (lambda: dk.NoiseSchedule.linear(rescale_zero_terminal_snr=True), "linear", dict(rescale_betas_zero_snr=True)),
])
def test_schedules_match_diffusers(make, name, kw):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kw)
    ours = make().alphas_cumprod
    assert torch.allclose(ours.float(), sched.alphas_cumprod, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_grids_match_diffusers(spacing):
    for steps in (1, 7, 10, 50, 333):
        sched = diffusers.DDIMScheduler(**CONFIG, timestep_spacing=spacing, steps_offset=1 if spacing == "leading"
                                        else 0)
        sched.set_timesteps(steps)
        offset = 1 if spacing == "leading" else 0
        assert dk.timesteps(1000, steps, spacing, steps_offset=offset).tolist() == sched.timesteps.tolist()


def test_add_noise_matches_diffusers():
    sched = diffusers.DDPMScheduler(**CONFIG)
    x0, noise = _x_T(0), _x_T(1)
    t = torch.tensor([0, 999])
    theirs = sched.add_noise(x0, noise, t)
    ours = dk.add_noise(dk.NoiseSchedule.linear(), x0, noise, t)
    ab = dk.NoiseSchedule.linear().alphas_cumprod[t].reshape(-1, 1, 1, 1)
    exact = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
    assert (ours - theirs).abs().max() <= 1e-5
    # diffusers keeps ᾱ in float32; ddimkit casts after computing √ᾱ, √(1-ᾱ) in float64.
    assert (ours.double() - exact).abs().max() <= (theirs.double() - exact).abs().max()
    assert (ours.double() - exact).abs().max() <= 1e-6
