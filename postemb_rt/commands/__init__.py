"""Subcommands of ``postemb``: one module each, each with ``register(subparsers)``; and
``Parser``, the argument parser of every command and export script."""
from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse with the project's form of error: one line, naming the argument and the value
    (argparse's own message does) and the fix, instead of the usage block. Subcommands' parsers
    are this class too (``add_subparsers`` makes them of the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')}. Fix: see `{self.prog} --help`.\n")
