"""How much recall@k a binary (sign-bit) post index keeps against exact float search, with and
without float rescoring.

    python benchmarks/eval_binary_recall.py [--models default base] [--n 20000] [--every 20] [--k 10]
        [--rescore 2 4 10 25] [--cache /tmp/postemb_eval_binary] [--out FILE.json]

Data: the first ``--n`` posts of the standard short-post workload (``postemb_rt.data.short_posts``,
the TweetEval emoji test split); queries: every ``--every``-th of those posts (they are in the
index; each query's own post is left out of both result lists, so recall counts only the other
posts). Each model embeds the corpus once (fp32, truncate; cached as .npy under ``--cache``,
keyed by vector version and n).

Methods, all through ``PostIndex`` (flat, i.e. exact search within each representation, so the
numbers measure the quantization alone, not an ANN's loss):
- truth: ``kind="flat"`` float32 inner product (exact cosine);
- binary: ``binary=True`` (``quantize_embeddings(..., "ubinary")``: one bit per dimension,
  Hamming distance), no rescoring;
- binary + rescore m: the ``k * m`` nearest by Hamming, re-ranked by float cosine against the
  stored float vectors (one index built with ``rescore=1``, which keeps them, searched with
  ``rescore=m``).
recall@k = |top-k of method ∩ top-k exact| / k, averaged over the queries. No timings: recall
does not depend on the machine's load; speeds are measured elsewhere.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def embed_cached(model: str, texts: list[str], cache: Path) -> tuple[np.ndarray, str, int]:
    """float32 (n, dim) unit rows of ``texts`` by ``model`` (fp32, CPU), cached; with the vector
    version and dim."""
    from postemb_rt import Encoder

    enc = Encoder.from_pretrained(model, device="cpu")
    path = cache / f"{enc.vector_version}-short{len(texts)}.npy"
    if path.exists():
        v = np.load(path)
    else:
        v = enc.encode(texts, batch_size=64, show_progress_bar=True)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, v)
    return v, enc.vector_version, enc.dim


def top_k_without_self(index, queries: np.ndarray, query_pos: np.ndarray, k: int) -> np.ndarray:
    """int64 (q, k) positions: each query's top k + 1, its own position dropped (else the last)."""
    pos = index.search_positions(queries, k + 1)[1]
    out = np.empty((len(pos), k), np.int64)
    for i, (row, own) in enumerate(zip(pos, query_pos)):
        kept = row[row != own]
        out[i] = kept[:k]
    return out


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, got)]))


def evaluate(vectors: np.ndarray, every: int, k: int, multipliers: list[int]) -> dict:
    """{"float": 1.0, "binary": r, "binary+rescore m": r, ...} recall@k against exact float search."""
    from postemb_rt.retrieval import PostIndex

    ids = range(len(vectors))
    qpos = np.arange(0, len(vectors), every)
    queries = vectors[qpos]
    truth = top_k_without_self(PostIndex.build(ids, vectors, kind="flat"), queries, qpos, k)
    binary = PostIndex.build(ids, vectors, kind="flat", binary=True, rescore=1)  # keeps the floats
    out = {"queries": len(qpos)}
    for m in [0, *multipliers]:
        got = top_k_without_self(_Rescored(binary, m), queries, qpos, k)
        out["binary" if m == 0 else f"binary+rescore {m}"] = round(recall(truth, got), 4)
    return out


class _Rescored:
    """``index`` searched with a fixed rescore multiplier (0: Hamming order)."""

    def __init__(self, index, m: int):
        self.index, self.m = index, m

    def search_positions(self, queries, k):
        return self.index.search_positions(queries, k, rescore=self.m)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default", "base"], help="models (default: default base)")
    ap.add_argument("--n", type=int, default=20_000, help="posts in the corpus (default: 20000)")
    ap.add_argument("--every", type=int, default=20, help="every N-th post is a query (default: 20)")
    ap.add_argument("--k", type=int, default=10, help="recall@k (default: 10)")
    ap.add_argument("--rescore", type=int, nargs="*", default=[2, 4, 10, 25],
                    help="rescore multipliers to try (default: 2 4 10 25)")
    ap.add_argument("--cache", default="/tmp/postemb_eval_binary", help="embedding cache folder")
    ap.add_argument("--embed-only", action="store_true", help="embed and cache, then stop")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    from postemb_rt.data import SHORT_POSTS, short_posts

    texts = short_posts(args.n)
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "data": f"first {len(texts)} posts of {SHORT_POSTS}", "k": args.k, "every": args.every, "models": {}}
    for model in args.models:
        vecs, version, dim = embed_cached(model, texts, Path(args.cache))
        if args.embed_only:
            print(f"{model}: {vecs.shape} cached", flush=True)
            continue
        r = evaluate(vecs, args.every, args.k, args.rescore)
        report["models"][model] = {"vector_version": version, "dim": dim, "bytes_float": 4 * dim,
                                   "bytes_binary": -(-dim // 8), **r}
        print(f"{model} ({version}, {dim}-d): {r}", flush=True)
    if args.embed_only:
        return 0
    cols = ["binary"] + [f"binary+rescore {m}" for m in args.rescore]
    print(f"\n# {report['date']} | {report['data']} | queries: every {args.every}th post, own post left out | "
          f"recall@{args.k} against exact float (flat) search")
    print("| model | dim | bytes/post float -> binary | " + " | ".join(cols) + " |")
    print("|---|---:|---|" + "---:|" * len(cols))
    for model, r in report["models"].items():
        print(f"| {model} (`{r['vector_version']}`) | {r['dim']} | {r['bytes_float']} -> {r['bytes_binary']} | "
              + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
