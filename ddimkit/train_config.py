"""The options of a training run: :class:`TrainConfig`, stored as JSON in the run folder, and the presets'
learning rates."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from .compile_policy import check_compile
from .diffusion import check_prediction_type
from .noise_assignment import NOISE_ASSIGNMENTS
from .schedule import NoiseSchedule

__all__ = ["TrainConfig", "DEFAULT_LR", "cpu_has_native_bf16", "training_precision", "CPU_BF16_MIN_FLOPS"]

#: Peak learning rates by preset: the DDPM paper's 2e-4 (CIFAR-10) and 2e-5 (256×256); small networks on
#: short CPU runs learn fastest near 4e-3 (measured: docs/training.md).
DEFAULT_LR = {"basic-unet": 1e-3, "tiny": 4e-3, "small": 2e-3, "mnist": 1e-3, "ddpm-cifar10": 2e-4, "ddpm-256": 2e-5}


@dataclass
class TrainConfig:
    """Everything a training run depends on (stored as JSON in the run folder).

    Attributes:
        data: dataset spec (``mnist-5k``, ``folder:PATH``, ``npz:PATH``, ...; see :mod:`ddimkit.data`).
        model: preset name (``small``, ``tiny``, ``mnist``, ``ddpm-cifar10``, ``ddpm-256``). The default,
            ``small``, and ``min_snr_gamma``'s 5 won at 10 CPU-minutes on Fashion-MNIST; for digits in a few
            minutes ``tiny`` with γ = 0.25 does better (docs/training.md).
        out: run folder.
        steps: optimizer steps in total; ``"auto"`` (with ``minutes``) sets it from the pace of the first
            steps so that the learning-rate schedule ends at the deadline (see :mod:`ddimkit.deadline`).
        minutes: wall-clock budget of this invocation: stop (and save) at the first step after it.
        batch_size: global batch size (split across processes).
        lr, warmup, lr_schedule: peak learning rate (None: the preset's, :data:`DEFAULT_LR`), linear warm-up
            steps, then ``constant`` or ``cosine``.
        weight_decay, grad_clip: AdamW weight decay; gradient-norm clip (0 = off).
        adam_beta2: AdamW's β2, the decay of its running mean of squared gradients (β1 is 0.9).
        ema_decay, ema_warmup: EMA decay; with warm-up the decay is min(decay, (1+k)/(10+k)).
        prediction: ``eps``, ``x0`` or ``v`` (aliases of epsilon, sample, v_prediction).
        min_snr_gamma: min-SNR-γ loss weighting, or None for plain MSE.
        timestep_sampling: ``uniform`` t, or ``importance``: t drawn in proportion to the min-SNR weight,
            each loss divided by T·p(t), the same expected loss with less variance
            (:func:`~ddimkit.diffusion.timestep_probabilities`).
        noise_assignment: ``none``, or ``batch``: pair each batch's images and noise draws by the assignment
            of least total distance (Immiscible Diffusion; :mod:`ddimkit.noise_assignment`).
        input_perturbation: γ of input perturbation (Ning et al. 2023): the network sees x_t made with
            ε + γξ (ξ fresh noise) and is trained on the target of ε; 0 turns it off.
        self_condition: self-conditioning (:mod:`ddimkit.self_condition`): the network also takes its own
            last x̂0 (one more input channel per image channel); about 13% more time a step for `tiny`.
        class_conditional: train on the data's class labels (:mod:`ddimkit.labels`); the network then takes
            a label, and sampling can guide by it (:mod:`ddimkit.guidance`).
        label_dropout: the share of labels replaced by the null label, so that the network also learns
            to predict without a class (classifier-free guidance needs it; 0 turns it off).
        guidance_scale: the classifier-free guidance scale stored with the model as its sampling default
            (1: the conditional network alone; see :mod:`ddimkit.guidance`).
        autoguidance_at: keep the EMA weights of this fraction of the run as autoguidance's guide
            (:mod:`ddimkit.autoguidance`), saved with every later checkpoint; None keeps none.
        autoguidance_scale: the autoguidance scale stored with the model as its sampling default, where it
            keeps a guide (1: the model alone).
        schedule, num_train_timesteps, beta_start, beta_end: the noise schedule.
        image_size, channels: fit the data to this size / channel count (default: from the data).
        flip: random horizontal flips.
        dropout: the UNet's dropout (None: the preset's).
        clip_sample: sampling default stored with the model (x̂0 range r, or None).
        seed: the one seed of the run.
        save_every, sample_every, log_every: intervals in steps (0 = only at the end / never).
        keep: checkpoints to keep.
        mixed_precision: ``auto`` (:func:`training_precision`: bf16 on CUDA, and on a CPU with native bf16
            for networks large enough to gain from it; fp32 otherwise), ``no``, ``bf16`` or ``fp16``.
        compile: ``torch.compile`` the network: ``auto`` when the run repays the compile
            (:mod:`ddimkit.compile_policy`; never on the CPU), or ``True``/``False``.
        num_sample_images: images in each sample grid.
    """

    data: str = "mnist-5k"
    model: str = "small"
    out: str = "runs/default"
    steps: int | str = 2000
    minutes: float | None = None
    batch_size: int = 64
    lr: float | None = None
    warmup: int = 100
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    prediction: str = "x0"
    min_snr_gamma: float | None = 5.0
    timestep_sampling: str = "uniform"
    input_perturbation: float = 0.0
    noise_assignment: str = "none"
    self_condition: bool = False
    class_conditional: bool = False
    label_dropout: float = 0.1
    guidance_scale: float = 1.0
    autoguidance_at: float | None = 0.2
    autoguidance_scale: float = 2.0
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float | None = None
    beta_end: float | None = None
    image_size: int | None = None
    channels: int | None = None
    flip: bool = False
    dropout: float | None = None
    clip_sample: float | None = 1.0
    seed: int = 0
    save_every: int = 500
    sample_every: int = 500
    log_every: int = 10
    keep: int = 2
    mixed_precision: str = "auto"
    compile: bool | str = "auto"
    num_sample_images: int = 64

    def __post_init__(self):
        check_prediction_type(self.prediction)
        if self.steps == "auto" and self.minutes is None:
            raise ValueError("steps='auto' needs a time budget (minutes)")
        if self.min_snr_gamma is not None and not (isinstance(self.min_snr_gamma, (int, float))
                                                   and self.min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma must be a positive number or None, got {self.min_snr_gamma!r}")
        if self.timestep_sampling not in ("uniform", "importance"):
            raise ValueError(f"timestep_sampling must be uniform or importance, got {self.timestep_sampling!r}")
        if not 0 <= self.adam_beta2 < 1:
            raise ValueError(f"adam_beta2 must lie in [0, 1), got {self.adam_beta2}")
        if self.noise_assignment not in NOISE_ASSIGNMENTS:
            raise ValueError(f"noise_assignment must be one of {', '.join(NOISE_ASSIGNMENTS)}, "
                             f"got {self.noise_assignment!r}")
        if not 0 <= self.input_perturbation <= 1:
            raise ValueError(f"input_perturbation must lie in [0, 1], got {self.input_perturbation}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.guidance_scale != 1 and not (self.class_conditional and self.label_dropout > 0):
            raise ValueError("guidance_scale other than 1 needs class_conditional with label_dropout > 0")
        if self.autoguidance_at is not None and not 0 < self.autoguidance_at < 1:
            raise ValueError(f"autoguidance_at must lie in (0, 1) or be None, got {self.autoguidance_at}")
        if not self.autoguidance_scale >= 0:
            raise ValueError(f"autoguidance_scale must be >= 0, got {self.autoguidance_scale}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        for name in ("steps", "batch_size"):
            if name == "steps" and self.steps == "auto":
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("save_every", "sample_every", "log_every", "warmup", "keep"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        check_compile(self.compile)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.model, 2e-4)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**d)

    def make_schedule(self) -> NoiseSchedule:
        kw = {k: v for k, v in (("beta_start", self.beta_start), ("beta_end", self.beta_end)) if v is not None}
        if self.schedule == "cosine" and kw:
            raise ValueError("the cosine schedule takes no beta_start/beta_end")
        return NoiseSchedule.from_name(self.schedule, self.num_train_timesteps, **kw)


#: bf16 autocast pays on a CPU with native bf16 only from about this many FLOPs per image's forward pass:
#: side by side on one thread of an AVX-512 BF16 CPU, the `small` UNet (144 MFLOP at 28×28) trained 1.63×
#: faster in bf16, `tiny` (36 MFLOP) 0.93× (its 8-channel convolutions are bound by memory, not arithmetic;
#: 1.26× since attention is written out in bf16, but 0.96× on two threads: docs/training.md).
CPU_BF16_MIN_FLOPS = 1e8


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (the AVX-512 BF16 or AMX flags of ``/proc/cpuinfo``).

    Elsewhere (AVX2 only, or no cpuinfo to read) bf16 is emulated, and slower than fp32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def training_precision(setting: str, cuda: bool, flops_per_image: Callable[[], float],
                       cpuinfo: str | None = None) -> str:
    """The mixed precision a run trains in: ``setting`` unless it is ``auto``.

    ``auto`` is bf16 on CUDA; on a CPU, bf16 where the CPU computes it natively and the network's forward
    pass costs at least :data:`CPU_BF16_MIN_FLOPS` per image, else ``no`` (fp32). ``flops_per_image`` is
    called only on a CPU with native bf16, the one case whose answer depends on it.
    """
    if setting != "auto":
        return setting
    if cuda:
        return "bf16"
    return "bf16" if cpu_has_native_bf16(cpuinfo) and flops_per_image() >= CPU_BF16_MIN_FLOPS else "no"
