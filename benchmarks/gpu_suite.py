"""The GPU suite: everything this project measures on a CUDA machine, in one run.

    python benchmarks/gpu_suite.py [--n 4000] [--long 500] [--repeats 3] [--no-trt] [--out FILE]

1. Correctness: every GPU backend (torch CUDA fp32/fp16/bf16 with CUDA graphs, fp32 eager;
   tensorrt fp32/fp16 when tensorrt is installed; onnxruntime's CUDA EP when present)
   against the CPU float32 torch reference: min / mean cosine over short and long posts.
2. Kernel: the Triton masked_mean_pool_l2 vs the torch reference composition
   (postemb_rt.ops.reference), GB/s of hidden states read (GPU time inside a CUDA graph, L2
   flushed) and the fraction of this GPU's device-to-device copy bandwidth measured in the
   same run; beside it the time per call with the host's launch in the loop.
3. End to end: posts/s on the short-post workload for torch CUDA (eager, CUDA graphs) in
   each precision, tensorrt where installed, and sentence-transformers fp16 on the same GPU
   (best of batch sizes 32 and 256); the ratio to sentence-transformers fp16 (target on an
   H100: >= 3x).

Prints markdown tables headed by the card, driver/CUDA/torch versions and the date (and
writes them to --out). Without CUDA it prints why and exits 0: nothing to measure here.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def texts_for(n_short: int, n_long: int) -> tuple[list[str], list[str], str]:
    from postemb_rt.data import BUILTIN_POSTS
    from postemb_rt.data import data_root, long_posts, short_posts

    if data_root(required=False) is None:
        short = (BUILTIN_POSTS * (n_short // len(BUILTIN_POSTS) + 1))[:n_short]
        return short, BUILTIN_POSTS[: max(1, min(n_long, len(BUILTIN_POSTS)))], "built-in sample (no shared data)"
    return short_posts(n_short), long_posts(n_long), "TweetEval emoji test (short) + concatenated long posts"


def sync():
    import torch

    torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Best-of wall time of fn() in seconds, device synchronised, after one warm-up call."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy: bytes read + written per second (GB/s, 1e9)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / timed(lambda: dst.copy_(src), 10) / 1e9


FLUSH_BYTES = 256 << 20  # what triton.testing.do_bench zeroes before each call: over 4x an H100/H200's L2


def kernel_gpu_ms(fn, reps: int = 20, rounds: int = 10) -> float:
    """GPU time of one ``fn()`` in ms, L2 cold and the host out of the loop.

    ``reps`` pairs (zero a 256 MB buffer, fn) are captured in one CUDA graph, and the same
    graph without fn; the per-call time is the difference of their median replay times over
    ``rounds``, divided by ``reps``. triton.testing.do_bench records events around each call
    from the host, so where the host takes longer to launch fn than the GPU takes to run it
    (small inputs, two Triton launches) it times the host; the runtime itself runs the pooling
    inside a CUDA graph, where launch cost is paid once per batch."""
    import statistics

    import torch

    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()  # warm up (compile, library handles) on the stream that captures
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.synchronize()

    def capture(with_fn: bool):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(reps):
                flush.zero_()
                if with_fn:
                    fn()
        return graph

    def replay_ms(graph) -> float:
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    with_fn, flushes_only = capture(True), capture(False)
    return (replay_ms(with_fn) - replay_ms(flushes_only)) / reps


def kernel_rows(bw: float) -> list[str]:
    """GB/s from the GPU time per call (``kernel_gpu_ms``: CUDA graph, L2 flushed before each
    call, so the hidden states come from HBM and the host's launch cost is not counted; in the
    torch CUDA backend the pooling runs inside a CUDA graph too), and beside it the time per
    call with the host in the loop (triton.testing.do_bench, what an eager caller waits).
    Bytes = the hidden states, mask and weight each read once: the minimum any implementation
    must move."""
    import torch
    from triton.testing import do_bench

    from postemb_rt.kernels.masked_mean_pool_l2 import masked_mean_pool_l2
    from postemb_rt.ops.reference import masked_mean_pool_l2_ref

    rows = ["| B x S x H | dtype | D | provider | GB/s (GPU time) | % of copy BW | µs GPU | µs with launch (do_bench) "
            "| max abs err vs fp64 ref |", "|---|---|---|---|---|---|---|---|---|"]
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = (((256, 64, 384), 50), ((64, 256, 384), 50), ((1024, 128, 384), 50), ((128, 128, 768), None),
              ((32, 512, 1024), 50), ((8, 4096, 1024), 50))
    for (b, s, h), d in shapes:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            hidden = torch.randn((b, s, h), generator=g, device="cuda").to(dtype)
            mask = torch.ones((b, s), dtype=torch.int64, device="cuda")  # all tokens: the kernel reads every byte
            w = None if d is None else torch.randn((h, d), generator=g, device="cuda") / h**0.5
            exact = masked_mean_pool_l2_ref(hidden, mask, w, dtype=torch.float64)
            nbytes = hidden.numel() * hidden.element_size() + mask.numel() * 8 + (0 if w is None else w.numel() * 4)
            for name, fn in (("triton", lambda: masked_mean_pool_l2(hidden, mask, w)),
                             ("torch reference", lambda: masked_mean_pool_l2_ref(hidden, mask, w))):
                err = (fn().double() - exact).abs().max().item()
                try:
                    t = kernel_gpu_ms(fn) / 1e3
                except RuntimeError as exc:  # report and go on: the end-to-end rows still run
                    rows.append(f"| {b}x{s}x{h} | {str(dtype)[6:]} | {d or h} | {name} | CUDA graph timing failed: "
                                f"{type(exc).__name__}: {str(exc)[:120]} | | | | {err:.1e} |")
                    continue
                t_host = do_bench(fn, warmup=10, rep=50, return_mode="median") / 1e3
                rows.append(f"| {b}x{s}x{h} | {str(dtype)[6:]} | {d or h} | {name} | {nbytes / t / 1e9:.0f} | "
                            f"{100 * nbytes / t / 1e9 / bw:.0f}% | {t * 1e6:.1f} | {t_host * 1e6:.1f} | {err:.1e} |")
    return rows


def build_trt(tmp: Path, precision: str) -> Path | None:
    """Export base with external pooling, unfused, and build an engine; None (with the reason printed) on failure."""
    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import export_onnx

    out = tmp / f"trt-{precision}"
    md = export_onnx(resolve("base"), out, optimize=False, pooling="external")  # unfused: TensorRT parses it
    flags = [] if precision == "fp32" else [f"--{precision}"]
    r = subprocess.run([sys.executable, str(ROOT / "export" / "build_engine.py"), "--onnx", str(md.onnx_path),
                        "--timing-cache", str(tmp / "timing.cache"), *flags], capture_output=True, text=True)
    print(r.stdout + r.stderr, file=sys.stderr)
    return out if r.returncode == 0 else None


def providers(tmp: Path, use_trt: bool) -> dict:
    """{label: zero-argument Encoder factory} for every GPU path available here."""
    import importlib.util
    import os

    from postemb_rt import Encoder

    def torch_cuda(precision, graphs):
        def make():
            os.environ["POSTEMB_CUDA_GRAPHS"] = "1" if graphs else "0"
            try:
                return Encoder.from_pretrained("base", backend="torch", device="cuda", precision=precision)
            finally:
                os.environ.pop("POSTEMB_CUDA_GRAPHS", None)
        return make

    out = {}
    for p in ("fp32", "fp16", "bf16"):
        out[f"torch-cuda {p} eager"] = torch_cuda(p, False)
        out[f"torch-cuda {p} graphs"] = torch_cuda(p, True)
    if use_trt and importlib.util.find_spec("tensorrt") is not None:
        for p in ("fp32", "fp16"):
            d = build_trt(tmp, p)
            if d is not None:
                out[f"tensorrt {p}"] = lambda d=d, p=p: Encoder.from_pretrained(d, backend="tensorrt", device="cuda",
                                                                                precision=p)
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            out["onnxruntime CUDA EP fp32"] = lambda: Encoder.from_pretrained("base", backend="onnxruntime",
                                                                               device="cuda")
    except ImportError:
        pass
    return out


def st_encode(batch_size: int):
    from sentence_transformers import SentenceTransformer

    from postemb_rt.model_dir import base_encoder_path

    st = SentenceTransformer(str(base_encoder_path()), device="cuda").half()
    return lambda texts: st.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000, help="short posts in the throughput run (default 4000)")
    p.add_argument("--long", type=int, default=500, help="long posts in the correctness check (default 500)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    p.add_argument("--no-trt", action="store_true", help="skip TensorRT even where installed")
    p.add_argument("--out", help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_suite: torch is not installed; nothing to measure.")
        return 0
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA device visible (torch.cuda.is_available() is False); nothing to measure. "
              "Run this on a GPU machine.")
        return 0

    from postemb_rt import Encoder

    short, long_, source = texts_for(args.n, args.long)
    cap = torch.cuda.get_device_capability()
    lines = [f"## GPU suite: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}), {date.today().isoformat()}", "",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}; posts: {source}; {len(short)} short, "
             f"{len(long_)} long.", ""]
    bw = copy_bandwidth_gbs()
    lines += [f"### Triton kernel vs torch composition (device copy bandwidth {bw:.0f} GB/s)", "", *kernel_rows(bw), ""]
    printed = emit(lines, 0, args.out)  # kept even if the end-to-end part fails or the run is killed

    check = short[:512] + long_
    try:
        ref = Encoder.from_pretrained("base", backend="torch", device="cpu").encode(check)
    except Exception as exc:  # e.g. no base encoder here (no network): benchmarks/gpu_bundle.py brings it
        lines += [f"End-to-end rows not run: the CPU float32 reference failed to load: {type(exc).__name__}: {exc}"]
        emit(lines, printed, args.out)
        return 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, make in providers(Path(tmp), not args.no_trt).items():
            try:
                enc = make()
            except Exception as exc:  # report and go on: one broken path must not hide the others
                results.append((label, None, None, f"failed to load: {type(exc).__name__}: {exc}"))
                continue
            cos = np.sum(ref * enc.encode(check), axis=1)
            t = timed(lambda: enc.encode(short), args.repeats)
            info = enc.describe()
            note = f"{info.get('pooling_kernel')}; graphs: {info.get('cuda_graphs', '-')}"
            results.append((label, cos, len(short) / t, note))
            enc.close()
            torch.cuda.empty_cache()
        st_best = None
        try:
            for bs in (32, 256):
                enc_st = st_encode(bs)
                t = timed(lambda: enc_st(short), args.repeats)
                st_best = max(st_best or 0.0, len(short) / t)
            results.append(("sentence-transformers fp16 (best of batch 32, 256)", None, st_best, "baseline"))
        except ImportError:
            results.append(("sentence-transformers fp16", None, None, "not installed: pip install sentence-transformers"))
        except Exception as exc:  # installed, but its model or CUDA failed: the rows above still count
            results.append(("sentence-transformers fp16", None, st_best, f"failed: {type(exc).__name__}: {exc}"))

    lines += ["### Correctness vs CPU float32 reference and end-to-end throughput (short posts)", "",
              "| provider | min cosine | mean cosine | posts/s | x sentence-transformers fp16 | notes |",
              "|---|---|---|---|---|---|"]
    for label, cos, pps, note in results:
        c_min = "-" if cos is None else f"{cos.min():.6f}"
        c_mean = "-" if cos is None else f"{cos.mean():.6f}"
        ratio = "-" if pps is None or not st_best else f"{pps / st_best:.2f}x"
        lines.append(f"| {label} | {c_min} | {c_mean} | {'-' if pps is None else f'{pps:,.0f}'} | {ratio} | {note} |")
    emit(lines, printed, args.out)
    return 0


def emit(lines: list[str], printed: int, out: str | None) -> int:
    """Print lines[printed:] and write all of ``lines`` to ``out`` (when given); returns len(lines)."""
    print("\n".join(lines[printed:]), flush=True)
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
    return len(lines)


if __name__ == "__main__":
    sys.exit(main())
