import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ddimkit as dk
from ddimkit.checkpoint import checkpoint_dirs, mean_weights, read_checkpoint
from ddimkit.train import TrainConfig, TrainingError, batch_indices, lr_at, train

ROOT = Path(__file__).resolve().parents[1]


def _cfg(out, **kw):
    base = dict(model="tiny", data="mnist-5k", out=str(out), steps=6, batch_size=8, lr=1e-3, warmup=2,
                save_every=3, sample_every=0, log_every=1, num_sample_images=0, seed=0)
    return TrainConfig(**{**base, **kw})


def _weights(path):
    ck = read_checkpoint(path, ema=False)
    return ck["raw"], ck["ema"]


def test_batch_indices_cover_each_epoch_once():
    n, b = 10, 4
    seen = torch.cat([batch_indices(k, b, n, seed=3) for k in range(5)])  # 20 indices = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(2, b, n, 3), batch_indices(2, b, n, 3))  # a function of the step alone
    assert not torch.equal(batch_indices(0, b, n, 3), batch_indices(0, b, n, 4))


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, lr_schedule="cosine")
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5) and lr_at(99, cfg) < 0.01
    assert lr_at(50, TrainConfig(steps=100, lr=1.0, warmup=10, lr_schedule="constant")) == 1.0


def test_lr_defaults_to_the_presets():
    from ddimkit.train import DEFAULT_LR

    for model in ("tiny", "ddpm-cifar10"):
        cfg = TrainConfig(model=model, steps=100, warmup=0, lr_schedule="constant")
        assert lr_at(50, cfg) == DEFAULT_LR[model]
    assert DEFAULT_LR["ddpm-cifar10"] == 2e-4  # the DDPM paper's CIFAR-10 rate
    assert lr_at(50, TrainConfig(model="tiny", lr=0.5, steps=100, warmup=0, lr_schedule="constant")) == 0.5


def test_loss_falls_and_checkpoint_round_trips(tmp_path):
    res = train(_cfg(tmp_path / "run", steps=40, batch_size=16, lr=2e-3, warmup=5, save_every=20, log_every=1),
                progress=False)
    first = sum(l for _, l in res.losses[:5]) / 5
    last = sum(l for _, l in res.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "loss.csv").is_file()
    # the pipeline returned by train and one loaded from disk give identical outputs
    p = dk.load(tmp_path / "run", device="cpu")
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(p.model(x, t), res.pipeline.model(x, t))
        raw = dk.load(tmp_path / "run", device="cpu", ema=False)
        assert not torch.equal(raw.model(x, t), p.model(x, t))  # EMA and raw weights are both kept
    assert p.prediction_type == "sample" and p.image_shape == (1, 28, 28)
    # trained models re-derive ε̂ from the clipped x̂0 by default; the flag changes samples when x̂0 is clipped
    assert p.sampling["use_clipped_model_output"] is True and p.sampling["clip_sample"] == 1.0
    g = lambda: torch.Generator().manual_seed(0)
    default = p.sample(4, sampler="ddim", steps=5, generator=g())
    assert torch.equal(default, p.sample(4, sampler="ddim", steps=5, generator=g(), use_clipped_model_output=True))
    assert not torch.equal(default, p.sample(4, sampler="ddim", steps=5, generator=g(),
                                             use_clipped_model_output=False))
    assert p.config["train"]["steps"] == 40 and p.config["data"]["num_images"] == 5000


def test_resume_equals_uninterrupted(tmp_path):
    full = train(_cfg(tmp_path / "full", dropout=0.1), progress=False)
    part = train(_cfg(tmp_path / "part", dropout=0.1), stop_after=3, progress=False)
    assert part.step == 3 and read_checkpoint(tmp_path / "part")["step"] == 3
    resumed = train(_cfg(tmp_path / "part", dropout=0.1), resume=True, progress=False)
    assert resumed.step == 6
    (a_raw, a_ema), (b_raw, b_ema) = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in a_raw:
        assert torch.equal(a_raw[k], b_raw[k]), k
        assert torch.equal(a_ema[k], b_ema[k]), k
    assert [s for s, _ in resumed.losses] == [s for s, _ in full.losses]  # the loss log is continued, not duplicated


