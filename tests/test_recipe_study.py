"""benchmarks/recipe_study.py's study architectures: what they compute, and that their runs reload."""

from pathlib import Path

import torch

import ddimkit as dk
from ddimkit.train import TrainConfig, train

BENCHMARKS = str(Path(__file__).parents[1] / "benchmarks")


def _study(monkeypatch):
    """benchmarks/recipe_study.py and the learning-rate table, with the preset, class and learning-rate
    registries that its register_arch writes to replaced by copies, so that a test leaves no trace."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import recipe_study
    from ddimkit import train_config
    from ddimkit.models import presets

    monkeypatch.setattr(presets, "_PRESETS", dict(presets._PRESETS))
    monkeypatch.setattr(presets, "MODEL_CLASSES", dict(presets.MODEL_CLASSES))
    rates = dict(train_config.DEFAULT_LR)
    monkeypatch.setattr(train_config, "DEFAULT_LR", rates)
    monkeypatch.setattr(recipe_study, "DEFAULT_LR", rates)
    return recipe_study, rates


def test_study_patch_architecture_trains_at_the_tiny_rate_and_reloads(tmp_path, monkeypatch):
    """benchmarks/recipe_study.py's patch UNet: the inner UNet sees and returns 2×2 patches as channels, the
    study's architectures train at tiny's learning rate (not the 2e-4 of unknown presets), and runs reload."""
    recipe_study, rates = _study(monkeypatch)
    name = recipe_study.register_arch("p2-24-48")
    cfg = TrainConfig(out=str(tmp_path / "p"), model=name, steps=2, batch_size=4, warmup=1, save_every=2,
                      sample_every=0, num_sample_images=0)
    assert cfg.peak_lr == rates["tiny"] != TrainConfig(model="unknown-preset").peak_lr
    res = train(cfg, progress=False)
    net = res.pipeline.model
    assert net.unet.conv_in.in_channels == 4 and net.unet.conv_out.out_channels == 4
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 900])
    # pixel_unshuffle puts pixel (2i+a, 2j+b) in channel 2a+b at (i, j): the inner UNet sees exactly that.
    inner_in = x.reshape(2, 1, 14, 2, 14, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 4, 14, 14)
    with torch.no_grad():
        inner_out = net.unet(inner_in, t)
        expected = inner_out.reshape(2, 1, 2, 2, 14, 14).permute(0, 1, 4, 2, 5, 3).reshape(2, 1, 28, 28)
        torch.testing.assert_close(net(x, t), expected)
        again = dk.load(tmp_path / "p")
        torch.testing.assert_close(again.model(x, t), net(x, t))


def test_study_architecture_over_another_preset_takes_its_options_and_rate(monkeypatch):
    """register_arch(arch, base) (time_to_quality.py --arch): the study's options over the base preset's, at the
    base preset's learning rate."""
    recipe_study, rates = _study(monkeypatch)
    from ddimkit.models import presets

    name = recipe_study.register_arch("ss", base="small")
    cls, _, _, kw = presets._PRESETS[name]
    assert name == "study-small-ss" and TrainConfig(model=name).peak_lr == rates["small"] != rates["tiny"]
    assert kw == {**presets._PRESETS["small"][3], "resnet_time_scale_shift": "scale_shift"}
    net = presets.create_model(name)
    assert tuple(net.config["block_out_channels"]) == (16, 32, 64)
    assert net.config["resnet_time_scale_shift"] == "scale_shift"


def test_study_variants_start_from_the_digits_recipe_not_the_defaults(tmp_path, monkeypatch):
    """The study's tables measure over the digits' recipe (tiny, min-SNR-0.25, lr 4e-3), which is no longer
    TrainConfig's default: a variant without options trains it, and options and --set still override it."""
    recipe_study, rates = _study(monkeypatch)
    default = TrainConfig()
    name, _, base = recipe_study.variant_config("base", {}, "mnist-5k", tmp_path, 250)
    assert name == "base" and (base.model, base.min_snr_gamma) == ("tiny", 0.25) != (default.model,
                                                                                      default.min_snr_gamma)
    assert base.peak_lr == rates["tiny"] == 4e-3 and base.minutes == 250 / 60 and base.out == str(tmp_path / "base")
    _, kw, g5 = recipe_study.variant_config("g5:min_snr_gamma=5", {"steps": 800}, "mnist-5k", tmp_path, 0)
    assert (g5.model, g5.min_snr_gamma, g5.steps, g5.minutes) == ("tiny", 5, 800, None)
    _, _, arch = recipe_study.variant_config("p:arch=p2-24-48", {}, "mnist-5k", tmp_path, 0)
    assert arch.model == "study-p2-24-48" and arch.min_snr_gamma == 0.25


