"""The notes' experiments as functions: each writes its figure(s), ``NAME.json`` and ``NAME.md`` into a folder.

======================  ==============================================================================
``schedule``            √ᾱ_t, √(1-ᾱ_t) and log-SNR against t for the four beta schedules (from-scratch note)
``noising``             real images through the DDPM forward process and through the toy ``corrupt``
``trajectory``          x_t and x̂0 along DDPM and DDIM sampling (the DDPM note's all_images / all_x_0)
``eta-vs-ddpm``         DDIM(η = 1, full grid) against DDPM, clipping off and on; σ² in float32 (DDIM note)
``steps-grid``          the DDIM note's η × steps grid from one seed
``determinism``         one x_T, two generators: η = 0 ignores the generator, η > 0 does not
``reconstruction``      invert → reconstruct per step count, plain and with fixed-point refinement (DDIM Table 2)
``interpolation``       slerp (and lerp, for contrast) between two seeds and between two inverted images
======================  ==============================================================================

Each function takes a :class:`~ddimkit.pipeline.Pipeline` (``schedule`` takes none, ``noising`` may take
``None``), the output folder and its options, and returns the numbers it wrote to ``NAME.json``.
``ddimkit explore NAME`` runs them from the command line; :func:`run` dispatches by name.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .checkpoint import atomic_write, write_json
from .data import convert_channels, fit_images, load_images, to_model_range
from .diffusion import add_noise
from .evaluate import round_trip
from .interpolate import lerp, slerp
from .metrics import reconstruction_mse
from .noise import randn
from .schedule import NoiseSchedule
from .toy import corrupt
from .viz import _pyplot, labelled_grid, plot_trajectory, save_figure

__all__ = ["EXPERIMENTS", "SCHEDULES", "ALPHAS", "run", "schedule", "noising", "trajectory", "eta_vs_ddpm",
           "variance_precision", "steps_grid", "determinism", "reconstruction", "interpolation"]

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")
ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


# -- shared helpers ---------------------------------------------------------------------------------------

def _folder(out) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _noise(pipe, seed: int, n: int = 1) -> torch.Tensor:
    """Starting noise (n, C, H, W) drawn as ``pipe.sample(n, generator=...)`` draws it from the same seed."""
    return randn((n, *pipe.image_shape), _gen(seed))


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.double() - b.double()).abs()
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean())}


def _rms01(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference on the [0, 1] scale of images in [-1, 1]."""
    return float(reconstruction_mse(a, b).mean().sqrt())


def _diff_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| shown on a fixed scale (black = equal, white = 2), so float-level noise stays black."""
    return (a - b).abs() - 1


def _show_noise(z: torch.Tensor) -> torch.Tensor:
    """Noise of spread ~1 squeezed into [-1, 1] for display (as viz.plot_trajectory shows x_t)."""
    return z / max(1.0, float(z.abs().max()))


def _two(values: Sequence, what: str) -> tuple:
    values = tuple(values)
    if len(values) != 2:
        raise ValueError(f"{what} needs exactly two values, got {len(values)}")
    return values


def _non_empty(values: Sequence, what: str) -> tuple:
    values = tuple(values)
    if not values:
        raise ValueError(f"{what} needs at least one value")
    return values


def _cell(v) -> str:
    if isinstance(v, float):
        return "0" if v == 0 else f"{v:.5g}"
    return str(v).replace("|", "\\|")  # a bare | would end the markdown cell


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; floats get five significant digits."""
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _finish(out: Path, name: str, numbers: dict, title: str, *sections: str) -> dict:
    """Write NAME.json (the numbers) and NAME.md (a title and small tables to paste), return the numbers."""
    write_json(out / f"{name}.json", numbers)
    text = f"### {title}\n\n" + "\n".join(sections)
    atomic_write(out / f"{name}.md", lambda p: p.write_text(text))
    return numbers


def _data_spec(pipe, data: str | None) -> str | None:
    if data:
        return data
    return ((pipe.config or {}).get("data") or {}).get("spec") if pipe is not None else None


