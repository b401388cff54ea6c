"""Per-precision matmul ceilings at the model's own GEMM shapes, and the ISA peak beside them.

    python benchmarks/ceilings.py [--m 1408] [--threads 2] [--repeats 5] [--json out.json]

A precision's **ceiling** is the fastest the model's matmuls could run on this machine with
the libraries the runtime can use: for every GEMM shape of one encoder layer at a typical
batch (M = rows x padded tokens; (K, N) = (H, H) for the four attention projections,
(H, I) and (I, H) for the feed-forward pair), every library below is timed (best of
``repeats``) and the fastest kept; the ceiling is the layer's FLOPs over the sum of those
best times, so each shape counts with its share of the FLOPs.

| precision | libraries tried |
|---|---|
| fp32 | MKL (torch F.linear), oneDNN (torch.utils.mkldnn Linear), MLAS (onnxruntime MatMul), OpenVINO (MatMul, f32) |
| bf16 | oneDNN (torch F.linear in bf16; torch.utils.mkldnn Linear in bf16), MLAS (onnxruntime MatMul in bf16: not implemented on CPU in onnxruntime 1.32, reported as unavailable), OpenVINO (MatMul, inference precision bf16: its own oneDNN build, AMX tiles where present; only with native bf16) |
| int8 | MLAS (onnxruntime MatMulInteger u8 x s8 -> s32), oneDNN (torch._int_mm s8 x s8 -> s32), torch quantized.linear (x86 engine: fbgemm or oneDNN; u8 x s8 -> u8 requantized), OpenVINO (MatMul between FakeQuantize nodes, which it runs as an int8 FullyConnected, u8 x i8, its own oneDNN build, AMX tiles where present; only with AVX512-VNNI or AMX, as the openvino backend) |

Weights are constants the library may pre-pack (ONNX initializers, mkldnn/quantized packed
weights), as in the model. A library that cannot run a shape is listed with its error, not
dropped silently. ``merge`` keeps the best of several measurements (compare.py measures
before and after each workload). A workload row above 100% of its ceiling means the
ceiling is wrong (a faster library or path exists), so ``fraction_cell`` refuses to print
it as a percentage and ``over_ceiling`` flags it.

The **ISA peak** (:func:`isa_peak`) = cores x 512-bit FMA-class instructions per cycle x
lanes x 2 x clock; with AMX (amx_bf16 / amx_int8 in the CPU flags) the bf16 and int8 peaks are
cores x the tile throughput Intel documents (1,024 bf16 FLOP, 2,048 int8 OP per cycle and core;
see ``AMX``) x clock, with the zmm figure kept beside them. The clock is measured by a timed
chain of dependent register-register add/xor (one cycle each on every x86 core, and not
something a renamer can fold: see ``isa_probe.c``) and cross-checked against the chain's own
core cycles (perf counter, where the kernel exposes one), else the TSC rate, else
/proc/cpuinfo; where they disagree by more than ``CLOCK_FACTOR`` the cross-check is used and the
clock source says so. The instructions per cycle come from 12 independent vfmadd231ps /
vdpbf16ps / vpdpbusd chains, compiled here with the system C compiler (a VM's cpuid does not
reveal whether a core splits 512-bit work into two 256-bit halves). The clock is one thread's;
the all-core clock may be lower, so the peak is an upper bound.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from postemb_rt.cpu import cpu_flags, kernel_amx_tiles, model_threads, physical_cores, usable_cpus

PRECISIONS = ("fp32", "bf16", "int8")
UNITS = {"fp32": "GFLOP/s", "bf16": "GFLOP/s", "int8": "GOP/s"}
# Per 512-bit instruction: fp32 FMA 16 lanes; vdpbf16ps 32 bf16 products; vpdpbusd 64 u8 x s8
# products. Each lane is a multiply and an add (the "x 2").
LANES = {"fp32": 16, "bf16": 32, "int8": 64}
PROBES = {"fp32": ("zmm_fma", "avx512f"), "bf16": ("zmm_dpbf16", "avx512_bf16"), "int8": ("zmm_dpbusd", "avx512_vnni")}


def model_gemms(m: int, hidden: int = 384, intermediate: int = 1536) -> list[dict]:
    """The GEMMs of one encoder layer at M rows: name, (m, k, n) and how many per layer.
    Attention scores and context (4 S H per token and layer) are left out, as in compare.py's
    FLOP count (under 2% at these lengths)."""
    for name, value in (("m", m), ("hidden", hidden), ("intermediate", intermediate)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive int. Given: {value!r}.")
    return [
        {"name": "attn_proj", "m": int(m), "k": int(hidden), "n": int(hidden), "count": 4},
        {"name": "ffn_up", "m": int(m), "k": int(hidden), "n": int(intermediate), "count": 1},
        {"name": "ffn_down", "m": int(m), "k": int(intermediate), "n": int(hidden), "count": 1},
    ]


def typical_rows(lengths, batch_size: int = 64, max_batch_tokens: int = 4096) -> int:
    """M of a typical batch: the median over ``Encoder.encode``'s batch plan (same planner,
    same defaults) of rows x longest row (the padded tokens the matmuls compute)."""
    from postemb_rt.batching import plan_batches

    lengths = np.asarray(lengths)
    if lengths.size == 0:
        raise ValueError("`lengths` must hold at least one post's token count. Given: an empty list.")
    sizes = [len(b) * int(lengths[b].max()) for b in plan_batches(lengths, batch_size, max_batch_tokens)]
    return int(np.median(sizes))


# -- the libraries: each factory (m, k, n, threads) -> a zero-argument callable running one GEMM ----

def _rng():
    return np.random.default_rng(0)


def _torch_linear(dtype_name: str):
    def make(m, k, n, threads):
        import torch

        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        x, w = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt)
        return lambda: torch.nn.functional.linear(x, w)
    return make


def _mkldnn_linear(dtype_name: str):
    def make(m, k, n, threads):
        import torch
        from torch.utils import mkldnn

        lin = torch.nn.Linear(k, n, bias=False).eval()
        if dtype_name == "bf16":
            mod, x = mkldnn.to_mkldnn(lin, torch.bfloat16), torch.randn(m, k).bfloat16().to_mkldnn()
        else:
            mod, x = mkldnn.to_mkldnn(lin), torch.randn(m, k).to_mkldnn()
        mod(x)  # fails here, not in the timed loop, if this build lacks the kernel
        return lambda: mod(x)
    return make


def _ort_session(node, inputs, init, output, threads):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph([node], "ceiling", inputs, [output], initializer=[init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_matmul(dtype_name: str):
    def make(m, k, n, threads):
        from onnx import TensorProto, helper, numpy_helper

        if dtype_name == "bf16":  # raises NOT_IMPLEMENTED on onnxruntime's CPU provider (1.32)
            w = helper.make_tensor("w", TensorProto.BFLOAT16, [k, n], np.zeros(k * n, np.uint16).tobytes(), raw=True)
            tp, x = TensorProto.BFLOAT16, None
        else:
            w = numpy_helper.from_array(_rng().standard_normal((k, n), dtype=np.float32), "w")
            tp, x = TensorProto.FLOAT, _rng().standard_normal((m, k), dtype=np.float32)
        sess = _ort_session(helper.make_node("MatMul", ["x", "w"], ["y"]),
                            [helper.make_tensor_value_info("x", tp, [m, k])], w,
                            helper.make_tensor_value_info("y", tp, [m, n]), threads)
        feeds = {"x": x}
        return lambda: sess.run(None, feeds)
    return make


def _openvino_compiled(dtype_name: str, m: int, k: int, n: int, threads: int):
    """OpenVINO's CPU plugin (its own oneDNN, AMX tiles where present) on one MatMul with a constant weight, at
    the inference precision the openvino backend uses for ``dtype_name``; int8: the MatMul between FakeQuantize
    nodes (the pattern of the backend's static int8 graphs), which the plugin runs as an int8 FullyConnected.
    Returns (compiled model, feeds)."""
    import openvino as ov
    from openvino import opset13 as ops

    from postemb_rt.backends.openvino_backend import HINTS, compile_config
    from postemb_rt.cpu import native_bf16, vnni512

    if dtype_name == "bf16" and not native_bf16():
        raise RuntimeError("no native bf16 here (the openvino backend refuses bf16)")
    if dtype_name == "int8" and not vnni512():
        raise RuntimeError("no AVX512-VNNI or AMX int8 here (the openvino backend refuses int8)")
    x = ops.parameter([m, k], ov.Type.f32, name="x")
    a, b = x, ops.constant(_rng().standard_normal((k, n), dtype=np.float32))
    if dtype_name == "int8":  # activations u8 (256 levels), weights i8 (255, symmetric)
        def lim(v):
            return ops.constant(np.float32(v))

        a = ops.fake_quantize(a, lim(-4), lim(4), lim(-4), lim(4), 256)
        b = ops.fake_quantize(b, lim(-4), lim(4), lim(-4), lim(4), 255)
    hint = compile_config("int8")["INFERENCE_PRECISION_HINT"] if dtype_name == "int8" else HINTS[dtype_name]
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(a, b, False, False)], [x]), "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    return compiled, {0: _rng().standard_normal((m, k), dtype=np.float32)}


def _openvino_matmul(dtype_name: str):
    def make(m, k, n, threads):
        compiled, feeds = _openvino_compiled(dtype_name, m, k, n, threads)
        req = compiled.create_infer_request()
        return lambda: req.infer(feeds)
    return make


def _ort_matmul_integer(m, k, n, threads):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(_rng().integers(-127, 128, (k, n), dtype=np.int8), "w")
    sess = _ort_session(helper.make_node("MatMulInteger", ["x", "w"], ["y"]),
                        [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])], w,
                        helper.make_tensor_value_info("y", TensorProto.INT32, [m, n]), threads)
    feeds = {"x": _rng().integers(0, 256, (m, k), dtype=np.uint8)}
    return lambda: sess.run(None, feeds)


def _torch_int_mm(m, k, n, threads):
    import torch

    x = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    w = torch.randint(-127, 128, (k, n), dtype=torch.int8)
    torch._int_mm(x, w)
    return lambda: torch._int_mm(x, w)


def _torch_qlinear(m, k, n, threads):
    import torch

    with warnings.catch_warnings():  # quantized tensors are deprecated in torch 2.13, still supported
        warnings.simplefilter("ignore")
        w = torch.quantize_per_tensor(torch.randn(n, k), 0.05, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
        x = torch.quantize_per_tensor(torch.randn(m, k), 0.05, 128, torch.quint8)
    return lambda: torch.ops.quantized.linear(x, packed, 1.0, 128)


LIBRARIES = {
    "fp32": [("mkl: torch F.linear", _torch_linear("fp32")),
             ("onednn: torch mkldnn Linear", _mkldnn_linear("fp32")),
             ("mlas: onnxruntime MatMul", _ort_matmul("fp32")),
             ("openvino: MatMul f32", _openvino_matmul("fp32"))],
    "bf16": [("onednn: torch F.linear", _torch_linear("bf16")),
             ("onednn: torch mkldnn Linear", _mkldnn_linear("bf16")),
             ("mlas: onnxruntime MatMul", _ort_matmul("bf16")),
             ("openvino: MatMul bf16", _openvino_matmul("bf16"))],
    "int8": [("mlas: onnxruntime MatMulInteger", _ort_matmul_integer),
             ("onednn: torch._int_mm", _torch_int_mm),
             ("x86 engine (fbgemm/onednn): torch quantized.linear", _torch_qlinear),
             ("openvino: MatMul u8 x i8 (FakeQuantize)", _openvino_matmul("int8"))],
}


def best_seconds(fn, repeats: int) -> float:
    """Best of ``repeats`` timed calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(m: int, threads: int, repeats: int = 5, hidden: int = 384, intermediate: int = 1536,
            precisions=PRECISIONS, libraries: dict | None = None) -> dict:
    """Time every library on every GEMM of :func:`model_gemms`.

    Returns ``{"m", "threads", "gemms": [...], "rates": {precision: {gemm: {library: ops/s}}},
    "unavailable": {precision: {library: reason}}}``; pass it to :func:`ceilings`."""
    import torch

    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"`threads` must be an int >= 1 (the workloads' thread count). Given: {threads!r}.")
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1. Given: {repeats!r}.")
    libraries = LIBRARIES if libraries is None else libraries
    unknown = [p for p in precisions if p not in libraries]
    if unknown:
        raise ValueError(f"`precisions` must be among {sorted(libraries)}. Given: {unknown}.")
    gemms = model_gemms(m, hidden, intermediate)
    out = {"m": int(m), "threads": threads, "gemms": gemms, "rates": {}, "unavailable": {}}
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for prec in precisions:
            rates, missing = out["rates"].setdefault(prec, {}), out["unavailable"].setdefault(prec, {})
            for lib, make in libraries[prec]:
                for g in gemms:
                    try:
                        fn = make(g["m"], g["k"], g["n"], threads)
                        seconds = best_seconds(fn, repeats)
                    except Exception as e:  # a library without this kernel: say which and why
                        missing[lib] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                        break
                    rates.setdefault(g["name"], {})[lib] = 2 * g["m"] * g["k"] * g["n"] / seconds
    finally:
        torch.set_num_threads(saved)
    for prec in precisions:  # a library that failed part-way contributes nothing
        for lib in out["unavailable"][prec]:
            for per_lib in out["rates"][prec].values():
                per_lib.pop(lib, None)
    return out


