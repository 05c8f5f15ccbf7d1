"""What KID sees: how far pixel noise and blur move it on real images, and where a model's samples differ.

    python benchmarks/kid_probe.py --ref npz:../shared/data/fashion_mnist.npz:x_test \\
        --real npz:../shared/data/fashion_mnist.npz:x_train --perturb
    python benchmarks/kid_probe.py --ref npz:../shared/data/fashion_mnist.npz:x_test \\
        --ckpt runs/ttq-fashion-2/ddimkit --cells leading:0,leading:1,trailing:0,identity-last:0

The reference is the first ``--num-ref`` (default ``--num``) images of ``--ref`` (after its first
``--ref-offset``), and every KID (Inception features, 100 subsets) is taken against it. ``--perturb`` scores
``--num`` images of ``--real`` as they are, with Gaussian pixel noise of 1 and 3 grey levels (seed 0), and
half-blended with their 3×3 box blur. ``--cells SPACING:ETA[:STEPS]`` scores ``--num`` DDIM samples (50 steps
unless given) of ``--ckpt`` from seed 0; the spacing ``identity-last`` is the ``leading`` grid with the
network's x̂0 at t = 0, the last evaluation, replaced by x_t/√ᾱ_0 (a diagnostic, not a sampler); ``--raw``
samples them from the raw weights instead of the EMA's; ``--autoguidance W,...`` scores each cell at each
autoguidance scale, with the model's own guide or the EMA weights of the checkpoint ``--guide`` (of several,
their mean); ``--eps-scale L`` samples them with ε̂/L (epsilon scaling, Ning et al. 2024),
``--guidance-interval LO,HI`` with autoguidance only for LO < t <= HI, ``--gaussian-above T`` with x̂0 for t >
T from the Gaussian fit of ``--real`` (its mean and covariance; the exact posterior mean for Gaussian data).
``--from-t T,...`` scores ``--num`` held-out reference images (those after the first ``--num-ref``) noised to
t = T and denoised by the model's DDIM steps T, T - 20, ..., 0. Each row also gives the share of pixels at
exactly 0 and at 1–8 grey levels (the data's background is 0) and, with ``--classifier``, the classifier-FD
against the reference; ``--lowt`` gives the network's x̂0-MSE at small t against that of the identity estimate
x_t/√ᾱ_t on the reference.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import ddimkit as dk
from ddimkit.checkpoint import mean_weights
from ddimkit.classifier import classifier_fd, load_classifier
from ddimkit.data import load_images, to_model_range, to_uint8
from ddimkit.diffusion import add_noise, levels
from ddimkit.metrics import inception_features, kid
from recipe_study import register_classes


def _background(u8: torch.Tensor) -> dict:
    v = u8.to(torch.int32)
    return dict(zero=float((v == 0).float().mean()), faint=float(((v > 0) & (v <= 8)).float().mean()))


def perturbations(real_u8: torch.Tensor) -> dict:
    x = to_model_range(real_u8)
    g = torch.Generator().manual_seed(0)
    out = {"as they are": real_u8}
    for grey in (1, 3):  # one grey level is 2/255 on the [-1, 1] scale
        out[f"noise {grey} grey"] = to_uint8(x + grey * 2 / 255 * torch.randn(x.shape, generator=g))
    blur = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    out["half 3x3 blur"] = to_uint8(0.5 * x + 0.5 * blur)
    return out


def _rewire(pipe, option: str, nets, output):
    """Make each of ``nets`` (None skipped) return ``output(x, t, own)`` instead, where ``own()`` runs the network
    and returns its x̂0: how the probes change what an x0-prediction model predicts (``option`` names the probe)."""
    if pipe.prediction_type != "sample":
        raise SystemExit(f"{option} needs an x0-prediction model")
    for net in filter(None, nets):
        forward = net.forward

        def rewired(x, t, *args, _forward=forward, **kwargs):
            def own():
                out = _forward(x, t, *args, **kwargs)
                return getattr(out, "sample", out)

            return output(x, t, own)

        net.forward = rewired


def _identity_last(pipe):
    """Replace the network's output at t = 0 by x_t/√ᾱ_0."""
    ab0 = float(pipe.schedule.alphas_cumprod[0])
    _rewire(pipe, "identity-last", (pipe.model,),
            lambda x, t, own: torch.where((t == 0).view(-1, 1, 1, 1), x / ab0 ** 0.5, own()))


class _GuideInInterval(torch.nn.Module):
    """The guide for lo < t <= hi and the model itself elsewhere, where g = m makes the mix g + w (m - g) the
    model alone: autoguidance limited to an interval of noise levels (Kynkäänniemi et al. 2024 limit
    classifier-free guidance so). Outside the interval it evaluates the model twice: a probe, not a sampler."""

    def __init__(self, model, guide, lo: int, hi: int):
        super().__init__()
        self.model, self.guide, self.lo, self.hi = model, guide, lo, hi

    def forward(self, x, t, *labels):
        inside = self.lo < int(t.reshape(-1)[0]) <= self.hi  # every image of a sampler's batch shares its t
        return (self.guide if inside else self.model)(x, t, *labels)


