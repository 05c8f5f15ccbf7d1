"""Entry point: builds the parser from the command modules and turns bad input into one line + exit 2."""

from __future__ import annotations

import argparse
import os
import sys

from . import app, demo, evaluate, explore, generate, interop, training


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="ddimkit", description="DDPM/DDIM diffusion models: train, sample, "
                                     "invert, interpolate, evaluate. Every command has --help.")
    parser.add_argument("--version", action="version", version=f"ddimkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (training, demo, generate, evaluate, interop, explore, app):
        module.register(sub)
    return parser


# Commands that split their work across the processes of torchrun / accelerate launch (docs/distributed.md).
PARALLEL = ("train", "sample", "fid", "sweep")


def _check_parallel(command: str):
    from ..distributed import world_size

    if world_size() > 1 and command not in PARALLEL:
        raise ValueError(f"runs on one process; run it without torchrun/accelerate launch (only "
                         f"{', '.join(PARALLEL)} split their work across processes)")


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    return " ".join(text.split())


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..train import TrainingError

    try:
        _check_parallel(args.command)
        args.func(args)
    except KeyboardInterrupt:
        print("ddimkit: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, TrainingError) as e:
        if os.environ.get("DDIMKIT_DEBUG"):
            raise
        print(f"ddimkit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0
