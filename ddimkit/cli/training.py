"""``ddimkit train`` and ``ddimkit toy``."""

from __future__ import annotations

import argparse
from dataclasses import fields

import torch

from .common import (UsageError, add_compile_args, non_negative_float, non_negative_int, positive_float, positive_int,
                     writable_dir)


def register(sub):
    from ..noise_assignment import NOISE_ASSIGNMENTS
    from ..train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a diffusion model from scratch",
                       description="Train a UNet on a dataset with ε, x0 or v prediction. Checkpoints are written "
                                   "atomically to --out; --resume continues a run exactly.")
    p.add_argument("--data", default=d.data,
                   help="mnist-5k (bundled), mnist, fashion-mnist, cifar10 (online), folder:PATH, npz:PATH[:KEY]")
    p.add_argument("--model", default=d.model,
                   help="tiny, small, mnist, ddpm-cifar10, ddpm-256 (default: %(default)s)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--steps", type=steps_arg, default=None,
                   help="optimizer steps; 'auto' (the default with --minutes) fits the learning-rate schedule to "
                        f"the time budget (default without --minutes: {d.steps})")
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="wall-clock budget: stop and save at the first step after it (resumable)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default: by preset, 2e-3 for small, 4e-3 for tiny, 2e-4 for ddpm-cifar10)")
    p.add_argument("--warmup", type=non_negative_int, default=d.warmup, help="linear LR warm-up steps")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--adam-beta2", type=float, default=d.adam_beta2, help="AdamW's β2 (default: %(default)s)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient-norm clip (0: off)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=d.ema_warmup)
    p.add_argument("--prediction", choices=("eps", "x0", "v"), default=d.prediction)
    p.add_argument("--min-snr-gamma", type=gamma_arg, default=d.min_snr_gamma,
                   help="min-SNR-γ loss weighting, or 'off' (default: %(default)s)")
    p.add_argument("--timestep-sampling", choices=("uniform", "importance"), default=d.timestep_sampling,
                   help="draw t uniformly, or in proportion to its loss weight (default: %(default)s)")
    p.add_argument("--noise-assignment", choices=NOISE_ASSIGNMENTS, default=d.noise_assignment,
                   help="batch: pair each batch's images with its noise draws by least total distance "
                        "(Immiscible Diffusion; default: %(default)s)")
    p.add_argument("--input-perturbation", type=float, default=d.input_perturbation, metavar="GAMMA",
                   help="train on x_t made with noise + GAMMA x fresh noise (0: off; default: %(default)s)")
    p.add_argument("--self-condition", action="store_true",
                   help="self-conditioning: the network also sees its own last x̂0 (default: off)")
    p.add_argument("--class-conditional", action="store_true",
                   help="train on the data's class labels (npz: y/labels beside the images; folder: one subfolder "
                        "per class); sampling then takes labels and classifier-free guidance (default: off)")
    p.add_argument("--label-dropout", type=float, default=d.label_dropout, metavar="P",
                   help="share of labels replaced by the null label, for guidance (default: %(default)s)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=d.guidance_scale, metavar="W",
                   help="classifier-free guidance scale stored as the model's sampling default (default: %(default)s)")
    p.add_argument("--autoguidance-at", type=fraction_or_off, default=d.autoguidance_at, metavar="F",
                   help="keep the EMA weights at this fraction of the run as autoguidance's guide, or 'off' "
                        "(default: %(default)s)")
    p.add_argument("--autoguidance-scale", type=non_negative_float, default=d.autoguidance_scale, metavar="W",
                   help="autoguidance scale stored as the model's sampling default (default: %(default)s)")
    p.add_argument("--schedule", choices=("linear", "scaled-linear", "cosine", "sigmoid"), default=d.schedule)
    p.add_argument("--timesteps", type=positive_int, default=d.num_train_timesteps, help="training timesteps T")
    p.add_argument("--beta-start", type=positive_float, default=None)
    p.add_argument("--beta-end", type=positive_float, default=None)
    p.add_argument("--image-size", type=positive_int, default=None, help="fit images to this size")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="convert images to 1 or 3 channels")
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="store 'clip x̂0 to [-1, 1]' as the model's sampling default (default: yes)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=non_negative_int, default=d.save_every)
    p.add_argument("--sample-every", type=non_negative_int, default=d.sample_every)
    p.add_argument("--log-every", type=non_negative_int, default=d.log_every)
    p.add_argument("--keep", type=positive_int, default=d.keep, help="checkpoints to keep")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default=d.mixed_precision,
                   help="auto: bf16 on CUDA, and on CPUs with native bf16 for networks of >= 100 MFLOP an image; "
                        "else fp32 (default: %(default)s)")
    add_compile_args(p)
    p.add_argument("--num-sample-images", type=non_negative_int, default=d.num_sample_images)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("toy", help="the from-scratch tutorial's toy model: BasicUNet, corrupt, x0 prediction",
                       description="Train the BasicUNet to undo `corrupt` (uniform-noise mixing) and sample by moving "
                                   "1/(n-i) of the way to its prediction at step i.")
    p.add_argument("--data", default="mnist-5k")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=positive_int, default=600, help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--sample-steps", type=positive_int, default=40)
    p.add_argument("--num", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_toy)


