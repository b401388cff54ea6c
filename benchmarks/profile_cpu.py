"""Where the CPU time of one precision goes, over ``Encoder.encode`` on the short-post
workload. torch backend: torch.profiler, operators grouped into matmuls, attention, layer
norm, GELU, other element-wise work, dtype casts and the rest (tokenizer, pooling kernel,
Python), then the oneDNN primitives the run executed, from oneDNN's verbose mode, per
implementation (a bf16 matmul runs ``brg_matmul:avx512_core_bf16`` on AVX512-BF16,
``brg_matmul:avx512_core_amx`` on AMX tiles; fp32 matmuls go to MKL, not oneDNN).
onnxruntime backend: the session's own profiler, time per node op type (a second session on
the same model file with profiling on replaces the encoder's for the run).
openvino backend: the CPU plugin's performance counters (``PERF_COUNT``) over the workload's
median batch, the model compiled at that static shape (see ``openvino_profile``), time per node
type and per implementation: the plugin names the kernel each node ran (``brgemm_avx512_bf16`` for a bf16
matmul on AVX512-BF16; an ``amx`` in the name for AMX tiles), so this says which instructions
the matmuls of a precision reached on this CPU. Both the torch and the openvino profile end with
the share of the matmul time on AMX tiles (``amx_line``).

    python benchmarks/profile_cpu.py [--backend torch] [--precision bf16] [--n 1000] [--model base] [--compile]
    python benchmarks/profile_cpu.py --backend onnxruntime --precision int8
    python benchmarks/profile_cpu.py --backend openvino --precision bf16   # or int8

``--compile`` runs the encoder through ``torch.compile`` (the inductor CPU backend: fused
element-wise kernels, matmuls still in oneDNN) and prints its posts/s beside eager's, both
measured in this run after a warm-up, so the two numbers are comparable. Profiling adds
overhead per operator: the shares are the point, the profiled wall time is not a benchmark.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compare import cpu_name  # noqa: E402

GROUPS = (  # (group, substrings of aten op names), first match wins
    ("matmul", ("addmm", "aten::mm", "bmm", "aten::linear", "mkldnn_linear", "matmul")),
    ("attention", ("scaled_dot_product", "flash_attention", "softmax")),
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("dtype casts / copies", ("aten::to", "_to_copy", "copy_", "contiguous", "clone")),
    ("element-wise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::where", "aten::masked_fill",
                      "aten::expand", "aten::view", "aten::reshape", "aten::transpose", "aten::permute",
                      "aten::embedding", "aten::index", "aten::slice", "aten::select", "aten::dropout")),
)


def group_of(name: str) -> str:
    for g, keys in GROUPS:
        if any(k in name for k in keys):
            return g
    return "other operators"


def print_shares(header: str, by: dict[str, float], wall: float, ms: bool = False) -> None:
    """A markdown table of ``by`` (seconds per group), largest first, with shares of ``wall``;
    ``ms``: print milliseconds."""
    print(f"| {header} | {'ms' if ms else 'seconds'} | share |\n|---|---:|---:|")
    for g, sec in sorted(by.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {sec * 1e3:.1f} | {sec / wall:.0%} |" if ms else f"| {g} | {sec:.2f} | {sec / wall:.0%} |")


def parse_onednn_verbose(text: str) -> dict[str, tuple[int, float]]:
    """{"primitive: implementation": (calls, seconds)} from oneDNN's verbose output: its
    ``primitive,exec`` lines (``onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_bf16,
    ...,640x384:384x1536,1.07``; the last field is the time in ms). Other lines are ignored."""
    out: dict[str, tuple[int, float]] = {}
    for line in text.splitlines():
        f = line.split(",")
        if f[0] != "onednn_verbose" or "exec" not in f[:5]:
            continue
        i = f.index("exec")
        if f[i - 1] == "graph" or len(f) < i + 4:
            continue
        try:
            ms = float(f[-1])
        except ValueError:
            continue
        key = f"{f[i + 2]}: {f[i + 3]}"
        calls, sec = out.get(key, (0, 0.0))
        out[key] = (calls + 1, sec + ms / 1e3)
    return out


# The node types (OpenVINO) and primitives (oneDNN) that run the model's matmuls.
MATMUL_KINDS = ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "matmul", "inner_product")


def amx_line(times: dict) -> str:
    """The share of the matmul time spent in AMX tile kernels, from {"kind: implementation": seconds
    or (calls, seconds)} (openvino_profile's or onednn_kernels'): OpenVINO names them
    ``brgemm_avx512_amx_bf16`` / ``..._I8``, oneDNN ``brg_matmul:avx512_core_amx`` (an ``amx`` in each)."""
    sec = {k: v[1] if isinstance(v, tuple) else v for k, v in times.items() if k.split(": ")[0] in MATMUL_KINDS}
    if not sec:
        return "matmul time on AMX tiles: no matmul kernel ran"
    amx = sum(v for k, v in sec.items() if "amx" in k.split(": ", 1)[1].lower())
    return (f"matmul time on AMX tiles (an `amx` in the kernel name): {amx / sum(sec.values()):.0%} of "
            f"{sum(sec.values()) * 1e3:.1f} ms")


def no_matmul_note(precision: str) -> str:
    """Why the oneDNN table holds no matmul at ``precision`` (torch backend)."""
    why = ("torch's fp32 matmuls go to MKL, not oneDNN" if precision == "fp32" else
           "torch sends bf16 matmuls to oneDNN only from AVX-512 up; below it (an AVX2-only CPU, or "
           "ONEDNN_MAX_CPU_ISA=AVX2) its own kernels run them")
    return f"no oneDNN matmul ran at {precision} ({why})"


def onednn_kernels(run) -> dict[str, tuple[int, float]]:
    """{"primitive: implementation": (calls, seconds)} of the oneDNN primitives ``run()``
    executes in this process: torch's switch for oneDNN's verbose mode around the call, its
    output (written by C to file descriptor 1) captured in a temporary file."""
    import tempfile

    import torch

    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                run()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return parse_onednn_verbose(log.read())


def rate(enc, texts) -> float:
    t = time.perf_counter()
    enc.encode(texts)
    return len(texts) / (time.perf_counter() - t)


def onnxruntime_profile(enc, texts) -> tuple[float, dict[str, float]]:
    """(wall seconds, {op type: seconds}) of encoding ``texts`` with profiling on."""
    import json

    import onnxruntime as ort

    from postemb_rt.cpu import model_threads

    backend = enc.backend
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = model_threads()  # as the onnxruntime backend's session
    so.enable_profiling = True
    so.profile_file_prefix = "/tmp/postemb-ort-profile"
    plain, backend._session = backend._session, ort.InferenceSession(str(backend.onnx_path), so,
                                                                     providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    enc.encode(texts)
    wall = time.perf_counter() - t0
    trace = backend._session.end_profiling()
    backend._session = plain
    by: dict[str, float] = {}
    with open(trace) as f:
        for ev in json.load(f):
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                op = ev.get("args", {}).get("op_name", "?")
                by[op] = by.get(op, 0.0) + ev["dur"] / 1e6
    os.unlink(trace)
    return wall, by


def median_batch(enc, texts) -> tuple:
    """(input_ids, attention_mask) of the median-cost batch ``enc.encode(texts)`` would run
    (its batch plan, ordered by padded tokens)."""
    from postemb_rt import native
    from postemb_rt.batching import plan_batches

    seqs = enc.tokenizer(texts).ids
    plan = plan_batches([len(x) for x in seqs], 64, enc.max_batch_tokens)
    plan = sorted(plan, key=lambda idx: len(idx) * max(len(seqs[i]) for i in idx))
    return native.pack_padded([seqs[i] for i in plan[len(plan) // 2]], enc.tokenizer.pad_id)


def openvino_profile(enc, texts, repeats: int = 10) -> tuple[tuple, float, dict[str, float], dict[str, float]]:
    """(batch shape, seconds per inference, {node type: seconds}, {"node type: implementation":
    seconds}) per inference of the workload's median batch, with the CPU plugin's performance
    counters on. The model is compiled at that one static shape: with a dynamic shape OpenVINO's
    per-node times after a shape change are not the inference's own (their sum ranges from 0.3x
    to 3x its wall time here), at a static shape they add up to it."""
    import openvino as ov

    backend = enc.backend
    ids, mask = median_batch(enc, texts)
    core = ov.Core()
    model = backend.ov_model(core)  # int8: the smoothed graph quantized as the backend does
    model.reshape({"input_ids": ids.shape, "attention_mask": mask.shape})
    config = backend.config_for(ids.shape[1], PERF_COUNT="YES")  # as the backend runs a batch of this length
    request = core.compile_model(model, "CPU", config).create_infer_request()
    feed = {"input_ids": ids, "attention_mask": mask}
    request.infer(feed)  # warm-up
    by: dict[str, float] = {}
    impl: dict[str, float] = {}
    wall = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer(feed)
        wall += time.perf_counter() - t0
        for info in request.get_profiling_info():
            sec = info.real_time.total_seconds() / repeats
            by[info.node_type] = by.get(info.node_type, 0.0) + sec
            key = f"{info.node_type}: {info.exec_type}"
            impl[key] = impl.get(key, 0.0) + sec
    return ids.shape, wall / repeats, by, impl


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "openvino"),
                   help="torch, onnxruntime or openvino (default torch)")
    p.add_argument("--precision", default=None,
                   help="torch: fp32 or bf16; onnxruntime: fp32 or int8; openvino: fp32, bf16 or int8 "
                        "(default: bf16, int8 for onnxruntime)")
    p.add_argument("--n", type=int, default=1000, help="short posts (default 1000)")
    p.add_argument("--model", default="base")
    p.add_argument("--compile", action="store_true", help="also time the encoder under torch.compile")
    args = p.parse_args(argv)
    args.precision = args.precision or ("int8" if args.backend == "onnxruntime" else "bf16")
    import torch
    from torch.profiler import ProfilerActivity, profile

    from postemb_rt import Encoder
    from postemb_rt.data import short_posts

    texts = short_posts(args.n)
    enc = Encoder.from_pretrained(args.model, backend=args.backend, precision=args.precision)
    enc.encode(texts[:256])
    load = os.getloadavg()[0]
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC | {cpu_name()} | "
          f"{os.cpu_count()} CPUs | torch {torch.__version__} threads {torch.get_num_threads()} | "
          f"model {args.model} backend {args.backend} precision {args.precision} | {args.n} short posts | "
          f"load {load:.2f}")
    eager = rate(enc, texts)
    if args.backend == "onnxruntime":
        wall, by = onnxruntime_profile(enc, texts)
        nodes = sum(by.values())
        by["not in graph nodes (tokenizer, pooling kernel, Python, session overhead)"] = max(wall - nodes, 0.0)
        print(f"{args.precision}: {eager:.1f} posts/s; profiled run {wall:.2f} s")
        print_shares("where (node op type)", by, wall)
        enc.close()
        return
    if args.backend == "openvino":
        shape, wall, by, impl = openvino_profile(enc, texts)
        nodes = sum(by.values())
        print(f"{args.precision}: {eager:.1f} posts/s on the workload; profiled: its median batch {shape[0]} x "
              f"{shape[1]} tokens at a static shape, {wall * 1e3:.1f} ms per inference, node times sum to "
              f"{nodes * 1e3:.1f} ms ({nodes / wall:.0%})")
        top = dict(sorted(impl.items(), key=lambda kv: -kv[1])[:12])
        print_shares("where (node type: implementation; top 12)", top, wall, ms=True)
        print(amx_line(impl))
        print()
        print_shares("where (node type)", {k: v for k, v in by.items() if v >= 0.0005 * wall}, wall, ms=True)
        enc.close()
        return
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        enc.encode(texts)
    wall = time.perf_counter() - t0
    by: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.key.startswith("aten::") or ev.key.startswith("mkldnn") or "postemb" in ev.key:
            by[group_of(ev.key)] = by.get(group_of(ev.key), 0.0) + ev.self_cpu_time_total / 1e6
    threads = torch.get_num_threads()
    # self CPU time: the calling thread's time inside each operator (its intra-op threads work
    # meanwhile); the rest of the wall time is the tokenizer, the pooling kernel and Python
    ops = sum(by.values())
    by["not in aten operators (tokenizer, pooling kernel, Python)"] = max(wall - ops, 0.0)
    print(f"eager {args.precision}: {eager:.1f} posts/s; profiled run {wall:.2f} s ({threads} threads)")
    print_shares("where", by, wall)
    t0 = time.perf_counter()
    kernels = onednn_kernels(lambda: enc.encode(texts))
    wall = time.perf_counter() - t0
    print()
    if kernels:
        print(f"oneDNN primitives of one more run ({wall:.2f} s, verbose mode on), by implementation:\n"
              f"| primitive: implementation | calls | seconds | share |\n|---|---:|---:|---:|")
        for k, (calls, sec) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
            print(f"| {k} | {calls} | {sec:.2f} | {sec / wall:.0%} |")
    if not any(k.startswith("matmul:") for k in kernels):
        print(no_matmul_note(args.precision))
    else:
        print(amx_line(kernels))
    if args.compile:
        backend = enc.backend
        model = backend._model
        model.encoder = torch.compile(model.encoder, dynamic=True)
        t = time.perf_counter()
        enc.encode(texts[:512])  # compiles for the shapes it meets
        print(f"torch.compile warm-up {time.perf_counter() - t:.0f} s")
        compiled = rate(enc, texts)
        again = rate(enc, texts)
        print(f"compiled {args.precision}: {max(compiled, again):.1f} posts/s vs eager {eager:.1f} "
              f"({max(compiled, again) / eager:.2f}x); load {os.getloadavg()[0]:.2f}")
    enc.close()


if __name__ == "__main__":
    main()