def merge(*measurements: dict) -> dict:
    """The best rate of each (precision, GEMM, library) over several measurements of the same
    shapes (e.g. before and after the workloads)."""
    if not measurements:
        raise ValueError("`measurements` must hold at least one measure() result. Given: none.")
    first = measurements[0]
    for other in measurements[1:]:
        if (other["m"], other["threads"], other["gemms"]) != (first["m"], first["threads"], first["gemms"]):
            raise ValueError(f"`measurements` must share m, threads and GEMMs. Given: m {first['m']} vs "
                             f"{other['m']}, threads {first['threads']} vs {other['threads']}.")
    out = {"m": first["m"], "threads": first["threads"], "gemms": first["gemms"], "rates": {}, "unavailable": {},
           "measurements": len(measurements)}
    for meas in measurements:
        for prec, per_gemm in meas["rates"].items():
            for gname, per_lib in per_gemm.items():
                dst = out["rates"].setdefault(prec, {}).setdefault(gname, {})
                for lib, rate in per_lib.items():
                    dst[lib] = max(dst.get(lib, 0.0), rate)
        for prec, missing in meas["unavailable"].items():
            out["unavailable"].setdefault(prec, {}).update(missing)
    return out


def ceilings(measurement: dict) -> dict:
    """{precision: {"ops_per_s", "unit", "best": {gemm: library}}} from a measure()/merge()
    result: the layer's FLOPs over the sum of each GEMM's best time (FLOP-weighted harmonic
    mean of the per-GEMM best rates). A precision with a GEMM no library ran has ops_per_s None."""
    out = {}
    for prec, per_gemm in measurement["rates"].items():
        total = seconds = 0.0
        best = {}
        for g in measurement["gemms"]:
            rates = per_gemm.get(g["name"], {})
            flops = 2 * g["m"] * g["k"] * g["n"] * g["count"]
            total += flops
            if not rates:
                seconds = float("nan")
                continue
            lib = max(rates, key=rates.get)
            best[g["name"]] = lib
            seconds += flops / rates[lib]
        ok = total > 0 and np.isfinite(seconds) and seconds > 0
        out[prec] = {"ops_per_s": total / seconds if ok else None, "unit": UNITS.get(prec, "OP/s"), "best": best}
    return out


