"""The web app's checks of its inputs: each turns a page value into what the library takes, or raises a
``ValueError`` whose message is shown on the page as it is (:mod:`ddimkit.app_functions`)."""

from __future__ import annotations

import math

import torch

from .guidance import check_guidance

__all__ = ["SAMPLERS", "SPACINGS", "MAX_COUNT", "MAX_SEED", "whole", "check_steps", "check_sampler", "check_eta",
           "check_spacing", "generator", "EVERY_CLASS", "NO_CLASS", "class_choices",
           "conditions"]

SAMPLERS = {"DDPM": "ddpm", "DDIM": "ddim", "DPM-Solver++": "dpmpp-2m"}
SPACINGS = ("leading", "trailing", "linspace", "quadratic", "logsnr")
MAX_COUNT, MAX_SEED = 256, 2**63 - 1


def whole(value, what: str, lo: int, hi: int | None = None) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(v) or v != int(v):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if int(v) < lo or (hi is not None and int(v) > hi):
        raise ValueError(f"{what} must be " + (f"between {lo} and {hi}" if hi is not None else f"at least {lo}")
                         + f", got {int(v)}")
    return int(v)


def check_steps(pipe, steps, what: str = "steps") -> int:
    """A step count between 1 and the model's T (more steps than training timesteps do not exist)."""
    T = pipe.schedule.num_train_timesteps
    v = whole(steps, what, 1)
    if v > T:
        raise ValueError(f"{what} = {v} is more than the model's {T} training timesteps")
    return v


def check_sampler(name: str) -> str:
    if name in SAMPLERS.values():
        return name
    if name in SAMPLERS:
        return SAMPLERS[name]
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def check_eta(sampler: str, eta) -> float:
    try:
        eta = float(eta or 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"η must be a number >= 0, got {eta!r}") from None
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"η must be a number >= 0, got {eta}")
    if eta and sampler != "ddim":
        raise ValueError("η applies to DDIM only; DDPM and DPM-Solver++ take η = 0")
    return eta


def check_spacing(spacing) -> str | None:
    if spacing in (None, "", "model default"):
        return None
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return spacing


def generator(seed) -> torch.Generator:
    """A CPU generator seeded as ``ddimkit sample --seed`` seeds its own."""
    return torch.Generator().manual_seed(whole(seed, "seed", 0, MAX_SEED))


# -- what a sample is conditioned on ------------------------------------------------------------------------

EVERY_CLASS, NO_CLASS = "every class in turn", "none: the unconditional network"


def class_choices(pipe) -> list[str]:
    """The page's class menu for ``pipe``: every class in turn (image i gets class i mod K, as ``ddimkit
    sample`` does), each class, and the null label where the model was trained with one; [] without classes."""
    if pipe.num_classes is None:
        return []
    return ([EVERY_CLASS] + [f"class {k}" for k in range(pipe.num_classes)]
            + ([NO_CLASS] if pipe.null_label is not None else []))


def _class_label(pipe, choice) -> int | None:
    if choice in (None, "", EVERY_CLASS):
        return None
    if choice == NO_CLASS and pipe.null_label is not None:
        return pipe.null_label
    choices = class_choices(pipe)
    if choice not in choices:
        raise ValueError("this model is not class-conditional: it has no classes to choose from" if not choices else
                         f"unknown class {choice!r}; choose one of {', '.join(choices)}")
    return int(choice.removeprefix("class "))


def _scale(value, what: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the {what} scale must be a number >= 0, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"the {what} scale must be a number >= 0, got {v}")
    return v


def conditions(pipe, class_choice=None, guidance=None, autoguidance=None) -> tuple[dict, str]:
    """``pipe.sample``'s class label, classifier-free and autoguidance scales for the page's values (``None``:
    the model's defaults), checked before any work, and how they read in a label (empty at the defaults of
    an unguided model)."""
    label = _class_label(pipe, class_choice)
    cfg = _scale(guidance, "guidance")
    cfg = pipe.sampling["guidance_scale"] if cfg is None else cfg
    check_guidance(pipe.class_labels(label, 1), cfg, pipe.null_label)
    w = pipe.autoguidance(_scale(autoguidance, "autoguidance"))
    words = [] if label is None else ["unconditional" if label == pipe.null_label else f"class {label}"]
    words += ([f"guidance w={cfg:g}"] if cfg != 1 else []) + ([f"autoguidance w={w:g}"] if w != 1 else [])
    return dict(class_labels=label, guidance_scale=cfg, autoguidance_scale=w), "".join(", " + x for x in words)
