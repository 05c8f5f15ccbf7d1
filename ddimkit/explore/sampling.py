"""Sampling experiments: trajectories, DDIM(η = 1) against DDPM, the η × steps grid, and determinism."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch

from ..schedule import NoiseSchedule
from ..viz import labelled_grid, plot_trajectory
from .common import (_folder, _gen, _noise, _diff, _rms01, _diff_image, _two, _non_empty, _table, _finish, _Recorder,
                     _spread)


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
