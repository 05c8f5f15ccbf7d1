"""Sampling and training speed of ddimkit against diffusers, cold (a new process) and warm (steady state).

    python benchmarks/speed.py                      # on a GPU: the ddpm-cifar10 preset, batch 256 / 128
    python benchmarks/speed.py --quick              # a small CPU-sized run that checks everything (~1 minute)
    python benchmarks/speed.py --parts cold --cold-n 256,4096 --part-timeout 150

Parts (``--parts``, each under its own ``--part-timeout``; results are written to the JSON after every row,
so a timeout loses only the rest of that part):

- ``warm``: steady state after a warm-up call, as a long job sees it: DDIM-50 images/s for ddimkit's
  compiled path in bf16 and fp16 (with and without CUDA graphs), a bare ``torch.compile`` of the network
  without the padding wrapper, eager bf16/fp16/fp32, and diffusers' ``DDIMPipeline`` with an fp16 UNet
  (second: the machine's baseline) and in fp32 (when diffusers is installed).
- ``warm-train``: training images/s in steady state, ddimkit compiled and eager, diffusers fp32 and bf16.
- ``cold``: ``ddimkit sample`` in a new process, wall clock to N images (start-up, compile and writing
  included), for N in ``--cold-n``, with the default (``--compile auto``), ``--compile`` and
  ``--no-compile``, with TorchInductor's on-disk cache empty (a fresh folder) and filled (by the run before).
- ``train``: ``ddimkit train`` in a new process for ``--train-steps`` steps (default 200), wall clock
  (compile included), default against ``--compile`` and ``--no-compile``.

Both libraries run the same random weights (the preset's UNet, loaded into diffusers' UNet2DModel). Ratios
are the numbers to read: absolute times move with the machine. Writes JSON and a markdown table.
The cold parts are in ``speed_cold.py``, the JSON and markdown in ``speed_report.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import ddimkit as dk
from ddimkit.batching import forward_flops
from ddimkit.data import to_uint8
from ddimkit.models import create_model, diffusers_config_from_unet
from ddimkit.train_config import cpu_has_native_bf16

from speed_cold import cold_part, train_part
from speed_report import PartTimeout, check, write

# bf16 peak used for the "fraction of peak" column, by GPU name (TFLOP/s). For H100/H200 this is the ceiling
# the project's GPU notes give for this sampling task (about 1,270 img/s x 50 steps x 12.4 GFLOP), which is
# below the datasheet's dense bf16 figure for the SXM parts; the column is a fraction of that ceiling.
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, iters: int) -> float:
    """Seconds per call, after warm-up calls (compilation, autotuning, allocator)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def ddimkit_sampling(pipe, n, steps, seed=0):
    # batch_size=n is what the automatic batch picks for the benchmark's 256 on an H100; giving it skips the
    # automatic batch's FLOP count, which runs the network under FlopCounterMode's global module hooks. With
    # the count, a GPU session's bare torch.compile row ran at eager speed; whether it was the cause is open.
    return lambda: pipe.sample(n, "ddim", steps=steps, generator=torch.Generator().manual_seed(seed),
                               clip_sample=None, batch_size=n)


def diffusers_sampling(unet, n, steps, device, seed=0):
    import diffusers

    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000,
                                                                                clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return lambda: pipe(batch_size=n, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                        output_type="pt" if hasattr(pipe, "numpy_to_pil") else "np")


