"""Retrieval evaluation proxy: simulated members, Ward multi-vector vs mean vector vs random.

    python benchmarks/eval_retrieval.py [--members 200] [--history 20] [--k 10] [--tune] [--out FILE.json]

Data (shared TweetEval, held-out splits; the model trained on the train splits):
- emoji: the first ``--emoji-n`` (25,000) posts of the emoji test split, 20 labels (the emoji);
- topic: the 1,249 posts of the stance test splits, 5 labels (the stance target), with the
  ``#SemST`` marker removed (as in training).
Each corpus is embedded once with the default model (cached under ``--cache``) and indexed
with ``PostIndex.build`` (kind by size: HNSW for emoji, flat for topic).

A simulated member has 1, 2 or 3 interests (``--members`` members of each), drawn uniformly
among labels with >= 30 posts; a history of ``--history`` posts is split between the
interests by a Dirichlet(1, ..., 1) draw (each interest >= 2 posts) and drawn without
replacement from the posts of those labels. Every method retrieves ``--k`` posts from the
corpus minus the history:
- ward: ``member_embedding`` (Ward; threshold and cap as given) + ``retrieve`` (quota merge);
- mean: ``mean_embedding`` (one normalised mean vector) + the same ``retrieve``;
- random: k posts drawn uniformly.
Metrics, averaged over members: precision@k (retrieved posts whose label is one of the
member's), interest recall@k (share of the member's interests with >= 1 retrieved post),
and minority recall@k (members with >= 2 interests: is the smallest one retrieved at all).

``--tune``: first picks the Ward threshold and cap on *dev* members built the same way from
the validation splits (emoji val: 5,000 posts; stance val: 294), maximising the mean of
precision@k and interest recall@k over both datasets; then reports the test numbers with
that choice. The ANN's recall@10 against exact search on the emoji corpus (queries: 500
emoji val posts, not in the index) is reported too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

THRESHOLDS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
CAPS = (3, 5)
METHODS = ("ward", "mean", "random")


def load_corpus(name: str, split: str, limit: int | None = None):
    """(texts, labels int64 (n,), label names); the first ``limit`` posts if given."""
    from postemb_rt.data import data_root
    from postemb_rt.train import data as D

    root = data_root()
    ds = D.read_task(root, "emoji", split, strict=False) if name == "emoji" else D.read_topics(root, split, strict=False)
    return ds.texts[:limit], np.asarray(ds.labels[:limit], np.int64), ds.names


def embed_cached(enc, texts: list[str], cache: Path, key: str) -> np.ndarray:
    path = cache / f"{key}-{enc.model_version}-{len(texts)}.npy"
    if path.exists():
        return np.load(path)
    start = time.perf_counter()
    v = enc.encode(texts, batch_size=64, show_progress_bar=len(texts) >= 1000)
    print(f"  embedded {len(texts)} posts ({key}) in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, v)
    return v


def simulate_members(labels: np.ndarray, n_per_m: int, history: int, seed: int, min_posts: int = 30):
    """[(interest labels (m,), history positions (history,), interest of each history post)]."""
    rng = np.random.default_rng(seed)
    by_label = {int(y): np.flatnonzero(labels == y) for y in np.unique(labels)}
    eligible = [y for y, idx in by_label.items() if len(idx) >= min_posts]
    members = []
    for m in (1, 2, 3):
        for _ in range(n_per_m):
            ys = rng.choice(eligible, m, replace=False)
            share = rng.dirichlet(np.ones(m)) * (history - 2 * m)
            counts = 2 + np.floor(share).astype(int)
            for i in np.argsort(-(share - np.floor(share)))[: history - counts.sum()]:
                counts[i] += 1
            pos = np.concatenate([rng.choice(by_label[int(y)], c, replace=False) for y, c in zip(ys, counts)])
            members.append((ys, pos, np.repeat(ys, counts)))
    return members


def evaluate(index, vectors, labels, members, k, threshold, cap, seed, methods=METHODS):
    """{method: {m: {"precision", "interest_recall", "minority_recall", "clusters"}}} plus "all"."""
    from postemb_rt.retrieval import mean_embedding, member_embedding, retrieve

    rng = np.random.default_rng(seed + 1)
    n = len(labels)
    rows = {meth: [] for meth in methods}
    for ys, pos, hist_labels in members:
        hist = vectors[pos]
        excl = set(int(p) for p in pos)
        for meth in methods:
            if meth == "random":
                cand = rng.choice(n, k + len(pos), replace=False)
                got = [int(c) for c in cand if int(c) not in excl][:k]
                clusters = 0
            else:
                emb = member_embedding(hist, threshold, cap) if meth == "ward" else mean_embedding(hist)
                got = [h.id for h in retrieve(index, emb, k, exclude=excl)]
                clusters = len(emb)
            got_labels = labels[got]
            hit_interests = [y for y in ys if (got_labels == y).any()]
            smallest = ys[np.argmin([(hist_labels == y).sum() for y in ys])]
            rows[meth].append({"m": len(ys), "precision": float(np.isin(got_labels, ys).mean()),
                               "interest_recall": len(hit_interests) / len(ys),
                               "minority_recall": float(smallest in hit_interests) if len(ys) > 1 else np.nan,
                               "clusters": clusters})
    out = {}
    for meth, rs in rows.items():
        out[meth] = {}
        for m in ("all", 1, 2, 3):
            sel = [r for r in rs if m == "all" or r["m"] == m]
            out[meth][str(m)] = {key: round(float(np.nanmean([r[key] for r in sel])), 4) if any(
                not np.isnan(r[key]) for r in sel) else None for key in ("precision", "interest_recall",
                                                                          "minority_recall", "clusters")}
    return out


def ann_recall(vectors, queries, k=10) -> dict:
    """recall@k of HNSW and IVF (default parameters) against exact search; ``queries`` are
    posts not in the index."""
    from postemb_rt.retrieval import PostIndex

    q = queries
    exact = PostIndex.build(range(len(vectors)), vectors, kind="flat").search_positions(q, k)[1]
    out = {}
    for kind in ("hnsw", "ivf"):
        t = time.perf_counter()
        idx = PostIndex.build(range(len(vectors)), vectors, kind=kind)
        build = time.perf_counter() - t
        got = idx.search_positions(q, k)[1]
        out[kind] = {"recall_at_10": round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, got)])), 4),
                     "build_s": round(build, 2)}
    return out


def table(results: dict, k: int) -> str:
    lines = [f"| dataset | interests | method | precision@{k} | interest recall@{k} | minority recall@{k} | clusters |",
             "|---|---|---|---:|---:|---:|---:|"]
    for ds, res in results.items():
        for m in ("1", "2", "3", "all"):
            for meth in METHODS:
                r = res[meth][m]
                fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
                clusters = "-" if meth == "random" else f"{r['clusters']:.2f}"
                lines.append(f"| {ds} | {m} | {meth} | {fmt(r['precision'])} | {fmt(r['interest_recall'])} | "
                             f"{fmt(r['minority_recall'])} | {clusters} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=200, help="members per number of interests (default: 200)")
    ap.add_argument("--history", type=int, default=20, help="posts per member history (default: 20)")
    ap.add_argument("--k", type=int, default=10, help="posts retrieved (default: 10)")
    ap.add_argument("--threshold", type=float, default=None, help="Ward threshold (default: the library's)")
    ap.add_argument("--max-clusters", type=int, default=None, help="Ward cap (default: the library's)")
    ap.add_argument("--tune", action="store_true", help="choose threshold and cap on dev members first")
    ap.add_argument("--emoji-n", type=int, default=25_000,
                    help="emoji test posts in the corpus, from the start of the split (default: 25000; all: 50000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/postemb_rt/eval_retrieval"),
                    help="embedding cache folder")
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args(argv)

    from postemb_rt import Encoder
    from postemb_rt.retrieval import PostIndex
    from postemb_rt.retrieval.members import DISTANCE_THRESHOLD, MAX_CLUSTERS

    start = time.perf_counter()
    enc = Encoder.from_pretrained("default", device="cpu")
    cache = Path(args.cache)
    threshold = args.threshold or DISTANCE_THRESHOLD
    cap = args.max_clusters or MAX_CLUSTERS
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "model": enc.model_version,
              "args": vars(args), "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}

    def prepare(split):
        out = {}
        for name in ("emoji", "topic"):
            texts, labels, _ = load_corpus(name, split, args.emoji_n if name == "emoji" and split == "test" else None)
            vecs = embed_cached(enc, texts, cache, f"{name}-{split}")
            index = PostIndex.build(range(len(vecs)), vecs, vector_version=enc.vector_version)
            out[name] = (vecs, labels, index)
        return out

    if args.tune:
        dev = prepare("val")
        sweep = []
        for t in THRESHOLDS:
            for c in CAPS:
                score, parts = 0.0, {}
                for name, (vecs, labels, index) in dev.items():
                    members = simulate_members(labels, max(50, args.members // 2), args.history, args.seed + 100)
                    r = evaluate(index, vecs, labels, members, args.k, t, c, args.seed, methods=("ward",))["ward"]["all"]
                    parts[name] = r
                    score += (r["precision"] + r["interest_recall"]) / 2 / len(dev)
                sweep.append({"threshold": t, "max_clusters": c, "score": round(score, 4), **parts})
                print(f"dev threshold {t:<5} cap {c}: score {score:.4f}  " + "  ".join(
                    f"{n}: P {p['precision']:.3f} IR {p['interest_recall']:.3f} clusters {p['clusters']:.2f}"
                    for n, p in parts.items()), flush=True)
        best = max(sweep, key=lambda s: s["score"])
        threshold, cap = best["threshold"], best["max_clusters"]
        report["dev_sweep"] = sweep
        print(f"chosen on dev: threshold {threshold}, max_clusters {cap}", flush=True)
    report["threshold"], report["max_clusters"] = threshold, cap

    test = prepare("test")
    results = {}
    for name, (vecs, labels, index) in test.items():
        members = simulate_members(labels, args.members, args.history, args.seed)
        results[f"{name} ({len(labels)} posts, {index.kind})"] = evaluate(index, vecs, labels, members, args.k,
                                                                           threshold, cap, args.seed)
    report["results"] = results
    val_texts = load_corpus("emoji", "val")[0]
    queries = embed_cached(enc, val_texts, cache, "emoji-val")[:500]
    report["ann_recall_emoji"] = ann_recall(test["emoji"][0], queries)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\n# {report['date']} | model {enc.model_version} | Ward threshold {threshold}, max_clusters {cap} | "
          f"{args.members} members x 1/2/3 interests, history {args.history}, k {args.k}, seed {args.seed}")
    print(table(results, args.k))
    print(f"\nANN vs exact on the emoji corpus (500 emoji-val queries, recall@10): {report['ann_recall_emoji']}")
    print(f"took {report['seconds']} s; load average now {os.getloadavg()[0]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
