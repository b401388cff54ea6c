"""``postemb eval --model default --out reports/``: the offline evaluation report.

Rows: ``base`` (384-d), ``base-pca50`` (the dimension-matched baseline), with ``--teacher``
``teacher`` and ``teacher-pca50``, and one per
``--model`` (``NAME=PATH`` or a registered name / directory; the first is the model the
targets are checked for; rows named ``single-<task>`` are the single-task models of the
positive-transfer target).
Nested dimensions: a model whose postemb.json declares ``matryoshka_dims`` also gets a row
``NAME@K`` per prefix K (its first K components re-normalised, as ``truncate_dim=K`` serves
them); ``--prefixes 32,16,8`` adds ``NAME@K`` for every model even where it declares no such
prefix (the control: truncated without nested training; the evaluation slices and
re-normalises itself, since the runtime refuses that truncate_dim). Every prefix K adds the
row ``base-pcaK`` (and ``teacher-pcaK``). Writes ``OUT/eval.md`` and ``OUT/eval.json``; each row is
cached in ``OUT/rows/`` so rows can be added in later runs (a cached row answers only for the same
model, ``--backend``, data and settings). Sizes and seeds: see
``postemb_rt.train.evaluate.EvalSpec``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import backends
from . import at_least


def _parse_model(spec: str) -> tuple[str, str]:
    """``--model NAME=PATH`` or ``PATH`` -> (row name, model); unnamed rows are named after the model,
    except ``default``, whose row is ``multitask`` (the name every earlier report gives it)."""
    from ..model_dir import split_named

    name, path = split_named(spec)
    return (name or ("multitask" if path == "default" else Path(path).name or path)), path


def run(args) -> int:
    from ..data import data_root, read_lines, SHORT_POSTS
    from ..durable import check_writable
    from ..train.eval_rows import check_row_names, evaluate_rows, throughput
    from ..train.evaluate import EvalSpec
    from ..train.report import write_report

    root = Path(args.data) if args.data else data_root()
    out = Path(args.out)
    models = [_parse_model(m) for m in (args.model or ["default"])]
    check_row_names(models)  # these two before any data is read or model embedded
    check_writable(out / "eval.json", "--out")
    spec = EvalSpec(seed=args.seed, auc_anchors=args.auc_anchors, zs_fit=args.zs_posts, zs_test=args.zs_posts,
                    retrieval_posts=args.retrieval_posts, pca_posts=args.pca_posts, split=args.split,
                    drop_seen=not args.keep_seen)
    if args.teacher is not None:  # a typo refused now, not after every model's rows
        from ..train.teacher import resolve

        resolve(args.teacher)
    pr = lambda m: print(m, flush=True)  # noqa: E731
    rows, outs, data = evaluate_rows(models, root, out, spec, backend=args.backend, progress=pr, teacher=args.teacher,
                                     prefixes=args.prefixes)
    extra = {}
    if args.throughput_posts:
        posts = read_lines(root / SHORT_POSTS)[:args.throughput_posts]
        extra["throughput"] = throughput(models[0][1], args.backend, posts)
    jp, mp = write_report(out, rows, models[0][0], spec, extra, outs, data)
    print(mp.read_text())
    print(f"-> {mp}, {jp}")
    return 0


SEED_LIMIT = 2 ** 32  # the probe's folds take a legacy numpy seed, below 2**32


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        seed = None
    if seed is None or not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 and < 2**32 (numpy's seeds of the held-out "
                                         f"subsamples and the probe's folds). Given: {text!r}.")
    return seed


def _prefixes(text: str) -> list[int]:
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ks = None
    if not ks or len(set(ks)) != len(ks):
        raise argparse.ArgumentTypeError(f"must be distinct integers separated by commas, e.g. 32,16,8. "
                                         f"Given: {text!r}.")
    return ks


def register(sub) -> None:
    from ..train.evaluate import EvalSpec  # light: numpy only

    p = sub.add_parser("eval", help="offline evaluation report (per-task AUC, zero-shot, STS-B, retrieval)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append",
                   help="NAME=PATH or a model name/dir; repeatable; an unnamed row is named after the model, "
                        "`default`'s `multitask` (default: default)")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/")
    p.add_argument("--data", default=None,
                   help="data root holding tweeteval/ and stsb/ (default: $POSTEMB_DATA, else ../shared/data)")
    p.add_argument("--backend", default="auto", choices=backends.CHOICES,
                   help="the runtime (default: auto: the fastest installed for this device and precision)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the held-out subsamples, recorded in the report (not a training seed: rows "
                        "NAME-seed<N> are those) (default: 0)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="held-out data: test (the report) or val (to choose a recipe without looking at test; STS-B "
                        "has no test split here: both score STS-B dev) (default: test)")
    p.add_argument("--keep-seen", action="store_true",
                   help="keep held-out items that the rows were fitted on (by default dropped and counted in the "
                        "report: test posts also in the train data, STS-B dev pairs that are train pairs, zero-shot "
                        "test posts also in the probe's fit set); reproduces the reports committed before this option")
    p.add_argument("--teacher", default=None,
                   help="add rows `teacher` and `teacher-pca50` (a registered teacher, e.g. all-mpnet-base-v2, "
                        "or a sentence-transformers folder); targets 1 and 4 need them")
    d = EvalSpec()
    p.add_argument("--auc-anchors", type=at_least(1), default=d.auc_anchors,
                   help=f"held-out anchors per task (default: {d.auc_anchors})")
    p.add_argument("--zs-posts", type=at_least(1), default=d.zs_fit,
                   help=f"zero-shot fit and test posts per task (default: {d.zs_fit})")
    p.add_argument("--retrieval-posts", type=at_least(1), default=d.retrieval_posts,
                   help=f"emoji test posts for P@10 (default: {d.retrieval_posts})")
    p.add_argument("--pca-posts", type=at_least(1), default=d.pca_posts,
                   help=f"train posts for the base-PCA-50 fit (default: {d.pca_posts})")
    p.add_argument("--prefixes", type=_prefixes, default=(),
                   help="K,K,...: also score every --model's first K components re-normalised (rows NAME@K; the "
                        "control for a model trained without nested dims) and base-pcaK")
    p.add_argument("--throughput-posts", type=at_least(0), default=2000,
                   help="short posts for the 50-d vs base throughput (0: skip; default: 2000)")
    p.set_defaults(func=run)
