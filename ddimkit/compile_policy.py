"""When to ``torch.compile``: only where the work repays the compile, with the compile cached on disk.

``compile="auto"`` (the default of :class:`~ddimkit.Pipeline`, :class:`~ddimkit.TrainConfig` and the CLI)
compiles when the seconds a compiled network saves over the whole job exceed the seconds the compile costs:

    work × saved seconds per unit of work  >  compile seconds

The work is images × network evaluations for sampling and inversion, and images × steps for training. The
figures come from :data:`COMPILE_COSTS`, measured on an H100 for the ``ddpm-cifar10`` preset (see
``docs/performance.md``) and scaled to other models by parameters × pixels, which is what their FLOPs
follow. On a CPU, ``auto`` stays eager: compiling there costs tens of seconds per graph and pays only for
very long jobs (force it with ``compile=True``).

A compile is cheaper the second time: TorchInductor keeps its FX-graph and AOTAutograd caches on disk.
:func:`use_persistent_cache` points them at ddimkit's cache folder, and :func:`record_compile` notes there
which (model, shape, device) were compiled, so that the policy charges only the warm cost for those.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CompileCost", "COMPILE_COSTS", "check_compile", "should_compile", "use_persistent_cache",
           "compile_key", "record_compile", "was_compiled", "ledger_path"]


@dataclass(frozen=True)
class CompileCost:
    """What compiling one model costs and saves on one kind of device, for the reference model size.

    Attributes:
        params: parameters of the measured model; other models scale by parameters × pixels.
        pixels: H × W of the measured images.
        sample_cold_s: first-call compile of the inference graph with an empty on-disk cache.
        train_cold_s: first-step compile of forward + backward with an empty cache.
        warm_fraction: the share of the cold cost paid again with a filled cache (tracing is not cached).
        saved_per_eval_s: seconds saved per image per network evaluation (eager bf16 → compiled bf16).
        saved_per_train_image_s: seconds saved per training image (eager bf16 → compiled bf16).
        eager_per_train_image_s: seconds per training image eager, to turn a time budget into images.
    """

    params: float
    pixels: int
    sample_cold_s: float
    train_cold_s: float
    warm_fraction: float
    saved_per_eval_s: float
    saved_per_train_image_s: float
    eager_per_train_image_s: float


#: Measured on one H100 (torch 2.11, ``../shared/GPU.md``), ``ddpm-cifar10`` (35.7M parameters, 32×32):
#: the compiled sampler waited 28 s before its first batch, training about 70 s before its first step.
#: Eager bf16 sampled at 157 img/s and compiled at 376 img/s at DDIM-50 (50 evaluations per image), so a
#: compile saves 1/(157·50) − 1/(376·50) = 74 µs per image-evaluation; training ran at ~1,593 img/s eager
#: bf16 (diffusers' UNet2DModel, the same network) and 2,441 img/s compiled: 218 µs per image.
#: warm_fraction is the CPU's measured ratio of a cache-filled to an empty-cache first call (8-12%, see
#: docs/performance.md), rounded up to 15%; not yet measured on a GPU.
COMPILE_COSTS = {
    "cuda": CompileCost(params=35.7e6, pixels=32 * 32, sample_cold_s=28.0, train_cold_s=70.0, warm_fraction=0.15,
                        saved_per_eval_s=1 / (157 * 50) - 1 / (376 * 50),
                        saved_per_train_image_s=1 / 1593 - 1 / 2441, eager_per_train_image_s=1 / 1593),
}


def check_compile(value) -> bool | str:
    """``True``, ``False`` or ``"auto"``; anything else is a ValueError."""
    if value is True or value is False or value == "auto":
        return value
    raise ValueError(f"compile must be True, False or 'auto', got {value!r}")


def should_compile(setting, device, work: float | None, params: float, pixels: int, task: str = "sample",
                   key: str | None = None, budget_s: float | None = None) -> bool:
    """Decide whether to compile.

    Args:
        setting: ``True``/``False`` force the answer; ``"auto"`` weighs the work against the compile.
        device: where the network runs; without an entry in :data:`COMPILE_COSTS` ``auto`` means eager.
        work: images × network evaluations (``task="sample"``) or training images (``task="train"``);
            ``None`` for a training run bounded by time instead (``budget_s``).
        params: the network's parameter count.
        pixels: H × W of its images.
        task: ``sample`` or ``train``.
        key: :func:`compile_key` of this graph; when :func:`was_compiled` says the on-disk cache has it,
            only the warm share of the compile is charged.
        budget_s: with ``work=None``, the run's wall-clock budget: the images trained eager in that time.
    """
    setting = check_compile(setting)
    if setting != "auto":
        return setting
    cost = COMPILE_COSTS.get(torch.device(device).type)
    if cost is None:
        return False
    scale = (params / cost.params) * (pixels / cost.pixels)
    if work is None:
        work = (budget_s or 0.0) / (cost.eager_per_train_image_s * scale)
    saved = work * scale * (cost.saved_per_eval_s if task == "sample" else cost.saved_per_train_image_s)
    compile_s = cost.sample_cold_s if task == "sample" else cost.train_cold_s
    if key is not None and was_compiled(key):
        compile_s *= cost.warm_fraction
    return saved > compile_s


def use_persistent_cache() -> Path:
    """Point TorchInductor's on-disk caches at ``<ddimkit cache>/inductor`` unless the user chose a folder.

    Its default, ``/tmp/torchinductor_<user>``, is wiped by reboots and by machines that clear ``/tmp``;
    ddimkit's cache (``$DDIMKIT_CACHE`` or ``~/.cache/ddimkit``) survives them. Call before the first compile.
    """
    from .data import cache_dir

    # Any earlier torch.compile (even with another backend) writes inductor's default into the variable, so
    # that value does not count as the user's choice.
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, "", _inductor_default()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    path = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def _inductor_default() -> str | None:
    try:  # torch >= 2.5; older versions compute the same /tmp/torchinductor_<user> elsewhere
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def compile_key(model: torch.nn.Module, shape, device, task: str, extra: str = "") -> str:
    """A name for one compiled graph: architecture, input shape, device model, torch version and task.

    Inductor's own cache key is finer (it hashes the graph); this one only needs to say "compiled before".
    """
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    arch = json.dumps(getattr(model, "config", {}) or {}, sort_keys=True, default=str)
    text = "|".join([type(model).__name__, arch, str(tuple(shape)), name, torch.__version__, task, extra])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def ledger_path() -> Path:
    """The JSON file, next to the inductor cache, that lists the compiled graphs and their compile times."""
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or use_persistent_cache()) / "ddimkit-compiled.json"


def _read_ledger() -> dict:
    try:
        return json.loads(ledger_path().read_text())
    except (OSError, ValueError):
        return {}


def was_compiled(key: str) -> bool:
    """Whether :func:`record_compile` noted this graph in the current cache folder."""
    return key in _read_ledger()


def record_compile(key: str, seconds: float) -> None:
    """Note that graph ``key`` is in the on-disk cache (and how long its first call took). Best effort:
    a read-only or shared cache folder must not fail the job."""
    ledger = _read_ledger()
    ledger[key] = {"first_call_s": round(float(seconds), 2)}
    path = ledger_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
