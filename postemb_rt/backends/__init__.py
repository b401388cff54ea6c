"""Backends, one file each, loaded lazily by name.

A new backend = one file with one :class:`~postemb_rt.backends.base.Backend` subclass,
plus one line in ``_REGISTRY``; the conformance tests in ``tests/backends/`` then run
against it unchanged.
"""
from __future__ import annotations

import importlib
import importlib.util

from ..errors import BackendUnavailableError, ValidationError
from ..model_dir import ModelDir

# name -> (module, class, the pip package it needs, install hint)
_REGISTRY = {
    "torch": ("torch_backend", "TorchBackend", "torch", "pip install torch==2.13.0"),
    "onnxruntime": ("onnx_backend", "OnnxBackend", "onnxruntime", "pip install onnxruntime onnx"),
    "openvino": ("openvino_backend", "OpenVinoBackend", "openvino", "pip install openvino"),
    "tensorrt": ("tensorrt_backend", "TensorRTBackend", "tensorrt", "pip install 'postemb_rt[gpu]' tensorrt (NVIDIA GPU)"),
}


def names() -> list[str]:
    return list(_REGISTRY)


def backend_class(name: str):
    """The Backend subclass registered under ``name``; raises BackendUnavailableError with the
    install hint when its package is missing."""
    if name not in _REGISTRY:
        raise ValidationError(f"`backend` must be one of {['auto', *_REGISTRY]}. Given: {name!r}.")
    module, cls, package, hint = _REGISTRY[name]
    if importlib.util.find_spec(package) is None:
        raise BackendUnavailableError(f"backend {name!r} needs the package `{package}`. Fix: {hint}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def choose(model: ModelDir, device: str, precision: str = "fp32") -> tuple[str, str]:
    """backend="auto": (name, why). The fastest backend that can run this model at ``precision``
    here (for fp32: the fastest exact one)."""
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if precision == "int8":
        if not has_ort:
            raise BackendUnavailableError("`precision` 'int8' runs on onnxruntime, which is not installed. "
                                          "Fix: pip install onnxruntime onnx")
        return "onnxruntime", "precision int8 runs on onnxruntime (dynamic int8 quantization)"
    if precision == "bf16" and not device.startswith("cuda"):
        return "torch", "precision bf16 on CPU runs on torch (oneDNN bf16)"
    if model.encoder_path is None:
        if not has_ort:
            raise BackendUnavailableError(
                f"`{model.path}` holds only an ONNX model and onnxruntime is not installed. "
                "Fix: pip install onnxruntime"
            )
        return "onnxruntime", "the model directory holds only an ONNX model"
    if device.startswith("cuda"):
        return "torch", "CUDA device: the torch backend runs the GPU path"
    if has_ort:
        return "onnxruntime", ("fastest exact CPU backend (see benchmarks/RESULTS.md); pooling as the export "
                               "says (onnx_export.DEFAULT_POOLING, the faster on CPU)")
    return "torch", "onnxruntime is not installed"
