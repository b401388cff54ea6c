"""The ``postemb`` command.

Each subcommand lives in its own module, which defines ``register(subparsers)``: it adds
its parser and sets ``func`` (called with the parsed args; returns an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import PostEmbError

# subcommand modules, in the order `postemb --help` lists them
COMMANDS = ["postemb_rt.commands.embed", "postemb_rt.commands.demo", "postemb_rt.commands.train",
            "postemb_rt.commands.teacher", "postemb_rt.commands.eval", "postemb_rt.commands.nearline",
            "postemb_rt.commands.serve", "postemb_rt.commands.backfill", "postemb_rt.commands.index"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postemb", description="Post embeddings: embed, serve, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (PostEmbError, FileNotFoundError) as exc:
        print(f"postemb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
