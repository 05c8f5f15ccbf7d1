"""The compiled network: one batch shape, inputs normalised so that nothing recompiles, optional CUDA graphs.

``torch.compile`` specialises a graph on its inputs' sizes and strides and guards them on every call; a new
size recompiles (seconds to minutes) and, after the first one, Dynamo switches to a slower dynamic-shape
graph that also guards storage offsets — which recompiles again on the next slice. So the compiled network
only ever sees one input: :class:`StaticBatchNet` pads a ragged last batch with zero rows to the compiled
batch size and drops their outputs, and hands the network contiguous ``x`` and ``t`` (the samplers pass
stride-0 views of the step's timestep). The samplers still work on the real rows only, so the noise they
draw, and hence the images of a seed, are exactly those of the eager network.

Options (environment variables, so a benchmark can switch them without code changes):

- ``DDIMKIT_CUDA_GRAPHS``: ``1``/``0``; by default on for compiled sampling on CUDA. CUDA graphs replay
  the whole UNet as one launch (``mode="reduce-overhead"``), which matters when launches dominate (small
  models, small batches). The per-step noise is drawn outside the graph, from the same generator, so seeds
  give the same images.
- ``DDIMKIT_COMPILE_REGIONAL``: ``1`` compiles the residual and attention blocks one by one instead of the
  whole UNet (torch >= 2.5). Off by default: measured slower to compile on the CPU for ddimkit's UNets,
  whose blocks differ in shape (docs/performance.md).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch

from .compile_policy import compile_key, record_compile, should_compile, use_persistent_cache

__all__ = ["StaticBatchNet", "compiled_sampling_net", "compile_for_training", "compile_regions",
           "cuda_graphs_enabled", "regional_enabled"]

_REGIONS = ("ResnetBlock", "AttentionBlock")


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1, 0 or auto, got {value!r}")


def cuda_graphs_enabled(device) -> bool:
    """CUDA graphs for compiled sampling: CUDA only; on by default, ``DDIMKIT_CUDA_GRAPHS=0`` turns them off."""
    return torch.device(device).type == "cuda" and _flag("DDIMKIT_CUDA_GRAPHS", True)


def regional_enabled() -> bool:
    """Regional compilation, when ``DDIMKIT_COMPILE_REGIONAL=1`` and torch has ``nn.Module.compile``."""
    return _flag("DDIMKIT_COMPILE_REGIONAL", False) and hasattr(torch.nn.Module, "compile")


def compile_regions(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Compile the residual and attention blocks of ``model`` in place and return it.

    Identical blocks share one graph, so the compile costs one graph per distinct block shape instead of one
    graph for the whole network. Those shapes recompile the same ``forward``, so Dynamo's per-function limit
    (8 by default; past it Dynamo silently falls back to eager) is raised to the number of blocks.
    """
    blocks = [m for m in model.modules() if type(m).__name__ in _REGIONS]
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), len(blocks) + 1))
    for m in blocks:
        m.compile(**kwargs)
    return model


class StaticBatchNet:
    """Call a compiled ``net(x, t)`` (or ``net(x, t, class_labels)``) always with ``batch_size`` rows,
    contiguous inputs and a (B,) ``t``.

    Args:
        net: the compiled network.
        batch_size: the one batch size it is compiled for; smaller batches are padded, larger ones refused.
        cuda_graphs: ``net`` replays CUDA graphs: mark each call as a new step and copy the output out of
            the graph's buffer, which the next replay overwrites.
        on_first_call: called with the seconds the first call took (compile included).
    """

    def __init__(self, net: Callable, batch_size: int, cuda_graphs: bool = False,
                 on_first_call: Callable[[float], None] | None = None):
        self.net, self.batch_size, self.cuda_graphs = net, int(batch_size), cuda_graphs
        self._on_first_call = on_first_call

    def __call__(self, x: torch.Tensor, t, *class_labels) -> torch.Tensor:
        n, b = x.shape[0], self.batch_size
        if n > b:
            raise ValueError(f"the network was compiled for batches of {b}, got {n}")
        t = (t if torch.is_tensor(t) else torch.tensor(t)).to(x.device).reshape(-1).expand(n)
        if n < b:  # zero rows: finite through every layer, and dropped below
            x = torch.cat([x, x.new_zeros((b - n, *x.shape[1:]))])
            t = torch.cat([t, t[:1].expand(b - n)])
            class_labels = [torch.cat([y, y[:1].expand(b - n)]) for y in class_labels]
        x, t = x.contiguous(), t.contiguous()
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        start = time.perf_counter() if self._on_first_call else 0.0
        out = self.net(x, t, *class_labels)
        out = getattr(out, "sample", out)
        if self.cuda_graphs:
            out = out.clone()
        if self._on_first_call:
            if out.is_cuda:
                torch.cuda.synchronize(out.device)
            self._on_first_call(time.perf_counter() - start)
            self._on_first_call = None
        return out[:n] if n < b else out


def _params_pixels(model: torch.nn.Module, image_shape) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters()), int(image_shape[-1]) * int(image_shape[-2])


def compiled_sampling_net(model: torch.nn.Module, setting, batch_size: int, image_shape, work: float,
                          cache: dict) -> Callable | None:
    """The compiled inference network for batches of ``batch_size``, or ``None`` to run eager.

    Args:
        model: the network (in eval mode, on its device).
        setting: ``True``, ``False`` or ``"auto"`` (see :func:`~ddimkit.compile_policy.should_compile`).
        batch_size: the batch size of the job; the one shape compiled.
        image_shape: (C, H, W).
        work: images × network evaluations of the job.
        cache: where compiled networks are kept between calls (one per batch size), e.g. a Pipeline's dict.
    """
    if batch_size in cache:
        return cache[batch_size]
    if setting is False:
        return None
    first = next(model.parameters(), None)  # test doubles and parameter-free models run on the CPU
    device = first.device if first is not None else torch.device("cpu")
    graphs = cuda_graphs_enabled(device)
    regional = regional_enabled()
    key = compile_key(model, (batch_size, *image_shape), device, "sample",
                      extra=f"graphs={graphs},regional={regional}")
    params, pixels = _params_pixels(model, image_shape)
    if not should_compile(setting, device, work, params, pixels, "sample", key):
        return None
    use_persistent_cache()
    kwargs = {"dynamic": False, **({"mode": "reduce-overhead"} if graphs else {})}
    net = compile_regions(model, **kwargs) if regional else torch.compile(model, **kwargs)
    cache[batch_size] = StaticBatchNet(net, batch_size, graphs, lambda s: record_compile(key, s))
    return cache[batch_size]


def compile_for_training(model: torch.nn.Module, setting, device, steps: int | None, batch_size: int,
                         image_shape, minutes: float | None = None) -> torch.nn.Module:
    """The training network: ``torch.compile(model)`` when ``setting`` (or the policy for ``auto``) says so.

    The work is ``steps × batch_size`` images, or, for a run of unknown length, what ``minutes`` hold.

    The training batch never changes size, so no padding is needed; ``dynamic=False`` keeps Dynamo from
    switching to dynamic shapes (and their storage-offset guards) should anything ever vary.
    """
    key = compile_key(model, (batch_size, *image_shape), device, "train")
    params, pixels = _params_pixels(model, image_shape)
    work = steps * batch_size if steps is not None else None
    budget = minutes * 60 if minutes is not None else None
    if not should_compile(setting, device, work, params, pixels, "train", key, budget):
        return model
    use_persistent_cache()
    record_compile(key, float("nan"))  # noted before the step runs: the cache is written during the first step
    return torch.compile(model, dynamic=False)
