"""``ddimkit sample``, ``ddimkit invert``, ``ddimkit interpolate``."""

from __future__ import annotations

import argparse
import math
import sys

import torch

from .common import (UsageError, add_ckpt_args, add_grid_args, eta_value, float_list, int_list, join_launch,
                     load_pipeline, non_negative_float, non_negative_int, positive_float, positive_int,
                     writable_file, write_tensor_file)


def register(sub):
    p = sub.add_parser("sample", help="generate images from a model",
                       description="Generate images with DDPM, DDIM (any η) or DPM-Solver++(2M).")
    add_ckpt_args(p)
    p.add_argument("--sampler", choices=("ddim", "ddpm", "dpmpp-2m"), default="ddim")
    add_grid_args(p, steps_default=None)
    p.add_argument("--eta", type=eta_value, default=0.0,
                   help="DDIM η >= 0 (0: deterministic, 1: DDPM), or 'large' for DDPM's β variance on the grid")
    p.add_argument("--variance", choices=("small", "large"), default="small", help="ddpm variance (β̃ or β)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clip x̂0 to [-r, r] (default: the model's setting)")
    p.add_argument("--clip-range", type=positive_float, default=1.0, help="r for --clip (default: 1)")
    p.add_argument("--clipped-eps", action=argparse.BooleanOptionalAction, default=None,
                   help="with clipping, re-derive ε̂ from the clipped x̂0 (default: the model's setting; on for "
                        "models trained by ddimkit, off for diffusers checkpoints)")
    p.add_argument("--num", type=positive_int, default=64, help="number of images (default: 64)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per batch (default: all on the CPU, as many as fit on a GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator (default: 0)")
    p.add_argument("--per-sample-seeds", action="store_true",
                   help="image i uses seed+i, so images do not depend on the batch size")
    p.add_argument("--out", required=True, help="output .png grid or .npz of uint8 images")
    p.add_argument("--class-labels", type=int_list, default=None, metavar="Y[,Y...]",
                   help="class-conditional models: one label for every image, or one per image (default: image "
                        "i gets label i mod the number of classes)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=None, metavar="W",
                   help="classifier-free guidance: 1 = the conditional model alone, 0 = the unconditional one, "
                        "> 1 = further from it (default: the model's, 1)")
    p.add_argument("--autoguidance-scale", type=non_negative_float, default=None, metavar="W",
                   help="autoguidance by the model's guide: 1 = the model alone, > 1 = further from the guide "
                        "(default: the model's where it has a guide)")
    p.add_argument("--trajectory", default=None, help="also write x_t and x̂0 along the way to this .png")
    p.add_argument("--trajectory-points", type=positive_int, default=10, help="steps shown in --trajectory")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("invert", help="DDIM-invert an image to noise (and reconstruct it)",
                       description="Map an image to the noise from which deterministic DDIM regenerates it.")
    add_ckpt_args(p)
    p.add_argument("--image", required=True, help="the image file")
    add_grid_args(p)
    p.add_argument("--refine", type=non_negative_int, default=0,
                   help="fixed-point iterations per step (each costs one model call; 2-5 make it near-exact)")
    p.add_argument("--out", required=True, help="noise file: .pt (weights-only tensor) or .safetensors")
    p.add_argument("--reconstruct", default=None, help="decode the noise again and save original|reconstruction")
    add_class_label_arg(p)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("interpolate", help="slerp between two noises (seeds or inverted images)",
                       description="Spherical interpolation between the starting noises of two seeds, or of two "
                                   "real images (via DDIM inversion), decoded with DDIM η=0.")
    add_ckpt_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"))
    src.add_argument("--images", nargs=2, metavar=("A", "B"))
    p.add_argument("--alphas", type=float_list, default=[0, 0.2, 0.4, 0.5, 0.6, 0.8, 1],
                   help="comma-separated interpolation weights (default: 0,0.2,0.4,0.5,0.6,0.8,1)")
    add_grid_args(p)
    p.add_argument("--refine", type=non_negative_int, default=0, help="fixed-point iterations for --images")
    p.add_argument("--out", required=True, help="output .png")
    add_class_label_arg(p)
    p.set_defaults(func=cmd_interpolate)


