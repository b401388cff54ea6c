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


POOLINGS = ("mean", "cls", "max", "lasttoken")  # sentence-transformers Pooling modes the runtime computes


def pool_ref(hidden, mask, mode: str = "mean"):
    """Pool (B, S, H) hidden states with a (B, S) right-padded mask into (B, H), as
    sentence-transformers' ``Pooling`` does, in the hidden states' dtype.

    mean: masked mean (a row with no unmasked token pools to zeros); cls: the first token;
    max: the masked maximum per channel (masked slots count as -1e9, as in
    sentence-transformers); lasttoken: the last unmasked token (index sum(mask) - 1: rows
    are right-padded).
    """
    import torch

    if mode == "mean":
        return masked_mean_pool_l2_ref(hidden, mask, normalize=False, dtype=hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        keep = mask.unsqueeze(-1).to(torch.bool)
        return torch.where(keep, hidden, torch.full_like(hidden, -1e9)).max(dim=1).values
    if mode == "lasttoken":
        last = (mask.to(torch.int64).sum(dim=1) - 1).clamp(min=0)  # (B,)
        index = last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, index).squeeze(1)
    raise ValueError(f"`mode` must be one of {POOLINGS}. Given: {mode!r}.")
