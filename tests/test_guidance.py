"""Class-conditional models and classifier-free guidance: the network, the labels, training, sampling."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import ddimkit as dk
from ddimkit.cli import main
from ddimkit.compiled_net import StaticBatchNet
from ddimkit.denoiser import Denoiser
from ddimkit.diffusion import levels
from ddimkit.guidance import class_labels_for, conditioned
from ddimkit.labels import load_labels
from ddimkit.models import create_model
from ddimkit.train import TrainConfig, draw_batch

S = dk.NoiseSchedule.linear()


class LabelNet(nn.Module):
    """A small conditional network: a convolution plus a per-label bias; records its calls."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bias = nn.Conv2d(1, 1, 3, padding=1), nn.Embedding(classes, 1)
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(y.clone())
        return torch.tanh(self.conv(x)) + self.bias(y).reshape(-1, 1, 1, 1) * (1 + t.reshape(-1, 1, 1, 1) / 1000)


def test_class_conditional_unet_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from ddimkit.models.diffusers_format import diffusers_config_from_unet, unet_kwargs_from_diffusers

    ours = create_model("tiny", num_class_embeds=11)
    config = diffusers_config_from_unet(ours)
    assert config["num_class_embeds"] == 11 and unet_kwargs_from_diffusers(config) == ours.config
    theirs = diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    theirs.load_state_dict(ours.state_dict())
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 200, 500, 999]), torch.tensor([0, 3, 10, 7])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, y), theirs(x, t, y).sample, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ours(x, t, y), ours(x, t, torch.tensor([1, 3, 10, 7])))


def test_unet_asks_for_labels_only_when_class_conditional():
    cond, plain = create_model("tiny", num_class_embeds=3), create_model("tiny")
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 9])
    with pytest.raises(ValueError, match="pass class_labels"):
        cond(x, t)
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(x, t, torch.tensor([0, 1]))


def test_guidance_mixes_outputs_and_calls_once_at_scale_one():
    net, x, t = LabelNet(), torch.randn(3, 1, 5, 5), torch.tensor([100, 100, 100])
    y = torch.tensor([0, 1, 2])
    c, u = net(x, t, y), net(x, t, torch.full_like(y, 3))
    for w in (0.0, 1.0, 2.5):
        net.calls.clear()
        out = conditioned(net, y, w, null_label=3)(x, t)
        torch.testing.assert_close(out, u + w * (c - u))
        assert len(net.calls) == (1 if w in (0.0, 1.0) else 2)
    with pytest.raises(ValueError, match="label dropout"):
        conditioned(net, y, 2.0, null_label=None)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_guidance_mixes_x0_and_eps_alike_for_every_parameterisation(prediction):
    """The docstring's claim: mixing raw outputs mixes x̂0 and ε̂ by the same weights."""
    net, x = LabelNet(), torch.randn(3, 1, 5, 5)
    t, y, w = torch.tensor([300, 300, 300]), torch.tensor([0, 1, 2]), 3.0
    a, s = levels(S, t, x)

    def pair(labels, scale):
        return Denoiser(conditioned(net, labels, scale, null_label=3), prediction)(x, t, a, s)

    (x0_c, eps_c), (x0_u, eps_u) = pair(y, 1.0), pair(torch.full_like(y, 3), 1.0)
    x0_g, eps_g = pair(y, w)
    torch.testing.assert_close(x0_g, x0_u + w * (x0_c - x0_u))
    torch.testing.assert_close(eps_g, eps_u + w * (eps_c - eps_u))


