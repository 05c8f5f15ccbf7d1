"""The quality of a trained model, as its card in ``ddimkit pretrained`` reports it.

    python benchmarks/pretrained_quality.py --ckpt runs/pretrained-fashion --classifier fashion-mnist \\
        --ref npz:../shared/data/fashion_mnist.npz:x_test --real npz:../shared/data/fashion_mnist.npz:x_train \\
        --num 500 --num-ref 2000 --kid --out runs/pretrained-fashion-quality.json
    python benchmarks/pretrained_quality.py --ckpt runs/pretrained-mnist --classifier mnist \\
        --ref npz:../shared/data/mnist_10k.npz:x --num 1000 --out runs/pretrained-mnist-quality.json

``--num`` DDIM-50 samples (η = 0, or ``--eta``) from seed 0 are scored against the first ``--num-ref`` (default
``--num``) images of ``--ref``:
- the classifier-FD (Fréchet distance in the shipped classifier's features) and its floor, the same measure
  between ``--num`` real images of ``--real`` (default: the next images of ``--ref``) and the reference;
- the share that the classifier recognises with confidence ≥ 0.9, beside the real images' share;
- with ``--kid``, KID on Inception features with its standard deviation, and the real images' KID.
The JSON holds the numbers, a ``summary`` (label → text) for the model card, and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import ddimkit as dk
from ddimkit.classifier import classifier_fd, load_classifier, recognition
from ddimkit.data import load_images, to_uint8


def _real(args, n: int, n_ref: int) -> torch.Tensor:
    if args.real:
        return load_images(args.real)[:n]
    every = load_images(args.ref)  # real images beyond the reference ones
    if len(every) < n_ref + n:
        raise SystemExit(f"{args.ref} has {len(every)} images: too few for {n_ref} references and {n} real ones")
    return every[n_ref:n_ref + n]


def _kids(sets: list[torch.Tensor], ref_spec: str, num_ref: int) -> list[tuple[float, float]]:
    """KID ± std of each image set against the reference, with one Inception and one pass over the reference."""
    from ddimkit import metrics
    from ddimkit.evaluate import read_image_set
    from ddimkit.scoring import image_set_features

    model = metrics.load_inception(metrics.inception_path())
    ref = image_set_features(read_image_set(ref_spec, num_ref), model)  # cached, as `ddimkit sweep` caches it
    return [metrics.kid(metrics.inception_features(a, model), ref) for a in sets]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--classifier", required=True, choices=("mnist", "fashion-mnist"))
    ap.add_argument("--ref", required=True)
    ap.add_argument("--real", default=None)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--num-ref", type=int, default=None, help="reference images (default: --num)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--kid", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    n, n_ref = args.num, args.num_ref or args.num
    pipe = dk.load(args.ckpt, device="cpu")
    ref, real = load_images(args.ref)[:n_ref], _real(args, n, n_ref)
    t0 = time.perf_counter()
    x = to_uint8(pipe.sample(n, sampler="ddim", steps=args.steps, eta=args.eta,
                             generator=torch.Generator().manual_seed(0)))
    seconds = time.perf_counter() - t0
    net = load_classifier(args.classifier)
    rec, rec_real = recognition(net, x), recognition(net, real)
    r = dict(ckpt=args.ckpt, num=n, num_ref=n_ref, steps=args.steps, eta=args.eta, sample_seconds=round(seconds, 1),
             cfd=classifier_fd(net, x, ref), cfd_floor=classifier_fd(net, real, ref),
             recognised=rec.rate, classes=rec.classes_seen, recognised_real=rec_real.rate)
    s = f"DDIM-{args.steps}, η = {args.eta:g}, {n} samples against {n_ref} reference images"
    summary = {"classifier-FD": f"{r['cfd']:.2f} ({s}; real images: {r['cfd_floor']:.2f})",
               "recognised": f"{rec.rate:.1%} with confidence ≥ 0.9, {rec.classes_seen} classes ({s}; real "
                             f"images: {rec_real.rate:.1%})"}
    if args.kid:
        (r["kid"], r["kid_std"]), (r["kid_real"], r["kid_real_std"]) = _kids([x, real], args.ref, n_ref)
        summary["KID"] = (f"{r['kid']:.4f} ± {r['kid_std']:.4f} ({s}; real images: {r['kid_real']:.4f} ± "
                          f"{r['kid_real_std']:.4f})")
    r["summary"] = summary
    r["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
