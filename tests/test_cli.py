"""The ``ddimkit`` command line: every command runs, and bad input gives one line and exit code 2."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddimkit as dk
from ddimkit.cli import main
from ddimkit.cli.common import read_tensor_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained for a few steps (quality is not the point here)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--model", "tiny", "--out", str(out), "--steps", "4", "--batch-size", "8",
                 "--save-every", "2", "--sample-every", "4", "--num-sample-images", "4", "--log-every", "1"]) == 0
    return out


def _error(capsys, argv, *match):
    """Run argv, expect exit 2 and one line on stderr containing every string in ``match``."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for m in match:
        assert m in err, err
    return err


def _digit_png(path, channels=1, size=28):
    x = dk.load_images("mnist-5k")[7, 0].numpy()
    if size != 28:
        x = np.asarray(Image.fromarray(x).resize((size, size)))
    img = Image.fromarray(x) if channels == 1 else Image.fromarray(np.stack([x, 255 - x, x], -1))
    img.save(path)
    return path


def test_train_writes_the_run(run):
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "latest", "checkpoints", "loss.csv", "loss.png", "samples"} <= names
    assert (run / "samples" / "step-00000004.png").is_file()


def test_sample_png_npz_and_trajectory(run, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(run), "--sampler", "ddim", "--steps", "5", "--num", "6", "--batch-size", "4",
                 "--out", str(tmp_path / "s.png"), "--trajectory", str(tmp_path / "t.png")]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 28 and (tmp_path / "t.png").is_file()
    for sampler, extra in (("ddpm", ["--steps", "10", "--variance", "large"]), ("ddim", ["--eta", "large"]),
                           ("ddim", ["--eta", "0.5", "--spacing", "trailing", "--no-clip"]),
                           ("dpmpp-2m", ["--steps", "5"])):
        out = tmp_path / f"{sampler}.npz"
        assert main(["sample", "--ckpt", str(run), "--sampler", sampler, "--num", "3", "--out", str(out),
                     "--steps", "5", *extra][: None]) == 0
        with np.load(out) as z:
            assert z["images"].shape == (3, 28, 28) and z["images"].dtype == np.uint8


def test_sample_seed_reproduces_python_api(run, tmp_path):
    assert main(["sample", "--ckpt", str(run), "--steps", "4", "--eta", "0.7", "--num", "3", "--seed", "5",
                 "--out", str(tmp_path / "a.npz")]) == 0
    x = dk.load(run, device="cpu").sample(3, steps=4, eta=0.7, generator=torch.Generator().manual_seed(5))
    with np.load(tmp_path / "a.npz") as z:
        assert np.array_equal(z["images"], dk.data.to_uint8(x)[:, 0].numpy())


def test_per_sample_seeds_do_not_depend_on_batch_size(run, tmp_path):
    for bs in ("1", "3"):
        assert main(["sample", "--ckpt", str(run), "--steps", "4", "--eta", "1", "--num", "3", "--per-sample-seeds",
                     "--batch-size", bs, "--out", str(tmp_path / f"b{bs}.npz")]) == 0
    with np.load(tmp_path / "b1.npz") as a, np.load(tmp_path / "b3.npz") as b:
        assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1


