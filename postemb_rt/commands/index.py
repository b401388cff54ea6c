"""``postemb index build|query``: an ANN index over post embeddings, and top-k queries on it.

build: from Parquet embeddings (``postemb backfill`` or ``postemb embed`` output: a file
or a folder) or from the near-line store (``--redis URL --model-version V``); FAISS kind
by size (flat up to 20k posts, HNSW up to 2M, IVF beyond) unless ``--kind`` says.
query: by text (``--text``, embedded with ``--model``, which must be the index's model),
or for a member (``--member ID,ID,...``: the posts they engaged with; Ward clusters, one
query per cluster, merged; the history itself is left out; ``--mean`` uses the single
mean vector instead). See docs/RETRIEVAL.md.
"""
from __future__ import annotations

import argparse
import json
import time

from ..errors import ValidationError


def _parse_id(raw: str, index):
    """A post id from the command line: as given if the index holds it, else as an int."""
    if index.position(raw) is not None:
        return raw
    try:
        return int(raw)
    except ValueError:
        return raw


def run_build(args) -> int:
    from ..retrieval import PostIndex

    start = time.perf_counter()
    if args.redis:
        if not args.model_version:
            raise ValidationError("`--redis` needs `--model-version` (which embeddings to index). Given: none.")
        idx = PostIndex.from_redis(args.redis, args.model_version, kind=args.kind)
        source = args.redis
    else:
        if not args.input:
            raise ValidationError("`index build` needs `--input` (Parquet embeddings) or `--redis URL`. Given: neither.")
        idx = PostIndex.from_parquet(args.input, kind=args.kind)
        source = args.input
    idx.save(args.out)
    d = idx.describe()
    print(f"indexed {d['count']} posts from {source} in {time.perf_counter() - start:.1f} s: kind={d['kind']} "
          f"({d['faiss_index']}), dim={d['dim']}, model={d['model_version']} -> {args.out}")
    return 0


def run_query(args) -> int:
    from ..retrieval import PostIndex, mean_embedding, member_embedding, retrieve

    idx = PostIndex.load(args.index)
    if bool(args.text) == bool(args.member):
        raise ValidationError("`index query` needs either `--text` or `--member`. Given: "
                              f"{'both' if args.text else 'neither'}.")
    results = []
    if args.text:
        from ..encoder import Encoder

        enc = Encoder.from_pretrained(args.model, device="cpu")
        if idx.model_version and enc.model_version != idx.model_version:
            raise ValidationError(f"`--model` {args.model!r} is {enc.model_version!r} but the index holds "
                                  f"{idx.model_version!r} embeddings. Fix: --model with that version.")
        for text, hits in zip(args.text, idx.search(enc.encode(args.text), args.k)):
            results.append({"query": text, "hits": hits})
    else:
        ids = [_parse_id(x.strip(), idx) for x in args.member.split(",") if x.strip()]
        history = idx.vectors_of(ids)
        member = mean_embedding(history) if args.mean else member_embedding(
            history, distance_threshold=args.distance_threshold, max_clusters=args.max_clusters)
        hits = retrieve(idx, member, args.k, exclude=ids)
        results.append({"query": f"member of {len(ids)} posts, {len(member)} cluster(s) "
                                 f"(weights {', '.join(f'{w:.2f}' for w in member.weights)})", "hits": hits})
    for r in results:
        if args.json:
            print(json.dumps({"query": r["query"], "hits": [{"id": h.id, "score": round(h.score, 6)} for h in r["hits"]]},
                             ensure_ascii=False, default=str))
            continue
        print(f"# {r['query']}")
        for rank, h in enumerate(r["hits"], 1):
            print(f"{rank:>3}  {h.score:.4f}  {h.id}")
    return 0


def register(sub) -> None:
    from ..retrieval.members import DISTANCE_THRESHOLD, MAX_CLUSTERS

    p = sub.add_parser("index", help="build or query an ANN index of post embeddings", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    isub = p.add_subparsers(dest="index_command", required=True, metavar="build|query")
    b = isub.add_parser("build", help="build an index from Parquet embeddings or the near-line store")
    b.add_argument("--input", help="Parquet embeddings: a file or a folder (columns id, embedding, model_version)")
    b.add_argument("--redis", help="or: a near-line store URL (redis://host:port/db)")
    b.add_argument("--model-version", help="with --redis: which model's embeddings")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf"], help="FAISS index kind (default: auto)")
    b.set_defaults(func=run_build)
    q = isub.add_parser("query", help="top-k posts for texts or for a member")
    q.add_argument("--index", required=True, help="index folder (from `postemb index build`)")
    q.add_argument("--text", action="append", help="a query post (repeatable)")
    q.add_argument("--member", help="comma-separated ids of the posts a member engaged with")
    q.add_argument("--k", type=int, default=10, help="posts to return (default: 10)")
    q.add_argument("--model", default="default", help="with --text: the model that embeds it (default: default)")
    q.add_argument("--mean", action="store_true", help="with --member: one mean vector instead of Ward clusters")
    q.add_argument("--distance-threshold", type=float, default=DISTANCE_THRESHOLD,
                   help=f"Ward cut height (default: {DISTANCE_THRESHOLD})")
    q.add_argument("--max-clusters", type=int, default=MAX_CLUSTERS, help=f"clusters at most (default: {MAX_CLUSTERS})")
    q.add_argument("--json", action="store_true", help="one JSON object per query")
    q.set_defaults(func=run_query)
