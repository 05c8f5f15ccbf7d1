"""Sampling and training speed of ddimkit against diffusers, measured side by side in one run.

    python benchmarks/speed.py                      # on a GPU: the ddpm-cifar10 preset, batch 256 / 128
    python benchmarks/speed.py --quick              # a small CPU-sized run that checks everything works

Both libraries run the same random weights (the preset's UNet, loaded into diffusers' UNet2DModel).
Reported: sampling images/s at DDIM-50 (ddimkit fast path, ddimkit fp32, diffusers DDIMPipeline fp32 and
with an fp16 UNet), training images/s (ddimkit vs diffusers' UNet2DModel in fp32 and bf16 autocast, AdamW,
ε-prediction), TFLOP/s achieved against the GPU's bf16 peak, and how far the fast path's images are from
fp32 images of the same seeds. Ratios are the numbers to read: absolute times move with the machine.
Writes JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import ddimkit as dk
from ddimkit.data import to_uint8
from ddimkit.models import create_model, diffusers_config_from_unet

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


def forward_flops(model, x, t) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t)
    return float(counter.get_total_flops())


def ddimkit_sampling(pipe, n, steps, seed=0):
    return lambda: pipe.sample(n, "ddim", steps=steps, generator=torch.Generator().manual_seed(seed),
                               clip_sample=None)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ddpm-cifar10")
    ap.add_argument("--batch", type=int, default=256, help="sampling batch")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=3, help="timed repetitions")
    ap.add_argument("--train-iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a CPU check of the script")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/speed")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.batch, args.steps, args.train_batch, args.iters, args.train_iters = "tiny", 8, 5, 8, 1, 3
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (diffusers' figures were taken so)
        torch.backends.cudnn.allow_tf32 = False

    torch.manual_seed(0)
    ours = create_model(args.preset).to(device).eval()
    c, s = ours.config["in_channels"], ours.config["sample_size"]
    flops = forward_flops(ours, torch.randn(1, c, s, s, device=device), torch.tensor([500], device=device))
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "CPU"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None) if cuda else None
    res = {"device": name, "torch": torch.__version__, "preset": args.preset,
           "params": sum(p.numel() for p in ours.parameters()), "gflop_per_forward": flops / 1e9,
           "sampling_batch": args.batch, "steps": args.steps, "train_batch": args.train_batch,
           "sampling": {}, "training": {}}
    sched = dk.NoiseSchedule.linear()

    # -- sampling ------------------------------------------------------------------------------------
    fp32 = dk.Pipeline(ours, sched, "epsilon", precision="fp32")
    fast = dk.Pipeline(ours, sched, "epsilon", precision="bf16" if cuda else "fp32", compile=cuda)
    runs = {"ddimkit fast path": ddimkit_sampling(fast, args.batch, args.steps),
            "ddimkit fp32": ddimkit_sampling(fp32, args.batch, args.steps)}
    unet = None
    if not args.skip_diffusers:
        import diffusers

        cfg = {k: v for k, v in diffusers_config_from_unet(ours).items() if not k.startswith("_")}
        unet = diffusers.UNet2DModel(**cfg).to(device).eval()
        unet.load_state_dict(ours.state_dict())
        runs["diffusers DDIMPipeline fp32"] = diffusers_sampling(unet, args.batch, args.steps, device)
        if cuda:
            import copy

            runs["diffusers DDIMPipeline fp16 UNet"] = diffusers_sampling(copy.deepcopy(unet).half(), args.batch,
                                                                          args.steps, device)
    for label, fn in runs.items():
        sec = timed(fn, device, warmup=1, iters=args.iters)
        ips = args.batch / sec
        res["sampling"][label] = {"images_per_second": ips,
                                  "tflops": ips * args.steps * flops / 1e12}
        print(f"sampling  {label:34s} {ips:10.1f} img/s", flush=True)

    # fast path faithfulness: the same seeds through both paths
    a, b = to_uint8(runs["ddimkit fast path"]()).int(), to_uint8(runs["ddimkit fp32"]()).int()
    res["fast_path_pixel_diff"] = {"max": int((a - b).abs().max()), "mean": float((a - b).abs().float().mean())}

    # -- training ------------------------------------------------------------------------------------
    bf16 = torch.bfloat16 if cuda else None
    train_runs = {"ddimkit (bf16, fused AdamW, compile)" if cuda else "ddimkit (fp32)":
                  training_step(create_model(args.preset).to(device), args.train_batch, device, bf16, cuda, cuda)}
    if unet is not None:
        variants = [("diffusers UNet2DModel fp32", None)] + ([("diffusers UNet2DModel bf16 autocast", bf16)] if cuda
                                                             else [])
        for label, dtype in variants:
            d_unet = diffusers.UNet2DModel(**cfg).to(device).train()
            train_runs[label] = training_step(d_unet, args.train_batch, device, dtype)
    for label, fn in train_runs.items():
        sec = timed(fn, device, warmup=3, iters=args.train_iters)
        ips = args.train_batch / sec
        res["training"][label] = {"images_per_second": ips, "tflops": ips * 3 * flops / 1e12}
        print(f"training  {label:34s} {ips:10.1f} img/s", flush=True)

    if peak:
        res["peak_bf16_tflops"] = peak
        res["sampling_ceiling_images_per_second"] = peak * 1e12 / (args.steps * flops)
    write(res, Path(args.out))


def write(res: dict, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    peak = res.get("peak_bf16_tflops")
    lines = [f"Device: {res['device']}, torch {res['torch']}; {res['preset']} ({res['params']:,} parameters, "
             f"{res['gflop_per_forward']:.2f} GFLOP per forward)", "",
             f"| task | implementation | images/s | TFLOP/s | " + ("% of bf16 peak |" if peak else ""),
             "|---|---|---|---|" + ("---|" if peak else "")]
    for task, key, extra in (("sampling", "sampling", f"DDIM-{res['steps']}, batch {res['sampling_batch']}"),
                             ("training", "training", f"batch {res['train_batch']}")):
        for label, v in res[key].items():
            pct = f" {100 * v['tflops'] / peak:.1f} |" if peak else ""
            lines.append(f"| {task} ({extra}) | {label} | {v['images_per_second']:.1f} | {v['tflops']:.2f} |{pct}")
    d = res["fast_path_pixel_diff"]
    lines += ["", f"Fast path vs fp32, same seeds: max pixel difference {d['max']} / 255, mean {d['mean']:.3f}."]
    if peak:
        lines.append(f"FLOP ceiling for this sampling task: {res['sampling_ceiling_images_per_second']:.0f} images/s.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
