"""Subcommands of ``postemb``: one module each, each with ``register(subparsers)``; and
``Parser``, the argument parser of every command and export script, with ``at_least``, its
type for counts, and ``add_prompt_args``, the prompt flags of the commands that encode."""
from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """argparse with the project's form of error: one line, naming the argument and the value
    (argparse's own message does) and the fix, instead of the usage block. Subcommands' parsers
    are this class too (``add_subparsers`` makes them of the parent's class)."""

    def error(self, message: str):
        if "Fix:" in message:  # the message names its own fix (an ArgumentTypeError of ours)
            self.exit(2, f"{self.prog}: error: {message}\n")
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')}. Fix: see `{self.prog} --help`.\n")


def at_least(low: int, kind=int):
    """An argparse ``type``: an integer (``kind`` float: a finite number) >= ``low`` (a count of
    posts, seconds, ...), else the parser's one-line error naming the flag and the value."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be {what} >= {low}. Given: {text!r}")
        return value
    parse.__name__ = f"{what.split()[1]} >= {low}"
    return parse


def add_prompt_args(parser: argparse.ArgumentParser, what: str = "post", *, text: bool = True,
                    note: str = "") -> None:
    """``--prompt-name`` / ``--prompt``: ``Encoder.encode``'s ``prompt_name`` / ``prompt``
    (postemb_rt.prompts), prepended to every ``what`` the command encodes; checked there.
    ``text`` False: ``--prompt-name`` only, for the commands that record the prompt by its name
    (backfill's ``_SUCCESS.json``, the near-line records), so a prompt text has no place there;
    ``note``: what the command does with the name besides, appended to its help."""
    parser.add_argument("--prompt-name", default=None, help="a prompt of the model's (its `prompts`, e.g. query or "
                        f"document) prepended to every {what}{note} (default: the model's default prompt, if any)")
    if text:
        parser.add_argument("--prompt", default=None, help=f"a prompt text prepended to every {what} (\"\" turns "
                            "the model's default prompt off); not with --prompt-name")
