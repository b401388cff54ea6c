"""Backends, one file each, loaded lazily by name.

A new backend = one file with one :class:`~postemb_rt.backends.base.Backend` subclass,
plus one line in ``_REGISTRY``; the conformance tests in ``tests/backends/`` then run
against it unchanged.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys

from ..errors import BackendUnavailableError, ValidationError
from ..model_dir import ModelDir

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "auto")  # what Encoder.from_pretrained and the commands take

# name -> (module, class, the pip package it needs, install hint)
_REGISTRY = {
    "torch": ("torch_backend", "TorchBackend", "torch", "pip install torch==2.13.0"),
    "onnxruntime": ("onnx_backend", "OnnxBackend", "onnxruntime", "pip install onnxruntime onnx"),
    "openvino": ("openvino_backend", "OpenVinoBackend", "openvino", "pip install openvino"),
    "tensorrt": ("tensorrt_backend", "TensorRTBackend", "tensorrt",
                 "pip install 'postemb_rt[gpu,tensorrt]' (NVIDIA GPU; TensorRT 10.x)"),
}
CHOICES = ("auto", *_REGISTRY)  # what a --backend flag takes


def names() -> list[str]:
    return list(_REGISTRY)


def backend_class(name: str):
    """The Backend subclass registered under ``name``; raises BackendUnavailableError with the
    install hint when its package is missing."""
    if not isinstance(name, str) or name not in _REGISTRY:  # a list was a bare TypeError (unhashable)
        fix = (" Fix: backend='onnxruntime' (sentence-transformers' 'onnx': the same runtime)." if name == "onnx" else
               "")
        raise ValidationError(f"`backend` must be one of {['auto', *_REGISTRY]}. Given: {name!r}.{fix}")
    module, cls, package, hint = _REGISTRY[name]
    if importlib.util.find_spec(package) is None:
        raise BackendUnavailableError(f"backend {name!r} needs the package `{package}`. Fix: {hint}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def resolve_device(device) -> str:
    """"auto" (or None, sentence-transformers' default) -> "cuda" when torch sees a GPU, else "cpu"; "cpu" /
    "cuda[:N]" (a str or a torch.device, as ``Encoder.device`` gives) as given, "cpu:N" as "cpu" (torch
    ignores a CPU's index); else ValidationError."""
    torch = sys.modules.get("torch")  # a torch.device exists only once torch is imported
    if torch is not None and isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    if not isinstance(device, str) or not re.fullmatch(r"(cpu|cuda)(:\d+)?", device):
        raise ValidationError(f"`device` must be 'auto', 'cpu' or 'cuda[:N]'. Given: {device!r}. Fix: one of those "
                              "(a torch.device of them works too).")
    return "cpu" if device.startswith("cpu") else device


def _has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX) and oneDNN is not held below
    it (``postemb_rt.cpu.native_bf16``). Read from the CPU's flags, not from torch's
    ``_is_mkldnn_bf16_supported``, which also says True on AVX-512 CPUs that only emulate bf16."""
    from ..cpu import native_bf16

    return native_bf16()


def cpu_vnni512() -> bool:
    """True when OpenVINO's int8 runs natively here (AVX512-VNNI or AMX; ``postemb_rt.cpu.vnni512``)."""
    from ..cpu import vnni512

    return vnni512()


def _not_native(kind: str) -> str:
    """Why ``kind`` ("bf16", "int8") is not native here (``postemb_rt.cpu.not_native``), for a reason."""
    from .. import cpu

    return cpu.not_native(kind) or "not native here"


def choose(model: ModelDir, device: str, precision: str = "fp32") -> tuple[str, str]:
    """backend="auto": (name, why). The fastest backend that can run this model at ``precision``
    here (for fp32: the fastest exact one). The ranking is measured (benchmarks/RESULTS.md,
    "Every x86 server CPU"): OpenVINO's CPU plugin ran our exported graph faster than onnxruntime
    in float32 and faster than torch in bf16 on AMD Zen 5 and Intel Xeon (AMX) alike."""
    from ..cpu import onednn_exec_verbose

    verbose = onednn_exec_verbose()
    has_ort, has_ov = _has("onnxruntime"), _has("openvino") and not verbose
    cpu = not device.startswith("cuda")

    def no_ov(what: str) -> str:
        return (f"openvino is left out: it cannot compile with oneDNN's verbose mode on ({verbose}; unset it)"
                if verbose else f"openvino, the faster {what} backend, is not installed")

    if precision == "int8":
        if not has_ort:
            raise BackendUnavailableError("`precision` 'int8' needs onnxruntime (the ONNX export, and int8 on "
                                          "onnxruntime), which is not installed. Fix: pip install onnxruntime onnx")
        if model.encoder_path is None and model.config.precision == "int8":
            return "onnxruntime", "the model directory holds an int8 ONNX model (onnxruntime's quantization)"
        if has_ov and cpu and cpu_vnni512():
            return "openvino", ("precision int8 on CPU: OpenVINO (AVX512-VNNI or AMX here; static int8 from "
                                "calibrated ranges; faster than onnxruntime's int8, RESULTS.md)")
        return "onnxruntime", ("precision int8 runs on onnxruntime (static int8 from calibrated ranges); " +
                               (f"openvino's int8 runs only on AVX512-VNNI or AMX CPUs ({_not_native('int8')})"
                                if has_ov else no_ov("int8")))
    if precision == "bf16" and cpu:
        if has_ov and has_ort and cpu_native_bf16():
            return "openvino", "precision bf16 on CPU: OpenVINO (native bf16 here; faster than torch, RESULTS.md)"
        return "torch", ("precision bf16 on CPU runs on torch (oneDNN bf16)" + (
            "; " + no_ov("bf16") if not has_ov else "" if not has_ort else
            f"; openvino's bf16 needs native bf16 ({_not_native('bf16')})"))
    if model.encoder_path is None:
        if not has_ort:
            raise BackendUnavailableError(
                f"`{model.path}` holds only an ONNX model and onnxruntime is not installed. "
                "Fix: pip install onnxruntime"
            )
        if has_ov and model.config.precision == "fp32":
            return "openvino", "the model directory holds only an ONNX model; OpenVINO runs it fastest (exact f32)"
        return "onnxruntime", "the model directory holds only an ONNX model" + (f"; {no_ov('fp32')}" if verbose else "")
    if not cpu:
        return "torch", "CUDA device: the torch backend runs the GPU path"
    if has_ov and has_ort:  # the export needs onnxruntime's optimizer
        return "openvino", ("fastest exact CPU backend: our ONNX export on OpenVINO at f32 (RESULTS.md, "
                            "'Every x86 server CPU'); pooling inside the graph")
    if has_ort:
        return "onnxruntime", ("fastest exact CPU backend installed (see benchmarks/RESULTS.md); pooling as the "
                               "export says (onnx_export.DEFAULT_POOLING, the faster on CPU)" +
                               (f"; {no_ov('fp32')}" if verbose else ""))
    return "torch", "onnxruntime is not installed"


def precision_candidates(model: ModelDir, device: str, backend: str = "auto") -> tuple[list[str], str]:
    """precision="auto": (the precisions to try, in order, each gated by the fidelity bar at
    load; why). On CPU: bf16 where the CPU has native bf16 (AVX512-BF16 or AMX), then int8, then
    fp32. bf16 comes before int8 even where int8 is faster (OpenVINO's int8, 1.3-1.4x bf16 on Zen 5):
    it is far closer to fp32 (RESULTS.md, "Static int8 on OpenVINO"). On CUDA: fp32 (the fast CUDA
    precisions are not fidelity-gated at load; ask for fp16 / bf16 by name). ``backend`` narrows the list to what that backend runs."""
    if device.startswith("cuda"):
        return ["fp32"], "CUDA: fast precisions are not fidelity-gated at load; ask for fp16/bf16 by name"
    if model.encoder_path is None and model.config.precision != "fp32":
        return [model.config.precision], f"the model directory holds only a {model.config.precision} ONNX model"
    offers = {"torch": ("bf16", "fp32"), "openvino": ("bf16", "int8", "fp32"), "onnxruntime": ("int8", "fp32"),
              "tensorrt": ("fp32",)}
    out, why = [], []
    if cpu_native_bf16():
        out.append("bf16")
        why.append("this CPU has native bf16 (AVX512-BF16 or AMX): bf16 first")
    else:
        why.append(f"no native bf16 here ({_not_native('bf16')}; oneDNN would emulate it): bf16 skipped")
    out += ["int8", "fp32"]
    if backend != "auto":
        out = [p for p in out if p in offers.get(backend, ("fp32",))]
        if backend == "openvino" and not cpu_vnni512():  # it would refuse int8 at load, with a warning
            out.remove("int8")
            why.append(f"openvino's int8 runs only on AVX512-VNNI or AMX ({_not_native('int8')}): int8 skipped")
        why.append(f"backend {backend!r} runs {', '.join(out)}")
    return out, "; ".join(why) + "; each must clear the fidelity bar (postemb_rt.fidelity), else the next"