def gamma_arg(text: str) -> float | None:
    return None if text == "off" else positive_float(text)


def fraction_or_off(text: str) -> float | None:
    if text == "off":
        return None
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1) or 'off', got {text}")
    return value


def steps_arg(text: str) -> int | str:
    return "auto" if text == "auto" else positive_int(text)


def config_from_args(args):
    from ..train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    kw["num_train_timesteps"] = args.timesteps
    if args.steps is None:
        kw["steps"] = "auto" if args.minutes is not None else TrainConfig.steps
    elif args.steps == "auto" and args.minutes is None:
        raise UsageError("--steps auto needs --minutes")
    kw["schedule"] = args.schedule.replace("-", "_")
    kw["clip_sample"] = 1.0 if args.clip else None
    kw["compile"] = "auto" if args.compile is None else args.compile
    return TrainConfig(**kw)


def cmd_train(args):
    from ..train import train

    cfg = config_from_args(args)
    writable_dir(cfg.out)
    result = train(cfg, resume=args.resume)
    last = result.losses[-1][1] if result.losses else float("nan")
    print(f"trained {result.step} steps ({result.images_per_second:.0f} images/s); final loss {last:.4f}; "
          f"checkpoint in {result.out}")


def cmd_toy(args):
    from ..checkpoint import atomic_write, write_json
    from ..data import load_images
    from ..models import BasicUNet
    from ..toy import toy_sample, toy_train_step
    from ..viz import labelled_grid, plot_loss, save_grid

    out = writable_dir(args.out)
    images = load_images(args.data)
    x01 = images.float() / 255
    torch.manual_seed(args.seed)
    net = BasicUNet(in_channels=images.shape[1], out_channels=images.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    losses = []
    from tqdm.auto import tqdm

    for step in tqdm(range(args.steps), desc="toy", unit="step"):
        idx = torch.randint(0, len(x01), (args.batch_size,), generator=g)
        losses.append(float(toy_train_step(net, opt, x01[idx], g)))
    net.eval()
    shape = (args.num, *images.shape[1:])
    x, _, _ = toy_sample(net, shape, args.sample_steps, torch.Generator().manual_seed(args.seed + 1))
    save_grid(x.clamp(0, 1) * 2 - 1, out / "samples.png", scale=2)
    _, inputs, preds = toy_sample(net, (8, *images.shape[1:]), 5, torch.Generator().manual_seed(args.seed + 2))
    rows = [torch.cat([inputs[i], preds[i]]).clamp(0, 1) * 2 - 1 for i in range(5)]
    labelled_grid(rows, [f"step {i}" for i in range(5)], ["x (input)"] * 8 + ["prediction"] * 8, out / "process.png",
                  title="5 steps: inputs (left 8) and predictions (right 8)", cell=0.6)
    plot_loss(list(range(1, len(losses) + 1)), losses, out / "loss.png", title="toy model: x0 MSE")
    from safetensors.torch import save_file

    atomic_write(out / "model.safetensors", lambda p: save_file(net.state_dict(), str(p)))
    write_json(out / "config.json", {"model": {"class": "BasicUNet", "config": net.config},
                                     "toy": vars(args) | {"func": None}, "final_loss": losses[-1]})
    print(f"trained the toy BasicUNet for {args.steps} steps (final loss {losses[-1]:.4f}); wrote samples.png, "
          f"process.png, loss.png and the weights to {out}")
