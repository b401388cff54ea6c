"""Ordering FAISS's answers for ``PostIndex.search_positions``: best first, equal scores in the order the
posts were added (position order), cut at k and padded with -1 / -inf; and the re-ranking of a binary
index's Hamming candidates by float cosine (rescoring)."""
from __future__ import annotations

import numpy as np


def padded(scores: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's (scores, positions) (q, c) as (q, k), best first and equal scores in the order the posts
    were added (FAISS's float heap gives ties last-added first, its binary indexes first-added first),
    -inf / -1 where no post was found."""
    scores = np.where(pos < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((np.where(pos < 0, np.iinfo(np.int64).max, pos), -scores), axis=-1)
    out_s, out_p = np.full((len(pos), k), -np.inf, np.float32), np.full((len(pos), k), -1, np.int64)
    width = min(k, pos.shape[1])  # FAISS's may be wider: ties past the k-th fetched to cut them by position
    out_s[:, :width] = np.take_along_axis(scores, order[:, :width], 1)
    out_p[:, :width] = np.take_along_axis(pos, order[:, :width], 1)
    return out_s, out_p


def rescored(q: np.ndarray, candidates: np.ndarray, floats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's candidate positions (q, c) (-1: none) by float cosine with ``floats``
    (n, dim); -> (scores float32 (q, k), positions int64 (q, k)), best first, -1 / -inf padded."""
    scores = np.full((len(q), k), -np.inf, np.float32)
    pos = np.full((len(q), k), -1, np.int64)
    for i, row in enumerate(candidates):
        row = np.sort(row[row >= 0])  # sorted: sequential reads from a memmap
        if not len(row):
            continue
        s = np.asarray(floats[row], np.float32) @ q[i]
        top = np.argsort(-s, kind="stable")[:k]
        scores[i, : len(top)], pos[i, : len(top)] = s[top], row[top]
    return scores, pos
