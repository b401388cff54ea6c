"""OpenVINO backend: our own exported ONNX graph (the same file the onnxruntime backend runs,
from ``postemb_rt.onnx_export.cached_export``) compiled by OpenVINO's CPU plugin.

OpenVINO is Intel's inference engine for x86 CPUs: its CPU plugin reads the fused graph
(ONNX Runtime's Attention / SkipLayerNormalization / BiasGelu nodes included) and runs its
matmuls through oneDNN with AMX tiles where the CPU has them. Precisions:

- ``fp32``: ``INFERENCE_PRECISION_HINT=f32``, exact (cosine to torch float32 >= 0.9999, the
  backend conformance tests). Without this hint OpenVINO computes in bf16 on any CPU with
  native bf16, which is not exact.
- ``bf16``: ``INFERENCE_PRECISION_HINT=bf16``; offered only where the CPU plugin lists BF16
  among its capabilities (AVX512-BF16 or AMX), and gated by the fidelity bar like every fast
  CPU precision (``postemb_rt.fidelity``).
- ``int8``: static int8 on the matmuls the onnxruntime recipe quantizes
  (``onnx_export.int8_nodes``: every layer's query/key/value, attention output and
  feed-forward up-projection, and the second half's down-projections), after the same
  SmoothQuant smoothing (``onnx_export.smooth_int8``, calibrated once on TweetEval *train*
  posts and cached under ``POSTEMB_CACHE``). ``quantize_static`` puts OpenVINO's FakeQuantize
  in front of each: weights symmetric, one scale per output channel; inputs one scale per
  tensor, from the calibration maxima (post-GELU inputs asymmetric, from GELU's minimum), and
  the CPU plugin's low-precision transformations turn each into an int8 x int8 matmul (VNNI,
  or AMX tiles where the CPU has them). Everything else runs at bf16 where the CPU has it
  natively, else f32. Offered only where the CPU has AVX512-VNNI or AMX
  (``postemb_rt.cpu.vnni512``). Gated by the fidelity bar like every fast CPU precision;
  measured in benchmarks/RESULTS.md ("Static int8 on OpenVINO").

Short batches on AMX: OpenVINO runs each layer's attention as one fused kernel (a Snippets
subgraph). On AMX tiles that kernel costs more than the attention as separate oneDNN ops at short
lengths and less at long ones (bf16 and int8, 2-core Intel Xeon with AMX, 2026-12-06: +13% at 16-24
padded tokens, level at 64, -16% at 256; benchmarks/RESULTS.md "Intel Xeon with AMX"). So where bf16
runs on AMX tiles (``postemb_rt.cpu.amx_tiles``) and the precision is bf16 or int8, batches of at
most ``SHORT_TOKENS`` padded tokens per row run on a second compilation of the same graph with
``SNIPPETS_MODE=DISABLE`` (the same precision; vectors within bf16's own batch-to-batch spread).

One compiled model per backend (two on AMX, above); one infer request per calling thread (an infer request is
not thread-safe, the compiled model is). ``POSTEMB_NUM_THREADS`` (else ``OMP_NUM_THREADS``) sets its threads
(default: the plugin's, one per physical core, or the CPUs this process may use where a CPU
mask or quota limits it: ``postemb_rt.cpu.model_threads``). Threads are never pinned to cores
(``ENABLE_CPU_PINNING=False``; the plugin pins them by default on Linux): each process pins
its first thread to the same first core, so processes sharing a machine (near-line workers,
Ray backfill actors, ``serve --workers``) all ran on one core. Two 1-thread processes on 2
cores gave 90 posts/s each pinned, 186 unpinned; one process runs as fast either way
(benchmarks/RESULTS.md, "Thread pinning").
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from ..cpu import amx_tiles, model_threads, native_bf16 as cpu_native_bf16, onednn_exec_verbose, vnni512
from ..durable import read_json
from ..errors import BackendUnavailableError, ValidationError
from ..int8_static import input_range
from ..ops.masked_mean_pool_l2 import CpuPooler
from .base import Backend
from .onnx_backend import _projection

log = logging.getLogger("postemb_rt")
PRECISIONS = ("fp32", "bf16", "int8")
INT8_STATIC_RECIPE = 1  # bump when quantize_static changes: cached fidelities are keyed by it
HINTS = {"fp32": "f32", "bf16": "bf16"}  # our float precisions -> OpenVINO's INFERENCE_PRECISION_HINT
PRECISION_OF_HINT = {**{hint: p for p, hint in HINTS.items()}, "f16": "fp16"}  # as OpenVINO reports them
SHORT_TOKENS = 64  # padded tokens per row up to which a batch runs with SHORT_CONFIG on AMX (docstring)
SHORT_CONFIG = {"SNIPPETS_MODE": "DISABLE"}  # attention as separate oneDNN ops, not OpenVINO's fused kernel


def short_attention(precision: str) -> bool:
    """Whether this precision's short batches get the second compilation (the module's docstring)."""
    return precision != "fp32" and amx_tiles()


def native_bf16(core=None) -> bool:
    """True when OpenVINO's CPU plugin computes bf16 natively here: the plugin lists BF16 and
    oneDNN is not held below it (postemb_rt.cpu.native_bf16; the plugin's own list ignores
    ONEDNN_MAX_CPU_ISA, and its bf16 graph then fails to compile). ``core``: an ``openvino.Core``
    to ask (default: a new one)."""
    import openvino as ov

    core = core or ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") and cpu_native_bf16()


def inference_precision(compiled) -> str:
    """The precision an ``openvino.CompiledModel`` computes its float ops in, as OpenVINO spells
    it: "f32", "bf16" or "f16" (the property is an ``openvino.Type``, whose str() is
    "<Type: 'bfloat16'>")."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return hint.to_string() if hasattr(hint, "to_string") else str(hint)


