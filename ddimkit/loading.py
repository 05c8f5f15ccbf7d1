"""Building a :class:`~ddimkit.pipeline.Pipeline` from what is stored: :func:`load` (``dk.load``).

``load(path)`` reads a shipped model's name, a native checkpoint (a run folder or a checkpoint folder), or a
diffusers pipeline folder / hub id. :func:`build_model` and :func:`load_weights` turn a stored network
description and its weights into a module, with one clear error where they do not fit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .pipeline import Pipeline
from .schedule import NoiseSchedule

__all__ = ["load", "build_model", "load_weights", "network", "default_device"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(model_cfg: dict) -> torch.nn.Module:
    """Instantiate a network from its stored description ``{"class": ..., "config": {...}}``."""
    from .models import model_from_config

    try:
        return model_from_config(model_cfg.get("class"), model_cfg["config"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"the checkpoint's model description is invalid: {e}") from None


def load_weights(model: torch.nn.Module, state: dict, where) -> None:
    """Load a state dict strictly, turning a mismatch into one clear ValueError."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise ValueError(f"{where}: weights do not fit the model: {first.strip()}") from None
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not fit the model ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected, e.g. {(missing or unexpected)[0]})")


def network(model_cfg: dict, state: dict, where, device=None) -> torch.nn.Module:
    """The network ``model_cfg`` describes, holding the weights ``state`` (``where`` names them in errors)."""
    model = build_model(model_cfg)
    load_weights(model, state, where)
    return model if device is None else model.to(device)


def load(path: str | Path, ema: bool = True, device=None, precision: str = "fp32",
         compile: bool | str = "auto") -> Pipeline:
    """Load a model as a :class:`Pipeline`.

    ``path`` is a shipped model's name (``"pretrained:mnist"``, ``"pretrained:fashion-mnist"``; see
    :mod:`ddimkit.pretrained`), a ddimkit run folder or checkpoint folder, a diffusers pipeline folder (with
    ``model_index.json`` or ``unet/config.json``), or a hub id such as ``google/ddpm-cifar10-32``.
    ``ema`` picks the EMA weights when the checkpoint has them; ``precision`` and ``compile`` set the fast
    path (see :class:`Pipeline`). A checkpoint that holds an autoguidance guide loads it as :attr:`Pipeline.guide`.
    """
    from .checkpoint import read_checkpoint

    from . import pretrained

    device = torch.device(device) if device is not None else default_device()
    p = pretrained.resolve(path) if pretrained.is_pretrained(path) else Path(path)
    if (p / "model_index.json").is_file() or (p / "unet" / "config.json").is_file() or not p.exists():
        from .diffusers_io import is_hub_id, load_diffusers

        if p.exists() or is_hub_id(str(path)):
            pipe = load_diffusers(str(path), device=device, precision=precision)
            pipe.compile = compile
            return pipe
    ck = read_checkpoint(p, ema=ema)
    cfg = ck["config"]
    model = network(cfg["model"], ck["model"], ck["dir"], device)
    guide = None if ck["guide"] is None else network(cfg["model"], ck["guide"], ck["dir"], device)
    return Pipeline(model, NoiseSchedule.from_config(cfg["schedule"]), cfg["prediction_type"], cfg,
                    cfg.get("sampling", {}), precision, compile, guide)