def _eps_scaled(pipe, lam: float):
    """Epsilon scaling (Ning et al. 2024, against exposure bias): sample with ε̂/λ and the x̂0 it implies,
    (x_t - √(1-ᾱ_t) ε̂/λ)/√ᾱ_t, for an x0-prediction network: x̂0/λ + (1 - 1/λ) x_t/√ᾱ_t."""
    sqrt_ab = pipe.schedule.alphas_cumprod.double().sqrt().float()
    _rewire(pipe, "--eps-scale", (pipe.model, pipe.guide),
            lambda x, t, own: own() / lam + (1 - 1 / lam) * x / sqrt_ab.to(x.device)[t].view(-1, 1, 1, 1))


class GaussianDenoiser:
    """x̂0 = E[x0 | x_t] for Gaussian data N(μ, Σ), with μ and Σ those of ``images``:
    μ + Σ a (a² Σ + s² I)⁻¹ (x_t - a μ) at a = √ᾱ_t, s = √(1-ᾱ_t), computed in Σ's eigenbasis. At high noise
    the data's posterior mean is nearly this linear one (Wang & Vastola 2023), where a briefly trained network
    is worse than the mean image."""

    def __init__(self, images_u8: torch.Tensor, alphas_cumprod: torch.Tensor):
        x = to_model_range(images_u8).double().flatten(1)
        self.shape, self.mu = images_u8.shape[1:], x.mean(0)
        lam, self.U = torch.linalg.eigh(torch.cov((x - self.mu).T, correction=0))
        self.lam, self.ab = lam.clamp(min=0), alphas_cumprod.double()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.ab[t.cpu()].unsqueeze(1)
        a, s2 = ab.sqrt(), 1 - ab
        z = (x.cpu().double().flatten(1) - a * self.mu) @ self.U
        x0 = self.mu + (z * a * self.lam / (ab * self.lam + s2)) @ self.U.T
        return x0.reshape(-1, *self.shape).to(x)


def _gaussian_above(pipe, gauss: GaussianDenoiser, t_min: int):
    """Replace the x0-prediction networks' output (model and guide) by ``gauss``'s for t > ``t_min``."""
    _rewire(pipe, "--gaussian-above", (pipe.model, pipe.guide),  # a sampler's batch shares its t
            lambda x, t, own: gauss(x, t) if int(t.reshape(-1)[0]) > t_min else own())


def cell_pipeline(ckpt: str, cell: str, ema: bool = True, guide: str | None = None, eps_scale: float = 1.0,
                  interval: tuple[int, int] | None = None, gaussian: tuple | None = None):
    """The model a cell samples: ``ckpt`` (its EMA or raw weights), guided by ``guide``'s EMA weights if given,
    with the last evaluation replaced for ``identity-last``, ε̂ scaled by 1/``eps_scale`` and autoguidance
    limited to ``interval`` = (lo, hi] of t, and the networks replaced by ``gaussian`` = (GaussianDenoiser, t_min)
    above t_min (so each cell loads afresh)."""
    pipe = dk.load(ckpt, ema=ema)
    if guide:  # other checkpoints' EMA weights as the guide: one's, or the mean of several (a longer average)
        pipe.guide = copy.deepcopy(pipe.model)
        pipe.guide.load_state_dict(mean_weights(guide.split(",")))
    if cell.startswith("identity-last:"):
        _identity_last(pipe)
    if eps_scale != 1:
        _eps_scaled(pipe, eps_scale)
    if gaussian:
        _gaussian_above(pipe, *gaussian)
    if interval:
        if pipe.guide is None:
            raise SystemExit("--guidance-interval needs a model with a guide")
        pipe.guide = _GuideInInterval(pipe.model, pipe.guide, *interval)
    return pipe


def samples(pipe, cell: str, num: int, autoguidance: float | None = None) -> torch.Tensor:
    spacing, eta, *steps = cell.split(":")
    x = pipe.sample(num, "ddim", steps=int(steps[0]) if steps else 50, eta=float(eta),
                    spacing="leading" if spacing == "identity-last" else spacing,
                    generator=torch.Generator().manual_seed(0), autoguidance_scale=autoguidance)
    return to_uint8(x)


@torch.no_grad()
def from_t(pipe, real_u8: torch.Tensor, t: int, stride: int = 20) -> torch.Tensor:
    """Real images noised to timestep ``t`` (seed 1), then taken down by the model's DDIM η = 0 steps on
    the grid t, t - stride, ..., 0 (the last steps of the leading 50-step grid): what the model's low-noise
    steps alone cost."""
    x0 = to_model_range(real_u8)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    xt = add_noise(pipe.schedule, x0, noise, torch.full((len(x0),), t))
    return to_uint8(pipe.sample(len(x0), "ddim", steps=list(range(t, -1, -stride)), eta=0.0, x_T=xt))