def test_class_labels_for_defaults_and_errors():
    assert class_labels_for(None, 5, None) is None
    assert class_labels_for(None, 7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert class_labels_for(2, 3, 3).tolist() == [2, 2, 2]
    assert class_labels_for(None, 2, 3, null_label=3, default="null").tolist() == [3, 3]
    assert class_labels_for([3, 0], 2, 3, null_label=3).tolist() == [3, 0]  # the null label is a label too
    for args, match in (((1, 2, None), "not class-conditional"), (([0, 1], 3, 3), "2 class labels for 3"),
                        ((3, 2, 3), r"\[0, 2\]"), ((None, 2, 3, None, "null"), "without label dropout")):
        with pytest.raises(ValueError, match=match):
            class_labels_for(*args)


def test_draw_batch_adds_labels_last_with_dropout_to_the_null_label():
    images, labels = torch.zeros(50, 1, 4, 4, dtype=torch.uint8), torch.arange(50) % 5
    plain = draw_batch(TrainConfig(batch_size=8), 3, images, S, None)
    cond = draw_batch(TrainConfig(batch_size=8, class_conditional=True), 3, images, S, None, labels)
    for a, b in zip(plain[:4], cond[:4]):  # the images, noise and timesteps an unconditional run draws
        assert (a is None and b is None) or torch.equal(a, b)
    assert plain[4] is None and cond[5] is None
    cfg = TrainConfig(batch_size=64, class_conditional=True, label_dropout=0.25)
    draws = torch.cat([draw_batch(cfg, k, images, S, None, labels)[4] for k in range(40)])
    assert set(draws.tolist()) <= set(range(6)) and abs((draws == 5).float().mean().item() - 0.25) < 0.03
    again = draw_batch(cfg, 7, images, S, None, labels)[4]
    assert torch.equal(again, draw_batch(cfg, 7, images, S, None, labels)[4])
    idx = draw_batch(TrainConfig(batch_size=64, class_conditional=True, label_dropout=0.0), 1, images, S, None,
                     labels)[4]
    assert (idx < 5).all()


def test_labels_from_npz_folders_and_the_bundled_digits(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.array([2, 0, 1]),
             x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([1, 1]))
    assert load_labels(f"npz:{tmp_path}/d.npz:x_train").tolist() == [2, 0, 1]
    assert load_labels(f"npz:{tmp_path}/d.npz:x_test").tolist() == [1, 1]
    np.savez(tmp_path / "none.npz", x=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no labels"):
        load_labels(f"npz:{tmp_path}/none.npz")
    for name, k in (("cat", 2), ("ant", 1)):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(k):
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "f" / name / f"{i}.png")
    assert load_labels(f"folder:{tmp_path}/f").tolist() == [0, 1, 1]  # ant < cat, files in load order
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "f" / "loose.png")
    with pytest.raises(ValueError, match="subfolder"):
        load_labels(f"folder:{tmp_path}/f")
    y = load_labels("mnist-5k")
    assert len(y) == len(dk.load_images("mnist-5k")) and set(y.tolist()) == set(range(10))


def test_static_batch_net_pads_labels():
    net = LabelNet()
    x, t, y = torch.randn(3, 1, 5, 5), torch.tensor([10, 10, 10]), torch.tensor([2, 0, 1])
    out = StaticBatchNet(net, 5)(x, t, y)
    assert net.calls[-1].tolist() == [2, 0, 1, 2, 2]
    torch.testing.assert_close(out, net(x, t, y))


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    cfg = TrainConfig(out=str(out), steps=4, batch_size=8, warmup=1, save_every=2, sample_every=0,
                      num_sample_images=0, class_conditional=True, guidance_scale=2.0,
                      autoguidance_at=None)  # classifier-free guidance alone (autoguidance: test_autoguidance.py)
    dk.train(cfg, progress=False)
    return cfg


def test_resumed_class_conditional_run_equals_an_uninterrupted_one(cond_run, tmp_path):
    from dataclasses import replace

    half = replace(cond_run, out=str(tmp_path / "half"))
    dk.train(half, stop_after=2, progress=False)
    dk.train(half, resume=True, progress=False)
    a, b = dk.load(cond_run.out).model.state_dict(), dk.load(half.out).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trained_class_conditional_pipeline_samples_guides_and_inverts(cond_run):
    pipe = dk.load(cond_run.out)
    assert (pipe.num_classes, pipe.null_label, pipe.sampling["guidance_scale"]) == (10, 10, 2.0)
    g = torch.Generator
    default = pipe.sample(4, steps=3, generator=g().manual_seed(0))
    explicit = pipe.sample(4, steps=3, generator=g().manual_seed(0), class_labels=[0, 1, 2, 3], guidance_scale=2.0)
    torch.testing.assert_close(default, explicit)  # labels i mod K and the stored scale
    unguided = pipe.sample(4, steps=3, generator=g().manual_seed(0), guidance_scale=1.0)
    assert not torch.allclose(default, unguided)
    # image i's label does not depend on how the seeds are split (what distributed sampling relies on)
    whole = pipe.sample(seeds=range(6), steps=3)
    parts = [pipe.sample(seeds=range(lo, lo + 3), steps=3, class_labels=list(range(lo, lo + 3))) for lo in (0, 3)]
    torch.testing.assert_close(whole, torch.cat(parts))
    # inversion and its decode run the labels given, the null label by default, unguided and unclipped
    x0 = default[:2]
    for labels, expected in ((None, 10), (4, 4)):
        y = torch.full((2,), expected)
        z = pipe.invert(x0, steps=5, class_labels=labels)
        kw = dict(steps=5, prediction_type=pipe.prediction_type, class_labels=y)
        torch.testing.assert_close(z, dk.ddim_invert(pipe.model, x0, pipe.schedule, **kw))
        back = dk.sample(pipe.model, z, pipe.schedule, "ddim", **kw).clamp(-1, 1)
        torch.testing.assert_close(pipe.reconstruct(z, 5, class_labels=labels), back)


