"""``ddimkit demo``: the main job, offline on a CPU.

Two parts:
1. a short from-scratch training run: the digits' recipe, class-conditional, on the bundled digits and their
   labels for at most 3 minutes (less under a time budget), sampled with DDIM-50 and DDPM-1000 under
   classifier-free guidance (and DDIM-50 without it) and scored by the shipped digit classifier;
2. the shipped MNIST model (``pretrained:mnist``): DDPM-1000 against DDIM at 10, 20 and 50 steps from the
   same starting noise, a DDIM inversion round trip of real digits, and a fusion of two of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .common import positive_float, positive_int, writable_dir

# The from-scratch part trains for at most `minutes`; under a budget (`make demo` gives one, so that it ends
# within 6 minutes, environment included, on 2 CPU cores of either kind) for what the budget leaves: a slower
# machine trains fewer steps rather than taking longer. Class-conditional with guidance scale 3: the measured
# way to recognisable digits in 3 CPU-minutes (docs/guidance.md). The network and loss weight are pinned to
# the digits' recipe (`tiny`, min-SNR-0.25), which beats the defaults (made for 10 minutes on Fashion-MNIST's
# textures) at this budget on digits (docs/training.md).
DEMO = dict(data="mnist-5k", model="tiny", min_snr_gamma=0.25, minutes=3.0, steps="auto", save_every=250,
            sample_every=0, log_every=10, num_sample_images=0, seed=0, class_conditional=True, guidance_scale=3.0,
            autoguidance_at=None)
# (sampler, steps, guidance scale or None for the model's): the demo's cells, guided DDIM-50 first.
SCRATCH_CELLS = (("ddim", 50, None), ("ddpm", 1000, None), ("ddim", 50, 1.0))
# With a budget for the whole demo, the sampling after training is estimated from a timed forward pass: its
# count of image-forwards times the seconds of one, times a margin, plus fixed costs (loading, scoring,
# figures). Training gets what is left, at most --minutes and at least half a minute.
_MARGIN, _FIXED_S, _MIN_MINUTES = 1.15, 15.0, 0.5
# The shipped model's part: DDPM-1000 first, then DDIM with fewer and fewer steps, all from the same noise.
PRETRAINED_CELLS = (("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("ddim", 10))


def register(sub):
    p = sub.add_parser("demo", help="the main job on the bundled data: train, sample DDIM and DDPM, score; then "
                                    "the shipped MNIST model: samplers, inversion, fusion",
                       description="Train the digits' recipe, class-conditional, on the bundled 5,000 MNIST digits "
                                   "for at most 3 minutes (CPU, offline), sample with DDIM (50 steps, η=0) and DDPM "
                                   "(1000 steps) under classifier-free guidance, and report how many samples the "
                                   "shipped digit classifier recognises. Then show the shipped MNIST "
                                   "model: DDPM-1000 against DDIM at 50/20/10 steps from the same noise, an inversion "
                                   "round trip and a fusion of two real digits.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=positive_float, default=DEMO["minutes"],
                   help="training time in minutes (default: %(default)s)")
    p.add_argument("--num", type=positive_int, default=256, help="DDIM samples per cell (default: %(default)s)")
    p.add_argument("--num-ddpm", type=positive_int, default=16, help="DDPM-1000 samples (default: %(default)s)")
    p.add_argument("--budget-minutes", type=positive_float, default=None,
                   help="end the whole demo within this many minutes of --started-at: train for less than "
                        "--minutes where this machine's sampling would not fit otherwise (default: no budget)")
    p.add_argument("--started-at", type=float, default=None,
                   help="the budget's start, in seconds since the epoch (default: now); `make demo` passes the "
                        "time it started, before building .venv")
    p.set_defaults(func=cmd_demo)


def sampling_work(num: int, num_ddpm: int) -> int:
    """Image-forward passes the demo runs after training: its own cells, the shipped model's, the inversion."""
    work = 0
    for sampler, steps, scale in SCRATCH_CELLS:
        calls = 1 if (DEMO["guidance_scale"] if scale is None else scale) == 1 else 2  # guidance: two a step
        work += (num_ddpm if sampler == "ddpm" else num) * steps * calls
    work += sum((num_ddpm if sampler == "ddpm" else num) * steps for sampler, steps in PRETRAINED_CELLS)
    return work + 8 * 50 * (1 + 3) + 8 * 50 + 9 * 50  # invert with 3 refinements, reconstruct, fuse


