"""Recipe study: train variants for the same CPU time, then score samples and per-timestep denoising error.

    python benchmarks/recipe_study.py --data mnist-5k --heldout npz:../shared/data/mnist_10k.npz:x \\
        --classifier mnist --seconds 180 --variant base --variant v-minsnr:prediction=v,min_snr_gamma=5

Each variant is ``NAME[:key=value,...]`` over :data:`STUDY_BASE` (the digits' recipe that the study's tables
in docs/training.md measure from; every other option at :class:`ddimkit.TrainConfig`'s default) and the
study's ``--set`` options; ``arch=NAME`` picks a study architecture from :data:`ARCHS`. Training is capped by
wall-clock seconds (``--seconds``; all variants share it) through ``TrainConfig.minutes``. Then 256 samples
with DDIM-50 η = 0 (and η = 1) from seed 0 are scored by the shipped classifier (recognition rate at
confidence ≥ 0.9, classes seen, classifier-FD against held-out images), and the EMA network's held-out ε-MSE
and x̂0-MSE are measured at fixed timesteps. One JSON line per variant goes to ``--out``/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import ddimkit as dk
from ddimkit import classifier as C
from ddimkit.data import load_images, to_model_range, to_uint8
from ddimkit.diffusion import levels, to_x0_eps
from ddimkit.models import presets
from ddimkit.models.unet import UNet
from ddimkit.train_config import DEFAULT_LR

TIMESTEPS = (5, 25, 50, 100, 200, 300, 500, 700, 900, 990)
#: The recipe every variant starts from: the digits' recipe (`tiny`, min-SNR-0.25, the preset's lr 4e-3),
#: pinned so that the study's commands measure what they measured when TrainConfig's defaults were these.
STUDY_BASE = dict(model="tiny", min_snr_gamma=0.25, autoguidance_at=None)


class PatchUNet(nn.Module):
    """The UNet on 2×2 pixel patches: pixel_unshuffle in, pixel_shuffle out (a 28×28×1 image is 14×14×4).

    A study architecture only: it moves the full-resolution level's cost to 14×14, where wider convolutions
    use a CPU better than 8-channel ones, and it has no diffusers counterpart.
    """

    def __init__(self, patch_size: int = 2, in_channels: int = 1, out_channels: int = 1, sample_size: int = 28,
                 **unet_kwargs):
        super().__init__()
        p = self.patch_size = patch_size
        self.unet = UNet(in_channels=in_channels * p * p, out_channels=out_channels * p * p,
                         sample_size=sample_size // p, **unet_kwargs)
        self.config = dict(patch_size=p, in_channels=in_channels, out_channels=out_channels,
                           sample_size=sample_size, **unet_kwargs)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        p = self.patch_size
        return F.pixel_shuffle(self.unet(F.pixel_unshuffle(x, p), t), p)


class SelfCondUNet(nn.Module):
    """Self-conditioning (Chen et al. 2022, "Analog Bits", §3.2): the UNet also sees its own previous output.

    Under x0-prediction (the default recipe) that output is x̂0. Training: for half of the batches the
    network first predicts with an empty (zero) condition, without gradient, and is then trained with that
    prediction as its condition; the other half train with the empty condition. Sampling (eval mode): each
    call is conditioned on the previous call's output; a call at a timestep not below the last one, or with
    another shape, starts a new trajectory with the empty condition. A study architecture only: the state
    assumes one trajectory at a time, as the study's sampling and scoring do.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, **unet_kwargs):
        super().__init__()
        self.unet = UNet(in_channels=in_channels + out_channels, out_channels=out_channels, **unet_kwargs)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, **unet_kwargs)
        self._prev = self._prev_t = None

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t_now = float(torch.as_tensor(t).reshape(-1)[0])
        empty = x.new_zeros((x.shape[0], self.config["out_channels"], *x.shape[2:]))
        if self.training:
            cond = empty
            if torch.rand(()) < 0.5:
                with torch.no_grad():
                    cond = self.unet(torch.cat([x, empty], 1), t).clamp(-1, 1)
            return self.unet(torch.cat([x, cond], 1), t)
        fresh = self._prev is None or self._prev.shape != empty.shape or t_now >= self._prev_t
        out = self.unet(torch.cat([x, empty if fresh else self._prev.to(x.dtype)], 1), t)
        self._prev, self._prev_t = out.detach().float().clamp(-1, 1), t_now
        return out


