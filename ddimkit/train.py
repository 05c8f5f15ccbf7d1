"""Training a diffusion model from scratch: ``dk.train(TrainConfig(...))`` or ``ddimkit train``.

Design choices that make runs reproducible and resumable:

- Every random draw of step k (the batch's images, their flips, timesteps and noise, dropout) comes from
  generators seeded by (seed, k). Nothing random is carried from step to step, so resuming needs only the
  weights, the EMA weights and the optimizer state — and a resumed run equals an uninterrupted one.
- The learning rate is a pure function of the step (warm-up, then constant or cosine).
- Several processes (``accelerate launch`` or ``torchrun``) split each global batch evenly; gradients are
  averaged, so the update equals the single-process one. Rank 0 alone writes files.
- A non-finite loss stops the run with a clear message before anything non-finite is saved.
- A time budget (``minutes``) stops the run at the first step after it, with a checkpoint there; all ranks
  stop together (:mod:`ddimkit.deadline`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .batching import forward_flops
from .deadline import Deadline
from .run_folder import (_check_resumable, _create_model, _loss_log, _prepare_data, _run_config,
                         _write_loss_log, read_run_config)
from .ema import EMA, ema_decay_at
from .checkpoint import read_checkpoint, save_checkpoint, write_json
from .compiled_net import compile_for_training
from .data import to_model_range
from .diffusion import timestep_probabilities, training_loss
from .labels import num_classes
from .noise_assignment import assign_noise
from .pipeline import Pipeline
from .schedule import NoiseSchedule
from .train_config import DEFAULT_LR, TrainConfig, training_precision

__all__ = ["TrainConfig", "TrainResult", "train", "batch_indices", "lr_at", "ema_decay_at", "TrainingError",
           "DEFAULT_LR", "read_run_config"]

_SEED_STRIDE = 1_000_003  # step seeds: seed * stride + step, distinct for any realistic run length


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss); the message says which checkpoint is the last good one."""


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


