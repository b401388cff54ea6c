"""torch backend: the reference model (transformers) on CPU or CUDA, float32."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BackendUnavailableError, ValidationError
from ..modeling import PostEmbModel
from .base import Backend


class TorchBackend(Backend):
    name = "torch"
    pooling_kernel = "torch (reference composition)"

    def __init__(self, model, device="cpu", precision="fp32"):
        if precision != "fp32":
            raise ValidationError(f"`precision` for the torch backend must be 'fp32'. Given: {precision!r}.")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"`device` {device!r} was asked for but torch sees no CUDA device. Fix: device='cpu'."
            )
        super().__init__(model, device, precision)
        self._model = PostEmbModel.from_model_dir(model).to(device)

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        pooled, unit = self._model(ids, mask)
        return (unit if normalize else pooled).float().cpu().numpy()

    def close(self) -> None:
        self._model = None
