"""masked_mean_pool_l2: which implementation pools hidden states into embeddings, where.

One op, one name in each of its homes:

| where it runs | implementation | chosen by |
|---|---|---|
| CPU, torch and onnxruntime (``onnx_pooling: external``) backends | C++ ``postemb_rt._C.masked_mean_pool_l2`` (``csrc/masked_mean_pool_l2.cpp``) | ``CpuPooler`` |
| CUDA, torch_cuda and tensorrt backends | Triton ``postemb_rt.kernels.masked_mean_pool_l2`` (``kernels/masked_mean_pool_l2.py``) | ``CudaPooler`` |
| inside an exported ONNX graph (``onnx_pooling: graph``) | the torch reference, traced by ``onnx_export`` through ``PostEmbModel.pool_and_head`` | the model directory |
| tests, benchmarks, and the fallbacks below | ``postemb_rt.ops.reference.masked_mean_pool_l2_ref`` | - |

Tests: ``tests/kernels/test_masked_mean_pool_l2.py`` (Triton), ``..._cpu.py`` (C++);
benchmark: ``benchmarks/bench_masked_mean_pool_l2.py``; all compare to the reference.

``CpuPooler`` uses the torch reference when the extension is not built or
``POSTEMB_NATIVE=0``; ``CudaPooler`` when triton is not installed. Either fallback is logged
and named (``.name``, in ``Encoder.describe()["pooling_kernel"]``), never silent.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from .. import cpu, native
from ..errors import ValidationError
from .reference import masked_mean_pool_l2_ref

log = logging.getLogger("postemb_rt")


def _has_cpu_kernel() -> bool:
    # pool_threads came with masked_mean_pool_l2's max_threads: an older build would raise TypeError per call
    return native._C is not None and all(hasattr(native._C, f) for f in ("masked_mean_pool_l2", "pool_threads"))


class CpuPooler:
    """Pools numpy hidden states (B, S, H) float32 with mask (B, S) into float32 (B, D).

    weight: (H, D) float32 or None; bias: (D,) float32 or None. Both are kept C-contiguous
    (copied once here, never per call). ``max_threads``: the most threads a call starts (one per 4 MiB
    of hidden states read), read once here as the model's (``cpu.model_threads()``: POSTEMB_NUM_THREADS,
    OMP_NUM_THREADS, else the CPUs this process may use, ``cpu.usable_cpus()``); the kernel also
    keeps to the affinity mask of the moment.
    """

    def __init__(self, weight=None, bias=None):
        self.weight = None if weight is None else np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.isa = None  # the ISA resolved once, here: .name says it, every call runs it
        # its share of the CPUs, as the model's; the kernel alone counted every CPU of the host
        self.max_threads = cpu.model_threads() or cpu.usable_cpus()
        if _has_cpu_kernel():
            try:
                isa = native._C.cpu_isa()
            except ValueError as exc:  # a bad $POSTEMB_CPU_ISA, named by the extension
                raise ValidationError(f"{exc} Fix: set it to one of them, or unset it.") from None
            self.isa, self.name = isa, f"C++ masked_mean_pool_l2 ({isa})"
        else:
            if native.disabled():
                reason = f"POSTEMB_NATIVE={os.environ['POSTEMB_NATIVE']}"
            elif native._C is None:
                reason = "postemb_rt._C is not built; fix: pip install -e ."
            else:
                reason = "postemb_rt._C predates it; fix: pip install -e ."
            self.name = f"torch reference composition (C++ kernel unavailable: {reason})"
            log.warning("pooling with the torch reference: %s", self.name)

    def __call__(self, hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        if self.isa is not None:
            return native._C.masked_mean_pool_l2(hidden, mask, self.weight, self.bias, normalize, self.isa,
                                                 max_threads=self.max_threads)
        import torch

        t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
        out = masked_mean_pool_l2_ref(t(hidden), t(mask), t(self.weight), t(self.bias), normalize=normalize)
        return out.numpy()


class CudaPooler:
    """Pools CUDA tensors (B, S, H) with the Triton kernel into float32 (B, D) tensors.

    weight: (H, D) tensor or None; bias: (D,) tensor or None (on the same device).
    """

    def __init__(self, weight=None, bias=None):
        self.weight = weight
        self.bias = bias
        try:
            from postemb_rt.kernels.masked_mean_pool_l2 import masked_mean_pool_l2

            self._kernel = masked_mean_pool_l2
            self.name = "triton masked_mean_pool_l2"
        except ImportError as exc:
            self._kernel = None
            self.name = f"torch reference composition (triton unavailable: {exc.name or exc})"
            log.warning("pooling with the torch reference on CUDA: triton is not installed. "
                        "Fix: pip install 'postemb_rt[gpu]'")

    def __call__(self, hidden, mask, normalize: bool = True):
        if self._kernel is not None:
            return self._kernel(hidden, mask, self.weight, self.bias, normalize=normalize)
        return masked_mean_pool_l2_ref(hidden, mask, self.weight, self.bias, normalize=normalize)
