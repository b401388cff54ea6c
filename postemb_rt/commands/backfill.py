"""``postemb backfill --input posts/ --output embeddings/``: embed every post of a folder on Ray Data.

INPUT: a folder of ``.parquet`` files (columns ``id``, ``text``) or of ``.jsonl`` files
(objects with ``id`` and ``text``), searched recursively, or one such file; ``--id-column`` and
``--text-column`` name other columns (one pair for every file; a resume must use the same).
OUTPUT: one folder per input file, mirroring the input tree, holding ``part-NNNNN.parquet``
(``id``, ``embedding`` fixed-size list of float32, ``model_version``: the vector version, e.g.
``postemb-mt50-v4+chunk``), ``_errors-NNNNN.jsonl`` (bad rows and why) and ``_SUCCESS.json``.
An empty text ("", which the HTTP server refuses) gets no vector: it is listed in the errors file
with its reason and counted apart, as "empty texts skipped", in the progress and the summary.
The ``id`` column has one type in the whole output (int64 or string, ``--id-type``), so
``postemb index build`` reads it. Re-running the same command resumes: finished files
are skipped, nothing is written twice. Local by default (a new Ray on this machine, or the
cluster in $RAY_ADDRESS when that is set, as in a Ray job); ``--ray-address auto`` joins the Ray
cluster this machine belongs to; an address that accepts no connection within 5 s is refused. Layout, resuming and
scaling: docs/BACKFILL.md.
"""
from __future__ import annotations

import argparse
import sys

from .. import backends
from . import add_prompt_args


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..backfill import BackfillError, backfill

    bar = None

    def on_start(report):  # the bar from the start, not after the first split (minutes at 10,000 rows a split)
        nonlocal bar
        if not args.no_progress:  # a total for Parquet; JSONL's rows are counted as its splits are read
            bar = tqdm(unit="post", desc="backfill", total=report.rows_planned)

    def on_split(row, report):
        if bar is None:
            return
        bar.update(int(row["rows"]) + int(row["bad"]) + int(row["empty"]))
        bar.set_postfix(bad=report.rows_bad, empty=report.rows_empty, refresh=False)

    failed = None
    try:
        r = backfill(args.input, args.output, args.model, backend=args.backend, num_workers=args.num_workers,
                     threads_per_worker=args.threads_per_worker, batch_size=args.batch_size,
                     rows_per_split=args.rows_per_split, ray_address=args.ray_address, on_split=on_split,
                     on_start=on_start, long_posts=args.long_posts, precision=args.precision, id_type=args.id_type,
                     prompt_name=args.prompt_name, truncate_dim=args.truncate_dim, id_column=args.id_column,
                     text_column=args.text_column)
    except BackfillError as exc:
        r, failed = exc.report, exc
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        print(f"postemb backfill: interrupted. Finished splits are kept in {args.output}: run the same command again "
              "to resume (nothing is embedded or written twice).", file=sys.stderr, flush=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    print(f"backfilled {r.rows_embedded} posts in {r.seconds:.1f} s ({r.posts_per_s:.1f} posts/s), "
          f"files: {r.files_committed} committed, {r.files_skipped} skipped (done before), {r.files_failed} failed, "
          f"{r.files_total} total; bad rows: {r.rows_bad}; empty texts skipped: {r.rows_empty}; "
          f"splits: {r.splits_run} run, {r.splits_reused} reused; "
          f"workers={r.workers}, model={r.model_version}, prompt={r.prompt_name}, ids={r.id_type} -> {args.output}")
    if r.errors_files:
        more = f" (+{len(r.errors_files) - 1} more)" if len(r.errors_files) > 1 else ""
        print(f"bad rows and empty texts, with reasons: {r.errors_files[0]}{more}")
    if failed is not None:
        print(f"postemb backfill: error: {failed}", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("backfill", help="embed a folder of posts on Ray Data (resumable)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder (or file) of .parquet or .jsonl posts with an id and a "
                                                   "text (columns: --id-column, --text-column)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--id-column", default="id",
                   help="the input's column (Parquet) or field (JSONL) holding each post's id, in every file; "
                        "recorded in each _SUCCESS.json, and a resume must use the same (default: id)")
    p.add_argument("--text-column", default="text",
                   help="the input's column (Parquet) or field (JSONL) holding each post's text, in every file; "
                        "recorded in each _SUCCESS.json, and a resume must use the same (default: text)")
    p.add_argument("--model", default="default", help="'default', 'base' or a model directory (default: default)")
    p.add_argument("--backend", default="auto", choices=backends.CHOICES,
                   help="the runtime (default: auto: the fastest installed for this device and precision)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="model actors (default: the cluster's CPUs // --threads-per-worker)")
    p.add_argument("--threads-per-worker", type=int, default=1,
                   help="inference threads of each actor, and the CPUs it asks Ray for (default: 1)")
    p.add_argument("--ray-address", default=None,
                   help="omit: $RAY_ADDRESS's cluster if set, else a new Ray on this machine; 'auto' or HOST:PORT: "
                        "join that Ray cluster")
    p.add_argument("--batch-size", type=int, default=64, help="posts per model batch at most (default: 64)")
    p.add_argument("--long-posts", choices=["truncate", "chunk"], default="truncate",
                   help="posts longer than max_length: truncate, or chunk (embed them whole) (default: truncate)")
    p.add_argument("--precision", default="fp32", choices=backends.PRECISIONS,
                   help="fp32 (exact), or bf16 / int8 (gated by measured fidelity); written into the vectors' "
                        "model_version as +bf16 / +int8. The workers run on CPU, so fp16 is refused; auto is "
                        "refused too: workers on different CPUs would pick different precisions for one output "
                        "(default: fp32)")
    p.add_argument("--id-type", choices=["auto", "int", "string"], default="auto",
                   help="the one type of the output's id column. auto: an existing output's; else Parquet: the id "
                        "columns' (integer and string files mixed are refused: use string); JSONL: the first id's. "
                        "string writes integer ids as decimal strings; a string id in an int output is a bad row "
                        "(default: auto)")
    add_prompt_args(p, text=False, note="; recorded in each _SUCCESS.json, and a resume must use the same")
    p.add_argument("--truncate-dim", type=int, default=None,
                   help="a nested prefix the model declares (its matryoshka_dims, e.g. 32, 16 or 8 for default): "
                        "write the first K components re-normalised, under vector version '<model>@K' "
                        "(default: the model's default prefix if its config sets one, else the full dim)")
    p.add_argument("--rows-per-split", type=int, default=10_000,
                   help="rows per unit of work (Parquet: row groups packed up to it; a bigger group is cut into "
                        "pieces of at most this many rows) (default: 10000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
