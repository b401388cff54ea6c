"""Member embeddings: Ward clustering of the posts a member engaged with, and retrieval for a member.

A member's history (the embeddings of the posts they engaged with, float32 (n, dim) unit
rows) is clustered by Ward's hierarchical method (``scipy.cluster.hierarchy.linkage``,
Euclidean; on unit vectors ||a - b||^2 = 2 - 2 cos). The tree is cut at
``distance_threshold`` (scipy's Ward merge height: for two single posts it is
sqrt(2 - 2 cos), and it grows with the sizes of the clusters merged); if that leaves more
than ``max_clusters`` clusters it is cut into exactly ``max_clusters`` instead. Each cluster
gives one unit vector (the normalised mean of its posts) and a weight (its share of the
history). The single-vector baseline is the normalised mean of the whole history.

Merging rule for retrieval (``retrieve``): the k slots are shared out in proportion to the
cluster weights (largest remainder; every cluster gets at least one slot while there are
slots, heaviest first). Each cluster vector is queried; clusters, heaviest first, take their
best posts not yet taken and not in the history until their quota is full; slots a cluster
could not fill go to the best remaining candidates of any cluster. The merged list is
ordered by score. So a minority interest is always represented, and no post appears twice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError
from .checks import as_vectors
from .index import Hit, PostIndex

DISTANCE_THRESHOLD = 1.25  # chosen on simulated dev members (validation splits; docs/RETRIEVAL.md)
MAX_CLUSTERS = 3  # chosen with the threshold


@dataclass
class MemberEmbedding:
    """vectors float32 (c, dim) unit rows, heaviest cluster first; weights float32 (c,), sum 1;
    labels int64 (n,): the cluster of each history post. c = 0 for an empty history."""

    vectors: np.ndarray
    weights: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.vectors)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.where(n > 0, n, 1)).astype(np.float32)


def _from_labels(history: np.ndarray, labels: np.ndarray) -> MemberEmbedding:
    uniq, counts = np.unique(labels, return_counts=True)
    order = uniq[np.argsort(-counts, kind="stable")]  # heaviest first
    remap = {int(c): i for i, c in enumerate(order)}
    new = np.array([remap[int(c)] for c in labels], dtype=np.int64)
    vecs = np.stack([history[new == i].mean(0) for i in range(len(order))])
    weights = np.bincount(new, minlength=len(order)).astype(np.float32) / len(history)
    return MemberEmbedding(_unit(vecs), weights, new)


def member_embedding(history, distance_threshold: float = DISTANCE_THRESHOLD,
                     max_clusters: int = MAX_CLUSTERS) -> MemberEmbedding:
    """Ward multi-vector member embedding of ``history`` float32 (n, dim) unit rows (see the
    module docstring). n = 0 gives no vectors; n = 1 gives the post itself."""
    if not distance_threshold > 0:
        raise ValidationError(f"`distance_threshold` must be > 0. Given: {distance_threshold!r}.")
    if not isinstance(max_clusters, (int, np.integer)) or max_clusters < 1:
        raise ValidationError(f"`max_clusters` must be an int >= 1. Given: {max_clusters!r}.")
    h = as_vectors(history, None, "history") if len(history) else np.asarray(history, np.float32)
    if len(h) == 0:
        dim = h.shape[1] if h.ndim == 2 else 0
        return MemberEmbedding(np.empty((0, dim), np.float32), np.empty(0, np.float32), np.empty(0, np.int64))
    if len(h) == 1:
        return MemberEmbedding(h.copy(), np.ones(1, np.float32), np.zeros(1, np.int64))
    from scipy.cluster.hierarchy import fcluster, linkage

    z = linkage(h.astype(np.float64), method="ward")
    labels = fcluster(z, t=distance_threshold, criterion="distance")
    if labels.max() > max_clusters:
        labels = fcluster(z, t=max_clusters, criterion="maxclust")
    return _from_labels(h, labels)


def mean_embedding(history) -> MemberEmbedding:
    """The single-vector baseline: the normalised mean of the history (one cluster)."""
    h = as_vectors(history, None, "history") if len(history) else np.asarray(history, np.float32)
    if len(h) == 0:
        return member_embedding(h)
    return _from_labels(h, np.zeros(len(h), np.int64))


def quotas(weights, k: int) -> np.ndarray:
    """Slots per cluster (int64 (c,), sum min(k, ...)): proportional to ``weights`` by largest
    remainder, at least one each while slots last (heaviest first)."""
    w = np.asarray(weights, np.float64)
    c = len(w)
    if c == 0 or k <= 0:
        return np.zeros(c, np.int64)
    order = np.argsort(-w, kind="stable")
    q = np.zeros(c, np.int64)
    base = order[: min(c, k)]
    q[base] = 1
    left = k - len(base)
    if left > 0:
        share = w / w.sum() * k - q  # what each cluster is still owed
        share = np.maximum(share, 0)
        extra = np.floor(share / max(share.sum(), 1e-12) * left).astype(np.int64)
        q += extra
        rem = left - int(extra.sum())
        frac = share / max(share.sum(), 1e-12) * left - extra
        for i in np.argsort(-frac, kind="stable")[:rem]:
            q[i] += 1
    return q


def retrieve(index: PostIndex, member: MemberEmbedding, k: int = 10, exclude=(),
             rescore: int | None = None, vector_version: str | None = None) -> list[Hit]:
    """Top-k posts for a member by the merging rule of the module docstring. ``exclude``: ids
    to leave out (normally the member's history). An empty member gives an empty list (the
    caller falls back to, e.g., popular posts). ``rescore``: a binary index's rescore multiplier
    (default: the index's; see ``PostIndex.search_positions``). ``vector_version``: the member's vectors', as
    in ``PostIndex.search`` (another than the index's is refused)."""
    if len(member) == 0 or len(index) == 0:
        return []
    exclude = set(exclude)
    q = quotas(member.weights, k)
    # a cluster loses at most k - 1 candidates to heavier clusters, so 2k each always suffice
    per_cluster = index.search(member.vectors, 2 * k, exclude=exclude, rescore=rescore, vector_version=vector_version)
    taken: dict = {}
    leftovers: list[Hit] = []
    for c in np.argsort(-member.weights, kind="stable"):
        got = 0
        for h in per_cluster[c]:
            if h.id in taken:
                continue
            if got < q[c]:
                taken[h.id] = h
                got += 1
            else:
                leftovers.append(h)
    if len(taken) < k:
        for h in sorted(leftovers, key=lambda h: -h.score):
            if h.id not in taken:
                taken[h.id] = h
                if len(taken) == k:
                    break
    return sorted(taken.values(), key=lambda h: -h.score)[:k]