def _real_images(pipe, data: str | None, num: int, what: str, fallback: str | None = None,
                 indices: Sequence[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Real images in [-1, 1] fitted to the model, and their indices: ``indices`` of the dataset, or ``num``
    spread evenly over it.

    The dataset is ``data``, else the model's training data, else ``fallback``. Spreading the picks (rather
    than taking the first ``num``) shows several classes of a dataset stored sorted by class.
    """
    spec = _data_spec(pipe, data) or fallback
    if spec is None:
        raise ValueError(f"{what} needs images and this checkpoint names no dataset; pass --data (e.g. folder:PATH)")
    try:
        x = load_images(spec)
    except (ValueError, OSError) as e:
        raise ValueError(f"{what} cannot load the images {spec!r}: {e}") from None
    if indices is None:
        if len(x) < num:
            raise ValueError(f"{what} needs {num} images; {spec!r} has {len(x)}")
        indices = _spread(len(x), num)
    elif max(indices) >= len(x):
        raise ValueError(f"{what}: image index {max(indices)} is out of range; {spec!r} has {len(x)} images")
    x = x[list(indices)]
    if pipe is not None:
        c, h, w = pipe.image_shape
        if h != w:
            raise ValueError(f"{what} supports square models only; this one takes {h}x{w}")
        x = fit_images(convert_channels(x, c, spec), h)
    return to_model_range(x), list(indices)


class _Recorder:
    """A sampler callback that keeps x_t and x̂0 of the first sample at the chosen step indices."""

    def __init__(self, keep: Sequence[int]):
        self.keep = set(keep)
        self.steps: list[dict] = []

    def __call__(self, d: dict):
        if d["i"] in self.keep:
            self.steps.append({"i": d["i"], "t": d["t"], "x": d["x"][:1].float().cpu(),
                               "x0": d["x0"][:1].float().cpu()})


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included."""
    k = min(k, n)
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


# -- schedule ---------------------------------------------------------------------------------------------

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


# -- trajectory -------------------------------------------------------------------------------------------

def _trajectory_rows(record: _Recorder, final: torch.Tensor) -> list[dict]:
    return [{"i": d["i"], "t": d["t"], "x_t_std": float(d["x"].std()),
             "x0_rms_to_final": _rms01(d["x0"].clamp(-1, 1), final[:1])} for d in record.steps]


def trajectory(pipe, out, seed: int = 0, ddpm_steps: int | None = None, ddim_steps: int = 50, points: int = 10,
               clip_sample="config", progress: bool = False) -> dict:
    """x_t and the prediction x̂0 at ``points`` steps of DDPM (default: all T steps) and of DDIM (η = 0), one seed.

    The DDPM note's ``all_images`` / ``all_x_0``: x̂0 shows the image long before x_t does. The numbers give,
    per recorded step, the spread of x_t and how far x̂0 still is from the final sample (RMS, [0, 1] scale).
    Writes ``trajectory-ddpm.png`` and ``trajectory-ddim.png``.
    """
    out = _folder(out)
    numbers = {"seed": seed}
    for sampler, steps in (("ddpm", ddpm_steps or pipe.schedule.num_train_timesteps), ("ddim", ddim_steps)):
        record = _Recorder(_spread(steps, points))
        # A fresh generator per sampler: the same x_T for both (drawn first), as in the notes.
        final = pipe.sample(1, sampler=sampler, steps=steps, clip_sample=clip_sample, generator=_gen(seed),
                            callback=record, progress=progress)
        plot_trajectory(record.steps, out / f"trajectory-{sampler}.png",
                        title=f"{sampler.upper()}, {steps} steps, seed {seed}")
        numbers[sampler] = {"steps": steps, "points": _trajectory_rows(record, final)}
    sections = [f"{s.upper()} ({numbers[s]['steps']} steps)\n\n"
                + _table(("step", "t", "std(x_t)", "RMS(x̂0 - final)"),
                         [(r["i"], r["t"], r["x_t_std"], r["x0_rms_to_final"]) for r in numbers[s]["points"]])
                for s in ("ddpm", "ddim")]
    return _finish(out, "trajectory", numbers, f"Sampling trajectories (seed {seed})", *sections)


# -- eta-vs-ddpm ------------------------------------------------------------------------------------------

def variance_precision(s: NoiseSchedule) -> dict:
    """σ²_t for η = 1 computed both ways, in float32 (as a float32 scheduler holds ᾱ) and in float64.

    On paper DDIM's σ² (eq. 16) = (1-ᾱ_{t-1})/(1-ᾱ_t) · (1 - ᾱ_t/ᾱ_{t-1}) equals DDPM's β̃_t =
    (1-ᾱ_{t-1})/(1-ᾱ_t) · β_t (DDPM eq. 7). In float32, 1 - ᾱ_t/ᾱ_{t-1} subtracts two numbers near 1 and loses
    digits (as 1 - (1 - β) != β does; the DDIM note's example). Relative differences, over t = 1..T-1.
    """
    beta64, ab64 = s.betas, s.alphas_cumprod
    beta32 = beta64.float()
    alpha32 = 1 - beta32
    ab32 = torch.cumprod(alpha32, 0)

    def ratio(ab):  # (1-ᾱ_{t-1}) / (1-ᾱ_t) for t = 1..T-1
        return (1 - ab[:-1]) / (1 - ab[1:])

    exact = ratio(ab64) * beta64[1:]
    ddim32 = ratio(ab32) * (1 - ab32[1:] / ab32[:-1])
    ddpm32 = ratio(ab32) * beta32[1:]
    ddim64 = ratio(ab64) * (1 - ab64[1:] / ab64[:-1])

    def rel(a, b):
        return float(((a.double() - b.double()).abs() / b.double().abs()).max())

    return {"one_minus_alpha_vs_beta_float32": rel(1 - alpha32, beta32),
            "one_minus_alpha_ne_beta_float32_count": int(((1 - alpha32) != beta32).sum()),
            "sigma2_ddim_float32_vs_float64": rel(ddim32, exact),
            "sigma2_ddpm_float32_vs_float64": rel(ddpm32, exact),
            "sigma2_ddim_vs_ddpm_float32": rel(ddim32, ddpm32),
            "sigma2_ddim_vs_ddpm_float64": rel(ddim64, exact),
            "sigma2_last_t": {"ddim_float32": float(ddim32[-1]), "ddpm_float32": float(ddpm32[-1]),
                              "float64": float(exact[-1])}}


def _variance_section(v: dict, T: int) -> str:
    rows = [("1-α_t vs β_t, float32", v["one_minus_alpha_vs_beta_float32"]),
            ("σ² via 1-ᾱ_t/ᾱ_{t-1} (DDIM), float32 vs float64", v["sigma2_ddim_float32_vs_float64"]),
            ("σ² via β_t (DDPM), float32 vs float64", v["sigma2_ddpm_float32_vs_float64"]),
            ("DDIM way vs DDPM way, float32", v["sigma2_ddim_vs_ddpm_float32"]),
            ("DDIM way vs DDPM way, float64", v["sigma2_ddim_vs_ddpm_float64"])]
    last = v["sigma2_last_t"]
    worst = max(v["sigma2_ddim_float32_vs_float64"], v["sigma2_ddim_vs_ddpm_float32"])
    return ("The variance computed both ways (max relative difference over t)\n\n"
            + _table(("quantity", "max rel. diff"), rows)
            + f"\nAt t = {T - 1}: σ² = {last['ddim_float32']:.8g} (DDIM way, float32), {last['ddpm_float32']:.8g} "
              f"(DDPM way, float32), {last['float64']:.8g} (float64).\n\n"
              f"Float32 rounding moves σ² by a relative {worst:.1e} at most: far too "
              "little to make the images differ visibly; clipping does. ddimkit keeps the schedule in float64 and "
              "casts each coefficient once, so its samplers do not carry this error.\n")


def _fp32_small_variance(pipe):
    """The same network in float32 with DDPM's small variance β̃: the setting in which DDIM(η=1) and DDPM
    coincide. bf16/fp16 autocast would add rounding far larger than the float32 error being shown.
    The caller's pipeline is left as it was."""
    return dataclasses.replace(pipe, precision="fp32", sampling={**pipe.sampling, "variance": "small"})


def eta_vs_ddpm(pipe, out, seed: int = 33, num: int = 1, steps: int | None = None, clip_range: float = 1.0,
                batch_size: int | None = None, progress: bool = False) -> dict:
    """DDIM with η = 1 against DDPM (small variance) from one seed, i.e. the same x_T and per-step noise.

    With η = 1, DDIM's σ² (eq. 16) is DDPM's β̃_t, so without clipping both are one process and agree to float
    error (on the full grid, ``steps`` = T, and on any sub-grid, where DDPM is respaced). With x̂0 clipped to
    [-r, r] they part: DDPM's posterior mean (DDPM eq. 7) uses only the clipped x̂0 and x_t, while DDIM's step
    (eq. 12) pairs the clipped x̂0 with the unclipped ε̂, as diffusers' DDIMScheduler does (the DDIM note's
    finding). Re-deriving ε̂ from the clipped x̂0 (improved-diffusion's way) makes them one process again —
    the third row. The network runs in float32 whatever the pipeline's precision. Also reports
    :func:`variance_precision`. Writes ``eta-vs-ddpm.png``.
    """
    out = _folder(out)
    pipe = _fp32_small_variance(pipe)
    T = pipe.schedule.num_train_timesteps
    steps = steps or T
    # (label, clip range, re-derive ε̂ from the clipped x̂0)
    settings = [("no clipping", None, False), (f"clip ±{clip_range:g}, ε̂ kept", clip_range, False),
                (f"clip ±{clip_range:g}, ε̂ re-derived", clip_range, True)]
    rows, figure_rows = [], []
    for label, clip, rederive in settings:
        kw = dict(steps=steps, clip_sample=clip, batch_size=batch_size, progress=progress,
                  use_clipped_model_output=rederive)
        ddpm = pipe.sample(num, sampler="ddpm", generator=_gen(seed), **kw)
        ddim = pipe.sample(num, sampler="ddim", eta=1.0, generator=_gen(seed), **kw)
        rows.append({"setting": label, "clip_sample": clip, "eps_from_clipped_x0": rederive, **_diff(ddpm, ddim)})
        figure_rows.append(torch.cat([ddpm[:1], ddim[:1], _diff_image(ddpm[:1], ddim[:1])]))
    grid = "the full grid" if steps == T else f"a {steps}-step grid"
    labelled_grid(figure_rows, [label for label, *_ in settings], ["DDPM", "DDIM η=1", "|DDPM - DDIM|"],
                  out / "eta-vs-ddpm.png",
                  title=f"DDIM η=1 vs DDPM on {grid}, seed {seed}", cell=1.6)
    variance = variance_precision(pipe.schedule)
    numbers = {"seed": seed, "num": num, "steps": steps, "rows": rows, "variance": variance}
    table = _table(("", "max |DDPM - DDIM|", "mean |DDPM - DDIM|"),
                   [(r["setting"], r["max_abs_diff"], r["mean_abs_diff"]) for r in rows])
    return _finish(out, "eta-vs-ddpm", numbers, f"DDIM (η = 1) vs DDPM, {steps} steps, seed {seed}, {num} image(s)",
                   table, _variance_section(variance, T))


# -- steps-grid -------------------------------------------------------------------------------------------

def steps_grid(pipe, out, seed: int = 77, etas: Sequence[float] = (0.0, 0.4, 0.8),
               steps: Sequence[int] = (10, 50, 100, 1000), num: int = 1, clip_sample="config",
               batch_size: int | None = None, progress: bool = False) -> dict:
    """DDIM over an η × steps grid from one seed (the DDIM note's figure; DDIM paper Fig. 3 and §5.2).

    Every cell restarts the generator: the same x_T and, for η > 0, the same stream of per-step noise.
    The number per cell is how far its image is from the same η with the most steps (RMS, [0, 1] scale):
    the smaller η, the less the image changes when steps are cut. Writes ``steps-grid.png``.
    """
    out = _folder(out)
    etas, steps = _non_empty(etas, "etas"), _non_empty(steps, "steps")
    images, seconds = {}, {}
    for eta in etas:
        for n in steps:
            t0 = time.perf_counter()
            images[eta, n] = pipe.sample(num, steps=n, eta=float(eta), clip_sample=clip_sample,
                                         generator=_gen(seed), batch_size=batch_size, progress=progress)
            seconds[eta, n] = time.perf_counter() - t0
    most = max(steps)
    rows = [{"eta": float(eta), "steps": n, "rms_to_most_steps": _rms01(images[eta, n], images[eta, most]),
             "seconds": seconds[eta, n]} for eta in etas for n in steps]
    labelled_grid([torch.cat([images[eta, n][:1] for n in steps]) for eta in etas], [f"η={e:g}" for e in etas],
                  [f"{n} steps" for n in steps], out / "steps-grid.png", title=f"DDIM, seed {seed}", cell=1.3)
    numbers = {"seed": seed, "num": num, "rows": rows}
    cell = {(r["eta"], r["steps"]): r for r in rows}
    header = ("η \\ steps", *map(str, steps))
    rms = _table(header, [(f"{e:g}", *(cell[float(e), n]["rms_to_most_steps"] for n in steps)) for e in etas])
    secs = _table(header, [(f"{e:g}", *(cell[float(e), n]["seconds"] for n in steps)) for e in etas])
    return _finish(out, "steps-grid", numbers, f"DDIM η × steps from seed {seed} ({num} image(s))",
                   f"RMS difference ([0, 1] scale) to the same η at {most} steps\n\n" + rms,
                   "Sampling seconds per cell\n\n" + secs)


# -- determinism ------------------------------------------------------------------------------------------

def determinism(pipe, out, seed: int = 77, generator_seeds: Sequence[int] = (8, 9),
                etas: Sequence[float] = (0.0, 0.5, 1.0), steps: int = 50, num: int = 1, clip_sample="config",
                batch_size: int | None = None, progress: bool = False) -> dict:
    """One x_T (from ``seed``) sampled with two generators (``generator_seeds``) for each η.

    With η = 0 DDIM draws no noise (σ = 0 in eq. 16), so the image depends on x_T alone: the difference is
    exactly 0. With η > 0 the generator supplies σ z at every step and the images differ (the DDIM note's
    "determinism" experiment). Writes ``determinism.png``.
    """
    out = _folder(out)
    g0, g1 = _two(generator_seeds, "generator_seeds")
    x_T = _noise(pipe, seed, num)
    rows, figure_rows = [], []
    for eta in _non_empty(etas, "etas"):
        a, b = (pipe.sample(x_T=x_T, steps=steps, eta=float(eta), clip_sample=clip_sample, generator=_gen(g),
                            batch_size=batch_size, progress=progress) for g in (g0, g1))
        rows.append({"eta": float(eta), **_diff(a, b)})
        figure_rows.append(torch.cat([a[:1], b[:1], _diff_image(a[:1], b[:1])]))
    labelled_grid(figure_rows, [f"η={r['eta']:g}" for r in rows],
                  [f"generator {g0}", f"generator {g1}", "|difference|"], out / "determinism.png",
                  title=f"Same x_T (seed {seed}), {steps} DDIM steps", cell=1.4)
    numbers = {"seed": seed, "generator_seeds": [g0, g1], "steps": steps, "num": num, "rows": rows}
    table = _table(("η", "max |diff|", "mean |diff|"), [(f"{r['eta']:g}", r["max_abs_diff"], r["mean_abs_diff"])
                                                         for r in rows])
    return _finish(out, "determinism", numbers,
                   f"Same x_T (seed {seed}), generators {g0} and {g1}, {steps} steps", table)


# -- reconstruction ---------------------------------------------------------------------------------------

def reconstruction(pipe, out, data: str | None = None, num: int = 8, steps: Sequence[int] = (10, 20, 50, 100),
                   refine: int = 3, batch_size: int | None = None, progress: bool = False) -> dict:
    """DDIM inversion of ``num`` real images and their reconstruction, per step count (DDIM paper Table 2).

    Plain inversion (DDIM eq. 13 read upwards, ε̂ taken at the lower point) and, if ``refine`` > 0, with
    ``refine`` fixed-point iterations per step, which solve for ε̂ at the upper point and make the round trip
    near-exact. Error: per-dimension MSE on the [0, 1] scale and PSNR, averaged over images. The images are
    the model's training data unless ``data`` names others. Writes ``reconstruction.png``.
    """
    out = _folder(out)
    steps = _non_empty(steps, "steps")
    x0, picked = _real_images(pipe, data, num, "reconstruction")
    rows, figure_rows, labels = [], [x0], ["original"]
    for r in sorted({0, refine}):
        for n in steps:
            row, z, rec = round_trip(pipe, x0, n, r, batch_size, progress)
            rows.append(row)
            figure_rows.append(rec)
            labels.append(f"S={n}" + (f", r={r}" if r else ""))
    figure_rows.append(_show_noise(z))
    labels.append(f"x_T ({labels[-1]})")
    labelled_grid(figure_rows, labels, [f"#{i}" for i in picked], out / "reconstruction.png",
                  title="DDIM inversion → reconstruction (S steps, r fixed-point iterations)")
    spec = _data_spec(pipe, data)
    numbers = {"data": spec, "indices": picked, "rows": rows}
    cell = {(r["refine"], r["steps"]): r for r in rows}

    def table(key):
        return _table(("S →", *map(str, steps)), [("DDIM inversion" + (f", {r} fixed-point iterations" if r else ""),
                                                   *(cell[r, n][key] for n in steps)) for r in sorted({0, refine})])

    return _finish(out, "reconstruction", numbers, f"Reconstruction error ({num} images of {spec})",
                   "Per-dimension MSE ([0, 1] scale)\n\n" + table("mse"), "PSNR (dB)\n\n" + table("psnr"))


# -- interpolation ----------------------------------------------------------------------------------------

def _angle_degrees(z0: torch.Tensor, z1: torch.Tensor) -> float:
    a, b = z0.flatten().double(), z1.flatten().double()
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))))


