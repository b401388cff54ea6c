"""onnxruntime backend: an exported, graph-fused ONNX model (CPUExecutionProvider; CUDA EP
when asked for and present), float32 or int8 (``precision="int8"``: the model quantized by
``postemb_rt.onnx_export.quantize_int8``, on first use into the cache unless the directory
already holds an int8 model).

Pooling follows the model directory's ``onnx_pooling``: "graph" reads the model's own
``embedding`` / ``pooled`` outputs; "external" reads ``last_hidden_state`` and pools with
the C++ kernel (``postemb_rt.ops.masked_mean_pool_l2.CpuPooler``), projection from
``projection.safetensors``.

A model directory without an ONNX file is exported on first use into the cache
(``POSTEMB_CACHE``, default ``~/.cache/postemb_rt``) and reused afterwards.
"""
from __future__ import annotations

import logging

import numpy as np

from .. import cpu
from ..durable import read_safetensors
from ..errors import BackendUnavailableError, ValidationError
from ..int8_static import per_batch_inputs
from ..ops.masked_mean_pool_l2 import CpuPooler
from .base import Backend

log = logging.getLogger("postemb_rt")

PRECISIONS = ("fp32", "int8")  # int8: postemb_rt.onnx_export.quantize_int8


def _projection(md) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(weight (H, D), bias (D,)) float32 from an external-pooling directory's
    projection.safetensors, or Nones when the model has no projection."""
    if not md.config.projection_dim:
        return None, None
    path = md.projection_path  # load_model_dir checked that it exists
    state = read_safetensors(path, "projection", framework="np")
    weight = state["weight"].T  # (D, H) -> (H, D)
    if weight.shape != (md.config.hidden_size, md.config.projection_dim):
        raise ValidationError(
            f"`{path}` has weight shape {state['weight'].shape}; postemb.json says "
            f"({md.config.projection_dim}, {md.config.hidden_size})."
        )
    return weight, state.get("bias")


class OnnxBackend(Backend):
    name = "onnxruntime"
    pooling_kernel = "onnx graph (inside the exported model)"

    def __init__(self, model, device="cpu", precision="fp32"):
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise ValidationError(f"`precision` for the onnxruntime backend must be one of {PRECISIONS}. Given: "
                                  f"{precision!r}. Fix: fp16 is CUDA-only; bf16 runs on backend='openvino' or 'torch'.")
        super().__init__(model, device, precision)
        onnx_md = model
        if model.onnx_path is None:
            from ..onnx_export import cached_export  # first use only; see module docstring

            onnx_md = cached_export(model)
        given_int8 = onnx_md.config.precision == "int8"  # an exported int8 folder: maybe recipe 3 (per_batch_inputs)
        if onnx_md.config.precision != precision:
            if precision != "int8":
                raise ValidationError(
                    f"`{onnx_md.path}` holds an {onnx_md.config.precision} ONNX model, so `precision` must be "
                    f"{onnx_md.config.precision!r}. Given: {precision!r}"
                    f"{' (the default)' if precision == 'fp32' else ''}. Fix: precision="
                    f"{onnx_md.config.precision!r}, or load the float32 model directory."
                )
            from ..onnx_export import cached_int8  # first use only

            onnx_md = cached_int8(onnx_md)
        self.onnx_model = onnx_md
        onnx_path = self.onnx_path = onnx_md.onnx_path
        self._int8 = None
        if precision == "int8" and device == "cpu":  # MLAS's int8 dot product differs by CPU: a fidelity key part
            kernels = cpu.mlas_int8_kernels()
            self.numerics = f"-{kernels}"
            per_batch = given_int8 and per_batch_inputs(onnx_path)  # cached_int8 writes recipe 4 only
            scales = ("inputs scaled per batch, so a vector moves with its batch" if per_batch else
                      "inputs one calibrated scale per tensor, so no vector depends on its batch")
            self._int8 = (f"{'dynamic' if per_batch else 'static'} int8 (onnxruntime, MLAS {kernels}; "
                          f"{cpu.MLAS_INT8_SUMS[kernels]}; {scales})")
            if per_batch:
                log.warning("`%s` quantizes its int8 inputs per batch (an int8 export of before 2026-12-06, recipe 3): "
                            "a post's vector moves with its batch neighbours. Fix: export it again (python "
                            "export/export_onnx.py --precision int8), whose scales are fixed.", onnx_path)
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
        so.intra_op_num_threads = cpu.model_threads()  # 0: one per physical core
        self._session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        # read once, so that describe() still answers after close() has dropped the session
        threads = self._session.get_session_options().intra_op_num_threads
        self._session_facts = {"providers": self._session.get_providers(),
                               "threads": threads or "onnxruntime's default: one per physical core"}
        outputs = {o.name for o in self._session.get_outputs()}
        pooling = onnx_md.config.onnx_pooling
        need = {"embedding", "pooled"} if pooling == "graph" else {"last_hidden_state"}
        if not need <= outputs:
            raise ValidationError(
                f"`{onnx_path}` (onnx_pooling {pooling!r}) must output {sorted(need)}. Given outputs: "
                f"{sorted(outputs)}. Fix: re-export it with export/export_onnx.py."
            )
        self._pool = None
        if pooling == "external":
            self._pool = CpuPooler(*_projection(onnx_md))
            self.pooling_kernel = self._pool.name

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._pool is not None:
            (hidden,) = self._session.run(["last_hidden_state"], feeds)  # (B, S, H) float32
            return self._pool(hidden, attention_mask, normalize=normalize)
        out = "embedding" if normalize else "pooled"
        (vec,) = self._session.run([out], {"input_ids": input_ids, "attention_mask": attention_mask})
        return vec

    def describe(self) -> dict:
        return {**super().describe(), "onnx_path": str(self.onnx_path), **self._session_facts,
                **({"int8": self._int8} if self._int8 else {})}

    def close(self) -> None:
        self._session = None
