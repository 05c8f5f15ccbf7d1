"""The speed benchmark's cold parts: ``ddimkit sample`` and ``ddimkit train`` in new processes, wall clock to
the result with start-up and compilation included, with TorchInductor's cache empty or filled."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ddimkit as dk
from ddimkit.models import create_model
from speed_report import check, write


def make_checkpoint(preset: str, work: Path) -> Path:
    """A run folder with the preset's random weights (one eager training step on the bundled digits)."""
    run = work / f"ckpt-{preset}"
    if (run / "latest").is_file():
        return run
    m = create_model(preset)
    dk.train(dk.TrainConfig(data="mnist-5k", model=preset, out=str(run), steps=1, batch_size=8,
                            channels=m.config["in_channels"], image_size=m.config["sample_size"], compile=False,
                            save_every=0, sample_every=0, num_sample_images=0), progress=False)
    return run


def _run_cli(argv: list[str], cache: Path, timeout: float) -> dict:
    """Wall clock of one ``ddimkit`` command in a new process, with its own TorchInductor cache folder."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TORCH_LOGS": "recompiles"}
    env.pop("DDIMKIT_CUDA_GRAPHS", None)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "ddimkit", *argv], env=env, capture_output=True, text=True,
                           timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        return {"timeout_s": round(timeout, 1)}
    wall = time.perf_counter() - t0
    row = {"wall_s": round(wall, 2), "returncode": p.returncode,
           "recompiles": p.stderr.count("Recompiling function")}
    if p.returncode:
        row["error"] = p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else ""
    return row


_MODE_FLAGS = {"default": [], "compile": ["--compile"], "no-compile": ["--no-compile"]}


def cold_part(args, res, out, work, deadline):
    """``ddimkit sample`` in new processes: each N with an empty cache, then again with the cache filled."""
    ckpt = make_checkpoint(args.preset, work)
    modes = [m for m in args.cold_modes.split(",") if m]
    for n in args.cold_n:
        filled = work / f"cache-filled-{n}"
        shutil.rmtree(filled, ignore_errors=True)
        # --compile with an empty cache fills `filled`; the rows after it read that cache.
        plan = [(m, "empty") for m in modes if m != "default"] + [("default", "empty")] * ("default" in modes)
        # Only a --compile run fills the cache; without one a "filled" row would read an empty folder.
        plan += [(m, "filled") for m in modes if m != "no-compile"] * ("compile" in modes)
        for mode, cache_state in plan:
            row_name = f"N={n} {mode} cache {cache_state}"
            check(deadline, row_name)
            cache = filled if (mode == "compile" and cache_state == "empty") or cache_state == "filled" else \
                Path(tempfile.mkdtemp(prefix="empty-", dir=work))
            argv = ["sample", "--ckpt", str(ckpt), "--num", str(n), "--steps", str(args.steps), "--sampler", "ddim",
                    "--out", str(work / f"cold-{n}.npz"), *_MODE_FLAGS[mode]]
            row = _run_cli(argv, cache, deadline - time.perf_counter())
            if "wall_s" in row:
                row["images_per_second"] = round(n / row["wall_s"], 1)
            res["cold_sampling"][row_name] = row
            print(f"cold      {row_name:40s} {row}", flush=True)
            write(res, out)


def train_part(args, res, out, work, deadline):
    """``ddimkit train`` for the first ``--train-steps`` steps in new processes: compile included."""
    m = create_model(args.preset)
    for mode in [m for m in args.train_modes.split(",") if m]:
        row_name = f"{args.train_steps} steps {mode}"
        check(deadline, row_name)
        run = work / f"train-{mode}"
        shutil.rmtree(run, ignore_errors=True)
        argv = ["train", "--model", args.preset, "--data", "mnist-5k", "--out", str(run), "--steps",
                str(args.train_steps), "--batch-size", str(args.train_batch), "--image-size",
                str(m.config["sample_size"]), "--channels", str(m.config["in_channels"]), "--save-every", "0",
                "--sample-every", "0", "--num-sample-images", "0", *_MODE_FLAGS[mode]]
        row = _run_cli(argv, Path(tempfile.mkdtemp(prefix="train-cache-", dir=work)), deadline - time.perf_counter())
        if "wall_s" in row:
            row["images_per_second"] = round(args.train_steps * args.train_batch / row["wall_s"], 1)
        res["cold_training"][row_name] = row
        print(f"cold      {row_name:40s} {row}", flush=True)
        write(res, out)
