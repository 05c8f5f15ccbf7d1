"""Where a trained network's deterministic sampler loses: η = 0 against η = 1 by step count, and split runs.

    python benchmarks/sampler_diagnosis.py --ckpt pretrained:mnist --classifier mnist --num 256
    python benchmarks/sampler_diagnosis.py --ckpt runs/x --only split --switch 700,400,150

Every cell starts from the same noise (seed 0, or ``--seed`` for the steps cells) and is scored by the shipped
classifier: the share of samples recognised with confidence ≥ 0.9, and the classes among them.

- ``steps``: DDIM η = 0 at 50, 200 and 1,000 steps (if they agree, the grid is not what limits η = 0),
  DDIM η = 1 at 50 and 200, and DDPM at 1,000 (``--cells`` picks others).
- ``split``: 100 DDIM steps, with η = 1 above a switch timestep and η = 0 below it, and the other way round.
  Where the noise helps, the deterministic path meets the network's errors.

On a class-conditional model every cell samples as ``Pipeline.sample`` does: image i asks for label i mod K,
guided at the model's own guidance scale.

- ``--average K``: the network's weights are the mean of the EMA weights of the run's last K checkpoints
  (a post-hoc stand-in for a longer EMA), to ask whether weight noise is what the deterministic path meets.

One JSON line per cell goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ddimkit as dk
from ddimkit import classifier as C
from ddimkit.checkpoint import checkpoint_dirs, mean_weights
from ddimkit.data import to_uint8
from ddimkit.denoiser import Denoiser
from ddimkit.guidance import conditioned
from ddimkit.noise import randn
from ddimkit.samplers import sample_ddim
from ddimkit.schedule import timesteps
from recipe_study import register_classes

STEP_CELLS = "ddim:50:0,ddim:200:0,ddim:1000:0,ddim:50:1,ddim:200:1,ddpm:1000"


def parse_cells(text: str) -> list[tuple[str, int, float | None]]:
    """``sampler:steps[:eta],...`` → [(sampler, steps, η or None)]."""
    cells = []
    for item in filter(None, text.split(",")):
        sampler, steps, *eta = item.split(":")
        cells.append((sampler, int(steps), float(eta[0]) if eta else None))
    return cells


def split_sample(pipe, n: int, switch: int, eta_high: float, eta_low: float, steps: int = 100) -> torch.Tensor:
    """DDIM on the pipeline's grid with η = ``eta_high`` for t ≥ ``switch`` and ``eta_low`` below it."""
    # the model's own sampling defaults, as Pipeline.sample applies them
    opts = pipe.sampling
    labels = pipe.class_labels(None, n)
    model = pipe.model if labels is None else conditioned(pipe.model, labels, opts["guidance_scale"], pipe.null_label)
    den = Denoiser(model, pipe.prediction_type, opts["clip_sample"], opts["thresholding"],
                   opts["sample_max_value"], opts["use_clipped_model_output"])
    grid = timesteps(pipe.schedule, steps, opts["spacing"], opts["steps_offset"])
    high, low = grid[grid >= switch], grid[grid < switch]
    ab = pipe.schedule.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x = randn((n, *pipe.image_shape), g)
    x = sample_ddim(den, x, ab, high, eta=eta_high, generator=g, final_alpha_cumprod=float(ab[low[0]]))
    final = 1.0 if opts["set_alpha_to_one"] else float(ab[0])
    return sample_ddim(den, x, ab, low, eta=eta_low, generator=g, final_alpha_cumprod=final).clamp(-1, 1)


def averaged_weights(run: str, k: int) -> dict[str, torch.Tensor]:
    """The mean of the EMA weights of the last ``k`` checkpoints of the run folder ``run``."""
    ckpts = checkpoint_dirs(run)
    if len(ckpts) < k:
        raise SystemExit(f"error: --average {k} needs {k} checkpoints in {run}/checkpoints, found {len(ckpts)}")
    return mean_weights(ckpts[-k:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="pretrained:mnist")
    ap.add_argument("--classifier", default="mnist", choices=list(C.CLASSIFIERS))
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--only", choices=("steps", "split"), default=None)
    ap.add_argument("--cells", default=STEP_CELLS, help="the steps cells, sampler:steps[:eta],...")
    ap.add_argument("--switch", default="700,400,150", help="switch timesteps of the split cells")
    ap.add_argument("--seed", type=int, default=0, help="seed of the steps cells' starting noise")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--average", type=int, default=1,
                    help="average the EMA weights of the run's last K checkpoints (--ckpt a run folder)")
    ap.add_argument("--out", default="runs/sampler_diagnosis.jsonl")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    register_classes()  # runs of the recipe study's own architectures load too
    pipe = dk.load(args.ckpt, device="cpu")
    if args.average > 1:
        pipe.model.load_state_dict(averaged_weights(args.ckpt, args.average))
    net = C.load_classifier(args.classifier)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def report(cell: dict, x: torch.Tensor, t0: float):
        r = C.recognition(net, to_uint8(x))
        cell.update(ckpt=args.ckpt, average=args.average, n=len(x), recognised=round(r.rate, 3),
                    classes=r.classes_seen, seconds=round(time.perf_counter() - t0, 1))
        print(json.dumps(cell), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(cell) + "\n")

    if args.only in (None, "steps"):
        for sampler, steps, eta in parse_cells(args.cells):
            t0 = time.perf_counter()
            kw = {} if eta is None else {"eta": eta}
            g = torch.Generator().manual_seed(args.seed)
            x = pipe.sample(args.num, sampler, steps=steps, generator=g, **kw)
            report(dict(sampler=sampler, steps=steps, eta=eta, seed=args.seed), x, t0)
    if args.only in (None, "split"):
        for switch in (int(s) for s in args.switch.split(",")):
            for eta_high, eta_low in ((1.0, 0.0), (0.0, 1.0)):
                t0 = time.perf_counter()
                x = split_sample(pipe, args.num, switch, eta_high, eta_low)
                report(dict(sampler="ddim-split", steps=100, switch=switch, eta_high=eta_high, eta_low=eta_low),
                       x, t0)


if __name__ == "__main__":
    main()
