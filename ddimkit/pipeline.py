"""A trained model with everything needed to use it: :class:`Pipeline`.

A :class:`Pipeline` holds the network, its noise schedule, its prediction type and its sampling defaults, with
``sample``, ``invert``, ``reconstruct`` and ``interpolate``. :func:`ddimkit.loading.load` (``dk.load``) builds
one from a checkpoint, a diffusers folder or a hub id.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .autoguidance import autoguided, check_autoguidance
from .interpolate import slerp
from .batching import auto_batch_size
from .compile_policy import check_compile
from .compiled_net import compiled_sampling_net
from .guidance import check_guidance, class_labels_for, networks_evaluated
from .noise import generators_from_seeds, randn
from .sampling import SAMPLERS, ddim_invert, sample
from .schedule import NoiseSchedule

__all__ = ["Pipeline", "SAMPLING_DEFAULTS"]

SAMPLING_DEFAULTS = dict(clip_sample=None, thresholding=None, sample_max_value=1.0, spacing="leading",
                         steps_offset=0, set_alpha_to_one=True, variance="small", use_clipped_model_output=False,
                         guidance_scale=1.0, autoguidance_scale=1.0)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast("cuda", dtype=dtype)


@dataclass
class Pipeline:
    """A diffusion model ready to sample, invert and interpolate.

    Attributes:
        model: the network, ``model(x, t)``.
        schedule: its training :class:`NoiseSchedule`.
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        config: the stored configuration (model, schedule, sampling defaults, data, training).
        sampling: sampling defaults (clip_sample, spacing, steps_offset, set_alpha_to_one, ...).
        precision: ``fp32``, or ``bf16``/``fp16`` autocast for the network on CUDA.
        compile: ``"auto"`` (default) compiles the network with ``torch.compile`` when the job is large enough
            to repay the compile (:mod:`ddimkit.compile_policy`; never on the CPU); ``True``/``False`` force
            it. One batch shape is compiled per batch size and a ragged last batch is padded to it
            (:mod:`ddimkit.compiled_net`), so nothing recompiles and seeds give the same images.
        guide: the weaker network that autoguidance mixes with ``model`` (:mod:`ddimkit.autoguidance`), if any.
    """

    model: torch.nn.Module
    schedule: NoiseSchedule
    prediction_type: str
    config: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    precision: str = "fp32"
    compile: bool | str = "auto"
    guide: torch.nn.Module | None = None

    def __post_init__(self):
        self.compile = check_compile(self.compile)
        self.sampling = {**SAMPLING_DEFAULTS, **(self.sampling or {})}
        self.model.eval()
        if self.guide is not None:
            self.guide.eval()
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def self_condition(self) -> bool:
        """The network also takes its own last x̂0 (:mod:`ddimkit.self_condition`), as stored with the model."""
        return bool(self.config.get("self_condition", False))

    @property
    def num_classes(self) -> int | None:
        """K for a class-conditional model (it takes labels 0 … K-1; :mod:`ddimkit.guidance`), else None."""
        k = self.config.get("num_classes")
        return k if k is not None else (getattr(self.model, "config", {}) or {}).get("num_class_embeds")

    @property
    def null_label(self) -> int | None:
        """The label the model reads as "no class" (trained by label dropout), if it has one."""
        return self.config.get("null_label")

    def class_labels(self, labels=None, n: int = 1, default: str = "cycle") -> torch.Tensor | None:
        """The label of each of ``n`` images (:func:`ddimkit.guidance.class_labels_for`)."""
        return class_labels_for(labels, n, self.num_classes, self.null_label, default)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model works on."""
        cfg = getattr(self.model, "config", {}) or {}
        size = cfg.get("sample_size") or self.config.get("data", {}).get("image_size")
        if isinstance(size, (list, tuple)):
            h, w = size
        else:
            h = w = int(size)
        c = int(cfg.get("in_channels", 1))
        return (c // 2 if self.self_condition else c), int(h), int(w)

    def _self_condition_mode(self, estimates: bool) -> str | None:
        if not self.self_condition:
            return None
        return "feedback" if estimates else "empty"

    def denoising_net(self, net: Callable | None = None) -> Callable:
        """``net(x, t)`` (default: the model) on images of :attr:`image_shape`: itself, or for a
        self-conditioned model given no estimate, as a sampler's first step is. For probes of time, memory
        and FLOPs."""
        net = self.model if net is None else net
        if self.num_classes is not None:
            plain = net
            net = lambda x, t: plain(x, t, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))  # noqa: E731
        if not self.self_condition:
            return net
        from .self_condition import with_estimate

        return lambda x, t: net(with_estimate(x), t)

    def to(self, device) -> "Pipeline":
        self.model.to(device)
        if self.guide is not None:
            self.guide.to(device)
        return self

    def autoguidance(self, scale: float | None = None) -> float:
        """The autoguidance scale a sampler uses: ``scale``, else the model's default where it has its guide
        (a checkpoint written before its run kept the guide samples with the network alone)."""
        if scale is None:
            scale = self.sampling["autoguidance_scale"] if self.guide is not None else 1.0
        check_autoguidance(scale, self.guide)
        return scale

    def evaluations_per_step(self, guidance_scale: float | None = None,
                             autoguidance_scale: float | None = None) -> int:
        """Network evaluations per image and sampling step at these scales (default: the model's): two with
        classifier-free guidance (w ∉ {0, 1}: conditional and null), and each of those twice with autoguidance
        (w ∉ {0, 1}: model and guide)."""
        cfg = self.sampling["guidance_scale"] if guidance_scale is None else guidance_scale
        return networks_evaluated(cfg) * networks_evaluated(self.autoguidance(autoguidance_scale))

    def _net(self, compiled: bool = True, batch_size: int | None = None, work: float = 0.0,
             autoguidance: float = 1.0) -> Callable:
        """``net(x, t)`` in the pipeline's precision, guided by :attr:`guide` at scale ``autoguidance``:
        compiled for ``batch_size`` if the policy says so for ``work`` (images × network evaluations), eager
        otherwise."""
        device, precision = self.device, self.precision

        def fast(network, cache: str):
            if not (compiled and batch_size is not None and self.compile is not False):
                return network
            if getattr(self, cache, None) is None:
                setattr(self, cache, {})  # one compiled network per batch size
            return compiled_sampling_net(network, self.compile, batch_size, self.image_shape, work,
                                         getattr(self, cache)) or network

        model = autoguided(fast(self.model, "_compiled"),
                           None if autoguidance == 1 else fast(self.guide, "_compiled_guide"), autoguidance)

        def net(x, t, *class_labels):
            with _autocast(device, precision):
                out = model(x, t, *class_labels)
            return out.float()

        return net

    def _options(self, spacing, clip_sample, sampler, use_clipped_model_output=None):
        opts = dict(self.sampling)
        if use_clipped_model_output is not None:
            opts["use_clipped_model_output"] = use_clipped_model_output
        if spacing is None:
            spacing = "logsnr" if sampler == "dpmpp-2m" and not self.schedule.zero_terminal_snr else opts["spacing"]
        opts["spacing"] = spacing
        if clip_sample != "config":
            opts["clip_sample"] = clip_sample
            if clip_sample is None:
                opts["thresholding"] = None
        opts.pop("autoguidance_scale")  # the pipeline mixes the networks (_net); the samplers see one
        return opts

    def _batch_size(self, batch_size: int | None, n: int) -> int:
        """The user's batch size, else all n on the CPU and as many as fit on a GPU (:mod:`ddimkit.batching`)."""
        if batch_size is None:
            batch_size = auto_batch_size(self.denoising_net(self._net(compiled=False)), self.image_shape, n,
                                         self.device)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        return batch_size

    def check_images(self, x: torch.Tensor, what: str = "images"):
        c, h, w = self.image_shape
        if x.ndim != 4 or x.shape[1:] != (c, h, w):
            raise ValueError(f"{what} have shape {tuple(x.shape[1:])}; the model takes ({c}, {h}, {w})")

    @torch.no_grad()
    def sample(self, n: int | None = None, sampler: str = "ddim", steps: int | Sequence[int] | None = None,
               eta: float | str = 0.0, spacing: str | None = None, clip_sample="config",
               generator: torch.Generator | None = None, seeds: Sequence[int] | None = None,
               batch_size: int | None = None, x_T: torch.Tensor | None = None, callback: Callable | None = None,
               progress: bool = False, use_clipped_model_output: bool | None = None,
               distributed: bool = False, estimates: bool = True, class_labels=None,
               guidance_scale: float | None = None, autoguidance_scale: float | None = None) -> torch.Tensor:
        """Generate ``n`` images in [-1, 1], shape (n, C, H, W), on the CPU.

        The starting noise is drawn from ``generator`` first (all n at once), then the per-step noise from
        the same generator, as diffusers' pipelines do — so for n ≤ batch_size a seed gives the same images.
        With ``seeds`` instead, sample i uses its own generator and does not depend on the batch size.

        Args:
            n: number of images (or ``len(seeds)``, or ``len(x_T)``).
            sampler: ``ddim``, ``ddpm`` or ``dpmpp-2m``.
            steps: number of steps (default: T for ddpm, 50 otherwise) or an explicit grid.
            eta: DDIM's η, or ``"large"`` (see :func:`ddimkit.sample`).
            spacing: grid spacing; default the model's (``logsnr`` for dpmpp-2m).
            clip_sample: ``"config"`` (the model's default), ``None`` (off) or a range r.
            generator: a CPU or device ``torch.Generator``.
            seeds: one seed per image, instead of ``generator``.
            batch_size: images per forward batch (default: all at once on the CPU; on a GPU as many as fit
                in free memory).
            x_T: explicit starting noise (then ``n`` is its batch size).
            callback: per-step callback (see :func:`ddimkit.sample`); ``i`` restarts for every batch.
            progress: show a progress bar.
            use_clipped_model_output: with clipping, re-derive ε̂ from the clipped x̂0 (default: the model's
                setting — on for models trained by ddimkit, off for diffusers checkpoints, as diffusers does).
            distributed: under ``torchrun``/``accelerate launch``, split the images of ``seeds`` across the
                processes; every process returns all of them, identical to one process with the same batch
                size (:mod:`ddimkit.sharded_sampling`).
            estimates: for a self-conditioned model (:attr:`self_condition`), feed each step the x̂0 of the
                step before (its sampler), or with ``False`` none (the path :meth:`invert` runs backwards).
            class_labels: for a class-conditional model (:attr:`num_classes`), one label for all images or
                one per image; default: image i gets label i mod K, so every class appears.
            guidance_scale: classifier-free guidance's w (:mod:`ddimkit.guidance`; default: the model's,
                1 = the conditional network alone).
            autoguidance_scale: autoguidance's w (:mod:`ddimkit.autoguidance`; default: the model's where it
                has a guide, 1 = the model alone).
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if distributed:
            if seeds is None or generator is not None or x_T is not None:
                raise ValueError("distributed sampling takes seeds (image i from its own seed), not generator or x_T")
            from .sharded_sampling import sample_sharded

            return sample_sharded(self, seeds, batch_size, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                                  clip_sample=clip_sample, callback=callback, progress=progress,
                                  use_clipped_model_output=use_clipped_model_output, estimates=estimates,
                                  class_labels=class_labels, guidance_scale=guidance_scale,
                                  autoguidance_scale=autoguidance_scale)
        shape = self.image_shape
        device = self.device
        if seeds is not None:
            if generator is not None:
                raise ValueError("give either seeds or generator, not both")
            gens = generators_from_seeds(seeds)
            n = len(gens)
            x_T = torch.cat([randn((1, *shape), g) for g in gens]) if x_T is None else x_T
        else:
            gens = generator
            if x_T is None:
                if n is None or n < 1:
                    raise ValueError(f"number of images must be at least 1, got {n}")
                x_T = randn((n, *shape), generator)
        n = x_T.shape[0]
        self.check_images(x_T, "starting noise")
        opts = self._options(spacing, clip_sample, sampler, use_clipped_model_output)
        if guidance_scale is not None:
            opts["guidance_scale"] = guidance_scale
        labels = self.class_labels(class_labels, n)

        check_guidance(labels, opts["guidance_scale"], self.null_label)  # before any progress is shown
        autoguidance = self.autoguidance(autoguidance_scale)
        batch_size = self._batch_size(batch_size, n)
        out = []
        nsteps = steps if steps is not None else (self.schedule.num_train_timesteps if sampler == "ddpm" else 50)
        net = self._net(batch_size=min(batch_size, n), work=n * (nsteps if isinstance(nsteps, int) else len(nsteps)),
                        autoguidance=autoguidance)
        with _progress(progress, math.ceil(n / batch_size) * (nsteps if isinstance(nsteps, int) else len(nsteps)),
                       f"{sampler}") as bar:
            def cb(d):
                bar.update(1)
                if callback is not None:
                    callback(d)

            for lo in range(0, n, batch_size):
                g = gens[lo:lo + batch_size] if isinstance(gens, list) else gens
                x = sample(net, x_T[lo:lo + batch_size].to(device), self.schedule, sampler=sampler, steps=steps,
                           eta=eta, prediction_type=self.prediction_type, generator=g, callback=cb,
                           self_condition=self._self_condition_mode(estimates),
                           class_labels=None if labels is None else labels[lo:lo + batch_size],
                           null_label=self.null_label, **opts)
                out.append(x.float().cpu())
        return torch.cat(out).clamp(-1, 1)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, steps: int | Sequence[int] = 50, spacing: str | None = None,
               refine: int = 0, batch_size: int | None = None, progress: bool = False,
               callback: Callable | None = None, class_labels=None) -> torch.Tensor:
        """DDIM-invert images in [-1, 1] (N, C, H, W) to their starting noise (see :func:`ddimkit.ddim_invert`).

        ``callback`` is called after every step of every batch, as :meth:`sample`'s is. A class-conditional
        model inverts with ``class_labels`` (one, or one per image), by default with its null label; decode
        with the same labels (:meth:`reconstruct`)."""
        self.check_images(images)
        labels = self.class_labels(class_labels, images.shape[0], default="null")
        spacing = spacing or self.sampling["spacing"]
        batch_size = self._batch_size(batch_size, images.shape[0])
        n = images.shape[0]
        net, out = self._net(batch_size=min(batch_size, n), work=n * (steps if isinstance(steps, int) else
                                                                      len(steps)) * (1 + refine)), []
        for lo in range(0, images.shape[0], batch_size):
            x = images[lo:lo + batch_size].to(self.device).float()
            out.append(ddim_invert(net, x, self.schedule, steps, spacing, self.prediction_type, refine, callback,
                                   steps_offset=self.sampling["steps_offset"],
                                   set_alpha_to_one=self.sampling["set_alpha_to_one"],
                                   self_condition=self._self_condition_mode(False),
                                   class_labels=None if labels is None else labels[lo:lo + batch_size]).cpu())
        return torch.cat(out)

    def reconstruct(self, x_T: torch.Tensor, steps: int | Sequence[int] = 50, spacing: str | None = None,
                    batch_size: int | None = None, progress: bool = False, class_labels=None) -> torch.Tensor:
        """Decode noise with deterministic, unclipped, unguided DDIM (no autoguidance either) on the same grid
        and with the same class labels as :meth:`invert`."""
        return self.sample(x_T=x_T, sampler="ddim", steps=steps, eta=0.0, spacing=spacing or self.sampling["spacing"],
                           clip_sample=None, batch_size=batch_size, progress=progress, estimates=False,
                           class_labels=self.class_labels(class_labels, x_T.shape[0], default="null"),
                           guidance_scale=1.0, autoguidance_scale=1.0)

    def interpolate(self, z0: torch.Tensor, z1: torch.Tensor, alphas: Sequence[float], steps: int = 50,
                    spacing: str | None = None, batch_size: int | None = None, inverted: bool = False,
                    class_labels=None) -> torch.Tensor:
        """slerp between two noises (1, C, H, W) at each α and decode with DDIM η=0: (len(alphas), C, H, W).

        ``inverted=True`` says the noises come from :meth:`invert`: they are then decoded as
        :meth:`reconstruct` does (unclipped, on the inversion's grid), so that α = 0 and α = 1 give the
        input images back. Clipping would move the decode off the path the inversion followed. A
        class-conditional model decodes every point with ``class_labels`` (one label; default: the null label
        as :meth:`invert` has).
        """
        zs = slerp(z0, z1, list(alphas))[:, 0]
        if inverted:
            return self.reconstruct(zs, steps=steps, spacing=spacing, batch_size=batch_size, class_labels=class_labels)
        return self.sample(x_T=zs, sampler="ddim", steps=steps, eta=0.0, spacing=spacing, batch_size=batch_size,
                           class_labels=self.class_labels(class_labels, len(zs), default="null"))


class _NullBar:
    def update(self, k=1):
        pass


@contextlib.contextmanager
def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        yield _NullBar()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True) as bar:
        yield bar