# -- the guard ------------------------------------------------------------------------------

def over_ceiling(fraction: float) -> bool:
    """True where a measured row claims more than its ceiling allows (the ceiling is wrong)."""
    return not (fraction <= 1.0)  # NaN counts as over: it cannot be shown to be within


def fraction_cell(fraction: float) -> str:
    """The "% of its ceiling" cell: a percentage up to 100%, never above it."""
    return f"{fraction:.0%}" if not over_ceiling(fraction) else "OVER CEILING (ceiling wrong)"


def ceiling_warnings(ceils: dict, peak: dict | None) -> list[str]:
    """Warnings where a measured ceiling exceeds the ISA peak (the peak, or the probe, is wrong)."""
    out = []
    for prec, c in ceils.items():
        p = (peak or {}).get("precisions", {}).get(prec, {}).get("ops_per_s")
        if c["ops_per_s"] is not None and p is not None and c["ops_per_s"] > p:
            out.append(f"WARNING: the {prec} ceiling ({c['ops_per_s'] / 1e9:.0f} {c['unit']}) exceeds the ISA peak "
                       f"({p / 1e9:.0f}): the peak's pipe count or clock is wrong on this machine")
    return out


# -- the ISA peak -----------------------------------------------------------------------------

# Per core and cycle, from Intel's documentation, not measured here (no tile probe: it needs the kernel's
# XTILEDATA permission; on the AMX machine of 2026-12-06 the best library ran at most 43% of these peaks,
# benchmarks/RESULTS.md "Intel Xeon with AMX"): one TDPBF16PS
# multiplies a 16x32 by a 32x16 bf16 tile into 16x16 fp32, 16*16*32*2 = 16,384 FLOP, and one
# TDPBSSD/TDPBUSD a 16x64 by a 64x16 int8 tile, 32,768 OP, each at a throughput of one per 16
# cycles per core on Sapphire Rapids and later: 1,024 bf16 FLOP and 2,048 int8 OP per cycle
# ("4th Gen Intel Xeon Scalable processors can perform 2048 INT8 or 1024 BF16 operations per
# cycle"; Intel 64 and IA-32 Architectures Optimization Reference Manual, chapter "Intel Advanced
# Matrix Extensions"; Wikipedia "Advanced Matrix Extensions", which cites it).
AMX = {"bf16": ("amx_bf16", 1024, "TDPBF16PS: 16x16x32 bf16 tile multiply-add, 16,384 FLOP per 16 cycles"),
       "int8": ("amx_int8", 2048, "TDPBSSD: 16x16x64 int8 tile multiply-add, 32,768 OP per 16 cycles")}
