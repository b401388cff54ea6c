"""The backend contract: token ids in, float32 embeddings out."""
from __future__ import annotations

import abc

import numpy as np

from ..model_dir import ModelDir


class Backend(abc.ABC):
    """One model on one device. Subclasses set ``name`` and implement ``embed``.

    Thread safety: ``embed`` may be called from several threads at once.
    """

    name: str = "?"
    pooling_kernel: str = "?"  # which code pooled the hidden states (reported by describe())
    numerics: str = ""  # settings beyond backend and precision that change the numbers (fidelity cache key)

    def __init__(self, model: ModelDir, device: str = "cpu", precision: str = "fp32"):
        self.model = model
        self.device = device
        self.precision = precision

    @property
    def max_batch_tokens(self) -> int:
        """Padded tokens per batch that keep this backend near its best throughput."""
        return 4096

    def warmup(self, input_ids: list[int] | None = None) -> None:
        """Run one small batch (``input_ids``: one tokenized post) so the first real call pays no
        set-up cost."""
        ids = np.array([input_ids or [101, 2023, 2003, 102]], dtype=np.int64)
        self.embed(ids, np.ones_like(ids))

    @abc.abstractmethod
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        """input_ids, attention_mask: int64 (B, S), C-contiguous. Returns float32 (B, D):
        masked-mean pooled, projected when the model has a projection, L2-normalised when
        ``normalize``."""

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "pooling_kernel": self.pooling_kernel}

    def close(self) -> None:
        """Release the model; the backend cannot be used afterwards."""
