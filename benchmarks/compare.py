"""Side-by-side throughput table in one run: this project's backends vs sentence-transformers.

    python benchmarks/compare.py [--n 4000] [--long 0] [--repeats 3]

For each provider: posts/s and tokens/s (real tokens, not padding) on the short-post
workload (first N posts of TweetEval emoji test; see postemb_rt/data.py), the ratio to
the sentence-transformers baseline (`SentenceTransformer(base).encode(texts,
batch_size=32)`), the cosine to the torch float32 reference, and the fraction of the
machine's float32 matmul peak, measured in the same run with a large GEMM. FLOPs per
token come from the model config: 2 x layers x (4 H^2 + 2 H I), about 21 MFLOP for
all-MiniLM-L6-v2 (attention scores add 4 S H per layer, under 2% at these lengths).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_encode import PROVIDERS, count_tokens, make_encode  # noqa: E402


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of float32 matmul throughput (torch, all threads) in GFLOP/s."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_token() -> float:
    import json

    from postemb_rt.model_dir import base_encoder_path

    cfg = json.loads((base_encoder_path() / "config.json").read_text())
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    return 2 * layers * (4 * h * h + 2 * h * i)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure_interleaved(encoders: dict, texts, repeats: int) -> dict:
    """{provider: (median seconds, last output)}. Rounds are interleaved (every provider
    once per round, rotating who goes first), so load from other processes hits all
    providers alike and the ratios stay fair on a shared machine."""
    names = list(encoders)
    times = {n: [] for n in names}
    outs = {}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            outs[n] = encoders[n](texts)
            times[n].append(time.perf_counter() - t)
    return {n: (float(np.median(times[n])), outs[n]) for n in names}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000, help="short posts (default 4000)")
    p.add_argument("--long", type=int, default=0, help="also run N long posts (median ~100 tokens)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    args = p.parse_args(argv)

    import os

    import torch

    from postemb_rt.data import long_posts, short_posts

    peak = gemm_peak_gflops()
    fpt = flops_per_token()
    workloads = [("short", short_posts(args.n))]
    if args.long:
        workloads.append(("long", long_posts(args.long)))
    print(f"# {date.today()} | {cpu_name()} | {os.cpu_count()} CPUs | load {os.getloadavg()[0]:.2f} | torch {torch.__version__} threads "
          f"{torch.get_num_threads()} | float32 GEMM peak {peak:.0f} GFLOP/s | {fpt / 1e6:.1f} MFLOP/token\n")
    print("| workload | provider | posts/s | tokens/s | x baseline | cosine min vs torch | % of fp32 peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    encoders = {name: make_encode(name) for name in args.providers.split(",")}
    for wname, texts in workloads:
        tokens = count_tokens(texts)
        results = measure_interleaved(encoders, texts, args.repeats)
        ref = results["torch"][1] if "torch" in results else None
        base = results.get("sentence-transformers")
        for name, (seconds, out) in results.items():
            rate = len(texts) / seconds
            ratio = f"{base[0] / seconds:.2f}" if base else "-"
            cos = f"{np.min(np.sum(out * ref, axis=1)):.6f}" if ref is not None else "-"
            frac = tokens / seconds * fpt / (peak * 1e9)
            print(f"| {wname} ({len(texts)}) | {name} | {rate:.0f} | {tokens / seconds:.0f} | {ratio} | {cos} | "
                  f"{frac:.0%} |", flush=True)
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
