"""onnxruntime backend: an exported, graph-fused ONNX model (CPUExecutionProvider; CUDA EP
when asked for and present).

A model directory without an ONNX file is exported on first use into the cache
(``POSTEMB_CACHE``, default ``~/.cache/postemb_rt``) and reused afterwards.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import BackendUnavailableError, ValidationError
from .base import Backend


class OnnxBackend(Backend):
    name = "onnxruntime"
    pooling_kernel = "onnx graph (fused into the exported model)"

    def __init__(self, model, device="cpu", precision="fp32"):
        import onnxruntime as ort

        if precision != "fp32":
            raise ValidationError(f"`precision` for the onnxruntime backend must be 'fp32'. Given: {precision!r}.")
        super().__init__(model, device, precision)
        onnx_path = model.onnx_path
        if onnx_path is None:
            from ..onnx_export import cached_export  # first use only; see module docstring

            onnx_path = cached_export(model).onnx_path
        self.onnx_path = onnx_path
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError(
                    f"`device` {device!r} needs onnxruntime's CUDAExecutionProvider, which this onnxruntime "
                    "lacks. Fix: pip install onnxruntime-gpu, or device='cpu'."
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(os.environ.get("POSTEMB_NUM_THREADS", "0"))  # 0: one per physical core
        so.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        outputs = {o.name for o in self._session.get_outputs()}
        if not {"embedding", "pooled"} <= outputs:
            raise ValidationError(
                f"`{onnx_path}` must output 'embedding' and 'pooled'. Given outputs: {sorted(outputs)}. "
                "Fix: re-export it with export/export_onnx.py."
            )

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        out = "embedding" if normalize else "pooled"
        (vec,) = self._session.run([out], {"input_ids": input_ids, "attention_mask": attention_mask})
        return vec

    def describe(self) -> dict:
        return {**super().describe(), "onnx_path": str(self.onnx_path),
                "providers": self._session.get_providers()}

    def close(self) -> None:
        self._session = None
