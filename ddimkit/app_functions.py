"""The web app's work as plain functions: a :class:`~ddimkit.pipeline.Pipeline` and parameters in, numpy
images and numbers out.

:mod:`ddimkit.app` puts them on a Gradio page; they import no Gradio, so they are tested (and usable)
directly. Pictures are uint8 arrays, (H, W) for gray models and (H, W, 3) for colour, enlarged with nearest
neighbours so that 28×28 pixels stay sharp in a browser. Bad input raises a ``ValueError`` whose message is
meant to be shown as it is. ``progress(done, total, desc)``, where taken, is called once per network
evaluation of a sampler; it may raise (the app raises :class:`Cancelled` when Stop is pressed), which ends
the work between two steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .app_checks import (MAX_COUNT, SAMPLERS, SPACINGS, check_eta, check_sampler, check_spacing,
                         check_steps, conditions, generator, whole)
from .data import array_to_nchw, convert_channels, fit_images, read_image, to_model_range, to_uint8
from .interpolate import angle_degrees, lerp, slerp
from .metrics import psnr, reconstruction_mse
from .viz import make_grid, show_noise

__all__ = ["SAMPLERS", "SPACINGS", "Cancelled", "check_steps", "picture", "sample_images", "compare_samplers",
           "Trajectory", "trajectory", "trajectory_frame", "trajectory_strip", "fit_image", "test_image_names",
           "default_picks", "pick_image", "invert_image", "FusePair", "invert_pair", "fuse_decode", "fuse_strip",
           "fuse_at"]

COMPARE_DDIM_STEPS = (10, 20, 50)
FUSE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_REFINE = 10
MIN_SIDE, MAX_PIXELS = 8, 4096 * 4096
DIGITS, SAMPLE_SEEDS = tuple(range(10)), (0, 1, 2, 3)

Progress = Callable[[int, int, str], None]


class Cancelled(Exception):
    """The user stopped the work; raised from a ``progress`` callback."""


# -- pictures ----------------------------------------------------------------------------------------------

def picture(images: torch.Tensor, nrow: int | None = None, size: int = 512) -> np.ndarray:
    """Images in [-1, 1] (N, C, H, W) as one uint8 grid, enlarged by a whole factor towards ``size`` pixels."""
    grid = make_grid(images, nrow)
    k = max(1, size // max(grid.shape[:2]))
    grid = grid.repeat(k, 0).repeat(k, 1)
    return grid[..., 0] if grid.shape[-1] == 1 else grid


# -- sample and compare ------------------------------------------------------------------------------------

class _Steps:
    """The sampler callback: counts network evaluations (one per call), reports progress, keeps x_T."""

    def __init__(self, progress: Progress | None, total: int, desc: str, done: int = 0, record=None):
        self.progress, self.total, self.desc, self.done, self.record = progress, total, desc, done, record
        self.calls, self.batches, self.starts = 0, 0, []

    def __call__(self, d: dict):
        if d["i"] == 0:  # i restarts with every batch; x before step 0 is that batch's starting noise
            self.batches += 1
            self.starts.append(d["x"].float().cpu())
        if self.record is not None:
            self.record(d)
        self.calls += 1
        if self.progress is not None:
            self.progress(self.done + self.calls, self.total, self.desc)


def _sample(pipe, sampler, steps, eta, spacing, seed, count, conditioned: tuple[dict, str], progress=None, done=0,
            total=None, record=None):
    """``pipe.sample`` from ``seed`` (as ``ddimkit sample --seed``), timed and counted, with ``conditioned``
    from :func:`~ddimkit.app_checks.conditions` (checked before any work)."""
    cond, words = conditioned
    label = {v: k for k, v in SAMPLERS.items()}[sampler] + (f" η={eta:g}" if sampler == "ddim" else "") + words
    counter = _Steps(progress, total or steps, f"{label}, {steps} steps", done, record)
    # a guided step evaluates two networks, four with both guidances
    per_step = pipe.evaluations_per_step(cond["guidance_scale"], cond["autoguidance_scale"])
    t0 = time.perf_counter()
    images = pipe.sample(count, sampler=sampler, steps=steps, eta=eta, spacing=spacing, generator=generator(seed),
                         callback=counter, **cond)
    info = {"sampler": sampler, "label": label, "steps": steps, "eta": eta, "spacing": spacing or "model default",
            "seed": int(seed), "count": count, "seconds": time.perf_counter() - t0,
            "nfe": counter.calls // max(1, counter.batches) * per_step, "forward_passes": counter.calls * per_step,
            "x_T": torch.cat(counter.starts)}
    return images, info


def sample_images(pipe, sampler: str = "ddim", steps=20, eta=0.0, spacing=None, seed=0, count=16,
                  progress: Progress | None = None, autoguidance=None, class_choice=None,
                  guidance=None) -> tuple[np.ndarray, dict]:
    """Sample ``count`` images from ``seed``: the same images as ``ddimkit sample --seed SEED --num COUNT``
    (``--autoguidance-scale W`` for ``autoguidance``, ``--class-labels K`` for the choice "class K" of
    :func:`~ddimkit.app_checks.class_choices`, ``--guidance-scale`` for ``guidance``; default: the model's).

    Returns the grid and ``{sampler, label, steps, eta, spacing, seed, count, seconds, nfe, forward_passes,
    x_T}``: ``nfe`` is the network evaluations per image (steps × :meth:`Pipeline.evaluations_per_step`, for
    all three samplers), ``forward_passes`` the batched network calls made.
    """
    sampler = check_sampler(sampler)
    steps, eta, spacing = check_steps(pipe, steps), check_eta(sampler, eta), check_spacing(spacing)
    count = whole(count, "count", 1, MAX_COUNT)
    conditioned = conditions(pipe, class_choice, guidance, autoguidance)
    images, info = _sample(pipe, sampler, steps, eta, spacing, seed, count, conditioned, progress)
    return picture(images), info


def compare_samplers(pipe, seed=0, count=4, ddim_steps=COMPARE_DDIM_STEPS, progress: Progress | None = None,
                     autoguidance=None, class_choice=None, guidance=None) -> list[tuple[np.ndarray, dict]]:
    """DDPM with all T steps beside DDIM (η = 0) at each of ``ddim_steps``, every one from the same starting
    noise (drawn from ``seed`` first, as ``pipe.sample`` draws it) and with the same conditions as
    :func:`sample_images`. Returns (grid, info) per sampler; each info's ``x_T`` is the noise that sampler
    actually started from."""
    count = whole(count, "count", 1, MAX_COUNT)
    conditioned = conditions(pipe, class_choice, guidance, autoguidance)
    T = pipe.schedule.num_train_timesteps
    runs = [("ddpm", T)] + [("ddim", check_steps(pipe, n, "DDIM steps")) for n in ddim_steps]
    total, done, out = sum(n for _, n in runs), 0, []
    for sampler, steps in runs:
        images, info = _sample(pipe, sampler, steps, 0.0, None, seed, count, conditioned, progress, done, total)
        done += steps
        out.append((picture(images), info))
    return out


# -- trajectory --------------------------------------------------------------------------------------------

@dataclass
class Trajectory:
    """Every step of one sample: ``x_t`` before the step (squeezed into [-1, 1] for display) and the
    prediction ``x0`` (x̂0, clamped), each (S, C, H, W); ``timesteps[k]`` is step k's t."""

    x_t: torch.Tensor
    x0: torch.Tensor
    timesteps: list[int]
    final: torch.Tensor
    info: dict


def trajectory(pipe, sampler: str = "ddim", steps=50, eta=0.0, spacing=None, seed=0,
               progress: Progress | None = None, autoguidance=None, class_choice=None,
               guidance=None) -> Trajectory:
    """Sample one image from ``seed`` (the first image of :func:`sample_images` with that seed and conditions)
    and keep x_t and x̂0 at every step."""
    sampler = check_sampler(sampler)
    steps, eta, spacing = check_steps(pipe, steps), check_eta(sampler, eta), check_spacing(spacing)
    conditioned = conditions(pipe, class_choice, guidance, autoguidance)
    xs, x0s, ts = [], [], []

    def record(d):
        xs.append(show_noise(d["x"][:1].float().cpu()))
        x0s.append(d["x0"][:1].float().cpu().clamp(-1, 1))
        ts.append(int(d["t"]))

    final, info = _sample(pipe, sampler, steps, eta, spacing, seed, 1, conditioned, progress, record=record)
    return Trajectory(torch.cat(xs), torch.cat(x0s), ts, final, info)


def trajectory_frame(traj: Trajectory, k) -> tuple[np.ndarray, str]:
    """Step ``k`` (0-based): x_t beside x̂0, and a caption."""
    k = whole(k, "step", 0, len(traj.timesteps) - 1)
    pair = torch.stack([traj.x_t[k], traj.x0[k]])
    caption = f"step {k + 1} of {len(traj.timesteps)}, t = {traj.timesteps[k]}: x_t | x̂0"
    return picture(pair, nrow=2, size=384), caption


def trajectory_strip(traj: Trajectory, points: int = 10) -> np.ndarray:
    """x_t (top row) and x̂0 (bottom row) at ``points`` steps spread from the first to the last."""
    n = len(traj.timesteps)
    keep = sorted({round(i * (n - 1) / max(1, points - 1)) for i in range(min(points, n))})
    return picture(torch.cat([traj.x_t[keep], traj.x0[keep]]), nrow=len(keep), size=768)


# -- images in ---------------------------------------------------------------------------------------------

def _as_uint8_chw(image) -> torch.Tensor:
    """A file path or an array (H×W, H×W×C) as uint8 (C, H, W); unreadable or odd input is a ValueError."""
    if isinstance(image, str) or hasattr(image, "__fspath__"):
        name = Path(image).name
        if not Path(image).is_file():
            raise ValueError(f"no such image: {name}")
        try:
            return read_image(image)
        except Exception:  # PIL's errors, its decompression-bomb check among them, name the full path twice
            raise ValueError(f"cannot read {name} as an image (PNG, JPEG, BMP, GIF, WebP or TIFF)") from None
    if image is None:
        raise ValueError("no image: upload one or pick a test image")
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"an image array must be H×W or H×W×C with C = 1, 3 or 4; got shape {a.shape}")
    return array_to_nchw(a[None], "the image")[0]


