"""``postemb embed INPUT --out OUT``: embed a file of posts.

INPUT: ``.txt`` (one post per line; every line is a post, empty lines included; ids are
0-based line numbers), ``.jsonl`` (one object per line with ``text`` and optional ``id``)
or ``.parquet`` (column ``text``, optional ``id``). OUT: ``.npy`` (float32 (n, dim), input
order) or ``.parquet`` (``id``, ``embedding`` as fixed-size list of float32,
``model_version``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import ValidationError

INPUTS = (".txt", ".jsonl", ".parquet")
OUTPUTS = (".npy", ".parquet")
PROGRESS_MIN_POSTS = 1000  # show a progress bar from this many posts on


def read_posts(path: Path) -> tuple[list, list[str]]:
    """(ids, texts) from a .txt, .jsonl or .parquet file; errors name the file and line."""
    if path.suffix not in INPUTS:
        raise ValidationError(f"`INPUT` must end in one of {INPUTS}. Given: {str(path)!r}.")
    if not path.exists():
        raise FileNotFoundError(f"`INPUT` {str(path)!r} does not exist.")
    if path.suffix == ".txt":
        texts = path.read_text(encoding="utf-8").splitlines()
        return list(range(len(texts))), texts
    if path.suffix == ".jsonl":
        ids, texts = [], []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValidationError(f"{path}:{lineno}: not valid JSON ({exc.msg}).") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise ValidationError(f"{path}:{lineno}: needs a string field `text`. Given: {line.strip()[:80]!r}.")
                ids.append(obj.get("id", len(ids)))
                texts.append(obj["text"])
        return ids, texts
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise ValidationError(f"`INPUT` {path} needs a column `text`. Given columns: {table.column_names}.")
    texts = table.column("text").to_pylist()
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValidationError(f"{path}: row {i} column `text` must be a string. Given: {type(t).__name__}.")
    ids = table.column("id").to_pylist() if "id" in table.column_names else list(range(len(texts)))
    return ids, texts


def write_embeddings(path: Path, ids: list, vectors, model_version: str) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, vectors)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    table = pa.table({"id": ids, "embedding": emb, "model_version": [model_version] * len(ids)})
    pq.write_table(table, path)


def run(args) -> int:
    from ..encoder import Encoder

    inp, out = Path(args.input), Path(args.out)
    if out.suffix not in OUTPUTS:
        raise ValidationError(f"`--out` must end in one of {OUTPUTS}. Given: {args.out!r}.")
    ids, texts = read_posts(inp)
    enc = Encoder.from_pretrained(args.model, backend=args.backend, device=args.device,
                                  precision=args.precision, max_length=args.max_length, long_posts=args.long_posts)
    start = time.perf_counter()
    show = not args.no_progress and len(texts) >= PROGRESS_MIN_POSTS
    vectors = enc.encode(texts, batch_size=args.batch_size, show_progress_bar=show, truncate=not args.no_truncate)
    seconds = time.perf_counter() - start
    write_embeddings(out, ids, vectors, enc.model_version)
    st = enc.last_stats
    rate = len(texts) / seconds if seconds > 0 else float("inf")
    print(f"embedded {len(texts)} posts in {seconds:.2f} s ({rate:.0f} posts/s, {st.tokens / max(seconds, 1e-9):.0f} "
          f"tokens/s), backend={enc.backend.name}, model={enc.model_version}, dim={enc.dim}, "
          f"truncated={len(st.truncated)}, chunked={st.chunked} ({st.windows} windows) -> {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed a file of posts", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="posts: .txt, .jsonl or .parquet")
    p.add_argument("--out", required=True, help="embeddings: .npy or .parquet")
    p.add_argument("--model", default="default", help="'default', 'base' or a model directory (default: default)")
    p.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or tensorrt (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--precision", default="fp32",
                   help="fp32 (exact); on CPU bf16 or int8 (gated by measured fidelity, see README \"Fast precisions\"); "
                        "on CUDA fp16 or bf16 (default: fp32)")
    p.add_argument("--batch-size", type=int, default=64, help="posts per batch at most (default: 64)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per post (default: the model's)")
    p.add_argument("--no-truncate", action="store_true",
                   help="fail on posts longer than max-length (with --long-posts chunk: than max_chunks windows)")
    p.add_argument("--long-posts", choices=["truncate", "chunk"], default="truncate",
                   help="truncate: cut posts at max-length; chunk: embed whole posts as windows of max-length "
                        "tokens, token-weighted mean (default: truncate)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
