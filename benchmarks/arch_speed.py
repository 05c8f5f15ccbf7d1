"""Training cost per image of the UNet variants of the recipe study, side by side in one process.

    OMP_NUM_THREADS=1 python benchmarks/arch_speed.py

Each variant takes three AdamW steps at batch 128 on random images, three rounds interleaved; the best round
of each is reported, and its ratio to ``tiny``. Read the ratios: absolute speeds move with the machine's load.
"""

from __future__ import annotations

import time

import torch

from ddimkit.diffusion import training_loss
from ddimkit.models import create_model
from ddimkit.schedule import NoiseSchedule
from recipe_study import ARCHS, register_arch


def images_per_second(name: str, batch: int = 128, steps: int = 3) -> float:
    torch.manual_seed(0)
    model = create_model(name)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    schedule = NoiseSchedule.linear()
    x = torch.randn(batch, 1, 28, 28)
    for i in range(steps + 1):  # the first step warms up the allocator and oneDNN's kernels
        if i == 1:
            t0 = time.perf_counter()
        t = torch.randint(0, 1000, (batch,))
        loss = training_loss(model, x, schedule, t, torch.randn_like(x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main():
    torch.set_num_threads(1)
    names = ["tiny"] + [register_arch(a) for a in ARCHS]
    best = {n: 0.0 for n in names}
    for _ in range(3):
        for n in names:
            best[n] = max(best[n], images_per_second(n))
    for n in names:
        params = sum(p.numel() for p in create_model(n).parameters())
        print(f"{n:18s} {params:9,d} params  {best[n]:6.0f} img/s  {best[n] / best['tiny']:.2f} of tiny")


if __name__ == "__main__":
    main()
