"""Time to quality: ddimkit's default recipe against diffusers' training example, same minutes, same data.

    # CPU, Fashion-MNIST, 10 minutes each (the measurement of docs/training.md)
    python benchmarks/time_to_quality.py --data npz:data/fashion_mnist.npz:x_train \\
        --ref npz:data/fashion_mnist.npz:x_test --classifier fashion-mnist --minutes 10 --num-kid 1000
    # GPU size: the DDPM CIFAR-10 layout with one channel at 32×32, 7.5 minutes each, FID on 10k
    python benchmarks/time_to_quality.py ... --preset ddpm-cifar10 --image-size 32 --minutes 7.5 --num-fid 10000
    python benchmarks/time_to_quality.py --quick          # seconds: checks the script on a CPU
    # Two processes (two device calls whose transfers cannot hold the data and Inception together):
    python benchmarks/time_to_quality.py ... --skip diffusers --stage train   # trains (a), writes train_info.json
    python benchmarks/time_to_quality.py ... --skip diffusers --stage score   # samples and scores that run

One after the other on one machine, it trains
  (a) ddimkit's default recipe (``ddimkit train --minutes M``, every other option at its default), and
  (b) the recipe of diffusers' unconditional-training example: ``UNet2DModel`` (the from-scratch tutorial's
      1.7M-parameter MNIST layout, or ``--preset``'s layout), ``DDPMScheduler`` with linear β, AdamW at 1e-4
      with betas (0.95, 0.999) and weight decay 1e-6, cosine decay after 500 warm-up steps over the steps
      that fit the budget, EMA with diffusers' warm-up (power 3/4, at most 0.9999), bf16 autocast on CUDA,
then samples both with DDIM-50 η = 0 from the same starting noise (ddimkit's sampler, tested equal to
diffusers'; each recipe with its own clipping convention) and scores both with the same measures: KID on
Inception features with its standard deviation, FID where ``--num-fid`` asks for it, and the Fréchet
distance in the features of the shipped in-domain classifier (``ddimkit/classifier.py``), with the floor
of real held-out images at the same n beside each. Writes JSON and a markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

import ddimkit as dk
from ddimkit import classifier as C
from ddimkit import evaluate, metrics
from ddimkit.data import fit_images, load_images, to_model_range, to_uint8
from ddimkit.scoring import image_set_features
from ddimkit.train import read_run_config

# The tutorial's UNet2DModel for MNIST (the diffusers example's own default layout is for 64×64 RGB).
TUTORIAL_UNET = dict(block_out_channels=(32, 64, 64), layers_per_block=2,
                     down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
CIFAR_UNET = dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
TRAIN_INFO = "train_info.json"  # what --stage train leaves for --stage score


def train_ddimkit(args, out: Path) -> tuple[dk.Pipeline, dict]:
    kw = dict(data=args.data, out=str(out), minutes=args.minutes, steps="auto", sample_every=0,
              num_sample_images=0, save_every=args.save_every)
    if args.model:
        kw["model"] = args.model
    if args.image_size:
        kw["image_size"] = args.image_size
    for item in filter(None, args.set.split(",")):
        k, v = item.split("=", 1)
        kw[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false", "null") else v
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time: the budget is the measurement
    t0 = time.perf_counter()
    result = dk.train(dk.TrainConfig(**kw), progress=False)
    seconds = time.perf_counter() - t0
    pipe = result.pipeline  # the EMA weights, as saved; sampled in the fast path's precision
    pipe.precision = args.precision
    info = dict(steps=result.step, seconds=seconds, images_per_second=result.images_per_second,
                params=sum(p.numel() for p in pipe.model.parameters()), recipe=read_run_config(out)["train"])
    (out / TRAIN_INFO).write_text(json.dumps(info, indent=1, default=str) + "\n")
    return pipe, info


def trained_ddimkit(args, out: Path, device: torch.device) -> tuple[dk.Pipeline, dict]:
    """The run a ``--stage train`` invocation left in ``out``, with the figures it noted."""
    if not (out / TRAIN_INFO).is_file():
        raise SystemExit(f"error: no {out / TRAIN_INFO}: run --stage train with the same --out first")
    pipe = dk.load(out, device=device, precision=args.precision)
    return pipe, json.loads((out / TRAIN_INFO).read_text())


def train_diffusers(args, images: torch.Tensor, device: torch.device) -> tuple[dk.Pipeline, dict]:
    """diffusers' train_unconditional.py, reduced to its recipe (no accelerate bookkeeping, no logging)."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    torch.manual_seed(args.seed)
    layout = CIFAR_UNET if args.preset == "ddpm-cifar10" else TUTORIAL_UNET
    size = images.shape[-1]
    unet = UNet2DModel(sample_size=size, in_channels=images.shape[1], out_channels=images.shape[1],
                       **layout).to(device)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                   enabled=False)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    # Warm-up first; the cosine's length is known after 10 steps (below). Same warm-up either way.
    lr_sched, total, step = get_cosine_schedule_with_warmup(opt, 500, 10**9), None, 0
    while time.perf_counter() - t0 < args.minutes * 60 and (total is None or step < total):
        idx = torch.randint(0, len(images), (args.diffusers_batch,), generator=g)
        x0 = to_model_range(images[idx]).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (len(x0),), generator=g).to(device)
        with amp:
            pred = unet(sched.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        ema.step(unet.parameters())
        step += 1
        if step == 10:  # the cosine decay spans the steps that fit the budget at the pace of the first 10
            total = max(11, int(10 * args.minutes * 60 / (time.perf_counter() - t0)))
            lr_sched = get_cosine_schedule_with_warmup(opt, 500, total, last_epoch=step - 1)
    seconds = time.perf_counter() - t0
    ema.copy_to(unet.parameters())
    sampling = dict(clip_sample=1.0, use_clipped_model_output=False)  # DDIMScheduler's defaults
    pipe = dk.Pipeline(unet.eval(), dk.NoiseSchedule.linear(), "epsilon", {"data": {"image_size": size}}, sampling,
                       args.precision, compile=False)
    return pipe, dict(steps=step, seconds=seconds, images_per_second=step * args.diffusers_batch / seconds,
                      params=sum(p.numel() for p in unet.parameters()))


def draw(pipe: dk.Pipeline, n: int, batch_size: int, seed: int, **kw) -> torch.Tensor:
    """n uint8 samples, DDIM-50 η = 0, from the starting noise of ``seed`` (the same for every model);
    ``kw`` goes to :meth:`Pipeline.sample` (e.g. ``autoguidance_scale=1.0``, the network alone)."""
    x_T = torch.randn((n, *pipe.image_shape), generator=torch.Generator().manual_seed(seed))
    out = [pipe.sample(x_T=x_T[i:i + batch_size].to(pipe.device), sampler="ddim", steps=50, eta=0.0, **kw)
           for i in range(0, n, batch_size)]
    return to_uint8(torch.cat(out).cpu())


def scores(samples: torch.Tensor, ref: torch.Tensor, args, inception, device, ref_features: dict) -> dict:
    """Classifier-FD and recognition on all samples; KID on ``--num-kid`` and FID on ``--num-fid`` of them.

    ``ref_features`` keeps the reference's Inception features by count, so that the floor and every recipe
    share one pass over the reference; with the reference Inception they also go to ddimkit's cache, where
    the next invocation finds them."""
    samples = evaluate.center_crop(samples, ref.shape[-1])  # 28×28 data padded to 32 for the network
    net = C.load_classifier(args.classifier)
    k = min(len(samples), len(ref))
    res = dict(n_classifier=k, classifier_fd=C.classifier_fd(net, samples[:k], ref[:k]),
               recognised=C.recognition(net, samples).rate)
    if inception is not None:
        m = min(max(args.num_kid, args.num_fid), len(samples), len(ref))
        fa = metrics.inception_features(samples[:m], inception, device=device)
        if m not in ref_features:
            ref_features[m] = image_set_features(evaluate.ImageSet(args.ref, images=ref[:m]), inception,
                                                 device=device, use_cache=args.inception_fp16 is None)
        fb = ref_features[m]
        n = min(args.num_kid, m)
        res["n_kid"] = n
        res["kid"], res["kid_std"] = metrics.kid(fa[:n], fb[:n], subset_size=n)
        if args.num_fid:
            res["n_fid"], res["fid"] = m, metrics.fid_from_features(fa, fb)
    return res


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist-5k", help="training images (a dataset spec)")
    ap.add_argument("--ref", default="mnist-5k", help="reference images for the scores (held-out ideally)")
    ap.add_argument("--classifier", default="mnist", choices=list(C.CLASSIFIERS))
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget of each recipe")
    ap.add_argument("--preset", default=None, help="ddimkit preset for (a) (default: the default recipe's); "
                                                   "ddpm-cifar10 also gives (b) the CIFAR-10 layout")
    ap.add_argument("--arch", default=None, help="a study architecture of benchmarks/recipe_study.py (its options "
                    "over --preset's, with --preset's learning rate)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--num", type=int, default=2000, help="samples per recipe (classifier-FD uses them all)")
    ap.add_argument("--num-kid", type=int, default=1000)
    ap.add_argument("--num-fid", type=int, default=0, help="FID on this many samples (0: no FID)")
    ap.add_argument("--diffusers-batch", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=500, help="sampling batch")
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--inception", default=None, help="Inception weights (default: ddimkit's cache)")
    ap.add_argument("--inception-fp16", default=None,
                    help="Inception TorchScript with fp16-rounded weights (unverified; for comparisons only)")
    ap.add_argument("--set", default="", help="key=value,... over ddimkit's default recipe (e.g. batch_size=128)")
    ap.add_argument("--unguided", action="store_true",
                    help="also score ddimkit's network alone (no autoguidance), from the same noise")
    ap.add_argument("--skip", choices=("ddimkit", "diffusers"), action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/time-to-quality")
    ap.add_argument("--quick", action="store_true", help="seconds: a check of the script on a CPU")
    ap.add_argument("--stage", choices=("all", "train", "score"), default="all",
                    help="train: only train (a) and note its figures in --out; score: sample and score the run a "
                         "train stage left in --out (both need --skip diffusers)")
    args = ap.parse_args()
    if args.stage != "all" and "diffusers" not in args.skip:
        ap.error("--stage train/score splits ddimkit's recipe only: add --skip diffusers")
    if args.quick:
        args.minutes, args.num, args.num_kid, args.num_fid, args.save_every = 0.1, 24, 12, 0, 20
    return args


def markdown(res: dict) -> str:
    rows = ["| recipe | params | steps | img/s | KID (n) ± std | FID (n) | classifier-FD (n) | recognised |",
            "|---|---|---|---|---|---|---|---|"]

    def cell(r, key, n_key, fmt):
        return f"{fmt.format(r[key])} ({r[n_key]})" if key in r else "–"

    for name, r in res["recipes"].items():
        kid = f"{r['kid']:.4f} ± {r['kid_std']:.4f} ({r['n_kid']})" if "kid" in r else "–"
        rows.append(f"| {name} | {r.get('params', 0) / 1e6:.2f}M | {r.get('steps', '–')} | "
                    f"{r.get('images_per_second', float('nan')):.0f} | {kid} | {cell(r, 'fid', 'n_fid', '{:.2f}')} | "
                    f"{cell(r, 'classifier_fd', 'n_classifier', '{:.2f}')} | {r['recognised']:.3f} |")
    return "\n".join(rows) + "\n"


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.precision = "bf16" if cuda else "fp32"
    if args.quick:
        args.preset = args.preset or "tiny"
    # ddimkit's network: --preset's, or a study architecture over it. Registered before either stage: the score
    # stage loads the run's network class too. --preset itself still picks diffusers' layout.
    args.model = args.preset
    if args.arch:
        from recipe_study import register_arch

        args.model = register_arch(args.arch, args.preset or dk.TrainConfig.model)
    if args.stage == "train":
        if "ddimkit" not in args.skip:
            print("ddimkit", train_ddimkit(args, out / "ddimkit")[1], flush=True)
        return
    ref = load_images(args.ref)[: max(args.num, args.num_kid, args.num_fid)]
    train_images = load_images(args.data)
    inception = None
    if args.inception_fp16:
        # The weights rounded to fp16 (to fit a 64 MiB transfer), run in fp32: features within about 0.25%
        # of the reference network's, good for comparing recipes in one run, not for reference FIDs.
        inception = torch.jit.load(args.inception_fp16, map_location=device).float().eval()
    else:
        try:
            inception = metrics.load_inception(metrics.inception_path(args.inception), device=device)
        except metrics.InceptionWeightsError as e:
            print(f"no KID/FID: {e}")
    res = dict(device=torch.cuda.get_device_name() if cuda else "CPU", torch=torch.__version__, minutes=args.minutes,
               data=args.data, ref=args.ref, recipes={})
    # The floor: real training images against the reference, at the same sizes.
    ref_features: dict = {}
    res["recipes"]["real training images (floor)"] = scores(train_images[: args.num], ref, args, inception, device,
                                                           ref_features)
    def sampled(pipe, **kw) -> dict:
        """The sampling time and the scores of ``--num`` samples of ``pipe`` (``kw``: :func:`draw`'s)."""
        t0 = time.perf_counter()
        samples = draw(pipe, args.num, args.batch_size, args.seed, **kw)
        seconds = time.perf_counter() - t0
        return dict(sample_seconds=seconds, **scores(samples, ref, args, inception, device, ref_features))

    for name in ("ddimkit", "diffusers"):
        if name in args.skip:
            continue
        if name == "ddimkit":
            pipe, info = (trained_ddimkit(args, out / "ddimkit", device) if args.stage == "score"
                          else train_ddimkit(args, out / "ddimkit"))
        else:
            size = args.image_size or (32 if args.preset == "ddpm-cifar10" else train_images.shape[-1])
            pipe, info = train_diffusers(args, fit_images(train_images, size), device)
        info.update(sampled(pipe))
        res["recipes"][name] = info
        if name == "ddimkit" and args.unguided and pipe.guide is not None:
            res["recipes"]["ddimkit, network alone (no autoguidance)"] = {**info,
                                                                        **sampled(pipe, autoguidance_scale=1.0)}
        (out / "time_to_quality.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        print(name, {k: v for k, v in info.items() if k != "config"}, flush=True)
    (out / "time_to_quality.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
