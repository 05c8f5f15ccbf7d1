"""Helpers shared by the experiments: seeds, noise, tables, the output folder and real images."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..checkpoint import atomic_write, write_json
from ..data import convert_channels, fit_images, load_images, to_model_range
from ..metrics import reconstruction_mse
from ..noise import randn

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")
ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


def _folder(out) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _noise(pipe, seed: int, n: int = 1) -> torch.Tensor:
    """Starting noise (n, C, H, W) drawn as ``pipe.sample(n, generator=...)`` draws it from the same seed."""
    return randn((n, *pipe.image_shape), _gen(seed))


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.double() - b.double()).abs()
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean())}


def _rms01(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference on the [0, 1] scale of images in [-1, 1]."""
    return float(reconstruction_mse(a, b).mean().sqrt())


def _diff_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| shown on a fixed scale (black = equal, white = 2), so float-level noise stays black."""
    return (a - b).abs() - 1


def _two(values: Sequence, what: str) -> tuple:
    values = tuple(values)
    if len(values) != 2:
        raise ValueError(f"{what} needs exactly two values, got {len(values)}")
    return values


def _non_empty(values: Sequence, what: str) -> tuple:
    values = tuple(values)
    if not values:
        raise ValueError(f"{what} needs at least one value")
    return values


def _cell(v) -> str:
    if isinstance(v, float):
        return "0" if v == 0 else f"{v:.5g}"
    return str(v).replace("|", "\\|")  # a bare | would end the markdown cell


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; floats get five significant digits."""
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _finish(out: Path, name: str, numbers: dict, title: str, *sections: str) -> dict:
    """Write NAME.json (the numbers) and NAME.md (a title and small tables to paste), return the numbers."""
    write_json(out / f"{name}.json", numbers)
    text = f"### {title}\n\n" + "\n".join(sections)
    atomic_write(out / f"{name}.md", lambda p: p.write_text(text))
    return numbers


def _data_spec(pipe, data: str | None) -> str | None:
    if data:
        return data
    return ((pipe.config or {}).get("data") or {}).get("spec") if pipe is not None else None


def _real_images(pipe, data: str | None, num: int, what: str, fallback: str | None = None,
                 indices: Sequence[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Real images in [-1, 1] fitted to the model, and their indices: ``indices`` of the dataset, or ``num``
    spread evenly over it.

    The dataset is ``data``, else the model's training data, else ``fallback``. Spreading the picks (rather
    than taking the first ``num``) shows several classes of a dataset stored sorted by class.
    """
    spec = _data_spec(pipe, data) or fallback
    if spec is None:
        raise ValueError(f"{what} needs images and this checkpoint names no dataset; pass --data (e.g. folder:PATH)")
    try:
        x = load_images(spec)
    except (ValueError, OSError) as e:
        raise ValueError(f"{what} cannot load the images {spec!r}: {e}") from None
    if indices is None:
        if len(x) < num:
            raise ValueError(f"{what} needs {num} images; {spec!r} has {len(x)}")
        indices = _spread(len(x), num)
    elif max(indices) >= len(x):
        raise ValueError(f"{what}: image index {max(indices)} is out of range; {spec!r} has {len(x)} images")
    x = x[list(indices)]
    if pipe is not None:
        c, h, w = pipe.image_shape
        if h != w:
            raise ValueError(f"{what} supports square models only; this one takes {h}x{w}")
        x = fit_images(convert_channels(x, c, spec), h)
    return to_model_range(x), list(indices)


class _Recorder:
    """A sampler callback that keeps x_t and x̂0 of the first sample at the chosen step indices."""

    def __init__(self, keep: Sequence[int]):
        self.keep = set(keep)
        self.steps: list[dict] = []

    def __call__(self, d: dict):
        if d["i"] in self.keep:
            self.steps.append({"i": d["i"], "t": d["t"], "x": d["x"][:1].float().cpu(),
                               "x0": d["x0"][:1].float().cpu()})


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included."""
    k = min(k, n)
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})