class SkipUNet(nn.Module):
    """An x0 network with EDM's skip (Karras et al. 2022, §5 and Table 1), for the linear schedule it trains on.

    x̂0 = c_skip x_t/√ᾱ + c_out F(x_t, t) with σ = √(1-ᾱ)/√ᾱ, c_skip = σ_d²/(σ² + σ_d²) and
    c_out = √(1 - c_skip): above σ_d it is the plain x0 network (c_skip → 0, c_out → 1); below it the
    output is the input plus a correction scaled by σ, which F must learn for the noise to be removed.
    A study architecture only (the prediction type stays ``sample``).
    """

    def __init__(self, sigma_data: float = 0.1, **unet_kwargs):
        super().__init__()
        self.unet = UNet(**unet_kwargs)
        self.config = dict(sigma_data=sigma_data, **unet_kwargs)
        # computed on the CPU: the loader may build the network under torch.device("meta")
        with torch.device("cpu"):
            ab = dk.NoiseSchedule.linear().alphas_cumprod.to(torch.float64).numpy()
        skip = sigma_data ** 2 / ((1 - ab) / ab + sigma_data ** 2)
        self.register_buffer("c_in", torch.as_tensor(skip / np.sqrt(ab), dtype=torch.float32))
        self.register_buffer("c_out", torch.as_tensor(np.sqrt(1 - skip), dtype=torch.float32))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.c_in[t].view(shape).to(x.dtype) * x + self.c_out[t].view(shape).to(x.dtype) * self.unet(x, t)


_TWO_LEVELS = dict(down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)

# Architectures tried: (class, kwargs over the tiny preset's). The patch models have two levels, 14 and 7.
ARCHS = {
    "w16": (UNet, dict(block_out_channels=(16, 32, 64), norm_num_groups=8)),
    "w16-32-32": (UNet, dict(block_out_channels=(16, 32, 32), norm_num_groups=8)),
    "w8-24-48": (UNet, dict(block_out_channels=(8, 24, 48), attention_head_dim=48)),
    "w8-32-64": (UNet, dict(block_out_channels=(8, 32, 64), attention_head_dim=64)),
    "w8-32-64-h32": (UNet, dict(block_out_channels=(8, 32, 64), attention_head_dim=32)),
    "l2": (UNet, dict(layers_per_block=2)),
    "p2-24-48": (PatchUNet, dict(_TWO_LEVELS, block_out_channels=(24, 48), attention_head_dim=24)),
    "p2-32-64": (PatchUNet, dict(_TWO_LEVELS, block_out_channels=(32, 64))),
    "p2-32-64-l2": (PatchUNet, dict(_TWO_LEVELS, block_out_channels=(32, 64), layers_per_block=2)),
    "p2-48-96": (PatchUNet, dict(_TWO_LEVELS, block_out_channels=(48, 96))),
    "w16-32-128": (UNet, dict(block_out_channels=(16, 32, 128), norm_num_groups=8)),  # small, wider at 7×7
    "ss": (UNet, dict(resnet_time_scale_shift="scale_shift")),  # the timestep as a GroupNorm scale and shift
    "sc": (SelfCondUNet, {}),  # tiny's UNet with self-conditioning (one more input channel)
    "skip0.1": (SkipUNet, dict(sigma_data=0.1)),  # tiny's UNet with EDM's skip below σ = 0.1
}


def register_classes():
    """Make the study's network classes known to the loader, so that its runs load in other scripts too."""
    for cls in {c for c, _ in ARCHS.values()} - {UNet}:
        presets.MODEL_CLASSES[cls.__name__] = cls


def register_arch(arch: str, base: str = "tiny") -> str:
    """Make study architecture ``arch`` (its options over preset ``base``'s) a preset, with ``base``'s learning
    rate; returns the preset's name."""
    _, ch, size, kw = presets._PRESETS[base]
    cls, arch_kw = ARCHS[arch]
    name = "study-" + arch if base == "tiny" else f"study-{base}-{arch}"
    presets._PRESETS[name] = (cls, ch, size, {**kw, **arch_kw})
    presets.MODEL_CLASSES[cls.__name__] = cls  # so that the run's checkpoints load again (--rescore)
    DEFAULT_LR[name] = DEFAULT_LR[base]  # not the 2e-4 that unknown presets get
    return name


def _parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    kw = {}
    for kv in filter(None, rest.split(",")):
        k, v = kv.split("=", 1)
        try:
            kw[k] = json.loads(v)
        except json.JSONDecodeError:
            kw[k] = v
    return name, kw


