"""diffusers pipeline folders: load, sample like DDPMPipeline/DDIMPipeline, export, convert, refuse bad input."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ddimkit as dk
from ddimkit.cli import main

diffusers = pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]

SMALL = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
             norm_num_groups=8, attention_head_dim=16)
OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _perturbed_unet(config, seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**config)
    with torch.no_grad():
        for p in unet.parameters():  # move every weight off its init value so that all of them are tested
            p.add_(0.02 * torch.randn_like(p))
    return unet.eval()


def _save_pipeline(folder, unet, **scheduler_kw):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, **scheduler_kw)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


def _to_old_names(folder: Path):
    from safetensors.torch import load_file, save_file

    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    renamed = {}
    for k, v in sd.items():
        for new, old in OLD_NAMES.items():
            if ".attentions." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
        renamed[k] = v
    assert renamed.keys() != sd.keys()
    save_file(renamed, str(path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _save_pipeline(tmp_path_factory.mktemp("dif") / "pipe", _perturbed_unet(SMALL), clip_sample=True)


def _np_images(x):
    """ddimkit's [-1, 1] samples in diffusers' output_type='np' layout and range."""
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("ddim", 0.0), ("ddim", 1.0)])
def test_samples_equal_diffusers_pipelines(folder, sampler, eta):
    p = dk.load(folder, device="cpu")
    kw = {} if eta is None else {"eta": eta}
    mine = p.sample(3, sampler=sampler, steps=8, generator=torch.Generator().manual_seed(7), **kw)
    cls = diffusers.DDPMPipeline if sampler == "ddpm" else diffusers.DDIMPipeline
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=8, output_type="np",
               **kw).images
    assert np.abs(_np_images(mine) - ref).max() <= 1e-4


def test_cli_sample_with_seed_equals_pipeline(folder, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--ckpt", str(folder), "--sampler", "ddim", "--steps", "6", "--eta", "0.5", "--num", "2",
                 "--seed", "11", "--out", str(out), "--device", "cpu"]) == 0
    pipe = diffusers.DDIMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(11), num_inference_steps=6, eta=0.5,
               output_type="np").images
    with np.load(out) as z:
        ours = z["images"].astype(int)
    assert np.abs(ours - np.round(ref * 255).astype(int)).max() <= 1


def test_scheduler_config_becomes_schedule_and_defaults(tmp_path):
    unet = _perturbed_unet(SMALL)
    f = _save_pipeline(tmp_path / "p", unet, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                       clip_sample=False, timestep_spacing="trailing", variance_type="fixed_large")
    p = dk.load(f, device="cpu")
    assert p.prediction_type == "v_prediction" and p.sampling["clip_sample"] is None
    assert p.sampling["spacing"] == "trailing" and p.sampling["variance"] == "large"
    assert torch.allclose(p.schedule.alphas_cumprod, dk.NoiseSchedule.cosine().alphas_cumprod)


@pytest.mark.parametrize("preset,config_kw", [
    ("ddpm-cifar10", {}),
    ("mnist", {}),
])
def test_google_configs_through_save_pretrained(preset, config_kw, tmp_path):
    """google/ddpm-* configs, saved by diffusers and loaded by ddimkit: same network output (old names too)."""
    from ddimkit.models import create_model, diffusers_config_from_unet

    cfg = {k: v for k, v in diffusers_config_from_unet(create_model(preset)).items() if not k.startswith("_")}
    unet = _perturbed_unet(cfg, seed=1)
    f = _save_pipeline(tmp_path / "p", unet)
    x = torch.randn(2, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
    t = torch.tensor([3, 871])
    with torch.no_grad():
        ref = unet(x, t).sample
        for old in (False, True):
            if old:
                _to_old_names(f)
            out = dk.load(f, device="cpu").model(x, t)
            assert (out - ref).abs().max() <= 1e-5


@pytest.mark.slow
def test_ddpm_256_config_through_save_pretrained(tmp_path):
    from ddimkit.models import create_model, diffusers_config_from_unet

    cfg = {k: v for k, v in diffusers_config_from_unet(create_model("ddpm-256")).items() if not k.startswith("_")}
    unet = _perturbed_unet(cfg, seed=2)
    assert sum(p.numel() for p in unet.parameters()) == 113_673_219
    f = _save_pipeline(tmp_path / "p", unet)
    _to_old_names(f)
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([500])
    with torch.no_grad():
        assert (dk.load(f, device="cpu").model(x, t) - unet(x, t).sample).abs().max() <= 1e-5


def test_bin_weights_are_read_weights_only(folder, tmp_path):
    f = tmp_path / "bin"
    shutil.copytree(folder, f)
    st = f / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(st)), f / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(dk.load(f, device="cpu").model(x, t), dk.load(folder, device="cpu").model(x, t))

    class Payload:  # a pickle that would run code when unpickled without weights_only
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(f / "unet" / "diffusion_pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": Payload()}, fh)
    with pytest.raises(ValueError, match="not a weights-only file"):
        dk.load(f, device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_export_then_diffusers_pipelines_sample_the_same(tmp_path):
    from ddimkit.pipeline import Pipeline

    torch.manual_seed(0)
    net = dk.create_model("tiny", in_channels=1, sample_size=28)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pipe = Pipeline(net, dk.NoiseSchedule.linear(), "epsilon", sampling={"clip_sample": 1.0})
    assert main(["convert", "--ckpt", "unused", "--out", str(tmp_path / "x")]) == 2  # (no such folder)
    from ddimkit.diffusers_io import export_diffusers

    out = export_diffusers(pipe, tmp_path / "exported")
    for cls, kw in ((diffusers.DDPMPipeline, {}), (diffusers.DDIMPipeline, {"eta": 0.3})):
        ref_pipe = cls.from_pretrained(out)
        ref_pipe.set_progress_bar_config(disable=True)
        ref = ref_pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=5,
                       output_type="np", **kw).images
        mine = pipe.sample(2, sampler="ddpm" if cls is diffusers.DDPMPipeline else "ddim", steps=5,
                           generator=torch.Generator().manual_seed(3), **kw)
        assert np.abs(_np_images(mine) - ref).max() <= 1e-4
    # the exported folder reads back into ddimkit too, and converts to a native checkpoint
    back = dk.load(out, device="cpu")
    assert back.sampling["clip_sample"] == 1.0 and torch.equal(back.schedule.betas, pipe.schedule.betas)
    assert main(["convert", "--ckpt", str(out), "--out", str(tmp_path / "native")]) == 0
    native = dk.load(tmp_path / "native", device="cpu")
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 999])
    with torch.no_grad():
        assert torch.equal(native.model(x, t), net(x, t))
    assert native.sampling == back.sampling


def test_export_cli_from_a_training_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "2", "--batch-size", "4", "--sample-every", "0",
                 "--num-sample-images", "0"]) == 0
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "exp")]) == 0
    loaded = diffusers.DDPMPipeline.from_pretrained(tmp_path / "exp")
    assert loaded.unet.config.in_channels == 1 and loaded.unet.config.sample_size == 28


def test_hub_id_uses_the_local_cache_offline(folder, tmp_path):
    """A hub id found in the Hugging Face cache loads with no network at all."""
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-ddpm" / "snapshots" / "0123456789abcdef"
    shutil.copytree(folder, snap)
    (cache / "models--someone--tiny-ddpm" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny-ddpm" / "refs" / "main").write_text("0123456789abcdef")
    code = ("import ddimkit as dk, torch; p = dk.load('someone/tiny-ddpm', device='cpu'); "
            "print(tuple(p.sample(1, steps=2, generator=torch.Generator().manual_seed(0)).shape))")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(1, 3, 16, 16)" in r.stdout


def test_hub_id_offline_and_uncached_is_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "ddimkit", "sample", "--ckpt", "google/ddpm-cifar10-32", "--out",
                        str(tmp_path / "x.png")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "huggingface-cli download google/ddpm-cifar10-32" in r.stderr


def _error(capsys, ckpt, *match):
    code = main(["sample", "--ckpt", str(ckpt), "--out", "/tmp/never-written.png", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for m in match:
        assert m in err, err


def test_bad_folders(folder, tmp_path, capsys):
    def copy(name):
        d = tmp_path / name
        shutil.copytree(folder, d)
        return d

    d = copy("no_unet_config")
    (d / "unet" / "config.json").unlink()
    _error(capsys, d, "missing file", "config.json")
    d = copy("no_weights")
    (d / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    _error(capsys, d, "missing weights")
    d = copy("truncated")
    w = d / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    _error(capsys, d, "corrupt or truncated")
    d = copy("class_cond")
    cfg = json.loads((d / "unet" / "config.json").read_text())
    (d / "unet" / "config.json").write_text(json.dumps({**cfg, "num_class_embeds": 10}))
    _error(capsys, d, "weights do not fit", "class_embedding")  # a class table the weights lack
    cfg["class_embed_type"] = "timestep"
    (d / "unet" / "config.json").write_text(json.dumps({**cfg, "num_class_embeds": 10}))
    _error(capsys, d, "class_embed_type")
    d = copy("learned_var")
    cfg = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "variance_type": "learned_range"}))
    _error(capsys, d, "variance_type", "learned_range")
    d = copy("latent")
    idx = json.loads((d / "model_index.json").read_text())
    (d / "model_index.json").write_text(json.dumps({**idx, "_class_name": "LDMPipeline", "vqvae": ["x", "y"]}))
    _error(capsys, d, "LDMPipeline", "vqvae")
    d = copy("block")
    cfg = json.loads((d / "unet" / "config.json").read_text())
    (d / "unet" / "config.json").write_text(json.dumps({**cfg, "down_block_types": ["DownBlock2D",
                                                                                    "CrossAttnDownBlock2D"]}))
    _error(capsys, d, "CrossAttnDownBlock2D")