def test_diagnosis_split_cells_guide_like_pipeline_sample(cond_run, monkeypatch):
    """benchmarks/sampler_diagnosis.py's split cells on a class-conditional model: η = 0 on both sides of the
    switch is one DDIM-100 run, so it must draw Pipeline.sample's images (labels i mod K, the model's scale)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import sampler_diagnosis

    pipe = dk.load(cond_run.out)
    split = sampler_diagnosis.split_sample(pipe, 3, switch=500, eta_high=0.0, eta_low=0.0)
    whole = pipe.sample(3, "ddim", steps=100, eta=0.0, generator=torch.Generator().manual_seed(0))
    unguided = pipe.sample(3, "ddim", steps=100, eta=0.0, generator=torch.Generator().manual_seed(0),
                           guidance_scale=1.0)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)
    assert not torch.allclose(split, unguided, atol=1e-3)


def test_diffusers_export_keeps_labels_and_guidance(cond_run, tmp_path):
    """A class-conditional model exported to diffusers and loaded back keeps K, its null label, its guidance
    scale and its clipped-model-output setting (ddimkit.json), so it samples as before; without that file
    it still loads, but cannot guide."""
    from ddimkit.diffusers_io import EXTRAS_FILE, export_diffusers

    pipe = dk.load(cond_run.out)
    out = export_diffusers(pipe, tmp_path / "exported")
    back = dk.load(out, device="cpu")
    assert (back.num_classes, back.null_label) == (pipe.num_classes, pipe.null_label) == (10, 10)
    for key in ("guidance_scale", "use_clipped_model_output"):
        assert back.sampling[key] == pipe.sampling[key]
    a, b = (p.sample(4, steps=3, generator=torch.Generator().manual_seed(0)) for p in (pipe, back))
    torch.testing.assert_close(a, b)
    (out / EXTRAS_FILE).unlink()
    bare = dk.load(out, device="cpu")
    assert bare.null_label is None
    with pytest.raises(ValueError, match="null label"):
        bare.sample(2, steps=3, guidance_scale=2.0)


def test_round_trip_is_near_exact_with_the_same_label_only():
    net = LabelNet()
    x0 = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4)) - 0.5
    y = torch.tensor([1, 2])
    x_T = dk.ddim_invert(net, x0, S, steps=50, refine=5, class_labels=y)
    same = dk.sample(net, x_T, S, "ddim", steps=50, class_labels=y)
    other = dk.sample(net, x_T, S, "ddim", steps=50, class_labels=torch.tensor([0, 0]))
    assert (same - x0).abs().max() < 1e-4
    assert (other - x0).abs().max() > 100 * (same - x0).abs().max()


def test_guidance_needs_a_class_conditional_run_with_label_dropout():
    with pytest.raises(ValueError, match="class_conditional"):
        TrainConfig(guidance_scale=2.0)
    with pytest.raises(ValueError, match="label_dropout"):
        TrainConfig(class_conditional=True, label_dropout=0.0, guidance_scale=2.0)


def test_cli_labels_and_their_errors(cond_run, tmp_path, capsys):
    assert main(["sample", "--ckpt", cond_run.out, "--steps", "2", "--num", "3", "--class-labels", "7",
                 "--guidance-scale", "3", "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    for argv, match in (
            (["sample", "--ckpt", cond_run.out, "--steps", "2", "--num", "3", "--class-labels", "1,2"],
             "2 class labels"),
            (["sample", "--ckpt", cond_run.out, "--steps", "2", "--num", "1", "--class-labels", "11"], "[0, 10]"),
            (["sample", "--ckpt", "pretrained:mnist", "--steps", "2", "--num", "1", "--class-labels", "1"],
             "not class-conditional"),
            (["sample", "--ckpt", "pretrained:mnist", "--steps", "2", "--num", "1", "--guidance-scale", "2"],
             "guidance needs a class-conditional model")):
        code = main(argv + ["--out", str(tmp_path / "e.png")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and match in err, err
    np.savez(tmp_path / "none.npz", x=np.zeros((8, 28, 28), np.uint8))
    code = main(["train", "--data", f"npz:{tmp_path}/none.npz", "--class-conditional", "--steps", "1",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no labels" in err and len(err.splitlines()) == 1, err