def fit_image(pipe, image) -> tuple[torch.Tensor, str]:
    """An image (a file path or an array) fitted to the model: (1, C, H, W) in [-1, 1], and a note saying how
    it was changed ('' when it already fitted). Colour becomes gray by luma (and gray becomes RGB); a larger
    image is centre-cropped to a square and resized, a smaller one padded (:func:`ddimkit.data.fit_images`)."""
    c, h, w = pipe.image_shape
    if h != w:
        raise ValueError(f"this model takes {h}×{w} images; only square models can take uploads")
    x = _as_uint8_chw(image)
    c0, h0, w0 = x.shape
    if min(h0, w0) < MIN_SIDE:
        raise ValueError(f"the image is {h0}×{w0} pixels; it needs at least {MIN_SIDE}×{MIN_SIDE}")
    if h0 * w0 > MAX_PIXELS:
        raise ValueError(f"the image is {h0}×{w0} pixels; at most {MAX_PIXELS:,} pixels are taken")
    x = fit_images(convert_channels(x[None], c, "the image"), h)
    note = "" if (c0, h0, w0) == (c, h, w) else f"fitted from {c0}×{h0}×{w0} to {c}×{h}×{w}"
    return to_model_range(x), note


@lru_cache(maxsize=1)
def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    with resources.as_file(resources.files("ddimkit") / "assets" / "mnist_5k.npz") as p, np.load(p) as z:
        return z["x"], z["y"]