def _interpolate_pair(pipe, z0, z1, alphas, steps, batch_size, progress) -> dict:
    """slerp and lerp between two noises, decoded with unclipped DDIM η = 0 (as the DDIM note does)."""
    d = z0.numel()
    starts = {"slerp": slerp(z0, z1, list(alphas))[:, 0], "lerp": lerp(z0, z1, list(alphas))[:, 0]}
    images = {k: pipe.reconstruct(z, steps, batch_size=batch_size, progress=progress) for k, z in starts.items()}
    # |z|/√D: ≈ 1 for Gaussian noise; lerp of two near-orthogonal noises dips to ≈ 0.71 at α = 0.5.
    rows = [{"alpha": float(a), **{f"norm_{k}": float(starts[k][j].norm() / math.sqrt(d)) for k in starts},
             **{f"image_std_{k}": float(images[k][j].std()) for k in starts}} for j, a in enumerate(alphas)]
    return {"angle_degrees": _angle_degrees(z0, z1), "rows": rows, "images": images}


def _without_images(part: dict) -> dict:
    return {key: value for key, value in part.items() if key != "images"}


def _pair_table(part: dict) -> str:
    return _table(("α", "|z|/√D slerp", "|z|/√D lerp", "image std slerp", "image std lerp"),
                  [(f"{r['alpha']:g}", r["norm_slerp"], r["norm_lerp"], r["image_std_slerp"], r["image_std_lerp"])
                   for r in part["rows"]])


