"""The forward process: the four beta schedules, and real images noised by DDPM and by the toy ``corrupt``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..diffusion import add_noise
from ..noise import randn
from ..schedule import NoiseSchedule
from ..toy import corrupt
from ..viz import _pyplot, labelled_grid, save_figure
from .common import SCHEDULES, _folder, _gen, _non_empty, _table, _finish, _data_spec, _real_images


def _schedule_row(s: NoiseSchedule) -> dict:
    ab = s.alphas_cumprod
    lam = s.snr.log()
    # Signal and noise weigh the same where ᾱ_t = 1/2 (SNR = 1).
    half = int((ab <= 0.5).nonzero()[0]) if bool((ab <= 0.5).any()) else None
    return {"sqrt_alpha_bar_first": float(ab[0].sqrt()), "sqrt_alpha_bar_last": float(ab[-1].sqrt()),
            "sqrt_one_minus_alpha_bar_first": float((1 - ab[0]).sqrt()),
            "sqrt_one_minus_alpha_bar_last": float((1 - ab[-1]).sqrt()),
            "log_snr_first": float(lam[0]), "log_snr_last": float(lam[-1]), "t_snr_1": half}


def _plot_schedules(schedules: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, s) in enumerate(schedules.items()):
        t, ab, color = torch.arange(s.num_train_timesteps).numpy(), s.alphas_cumprod, f"C{k}"
        left.plot(t, ab.sqrt().numpy(), color=color, label=name)
        left.plot(t, (1 - ab).sqrt().numpy(), color=color, ls="--")
        right.plot(t, s.snr.log().numpy(), color=color, label=name)
    left.set_title(r"signal $\sqrt{\bar\alpha_t}$ (solid) and noise $\sqrt{1-\bar\alpha_t}$ (dashed)")
    right.set_title(r"log-SNR $= \log(\bar\alpha_t / (1-\bar\alpha_t))$")
    for ax in (left, right):
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="center right")
    right.legend(fontsize=8)
    return save_figure(fig, path)


def schedule(out, num_train_timesteps: int = 1000, schedules: Sequence[str] = SCHEDULES) -> dict:
    """√ᾱ_t and √(1-ᾱ_t) against t for each beta schedule (the from-scratch note's plot), and log-SNR.

    In x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε (DDPM eq. 4) these are the weights of the image and of the noise; unlike
    the toy ``corrupt`` (a linear mix), the linear-β schedule destroys the signal early. Writes ``schedule.png``.
    """
    out = _folder(out)
    made = {name: NoiseSchedule.from_name(name, num_train_timesteps) for name in _non_empty(schedules, "schedules")}
    _plot_schedules(made, out / "schedule.png")
    numbers = {"num_train_timesteps": num_train_timesteps, "schedules": {n: _schedule_row(s) for n, s in made.items()}}
    last = num_train_timesteps - 1
    rows = [(n, r["sqrt_alpha_bar_first"], r["sqrt_alpha_bar_last"], r["sqrt_one_minus_alpha_bar_last"],
             r["log_snr_first"], r["log_snr_last"], r["t_snr_1"]) for n, r in numbers["schedules"].items()]
    header = ("schedule", "√ᾱ_0", f"√ᾱ_{last}", f"√(1-ᾱ_{last})", "log-SNR_0", f"log-SNR_{last}", "t where SNR = 1")
    return _finish(out, "schedule", numbers, f"Noise schedules (T = {num_train_timesteps})", _table(header, rows))


# -- noising ----------------------------------------------------------------------------------------------

def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def noising(pipe, out, data: str | None = None, num: int = 8, seed: int = 0) -> dict:
    """Image k noised at the k-th of ``num`` evenly spaced t (DDPM forward process, ``add_noise``) and, for
    comparison, by the toy ``corrupt`` at amount k/(num-1) (the from-scratch note's two figures).

    ``pipe`` gives the schedule and image size (``None``: the linear schedule, native size). The images are
    the model's training data unless ``data`` names others (default without a model: ``mnist-5k``).
    The numbers are the weights √ᾱ_t, √(1-ᾱ_t) and the measured correlation of each noisy image with its
    clean one, for both processes. Writes ``noising.png``.
    """
    out = _folder(out)
    sched = pipe.schedule if pipe is not None else NoiseSchedule.linear()
    x0, picked = _real_images(pipe, data, num, "noising", fallback="mnist-5k")
    T = sched.num_train_timesteps
    t = torch.linspace(0, T - 1, num, dtype=torch.float64).round().long()
    amount = torch.linspace(0, 1, num)
    g = _gen(seed)
    # DDPM's noise is Gaussian (randn); the toy mixes [0, 1] images with uniform noise (rand).
    x_t = add_noise(sched, x0, randn(x0.shape, g), t)
    toy = corrupt((x0 + 1) / 2, amount, g) * 2 - 1
    labels = [f"t={int(ti)}, a={float(a):.2f}" for ti, a in zip(t, amount)]
    labelled_grid([x0, x_t, toy], ["clean x0", "DDPM x_t (clipped)", "toy corrupt"], labels, out / "noising.png",
                  title="DDPM forward process at t vs the toy corrupt at amount a", cell=1.25)
    ab = sched.alphas_cumprod[t]
    rows = [{"t": int(t[k]), "sqrt_alpha_bar": float(ab[k].sqrt()),
             "sqrt_one_minus_alpha_bar": float((1 - ab[k]).sqrt()), "corr_ddpm": _corr(x0[k], x_t[k]),
             "amount": float(amount[k]), "corr_toy": _corr(x0[k], toy[k])} for k in range(num)]
    numbers = {"schedule": sched.config.get("kind"), "num_train_timesteps": T, "seed": seed,
               "data": _data_spec(pipe, data) or "mnist-5k", "indices": picked, "rows": rows}
    table = _table(("t", "√ᾱ_t", "√(1-ᾱ_t)", "corr(x_t, x0)", "toy amount", "corr(toy, x0)"),
                   [(r["t"], r["sqrt_alpha_bar"], r["sqrt_one_minus_alpha_bar"], r["corr_ddpm"], r["amount"],
                     r["corr_toy"]) for r in rows])
    return _finish(out, "noising", numbers, "Forward process: DDPM noising vs the toy corrupt", table)