def test_image_names() -> list[str]:
    """The test images offered in the page: one bundled MNIST digit per class, and samples of the model."""
    return [f"MNIST digit {d}" for d in DIGITS] + [f"model sample, seed {s}" for s in SAMPLE_SEEDS]


def default_picks(pipe) -> tuple[str, str]:
    """Two test images to start with: digits for a model trained on digits, else the model's own samples."""
    spec = str(((pipe.config or {}).get("data") or {}).get("spec", "")).lower()
    if "mnist" in spec and "fashion" not in spec:
        return "MNIST digit 2", "MNIST digit 7"
    return "model sample, seed 0", "model sample, seed 1"


def pick_image(pipe, name: str) -> np.ndarray:
    """A test image by name (see :func:`test_image_names`) as uint8 (H, W) or (H, W, 3), before fitting.

    Digits are the first of their class in the bundled ``mnist-5k``; samples are DDIM (20 steps, η = 0) from
    the seed, i.e. images the model itself makes, for models not trained on digits."""
    if name.startswith("MNIST digit ") and name[12:].isdigit() and int(name[12:]) in DIGITS:
        x, y = _bundled_digits()
        return x[int(np.argmax(y == int(name[12:])))]
    if name.startswith("model sample, seed ") and name[19:].isdigit():
        steps = min(20, pipe.schedule.num_train_timesteps)
        img = to_uint8(pipe.sample(1, steps=steps, generator=generator(int(name[19:]))))[0].permute(1, 2, 0).numpy()
        return img[..., 0] if img.shape[-1] == 1 else img
    raise ValueError(f"unknown test image {name!r}; choose one of {', '.join(test_image_names())}")


