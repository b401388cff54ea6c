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

One compiled model per backend; one infer request per calling thread (an infer request is
not thread-safe, the compiled model is). ``POSTEMB_NUM_THREADS`` sets the plugin's threads
(default: the plugin's, one per physical core).
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import BackendUnavailableError, ValidationError
from ..ops.masked_mean_pool_l2 import CpuPooler
from .base import Backend
from .onnx_backend import _projection

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # ours -> OpenVINO's INFERENCE_PRECISION_HINT


def native_bf16(core=None) -> bool:
    """True when OpenVINO's CPU plugin computes bf16 natively here: the plugin lists BF16 and
    oneDNN is not held below it (postemb_rt.cpu.native_bf16; the plugin's own list ignores
    ONEDNN_MAX_CPU_ISA, and its bf16 graph then fails to compile). ``core``: an ``openvino.Core``
    to ask (default: a new one)."""
    import openvino as ov

    from ..cpu import native_bf16 as cpu_bf16

    core = core or ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") and cpu_bf16()


class OpenVinoBackend(Backend):
    name = "openvino"
    pooling_kernel = "onnx graph (inside the exported model, run by OpenVINO)"

    def __init__(self, model, device="cpu", precision="fp32"):
        import openvino as ov

        if device != "cpu":
            raise BackendUnavailableError(f"backend 'openvino' runs on the CPU only. Given `device`: {device!r}. "
                                          "Fix: device='cpu', or backend='torch' for CUDA.")
        if precision not in PRECISIONS:
            raise ValidationError(f"`precision` for the openvino backend must be one of {tuple(PRECISIONS)}. "
                                  f"Given: {precision!r}. Fix: int8 runs on backend='onnxruntime'.")
        core = ov.Core()
        if precision == "bf16" and not native_bf16(core):
            raise BackendUnavailableError(
                "`precision` 'bf16' on backend 'openvino' needs a CPU with native bf16 (AVX512-BF16 or AMX), "
                "with ONEDNN_MAX_CPU_ISA (if set) not below it; here it is not. Fix: precision='fp32', or "
                "precision='int8' (onnxruntime).")
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
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        threads = int(os.environ.get("POSTEMB_NUM_THREADS", "0"))
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(str(self.onnx_path), "CPU", config)
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

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self._compiled.create_infer_request()
        return req

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        out = self._request().infer({"input_ids": input_ids, "attention_mask": attention_mask})
        if self._pool is not None:
            hidden = out["last_hidden_state"]  # (B, S, H) float32
            return self._pool(np.ascontiguousarray(hidden, dtype=np.float32), attention_mask, normalize=normalize)
        return np.array(out["embedding" if normalize else "pooled"], dtype=np.float32, copy=True)

    def describe(self) -> dict:
        return {**super().describe(), "onnx_path": str(self.onnx_path), "openvino": self._version,
                "inference_precision": str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))}

    def close(self) -> None:
        self._local = threading.local()
        self._compiled = None