def training_minutes(cap_minutes: float, budget_s: float, elapsed_s: float, forward_s: float, work: int) -> float:
    """Minutes of training that end the demo within ``budget_s``, ``elapsed_s`` already gone and ``work``
    image-forwards of ``forward_s`` each still to come; at most ``cap_minutes``, and at least half a minute
    (or the cap, if smaller), so that a slow machine still trains something worth sampling."""
    left = budget_s - elapsed_s - _MARGIN * forward_s * work - _FIXED_S
    return min(cap_minutes, max(_MIN_MINUTES, left / 60))


def forward_seconds() -> float:
    """Seconds of one image through the demo's network, no gradient, at batch 64, on this machine."""
    from ..models import create_model

    torch.manual_seed(0)
    net = create_model(DEMO["model"], num_class_embeds=11).eval()
    x, t, y = torch.randn(64, 1, 28, 28), torch.full((64,), 500), torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        net(x, t, y)  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            net(x, t, y)
    return (time.perf_counter() - t0) / (3 * 64)


def _demo_train(cfg, out: Path):
    """Train, or resume an interrupted demo run, or reuse a finished one (None)."""
    from ..train import train

    latest = out / "latest"
    if not latest.is_file():
        return train(cfg)
    stored = json.loads((out / "config.json").read_text())["train"]["steps"]
    done = int(latest.read_text().strip().split("-")[1])
    # train() itself refuses to resume a run with other options (its resumability check).
    return train(cfg, resume=True) if not isinstance(stored, int) or done < stored else None


def _score(report: dict, key: str, x: torch.Tensor, digits, seconds: float) -> str:
    from ..classifier import recognition
    from ..data import to_uint8

    r = recognition(digits, to_uint8(x))
    report.update({f"{key}_seconds": round(seconds, 1), f"{key}_recognised": round(r.rate, 3),
                   f"{key}_classes": r.classes_seen})
    return f"{r.rate:.0%} of {len(x)} recognised as digits (confidence >= 0.9), {r.classes_seen} of 10 classes"


def _from_scratch(args, out: Path, report: dict, digits):
    from ..loading import load
    from ..train import TrainConfig
    from ..viz import save_grid

    minutes = args.minutes
    if args.budget_minutes is not None:
        forward_s, work = forward_seconds(), sampling_work(args.num, args.num_ddpm)
        minutes = training_minutes(args.minutes, 60 * args.budget_minutes, time.time() - args.started_at,
                                   forward_s, work)
        report.update(budget_minutes=args.budget_minutes, budget_training_minutes=round(minutes, 2))
        print(f"training for {minutes:.2f} min, so that the demo ends within {args.budget_minutes:g} min: "
              f"{time.time() - args.started_at:.0f} s gone, sampling estimated at {forward_s * work:.0f} s")
    cfg = TrainConfig(**{**DEMO, "minutes": minutes, "out": str(out)})
    t0 = time.perf_counter()
    result = _demo_train(cfg, out)
    report["train_seconds"] = round(time.perf_counter() - t0, 1)
    # train() already returns the EMA pipeline it saved; a reused finished run is read from disk.
    pipe = result.pipeline.to("cpu") if result is not None else load(out, device="cpu")
    if result is not None:
        report["train_steps"] = result.step
        report["train_images_per_second"] = round(result.images_per_second, 1)
    for sampler, steps, scale in SCRATCH_CELLS:
        num = args.num_ddpm if sampler == "ddpm" else args.num
        t1 = time.perf_counter()
        x = pipe.sample(num, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0),
                        progress=True, guidance_scale=scale)
        name = f"{sampler}_{steps}" + ("" if scale is None else f"_guidance_{scale:g}")
        said = _score(report, name, x, digits, time.perf_counter() - t1)
        # labels cycle 0-9 over the images: ten columns show one class each
        print(f"wrote {save_grid(x[:60], out / f'{name}.png', nrow=10, scale=2)}: {said} "
              f"(guidance scale {pipe.sampling['guidance_scale'] if scale is None else scale:g})")