def _inputs_row(x: torch.Tensor, k: int) -> torch.Tensor:
    """The two inputs above the first and last columns, grey cells between (black would look like a result)."""
    blank = torch.zeros_like(x[:1])
    return torch.cat([x[:1]] + [blank] * max(0, k - 2) + ([x[1:2]] if k >= 2 else []))


def _image_pair(pipe, data, images, alphas, steps, refine, batch_size, progress):
    """Two real images inverted to noise (DDIM eq. 13 upwards, with refinement), then interpolated."""
    x, picked = _real_images(pipe, data, 2, "interpolation", indices=None if images is None else _two(images, "images"))
    z = pipe.invert(x, steps=steps, refine=refine, batch_size=batch_size, progress=progress)
    part = _interpolate_pair(pipe, z[:1], z[1:], alphas, steps, batch_size, progress)
    ends = torch.cat([part["images"]["slerp"][:1], part["images"]["slerp"][-1:]])
    numbers = {"data": _data_spec(pipe, data), "indices": picked, "refine": refine,
               "endpoint_mse": float(reconstruction_mse(x, ends).mean()), **_without_images(part)}
    return x, part["images"], numbers


def interpolation(pipe, out, seeds: Sequence[int] = (77, 2707), alphas: Sequence[float] = ALPHAS, steps: int = 50,
                  data: str | None = None, images: Sequence[int] | None = None, with_images: bool = True,
                  refine: int = 3, batch_size: int | None = None, progress: bool = False) -> dict:
    """slerp between the noises of two seeds, and between two real images via DDIM inversion ("style fusion").

    slerp (DDIM paper §5.3) keeps the norm of Gaussian noise; lerp, shown for contrast, shrinks it towards
    the middle (to ≈ 1/√2 at α = 0.5 for independent noises), a start the model never saw in training, which
    decodes to washed-out images. Everything is decoded with unclipped DDIM η = 0, as in the DDIM note.
    The real images are ``images`` (two indices; default the first and last) of ``data`` (default the model's
    training data), inverted with ``refine`` fixed-point iterations; they are left out with
    ``with_images=False`` or when neither ``data`` nor the checkpoint names a dataset.
    Writes ``interpolation.png``.
    """
    out = _folder(out)
    s0, s1 = _two(seeds, "seeds")
    alphas = _non_empty(alphas, "alphas")
    seed_part = _interpolate_pair(pipe, _noise(pipe, s0), _noise(pipe, s1), alphas, steps, batch_size, progress)
    rows = [seed_part["images"]["slerp"], seed_part["images"]["lerp"]]
    labels = ["slerp (seeds)", "lerp (seeds)"]
    numbers = {"seeds": [s0, s1], "steps": steps, "alphas": [float(a) for a in alphas],
               "seed_pair": _without_images(seed_part), "image_pair": None}
    sections = [f"Seeds {s0} and {s1} (angle between the noises {seed_part['angle_degrees']:.1f}°)\n\n"
                + _pair_table(seed_part)]
    if with_images and _data_spec(pipe, data):
        x, decoded, pair = _image_pair(pipe, data, images, alphas, steps, refine, batch_size, progress)
        i0, i1 = pair["indices"]
        rows += [_inputs_row(x, len(alphas)), decoded["slerp"], decoded["lerp"]]
        labels += ["inputs", "slerp (inverted)", "lerp (inverted)"]
        numbers["image_pair"] = pair
        sections.append(f"Images #{i0} and #{i1} of {pair['data']}, inverted with {steps} steps and {refine} "
                        f"fixed-point iterations (angle {pair['angle_degrees']:.1f}°; endpoint reconstruction MSE "
                        f"{pair['endpoint_mse']:.3g})\n\n" + _pair_table(pair))
    elif with_images:
        sections.append("No image rows: this checkpoint names no dataset (pass --data to add them).\n")
    labelled_grid(rows, labels, [f"α={a:g}" for a in alphas], out / "interpolation.png",
                  title=f"Seeds {s0} and {s1}" + (f"; images #{i0} and #{i1}" if numbers["image_pair"] else "")
                  + f"; decoded with DDIM η=0, {steps} steps", cell=1.2)
    return _finish(out, "interpolation", numbers, f"Interpolation ({steps} DDIM steps, η = 0, no clipping)", *sections)


# -- dispatch ---------------------------------------------------------------------------------------------

EXPERIMENTS: dict[str, Callable[..., dict]] = {
    "schedule": schedule, "noising": noising, "trajectory": trajectory, "eta-vs-ddpm": eta_vs_ddpm,
    "steps-grid": steps_grid, "determinism": determinism, "reconstruction": reconstruction,
    "interpolation": interpolation,
}


def run(name: str, pipe, out, **options) -> dict:
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`); ``pipe`` may be ``None`` for schedule/noising."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if name == "schedule":
        return schedule(out, **options)
    if pipe is None and name != "noising":
        raise ValueError(f"{name} needs a model (--ckpt)")
    return EXPERIMENTS[name](pipe, out, **options)
