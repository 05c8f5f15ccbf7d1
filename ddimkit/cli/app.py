"""``ddimkit app``: the web page (Gradio, an optional extra: ``pip install -e '.[app]'``)."""

from __future__ import annotations

import argparse
import socket

from .common import UsageError, add_ckpt_args, device_arg

INSTALL = "pip install -e '.[app]'"


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return port


def register(sub):
    p = sub.add_parser("app", help="a web page to sample, trace, invert and fuse images (needs the [app] extra)",
                       description="Serve a web page (Gradio) over a model: sample with DDPM, DDIM or DPM-Solver++ "
                                   "(and compare them from one seed), watch x_t and x̂0 along a trajectory, invert an "
                                   "image to noise and back, fuse two images by slerp. It opens on --ckpt (default: "
                                   "the shipped pretrained:mnist); other models can be chosen in the page. Needs "
                                   f"Gradio: {INSTALL}. See docs/app.md.")
    add_ckpt_args(p, required=False)
    p.set_defaults(ckpt=None)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=port_number, default=7860, help="port (default: 7860)")
    p.set_defaults(func=cmd_app)


def check_address(host: str, port: int):
    """Fail before loading anything if the page cannot be served there (Gradio's own message would point at
    its Python arguments)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise UsageError(f"cannot serve on {host}:{port}: {e.strerror or e}; pass another --port or --host") from None


def cmd_app(args):
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError(f"the app needs Gradio, which is not installed: {INSTALL}") from None
    from ..app import launch

    check_address(args.host, args.port)
    device = device_arg(args.device)
    launch(args.ckpt, host=args.host, port=args.port, device=device, precision=args.precision,
           compile=args.compile, ema=args.ema)