# -- invert and fuse ---------------------------------------------------------------------------------------

def _stage(progress: Progress | None, done: int, total: int, desc: str):
    if progress is not None:
        progress(done, total, desc)


def _invert(pipe, x, steps, refine, progress, total):
    """DDIM inversion (one network evaluation per step, plus ``refine`` per step for the fixed point).
    ``Pipeline.invert`` takes no callback, so progress moves (and Stop acts) before and after it."""
    _stage(progress, 0, total, f"inverting: {steps} steps × {1 + refine} evaluations")
    z = pipe.invert(x, steps=steps, refine=refine)
    _stage(progress, steps * (1 + refine), total, "inverted")
    return z


def _decode(pipe, z, steps, progress=None, done=0, total=None, desc="decoding"):
    """``pipe.reconstruct`` with progress: unclipped DDIM η = 0 on the inversion's grid."""
    counter = _Steps(progress, total or steps, desc, done)
    return pipe.sample(x_T=z, sampler="ddim", steps=steps, eta=0.0, spacing=pipe.sampling["spacing"],
                       clip_sample=None, callback=counter)


def invert_image(pipe, image, steps=20, refine=3, progress: Progress | None = None) -> dict:
    """Fit an image to the model, DDIM-invert it with ``steps`` steps and ``refine`` fixed-point iterations,
    and decode the noise again on the same grid.

    Returns ``{input, noise, reconstruction}`` (pictures), ``mse`` (per dimension, [0, 1] scale), ``psnr``
    (dB), ``noise_std``, ``seconds``, ``nfe`` (network evaluations, inversion and decoding) and ``note``.
    """
    steps, refine = check_steps(pipe, steps), whole(refine, "fixed-point iterations", 0, MAX_REFINE)
    x, note = fit_image(pipe, image)
    t0, total = time.perf_counter(), steps * (2 + refine)
    z = _invert(pipe, x, steps, refine, progress, total)
    rec = _decode(pipe, z, steps, progress, steps * (1 + refine), total)
    return {"input": picture(x, size=256), "noise": picture(show_noise(z), size=256),
            "reconstruction": picture(rec, size=256), "mse": float(reconstruction_mse(x, rec).mean()),
            "psnr": float(psnr(x, rec).mean()), "noise_std": float(z.std()), "seconds": time.perf_counter() - t0,
            "nfe": total, "note": note}