def test_study_self_conditioning_sees_its_previous_output_along_one_path(monkeypatch):
    """benchmarks/recipe_study.py's SelfCondUNet: in sampling, each call is conditioned on the last call's
    (clipped) output, and a call at a timestep not below the last one starts again from an empty condition."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import recipe_study

    torch.manual_seed(0)
    net = recipe_study.SelfCondUNet(block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                                    up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, sample_size=8).eval()
    seen = []
    inner = net.unet.forward
    monkeypatch.setattr(net.unet, "forward", lambda x, t: (seen.append(x[:, 1:].clone()), inner(x, t))[1])
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        first = net(x, torch.tensor([900, 900]))
        net(x, torch.tensor([500, 500]))
        net(x, torch.tensor([950, 950]))  # a new path
    assert net.unet.conv_in.in_channels == 2
    assert torch.equal(seen[0], torch.zeros_like(x)) and torch.equal(seen[2], torch.zeros_like(x))
    torch.testing.assert_close(seen[1], first.clamp(-1, 1))
    net.train()
    seen.clear()
    net(x, torch.tensor([10, 20]))  # training: one or two inner calls, the last one conditioned on the first
    assert len(seen) in (1, 2) and torch.equal(seen[0], torch.zeros_like(x))


def test_study_self_conditioning_is_the_library_option(monkeypatch):
    """The study's SelfCondUNet and the library's --self-condition draw the same images from the same weights,
    so the study's measurements are the option's."""
    from ddimkit.models.unet import UNet

    monkeypatch.syspath_prepend(BENCHMARKS)
    import recipe_study

    kw = dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
              norm_num_groups=4, sample_size=8)
    torch.manual_seed(0)
    study = recipe_study.SelfCondUNet(**kw)
    lib = UNet(in_channels=2, out_channels=1, **kw)
    lib.load_state_dict({k.removeprefix("unet."): v for k, v in study.state_dict().items()})
    s, sampling = dk.NoiseSchedule.linear(), {"clip_sample": 1.0, "use_clipped_model_output": True}
    a = dk.Pipeline(study, s, "sample", {}, sampling).sample(3, "ddim", steps=10,
                                                          generator=torch.Generator().manual_seed(0))
    b = dk.Pipeline(lib, s, "sample", {"self_condition": True}, sampling).sample(
        3, "ddim", steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_study_skip_network_is_edm_preconditioning_of_an_x0_network(tmp_path, monkeypatch):
    """SkipUNet: x̂0 = c_skip x_t/√ᾱ + c_out F with EDM's c_skip = σ_d²/(σ² + σ_d²), σ² = (1-ᾱ)/ᾱ, and
    c_out = √(1 - c_skip); an inner output equal to the target (x0 - c_skip x_t/√ᾱ)/c_out gives back x0
    exactly, and a trained run reloads with the same outputs."""
    recipe_study, _ = _study(monkeypatch)
    ab = dk.NoiseSchedule.linear().alphas_cumprod.double()
    skip = 0.1 ** 2 / ((1 - ab) / ab + 0.1 ** 2)
    net = recipe_study.SkipUNet(sigma_data=0.1, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                                up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, sample_size=8)
    torch.testing.assert_close(net.c_in.double(), skip / ab.sqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(net.c_out.double(), (1 - skip).sqrt(), rtol=1e-6, atol=0)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1, torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([0, 40, 999])
    a, s = ab[t].sqrt().view(-1, 1, 1, 1).float(), (1 - ab[t]).sqrt().view(-1, 1, 1, 1).float()
    xt = a * x0 + s * eps
    target = (x0 - net.c_in[t].view(-1, 1, 1, 1) * xt) / net.c_out[t].view(-1, 1, 1, 1)
    monkeypatch.setattr(net.unet, "forward", lambda x, tt: target)
    torch.testing.assert_close(net(xt, t), x0, atol=1e-5, rtol=0)
    assert float(net.c_in[0] * ab[0].sqrt()) > 0.99 and float(net.c_out[999]) > 0.9999  # skip low, x0 high
    name = recipe_study.register_arch("skip0.1")
    res = train(TrainConfig(out=str(tmp_path / "s"), model=name, steps=2, batch_size=4, save_every=2,
                            sample_every=0, num_sample_images=0), progress=False)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(dk.load(tmp_path / "s").model(x, t[:2]), res.pipeline.model(x, t[:2]))


def test_denoising_error_is_zero_for_the_exact_x0_network(monkeypatch):
    """benchmarks/denoising_error.py's measure (recipe_study.denoising_error): on held-out copies of one image c,
    a network that predicts x0 = c is exact, so its x̂0-error vanishes at every t, and so does its ε̂-error,
    which is measured against the very noise that made x_t. A constant 0 network's x̂0-MSE is the images'
    mean square."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import recipe_study
    from types import SimpleNamespace

    c = torch.rand(1, 1, 8, 8) * 2 - 1
    exact = SimpleNamespace(model=lambda x, t: c.expand_as(x), schedule=dk.NoiseSchedule.linear(),
                            prediction_type="sample")
    errors = recipe_study.denoising_error(exact, c.repeat(16, 1, 1, 1))
    assert set(errors) == set(recipe_study.TIMESTEPS)
    for eps_mse, x0_mse in errors.values():
        assert x0_mse < 1e-12 and eps_mse < 1e-8
    zero = SimpleNamespace(**{**vars(exact), "model": lambda x, t: torch.zeros_like(x)})
    for _, x0_mse in recipe_study.denoising_error(zero, c.repeat(16, 1, 1, 1)).values():
        assert abs(x0_mse - float(c.pow(2).mean())) < 1e-6