AMX_SOURCE = ("documented, not measured: Intel 64 and IA-32 Architectures Optimization Reference Manual, "
              "Intel AMX (one tile multiply-add per 16 cycles per core)")
CHAIN_OPS = 16  # dependent ALU ops per alu_chain iteration (isa_probe.c)
ZMM_OPS = 12  # independent 512-bit instructions per zmm probe iteration
# No x86 core has shipped above ~6.2 GHz: a chain that measures more than this was shortcut.
MAX_X86_CLOCK_HZ = 6.5e9
# How far the chain's clock may lie from a cross-check (either way) before the cross-check is used
# instead. "perf": the same chain counted in core cycles by the kernel, so the two must agree up to
# timer noise. "tsc" and "cpuinfo": the nominal clock (cpuinfo: in most VMs; on bare metal the
# current one), which a turbo clock exceeds by up to ~2x on server parts (e.g. 2.0 -> 3.9 GHz);
# a chain shortcut by renaming runs 4-5x too fast (issue 27: 18.6 GHz), far outside.
CLOCK_FACTOR = {"perf": 1.25, "tsc": 2.5, "cpuinfo": 2.5}




def _cpuinfo_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


class CompiledProbe:
    """isa_probe.c compiled with the system C compiler (-O2, no -march: each probe names its own
    target) and loaded. The same methods on a fake drive :func:`isa_peak` in the tests. A toolchain
    that cannot build the vdpbf16ps probe (binutils before 2.33: RHEL 8, Ubuntu 18.04, Debian 10; GCC
    before 9) builds the rest without it; ``unavailable`` then says why ({probe: reason})."""

    def __init__(self):
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise RuntimeError("no C compiler (cc) on PATH")
        out = Path(tempfile.mkdtemp(prefix="postemb_isa_")) / "isa_probe.so"
        src = Path(__file__).with_name("isa_probe.c")
        self.unavailable, first = {}, ""
        for extra in ([], ["-DPOSTEMB_NO_BF16_PROBE"]):
            r = subprocess.run([cc, "-O2", "-shared", "-fPIC", *extra, "-o", str(out), str(src)], capture_output=True,
                               text=True)
            if r.returncode == 0:
                break
            lines = r.stderr.strip().splitlines() or [""]
            first = first or next((x for x in lines if "rror" in x), lines[0]).strip()
            self.unavailable["zmm_dpbf16"] = f"{cc} cannot build the vdpbf16ps probe ({first[:160]})"
        else:
            raise RuntimeError(f"{cc} failed on {src.name}: {first[:200]}")
        lib = self.lib = ctypes.CDLL(str(out))
        lib.alu_chain.argtypes, lib.alu_chain.restype = [ctypes.c_long] * 3, ctypes.c_long
        lib.alu_chain_cycles.argtypes, lib.alu_chain_cycles.restype = [ctypes.c_long] * 3, ctypes.c_longlong
        lib.tsc.argtypes, lib.tsc.restype = [], ctypes.c_ulonglong
        for name, _ in PROBES.values():
            if name in self.unavailable:
                continue
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = [ctypes.c_long], ctypes.c_double

    def chain_seconds(self, iters: int, repeats: int) -> float:
        """Best seconds of CHAIN_OPS * iters dependent ALU ops (one cycle each)."""
        return best_seconds(lambda: self.lib.alu_chain(iters, 3, 5), repeats)

    def chain_cycles_hz(self, iters: int, repeats: int) -> float | None:
        """The chain's core cycles (kernel perf counter) over its seconds, best of ``repeats``; None
        without a counter."""
        best = None
        for _ in range(repeats):
            t = time.perf_counter()
            cycles = self.lib.alu_chain_cycles(iters, 3, 5)
            seconds = time.perf_counter() - t
            if cycles <= 0:
                return None
            best = max(best or 0.0, cycles / seconds)
        return best

    def tsc_hz(self, seconds: float = 0.05) -> float:
        """Time-stamp counter ticks per wall-clock second."""
        t, c = time.perf_counter(), self.lib.tsc()
        time.sleep(seconds)
        return (self.lib.tsc() - c) / (time.perf_counter() - t)

    def zmm_seconds(self, probe: str, iters: int, repeats: int) -> float:
        """Best seconds of ZMM_OPS * iters independent 512-bit instructions of one kind."""
        fn = getattr(self.lib, probe)
        return best_seconds(lambda: fn(iters), repeats)