def test_resume_refuses_a_different_run_and_fresh_refuses_existing(tmp_path):
    train(_cfg(tmp_path / "r"), stop_after=3, progress=False)
    with pytest.raises(ValueError, match="training options differ.*lr"):
        train(_cfg(tmp_path / "r", lr=5e-4), resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train(_cfg(tmp_path / "r"), progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_cfg(tmp_path / "empty"), resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    cfg = _cfg(tmp_path / "nan", steps=40, lr=1e6, warmup=0, grad_clip=0.0, save_every=1)
    with pytest.raises(TrainingError, match="non-finite at step (\\d+).*last good checkpoint"):
        train(cfg, progress=False)
    ck = read_checkpoint(tmp_path / "nan", ema=False)
    assert all(torch.isfinite(v).all() for v in ck["raw"].values())
    assert all(torch.isfinite(v).all() for v in ck["ema"].values())


def _train_cmd(out, steps, extra=()):
    return [sys.executable, "-m", "ddimkit", "train", "--model", "tiny", "--out", str(out), "--steps", str(steps),
            "--batch-size", "8", "--lr", "1e-3", "--warmup", "2", "--save-every", "2", "--sample-every", "0",
            "--num-sample-images", "0", "--log-every", "1", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
    """A run killed at a random moment leaves a loadable checkpoint; resuming ends with the same weights."""
    steps = 12
    subprocess.run(_train_cmd(tmp_path / "ref", steps), check=True, env=_env(), capture_output=True)
    proc = subprocess.Popen(_train_cmd(tmp_path / "killed", steps), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "latest").is_file() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere in the middle of later steps or a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = read_checkpoint(tmp_path / "killed")  # the latest checkpoint is complete and readable
    assert 2 <= ck["step"] <= steps
    if ck["step"] < steps:
        r = subprocess.run(_train_cmd(tmp_path / "killed", steps, ["--resume"]), env=_env(), capture_output=True)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]) and torch.equal(a[1][k], b[1][k]), k


@pytest.mark.slow
def test_two_processes_data_parallel(tmp_path):
    """torchrun with 2 CPU processes: each takes half of every batch; the update equals one process's."""
    single = tmp_path / "single"
    subprocess.run(_train_cmd(single, 4), check=True, env=_env(), capture_output=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ddimkit",
           *_train_cmd(tmp_path / "ddp", 4)[3:]]
    r = subprocess.run(cmd, env=_env(), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    a, b = _weights(single), _weights(tmp_path / "ddp")
    for k in a[0]:
        assert torch.allclose(a[0][k], b[0][k], atol=1e-5), k


def test_adam_beta2_reaches_the_optimizer_and_is_checked(tmp_path, capsys):
    """AdamW's β2 is the config's (default 0.999), set by ``train --adam-beta2`` and kept in the checkpoint's
    optimizer state; an impossible one is refused in one line before any work."""
    from ddimkit.cli import main

    assert TrainConfig().adam_beta2 == 0.999
    assert main(["train", "--model", "tiny", "--out", str(tmp_path / "a"), "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--adam-beta2", "0.99"]) == 0
    betas = read_checkpoint(tmp_path / "a", optimizer=True)["optimizer"]["param_groups"][0]["betas"]
    assert tuple(betas) == (0.9, 0.99)
    with pytest.raises(ValueError, match="adam_beta2 must lie in"):
        TrainConfig(adam_beta2=1.0)
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "b"), "--adam-beta2", "1"]) != 0
    err = capsys.readouterr().err
    assert "adam_beta2 must lie in [0, 1)" in err and "Traceback" not in err and not (tmp_path / "b").exists()


def test_mean_weights_is_the_checkpoints_mean(tmp_path):
    """The mean of two checkpoints' EMA (or raw) weights, entry by entry, in their dtype; one is itself."""
    from ddimkit.cli import main

    assert main(["train", "--model", "tiny", "--out", str(tmp_path), "--steps", "2", "--batch-size", "4",
                 "--save-every", "1", "--keep", "2", "--sample-every", "0"]) == 0
    first, second = checkpoint_dirs(tmp_path)
    for ema in (True, False):
        a, b = (read_checkpoint(c, ema=ema)["model"] for c in (first, second))
        mean = mean_weights([first, second], ema=ema)
        assert any(not torch.equal(a[k], b[k]) for k in a)  # the two differ, so the mean is not either
        for k in a:
            assert mean[k].dtype == a[k].dtype
            torch.testing.assert_close(mean[k], ((a[k].double() + b[k].double()) / 2).to(a[k].dtype), rtol=0, atol=0)
        assert all(torch.equal(v, a[k]) for k, v in mean_weights([first], ema=ema).items())
    with pytest.raises(ValueError, match="no checkpoints"):
        mean_weights([])