def _pretrained_samplers(pipe, args, out: Path, report: dict, digits):
    """DDPM-1000 and DDIM-50/20/10 from the same starting noise: one row of the figure per sampler."""
    from ..noise import randn
    from ..viz import save_grid

    noise = randn((max(args.num, args.num_ddpm), *pipe.image_shape), torch.Generator().manual_seed(0))
    rows, k = [], min(8, args.num, args.num_ddpm)
    for sampler, steps in PRETRAINED_CELLS:
        n = args.num_ddpm if sampler == "ddpm" else args.num
        t0 = time.perf_counter()
        x = pipe.sample(x_T=noise[:n], sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1),
                        progress=True)
        said = _score(report, f"pretrained_{sampler}_{steps}", x, digits, time.perf_counter() - t0)
        print(f"pretrained:mnist, {sampler.upper()}-{steps}: {said}")
        rows.append(x[:k])
    path = save_grid(torch.cat(rows), out / "pretrained_samplers.png", nrow=k, scale=2)
    print(f"wrote {path}: rows DDPM-1000, DDIM-50, DDIM-20, DDIM-10, the same starting noise in each column")


def _pretrained_inversion(pipe, out: Path, report: dict):
    """Invert real digits 0-7 (50 steps, 3 fixed-point iterations), decode them again, and fuse two of them."""
    from importlib import resources

    import numpy as np

    from ..data import to_model_range
    from ..metrics import mean_reconstruction_mse
    from ..viz import save_grid

    with resources.as_file(resources.files("ddimkit") / "assets" / "mnist_5k.npz") as p, np.load(p) as d:
        x, y = d["x"], d["y"]  # the first digit of each class 0-7
        x0 = to_model_range(torch.from_numpy(np.stack([x[np.flatnonzero(y == c)[0]] for c in range(8)]))[:, None])
    t0 = time.perf_counter()
    z = pipe.invert(x0, steps=50, refine=3)
    rec = pipe.reconstruct(z, 50)
    report["pretrained_inversion_mse"] = float(f"{mean_reconstruction_mse(x0, rec):.3g}")
    report["pretrained_inversion_seconds"] = round(time.perf_counter() - t0, 1)
    shown = z / z.abs().amax(dim=(1, 2, 3), keepdim=True)  # noise of spread ~1 squeezed into [-1, 1]
    path = save_grid(torch.cat([x0, shown, rec]), out / "pretrained_inversion.png", nrow=8, scale=2)
    print(f"wrote {path}: real digits, their DDIM-inverted noise, the reconstruction "
          f"(per-pixel MSE {report['pretrained_inversion_mse']:.2g} on the [0, 1] scale)")
    alphas = [i / 8 for i in range(9)]
    a, b = 3, 7  # a 3 and a 7: strokes far apart, so the path between them is worth seeing
    fused = pipe.interpolate(z[a:a + 1], z[b:b + 1], alphas, steps=50, inverted=True)
    path = save_grid(torch.cat([x0[a:a + 1], fused, x0[b:b + 1]]), out / "pretrained_fusion.png", nrow=11, scale=2)
    print(f"wrote {path}: two real digits (ends) and the decoded slerp of their inverted noises, α = 0 … 1")


def cmd_demo(args):
    from ..checkpoint import write_json
    from ..classifier import load_classifier
    from ..loading import load

    out = writable_dir(args.out)
    if args.started_at is None:
        args.started_at = time.time()
    digits = load_classifier("mnist")
    report: dict = {}
    _from_scratch(args, out, report, digits)
    pipe = load("pretrained:mnist", device="cpu")
    _pretrained_samplers(pipe, args, out, report, digits)
    _pretrained_inversion(pipe, out, report)
    write_json(out / "demo.json", report)
    print("demo done: " + ", ".join(f"{k} {v}" for k, v in report.items()))