def _steps_or_inf(cfg: TrainConfig) -> float:
    return cfg.steps if isinstance(cfg.steps, int) else math.inf


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for (0-based) step ``step``: linear warm-up, then constant or cosine to zero."""
    lr = cfg.peak_lr
    if cfg.warmup and step < cfg.warmup:
        return lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return lr
    # Before an automatic length is known (the first few steps) the schedule reads as not yet decaying.
    total = cfg.steps if isinstance(cfg.steps, int) else step + 1_000_000
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def replan_now(done: int, planned: float) -> bool:
    """Whether a run of automatic length plans its length again after ``done`` steps of this invocation.

    At steps 10, 100 and 1,000 (from the pace since step 3): the first plan lets the cosine start, the next
    ones follow a pace that settles (caches, clocks). Then every 1,000 steps from the pace of the last 1,000,
    while the run is in its first half: a machine whose load changes (another job ending) would otherwise
    end the run early or late. Later than that, a new length would move a learning rate already decayed.
    """
    return done in (10, 100, 1000) or (done > 1000 and done % 1000 == 0 and done < planned / 2)


def guide_due(step: int, cfg: TrainConfig) -> bool:
    """Whether the EMA weights after ``step`` steps become autoguidance's guide: at the first step past
    ``autoguidance_at`` of the run's length, once that length is known (a run of automatic length plans it
    at step 10; a later plan does not move a guide already kept)."""
    return (cfg.autoguidance_at is not None and isinstance(cfg.steps, int)
            and step >= max(1, round(cfg.autoguidance_at * cfg.steps)))


def draw_batch(cfg: TrainConfig, k: int, images: torch.Tensor, schedule: NoiseSchedule,
               probs: torch.Tensor | None, labels: torch.Tensor | None = None) -> tuple:
    """Step k's whole batch (x0, noise, perturbed noise or None, t, class labels or None, self-conditioning),
    drawn from the step's own seed. The labels are the images' ``labels``, a ``cfg.label_dropout`` share of
    them replaced by the null label K (:mod:`ddimkit.guidance`). The last is ``None`` without
    self-conditioning, else whether this batch trains with the network's own estimate (half of the batches;
    :mod:`ddimkit.self_condition`).

    Every process draws the same global batch and keeps its shard, so a run's images and noise do not
    depend on the number of processes, and a resumed run draws what an uninterrupted one would.
    """
    g = torch.Generator().manual_seed(cfg.seed * _SEED_STRIDE + k)
    idx = batch_indices(k, cfg.batch_size, len(images), cfg.seed)
    t = (torch.randint(0, schedule.num_train_timesteps, (cfg.batch_size,), generator=g) if probs is None
         else torch.multinomial(probs, cfg.batch_size, replacement=True, generator=g))
    x0 = to_model_range(images[idx])
    noise = torch.randn(x0.shape, generator=g)
    if cfg.flip:
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x0 = torch.where(flip.reshape(-1, 1, 1, 1), x0.flip(3), x0)
    if cfg.noise_assignment == "batch":
        noise = assign_noise(x0, noise)  # over the global batch, so a run's pairs do not depend on its processes
    noisy = None
    if cfg.input_perturbation:
        # drawn after the flips, so that a run without perturbation draws exactly what it always did
        noisy = noise + cfg.input_perturbation * torch.randn(x0.shape, generator=g)
    estimate = bool(torch.rand((), generator=g) < 0.5) if cfg.self_condition else None  # drawn later, likewise
    y = None
    if labels is not None:  # drawn last, likewise
        y = labels[idx]
        y = torch.where(torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout, num_classes(labels), y)
    return x0, noise, noisy, t, y, estimate


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
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import broadcast as accelerate_broadcast

    from .loading import network
    from .viz import plot_loss, save_grid

    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    out = Path(cfg.out)
    cuda = torch.cuda.is_available()
    state = PartialState(cpu=not cuda)  # the process group; the precision waits for the network
    world, rank, device = state.num_processes, state.process_index, state.device
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} does not split evenly over {world} processes")
    local = cfg.batch_size // world
    # The budget counts from here: loading data and building (or compiling) the model are part of it.
    deadline = Deadline(cfg.minutes, lambda x: accelerate_broadcast(x.to(device)).cpu(), world)

    schedule = cfg.make_schedule()
    images, size, labels = _prepare_data(cfg)
    classes = None if labels is None else num_classes(labels)
    model = _create_model(cfg, images.shape[1], size, classes)
    run_cfg = _run_config(cfg, images, size, schedule, model, classes)
    in_channels = model.config.get("in_channels", images.shape[1])  # twice the image's when self-conditioned
    zero = torch.zeros(1, dtype=torch.long)
    precision = training_precision(cfg.mixed_precision, cuda, lambda: forward_flops(
        model if classes is None else lambda x, t: model(x, t, zero), torch.zeros(1, in_channels, size, size),
        zero))
    # Accelerate keeps one process-wide state and refuses a second Accelerator with another precision; a
    # Python session that trains twice (bf16, then fp32) needs a fresh one. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=precision, cpu=not cuda)
    main = accelerator.is_main_process
    prediction_type = run_cfg["prediction_type"]
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, cfg.adam_beta2), **({"fused": True} if cuda else {}))
    ema = EMA(model)
    start, guide, guide_step = 0, None, None  # autoguidance's guide: the EMA weights at guide_step
    if resume:
        if not (out / "latest").is_file():
            raise FileNotFoundError(f"nothing to resume in {out} (no checkpoint yet)")
        ck = read_checkpoint(out, optimizer=True, device=str(device))
        _check_resumable(ck["config"], run_cfg)
        model.load_state_dict(ck["raw"])
        ema.load(model, ck["ema"])
        optimizer.load_state_dict(ck["optimizer"])
        start, guide, guide_step = ck["step"], ck["guide"], ck["state"].get("guide_step")
        stored_steps = ck["config"]["train"].get("steps")
        if cfg.steps == "auto" and isinstance(stored_steps, int):
            cfg = replace(cfg, steps=stored_steps)  # the length chosen when the run started
            run_cfg["train"]["steps"] = stored_steps
        if isinstance(cfg.steps, int) and start >= cfg.steps:
            raise ValueError(f"the run already has {start} steps; raise --steps to train longer")
    elif (out / "latest").is_file():
        raise ValueError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", run_cfg)
    net = compile_for_training(model, cfg.compile, device, cfg.steps if isinstance(cfg.steps, int) else None,
                               local, (images.shape[1], size, size), cfg.minutes)
    net, optimizer = accelerator.prepare(net, optimizer)
    plain = model  # self-conditioning's estimate pass runs it eager: the compiled net sees one grad mode only

    losses = _loss_log(out, start) if main else []
    pending: list[tuple[int, torch.Tensor]] = []
    last_saved = start
    t0, done_images = time.perf_counter(), 0
    bar = None
    if main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps if isinstance(cfg.steps, int) else None, initial=start, desc="train",
                   unit="step", dynamic_ncols=True)

    def save(step):
        if main:
            raw = accelerator.unwrap_model(net)
            raw = getattr(raw, "_orig_mod", raw)
            save_checkpoint(out, step, raw.state_dict(), run_cfg, ema=ema.state_dict(raw), optimizer=optimizer,
                            keep=cfg.keep, guide=guide, extra=None if guide is None else {"guide_step": guide_step})
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
        ema_net = network(run_cfg["model"], ema.state_dict(raw), "the EMA weights", device)
        guide_net = None if guide is None else network(run_cfg["model"], guide, "the guide", device)
        pipe = Pipeline(ema_net, schedule, prediction_type, run_cfg, run_cfg["sampling"],
                        "bf16" if cuda else "fp32", guide=guide_net)
        x = pipe.sample(cfg.num_sample_images, "ddim", steps=50, generator=torch.Generator().manual_seed(cfg.seed))
        save_grid(x, out / "samples" / f"step-{step:08d}.png")

    auto = cfg.steps == "auto"

    probs = (timestep_probabilities(schedule, cfg.min_snr_gamma) if cfg.timestep_sampling == "importance"
             else None)
    model.train()
    step = start
    try:
        while not isinstance(cfg.steps, int) or step < cfg.steps:
            step += 1
            k = step - 1  # 0-based index: seeds and the learning rate depend on it alone
            *batch, estimate = draw_batch(cfg, k, images, schedule, probs, labels)
            x0, noise, noisy, t, y = (None if v is None else v[rank * local:(rank + 1) * local].to(device)
                                      for v in batch)
            torch.manual_seed(cfg.seed * _SEED_STRIDE + k)  # dropout
            for group in optimizer.param_groups:
                group["lr"] = lr_at(k, cfg)
            with accelerator.autocast():
                loss = training_loss(net, x0, schedule, t, noise, prediction_type, cfg.min_snr_gamma,
                                     probs, noisy, estimate, plain, y).mean()
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.update(accelerator.unwrap_model(net), ema_decay_at(k, cfg))
            if guide is None and guide_due(step, cfg):
                guide, guide_step = {n: v.clone() for n, v in ema.state_dict(model).items()}, step
            done_images += cfg.batch_size
            if bar is not None:
                bar.update(1)
            if step == start + 3:
                mark = (step, time.perf_counter())
            if auto and step < _steps_or_inf(cfg) and replan_now(step - start, _steps_or_inf(cfg) - start):
                now = time.perf_counter()
                cfg = replace(cfg, steps=max(step, deadline.planned_steps(step, step - mark[0], now - mark[1])))
                if step - start >= 1000:
                    mark = (step, now)  # later plans follow the pace of the last 1,000 steps
                run_cfg["train"]["steps"] = cfg.steps
                if main:
                    write_json(out / "config.json", run_cfg)
                if bar is not None:
                    bar.total = cfg.steps
            out_of_time = deadline.passed(step)
            last = step == cfg.steps or step == stop_after or out_of_time
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
            if cfg.sample_every and step % cfg.sample_every == 0 or (last and (step == cfg.steps or out_of_time)):
                sample_grid(step)
            if step == stop_after or out_of_time:
                break
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    result = TrainResult(out, step, losses, done_images / elapsed if elapsed > 0 else 0.0)
    if main:
        from .loading import load

        result.pipeline = load(out, device=device)
    return result
