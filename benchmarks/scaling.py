"""Sampling throughput on 1 and N processes: how well the split across processes scales.

    python benchmarks/scaling.py                         # CPU: 1 process, then 1 and 2 processes under torchrun
    python benchmarks/scaling.py --device cuda --nproc 1,8 --preset ddpm-cifar10 --num 4096 --batch-size 256

Every run samples the same ``--num`` images (DDIM, ``--steps`` steps, random weights of ``--preset``) with
``Pipeline.sample(seeds=..., distributed=True)`` under ``torchrun --standalone --nproc_per_node N`` and times it
between two barriers, after one warm-up batch, so start-up and loading are not counted. Reported: images/s
and the efficiency of the split, throughput(N) / (N x throughput(1)), both processes at the same threads per
process. The plain one-process run (the default thread count, no process group) is the baseline a user has
today. On a CPU the processes share the machine's cores: N processes x 1 thread can at best match one
process using N threads, so the honest CPU figure is the ratio to that baseline, not a speed-up. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def _pipe(args, device):
    import ddimkit as dk
    from ddimkit.models import create_model

    model = create_model(args.preset).to(device).eval()
    return dk.Pipeline(model, dk.NoiseSchedule.linear(), "epsilon", precision="bf16" if device.type == "cuda" else "fp32")


def worker(args) -> dict:
    """One timed sampling run in this process (all processes of a launch run it together)."""
    from ddimkit import distributed as D

    device = D.init(args.device)
    torch.manual_seed(0)
    pipe = _pipe(args, device)
    kw = dict(steps=args.steps, batch_size=args.batch_size)
    pipe.sample(seeds=range(args.batch_size * D.world_size()), distributed=True, **kw)  # warm-up
    D.barrier()
    t0 = time.perf_counter()
    x = pipe.sample(seeds=range(args.num), distributed=True, **kw)
    D.barrier()
    seconds = time.perf_counter() - t0
    return {"processes": D.world_size(), "threads_per_process": torch.get_num_threads(), "images": len(x),
            "seconds": seconds, "images_per_second": len(x) / seconds}


def launch(args, nproc: int | None) -> dict:
    """Run :func:`worker` plainly (``nproc=None``) or under torchrun, and read rank 0's result."""
    out = Path(args.out).with_suffix(f".{nproc or 'plain'}.part.json")
    own = [__file__, "--", "--worker", "--json", str(out), "--device", args.device, "--preset", args.preset,
           "--num", str(args.num), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    env = dict(os.environ)
    if nproc is None:
        cmd = [sys.executable, __file__, *own[2:]]
    else:
        env.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets too: one thread per process
        # "--" ends torchrun's options: it would read --num as an abbreviation of its --numa-binding.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *own]
    subprocess.run(cmd, env=env, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", default="1,2", help="process counts under torchrun (default: 1,2)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default="scaling.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = worker(args)
        from ddimkit import distributed as D

        if D.is_main():
            Path(args.json).write_text(json.dumps(result))
        return
    runs = [dict(launch(args, None), launcher="none")]
    for n in (int(v) for v in args.nproc.split(",")):
        runs.append(dict(launch(args, n), launcher="torchrun"))
    base = next((r for r in runs if r["launcher"] == "torchrun" and r["processes"] == 1), None)
    for r in runs:
        if base is not None and r["launcher"] == "torchrun":
            r["efficiency"] = r["images_per_second"] / (r["processes"] * base["images_per_second"])
        r["vs_plain_one_process"] = r["images_per_second"] / runs[0]["images_per_second"]
        print(f"{r['launcher']:>8}  {r['processes']} process(es) x {r['threads_per_process']} thread(s): "
              f"{r['images_per_second']:8.2f} img/s  ({r['seconds']:.2f} s)  vs plain: {r['vs_plain_one_process']:.2f}"
              + (f"  efficiency: {r['efficiency']:.2f}" if "efficiency" in r else ""), flush=True)
    info = {"device": args.device, "cpus": os.cpu_count(), "torch": torch.__version__, "preset": args.preset,
            "num": args.num, "steps": args.steps, "batch_size": args.batch_size,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    Path(args.out).write_text(json.dumps({"setup": info, "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
