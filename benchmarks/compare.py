"""Side-by-side throughput table in one run: this project's backends and precisions vs
sentence-transformers.

    python benchmarks/compare.py [--n 4000] [--long 0] [--repeats 3] [--model base]
        [--providers sentence-transformers,torch,onnxruntime,torch:bf16,onnxruntime:int8]
    python benchmarks/compare.py --long 1000 --providers onnxruntime,onnxruntime@chunk   # long posts whole

A provider ending in ``@chunk`` embeds with ``long_posts="chunk"`` (long posts whole, as
windows); its tokens/s counts every window's tokens, the work it really does.

For each provider (a backend, optionally ``:precision``): posts/s and tokens/s (real tokens,
not padding) on the short-post workload (first N posts of TweetEval emoji test; see
postemb_rt/data.py) and, with --long, the long-post workload; the ratio to the
sentence-transformers float32 baseline (`SentenceTransformer(base).encode(texts,
batch_size=32)`); the cosine to the torch float32 reference (min and mean) and overlap@10
of nearest neighbours (postemb_rt.fidelity); and the fraction of the ceiling of the
precision it computes in, measured in the same run: matmul throughput of float32 (torch),
bf16 (torch, oneDNN) and int8 (onnxruntime MatMulInteger, the kernel the int8 model uses).
FLOPs per token come from the model config: 2 x layers x (4 H^2 + 2 H I), about 21 MFLOP
for all-MiniLM-L6-v2 (attention scores add 4 S H per layer, under 2% at these lengths).
The int8 model keeps some matmuls in float32 (postemb_rt.onnx_export.int8_nodes), so its
ceiling is the time those FLOPs need at the int8 and float32 peaks together.
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


def best_of(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_peak_gflops(n: int = 2048, dtype: str = "fp32") -> float:
    """Best-of matmul throughput (torch, all threads) in GFLOP/s, float32 or bf16."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    return 2 * n**3 / best_of(lambda: a @ b) / 1e9


def int8_peak_gops(n: int = 2048) -> float:
    """Best-of uint8 x int8 -> int32 matmul throughput of onnxruntime's MatMulInteger (MLAS, the
    kernel behind the int8 model's DynamicQuantizeMatMul) in GOP/s."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    onnx.checker.check_model(model)
    return 2 * n**3 / best_of(lambda: sess.run(None, feeds)) / 1e9


def int8_share() -> float:
    """Share of the model's matmul FLOPs that the int8 model runs in int8 (the rest is float32):
    the MatMuls postemb_rt.onnx_export.int8_nodes picks, counted from the base model's ONNX export."""
    import onnx

    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import cached_export, int8_nodes

    m = onnx.load(str(cached_export(resolve("base")).onnx_path))
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    picked = set(int8_nodes(m))
    total = quant = 0
    for node in m.graph.node:
        if node.op_type not in ("MatMul", "Attention", "Gemm"):
            continue
        w = next((shapes[i] for i in node.input if i in shapes and len(shapes[i]) == 2), None)
        if w is None:
            continue
        total += w[0] * w[1]
        quant += w[0] * w[1] if node.name in picked else 0
    return quant / total


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
    p.add_argument("--providers", default=",".join(PROVIDERS + ["torch:bf16", "onnxruntime:int8"]),
                   help="backend[:precision], comma-separated (default: %(default)s)")
    p.add_argument("--model", default="base", help="model for this project's providers (default: base, the "
                   "model sentence-transformers runs)")
    args = p.parse_args(argv)

    import os

    import torch

    from postemb_rt.data import long_posts, short_posts
    from postemb_rt.fidelity import overlap_at_k

    peaks = {"fp32": gemm_peak_gflops(), "bf16": gemm_peak_gflops(dtype="bf16"), "int8": int8_peak_gops()}
    share = int8_share()
    fpt = flops_per_token()
    workloads = [("short", short_posts(args.n))]
    if args.long:
        workloads.append(("long", long_posts(args.long)))
    print(f"# {date.today()} | {cpu_name()} | {os.cpu_count()} CPUs | load {os.getloadavg()[0]:.2f} | torch "
          f"{torch.__version__} threads {torch.get_num_threads()} | matmul ceilings: fp32 {peaks['fp32']:.0f} "
          f"GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s, int8 {peaks['int8']:.0f} GOP/s | {fpt / 1e6:.1f} MFLOP/token "
          f"| int8 model: {share:.0%} of matmul FLOPs in int8\n")
    print("| workload | provider | posts/s | tokens/s | x baseline | cosine min / mean vs torch fp32 | overlap@10 "
          "| % of its ceiling |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    encoders = {name: make_encode(name, args.model) for name in args.providers.split(",")}
    for wname, texts in workloads:
        results = measure_interleaved(encoders, texts, args.repeats)
        ref = results["torch"][1] if "torch" in results else None
        base = results.get("sentence-transformers")
        for name, (seconds, out) in results.items():
            tokens = count_tokens(texts, chunk=name.endswith("@chunk"))
            rate = len(texts) / seconds
            ratio = f"{base[0] / seconds:.2f}" if base else "-"
            fid = "-", "-"
            if ref is not None and out.shape == ref.shape:
                cos = np.sum(out * ref, axis=1)
                fid = f"{cos.min():.4f} / {cos.mean():.4f}", f"{overlap_at_k(ref, out):.3f}"
            precision = name.partition("@")[0].partition(":")[2] or "fp32"
            if precision == "int8":  # the time those FLOPs need at the int8 and fp32 ceilings together
                ideal = tokens * fpt * (share / (peaks["int8"] * 1e9) + (1 - share) / (peaks["fp32"] * 1e9))
            else:
                ideal = tokens * fpt / (peaks[precision] * 1e9)
            print(f"| {wname} ({len(texts)}) | {name} | {rate:.0f} | {tokens / seconds:.0f} | {ratio} | {fid[0]} | "
                  f"{fid[1]} | {ideal / seconds:.0%} |", flush=True)
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
