"""The ``ddimkit`` command line: one module per group of subcommands, registered here."""

from .main import main

__all__ = ["main"]
