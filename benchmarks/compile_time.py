"""Compile time of whole-model against regional compilation, each with an empty and then a filled cache.

    python benchmarks/compile_time.py --preset tiny --batch 8       # on the CPU (about 3 minutes on 2 cores)

Each measurement runs in a fresh process with its own TorchInductor cache folder, so "cold" is an empty
on-disk cache and "warm" the same folder filled by the cold run. Reported: seconds of the first inference
call (compile included) and of a steady call, as JSON on stdout (and in --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import sys, time, torch
from ddimkit.models import create_model
from ddimkit.compiled_net import compile_regions
preset, batch, regional = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
m = create_model(preset).to(dev).eval()
c, s = m.config["in_channels"], m.config["sample_size"]
net = compile_regions(m, dynamic=False) if regional else torch.compile(m, dynamic=False)
x, t = torch.randn(batch, c, s, s, device=dev), torch.full((batch,), 500, device=dev)
def call():
    with torch.no_grad():
        net(x, t)
    if dev.type == "cuda":
        torch.cuda.synchronize()
t0 = time.perf_counter(); call(); first = time.perf_counter() - t0
t0 = time.perf_counter(); call(); steady = time.perf_counter() - t0
print(f"RESULT {first:.3f} {steady:.4f}")
"""


def measure(preset: str, batch: int, regional: bool, cache: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, preset, str(batch), "1" if regional else "0"], env=env,
                         capture_output=True, text=True, check=True).stdout
    first, steady = map(float, out.split("RESULT")[1].split())
    return {"first_call_s": first, "steady_call_s": steady, "process_s": round(time.perf_counter() - t0, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    res = {"preset": args.preset, "batch": args.batch, "torch": torch.__version__,
           "device": "cuda" if torch.cuda.is_available() else "cpu"}
    for mode in ("whole", "regional"):
        with tempfile.TemporaryDirectory() as cache:
            for state in ("cold", "warm"):
                res[f"{mode} {state}"] = measure(args.preset, args.batch, mode == "regional", cache)
                print(mode, state, res[f"{mode} {state}"], flush=True)
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
