"""Classifier-free guidance of a class-conditional model: quality by guidance scale and sampler.

For each sampler cell and each guidance scale it draws ``--num`` samples (labels i mod K, the same starting
noise for every cell) and scores them with a shipped classifier:
- ``recognised``: the share the classifier names with confidence >= 0.9, and ``match``: the share it names
  as the class asked for, with that confidence;
- with ``--ref``: the classifier-FD against the reference images (the same n), and with ``--kid`` the KID
  on Inception features with its standard deviation.

    python benchmarks/guidance_sweep.py --ckpt runs/demo --classifier mnist --scales 1,2,3,4 \\
        --cells ddim:50,ddpm:1000 --num 256 --num-ddpm 64 --out runs/guidance-demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ddimkit as dk
from ddimkit import classifier as C
from ddimkit.data import to_uint8


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="a class-conditional model")
    ap.add_argument("--classifier", default="mnist", choices=list(C.CLASSIFIERS))
    ap.add_argument("--scales", default="1,2,3,4", help="guidance scales, comma-separated")
    ap.add_argument("--cells", default="ddim:50",
                    help="sampler:steps[:eta] cells (eta 0 unless given), comma-separated")
    ap.add_argument("--num", type=int, default=256, help="samples per cell")
    ap.add_argument("--num-ddpm", type=int, default=64, help="samples per DDPM cell")
    ap.add_argument("--ref", default=None, help="reference images for the classifier-FD (and KID)")
    ap.add_argument("--kid", action="store_true", help="also the KID against --ref (Inception)")
    ap.add_argument("--keep-eps", action="store_true",
                    help="keep the network's ε̂ after clipping x̂0 (diffusers' convention), not the model's setting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    return ap.parse_args()


def score(net, x: torch.Tensor, labels: torch.Tensor, ref, kid_ref) -> dict:
    p = C.predict(net, x)
    conf, cls = p.max(1)
    sure = conf >= 0.9
    res = {"recognised": float(sure.float().mean()), "match": float((sure & (cls == labels)).float().mean()),
           "classes": int(torch.unique(cls[sure]).numel())}
    if ref is not None:
        res["classifier_fd"] = C.classifier_fd(net, x, ref[:len(x)])
    if kid_ref is not None:
        from ddimkit import metrics

        res["kid"], res["kid_std"] = metrics.kid(metrics.inception_features(x), kid_ref[:len(x)], subset_size=len(x))
    return res


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = dk.load(args.ckpt, device="cpu")
    if pipe.num_classes is None:
        raise SystemExit(f"{args.ckpt} is not class-conditional")
    net = C.load_classifier(args.classifier)
    ref = kid_ref = None
    if args.ref:
        ref = dk.load_images(args.ref)[:max(args.num, args.num_ddpm)]
        if args.kid:
            from ddimkit import metrics

            kid_ref = metrics.inception_features(ref)
    rows = []
    for cell in args.cells.split(","):
        sampler, steps, *eta = cell.split(":")
        eta = float(eta[0]) if eta else 0.0
        n = args.num_ddpm if sampler == "ddpm" else args.num
        for scale in (float(s) for s in args.scales.split(",")):
            t0 = time.perf_counter()
            x = pipe.sample(n, sampler, steps=int(steps), eta=eta, guidance_scale=scale,
                            generator=torch.Generator().manual_seed(args.seed),
                            use_clipped_model_output=False if args.keep_eps else None)
            labels = pipe.class_labels(None, n)
            row = {"sampler": sampler, "steps": int(steps), "eta": eta, "scale": scale, "n": n,
                   "keep_eps": args.keep_eps,
                   "seconds": round(time.perf_counter() - t0, 1), **score(net, to_uint8(x), labels, ref, kid_ref)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out / "guidance.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    lines = ["| sampler | guidance scale | n | recognised | as asked | classifier-FD | KID ± std |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kid = f"{r['kid']:.4f} ± {r['kid_std']:.4f}" if "kid" in r else "–"
        cfd = f"{r['classifier_fd']:.2f}" if "classifier_fd" in r else "–"
        eta = f", η = {r['eta']:g}" if r["sampler"] == "ddim" else ""
        lines.append(f"| {r['sampler'].upper()}-{r['steps']}{eta} | {r['scale']:g} | {r['n']} | "
                     f"{r['recognised']:.1%} | {r['match']:.1%} | {cfd} | {kid} |")
    (out / "guidance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
