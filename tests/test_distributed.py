"""Sampling and evaluation across processes: 2 CPU processes (gloo on 127.0.0.1) against one.

The launches are the commands of docs/distributed.md, as written."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ddimkit as dk
from ddimkit import distributed as D
from ddimkit import evaluate as E
from ddimkit import metrics
from ddimkit.cli import main

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker as W  # noqa: E402

BIN = Path(sys.executable).parent


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "ACCELERATE_USE_CPU")}
    return {**env, "OMP_NUM_THREADS": "1", "DDIMKIT_DIST_TIMEOUT": "60", **extra}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "run"
    dk.train(dk.TrainConfig(model="tiny", out=str(out), steps=2, batch_size=8, save_every=0, sample_every=0,
                            num_sample_images=0), progress=False)
    return out


def _load(path):
    with np.load(path) as z:
        return z["images"]


def test_shards_are_whole_batches_covering_every_image_once():
    for n, bs, world in [(7, 2, 2), (8, 4, 2), (5, 2, 4), (3, 8, 2), (100, 7, 3)]:
        parts = [D.shard(n, bs, r, world) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))
        assert all(p.start % bs == 0 for p in parts)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= bs


def test_stats_reduced_from_shares_match_numpy():
    """The two-pass reduction, simulated over 3 shares, against np.cov of the whole set."""
    f = np.random.default_rng(0).normal(size=(50, 6)) * 3 + 100  # a large mean, as Inception features have
    parts = np.split(f, [11, 30])
    mu = sum(p.sum(0) for p in parts) / len(f)
    sigma = sum((p - mu).T @ (p - mu) for p in parts) / (len(f) - 1)
    whole = metrics.feature_stats(f)
    assert np.allclose(mu, whole.mu, rtol=1e-13) and np.allclose(sigma, whole.sigma, rtol=1e-11)


@pytest.mark.filterwarnings("ignore::ddimkit.metrics.SmallSampleWarning")
def test_api_two_processes_equal_one(run, tmp_path):
    """Pipeline.sample(distributed=True), sharded FID/KID, rank failure and the resumed sweep, on 2 processes."""
    r = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(Path(W.__file__)),
                        str(run), str(tmp_path)], env=_env(), capture_output=True, timeout=180)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    res = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1)]
    torch.set_num_threads(1)  # as in the workers: the same kernels, so the comparison can be exact
    pipe = dk.load(run, device="cpu")
    for sampler, eta, steps in W.SAMPLERS:
        one = pipe.sample(seeds=range(W.NUM), sampler=sampler, eta=eta, steps=steps, batch_size=W.BATCH)
        for rank in (0, 1):  # every process gets every image, bit for bit what one process gives
            assert torch.equal(res[rank]["images"][f"{sampler}-{eta}"], one), (sampler, eta, rank)
    # 7 images in batches of 2: rank 0 evaluates 2 batches (4 images), rank 1 the other 3, per step
    per_step = sum(steps for _, _, steps in W.SAMPLERS)
    assert [x["evaluated"] for x in res] == [4 * per_step, 3 * per_step]

    ref, fake = E.read_image_set("mnist-5k", num=13), W.FakeInception()
    u8 = dk.data.to_uint8(res[0]["images"]["ddim-1.0"])
    fa, fb = metrics.inception_features(ref.images, fake, 4), metrics.inception_features(u8, fake, 4)
    fid, kid = metrics.fid_from_features(fa, fb), metrics.kid(fa, fb, subset_size=5)
    assert fid > 0
    for x in res:
        assert abs(x["fid"] - fid) <= 1e-6 * fid
        assert np.allclose(x["kid"], kid, rtol=1e-6, atol=1e-12)

    assert res[1]["error"] == "ValueError: out of memory on purpose"
    assert res[0]["error"].startswith("DistributedError: rank 1 of 2 failed") and "on purpose" in res[0]["error"]
    assert [x["sweep_calls_on_rerun"] for x in res] == [0, 0]
    assert len(res[0]["sweep_rows"]) == 1 and (tmp_path / "sweep" / "samples" / "ddim-eta0.0-steps2.npz").is_file()


def test_sample_command_under_torchrun_and_accelerate(run, tmp_path):
    args = ["sample", "--ckpt", str(run), "--num", "8", "--steps", "3", "--eta", "1", "--batch-size", "2",
            "--seed", "3", "--device", "cpu"]
    assert main([*args, "--per-sample-seeds", "--out", str(tmp_path / "one.npz")]) == 0
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "ddimkit", "--"]
    accelerate = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                  str(_free_port()), "-m", "ddimkit", "--"]
    for name, launch in (("torchrun", torchrun), ("accelerate", accelerate)):
        r = subprocess.run([*launch, *args, "--out", str(tmp_path / f"{name}.npz")], env=_env(),
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-3000:]
        assert r.stdout.decode().count("wrote 8 images") == 1  # only rank 0 reports
        assert np.array_equal(_load(tmp_path / f"{name}.npz"), _load(tmp_path / "one.npz")), name


def test_launches_that_would_run_one_process_are_refused(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # what `accelerate launch --cpu --num_processes 2` sets
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert main(["sample", "--ckpt", str(run), "--num", "2", "--out", str(tmp_path / "a.npz")]) == 2
    assert "--multi_gpu --num_processes N" in capsys.readouterr().err
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setenv("WORLD_SIZE", "2")  # invert runs on one process: it says so rather than duplicating work
    assert main(["invert", "--ckpt", str(run), "--image", "x.png", "--out", str(tmp_path / "z.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddimkit invert: error: runs on one process") and len(err.splitlines()) == 1


def test_killed_rank_stops_the_other_with_no_output(run, tmp_path):
    """Rank 1 is killed mid-sampling: rank 0 exits with one clear line, in bounded time, writing nothing."""
    port, out = _free_port(), tmp_path / "out" / "s.npz"
    cmd = [sys.executable, "-m", "ddimkit", "sample", "--ckpt", str(run), "--num", "8", "--sampler", "ddpm",
           "--steps", "300", "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    procs, logs = [], []
    for rank in (0, 1):
        logs.append(open(tmp_path / f"err{rank}", "w+"))
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), DDIMKIT_DIST_TIMEOUT="30")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=logs[rank]))
    try:
        deadline = time.time() + 60
        while "ddpm" not in (tmp_path / "err0").read_text():  # rank 0's bar: both ranks are sampling
            assert time.time() < deadline and procs[0].poll() is None, (tmp_path / "err0").read_text()
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.time()
        code = procs[0].wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    err = (tmp_path / "err0").read_text().strip().splitlines()[-1]
    assert code == 2 and err.startswith("ddimkit sample: error: rank 0 of 2 lost the other processes"), err
    assert time.time() - t0 < 30
    assert not out.exists() and not [p for p in out.parent.iterdir() if not p.name.startswith(".")]


def test_fid_and_sweep_commands_under_torchrun(run, tmp_path):
    """`fid` and `sweep` as the docs write them, with the real Inception (skipped without its weights)."""
    try:
        metrics.inception_path(download=False)
    except metrics.InceptionWeightsError as e:
        pytest.skip(f"FID Inception weights not available without downloading ({e})")
    x = dk.load_images("mnist-5k")[:12, 0].numpy()
    np.savez(tmp_path / "a.npz", x=x[:6])
    np.savez(tmp_path / "b.npz", x=x[6:])
    fid = ["fid", f"npz:{tmp_path / 'a.npz'}", f"npz:{tmp_path / 'b.npz'}", "--kid", "--no-cache", "--batch-size", "2",
           "--device", "cpu"]
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "ddimkit", "--"]

    def scores(text):
        lines = [line for line in text.splitlines() if line.startswith(("FID ", "KID "))]
        return [float(line.split()[1]) for line in lines]

    one = subprocess.run([sys.executable, "-m", "ddimkit", *fid], env=_env(), capture_output=True, timeout=180)
    two = subprocess.run([*torchrun, *fid], env=_env(), capture_output=True, timeout=180)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr.decode()[-2000:], two.stderr.decode()[-2000:])
    (f1, k1), (f2, k2) = scores(one.stdout.decode()), scores(two.stdout.decode())
    assert f2 == pytest.approx(f1, rel=1e-6, abs=1e-4) and k2 == pytest.approx(k1, rel=1e-6, abs=1e-5)
    sweep = ["sweep", "--ckpt", str(run), "--ref", f"npz:{tmp_path / 'a.npz'}", "--steps", "2", "--eta", "0",
             "--num", "4", "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "sweep")]
    r = subprocess.run([*torchrun, *sweep], env=_env(), capture_output=True, timeout=180)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.decode().count("wrote") == 1 and (tmp_path / "sweep" / "fid.csv").is_file()
