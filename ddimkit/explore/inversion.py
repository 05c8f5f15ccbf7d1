"""Inversion experiments: invert → reconstruct per step count (DDIM Table 2), and interpolation."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..evaluate import round_trip
from ..interpolate import angle_degrees, lerp, slerp
from ..metrics import reconstruction_mse
from ..viz import labelled_grid, show_noise
from .common import ALPHAS, _folder, _noise, _two, _non_empty, _table, _finish, _data_spec, _real_images


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
    figure_rows.append(show_noise(z))
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


def _interpolate_pair(pipe, z0, z1, alphas, steps, batch_size, progress) -> dict:
    """slerp and lerp between two noises, decoded with unclipped DDIM η = 0 (as the DDIM note does)."""
    d = z0.numel()
    starts = {"slerp": slerp(z0, z1, list(alphas))[:, 0], "lerp": lerp(z0, z1, list(alphas))[:, 0]}
    images = {k: pipe.reconstruct(z, steps, batch_size=batch_size, progress=progress) for k, z in starts.items()}
    # |z|/√D: ≈ 1 for Gaussian noise; lerp of two near-orthogonal noises dips to ≈ 0.71 at α = 0.5.
    rows = [{"alpha": float(a), **{f"norm_{k}": float(starts[k][j].norm() / math.sqrt(d)) for k in starts},
             **{f"image_std_{k}": float(images[k][j].std()) for k in starts}} for j, a in enumerate(alphas)]
    return {"angle_degrees": angle_degrees(z0, z1), "rows": rows, "images": images}


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
