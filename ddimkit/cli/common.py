"""Argument types and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


class UsageError(ValueError):
    """Bad input from the command line: printed as one line, exit code 2."""


def _parsed(text: str, cast, ok, what: str):
    """Parse one argument with ``cast`` and check it with ``ok``; argparse reports the error and exits 2."""
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def positive_int(text: str) -> int:
    return _parsed(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _parsed(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _parsed(text, float, lambda v: v > 0, "a positive number")


def non_negative_float(text: str) -> float:
    return _parsed(text, float, lambda v: v >= 0, "a number >= 0")


def eta_value(text: str) -> float | str:
    """DDIM's η: a number >= 0, or ``large`` for the σ̂ variant."""
    if text == "large":
        return text
    return _parsed(text, float, lambda v: v >= 0, "eta as a number >= 0 or 'large'")


def str_list(text: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [v.strip() for v in text.split(",") if v.strip()]


def float_list(text: str) -> list[float]:
    return [_parsed(v, float, lambda v: True, "comma-separated numbers") for v in str_list(text)]


def int_list(text: str) -> list[int]:
    """Comma-separated integers >= 0, at least one."""
    values = [non_negative_int(v) for v in str_list(text)]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def eta_list(text: str) -> list:
    return [eta_value(v) for v in str_list(text)]


def writable_file(path: str | Path, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check, before any work, that ``path`` can be written (its folder is created if needed)."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{path}: the output must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    writable_dir(path.parent)
    return path


def writable_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {path}: permission denied")
    return path


def device_arg(text: str | None) -> torch.device:
    if text in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UsageError(f"unknown device {text!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available")
    return dev


def join_launch(device: str | None) -> str:
    """Under torchrun/accelerate launch, join the process group and return this process's device (cuda →
    cuda:LOCAL_RANK); only rank 0 then prints. Outside a launcher, the device as given."""
    from .. import distributed

    distributed.check_launch()  # before any work: a launch that would silently run one process
    if not distributed.launched():
        return device
    dev = str(distributed.init(device_arg(device)))
    distributed.quiet_others()
    return dev


def add_ckpt_args(p: argparse.ArgumentParser, required: bool = True):
    p.add_argument("--ckpt", required=required,
                   help="pretrained:mnist, pretrained:fashion-mnist (shipped), a run folder, checkpoint folder, "
                        "diffusers folder or hub id")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="use the EMA weights when the checkpoint has them (default: yes)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="network precision on CUDA (default: bf16 on CUDA, fp32 on CPU)")
    add_compile_args(p)


_COMPILE_CHOICES = {"auto": "auto", "yes": True, "no": False}


def compile_value(text: str) -> bool | str:
    """``--compile auto|yes|no`` (``--compile`` alone means yes)."""
    if text.lower() not in _COMPILE_CHOICES:
        raise argparse.ArgumentTypeError(f"expected auto, yes or no, got {text!r}")
    return _COMPILE_CHOICES[text.lower()]


def add_compile_args(p: argparse.ArgumentParser):
    """``--compile [auto|yes|no]`` (default auto) and ``--no-compile``."""
    p.add_argument("--compile", type=compile_value, nargs="?", const=True, default="auto", metavar="auto|yes|no",
                   help="torch.compile the network: auto (default) compiles on CUDA when the job repays the "
                        "compile, --compile forces it, --no-compile turns it off")
    p.add_argument("--no-compile", dest="compile", action="store_const", const=False, help=argparse.SUPPRESS)


def load_pipeline(args):
    from ..loading import load

    device = device_arg(args.device)
    cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if cuda else "fp32")
    compile_ = getattr(args, "compile", None)
    compile_ = "auto" if compile_ is None else compile_
    return load(args.ckpt, ema=args.ema, device=device, precision=precision, compile=compile_)


def add_grid_args(p: argparse.ArgumentParser, steps_default: int | None = 50):
    p.add_argument("--steps", type=positive_int, default=steps_default,
                   help="sampling steps (default: %(default)s; for ddpm the full T)")
    p.add_argument("--spacing", choices=("leading", "trailing", "linspace", "quadratic", "logsnr"), default=None,
                   help="timestep grid (default: the model's; logsnr for dpmpp-2m)")


def read_tensor_file(path: str | Path) -> torch.Tensor:
    """A noise tensor saved by ``ddimkit invert``: .safetensors, or .pt read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".safetensors":
        from ..checkpoint import load_safetensors

        tensors = load_safetensors(path)
        if "noise" not in tensors:
            raise UsageError(f"{path} has no tensor named 'noise'")
        return tensors["noise"]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"cannot read {path} as a weights-only tensor file: {str(e).splitlines()[0]}") from None
    if not torch.is_tensor(obj):
        raise UsageError(f"{path} does not hold a tensor")
    return obj


def write_tensor_file(t: torch.Tensor, path: Path):
    from ..checkpoint import atomic_write

    t = t.detach().cpu().contiguous()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda p: save_file({"noise": t}, str(p)))
    else:
        atomic_write(path, lambda p: torch.save(t, p))
