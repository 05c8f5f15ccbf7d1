"""The speed benchmark's results: JSON and a markdown table written after every row, and part deadlines."""

from __future__ import annotations

import json
import time
from pathlib import Path


class PartTimeout(Exception):
    """The part's time limit passed; the message names the first row not measured."""


def check(deadline: float, row: str):
    if time.perf_counter() > deadline:
        raise PartTimeout(row)


def write(res: dict, out: Path):
    """Write the JSON and a markdown table of what has been measured so far."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    peak = res.get("peak_bf16_tflops")
    lines = [f"Device: {res['device']}, torch {res['torch']}; {res['preset']} ({res['params']:,} parameters, "
             f"{res['gflop_per_forward']:.2f} GFLOP per forward)", "",
             "Warm (steady state after a warm-up call):", "",
             "| task | implementation | images/s | TFLOP/s | " + ("% of bf16 peak |" if peak else ""),
             "|---|---|---|---|" + ("---|" if peak else "")]
    for task, key, extra in (("sampling", "sampling", f"DDIM-{res['steps']}, batch {res['sampling_batch']}"),
                             ("training", "training", f"batch {res['train_batch']}")):
        for label, v in res[key].items():
            pct = f" {100 * v['tflops'] / peak:.1f} |" if peak else ""
            lines.append(f"| {task} ({extra}) | {label} | {v['images_per_second']:.1f} | {v['tflops']:.2f} |{pct}")
    for key, title in (("cold_sampling", f"Cold `ddimkit sample` (new process, DDIM-{res['steps']})"),
                       ("cold_training", "Cold `ddimkit train` (new process, compile included)")):
        if res[key]:
            lines += ["", f"{title}:", "", "| run | wall s | images/s | recompiles |", "|---|---|---|---|"]
            for label, v in res[key].items():
                wall = v.get("wall_s", f"timeout {v.get('timeout_s')}")
                note = f" (exit {v['returncode']}: {v.get('error', '')})" if v.get("returncode") else ""
                lines.append(f"| {label}{note} | {wall} | {v.get('images_per_second', '')} | "
                             f"{v.get('recompiles', '')} |")
    d = res.get("fast_path_pixel_diff")
    if d:
        lines += ["", f"{d['path']} vs eager fp32, same seeds: max pixel difference {d['max']} / 255, "
                      f"mean {d['mean']:.3f}."]
    if peak:
        lines.append(f"FLOP ceiling for this sampling task: {res['sampling_ceiling_images_per_second']:.0f} images/s.")
    lines += [f"Not measured: {s}" for s in res.get("skipped", [])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
