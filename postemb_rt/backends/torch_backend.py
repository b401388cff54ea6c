"""torch backend: the encoder (transformers) on CPU or CUDA, float32, then the fused pooling
kernel: C++ (``postemb_rt._C``) on CPU, Triton on CUDA (see ``postemb_rt.ops.masked_mean_pool_l2``).

On CUDA the work is delegated to ``torch_cuda.TorchCudaRunner`` (fp32/fp16/bf16, SDPA, CUDA
graphs per length bucket); on CPU float32, or bf16 (encoder weights in bf16, oneDNN's bf16
matmuls, hidden states widened to float32 for pooling)."""
from __future__ import annotations

import logging

import numpy as np
import torch

from .. import cpu, forks
from ..errors import BackendUnavailableError, ValidationError
from ..modeling import PostEmbModel
from ..ops.masked_mean_pool_l2 import CpuPooler
from .base import Backend

log = logging.getLogger("postemb_rt")
CPU_PRECISIONS = ("fp32", "bf16")  # bf16: weights and activations in bf16 through oneDNN


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, device="cpu", precision="fp32"):
        self._cuda = None
        if device.startswith("cuda"):
            self._init_cuda(model, device, precision)
            return
        if precision not in CPU_PRECISIONS:
            raise ValidationError(f"`precision` for the torch backend on CPU must be one of {CPU_PRECISIONS}. "
                                  f"Given: {precision!r}. Fix: fp16 is CUDA-only; int8 runs on backend='openvino' "
                                  "or 'onnxruntime'.")
        super().__init__(model, device, precision)
        threads = cpu.model_threads()  # $POSTEMB_NUM_THREADS, $OMP_NUM_THREADS, or a CPU limit (a cgroup quota)
        if threads and not forks.torch_on_one_thread():  # torch's threads are process-wide
            torch.set_num_threads(threads)
        self._model = PostEmbModel.from_model_dir(model)
        if precision == "bf16":
            if not cpu.native_bf16():  # the CPU's flags and ONEDNN_MAX_CPU_ISA (torch's check says True on AVX-512)
                log.warning("precision='bf16': this CPU lacks native bf16 instructions (AVX512-BF16 or AMX), or "
                            "ONEDNN_MAX_CPU_ISA holds oneDNN below them; oneDNN emulates them, which is usually "
                            "slower than fp32")
            self._model.encoder.to(torch.bfloat16)  # oneDNN bf16 matmuls; pooling reads float32
        fused = self._model.fused_head()
        weight = bias = None
        if fused and fused[0] is not None:
            # (D, H) Linear weight -> (H, D) C-contiguous, once: the kernel reads it row by row.
            weight = fused[0].detach().t().contiguous().numpy()
            bias = None if fused[1] is None else fused[1].detach().numpy()
        # Mean pooling runs in the C++ kernel (with the projection when it is the whole head); other
        # modes, and heads the kernel cannot fuse, in torch after it (postemb_rt.modeling).
        self._pool = CpuPooler(weight, bias) if self._model.pooling == "mean" else None
        self._fused = fused is not False
        self.pooling_kernel = (self._pool.name if self._fused else
                               f"{self._pool.name}, then the head in torch" if self._pool is not None else
                               f"torch ({self._model.pooling} pooling and head)")

    def _init_cuda(self, model, device, precision):
        """CUDA: fp32/fp16/bf16, SDPA, CUDA graphs per bucket, Triton pooling (torch_cuda.py)."""
        from .torch_cuda import CUDA_PRECISIONS, TorchCudaRunner

        if precision not in CUDA_PRECISIONS:
            raise ValidationError(f"`precision` for the torch backend on CUDA must be one of {CUDA_PRECISIONS}. "
                                  f"Given: {precision!r}.")
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"`device` {device!r} was asked for but torch sees no CUDA device. Fix: `device` 'cpu' (or 'auto', "
                "which picks the CPU here)."
            )
        super().__init__(model, device, precision)
        self._cuda = TorchCudaRunner(model, device, precision, max_batch_tokens=self.max_batch_tokens)
        self.pooling_kernel = self._cuda.pooling_kernel

    def describe(self) -> dict:
        return {**super().describe(), **(self._cuda.describe() if self._cuda is not None else
                                         {"threads": torch.get_num_threads()})}  # torch's intra-op threads

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        if self._cuda is not None:
            return self._cuda(input_ids, attention_mask, normalize=normalize)
        forks.torch_ran()  # torch's OpenMP pool now exists: a forked child must run torch on one thread
        hidden = self._model.hidden_states(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).float()
        if self._fused:
            return self._pool(hidden.numpy(), attention_mask, normalize=normalize)  # (B, S, H) -> (B, D)
        if self._pool is not None:  # C++ mean pooling, then the head
            pooled = self._model.head(torch.from_numpy(self._pool(hidden.numpy(), attention_mask, normalize=False)))
        else:
            pooled = self._model.pool_and_head(hidden, torch.from_numpy(attention_mask))
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1, eps=1e-12)
        return pooled.numpy()

    def close(self) -> None:
        if self._cuda is not None:
            self._cuda.close()
        self._model = None
