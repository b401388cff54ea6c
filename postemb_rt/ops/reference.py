"""The one torch reference of the pooling op; kernels, tests and benchmarks compare to it."""
from __future__ import annotations


def masked_mean_pool_l2_ref(hidden, mask, weight=None, bias=None, normalize: bool = True, dtype=None):
    """normalize(W^T * mean_{t: mask=1} h_t + b), in plain torch.

    hidden: (B, S, H) float tensor; mask: (B, S) integer or bool; weight: (H, D) or None;
    bias: (D,) or None. Computes in ``dtype`` (default: float32; use torch.float64 in tests).
    Returns (B, D) in ``dtype``. A row with no unmasked token pools to zeros (never NaN).
    """
    import torch

    dtype = dtype or torch.float32
    h = hidden.to(dtype)
    m = mask.to(dtype).unsqueeze(-1)
    pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    if weight is not None:
        pooled = pooled @ weight.to(dtype)
    if bias is not None:
        pooled = pooled + bias.to(dtype)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1, eps=1e-12)
    return pooled
