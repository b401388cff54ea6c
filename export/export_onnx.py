"""Export a model to a self-contained ONNX model directory, then check parity.

    python export/export_onnx.py --model default --out models/default-onnx

Writes OUT/model.onnx (dynamic batch and sequence axes; ONNX Runtime transformer fusions
unless --no-optimize), OUT/tokenizer.json and OUT/postemb.json (and, with --pooling
external, OUT/projection.safetensors for a model with a projection). Then embeds real posts
with the torch model and with the exported model and exits non-zero (3) if any cosine
similarity is below --min-cosine (default 0.9999).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time


def parity_texts(n: int) -> list[str]:
    """Real posts for the parity check: short tweets plus long concatenated posts
    (the built-in sample when the shared data is absent)."""
    from postemb_rt.commands.demo import BUILTIN_POSTS
    from postemb_rt.data import data_root, long_posts, short_posts

    if data_root(required=False) is None:
        return BUILTIN_POSTS[:n]
    return short_posts(n) + long_posts(max(n // 8, 1))


def main(argv=None) -> int:
    from postemb_rt.onnx_export import DEFAULT_POOLING

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="'default', 'base' or a model directory")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--no-optimize", action="store_true", help="skip ONNX Runtime's transformer graph fusions")
    p.add_argument("--pooling", choices=["graph", "external"], default=DEFAULT_POOLING,
                   help="graph: pooling, projection and normalisation inside the ONNX model; external: "
                        "the model ends at last_hidden_state and the runtime pools with the C++ kernel "
                        "(default: %(default)s, as fast on CPU: benchmarks/RESULTS.md)")
    p.add_argument("--parity-posts", type=int, default=256, help="short posts in the parity check (default 256)")
    p.add_argument("--min-cosine", type=float, default=0.9999, help="parity threshold (default 0.9999)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import numpy as np

    from postemb_rt import Encoder, PostEmbError
    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import export_onnx

    try:
        src = resolve(args.model)
        start = time.perf_counter()
        out = export_onnx(src, args.out, optimize=not args.no_optimize, pooling=args.pooling)
        print(f"wrote {out.onnx_path} ({out.onnx_path.stat().st_size / 2**20:.1f} MiB) in "
              f"{time.perf_counter() - start:.1f} s")
        texts = parity_texts(args.parity_posts)
        ref = Encoder.from_pretrained(args.model, backend="torch", device="cpu").encode(texts)
        got = Encoder.from_pretrained(out.path, backend="onnxruntime", device="cpu").encode(texts)
    except PostEmbError as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 2
    cos = np.sum(ref * got, axis=1)
    worst = int(np.argmin(cos))
    print(f"parity on {len(texts)} posts: min cosine {cos.min():.7f}, mean {cos.mean():.7f} "
          f"(threshold {args.min_cosine})")
    if cos.min() < args.min_cosine:
        print(f"export_onnx: parity FAILED: post {worst} ({texts[worst][:80]!r}) has cosine {cos[worst]:.7f}",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