def test_invert_and_reconstruct(run, tmp_path, capsys):
    img = _digit_png(tmp_path / "d.png")
    assert main(["invert", "--ckpt", str(run), "--image", str(img), "--steps", "10", "--refine", "2",
                 "--out", str(tmp_path / "z.pt"), "--reconstruct", str(tmp_path / "rec.png")]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and (tmp_path / "rec.png").is_file()
    z = read_tensor_file(tmp_path / "z.pt")
    assert z.shape == (1, 1, 28, 28)
    assert main(["invert", "--ckpt", str(run), "--image", str(img), "--steps", "10",
                 "--out", str(tmp_path / "z.safetensors")]) == 0
    assert read_tensor_file(tmp_path / "z.safetensors").shape == (1, 1, 28, 28)
    # an RGB image whose channels are equal is a gray image stored as RGB: accepted
    Image.open(img).convert("RGB").save(tmp_path / "gray_rgb.png")
    assert main(["invert", "--ckpt", str(run), "--image", str(tmp_path / "gray_rgb.png"), "--steps", "5",
                 "--out", str(tmp_path / "z2.pt")]) == 0


def test_interpolate_seeds_and_images(run, tmp_path):
    assert main(["interpolate", "--ckpt", str(run), "--seeds", "77", "2707", "--steps", "5",
                 "--out", str(tmp_path / "i.png")]) == 0
    a, b = _digit_png(tmp_path / "a.png"), _digit_png(tmp_path / "b.png", size=40)
    assert main(["interpolate", "--ckpt", str(run), "--images", str(a), str(b), "--alphas", "0,0.5,1",
                 "--steps", "5", "--out", str(tmp_path / "j.png")]) == 0
    assert (tmp_path / "i.png").is_file() and (tmp_path / "j.png").is_file()


def test_toy(tmp_path):
    assert main(["toy", "--out", str(tmp_path / "toy"), "--steps", "3", "--batch-size", "8", "--num", "4",
                 "--sample-steps", "3"]) == 0
    assert {"samples.png", "process.png", "loss.png", "model.safetensors", "config.json"} <= \
        {p.name for p in (tmp_path / "toy").iterdir()}


def test_every_command_has_help():
    from ddimkit.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0


def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ddimkit", "sample", "--ckpt", str(tmp_path / "missing"),
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such checkpoint" in r.stderr


# -- bad input ---------------------------------------------------------------------------------------

def test_bad_checkpoints(run, tmp_path, capsys):
    _error(capsys, ["sample", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")], "no such")
    empty = tmp_path / "empty"
    empty.mkdir()
    _error(capsys, ["sample", "--ckpt", str(empty), "--out", str(tmp_path / "x.png")], "not a ddimkit checkpoint")
    # truncated weights
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    ck = dk.checkpoint.resolve_checkpoint(broken)
    data = (ck / "ema.safetensors").read_bytes()
    (ck / "ema.safetensors").write_bytes(data[: len(data) // 2])
    _error(capsys, ["sample", "--ckpt", str(broken), "--out", str(tmp_path / "x.png")], "corrupt or truncated")
    (ck / "ema.safetensors").write_bytes(b"\x00" * 100)
    _error(capsys, ["sample", "--ckpt", str(broken), "--out", str(tmp_path / "x.png")], "corrupt or truncated")
    (ck / "state.json").write_text("{not json")
    _error(capsys, ["sample", "--ckpt", str(broken), "--out", str(tmp_path / "x.png")], "not valid JSON")


def test_bad_names_and_steps(run, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    _error(capsys, ["train", "--model", "huge", "--out", str(tmp_path / "r"), "--steps", "1"], "unknown model 'huge'")
    _error(capsys, ["train", "--data", "imagenet", "--out", str(tmp_path / "r2"), "--steps", "1"], "unknown dataset")
    _error(capsys, ["sample", "--ckpt", str(run), "--steps", "1001", "--out", out], "exceeds", "1000")
    _error(capsys, ["invert", "--ckpt", str(run), "--image", "x.png", "--steps", "5000", "--out",
                    str(tmp_path / "z.pt")], "exceeds")
    for argv in (["sample", "--ckpt", str(run), "--steps", "0", "--out", out],
                 ["sample", "--ckpt", str(run), "--sampler", "euler", "--out", out],
                 ["sample", "--ckpt", str(run), "--eta", "-1", "--out", out]):
        with pytest.raises(SystemExit) as e:  # argparse's own errors also exit with 2
            main(argv)
        assert e.value.code == 2
    capsys.readouterr()
    _error(capsys, ["sample", "--ckpt", str(run), "--out", str(tmp_path / "x.jpg")], "must end in .png or .npz")


def test_bad_images_and_folders(run, tmp_path, capsys):
    rgb = _digit_png(tmp_path / "rgb.png", channels=3)
    _error(capsys, ["invert", "--ckpt", str(run), "--image", str(rgb), "--out", str(tmp_path / "z.pt")],
           "3 channels", "takes 1")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    _error(capsys, ["invert", "--ckpt", str(run), "--image", str(tmp_path / "bad.png"), "--out",
                    str(tmp_path / "z.pt")], "cannot read image")
    _error(capsys, ["invert", "--ckpt", str(run), "--image", str(tmp_path / "none.png"), "--out",
                    str(tmp_path / "z.pt")], "no such image")
    (tmp_path / "empty").mkdir()
    _error(capsys, ["train", "--data", f"folder:{tmp_path / 'empty'}", "--out", str(tmp_path / "r"), "--steps", "1"],
           "no images found")
    np.savez(tmp_path / "f.npz", x=np.zeros((4, 8, 8), dtype=np.float32) + 3)
    _error(capsys, ["train", "--data", f"npz:{tmp_path / 'f.npz'}", "--out", str(tmp_path / "r3"), "--steps", "1"],
           "uint8")


def test_unwritable_output_loses_nothing(run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error(capsys, ["sample", "--ckpt", str(run), "--out", str(blocker / "sub" / "x.png")], "cannot create")
    _error(capsys, ["train", "--out", str(blocker / "run"), "--steps", "1"], "cannot create")
    # a failed command leaves an earlier result untouched
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"earlier result")
    _error(capsys, ["sample", "--ckpt", str(run), "--steps", "2000", "--out", str(keep)], "exceeds")
    assert keep.read_bytes() == b"earlier result"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    _error(capsys, ["train", "--model", "tiny", "--out", str(run), "--steps", "4"], "already holds a run")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_demo_budget_leaves_time_for_sampling():
    from ddimkit.cli.demo import sampling_work, training_minutes

    # 3 guided cells' worth more work than the unguided count, and linear in the sample counts
    assert sampling_work(8, 4) - sampling_work(4, 4) == 4 * (50 * 2 + 50 + 50 + 20 + 10)
    assert sampling_work(4, 4) - sampling_work(4, 2) == 2 * (1000 * 2 + 1000)
    assert training_minutes(3, 360, 60, 1e-4, 10_000) == 3  # plenty of time: the cap
    left = 360 - 60 - 1.15 * 1e-3 * 100_000 - 15  # a slower machine: what is left after sampling
    assert training_minutes(3, 360, 60, 1e-3, 100_000) == pytest.approx(left / 60)
    assert training_minutes(3, 360, 300, 1e-3, 100_000) == 0.5  # too late: half a minute still
    assert training_minutes(0.2, 360, 300, 1e-3, 100_000) == 0.2  # never more than the cap


def test_demo_trains_for_its_minutes_scores_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.03", "--num", "4", "--num-ddpm", "2",
                 "--budget-minutes", "6"]) == 0
    import json

    report = json.loads((out / "demo.json").read_text())
    assert report["budget_training_minutes"] == 0.03  # the cap: a 6-minute budget leaves more than that
    for key in ("ddim_50", "ddpm_1000", "ddim_50_guidance_1"):
        assert 0.0 <= report[f"{key}_recognised"] <= 1.0 and (out / f"{key}.png").is_file()
    config = json.loads((out / "config.json").read_text())  # the class-conditional, guided recipe
    assert (config["num_classes"], config["sampling"]["guidance_scale"]) == (10, 3.0)
    # the digits' recipe, pinned: TrainConfig's defaults (made on Fashion-MNIST) lose on digits at this budget
    assert (config["train"]["model"], config["train"]["min_snr_gamma"]) == ("tiny", 0.25)
    # the shipped model's part: every sampler scored, a round trip that gives the digits back, the figures
    for key in ("ddpm_1000", "ddim_50", "ddim_20", "ddim_10"):
        assert 0.0 <= report[f"pretrained_{key}_recognised"] <= 1.0
    assert report["pretrained_inversion_mse"] <= 1e-3
    for name in ("pretrained_samplers.png", "pretrained_inversion.png", "pretrained_fusion.png"):
        assert (out / name).is_file()
    assert "recognised as digits" in capsys.readouterr().out
    # Run again: the finished (or budget-stopped) run is resumed or reused, never refused.
    assert main(["demo", "--out", str(out), "--minutes", "0.01", "--num", "2", "--num-ddpm", "1"]) == 0
    capsys.readouterr()
    _error(capsys, ["train", "--out", str(tmp_path / "x"), "--steps", "auto"], "--steps auto needs --minutes")


def test_autoguidance_flags(run, tmp_path, capsys):
    """The default run keeps a guide and samples with it; --autoguidance-scale 1 samples the model alone, and a
    run trained with --autoguidance-at off refuses any other scale in one line."""
    def draw(ckpt, name, *extra):
        assert main(["sample", "--ckpt", str(ckpt), "--steps", "3", "--num", "2", "--seed", "1", "--out",
                     str(tmp_path / name), *extra]) == 0
        return np.load(tmp_path / name)["images"]

    assert dk.load(run).guide is not None
    assert not np.array_equal(draw(run, "a.npz"), draw(run, "b.npz", "--autoguidance-scale", "1"))
    off = tmp_path / "off"
    assert main(["train", "--model", "tiny", "--out", str(off), "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--autoguidance-at", "off"]) == 0
    assert dk.load(off).guide is None
    capsys.readouterr()  # the progress bars so far
    _error(capsys, ["sample", "--ckpt", str(off), "--num", "2", "--autoguidance-scale", "2", "--out",
                    str(tmp_path / "c.png")], "needs a guiding network")
    with pytest.raises(SystemExit) as e:  # argparse's own one-line usage error
        main(["train", "--out", str(tmp_path / "x"), "--autoguidance-at", "1.5"])
    assert e.value.code == 2 and "must be a fraction in (0, 1) or 'off'" in capsys.readouterr().err
    for flag in ("--autoguidance-scale", "--guidance-scale"):  # refused as `sample` refuses them, before any work
        with pytest.raises(SystemExit) as e:
            main(["train", "--out", str(tmp_path / "x"), flag, "-1"])
        assert e.value.code == 2 and ">= 0" in capsys.readouterr().err and not (tmp_path / "x").exists()
