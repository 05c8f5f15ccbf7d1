"""The web app's models: loaded by name and kept, with page defaults fitted to the device (:mod:`ddimkit.app`)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .app_functions import COMPARE_DDIM_STEPS

__all__ = ["Defaults", "defaults", "Models", "describe_model"]


@dataclass(frozen=True)
class Defaults:
    """The page's starting values for one model: chosen so that a click answers in a few seconds."""

    count: int
    steps: int
    compare_count: int
    invert_steps: int
    refine: int = 3


def defaults(pipe, budget_s: float = 3.0) -> Defaults:
    """Defaults for ``pipe`` on its device. On a GPU, full-size jobs; on a CPU, the number of images is
    fitted to ``budget_s`` by timing the network (the compare view, with DDPM's T steps, gets 2× that and
    often needs more even for one image: it is the page's slow view on a CPU)."""
    T = pipe.schedule.num_train_timesteps
    if pipe.device.type == "cuda":
        return Defaults(count=64, steps=min(50, T), compare_count=16, invert_steps=min(50, T))
    steps = min(20, T)
    cost, k = _forward_cost(pipe), pipe.evaluations_per_step()  # a guided model's steps cost k forward passes
    count = next((n for n in (16, 9, 4) if steps * k * cost(n) <= budget_s), 1)
    evaluations = (T + sum(COMPARE_DDIM_STEPS)) * k
    compare = next((n for n in (4, 2) if evaluations * cost(n) <= 2 * budget_s), 1)
    return Defaults(count=count, steps=steps, compare_count=compare, invert_steps=steps)


@torch.no_grad()
def _forward_cost(pipe):
    """Seconds of one forward pass of n images, as a + b·n from timings at n = 1 and 4 (small batches on a
    CPU cost mostly per call, not per image). Each timing is the best of three."""

    def seconds(n):
        x = torch.zeros(n, *pipe.image_shape, device=pipe.device)
        t = torch.full((n,), pipe.schedule.num_train_timesteps // 2, dtype=torch.long, device=pipe.device)
        net = pipe.denoising_net()
        net(x, t)  # the first call pays one-off allocations
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            net(x, t)
            runs.append(time.perf_counter() - t0)
        return min(runs)

    one, four = seconds(1), seconds(4)
    per_image = max(0.0, (four - one) / 3)
    return lambda n: one + per_image * (n - 1)


class Models:
    """Pipelines loaded by name (``pretrained:NAME``, a run or checkpoint folder, a diffusers folder or hub
    id) and kept, the last ``keep`` of them, so that switching back and forth in the page does not reload.

    ``device`` None picks CUDA when there is one; ``precision`` None means bf16 on CUDA and fp32 on the
    CPU, as ``ddimkit sample`` does; ``compile="auto"`` compiles where the job repays it.
    """

    def __init__(self, device=None, precision: str | None = None, compile="auto", ema: bool = True, keep: int = 3):
        from .loading import default_device

        self.device = torch.device(device) if device is not None else default_device()
        self.precision = precision or ("bf16" if self.device.type == "cuda" else "fp32")
        self.compile, self.ema, self.keep = compile, ema, keep
        self._pipes: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, name: str, pipe) -> None:
        """Register an already built pipeline under ``name``."""
        with self._lock:
            self._store(name, pipe)

    def get(self, name: str):
        """The pipeline called ``name``, loading it on first use; a ValueError says why it cannot be loaded."""
        return self._entry(name)[0]

    def defaults(self, name: str) -> Defaults:
        return self._entry(name)[1]

    def _entry(self, name) -> tuple:
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model: a shipped one (pretrained:NAME), a run folder, a diffusers folder "
                             "or a hub id")
        with self._lock:  # one load at a time: two clicks must not load the same model twice
            if name not in self._pipes:
                self._store(name, self._load(name))
            self._pipes.move_to_end(name)
            return self._pipes[name]

    def _store(self, name: str, pipe):
        self._pipes[name] = (pipe, defaults(pipe))
        self._pipes.move_to_end(name)
        while len(self._pipes) > self.keep:  # the least recently used go first
            self._pipes.popitem(last=False)

    def _load(self, name: str):
        from .loading import load

        try:
            return load(name, ema=self.ema, device=self.device, precision=self.precision, compile=self.compile)
        except Exception as e:  # hub and network errors come in many types; the page shows the first line
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot load {name!r}: {text}") from None


def describe_model(name: str, pipe) -> str:
    """One line of markdown about a loaded model (its card's summary for a shipped one)."""
    c, h, w = pipe.image_shape
    params = sum(p.numel() for p in pipe.model.parameters())
    predicts = {"epsilon": "ε", "sample": "x0", "v_prediction": "v"}.get(pipe.prediction_type, pipe.prediction_type)
    line = (f"**{name}**: {c}×{h}×{w} images, T = {pipe.schedule.num_train_timesteps}, predicts {predicts}, "
            f"{params:,} parameters, on {pipe.device.type} ({pipe.precision})")
    from . import pretrained

    if pretrained.is_pretrained(name):
        card = pretrained.card(name)
        text = card.get("description") or card.get("summary")
        line += f". {text}" if text else ""
    return line
