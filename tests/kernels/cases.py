"""Inputs for the masked_mean_pool_l2 tests: the awkward-shape table and an input builder."""
from __future__ import annotations

import itertools

import torch

BATCH = (1, 3, 17)
SEQ = (1, 7, 129, 512)
HIDDEN = (384, 768, 1023)
PROJ = (None, 50, 384)
# Every (B, S, H, D) combination for the C++ kernel; the interpreter takes a covering subset.
FULL_TABLE = list(itertools.product(BATCH, SEQ, HIDDEN, PROJ))
SMALL_TABLE = [  # each value of each axis at least once
    (1, 1, 384, None), (3, 7, 1023, 50), (17, 129, 384, 384), (3, 512, 768, None),
    (17, 7, 768, 50), (1, 129, 1023, 384), (3, 1, 384, 50),
]
HIDDEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MASK_DTYPES = (torch.int64, torch.int32, torch.uint8, torch.bool)


def make_inputs(B, S, H, D, dtype=torch.float32, mask_dtype=torch.int64, bias=True, seed=0):
    """hidden (B, S, H) dtype; mask (B, S) with real-looking right padding: row 0 holds a
    single token, row 1 none (all padding), the rest random lengths; weight (H, D), bias (D,)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, S, H, generator=g).to(dtype)
    lengths = torch.randint(1, S + 2, (B,), generator=g).clamp(max=S)
    lengths[0] = min(1, S)
    if B > 1:
        lengths[1] = 0
    mask = (torch.arange(S)[None, :] < lengths[:, None]).to(mask_dtype)
    weight = None if D is None else torch.randn(H, D, generator=g) / H**0.5
    b = None if D is None or not bias else torch.randn(D, generator=g)
    return hidden, mask, weight, b


def to_numpy(t):
    """Zero-copy numpy view of a CPU tensor; bfloat16 as ml_dtypes.bfloat16 (numpy has none)."""
    if t is None:
        return None
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
