"""``ddimkit explore NAME``: the notes' experiments, each writing a figure plus NAME.json and NAME.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (UsageError, add_ckpt_args, float_list, int_list, load_pipeline, non_negative_int,
                     positive_float, positive_int, str_list, writable_dir)

EPILOG = """experiments:
  schedule        √ᾱ_t, √(1-ᾱ_t) and log-SNR against t for the four beta schedules (no --ckpt)
  noising         real images noised by the DDPM forward process and by the toy corrupt (--ckpt optional)
  trajectory      x_t and x̂0 along DDPM (all T steps) and DDIM (50 steps) for one seed
  eta-vs-ddpm     DDIM(η=1, full grid) vs DDPM from one seed, clipping off and on; σ² in float32 vs float64
  steps-grid      DDIM over η × steps (default 0,0.4,0.8 × 10,50,100,1000) from one seed
  determinism     one x_T, two generators (8 and 9): identical at η=0, different at η>0
  reconstruction  invert → reconstruct real images per step count, plain and with fixed-point refinement
  interpolation   slerp and lerp between two seeds and between two inverted real images

examples:
  ddimkit explore schedule --out results/
  ddimkit explore steps-grid --ckpt runs/mnist --out results/ --etas 0,1 --steps 10,100
  ddimkit explore reconstruction --ckpt runs/mnist --out results/ --num 16 --refine 5
"""

# The command-line options each experiment takes -> the keyword of its function in ddimkit.explore.
# An option given to an experiment that does not take it is refused, not silently ignored.
OPTIONS = {
    "schedule": {"timesteps": "num_train_timesteps", "schedules": "schedules"},
    "noising": {"data": "data", "num": "num", "seed": "seed"},
    "trajectory": {"seed": "seed", "steps": "ddim_steps", "ddpm_steps": "ddpm_steps", "points": "points",
                   "clip": "clip_sample"},
    "eta-vs-ddpm": {"seed": "seed", "num": "num", "steps": "steps", "clip_range": "clip_range",
                    "batch_size": "batch_size"},
    "steps-grid": {"seed": "seed", "etas": "etas", "steps": "steps", "num": "num", "clip": "clip_sample",
                   "batch_size": "batch_size"},
    "determinism": {"seed": "seed", "seeds": "generator_seeds", "etas": "etas", "steps": "steps", "num": "num",
                    "clip": "clip_sample", "batch_size": "batch_size"},
    "reconstruction": {"data": "data", "num": "num", "steps": "steps", "refine": "refine", "batch_size": "batch_size"},
    "interpolation": {"seeds": "seeds", "alphas": "alphas", "steps": "steps", "data": "data",
                      "images": "images", "refine": "refine", "batch_size": "batch_size"},
}
# Experiments whose --steps is a single number; the others take a list.
ONE_STEPS = {"trajectory", "eta-vs-ddpm", "determinism", "interpolation"}
WITHOUT_MODEL = {"schedule", "noising"}
_ALL_OPTIONS = sorted({opt for opts in OPTIONS.values() for opt in opts} | {"clip_range"})


def register(sub):
    p = sub.add_parser("explore", help="run one of the notes' experiments (figure + NAME.json + NAME.md)",
                       description="Run one of the experiments of the DDPM/DDIM notes and write NAME.png (or\n"
                                   "NAME-*.png), NAME.json (the numbers) and NAME.md (tables to paste) into --out.\n"
                                   "Options an experiment does not take are refused.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="the experiment (listed below)")
    add_ckpt_args(p, required=False)  # schedule and noising run without a model; cmd_explore checks the rest
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=None, help="seed of the starting noise (default: the note's)")
    p.add_argument("--seeds", type=int_list, default=None,
                   help="two seeds: interpolation's endpoints (77,2707); determinism's generators (8,9)")
    p.add_argument("--steps", type=int_list, default=None,
                   help="sampling steps: a list for steps-grid and reconstruction, one number otherwise")
    p.add_argument("--etas", type=float_list, default=None, help="η values (steps-grid, determinism)")
    p.add_argument("--alphas", type=float_list, default=None, help="interpolation weights (interpolation)")
    p.add_argument("--num", type=positive_int, default=None, help="number of images")
    p.add_argument("--data", default=None,
                   help="images (noising, reconstruction, interpolation): a dataset spec such as mnist-5k, "
                        "folder:PATH or npz:PATH (default: the model's training data)")
    p.add_argument("--images", type=int_list, default=None,
                   help="interpolation: indices of the two images in --data (default: the first and last)")
    p.add_argument("--refine", type=non_negative_int, default=None, help="fixed-point iterations of inversion")
    p.add_argument("--ddpm-steps", type=positive_int, default=None, help="trajectory: DDPM steps (default: T)")
    p.add_argument("--points", type=positive_int, default=None, help="trajectory: steps shown (default: 10)")
    p.add_argument("--timesteps", type=positive_int, default=None, help="schedule: T (default: 1000)")
    p.add_argument("--schedules", type=str_list, default=None,
                   help="schedule: which (default: linear,scaled_linear,cosine,sigmoid)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clip x̂0 while sampling (default: the model's setting)")
    p.add_argument("--clip-range", type=positive_float, default=None, help="r for clipping to [-r, r] (default: 1)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per batch (default: all on the CPU, as many as fit on a GPU)")
    p.set_defaults(func=cmd_explore)


def _clip_sample(args):
    """--clip / --no-clip / --clip-range as a clip_sample value (None: off)."""
    if args.clip is False:
        if args.clip_range is not None:
            raise UsageError("--clip-range contradicts --no-clip")
        return None
    return args.clip_range or 1.0


def experiment_options(name: str, args) -> dict:
    """The keyword arguments of experiment ``name`` from the options given on the command line."""
    accepted = OPTIONS[name]
    given = {opt: getattr(args, opt) for opt in _ALL_OPTIONS if getattr(args, opt) is not None}
    if "clip" in accepted and ("clip" in given or "clip_range" in given):
        given.pop("clip_range", None)
        given["clip"] = _clip_sample(args)
    kwargs = {}
    for opt, value in given.items():
        if opt not in accepted:
            raise UsageError(f"--{opt.replace('_', '-')} does not apply to {name}")
        if opt == "steps" and name in ONE_STEPS:
            if len(value) != 1:
                raise UsageError(f"{name} takes one --steps value, got {len(value)}")
            value = value[0]
        kwargs[accepted[opt]] = value
    if name not in WITHOUT_MODEL:
        kwargs["progress"] = True
    return kwargs


def cmd_explore(args):
    from ..explore import EXPERIMENTS, run

    name = args.name
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if name == "schedule" and args.ckpt:
        raise UsageError("schedule takes no --ckpt: it plots the standard schedules (see --timesteps)")
    if name not in WITHOUT_MODEL and not args.ckpt:
        raise UsageError(f"{name} needs a model: pass --ckpt")
    kwargs = experiment_options(name, args)
    out = writable_dir(args.out)
    pipe = load_pipeline(args) if args.ckpt else None
    run(name, pipe, out, **kwargs)
    written = sorted(p.name for p in Path(out).glob(f"{name}*") if p.suffix in (".png", ".json", ".md"))
    print(f"wrote {', '.join(written)} to {out}\n")
    print((Path(out) / f"{name}.md").read_text())