def quantize_static(model, ranges: dict[str, float]) -> int:
    """Put a FakeQuantize on both inputs of each token-level matmul of ``model`` (an
    ``openvino.Model`` of our export) whose input tensor is named in ``ranges`` ({tensor name:
    the largest |value| it takes}, ``int8_ranges.json`` of
    ``onnx_export.smoothed_for_static_int8``), in place: the weight symmetric (255 levels, zero
    exact), one scale per output channel; the input one scale per tensor, [-r, r] in 255 levels,
    or [GELU_MIN, r] in 256 where a GELU makes it. The CPU plugin runs each such matmul int8 x
    int8. Only matmuls over (batch, tokens, features) with a constant weight: the projection
    after pooling keeps its float weights. Returns how many matmuls were quantized; warns when a
    tensor named in ``ranges`` feeds none of them (its matmul then runs in float)."""
    from openvino import opset13 as ops

    n = 0
    used = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or op.input(0).get_partial_shape().rank.get_length() != 3:
            continue
        src = op.input(0).get_source_output()
        weight = op.input(1).get_source_output().get_node()
        name = next((name for name in src.get_names() if name in ranges), None)
        if name is None or weight.get_type_name() != "Constant" or len(weight.get_output_shape(0)) != 2:
            continue
        r = ranges[name]
        used.add(name)
        after_gelu = src.get_node().get_type_name() == "Gelu"
        lo, levels = input_range(r, after_gelu)[0], (256 if after_gelu else 255)
        a_lo, a_hi = ops.constant(np.float32(lo)), ops.constant(np.float32(r))
        op.input(0).replace_source_output(ops.fake_quantize(src, a_lo, a_hi, a_lo, a_hi, levels).output(0))
        w = weight.get_data().astype(np.float32)
        depth_axis = 1 if op.get_attributes()["transpose_b"] else 0  # W is (K, N), or (N, K) transposed
        w_hi = np.abs(w).max(axis=depth_axis, keepdims=True)
        w_hi[w_hi == 0] = 1.0
        w_lo, w_hi = ops.constant(-w_hi), ops.constant(w_hi)
        op.input(1).replace_source_output(ops.fake_quantize(weight.output(0), w_lo, w_hi, w_lo, w_hi, 255).output(0))
        n += 1
    model.validate_nodes_and_infer_types()
    missing = sorted(set(ranges) - used)
    if missing:
        log.warning("int8: %d of the %d calibrated matmul inputs feed no token-level matmul with a constant "
                    "weight in the OpenVINO graph, so their matmuls run in float: %s", len(missing), len(ranges),
                    ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
    return n


def compile_config(precision: str, **extra) -> dict:
    """The CPU plugin's configuration for one of our precisions (``extra``: more properties,
    e.g. ``PERF_COUNT="YES"`` for benchmarks/profile_cpu.py)."""
    if precision == "int8":  # int8 matmuls (quantize_static); the rest as fast as is native here
        hint = HINTS["bf16" if cpu_native_bf16() else "fp32"]
    else:
        hint = HINTS[precision]
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
              **extra}  # no pinning: see the module's docstring
    threads = model_threads()
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoBackend(Backend):
    name = "openvino"
    pooling_kernel = "onnx graph (inside the exported model, run by OpenVINO)"

    def __init__(self, model, device="cpu", precision="fp32"):
        import openvino as ov

        if device != "cpu":
            raise BackendUnavailableError(f"backend 'openvino' runs on the CPU only. Given `device`: {device!r}. "
                                          "Fix: device='cpu', or backend='torch' for CUDA.")
        if precision not in PRECISIONS:
            raise ValidationError(f"`precision` for the openvino backend must be one of {PRECISIONS}. "
                                  f"Given: {precision!r}. Fix: one of those (fp16 runs on backend='torch' on CUDA).")
        core = ov.Core()
        if precision == "bf16" and not native_bf16(core):
            raise BackendUnavailableError(
                "`precision` 'bf16' on backend 'openvino' needs a CPU with native bf16 (AVX512-BF16 or AMX), "
                "with ONEDNN_MAX_CPU_ISA (if set) not below it; here it is not. Fix: precision='fp32', or "
                "precision='int8'.")
        if precision == "int8" and not vnni512():
            raise BackendUnavailableError(
                "`precision` 'int8' on backend 'openvino' needs a CPU with AVX512-VNNI or AMX, with "
                "ONEDNN_MAX_CPU_ISA (if set) not below it; here it is not. Fix: backend='onnxruntime' for int8, "
                "or precision='fp32'.")
        super().__init__(model, device, precision)
        onnx_md = model
        if model.onnx_path is None:
            from ..onnx_export import cached_export  # first use only (the onnxruntime backend's cache entry)

            onnx_md = cached_export(model)
        if onnx_md.config.precision != "fp32":
            raise ValidationError(f"`{onnx_md.path}` holds an {onnx_md.config.precision} ONNX model; backend "
                                  "'openvino' compiles float32 graphs. Fix: load the float32 model directory.")
        self.onnx_model = onnx_md
        self.onnx_path = onnx_md.onnx_path
        self.int8_matmuls = 0
        self._ranges = None
        config = compile_config(precision)
        if precision == "int8":  # the smoothed graph and its calibrated ranges (cached after first use)
            from ..onnx_export import STATIC_RANGES_FILE, cached_smoothed_for_static_int8

            smoothed = cached_smoothed_for_static_int8(onnx_md)
            self.onnx_path = smoothed.onnx_path
            self._ranges = read_json(smoothed.path / STATIC_RANGES_FILE, STATIC_RANGES_FILE,
                                     fix=f"delete {smoothed.path} so that it is calibrated again")
            self.numerics = f"-static{INT8_STATIC_RECIPE}-{config['INFERENCE_PRECISION_HINT']}-{smoothed.path.name}"
        self._short = None  # the second compilation for short batches (module docstring), or None
        short = short_attention(precision)
        if short:
            self.numerics += f"-shortattn{SHORT_TOKENS}"  # cached fidelities were measured without it
        try:
            keep_own_altstack()  # before: the stack the plugin saves and puts back is ours; after: its own is not kept
            ov_model = self.ov_model(core)  # read (and for int8 quantized) once; each compilation clones it
            self._compiled = core.compile_model(ov_model, "CPU", config)
            if short:
                self._short = core.compile_model(ov_model, "CPU", {**config, **SHORT_CONFIG})
            keep_own_altstack()
        except RuntimeError as e:
            verbose = onednn_exec_verbose()
            if verbose is None:
                raise
            raise BackendUnavailableError(
                f"OpenVINO's CPU plugin could not compile `{self.onnx_path}` with oneDNN's verbose mode on "
                f"({verbose}): it fails so whenever primitive executions are timed. Fix: unset "
                f"{verbose.split('=')[0]} (or set it to 'dispatch' or 'profile_create'), or backend='onnxruntime'."
            ) from e
        outputs = {name for o in self._compiled.outputs for name in o.get_names()}
        pooling = onnx_md.config.onnx_pooling
        need = {"embedding", "pooled"} if pooling == "graph" else {"last_hidden_state"}
        if not need <= outputs:
            raise ValidationError(f"`{self.onnx_path}` (onnx_pooling {pooling!r}) must output {sorted(need)}. "
                                  f"Given outputs: {sorted(outputs)}. Fix: re-export it with export/export_onnx.py.")
        self._pool = None
        if pooling == "external":
            self._pool = CpuPooler(*_projection(onnx_md))
            self.pooling_kernel = self._pool.name
        self._local = threading.local()
        self._version = ov.__version__
        # read once, so that describe() still answers after close() has dropped the compiled model
        self._compiled_facts = {"inference_precision": inference_precision(self._compiled),
                                "threads": int(self._compiled.get_property("INFERENCE_NUM_THREADS"))}
        self._short_facts = "" if self._short is None else (
            f"rows of at most {SHORT_TOKENS} padded tokens: attention as separate oneDNN ops (SNIPPETS_MODE=DISABLE), "
            "faster there on AMX tiles than the fused kernel")

    def ov_model(self, core):
        """The ``openvino.Model`` this backend compiles: our export; for ``int8``, its smoothed copy
        with ``quantize_static``'s FakeQuantize nodes."""
        model = core.read_model(str(self.onnx_path))
        if self.precision == "int8":
            self.int8_matmuls = quantize_static(model, self._ranges)
            if not self.int8_matmuls:
                raise ValidationError(f"`{self.onnx_path}` has no token-level matmul with a constant weight whose "
                                      "input is calibrated. Fix: re-export it with export/export_onnx.py.")
        return model

    def _runs_short(self, seq_len: int) -> bool:
        """Whether a batch of ``seq_len`` padded tokens per row runs on the short-batch compilation."""
        return self._short is not None and seq_len <= SHORT_TOKENS

    def config_for(self, seq_len: int, **extra) -> dict:
        """The CPU plugin's configuration that a batch of ``seq_len`` padded tokens per row runs with
        (``extra``: more properties; benchmarks/profile_cpu.py compiles the same at a static shape)."""
        return compile_config(self.precision, **(SHORT_CONFIG if self._runs_short(seq_len) else {}), **extra)

    def _request(self, seq_len: int):
        """This thread's infer request for a batch of ``seq_len`` padded tokens per row."""
        short = self._runs_short(seq_len)
        name = "short" if short else "request"
        req = getattr(self._local, name, None)
        if req is None:
            req = (self._short if short else self._compiled).create_infer_request()
            setattr(self._local, name, req)
        return req

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        out = self._request(input_ids.shape[1]).infer({"input_ids": input_ids, "attention_mask": attention_mask})
        if self._pool is not None:
            hidden = out["last_hidden_state"]  # (B, S, H) float32
            return self._pool(np.ascontiguousarray(hidden, dtype=np.float32), attention_mask, normalize=normalize)
        return np.array(out["embedding" if normalize else "pooled"], dtype=np.float32, copy=True)

    def describe(self) -> dict:
        out = {**super().describe(), "onnx_path": str(self.onnx_path), "openvino": self._version,
               **self._compiled_facts}
        if self._short_facts:
            out["short_batches"] = self._short_facts
        if self.precision == "int8":
            out["int8"] = (f"{self.int8_matmuls} matmuls int8 x int8: weights per output channel, inputs one "
                           "static scale per tensor (calibrated on TweetEval train posts, after SmoothQuant)")
        return out

    def close(self) -> None:
        self._local = threading.local()
        self._compiled = self._short = None


