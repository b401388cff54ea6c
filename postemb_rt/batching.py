"""Batch formation for bulk ``encode``: sort by length, cut by a token budget.

A batch costs what its padded matrix costs (rows x longest row), so rows are sorted by
length (longest first: a too-large budget fails on the first batch, not the last) and
cut where either ``max_batch_size`` rows or ``max_batch_tokens`` padded tokens would be
exceeded. Results are scattered back to input order by the caller.
"""
from __future__ import annotations

import numpy as np

from .errors import ValidationError


def plan_batches(lengths, max_batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """lengths: (N,) token counts. Returns index arrays (into lengths), one per batch,
    covering every index exactly once; padded tokens per batch <= max_batch_tokens
    unless a single row alone is longer than the budget."""
    if max_batch_size < 1:
        raise ValidationError(f"`batch_size` must be >= 1. Given: {max_batch_size}.")
    if max_batch_tokens < 1:
        raise ValidationError(f"`max_batch_tokens` must be >= 1. Given: {max_batch_tokens}.")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = int(lengths[order[start]])  # sorted descending: the first row is the widest
        rows = max(1, min(max_batch_size, max_batch_tokens // max(longest, 1)))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def padding_ratio(lengths, batches: list[np.ndarray]) -> float:
    """Fraction of padded slots among all slots computed (0 = no padding)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    slots = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - float(lengths.sum()) / slots if slots else 0.0