@dataclass
class FusePair:
    """Two images fitted to the model, ``x`` (2, C, H, W), their inverted noises ``z`` and the grid's steps."""

    x: torch.Tensor
    z: torch.Tensor
    steps: int
    notes: list[str]


def invert_pair(pipe, a, b, steps=20, refine=3, progress: Progress | None = None) -> FusePair:
    """Fit and invert two images in one batch, for :func:`fuse_strip` and :func:`fuse_at`."""
    steps, refine = check_steps(pipe, steps), whole(refine, "fixed-point iterations", 0, MAX_REFINE)
    (xa, na), (xb, nb) = fit_image(pipe, a), fit_image(pipe, b)
    x = torch.cat([xa, xb])
    z = _invert(pipe, x, steps, refine, progress, steps * (1 + refine))
    return FusePair(x, z, steps, [f"image {k}: {n}" for k, n in (("A", na), ("B", nb)) if n])


def fuse_decode(pipe, pair: FusePair, alphas, progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """slerp and lerp of the pair's noises at each α, decoded as the inversion's inverse (so α = 0 and 1
    give the inputs back): ``{"slerp": (K, C, H, W), "lerp": (K, C, H, W), "starts": (2K, C, H, W)}``, the
    last the noises decoded (slerp's, then lerp's). Both go through one batch."""
    alphas = [float(a) for a in alphas]
    if not alphas or not all(0 <= a <= 1 for a in alphas):
        raise ValueError(f"α must lie in [0, 1], got {alphas}")
    z0, z1 = pair.z[:1], pair.z[1:]
    starts = torch.cat([slerp(z0, z1, alphas)[:, 0], lerp(z0, z1, alphas)[:, 0]])
    out = _decode(pipe, starts, pair.steps, progress)
    return {"slerp": out[:len(alphas)], "lerp": out[len(alphas):], "starts": starts}


def fuse_strip(pipe, pair: FusePair, alphas=FUSE_ALPHAS, progress: Progress | None = None) -> tuple[np.ndarray, dict]:
    """Rows slerp and lerp at ``alphas`` (default 0, ¼, ½, ¾, 1), and ``{endpoint_mse, angle_degrees}``:
    how far slerp's α = 0 and α = 1 are from the inputs (MSE per dimension, [0, 1] scale, mean of the two)."""
    alphas = [float(a) for a in alphas]
    d = fuse_decode(pipe, pair, alphas, progress)
    info = {"alphas": alphas, "angle_degrees": angle_degrees(pair.z[0], pair.z[1])}
    if alphas[0] == 0 and alphas[-1] == 1:
        ends = torch.cat([d["slerp"][:1], d["slerp"][-1:]])
        info["endpoint_mse"] = float(reconstruction_mse(pair.x, ends).mean())
    return picture(torch.cat([d["slerp"], d["lerp"]]), nrow=len(alphas), size=768), info


def fuse_at(pipe, pair: FusePair, alpha, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """slerp and lerp at one α (the page's slider): two pictures and ``{alpha, norm_slerp, norm_lerp}``, the
    noises' |z|/√D (≈ 1 for Gaussian noise; lerp dips towards 1/√2 mid-way)."""
    d = fuse_decode(pipe, pair, [alpha], progress)
    norms = d["starts"].flatten(1).norm(dim=1) / math.sqrt(pair.z[0].numel())
    return (picture(d["slerp"], size=256), picture(d["lerp"], size=256),
            {"alpha": float(alpha), "norm_slerp": float(norms[0]), "norm_lerp": float(norms[1])})

