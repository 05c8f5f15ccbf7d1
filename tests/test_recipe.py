"""The training recipe's options: loss weighting, the time budget, the scoring classifiers."""

import json
import time

import numpy as np
import pytest
import torch

import ddimkit as dk
from ddimkit import classifier as C
from ddimkit.deadline import Deadline
from ddimkit.diffusion import levels, timestep_probabilities, to_x0_eps, training_loss
from ddimkit.train import TrainConfig, draw_batch, lr_at, replan_now, train
from ddimkit.train_config import cpu_has_native_bf16, training_precision


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_min_snr_loss_is_the_x0_error_weighted_by_min_snr(prediction, gamma):
    """Hang et al. (2023): every parameterisation's weighted loss equals min(SNR, γ)·‖x̂0 − x0‖²."""
    s = dk.NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    out = torch.randn(6, 1, 4, 4, generator=g)
    loss = training_loss(lambda x, tt: out, x0, s, t, noise, prediction, gamma).double()
    a, sd = levels(s, t, x0)
    x0_hat, _ = to_x0_eps(out, a * x0 + sd * noise, a, sd, prediction)
    x0_err = (x0_hat - x0).pow(2).flatten(1).mean(1).double()
    snr = s.snr[t].double()
    if gamma is None:  # unweighted: the target's own MSE, i.e. x0 error times SNR (ε), 1 (x0), SNR+1 (v)
        factor = {"epsilon": snr, "sample": torch.ones_like(snr), "v_prediction": snr + 1}[prediction]
    else:
        factor = snr.clamp(max=gamma)
    torch.testing.assert_close(loss, factor * x0_err, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("gamma", [None, 0.25])
def test_importance_sampled_timesteps_keep_the_expected_loss(prediction, gamma):
    """Σ_t p(t)·loss_p(t) equals the uniform average of loss(t): the 1/(T p) correction is exact."""
    s = dk.NoiseSchedule.linear()
    T = s.num_train_timesteps
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(T, 1, 4, 4, generator=g), torch.randn(T, 1, 4, 4, generator=g)
    out = torch.randn(T, 1, 4, 4, generator=g)
    t = torch.arange(T)
    p = timestep_probabilities(s, gamma)
    uniform = training_loss(lambda x, tt: out, x0, s, t, noise, prediction, gamma).double()
    weighted = training_loss(lambda x, tt: out, x0, s, t, noise, prediction, gamma, probabilities=p).double()
    torch.testing.assert_close((p * weighted).sum(), uniform.mean(), rtol=1e-5, atol=0)
    # the correction changes the per-sample weights where p is not uniform
    assert torch.allclose(weighted, uniform) == (gamma is None)


def test_importance_probabilities_follow_min_snr():
    s = dk.NoiseSchedule.linear()
    p = timestep_probabilities(s, 0.25, uniform_share=0.1)
    w = s.snr.double().clamp(max=0.25)
    torch.testing.assert_close(p, 0.9 * w / w.sum() + 0.1 / 1000)
    assert float(p.sum()) == pytest.approx(1.0)
    assert p[100] / p[900] > 15  # the batch goes where the weight is (the uniform share sets the floor)
    torch.testing.assert_close(timestep_probabilities(s, None), torch.full((1000,), 1e-3, dtype=torch.float64))
    # a zero-terminal-SNR schedule still draws its last step
    z = dk.NoiseSchedule.linear(rescale_zero_terminal_snr=True)
    assert float(z.snr[-1]) == 0 and float(timestep_probabilities(z, 0.25)[-1]) > 0
    with pytest.raises(ValueError, match="uniform_share"):
        timestep_probabilities(s, 0.25, uniform_share=0)
    with pytest.raises(ValueError, match="timestep_sampling"):
        TrainConfig(timestep_sampling="loss")


def test_importance_sampled_training_draws_its_timesteps(tmp_path, monkeypatch):
    """train() draws t from p (the small-weight end of the schedule rarely), and the run resumes."""
    seen = []
    real = torch.multinomial

    def spy(probs, n, **kw):
        out = real(probs, n, **kw)
        seen.append(out)
        return out

    monkeypatch.setattr(torch, "multinomial", spy)
    cfg = TrainConfig(out=str(tmp_path / "is"), steps=4, batch_size=64, warmup=1, save_every=2, log_every=1,
                      sample_every=0, num_sample_images=0, timestep_sampling="importance")
    train(cfg, progress=False)
    t = torch.cat(seen)
    assert len(t) == 4 * 64
    assert (t > 700).float().mean() < 0.1  # uniform t would put 30% there
    train(TrainConfig(**{**cfg.__dict__, "steps": 6}), resume=True, progress=False)
    assert len(torch.cat(seen)) == 6 * 64


def test_input_perturbation_moves_the_input_not_the_target():
    """Ning et al. (2023): x_t is made with the perturbed noise, the target keeps the drawn one."""
    s = dk.NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x0, noise, other = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([10, 400, 900])
    a, sd = levels(s, t, x0)
    identity = lambda x, tt: x  # noqa: E731 - a network that returns its input
    for prediction, target in (("sample", x0), ("epsilon", noise)):
        loss = training_loss(identity, x0, s, t, noise, prediction, None, input_noise=other)
        expected = (a * x0 + sd * other - target).pow(2).flatten(1).mean(1)
        torch.testing.assert_close(loss, expected)


def test_draw_batch_adds_perturbation_without_changing_the_rest():
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    s = dk.NoiseSchedule.linear()
    plain = draw_batch(TrainConfig(batch_size=8, flip=True), 3, images, s, None)
    ip = draw_batch(TrainConfig(batch_size=8, flip=True, input_perturbation=0.1), 3, images, s, None)
    assert plain[2] is None and plain[-1] is None
    for a, b in zip(plain[:2] + plain[3:4], ip[:2] + ip[3:4]):
        assert torch.equal(a, b)  # the images, noise and t of a run do not depend on the option
    d = ip[2] - ip[1]
    assert 0.05 < float(d.std()) < 0.15  # γ = 0.1 times unit noise
    with pytest.raises(ValueError, match="input_perturbation"):
        TrainConfig(input_perturbation=-0.1)


def test_deadline_is_shared_and_plans_steps(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    d = Deadline(1.0)  # 60 s
    clock[0] = 130.0
    assert not d.passed(5)
    assert d.planned_steps(done=10, timed_steps=10, timed_seconds=3.0) == 10 + 100  # 30 s left at 0.3 s/step
    clock[0] = 160.0
    assert d.passed(6)
    assert not Deadline(None).passed(1)
    # With several ranks, the decision is rank 0's (what broadcast returns), consulted every `every` steps.
    seen = []

    def broadcast(x):
        seen.append(float(x[0]))
        return torch.tensor([1.0], dtype=torch.float64)

    d2 = Deadline(100.0, broadcast, world=2, every=10)
    assert not d2.passed(7) and seen == []
    assert d2.passed(10) and seen == [0.0]  # this rank's clock said no; rank 0 said yes


def test_automatic_length_is_replanned_early_and_in_the_first_half():
    planned = 10_000
    assert [d for d in range(1, planned) if replan_now(d, planned)] == [10, 100, 1000, 2000, 3000, 4000]
    assert replan_now(10, float("inf")) and not replan_now(11, float("inf"))


def test_one_process_trains_in_two_precisions(tmp_path):
    """A second train() with another mixed precision in the same process works (Accelerate's shared state)."""
    for mp in ("bf16", "no"):
        cfg = TrainConfig(out=str(tmp_path / mp), steps=1, batch_size=2, save_every=0, sample_every=0,
                          num_sample_images=0, mixed_precision=mp)
        assert train(cfg, progress=False).step == 1


AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_tile\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre_v1\n"


def test_cpu_bf16_is_chosen_only_where_it_pays():
    assert cpu_has_native_bf16(AVX512_BF16) and not cpu_has_native_bf16(AVX2_ONLY)
    assert cpu_has_native_bf16("flags\t: avx2 amx_bf16 amx_tile\n") and not cpu_has_native_bf16("")
    big, small = (lambda: 1.44e8), (lambda: 3.6e7)  # the `small` and `tiny` UNets' forward FLOPs per image

    def uncounted():
        raise AssertionError("FLOPs counted where the answer does not depend on them")

    assert training_precision("auto", False, big, AVX512_BF16) == "bf16"
    assert training_precision("auto", False, small, AVX512_BF16) == "no"  # measured slower in bf16
    assert training_precision("auto", False, uncounted, AVX2_ONLY) == "no"  # emulated bf16: slower than fp32
    assert training_precision("auto", True, uncounted, AVX2_ONLY) == "bf16"  # CUDA
    assert training_precision("no", False, uncounted, AVX512_BF16) == "no"
    assert training_precision("bf16", False, uncounted, AVX2_ONLY) == "bf16"  # asked for, given


@pytest.mark.parametrize("native, model, expected", [(True, "small", "bf16"), (True, "tiny", "no"),
                                                     (False, "small", "no")])
def test_train_takes_the_automatic_cpu_precision(tmp_path, monkeypatch, native, model, expected):
    import sys

    from accelerate.state import AcceleratorState

    # the flags of this machine's CPU, faked
    monkeypatch.setattr(sys.modules["ddimkit.train_config"], "cpu_has_native_bf16", lambda cpuinfo=None: native)
    cfg = TrainConfig(out=str(tmp_path / model), model=model, steps=1, batch_size=2, save_every=0,
                      sample_every=0, num_sample_images=0)
    train(cfg, progress=False)
    assert AcceleratorState().mixed_precision == expected


def test_minutes_stops_saves_and_resumes(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(out=str(out), steps=100_000, minutes=0.04, batch_size=4, warmup=2, save_every=1000,
                      log_every=1000, sample_every=0, num_sample_images=0)
    res = train(cfg, progress=False)
    assert 0 < res.step < 100_000  # the deadline, not the length, ended it
    assert (out / "latest").read_text().strip() == f"step-{res.step:08d}"  # saved where it stopped
    res2 = train(cfg, resume=True, progress=False)  # a new budget for the resumed invocation
    assert res2.step > res.step
    with pytest.raises(ValueError, match="needs a time budget"):
        TrainConfig(steps="auto")


def test_automatic_length_fits_the_budget(tmp_path):
    out = tmp_path / "auto"
    cfg = TrainConfig(out=str(out), steps="auto", minutes=0.04, batch_size=4, warmup=2, save_every=1000,
                      log_every=1000, sample_every=0, num_sample_images=0)
    res = train(cfg, progress=False)
    stored = json.loads((out / "config.json").read_text())["train"]["steps"]
    assert res.step >= 10 and isinstance(stored, int) and res.step <= stored  # planned, then kept to
    if res.step == stored:  # finished its planned length: nothing is left to resume
        with pytest.raises(ValueError, match="already has"):
            train(cfg, resume=True, progress=False)


def test_lr_before_the_automatic_length_is_known():
    cfg = TrainConfig(steps="auto", minutes=1, lr=1.0, warmup=4)
    assert lr_at(1, cfg) == pytest.approx(0.5) and lr_at(5, cfg) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", list(C.CLASSIFIERS))
def test_shipped_classifier_recognises_real_images_not_noise(name):
    net = C.load_classifier(name)
    if name == "mnist":
        d = np.load(C.ASSETS / "mnist_5k.npz")
        x, y = d["x"][::5], d["y"][::5]  # digits it never saw
    else:
        x = np.stack([np.roll(np.eye(28, dtype=np.uint8) * 255, k, 1) for k in range(10)])  # no garment
        y = None
    noise = (torch.rand((500, 28, 28), generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    assert C.recognition(net, noise).rate < 0.05
    if y is not None:
        assert (C.predict(net, x).argmax(1).numpy() == y).mean() > 0.95
        r = C.recognition(net, x)
        assert r.rate > 0.8 and r.classes_seen == 10
        assert C.classifier_fd(net, x[:500], x[500:]) < C.classifier_fd(net, x[:500], noise)


def test_junk_targets():
    x = torch.rand(20, 1, 28, 28) * 2 - 1
    y = torch.arange(20) % 10
    junk, soft = C._junk(x, y, 9, torch.Generator().manual_seed(0))
    assert junk.shape == (9, 1, 28, 28) and soft.shape == (9, 10)
    torch.testing.assert_close(soft.sum(1), torch.ones(9))
    assert (soft[:6] == 0.1).all()  # noise and shuffled pixels: no class
    assert set(soft[6:].unique().tolist()) <= {0.0, 0.5, 1.0}  # blends: half of each image's class


def test_training_and_sampling_share_the_timestep_convention():
    """A network exact under the training convention (x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε at index t) makes one DDIM
    step from any t land on x0 exactly; an off-by-one between trainer and sampler would not."""
    s = dk.NoiseSchedule.linear()
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def exact(x, t):  # the ε that the training loss would call correct at index t
        a, sd = levels(s, t, x0)
        return (x - a * x0) / sd

    for t in (1, 37, 500, 999):
        a, sd = levels(s, torch.full((3,), t), x0)
        out = dk.sample(exact, a * x0 + sd * eps, s, sampler="ddim", steps=[t], eta=0.0)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def test_trained_pipeline_samples_with_the_ema_weights(tmp_path):
    from ddimkit.checkpoint import read_checkpoint

    res = train(TrainConfig(out=str(tmp_path / "r"), steps=5, batch_size=4, warmup=1, save_every=5,
                            sample_every=0, num_sample_images=0, log_every=1), progress=False)
    ck = read_checkpoint(tmp_path / "r", ema=True)
    for name, p in res.pipeline.model.state_dict().items():
        torch.testing.assert_close(p.cpu(), ck["ema"][name].cpu())
    assert any(not torch.equal(ck["ema"][k], ck["raw"][k]) for k in ck["raw"])


def test_time_to_quality_scores_in_a_second_process_what_the_first_trained(tmp_path, monkeypatch, capsys):
    """benchmarks/time_to_quality.py --stage train/score (two device calls): the score stage samples the run the
    train stage left, with its figures (and with ``--unguided`` its network without the guide); without that
    run, or with diffusers' recipe, it says what is missing."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import time_to_quality as ttq

    base = ["ttq", "--quick", "--skip", "diffusers", "--inception", str(tmp_path / "none.pt"), "--out"]
    monkeypatch.setattr(sys, "argv", base + [str(tmp_path / "empty"), "--stage", "score"])
    with pytest.raises(SystemExit, match="run --stage train with the same --out first"):
        ttq.main()
    monkeypatch.setattr(sys, "argv", ["ttq", "--quick", "--stage", "train"])
    with pytest.raises(SystemExit):
        ttq.main()
    assert "add --skip diffusers" in capsys.readouterr().err
    for stage in ("train", "score"):
        monkeypatch.setattr(sys, "argv", base + [str(tmp_path / "run"), "--stage", stage, "--unguided"])
        ttq.main()
        assert (tmp_path / "run" / "time_to_quality.json").is_file() == (stage == "score")
    info = json.loads((tmp_path / "run" / "ddimkit" / ttq.TRAIN_INFO).read_text())
    scored = json.loads((tmp_path / "run" / "time_to_quality.json").read_text())["recipes"]["ddimkit"]
    assert info["steps"] >= 1 and scored["steps"] == info["steps"] and scored["params"] == info["params"]
    assert 0.0 <= scored["recognised"] <= 1.0 and scored["n_classifier"] >= 12
    # --unguided: the default recipe keeps a guide, and the network alone is scored from the same noise beside it
    alone = json.loads((tmp_path / "run" / "time_to_quality.json").read_text())["recipes"][
        "ddimkit, network alone (no autoguidance)"]
    assert alone["steps"] == info["steps"] and alone["classifier_fd"] != scored["classifier_fd"]
