"""The shipped models: loading by name, the fp16 packaging, the cards, and that the weights are good."""

import json
import re

import pytest
import torch

import ddimkit as dk
from ddimkit import pretrained
from ddimkit.checkpoint import read_checkpoint
from ddimkit.classifier import load_classifier, recognition
from ddimkit.cli import main
from ddimkit.data import to_uint8
from ddimkit.train import TrainConfig, train

SHIPPED = ("fashion-mnist", "mnist")


def test_both_models_ship_small_with_full_cards():
    assert pretrained.names() == list(SHIPPED)
    for name in SHIPPED:
        folder = pretrained.resolve(f"pretrained:{name}")
        assert (folder / "model.safetensors").stat().st_size <= 10e6
        card = pretrained.card(name)
        assert re.fullmatch(r"[0-9a-f]{64}", card["data_sha256"])
        assert card["command"].split()[:3] == ["OMP_NUM_THREADS=1", "ddimkit", "train"]
        assert card["quality"] and card["quality_command"].startswith("python benchmarks/pretrained_quality.py")
        pipe = dk.load(f"pretrained:{name}", device="cpu")
        assert card["params"] == sum(p.numel() for p in pipe.model.parameters())
        assert card["step"] == read_checkpoint(folder)["step"] and pipe.image_shape == (1, 28, 28)


def test_unknown_name_is_one_line_listing_the_names(capsys):
    with pytest.raises(ValueError, match="pretrained:fashion-mnist, pretrained:mnist"):
        dk.load("pretrained:cifar")
    assert main(["sample", "--ckpt", "pretrained:cifar", "--out", "x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown pretrained model 'cifar'" in err and "pretrained:mnist" in err


def test_pretrained_command_lists_the_models_with_their_numbers(capsys):
    assert main(["pretrained"]) == 0
    text = capsys.readouterr().out
    for name in SHIPPED:
        assert f"pretrained:{name}:" in text
        assert pretrained.card(name)["command"] in text
    assert "classifier-FD" in text
    assert main(["pretrained", "--json"]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == list(SHIPPED)


def test_package_stores_the_ema_weights_in_fp16_and_they_sample_like_fp32(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(data="mnist-5k", model="tiny", steps=3, batch_size=8, out=str(run), save_every=0,
                      sample_every=0, log_every=0, num_sample_images=0, warmup=1))
    folder = pretrained.package(run, "toy", {"description": "a test"}, root=tmp_path / "shipped")
    ema = read_checkpoint(run)["ema"]
    stored = read_checkpoint(folder)["model"]
    assert all(stored[k].dtype == torch.float16 and torch.equal(stored[k], v.half()) for k, v in ema.items())
    full, half = dk.load(run, device="cpu"), dk.load(folder, device="cpu")
    assert next(half.model.parameters()).dtype == torch.float32  # fp16 on disk, fp32 to compute
    assert half.guide is not None and next(half.guide.parameters()).dtype == torch.float32  # the guide ships too
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a, b = (p.sample(4, steps=10, generator=g()) for p in (full, half))
    assert (a - b).abs().max() < 0.02  # fp16 rounding of the weights moves pixels by far less than a grey level
    assert json.loads((folder / "card.json").read_text())["description"] == "a test"


@pytest.mark.parametrize("cmd", [
    ["sample", "--num", "2", "--steps", "3"],
    ["invert", "--image", "IMG", "--steps", "3", "--reconstruct", "REC"],
    ["interpolate", "--seeds", "1", "2", "--alphas", "0,1", "--steps", "3"],
])
def test_pretrained_names_work_wherever_a_checkpoint_does(tmp_path, cmd):
    from ddimkit.viz import save_grid

    img = save_grid(dk.load_images("mnist-5k")[:1].float() / 127.5 - 1, tmp_path / "digit.png")
    argv = [str(img) if a == "IMG" else str(tmp_path / "rec.png") if a == "REC" else a for a in cmd]
    out = tmp_path / ("noise.pt" if cmd[0] == "invert" else "out.png")
    assert main(argv + ["--ckpt", "pretrained:mnist", "--out", str(out)]) == 0
    assert out.is_file()


def test_shipped_mnist_model_draws_recognisable_digits():
    # A regression test of the shipped weights: a broken file or a wrong config would draw noise (0%).
    x = dk.load("pretrained:mnist", device="cpu").sample(64, steps=50, generator=torch.Generator().manual_seed(0))
    r = recognition(load_classifier("mnist"), to_uint8(x))
    assert r.rate >= 0.45 and r.classes_seen >= 8, r  # 58% and 9 classes when measured (69% of 1,000 samples)


def test_fusing_two_real_digits_starts_and_ends_at_them():
    """Issue 11's fix on the shipped model: α = 0 and α = 1 of a fusion are the input digits."""
    from ddimkit.metrics import reconstruction_mse

    pipe = dk.load("pretrained:mnist", device="cpu")
    x = dk.load_images("mnist-5k")[[7, 4000]].float() / 127.5 - 1
    seen = []
    z = pipe.invert(x, steps=50, refine=3, callback=lambda d: seen.append(d["t"]))
    assert len(seen) == 50 and seen == sorted(seen)  # one call a step, from low noise up (the app's progress)
    ends = pipe.interpolate(z[:1], z[1:], [0.0, 1.0], steps=50, inverted=True)
    assert float(reconstruction_mse(x, ends).max()) <= 1e-3
