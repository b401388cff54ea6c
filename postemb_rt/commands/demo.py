"""``postemb demo``: the main job on a built-in default.

Loads the default model, embeds a sample of real posts (the first N tweets of the
TweetEval emoji test split from the shared data; a small built-in sample when the data
is not there), and prints what ran, the throughput and a few nearest neighbours.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from .. import backends
from . import at_least


def run(args) -> int:
    from ..data import BUILTIN_POSTS, data_root, short_posts
    from ..encoder import Encoder

    if data_root(required=False) is not None:
        texts = short_posts(args.n)
        source = f"first {len(texts)} posts of the TweetEval emoji test split" + (
            f", all it holds (--n {args.n} asked for more)" if len(texts) < args.n else "")
    else:
        texts = BUILTIN_POSTS[:args.n]
        source = "built-in sample (shared data not found; set POSTEMB_DATA)" + (
            f", all it holds (--n {args.n} asked for more)" if len(texts) < args.n else "")
    print(f"loading model {args.model!r} (backend={args.backend}) ...")
    enc = Encoder.from_pretrained(args.model, backend=args.backend)
    for k, v in enc.describe().items():
        print(f"  {k}: {v}")
    start = time.perf_counter()
    # a bar only when it takes a while, on a terminal (not into a log's file)
    vectors = enc.encode(texts, batch_size=64, show_progress_bar=len(texts) > 5000 and sys.stderr.isatty())
    seconds = time.perf_counter() - start
    st = enc.last_stats
    print(f"embedded {len(texts)} posts ({source}) in {seconds:.2f} s: {len(texts) / seconds:.0f} posts/s, "
          f"{st.tokens / seconds:.0f} tokens/s, {st.batches} batches, padding {st.padding_ratio:.1%}, "
          f"output {vectors.shape} {vectors.dtype}")
    sims = vectors[: args.queries] @ vectors.T
    for q in range(min(args.queries, len(texts))):
        sims[q, q] = -np.inf
        top = [j for j in np.argsort(-sims[q])[:3] if j != q]  # never the query itself (a tiny --n)
        print(f"\nquery: {texts[q][:100]!r}")
        for j in top:
            print(f"  {sims[q, j]:.3f}  {texts[j][:100]!r}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="embed a sample of posts and show nearest neighbours", description=__doc__)
    p.add_argument("--n", type=at_least(1), default=2000, help="posts to embed (default: 2000)")
    p.add_argument("--queries", type=at_least(0), default=3, help="posts to show neighbours for (default: 3)")
    p.add_argument("--model", default="default", help="model name or directory (default: default)")
    p.add_argument("--backend", default="auto", choices=backends.CHOICES,
                   help="the runtime (default: auto: the fastest installed for this device and precision)")
    p.set_defaults(func=run)