def training_step(model, batch, device, autocast_dtype=None, fused=False, compile_=False):
    """An AdamW ε-prediction step; returns a closure that runs one step."""
    schedule = dk.NoiseSchedule.linear()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
    net = torch.compile(model) if compile_ else model
    c, s = model.config["in_channels"], model.config["sample_size"]
    x0 = torch.randn(batch, c, s, s, device=device).clamp(-1, 1)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=device)

    def step():
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(
            device.type, enabled=False)
        with ctx:
            loss = dk.training_loss(net, x0, schedule, t, noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


PARTS = ("warm", "warm-train", "cold", "train")


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ddpm-cifar10")
    ap.add_argument("--batch", type=int, default=256, help="sampling batch")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=3, help="timed repetitions")
    ap.add_argument("--train-iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="warm-train rows take turns this many times")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: warm, warm-train, cold, train")
    ap.add_argument("--cold-n", type=int_list, default=[256, 4096, 50000], help="images per cold run")
    ap.add_argument("--cold-modes", default="default,compile,no-compile")
    ap.add_argument("--train-steps", type=int, default=200, help="steps of the cold training runs")
    ap.add_argument("--train-modes", default="default,compile,no-compile")
    ap.add_argument("--part-timeout", type=float, default=600, help="seconds per part")
    ap.add_argument("--work", default=None, help="folder for the checkpoint and caches (default: a temp folder)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a CPU check of the script")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/speed")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.batch, args.steps, args.train_batch, args.iters, args.train_iters = "tiny", 8, 5, 8, 1, 3
        # a forced CPU compile costs over a minute: --quick checks the cold machinery with the eager modes
        args.train_steps = 3
        if args.cold_n == ap.get_default("cold_n"):
            args.cold_n = [8]
        if args.cold_modes == ap.get_default("cold_modes"):
            args.cold_modes = "default,no-compile"
        if args.train_modes == ap.get_default("train_modes"):
            args.train_modes = "default,no-compile"
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (diffusers' figures were taken so)
        torch.backends.cudnn.allow_tf32 = False
    have_diffusers = not args.skip_diffusers and importlib.util.find_spec("diffusers") is not None
    torch.manual_seed(0)
    ours = create_model(args.preset).to(device).eval()
    c, s = ours.config["in_channels"], ours.config["sample_size"]
    flops = forward_flops(ours, torch.randn(1, c, s, s, device=device), torch.tensor([500], device=device))
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "CPU"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None) if cuda else None
    res = {"device": name, "torch": torch.__version__, "preset": args.preset,
           "params": sum(p.numel() for p in ours.parameters()), "gflop_per_forward": flops / 1e9,
           "sampling_batch": args.batch, "steps": args.steps, "train_batch": args.train_batch,
           "diffusers": have_diffusers, "sampling": {}, "training": {}, "cold_sampling": {}, "cold_training": {},
           "skipped": []}
    if peak:
        res["peak_bf16_tflops"] = peak
        res["sampling_ceiling_images_per_second"] = peak * 1e12 / (args.steps * flops)
    out = Path(args.out)
    work = Path(args.work or tempfile.mkdtemp(prefix="ddimkit-speed-"))
    for part in parts:
        deadline = time.perf_counter() + args.part_timeout
        try:
            if part == "warm":
                warm_part(args, res, out, ours, flops, device, have_diffusers, deadline)
            elif part == "warm-train":
                warm_train_part(args, res, out, device, have_diffusers, flops, deadline)
            elif part == "cold":
                cold_part(args, res, out, work, deadline)
            else:
                train_part(args, res, out, work, deadline)
        except PartTimeout as e:
            res["skipped"].append(f"{part}: time limit reached before {e}")
            print(f"{part}: time limit reached before {e}", flush=True)
        write(res, out)


def _diffusers_unet(ours, device):
    import diffusers

    cfg = {k: v for k, v in diffusers_config_from_unet(ours).items() if not k.startswith("_")}
    unet = diffusers.UNet2DModel(**cfg).to(device).eval()
    unet.load_state_dict(ours.state_dict())
    return unet


def warm_plan(ours, device, have_diffusers) -> list[tuple[str, Callable, bool]]:
    """The warm part's rows, most telling first: (label, a function making the Pipeline or diffusers UNet,
    CUDA graphs). On CUDA, after ddimkit's default, a diffusers fp16 row gives each session a baseline that
    does not depend on ddimkit's build, and a bare ``torch.compile`` row (the sampler's own stride-0
    timesteps, no padding wrapper: how compiled sampling ran before it) isolates the wrapper's cost."""
    sched = dk.NoiseSchedule.linear()

    def ddimkit(precision, compiled, model=None):
        return lambda: dk.Pipeline(model() if model else ours, sched, "epsilon", precision=precision,
                                   compile=compiled)

    if device.type != "cuda":
        rows = [("ddimkit eager fp32", ddimkit("fp32", False), False)]
        return rows + ([("diffusers DDIMPipeline fp32", lambda: _diffusers_unet(ours, device), False)]
                       if have_diffusers else [])
    rows = [("ddimkit compiled bf16 + CUDA graphs", ddimkit("bf16", True), True)]
    if have_diffusers:
        rows.append(("diffusers DDIMPipeline fp16 UNet", lambda: _diffusers_unet(ours, device).half(), False))
    rows += [("ddimkit compiled bf16", ddimkit("bf16", True), False),
             ("ddimkit bare torch.compile bf16 (no padding wrapper)",
              ddimkit("bf16", False, lambda: torch.compile(ours)), False),
             ("ddimkit eager bf16", ddimkit("bf16", False), False),
             ("ddimkit eager fp16", ddimkit("fp16", False), False),
             ("ddimkit compiled fp16 + CUDA graphs", ddimkit("fp16", True), True),
             ("ddimkit eager fp32", ddimkit("fp32", False), False)]
    if have_diffusers:
        rows.append(("diffusers DDIMPipeline fp32", lambda: _diffusers_unet(ours, device), False))
    return rows