_ALTSTACK = threading.local()  # this thread's alternate signal stack, once keep_own_altstack gave it one
ALTSTACK_BYTES = 64 * 1024  # above any signal frame with AVX-512 or AMX state (the plugin's own: 11,568 bytes)


def keep_own_altstack() -> None:
    """Give the calling thread an alternate signal stack of ours, which lives as long as the thread.

    OpenVINO 2026.4's CPU plugin gives a thread that compiles a model an alternate signal stack
    (sigaltstack) of its own, and when that compiled model is freed the thread is left pointing at
    a stack of the plugin's that may be freed already: two models freed in the order they were
    compiled did it (tests/backends/test_openvino_signals.py). Python runs every signal handler on
    that stack (SA_ONSTACK), so the next Ctrl-C or SIGTERM crashed the process (SIGSEGV) instead
    of raising KeyboardInterrupt or shutting down. Called before and after each compile: what the
    plugin saves and puts back is then this stack. Linux only; elsewhere nothing is done."""
    import ctypes
    import sys

    if sys.platform != "linux":
        return

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    libc = ctypes.CDLL(None, use_errno=True)
    ours = getattr(_ALTSTACK, "buffer", None)
    if ours is None:
        ours = _ALTSTACK.buffer = ctypes.create_string_buffer(ALTSTACK_BYTES)
    now = StackT()
    if libc.sigaltstack(None, ctypes.byref(now)) != 0 or now.ss_sp == ctypes.addressof(ours):
        return
    if libc.sigaltstack(ctypes.byref(StackT(ctypes.addressof(ours), 0, ALTSTACK_BYTES)), None) != 0:
        log.warning("could not set an alternate signal stack (errno %d): a signal after OpenVINO models were "
                    "freed may crash this process", ctypes.get_errno())