def clock_references(probe, flags: set[str], cpuinfo_mhz: float | None, iters: int, repeats: int) -> list[dict]:
    """Every clock the chain can be checked against, most direct first: the chain's own core cycles
    (perf counter), the TSC (with constant_tsc), /proc/cpuinfo 'cpu MHz'."""
    refs = []
    hz = probe.chain_cycles_hz(iters, max(1, repeats // 4))
    if hz:
        refs.append({"kind": "perf", "hz": hz, "source": "perf counter: the chain's core cycles over its seconds"})
    if "constant_tsc" in flags:
        refs.append({"kind": "tsc", "hz": probe.tsc_hz(), "source": "TSC rate (constant_tsc; about the nominal clock)"})
    if cpuinfo_mhz:
        refs.append({"kind": "cpuinfo", "hz": cpuinfo_mhz * 1e6, "source": "/proc/cpuinfo 'cpu MHz'"})
    return refs


def choose_clock(chain_hz: float, refs: list[dict], chain_label: str = "ALU chain") -> dict:
    """The clock the ISA peak uses: the chain's, unless the first cross-check in ``refs`` disagrees
    by more than its CLOCK_FACTOR (or the chain exceeds MAX_X86_CLOCK_HZ), in which case that
    cross-check, marked as such. Returns {"clock_hz", "clock_source", "chain_hz", "cross_check",
    "disagreement"} (disagreement: a sentence, or None)."""
    out = {"chain_hz": chain_hz, "cross_check": refs[0] if refs else None, "disagreement": None}
    measured = f"measured: {chain_label} at {chain_hz / 1e9:.2f} GHz"
    if not refs:
        if chain_hz <= MAX_X86_CLOCK_HZ:
            return dict(out, clock_hz=chain_hz, clock_source=f"{measured} (no cross-check available)")
        out["disagreement"] = (f"the {chain_label} measured {chain_hz / 1e9:.1f} GHz, above any x86 clock "
                               f"({MAX_X86_CLOCK_HZ / 1e9:.1f} GHz), and nothing else gives the clock")
        return dict(out, clock_hz=None, clock_source=f"unknown: {out['disagreement']}")
    ref = refs[0]
    factor = CLOCK_FACTOR[ref["kind"]]
    ratio = chain_hz / ref["hz"]
    if 1 / factor <= ratio <= factor and chain_hz <= MAX_X86_CLOCK_HZ:
        return dict(out, clock_hz=chain_hz, clock_source=f"{measured}, cross-checked: {ref['source']} "
                                                         f"{ref['hz'] / 1e9:.2f} GHz (agree within {factor:g}x)")
    out["disagreement"] = (f"the {chain_label} measured {chain_hz / 1e9:.2f} GHz, {ratio:.2f}x the {ref['source']} "
                           f"({ref['hz'] / 1e9:.2f} GHz): outside {factor:g}x"
                           + (f" or above {MAX_X86_CLOCK_HZ / 1e9:.1f} GHz" if chain_hz > MAX_X86_CLOCK_HZ else "")
                           + ", so the chain is not trusted")
    return dict(out, clock_hz=ref["hz"], clock_source=f"cross-check: {ref['source']} {ref['hz'] / 1e9:.2f} GHz "
                                                      f"({out['disagreement']})")


def default_threads(usable: int | None = None) -> int:
    """The workloads' threads: the runtime's (cpu.model_threads: POSTEMB_NUM_THREADS, else the CPUs a
    mask or cgroup quota leaves), else torch's default. torch's ignores a quota: ceilings timed on it
    under a 4-CPU quota on a big host are throttled, below the rows."""
    import torch

    return model_threads(usable=usable) or torch.get_num_threads()


def baseline_threads(usable: int | None = None) -> int:
    """The threads the baseline (sentence-transformers, so torch) runs on: torch's own default, capped at
    the CPUs this process may use (cpu.usable_cpus: its CPU mask and cgroup quota). torch's default reads
    a mask but not a quota, so in a container with a CPU limit on a larger host (a CI pod) the baseline
    ran a thread per host core, throttled to the quota, while our rows kept to it: every ratio rose with
    the baseline's slowdown, and a real regression could pass the gate's floors (default_threads caps
    the ceilings' threads the same way)."""
    import torch

    return max(1, min(torch.get_num_threads(), usable_cpus() if usable is None else usable))


def peak_cores(threads: int, physical: int | None = None) -> int:
    """The cores :func:`isa_peak` counts for ``threads`` threads: at most the physical cores this
    process may use (``physical``, default cpu.physical_cores; unknown: the threads), since SMT
    siblings share one core's vector pipes and AMX unit."""
    physical = physical_cores() if physical is None else physical
    return min(threads, physical) if physical else threads


def isa_peak(cores: int, iters: int = 500_000, repeats: int = 20, probe=None, flags: set[str] | None = None,
             cpuinfo_mhz: float | None = None, kernel_amx: bool | None = None) -> dict:
    """Theoretical peak per precision: cores x 512-bit instructions per cycle (measured, rounded to
    the nearest half) x LANES x 2 x clock, or with AMX (amx_bf16 / amx_int8 flags) for bf16 / int8
    cores x the documented tile OP per cycle (AMX) x clock. The clock is measured by
    isa_probe.c's dependent ALU chain and cross-checked (:func:`choose_clock`).

    The tile peak needs the kernel's AMX tile state too (``kernel_amx``, default
    postemb_rt.cpu.kernel_amx_tiles; None: unknown, the flags trusted): without it the zmm figure
    stays the peak, its formula saying why.
    ``probe`` (default: :class:`CompiledProbe`), ``flags`` (default: /proc/cpuinfo) and
    ``cpuinfo_mhz`` (default: /proc/cpuinfo) are there for tests. Returns {"clock_hz",
    "clock_source", "clock": {chain_hz, cross_check, disagreement, references}, "cores",
    "precisions": {p: {"ops_per_s", "formula", "per_cycle"(, "per_cycle_measured", "source",
    "zmm")} or {"ops_per_s": None, "reason"}}}."""
    if not isinstance(cores, int) or cores < 1:
        raise ValueError(f"`cores` must be an int >= 1. Given: {cores!r}.")
    flags = cpu_flags() if flags is None else set(flags)
    cpuinfo_mhz = _cpuinfo_mhz() if cpuinfo_mhz is None else cpuinfo_mhz
    kernel_amx = kernel_amx_tiles() if kernel_amx is None else kernel_amx
    out = {"cores": cores, "precisions": {}}
    if probe is None:
        try:
            probe = CompiledProbe()
        except (RuntimeError, OSError) as e:
            out["clock_hz"] = cpuinfo_mhz * 1e6 if cpuinfo_mhz else None
            out["clock_source"] = f"/proc/cpuinfo 'cpu MHz' (not measured: {e})"
            for p in PRECISIONS:
                out["precisions"][p] = {"ops_per_s": None, "reason": f"instructions per cycle not measured: {e}"}
            return out
    chain_hz = CHAIN_OPS * iters / probe.chain_seconds(iters, repeats)
    refs = clock_references(probe, flags, cpuinfo_mhz, iters, repeats)
    label = f"chain of {CHAIN_OPS} x {iters:,} dependent reg-reg add/xor, best of {repeats}, one thread"
    chosen = choose_clock(chain_hz, refs, label)
    clock = out["clock_hz"] = chosen["clock_hz"]
    out["clock_source"] = chosen["clock_source"]
    out["clock"] = {"chain_hz": chain_hz, "cross_check": chosen["cross_check"],
                    "disagreement": chosen["disagreement"], "references": refs}
    s = "s" if cores > 1 else ""
    for p, (name, flag) in PROBES.items():
        if clock is None:
            out["precisions"][p] = {"ops_per_s": None, "reason": f"no clock: {chosen['disagreement']}"}
            continue
        entry = {"ops_per_s": None, "reason": f"no {flag} (this probe needs it)"}
        not_built = getattr(probe, "unavailable", {}).get(name)
        if flag in flags and not_built:
            entry = {"ops_per_s": None, "reason": f"not measured: {not_built}"}
        elif flag in flags:
            measured = ZMM_OPS * iters / probe.zmm_seconds(name, iters, repeats) / clock
            per_cycle = max(0.5, round(measured * 2) / 2)
            entry = {"ops_per_s": cores * per_cycle * LANES[p] * 2 * clock, "per_cycle_measured": measured,
                     "per_cycle": per_cycle,
                     "formula": f"{cores} core{s} x {per_cycle:g} zmm {name[4:]}/cycle x {LANES[p]} lanes x 2 x "
                                f"{clock / 1e9:.2f} GHz"}
        amx_flag, per_cycle_amx, what = AMX.get(p, (None, 0, ""))
        if amx_flag in flags and kernel_amx is False:  # flags from a kernel (< 5.16) that cannot run tiles
            why = f"{amx_flag} in the CPU flags, but this kernel does not enable AMX tile state: no library can use it"
            entry = dict(entry, **{"formula" if entry["ops_per_s"] else "reason":
                                   f"{entry.get('formula') or entry['reason']} ({why})"})
        elif amx_flag in flags:  # tiles outrun any zmm instruction: they are the peak, the zmm figure stays beside
            zmm = entry
            entry = {"ops_per_s": cores * per_cycle_amx * clock, "per_cycle": per_cycle_amx,
                     "formula": f"{cores} core{s} x {per_cycle_amx} {p} {'FLOP' if p == 'bf16' else 'OP'}/cycle (AMX {what}) x "
                                f"{clock / 1e9:.2f} GHz",
                     "source": AMX_SOURCE, "zmm": zmm}
        out["precisions"][p] = entry
    return out


def describe(ceils: dict, measurement: dict, peak: dict | None) -> list[str]:
    """Printable lines: each precision's ceiling, the library that won each GEMM, the ISA peak."""
    lines = []
    for prec, c in ceils.items():
        p = (peak or {}).get("precisions", {}).get(prec, {})
        rate = "-" if c["ops_per_s"] is None else f"{c['ops_per_s'] / 1e9:.0f} {c['unit']}"
        wins = ", ".join(f"{g} {lib.split(':')[0]}" for g, lib in c["best"].items())
        isa = (f"{p['ops_per_s'] / 1e9:.0f} {c['unit']} = {p['formula']}" if p.get("ops_per_s")
               else f"- ({p.get('reason', 'not measured')})")
        pct = f", {c['ops_per_s'] / p['ops_per_s']:.0%} of it" if p.get("ops_per_s") and c["ops_per_s"] else ""
        lines.append(f"- {prec}: ceiling {rate} (best per GEMM: {wins}) | ISA peak {isa}{pct}")
        for g in measurement["gemms"]:
            per_lib = measurement["rates"][prec].get(g["name"], {})
            libs = ", ".join(f"{lib} {r / 1e9:.0f}" for lib, r in sorted(per_lib.items(), key=lambda kv: -kv[1]))
            lines.append(f"  - {g['name']} {g['m']}x{g['k']}x{g['n']} (x{g['count']}): {libs or 'no library ran'}")
        for lib, reason in measurement["unavailable"].get(prec, {}).items():
            lines.append(f"  - unavailable: {lib} ({reason})")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=1408, help="GEMM rows (rows x padded tokens of a batch; default "
                    "1408, about a 64-post batch of short posts)")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: the runtime's, as the workloads: "
                    "POSTEMB_NUM_THREADS, else a CPU mask's or quota's, else torch's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the measurement here")
    args = ap.parse_args(argv)
    threads = args.threads or default_threads()
    meas = measure(args.m, threads, args.repeats)
    peak = isa_peak(peak_cores(threads))
    ceils = ceilings(meas)
    print(f"# matmul ceilings, M = {args.m}, {threads} threads; ISA clock: {peak['clock_source']}")
    print("\n".join(describe(ceils, meas, peak)))
    warn = ceiling_warnings(ceils, peak)
    for w in warn:
        print(w)
    if args.json:
        args.json.write_text(json.dumps({"measurement": meas, "ceilings": ceils, "isa_peak": peak,
                                         "warnings": warn}, indent=1))
    return 2 if warn else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
