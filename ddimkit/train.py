"""Training a diffusion model from scratch: ``dk.train(TrainConfig(...))`` or ``ddimkit train``.

Design choices that make runs reproducible and resumable:

- Every random draw of step k (the batch's images, their flips, timesteps and noise, dropout) comes from
  generators seeded by (seed, k). Nothing random is carried from step to step, so resuming needs only the
  weights, the EMA weights and the optimizer state — and a resumed run equals an uninterrupted one.
- The learning rate is a pure function of the step (warm-up, then constant or cosine).
- Several processes (``accelerate launch`` or ``torchrun``) split each global batch evenly; gradients are
  averaged, so the update equals the single-process one. Rank 0 alone writes files.
- A non-finite loss stops the run with a clear message before anything non-finite is saved.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .checkpoint import read_checkpoint, read_json, save_checkpoint, write_json
from .data import load_images, to_model_range
from .diffusion import check_prediction_type, training_loss
from .pipeline import Pipeline, SAMPLING_DEFAULTS
from .schedule import NoiseSchedule

__all__ = ["TrainConfig", "TrainResult", "train", "batch_indices", "lr_at", "ema_decay_at", "TrainingError",
           "DEFAULT_LR"]

_SEED_STRIDE = 1_000_003  # step seeds: seed * stride + step, distinct for any realistic run length

#: Peak learning rates by preset: the DDPM paper's 2e-4 (CIFAR-10) and 2e-5 (256×256); small networks on
#: short CPU runs learn fastest near 2e-3.
DEFAULT_LR = {"basic-unet": 1e-3, "tiny": 2e-3, "mnist": 1e-3, "ddpm-cifar10": 2e-4, "ddpm-256": 2e-5}


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss); the message says which checkpoint is the last good one."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (stored as JSON in the run folder).

    Attributes:
        data: dataset spec (``mnist-5k``, ``folder:PATH``, ``npz:PATH``, ...; see :mod:`ddimkit.data`).
        model: preset name (``tiny``, ``mnist``, ``ddpm-cifar10``, ``ddpm-256``).
        out: run folder.
        steps: optimizer steps in total.
        batch_size: global batch size (split across processes).
        lr, warmup, lr_schedule: peak learning rate (None: the preset's, :data:`DEFAULT_LR`), linear warm-up
            steps, then ``constant`` or ``cosine``.
        weight_decay, grad_clip: AdamW weight decay; gradient-norm clip (0 = off).
        ema_decay, ema_warmup: EMA decay; with warm-up the decay is min(decay, (1+k)/(10+k)).
        prediction: ``eps``, ``x0`` or ``v`` (aliases of epsilon, sample, v_prediction).
        min_snr_gamma: min-SNR-γ loss weighting, or None for plain MSE.
        schedule, num_train_timesteps, beta_start, beta_end: the noise schedule.
        image_size, channels: fit the data to this size / channel count (default: from the data).
        flip: random horizontal flips.
        dropout: the UNet's dropout (None: the preset's).
        clip_sample: sampling default stored with the model (x̂0 range r, or None).
        seed: the one seed of the run.
        save_every, sample_every, log_every: intervals in steps (0 = only at the end / never).
        keep: checkpoints to keep.
        mixed_precision: ``auto`` (bf16 on CUDA, fp32 on CPU), ``no``, ``bf16`` or ``fp16``.
        compile: ``torch.compile`` the network (CUDA).
        num_sample_images: images in each sample grid.
    """

    data: str = "mnist-5k"
    model: str = "tiny"
    out: str = "runs/default"
    steps: int = 2000
    batch_size: int = 64
    lr: float | None = None
    warmup: int = 100
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    prediction: str = "eps"
    min_snr_gamma: float | None = None
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
    compile: bool = False
    num_sample_images: int = 64

    def __post_init__(self):
        check_prediction_type(self.prediction)
        for name in ("steps", "batch_size"):
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


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the last step, the logged losses and the trained pipeline."""

    out: Path
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    images_per_second: float = 0.0
    pipeline: Pipeline | None = None


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Dataset indices of step ``step``'s global batch: epochs are seeded permutations, read in order."""
    start = step * batch_size
    out, filled = [], 0
    while filled < batch_size:
        epoch, pos = divmod(start + filled, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * _SEED_STRIDE + epoch))
        take = perm[pos:pos + batch_size - filled]
        out.append(take)
        filled += len(take)
    return torch.cat(out)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for (0-based) step ``step``: linear warm-up, then constant or cosine to zero."""
    lr = cfg.peak_lr
    if cfg.warmup and step < cfg.warmup:
        return lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    """EMA decay after ``step`` updates; the warm-up lets early weights fade fast."""
    if not cfg.ema_warmup:
        return cfg.ema_decay
    return min(cfg.ema_decay, (1 + step) / (10 + step))


def _size_multiple(model_name: str) -> int:
    """Images must be divisible by 2^(levels-1); built on the meta device, so nothing is allocated."""
    from .models import create_model

    with torch.device("meta"):
        net = create_model(model_name)
    return 2 ** (len(net.config.get("block_out_channels", (0, 0, 0))) - 1)


def _prepare_data(cfg: TrainConfig):
    """Load the dataset (uint8, CPU) and settle image size and channels."""
    images = load_images(cfg.data, channels=cfg.channels)
    size = cfg.image_size
    if size is None:
        native = max(images.shape[2:])
        mult = _size_multiple(cfg.model)
        size = math.ceil(native / mult) * mult
    from .data import fit_images

    return fit_images(images, size), size


def _create_model(cfg: TrainConfig, channels: int, size: int) -> torch.nn.Module:
    from .models import create_model

    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
    overrides = {} if cfg.dropout is None else {"dropout": cfg.dropout}
    return create_model(cfg.model, in_channels=channels, sample_size=size, **overrides)


def _run_config(cfg: TrainConfig, images: torch.Tensor, size: int, schedule: NoiseSchedule,
                model: torch.nn.Module) -> dict:
    from . import __version__

    return {
        "ddimkit_version": __version__,
        "model": {"name": cfg.model, "class": type(model).__name__, "config": model.config},
        "schedule": schedule.config,
        "prediction_type": check_prediction_type(cfg.prediction),
        # ε̂ re-derived from the clipped x̂0 (improved-diffusion's DDIM): with diffusers' convention of keeping the
        # network's ε̂, a clipped x̂0 and an unclipped ε̂ disagree, which leaves speckled backgrounds on models
        # that are still weak at high noise.
        "sampling": {**SAMPLING_DEFAULTS, "clip_sample": cfg.clip_sample, "use_clipped_model_output": True},
        "data": {"spec": cfg.data, "num_images": int(images.shape[0]), "channels": int(images.shape[1]),
                 "image_size": size, "flip": cfg.flip},
        "train": asdict(cfg),
    }


class _EMA:
    """Exponential moving average of parameters (buffers are copied)."""

    def __init__(self, model: torch.nn.Module):
        self.params = [p.detach().clone() for p in model.parameters()]
        self.buffers = [b.detach().clone() for b in model.buffers()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float):
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1 - decay)
        for b, src in zip(self.buffers, model.buffers()):
            b.copy_(src)

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        return dict(zip(names, self.params + self.buffers))

    def load(self, model: torch.nn.Module, sd: dict[str, torch.Tensor]):
        named = list(model.named_parameters()) + list(model.named_buffers())
        for dst, (name, _) in zip(self.params + self.buffers, named):
            dst.copy_(sd[name])


def _check_resumable(old: dict, new: dict):
    """A resumed run must train the same model on the same data; only its length may change."""
    for key in ("model", "schedule", "prediction_type", "data"):
        if old.get(key) != new.get(key):
            raise ValueError(f"cannot resume: the run's {key} differs from the stored one")
    old_train = {k: v for k, v in old["train"].items() if k not in ("steps", "save_every", "sample_every",
                                                                      "log_every", "keep", "out", "compile")}
    new_train = {k: v for k, v in new["train"].items() if k in old_train}
    diff = sorted(k for k in old_train if old_train[k] != new_train.get(k))
    if diff:
        raise ValueError(f"cannot resume: training options differ from the stored run: {', '.join(diff)}")


def _loss_log(out: Path, resume_step: int) -> list[tuple[int, float]]:
    """Rows of loss.csv up to the resumed step (later rows belong to the lost part of the run)."""
    path = out / "loss.csv"
    if resume_step == 0 or not path.is_file():
        return []
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            if int(r["step"]) <= resume_step:
                rows.append((int(r["step"]), float(r["loss"])))
    return rows


def _write_loss_log(out: Path, rows: list[tuple[int, float]]):
    from .checkpoint import atomic_write

    def write(p):
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss"])
            w.writerows((s, f"{l:.6g}") for s, l in rows)

    atomic_write(out / "loss.csv", write)


def train(cfg: TrainConfig | dict, resume: bool = False, stop_after: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train a model as configured; write checkpoints, loss log/plot and sample grids to ``cfg.out``.

    Args:
        cfg: a :class:`TrainConfig` (or a dict of its fields).
        resume: continue from the run folder's latest checkpoint (same model, data and options).
        stop_after: stop (after saving) once this step is reached, as if interrupted — for tests and
            for splitting a long run over sessions.
        progress: show a progress bar (rank 0).

    Returns:
        a :class:`TrainResult`, with ``pipeline`` holding the EMA model on rank 0.
    """
    from accelerate import Accelerator

    from .pipeline import build_model
    from .viz import plot_loss, save_grid

    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    out = Path(cfg.out)
    cuda = torch.cuda.is_available()
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if cuda else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=not cuda)
    main = accelerator.is_main_process
    world = accelerator.num_processes
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} does not split evenly over {world} processes")
    local = cfg.batch_size // world
    rank = accelerator.process_index
    device = accelerator.device

    schedule = cfg.make_schedule()
    images, size = _prepare_data(cfg)
    model = _create_model(cfg, images.shape[1], size)
    run_cfg = _run_config(cfg, images, size, schedule, model)
    prediction_type = run_cfg["prediction_type"]
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay,
                                  **({"fused": True} if cuda else {}))
    ema = _EMA(model)
    start = 0
    if resume:
        if not (out / "latest").is_file():
            raise FileNotFoundError(f"nothing to resume in {out} (no checkpoint yet)")
        ck = read_checkpoint(out, optimizer=True, device=str(device))
        _check_resumable(ck["config"], run_cfg)
        model.load_state_dict(ck["raw"])
        ema.load(model, ck["ema"])
        optimizer.load_state_dict(ck["optimizer"])
        start = ck["step"]
        if start >= cfg.steps:
            raise ValueError(f"the run already has {start} steps; raise --steps to train longer")
    elif (out / "latest").is_file():
        raise ValueError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", run_cfg)
    net = torch.compile(model) if cfg.compile else model
    net, optimizer = accelerator.prepare(net, optimizer)

    losses = _loss_log(out, start) if main else []
    pending: list[tuple[int, torch.Tensor]] = []
    last_saved = start
    t0, done_images = time.perf_counter(), 0
    bar = None
    if main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def save(step):
        if main:
            raw = accelerator.unwrap_model(net)
            raw = getattr(raw, "_orig_mod", raw)
            save_checkpoint(out, step, raw.state_dict(), run_cfg, ema=ema.state_dict(raw), optimizer=optimizer,
                            keep=cfg.keep)
            _write_loss_log(out, losses)
            if losses:
                plot_loss(*zip(*losses), out / "loss.png", title=f"{cfg.model} on {cfg.data}")
        accelerator.wait_for_everyone()

    def flush():
        """Move logged losses to the host (one sync) and stop on a non-finite one."""
        nonlocal pending
        if not pending:
            return
        values = torch.stack([l for _, l in pending]).cpu().tolist()
        for (s, _), v in zip(pending, values):
            if not math.isfinite(v):
                raise TrainingError(f"the loss became non-finite at step {s}; stopped. The last good checkpoint "
                                    f"is {out / 'checkpoints' / f'step-{last_saved:08d}'}" if last_saved else
                                    f"the loss became non-finite at step {s}; stopped before any checkpoint")
            losses.append((s, v))
        pending = []
        if bar is not None:
            bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{lr_at(s - 1, cfg):.2e}")

    def sample_grid(step):
        if not main or not cfg.num_sample_images:
            return
        raw = accelerator.unwrap_model(net)
        raw = getattr(raw, "_orig_mod", raw)
        ema_net = build_model(run_cfg["model"]).to(device)
        ema_net.load_state_dict(ema.state_dict(raw))
        pipe = Pipeline(ema_net, schedule, prediction_type, run_cfg, run_cfg["sampling"],
                        "bf16" if cuda else "fp32")
        x = pipe.sample(cfg.num_sample_images, "ddim", steps=50, generator=torch.Generator().manual_seed(cfg.seed))
        save_grid(x, out / "samples" / f"step-{step:08d}.png")

    model.train()
    step = start
    try:
        for step in range(start + 1, cfg.steps + 1):
            k = step - 1  # 0-based index: seeds and the learning rate depend on it alone
            g = torch.Generator().manual_seed(cfg.seed * _SEED_STRIDE + k)
            idx = batch_indices(k, cfg.batch_size, len(images), cfg.seed)
            t = torch.randint(0, schedule.num_train_timesteps, (cfg.batch_size,), generator=g)
            x0 = to_model_range(images[idx])
            noise = torch.randn(x0.shape, generator=g)
            if cfg.flip:
                flip = torch.rand(cfg.batch_size, generator=g) < 0.5
                x0 = torch.where(flip.reshape(-1, 1, 1, 1), x0.flip(3), x0)
            shard = slice(rank * local, (rank + 1) * local)
            x0, noise, t = x0[shard].to(device), noise[shard].to(device), t[shard].to(device)
            torch.manual_seed(cfg.seed * _SEED_STRIDE + k)  # dropout
            for group in optimizer.param_groups:
                group["lr"] = lr_at(k, cfg)
            with accelerator.autocast():
                loss = training_loss(net, x0, schedule, t, noise, prediction_type, cfg.min_snr_gamma).mean()
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.update(accelerator.unwrap_model(net), ema_decay_at(k, cfg))
            done_images += cfg.batch_size
            if bar is not None:
                bar.update(1)
            last = step == cfg.steps or step == stop_after
            save_now = bool(cfg.save_every and step % cfg.save_every == 0) or last
            # Log the loss at log steps and before every save: once non-finite, the weights stay so, and
            # the check at the save step keeps a bad state from ever being written.
            if cfg.log_every and step % cfg.log_every == 0 or save_now:
                mean_loss = accelerator.reduce(loss.detach(), "mean")  # a collective: every rank calls it
                if main:
                    pending.append((step, mean_loss))
                    flush()
            if save_now:
                save(step)
                last_saved = step
            if cfg.sample_every and step % cfg.sample_every == 0 or (last and step == cfg.steps):
                sample_grid(step)
            if step == stop_after:
                break
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    result = TrainResult(out, step, losses, done_images / elapsed if elapsed > 0 else 0.0)
    if main:
        from .pipeline import load

        result.pipeline = load(out, device=device)
    return result


def read_run_config(out: str | Path) -> dict:
    """The stored configuration of a run folder."""
    return read_json(Path(out) / "config.json")