def warm_part(args, res, out, ours, flops, device, have_diffusers, deadline):
    cuda = device.type == "cuda"
    made = {}
    for label, make, graphs in warm_plan(ours, device, have_diffusers):
        check(deadline, label)
        # Every row compiles the same UNet.forward: without a reset, Dynamo's per-function recompile limit
        # (8) can fill up and later "compiled" rows silently run eager (a GPU session saw
        # compiled fp16 + CUDA graphs at 116 img/s, below eager bf16).
        torch._dynamo.reset()
        os.environ["DDIMKIT_CUDA_GRAPHS"] = "1" if graphs else "0"  # read when the pipeline compiles
        made[label] = m = make()
        fn = (ddimkit_sampling(m, args.batch, args.steps) if label.startswith("ddimkit")
              else diffusers_sampling(m, args.batch, args.steps, device))
        iters = 1 if "fp32" in label and cuda else args.iters  # fp32 is 10x slower: one call says enough
        sec = timed(fn, device, warmup=1, iters=iters)
        _sampling_row(res, label, args, sec, flops)
        write(res, out)
    os.environ.pop("DDIMKIT_CUDA_GRAPHS", None)
    fast = next(iter(made))
    a = to_uint8(ddimkit_sampling(made[fast], args.batch, args.steps)()).int()
    b = to_uint8(ddimkit_sampling(made["ddimkit eager fp32"], args.batch, args.steps)()).int()
    res["fast_path_pixel_diff"] = {"path": fast, "max": int((a - b).abs().max()),
                                   "mean": float((a - b).abs().float().mean())}


def cpu_training_rows(args, device) -> dict:
    """The CPU's ddimkit rows, fp32 first: each precision eager and compiled. TorchInductor compiles on the CPU
    too, so its warm step against eager says what a long CPU run could gain; ``--quick``, whose CPU check
    skips every forced compile, times eager only. bf16 autocast is only worth timing where the CPU computes in
    bf16 (elsewhere it is emulated)."""
    precisions = [("fp32", None)] + ([("bf16 autocast", torch.bfloat16)] if cpu_has_native_bf16() else [])
    rows = {}
    for name, dtype in precisions:
        for compiled in (False,) if args.quick else (False, True):
            rows[f"ddimkit ({name}{', compile' if compiled else ''})"] = lambda dtype=dtype, compiled=compiled: (
                training_step(create_model(args.preset).to(device), args.train_batch, device, dtype, False, compiled))
    return rows


def warm_train_part(args, res, out, device, have_diffusers, flops, deadline):
    """Training images/s in steady state (after 3 warm-up steps, the compile included there)."""
    cuda = device.type == "cuda"
    bf16 = torch.bfloat16 if cuda else None
    if cuda:
        train_runs = {
            "ddimkit (bf16, fused AdamW, compile)": lambda: training_step(
                create_model(args.preset).to(device), args.train_batch, device, bf16, True, True),
            "ddimkit (bf16, fused AdamW, eager)": lambda: training_step(
                create_model(args.preset).to(device), args.train_batch, device, bf16, True, False)}
    else:
        train_runs = cpu_training_rows(args, device)
    if have_diffusers:
        import diffusers

        cfg = {k: v for k, v in diffusers_config_from_unet(create_model(args.preset)).items()
               if not k.startswith("_")}
        for label, dtype in [("diffusers UNet2DModel fp32", None)] + (
                [("diffusers UNet2DModel bf16 autocast", bf16)] if cuda else []):
            train_runs[label] = lambda dtype=dtype: training_step(diffusers.UNet2DModel(**cfg).to(device).train(),
                                                                  args.train_batch, device, dtype)
    # The rows take turns, round after round, so that a machine whose speed drifts (other jobs, clocks) moves
    # them all alike; each row reports its median, and every row its per-round ratio to the first row.
    steps, rounds = {}, {label: [] for label in train_runs}
    for r in range(args.rounds):
        for label, make in train_runs.items():
            check(deadline, label)
            if label not in steps:
                steps[label] = make()
            sec = timed(steps[label], device, warmup=3 if r == 0 else 1, iters=args.train_iters)
            rounds[label].append(args.train_batch / sec)
            ips = statistics.median(rounds[label])
            first = rounds[next(iter(train_runs))]
            ratios = [a / b for a, b in zip(rounds[label], first)]
            res["training"][label] = {"images_per_second": ips, "tflops": ips * 3 * flops / 1e12,
                                      "rounds": rounds[label], "ratio_to_first_row": statistics.median(ratios)}
            print(f"training  {label:40s} {rounds[label][-1]:10.1f} img/s (round {r + 1}; median ratio to the "
                  f"first row {statistics.median(ratios):.3f})", flush=True)
            write(res, out)


def _sampling_row(res, label, args, sec, flops):
    ips = args.batch / sec
    res["sampling"][label] = {"images_per_second": ips, "tflops": ips * args.steps * flops / 1e12}
    print(f"sampling  {label:40s} {ips:10.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
