"""A run folder's bookkeeping: the data and model a configuration asks for, the stored configuration that
makes a run resumable, and the loss log."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import read_json
from .data import load_images
from .diffusion import check_prediction_type
from .pipeline import SAMPLING_DEFAULTS
from .schedule import NoiseSchedule

__all__ = ["read_run_config"]


def _size_multiple(model_name: str) -> int:
    """Images must be divisible by 2^(levels-1); built on the meta device, so nothing is allocated."""
    from .models import create_model

    with torch.device("meta"):
        net = create_model(model_name)
    return 2 ** (len(net.config.get("block_out_channels", (0, 0, 0))) - 1)


def _prepare_data(cfg):
    """Load the dataset (uint8, CPU) and settle image size and channels; its labels for a class-conditional
    run (else None)."""
    images = load_images(cfg.data, channels=cfg.channels)
    labels = None
    if cfg.class_conditional:
        from .labels import load_labels

        labels = load_labels(cfg.data)
        if len(labels) != len(images):
            raise ValueError(f"{cfg.data} has {len(labels)} labels for {len(images)} images")
    size = cfg.image_size
    if size is None:
        native = max(images.shape[2:])
        mult = _size_multiple(cfg.model)
        size = math.ceil(native / mult) * mult
    from .data import fit_images

    return fit_images(images, size), size, labels


def _create_model(cfg, channels: int, size: int, classes: int | None = None) -> torch.nn.Module:
    from .models import create_model

    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
    overrides = {} if cfg.dropout is None else {"dropout": cfg.dropout}
    if classes is not None:  # one more label than classes: the null label of label dropout
        overrides["num_class_embeds"] = classes + 1
    # a self-conditioned network takes the image and its x̂0 estimate, and returns one image
    return create_model(cfg.model, in_channels=channels * (2 if cfg.self_condition else 1), out_channels=channels,
                        sample_size=size, **overrides)


def _run_config(cfg, images: torch.Tensor, size: int, schedule: NoiseSchedule,
                model: torch.nn.Module, classes: int | None = None) -> dict:
    from . import __version__

    return {
        "ddimkit_version": __version__,
        "model": {"name": cfg.model, "class": type(model).__name__, "config": model.config},
        "schedule": schedule.config,
        "prediction_type": check_prediction_type(cfg.prediction),
        "self_condition": cfg.self_condition,
        # K classes; label K is the null label, trained when label_dropout > 0
        "num_classes": classes,
        "null_label": classes if classes is not None and cfg.label_dropout > 0 else None,
        # ε̂ re-derived from the clipped x̂0 (improved-diffusion's DDIM): with diffusers' convention of keeping the
        # network's ε̂, a clipped x̂0 and an unclipped ε̂ disagree, which leaves speckled backgrounds on models
        # that are still weak at high noise.
        "sampling": {**SAMPLING_DEFAULTS, "clip_sample": cfg.clip_sample, "use_clipped_model_output": True,
                     "guidance_scale": cfg.guidance_scale,
                     "autoguidance_scale": 1.0 if cfg.autoguidance_at is None else cfg.autoguidance_scale},
        "data": {"spec": cfg.data, "num_images": int(images.shape[0]), "channels": int(images.shape[1]),
                 "image_size": size, "flip": cfg.flip},
        "train": asdict(cfg),
    }


def _check_resumable(old: dict, new: dict):
    """A resumed run must train the same model on the same data; only its length may change."""
    for key in ("model", "schedule", "prediction_type", "data"):
        if old.get(key) != new.get(key):
            raise ValueError(f"cannot resume: the run's {key} differs from the stored one")
    old_train = {k: v for k, v in old["train"].items() if k not in ("steps", "save_every", "sample_every",
                                                                      "log_every", "keep", "out", "compile",
                                                                      "minutes")}
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


def read_run_config(out: str | Path) -> dict:
    """The stored configuration of a run folder."""
    return read_json(Path(out) / "config.json")
