"""Repeated ids in what an index is built from: ``PostIndex.add`` keeps the first row of each id
and skips the rest, on the premise that an embedding is a pure function of (text, vector version),
so a repeat carries the same vector (a backfill resumed, one export read twice). A repeat whose
vector differs breaks the premise: one id for two posts, or a post edited and embedded again.
Such rows are counted apart (``PostIndex.conflicts``, a few of their ids in ``conflict_ids``)
and named in the warning, not refused: which row is right is not the index's to know, and a
build over outputs that re-embedded edited posts should still finish; the warning says which
ids to look at and that the index holds each id's first vector.
"""
from __future__ import annotations

import numpy as np

SAME = 1e-6  # 1 - cosine up to which a repeat counts as its kept row (re-embedding noise: ~1e-12)
EXAMPLES = 3  # conflicting ids kept to name


def differing(idx, v: np.ndarray, ids: list, repeats: list[tuple[int, int]], keep: list[int], n0: int) -> list:
    """The ids of the rows of ``v`` float32 (n, dim) that ``add`` skips (``repeats``: (row, position
    of the id's kept row)) whose vector is not the kept row's: 1 - cosine > SAME, compared as the
    index holds them (a binary index without float vectors: its sign bits). A kept position >= n0
    (the index's size before this add) is this add's row ``keep[position - n0]``."""
    if not repeats:
        return []
    rows = [r for r, _ in repeats]
    old = [j for j, (_, p) in enumerate(repeats) if p < n0]
    new = [j for j, (_, p) in enumerate(repeats) if p >= n0]
    kept = np.empty((len(rows), idx.dim), np.float32)
    if new:
        kept[new] = _as_held(idx, v[[keep[repeats[j][1] - n0] for j in new]])
    if old:
        kept[old] = idx.vectors_at([repeats[j][1] for j in old])
    cos = np.einsum("ij,ij->i", _as_held(idx, v[rows]), kept)
    return [ids[rows[j]] for j in np.flatnonzero(1 - cos > SAME)]


def _as_held(idx, v: np.ndarray) -> np.ndarray:
    """``v`` as ``PostIndex.vectors_at`` returns a held row: as is, or (binary without float
    vectors) its sign bits as +-1/sqrt(dim)."""
    if not idx.binary or idx.rescore:
        return v
    return (np.where(v > 0, 1.0, -1.0) / np.sqrt(idx.dim)).astype(np.float32)


def skipped_message(idx, rows: int) -> str:
    """The warning for ``idx.skipped`` rows of ``rows`` skipped as repeated ids, naming the conflicts."""
    msg = f"skipped {idx.skipped} of {rows} rows: their id came earlier (the first row of each id is kept)"
    if idx.conflicts:
        more = ", ..." if idx.conflicts > len(idx.conflict_ids) else ""
        msg += (f"; {idx.conflicts} of them had another vector than their id's first row (ids "
                f"{', '.join(map(repr, idx.conflict_ids))}{more}): two posts under one id, or a post edited and "
                "embedded again, and the index holds the first. Fix: give each post its own id, or drop the stale rows")
    return msg
