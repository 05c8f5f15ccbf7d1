import pytest
import torch

import ddimkit as dk
from ddimkit.autoguidance import autoguided, check_autoguidance
from ddimkit.checkpoint import read_checkpoint
from ddimkit.denoiser import Denoiser
from ddimkit.diffusion import levels
from ddimkit.schedule import NoiseSchedule
from ddimkit.train import TrainConfig, guide_due, train


def _cfg(out, **kw):
    base = dict(model="tiny", data="mnist-5k", out=str(out), steps=8, batch_size=8, lr=1e-3, warmup=2,
                save_every=4, sample_every=0, log_every=1, num_sample_images=0, seed=0, autoguidance_at=0.25)
    return TrainConfig(**{**base, **kw})


def _nets():
    torch.manual_seed(0)
    m, g = torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Conv2d(1, 1, 3, padding=1)
    return (lambda x, t: m(x) + t.view(-1, 1, 1, 1) / 1000), (lambda x, t: g(x))


def test_autoguided_is_the_papers_extrapolation():
    model, guide = _nets()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 500, 900])
    m, g = model(x, t), guide(x, t)
    assert torch.equal(autoguided(model, guide, 1.0)(x, t), m)
    assert torch.equal(autoguided(model, None, 1.0)(x, t), m)  # scale 1 needs no guide and never calls one
    assert torch.equal(autoguided(model, guide, 0.0)(x, t), g)
    torch.testing.assert_close(autoguided(model, guide, 2.5)(x, t), g + 2.5 * (m - g))


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_mixing_outputs_mixes_x0_and_eps_alike(prediction):
    model, guide = _nets()
    s = NoiseSchedule.linear()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 500, 900])
    a, sig = levels(s, t, x)
    x0m, em = Denoiser(model, prediction)(x, t, a, sig)
    x0g, eg = Denoiser(guide, prediction)(x, t, a, sig)
    x0, e = Denoiser(autoguided(model, guide, 2.0), prediction)(x, t, a, sig)
    torch.testing.assert_close(x0, x0g + 2 * (x0m - x0g), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e, eg + 2 * (em - eg), rtol=1e-5, atol=1e-5)


def test_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="needs a guiding network"):
        check_autoguidance(2.0, None)
    with pytest.raises(ValueError, match=">= 0"):
        check_autoguidance(-1.0, object())
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="autoguidance_at"):
            TrainConfig(autoguidance_at=bad)


def test_guide_is_taken_once_the_length_is_known():
    assert not guide_due(100, TrainConfig(steps="auto", minutes=1.0))  # no length planned yet
    cfg = TrainConfig(steps=2800, autoguidance_at=0.25)
    assert not guide_due(699, cfg) and guide_due(700, cfg)
    assert not guide_due(5000, TrainConfig(steps=2800, autoguidance_at=None))


def test_the_guide_is_the_ema_at_its_step_and_survives_resume(tmp_path):
    full = train(_cfg(tmp_path / "full"), progress=False)
    early = train(_cfg(tmp_path / "early"), stop_after=2, progress=False)  # 0.25 × 8 steps = step 2
    ck = read_checkpoint(tmp_path / "full")
    assert ck["state"]["guide_step"] == 2 and early.step == 2
    assert read_checkpoint(tmp_path / "early")["guide"] is not None
    ema2 = read_checkpoint(tmp_path / "early")["ema"]
    assert all(torch.equal(ck["guide"][k], ema2[k]) for k in ema2)
    assert not all(torch.equal(ck["guide"][k], ck["ema"][k]) for k in ema2)
    # a run stopped before and after the guide's step and resumed keeps the same guide
    for stop in (1, 4):
        train(_cfg(tmp_path / f"part{stop}"), stop_after=stop, progress=False)
        train(_cfg(tmp_path / f"part{stop}"), resume=True, progress=False)
        guide = read_checkpoint(tmp_path / f"part{stop}")["guide"]
        assert all(torch.equal(guide[k], ck["guide"][k]) for k in guide), stop
    # the pipeline samples with it by default, at the stored scale; reconstruction never does
    p = full.pipeline
    assert p.guide is not None and p.sampling["autoguidance_scale"] == 2.0
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    default = p.sample(4, steps=5, generator=g())
    assert torch.equal(default, p.sample(4, steps=5, generator=g(), autoguidance_scale=2.0))
    alone = p.sample(4, steps=5, generator=g(), autoguidance_scale=1.0)
    assert not torch.equal(default, alone)
    plain = dk.load(tmp_path / "full")
    plain.guide = None
    assert torch.equal(alone, plain.sample(4, steps=5, generator=g()))
    z = torch.randn(2, 1, 28, 28, generator=g())
    assert torch.equal(p.reconstruct(z, steps=5), plain.reconstruct(z, steps=5))
    # diffusers has no place for the guide: an exported model samples as the model alone
    from ddimkit.diffusers_io import export_diffusers

    back = dk.load(export_diffusers(p, tmp_path / "exported"), device="cpu")
    assert back.guide is None
    torch.testing.assert_close(back.sample(4, steps=5, generator=g()), alone)


def test_off_keeps_no_guide(tmp_path):
    res = train(_cfg(tmp_path / "off", autoguidance_at=None, steps=4), progress=False)
    assert read_checkpoint(tmp_path / "off")["guide"] is None
    assert res.pipeline.guide is None and res.pipeline.sampling["autoguidance_scale"] == 1.0
    with pytest.raises(ValueError, match="needs a guiding network"):
        res.pipeline.sample(2, steps=3, autoguidance_scale=2.0)


def test_evaluations_per_step_counts_the_networks_sampling_runs(tmp_path):
    """Classifier-free guidance calls the network for the class and the null label, and autoguidance calls
    model and guide for each: Pipeline.evaluations_per_step (the app's nfe) against the calls counted."""
    dk.train(_cfg(tmp_path / "run", steps=4, class_conditional=True, guidance_scale=2.0), progress=False)
    pipe = dk.load(tmp_path / "run", compile=False)
    calls = []
    for net in (pipe.model, pipe.guide):
        net.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    for cfg_w, ag_w, expected in ((None, None, 4), (1.0, None, 2), (None, 1.0, 2), (1.0, 1.0, 1), (0.0, 0.0, 1)):
        calls.clear()
        pipe.sample(2, steps=3, generator=torch.Generator().manual_seed(0), guidance_scale=cfg_w,
                    autoguidance_scale=ag_w)
        assert pipe.evaluations_per_step(cfg_w, ag_w) == expected
        assert len(calls) == 3 * expected and set(calls) == {2}
