"""Models that ship inside the package, loaded by name: ``dk.load("pretrained:fashion-mnist")``.

Each one is a checkpoint folder under ``ddimkit/assets/pretrained/NAME/``: the EMA weights of a run that
``ddimkit train`` made (``model.safetensors``, stored in fp16 to keep the package small and loaded into
an fp32 network), its ``state.json`` (the run's config, so it loads like any checkpoint) and a
``card.json``: the exact training command, the data and its sha256, and the quality measured on it.
:func:`package` writes such a folder from a run folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import FORMAT, read_checkpoint, read_json, write_json

__all__ = ["PREFIX", "ROOT", "names", "card", "resolve", "is_pretrained", "package"]

PREFIX = "pretrained:"
ROOT = Path(__file__).parent / "assets" / "pretrained"


def names() -> list[str]:
    """The shipped models' names, sorted."""
    return sorted(p.name for p in ROOT.iterdir() if (p / "card.json").is_file()) if ROOT.is_dir() else []


def is_pretrained(path) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def resolve(name: str) -> Path:
    """``"pretrained:NAME"`` (or ``"NAME"``) → the model's checkpoint folder; an unknown name is a ValueError
    that lists the names."""
    short = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if short not in names():
        raise ValueError(f"unknown pretrained model {short!r}; the shipped models are: "
                         f"{', '.join(PREFIX + n for n in names()) or 'none'}")
    return ROOT / short


def card(name: str) -> dict:
    """A shipped model's card: name, description, command, data, data_sha256, step, params, quality, ..."""
    return read_json(resolve(name) / "card.json")


def package(run: str | Path, name: str, card_fields: dict, root: Path | None = None) -> Path:
    """Write the EMA weights of ``run`` (a run or checkpoint folder) as the shipped model ``name``, with its
    autoguidance guide where it has one.

    The weights go to fp16: the networks here have no weight whose rounding matters at that precision
    (checked by ``tests/test_pretrained.py``, which samples both ways). ``card_fields`` (command, data,
    data_sha256, quality, ...) are stored in ``card.json`` with the step and parameter count.
    """
    from safetensors.torch import save_file

    ck = read_checkpoint(run, ema=True)
    if ck["ema"] is None:
        raise ValueError(f"{run} has no EMA weights to ship")
    out = (root or ROOT) / name
    out.mkdir(parents=True, exist_ok=True)
    def half(state: dict) -> dict:
        return {k: v.to(torch.float16).contiguous() for k, v in state.items()}

    weights = half(ck["ema"])
    # Stored under model.safetensors with no ema file: the folder is a checkpoint whose only weights are these.
    save_file(weights, str(out / "model.safetensors"), metadata={"format": FORMAT, "weights": "ema"})
    if ck["guide"] is not None:  # autoguidance's guide ships with the model it guides
        save_file(half(ck["guide"]), str(out / "guide.safetensors"), metadata={"format": FORMAT, "weights": "guide"})
    write_json(out / "state.json", {"format": FORMAT, "step": ck["step"], "config": ck["config"]})
    params = sum(v.numel() for v in weights.values())
    write_json(out / "card.json", {"name": name, "step": ck["step"], "params": params, **card_fields})
    return out
