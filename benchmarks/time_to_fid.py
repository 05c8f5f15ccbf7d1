"""Time to quality: train ddimkit for a fixed wall-clock budget, then FID of DDIM-50 samples.

    python benchmarks/time_to_fid.py --data npz:data/fashion_mnist.npz:x_train \\
        --ref npz:data/fashion_mnist.npz:x_test --minutes 7.5 --num 10000     # the GPU measurement
    python benchmarks/time_to_fid.py --quick                                   # a CPU check of the script

Training stops at the first checkpoint after the budget (the recipe's step count is an upper bound, and
the learning-rate schedule is laid out over it), then ``--num`` samples are drawn with DDIM-50 and compared
with ``--ref`` (28×28 references: samples of a model padded to 32×32 are centre-cropped back). Also reports
FID of the training set against the reference — the floor. Writes JSON and markdown.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ddimkit as dk
from ddimkit import evaluate, metrics

# The recipe: the DDPM CIFAR-10 UNet with one channel, bf16, AdamW with warm-up and cosine decay, EMA.
RECIPE = dict(model="ddpm-cifar10", batch_size=128, lr=2e-4, warmup=500, lr_schedule="cosine", ema_decay=0.9995,
              grad_clip=1.0, image_size=32, steps=20000, save_every=1000, sample_every=0, num_sample_images=0,
              log_every=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--ref", default="mnist-5k")
    ap.add_argument("--minutes", type=float, default=7.5)
    ap.add_argument("--num", type=int, default=10000, help="samples (and reference images) for FID")
    ap.add_argument("--out", default="runs/time-to-fid")
    ap.add_argument("--quick", action="store_true", help="a CPU-sized check: tiny model, seconds, 16 images")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe fields")
    args = ap.parse_args()
    recipe = dict(RECIPE)
    if args.quick:
        recipe.update(model="tiny", batch_size=16, steps=40, save_every=10, warmup=5, image_size=None, log_every=5)
        args.minutes, args.num = min(args.minutes, 0.2), min(args.num, 16)
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            recipe[k] = json.loads(v)  # numbers, true/false, null
        except json.JSONDecodeError:
            recipe[k] = v
    out = Path(args.out)

    # Train in chunks of save_every steps until the budget is spent: each chunk resumes the same run.
    cfg = dk.TrainConfig(data=args.data, out=str(out / "run"), **recipe)
    t0, step = time.perf_counter(), 0
    resume = (out / "run" / "latest").is_file()
    while step < cfg.steps and time.perf_counter() - t0 < args.minutes * 60:
        result = dk.train(cfg, resume=resume, stop_after=min(cfg.steps, step + cfg.save_every), progress=False)
        step, resume = result.step, True
    train_seconds = time.perf_counter() - t0
    images_trained = step * cfg.batch_size

    pipe = dk.load(out / "run", precision="bf16" if torch.cuda.is_available() else "fp32",
                   compile=torch.cuda.is_available())
    ref = evaluate.read_image_set(args.ref, args.num)
    inception = metrics.load_inception(metrics.inception_path(download=True), device=pipe.device)
    rows = evaluate.fid_table(pipe, ref, out / "fid", [50], etas=[0.0], num=args.num, inception=inception,
                              device=pipe.device, batch_size=256)
    train_set = evaluate.read_image_set(args.data, args.num)
    floor = metrics.fid_from_stats(evaluate.image_set_stats(train_set, inception, device=pipe.device),
                                   evaluate.image_set_stats(ref, inception, device=pipe.device))
    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU", "recipe": recipe,
           "train_seconds": train_seconds, "steps": step, "images_trained": images_trained,
           "train_images_per_second": images_trained / train_seconds, "fid_ddim50": float(rows[0]["fid"]),
           "sample_images_per_second": float(rows[0]["images_per_second"]), "fid_train_vs_ref": floor,
           "num": args.num}
    (out / "time_to_fid.json").write_text(json.dumps(res, indent=2) + "\n")
    md = (f"| device | training time | steps | train img/s | FID (DDIM-50, {args.num}) | floor (train vs ref) |\n"
          "|---|---|---|---|---|---|\n"
          f"| {res['device']} | {train_seconds / 60:.1f} min | {step} | {res['train_images_per_second']:.0f} | "
          f"{res['fid_ddim50']:.2f} | {floor:.2f} |\n")
    (out / "time_to_fid.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