def cmd_sample(args):
    out = writable_file(args.out, (".png", ".npz"))
    traj = writable_file(args.trajectory, (".png",)) if args.trajectory else None
    args.device = join_launch(args.device)
    pipe = load_pipeline(args)
    T = pipe.schedule.num_train_timesteps
    if args.steps is not None and args.steps > T:
        raise UsageError(f"--steps {args.steps} exceeds the model's {T} training timesteps")
    if args.sampler == "ddpm" and args.eta not in (0, 0.0):
        raise UsageError("--eta applies to --sampler ddim; ddpm takes --variance small|large")
    if pipe.config.get("train", {}).get("noise_assignment", "none") != "none" and (
            args.sampler == "ddpm" or args.eta != 0):
        # the stochastic samplers assume noise independent of the image, which noise assignment gives up
        print("ddimkit sample: warning: this model was trained with noise assignment, for which only the "
              "deterministic samplers (DDIM η = 0, dpmpp-2m) are exact; η > 0 and DDPM sample it worse "
              "(docs/training.md)", file=sys.stderr)
    clip = "config" if args.clip is None else (args.clip_range if args.clip else None)
    steps = args.steps or (T if args.sampler == "ddpm" else 50)
    record, every = [], max(1, math.ceil(steps / args.trajectory_points))

    def callback(d):
        if traj is not None and (d["i"] % every == 0 or d["i"] == steps - 1) and len(record) < steps:
            record.append({k: (v[:1].detach().cpu() if torch.is_tensor(v) else v) for k, v in d.items()})

    kw = dict(sampler=args.sampler, steps=steps, eta=args.eta, spacing=args.spacing, clip_sample=clip,
              batch_size=args.batch_size, callback=callback, progress=True, use_clipped_model_output=args.clipped_eps,
              class_labels=args.class_labels, guidance_scale=args.guidance_scale,
              autoguidance_scale=args.autoguidance_scale)
    if args.sampler == "ddpm":
        pipe.sampling["variance"] = args.variance
    from .. import distributed

    if distributed.launched():  # image i from seed+i wherever it is drawn: one image set for any process count
        from ..sharded_sampling import sample_sharded

        images = sample_sharded(pipe, range(args.seed, args.seed + args.num), to="main", **kw)
        if images is None:  # not rank 0: rank 0 writes
            return
    elif args.per_sample_seeds:
        images = pipe.sample(seeds=range(args.seed, args.seed + args.num), **kw)
    else:
        images = pipe.sample(args.num, generator=torch.Generator().manual_seed(args.seed), **kw)
    from ..viz import plot_trajectory, save_images

    save_images(images, out)
    print(f"wrote {len(images)} images to {out}")
    if traj is not None:
        first = [d for d in record if d["i"] < steps][: args.trajectory_points + 1]
        plot_trajectory(first, traj, title=f"{args.sampler}, {steps} steps")
        print(f"wrote the trajectory to {traj}")


def add_class_label_arg(p):
    p.add_argument("--class-label", type=non_negative_int, default=None, metavar="Y",
                   help="class-conditional models: the label to run with (default: the model's null label, "
                        "i.e. its unconditional prediction)")


def _read_model_image(pipe, path):
    from ..data import fit_images, read_image, to_model_range

    c, h, w = pipe.image_shape
    img = read_image(path)
    if img.shape[0] != c:
        if c == 1 and img.shape[0] == 3 and bool((img[0] == img[1]).all() and (img[1] == img[2]).all()):
            img = img[:1]  # a gray image stored as RGB
        else:
            raise UsageError(f"{path} has {img.shape[0]} channels; the model takes {c}")
    if h != w:
        raise UsageError(f"the model takes {h}x{w} images; only square sizes are supported here")
    return to_model_range(fit_images(img[None], h))


def cmd_invert(args):
    out = writable_file(args.out, (".pt", ".safetensors"))
    rec_path = writable_file(args.reconstruct, (".png",)) if args.reconstruct else None
    pipe = load_pipeline(args)
    if args.steps > pipe.schedule.num_train_timesteps:
        raise UsageError(f"--steps {args.steps} exceeds the model's {pipe.schedule.num_train_timesteps} "
                         "training timesteps")
    x0 = _read_model_image(pipe, args.image)
    noise = pipe.invert(x0, steps=args.steps, spacing=args.spacing, refine=args.refine, class_labels=args.class_label)
    write_tensor_file(noise, out)
    print(f"wrote the noise {tuple(noise.shape)} to {out}")
    if rec_path is not None:
        from ..metrics import psnr, reconstruction_mse
        from ..viz import save_grid

        rec = pipe.reconstruct(noise, steps=args.steps, spacing=args.spacing, class_labels=args.class_label)
        save_grid(torch.cat([x0, rec]), rec_path, nrow=2, scale=max(1, 128 // x0.shape[-1]))
        mse, db = float(reconstruction_mse(x0, rec).mean()), float(psnr(x0, rec).mean())
        print(f"wrote original|reconstruction to {rec_path}: MSE {mse:.3e} (per dimension, [0,1] scale), "
              f"PSNR {db:.2f} dB")


def cmd_interpolate(args):
    out = writable_file(args.out, (".png",))
    pipe = load_pipeline(args)
    if args.steps > pipe.schedule.num_train_timesteps:
        raise UsageError(f"--steps {args.steps} exceeds the model's {pipe.schedule.num_train_timesteps} "
                         "training timesteps")
    if not args.alphas:
        raise UsageError("--alphas needs at least one value")
    shape = pipe.image_shape
    if args.seeds:
        from ..noise import randn

        z = [randn((1, *shape), torch.Generator().manual_seed(s)) for s in args.seeds]
        title = f"slerp between the noises of seeds {args.seeds[0]} and {args.seeds[1]}"
    else:
        x = torch.cat([_read_model_image(pipe, p) for p in args.images])
        inv = pipe.invert(x, steps=args.steps, spacing=args.spacing, refine=args.refine, class_labels=args.class_label)
        z = [inv[:1], inv[1:]]
        title = "slerp between two inverted images"
    images = pipe.interpolate(z[0], z[1], args.alphas, steps=args.steps, spacing=args.spacing,
                              inverted=bool(args.images), class_labels=args.class_label)
    from ..viz import labelled_grid

    rows, labels = [images], ["DDIM η=0"]
    if args.images:  # the two inputs above the first and last columns
        k, blank = len(args.alphas), torch.full_like(x[:1], -1)
        rows.insert(0, torch.cat([x[:1]] + [blank] * max(0, k - 2) + ([x[1:]] if k >= 2 else [])))
        labels.insert(0, "inputs")
    labelled_grid(rows, labels, [f"α={a:g}" for a in args.alphas], out, title=title)
    print(f"wrote {len(images)} interpolated images to {out}")