def variant_config(spec: str, common: dict, data: str, out: Path, seconds: float) -> tuple[str, dict, dk.TrainConfig]:
    """A variant's name, its options (over :data:`STUDY_BASE`, then ``common``) and its run's config."""
    name, kw = _parse(spec)
    kw = {**STUDY_BASE, **common, **kw}
    if "arch" in kw:
        kw["model"] = register_arch(kw.pop("arch"))
    cfg = dk.TrainConfig(**{**dict(data=data, out=str(out / name), steps=100000, save_every=200, sample_every=0,
                                   num_sample_images=0, minutes=seconds / 60 if seconds else None), **kw})
    return name, kw, cfg


@torch.no_grad()
def denoising_error(pipe, x0: torch.Tensor, seed: int = 1) -> dict:
    """Held-out ε-MSE and x̂0-MSE of the pipeline's network at :data:`TIMESTEPS` (same noise for every model)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    out = {}
    for t in TIMESTEPS:
        tt = torch.full((len(x0),), t, dtype=torch.long)
        a, s = levels(pipe.schedule, tt, x0)
        xt = a * x0 + s * noise
        pred = pipe.model(xt, tt)
        pred = getattr(pred, "sample", pred)
        x0_hat, eps_hat = to_x0_eps(pred, xt, a, s, pipe.prediction_type)
        out[t] = (float((eps_hat - noise).pow(2).mean()), float((x0_hat.clamp(-1, 1) - x0).pow(2).mean()))
    return out


def score(pipe, net, heldout_u8: np.ndarray, num: int = 256) -> dict:
    res = {}
    for eta in (0.0, 1.0):
        t0 = time.perf_counter()
        x = pipe.sample(num, "ddim", steps=50, eta=eta, generator=torch.Generator().manual_seed(0))
        u8 = to_uint8(x)[:, 0].numpy()
        r = C.recognition(net, u8)
        res[f"eta{eta:g}"] = dict(recognised=r.rate, classes=r.classes_seen, counts=r.class_counts,
                                  cfd=C.classifier_fd(net, u8, heldout_u8[:2000]),
                                  sample_s=time.perf_counter() - t0)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--heldout", required=True, help="image set spec of held-out images (uint8 28×28)")
    ap.add_argument("--classifier", default="mnist")
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--variant", action="append")
    ap.add_argument("--rescore", action="store_true", help="score the finished runs in --out again")
    ap.add_argument("--set", default="", help="key=value,... applied to every variant")
    ap.add_argument("--out", default="runs/recipe-study")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held = load_images(args.heldout)
    held_u8 = held[:, 0].numpy()
    x_held = to_model_range(held[:512])
    net = C.load_classifier(args.classifier)
    common = _parse("x:" + args.set)[1]
    if args.rescore:
        for f in sorted(out.glob("*/study.json")):
            rec = json.loads(f.read_text())
            rec.update(score(dk.load(f.parent), net, held_u8))
            f.write_text(json.dumps(rec, indent=1))
            _report(rec)
        return
    for spec in args.variant or []:
        name, kw, cfg = variant_config(spec, common, args.data, out, args.seconds)
        run = out / name
        if (run / "study.json").is_file():
            print(f"{name}: done already")
            continue
        t0 = time.perf_counter()
        result = dk.train(cfg, resume=(run / "latest").is_file(), progress=False)
        train_s = time.perf_counter() - t0
        pipe = result.pipeline
        if x_held.shape[-1] != pipe.image_shape[-1]:
            from ddimkit.data import fit_images
            xh = to_model_range(fit_images(held[:512], pipe.image_shape[-1]))
        else:
            xh = x_held
        rec = dict(name=name, options=kw, steps=result.step, train_s=round(train_s, 1),
                   img_per_s=round(result.images_per_second, 1),
                   params=sum(p.numel() for p in pipe.model.parameters()),
                   final_loss=result.losses[-1][1] if result.losses else None,
                   **score(pipe, net, held_u8), error=denoising_error(pipe, xh))
        (run / "study.json").write_text(json.dumps(rec, indent=1))
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        _report(rec)


def _report(rec: dict):
    e0, e1 = rec["eta0"], rec["eta1"]
    print(f"{rec['name']}: {rec['steps']} steps {rec['img_per_s']} img/s | eta0 rec {e0['recognised']:.3f} "
          f"cls {e0['classes']} cfd {e0['cfd']:.1f} | eta1 rec {e1['recognised']:.3f} cfd {e1['cfd']:.1f}",
          flush=True)


if __name__ == "__main__":
    main()