@torch.no_grad()
def low_t_error(ckpt: str, ref_u8: torch.Tensor, timesteps=(0, 5, 19, 50, 150)) -> dict:
    pipe = dk.load(ckpt)
    x0 = to_model_range(ref_u8[:500])
    out = {}
    for t in timesteps:
        tt = torch.full((len(x0),), t)
        a, s = levels(pipe.schedule, tt, x0)
        xt = a * x0 + s * torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        x0_hat, _ = dk.Denoiser(pipe.model, pipe.prediction_type, clip_sample=1.0)(xt, tt, a, s)
        identity = (xt / a).clamp(-1, 1)
        out[t] = dict(net=float((x0_hat - x0).pow(2).mean()), identity=float((identity - x0).pow(2).mean()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--real", help="real images for --perturb")
    ap.add_argument("--perturb", action="store_true")
    ap.add_argument("--ckpt")
    ap.add_argument("--cells", default="", help="SPACING:ETA[:STEPS],... DDIM cells of --ckpt (50 steps)")
    ap.add_argument("--lowt", action="store_true", help="x̂0-MSE at small t of --ckpt")
    ap.add_argument("--raw", action="store_true", help="sample --cells from the raw weights, not the EMA's")
    ap.add_argument("--autoguidance", default="", help="W,...: score every cell at each autoguidance scale "
                    "(default: the model's)")
    ap.add_argument("--guide", default=None, help="a checkpoint folder whose EMA weights guide --ckpt's cells, or "
                    "several (comma-separated): the mean of their EMA weights")
    ap.add_argument("--eps-scale", type=float, default=1.0, help="sample --cells with ε̂/λ (epsilon scaling)")
    ap.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                    help="autoguidance only for LO < t <= HI, the model alone elsewhere")
    ap.add_argument("--gaussian-above", type=int, default=None, metavar="T",
                    help="for t > T, x̂0 from the Gaussian fit of --real (its mean and covariance), not the networks")
    ap.add_argument("--from-t", default="", help="T,...: --num reference images after the first --num-ref, "
                    "noised to T and denoised by --ckpt's last DDIM steps (multiples of 20)")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--num-ref", type=int, default=None)
    ap.add_argument("--ref-offset", type=int, default=0,
                    help="the reference starts at this image of --ref (a second reference, to tune on)")
    ap.add_argument("--ref-features", help="a .npy file caching the reference's Inception features")
    ap.add_argument("--classifier", default=None, choices=("mnist", "fashion-mnist"),
                    help="also the classifier-FD of every row against the reference, in this shipped classifier")
    ap.add_argument("--out", default="runs/kid-probe.json")
    args = ap.parse_args()
    register_classes()  # the study's networks load like any checkpoint
    ref_images = load_images(args.ref)[args.ref_offset:]
    ref = ref_images[:args.num_ref or args.num]
    cache = Path(args.ref_features) if args.ref_features else None
    if cache and cache.is_file():
        f_ref = np.load(cache)
    else:
        f_ref = inception_features(ref)
        if cache:
            np.save(cache, f_ref)
    res = {"real": _background(ref)}

    net = load_classifier(args.classifier) if args.classifier else None

    def record(name: str, u8: torch.Tensor):
        res[name] = {"kid": kid(inception_features(u8), f_ref), **_background(u8)}
        if net is not None:
            res[name]["classifier_fd"] = classifier_fd(net, u8, ref)
        print(name, res[name], flush=True)

    for label, u8 in (perturbations(load_images(args.real)[:args.num]) if args.perturb else {}).items():
        record(label, u8)
    scales = [float(w) for w in args.autoguidance.split(",")] if args.autoguidance else [None]
    interval = tuple(map(int, args.guidance_interval.split(","))) if args.guidance_interval else None
    gaussian = None
    if args.gaussian_above is not None:
        if not args.real:
            raise SystemExit("--gaussian-above fits the Gaussian to --real")
        gaussian = (GaussianDenoiser(load_images(args.real), dk.load(args.ckpt).schedule.alphas_cumprod),
                    args.gaussian_above)
    for cell in filter(None, args.cells.split(",")):
        pipe = cell_pipeline(args.ckpt, cell, not args.raw, args.guide, args.eps_scale, interval, gaussian)
        for w in scales:
            name = cell + (" raw" if args.raw else "") + ("" if w is None else f" autoguidance {w:g}") + (
                f" eps/{args.eps_scale:g}" if args.eps_scale != 1 else "") + (
                f" guided in ({args.guidance_interval}]" if interval else "") + (
                f" gaussian above t={args.gaussian_above}" if gaussian else "")
            record(name, samples(pipe, cell, args.num, w))
    if args.from_t:
        pipe, held_out = dk.load(args.ckpt), ref_images[len(ref):len(ref) + args.num]
        for t in map(int, args.from_t.split(",")):
            record(f"real from t={t}", from_t(pipe, held_out, t))
    if args.lowt:
        res["low_t_x0_mse"] = low_t_error(args.ckpt, ref)
        print(res["low_t_x0_mse"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
