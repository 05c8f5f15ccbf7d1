"""Held-out denoising error per timestep of trained runs: where in t each network's error is.

    python benchmarks/denoising_error.py --heldout npz:../shared/data/fashion_mnist.npz:x_test \\
        --ckpt runs/ttq-fashion-small-g5/ddimkit --ckpt runs/ttq-fashion-2/ddimkit --out runs/denoising-error

For each checkpoint (its EMA weights), the first ``--num`` held-out images are noised to x_t at the study's
timesteps with the same noise for every model (:func:`recipe_study.denoising_error`), and the network's x̂0
(clipped to [-1, 1]) and ε̂ are compared with the truth. Writes ``errors.json`` and ``errors.md`` (x̂0-MSE;
predicting the per-pixel mean image everywhere scores the data's variance, printed as the last row).
``--gaussian REAL`` adds a row for the Gaussian fit of the images REAL (:class:`kid_probe.GaussianDenoiser`:
the posterior mean for data of their mean and covariance), an analytic estimate to hold the networks against.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import torch

import ddimkit as dk
from ddimkit.data import load_images, to_model_range
from kid_probe import GaussianDenoiser
from recipe_study import TIMESTEPS, denoising_error, register_classes


def markdown(errors: dict, mean_image_mse: float) -> str:
    rows = ["| run | " + " | ".join(f"t={t}" for t in TIMESTEPS) + " |", "|---" * (len(TIMESTEPS) + 1) + "|"]
    for name, err in errors.items():
        rows.append(f"| {name} | " + " | ".join(f"{err[t][1]:.4f}" for t in TIMESTEPS) + " |")
    rows.append("| (the mean image) | " + " | ".join(f"{mean_image_mse:.4f}" for _ in TIMESTEPS) + " |")
    return "\n".join(rows) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", required=True, help="image set spec of held-out images")
    ap.add_argument("--ckpt", action="append", required=True, help="a run folder or checkpoint (repeatable)")
    ap.add_argument("--gaussian", default=None, metavar="REAL", help="a row for the Gaussian fit of these images")
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--out", default="runs/denoising-error")
    args = ap.parse_args()
    register_classes()  # the study's networks load like any checkpoint
    x0 = to_model_range(load_images(args.heldout)[:args.num])
    mean_image_mse = float(x0.var(0, unbiased=False).mean())
    errors = {}
    for ckpt in args.ckpt:
        pipe = dk.load(ckpt)
        pipe.model.eval()
        errors[ckpt] = denoising_error(pipe, x0)
        print(ckpt, {t: round(e[1], 4) for t, e in errors[ckpt].items()}, flush=True)
    if args.gaussian:  # on the last checkpoint's schedule, as an x0-prediction "network"
        gauss = GaussianDenoiser(load_images(args.gaussian), pipe.schedule.alphas_cumprod)
        fit = SimpleNamespace(model=gauss, schedule=pipe.schedule, prediction_type="sample")
        errors[f"(the Gaussian fit of {args.gaussian})"] = denoising_error(fit, x0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "errors.json").write_text(json.dumps(dict(heldout=args.heldout, num=len(x0), timesteps=TIMESTEPS,
                                                     mean_image_mse=mean_image_mse, errors=errors), indent=1))
    (out / "errors.md").write_text(markdown(errors, mean_image_mse))
    print(markdown(errors, mean_image_mse))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
