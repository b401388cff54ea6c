"""Posts of equal score (one text posted under several ids) cut by ``k``: the ones kept are the first added,
for an ANN index (HNSW, IVF) as for a flat one, so a top-k is the first k of a top-(k+1) and does not hang on
the order FAISS met them in its graph or lists."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")

from postemb_rt.retrieval import PostIndex  # noqa: E402

REPOSTS = [0, 5, 100, 700, 1500, 2999]  # positions holding one vector


def with_reposts(n=3000, dim=50, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    x[REPOSTS] = x[0]
    return x


@pytest.mark.parametrize("params", [{"kind": "flat"}, {"kind": "hnsw"}, {"kind": "ivf", "nlist": 16, "nprobe": 16}])
def test_a_cut_through_equal_scores_keeps_the_first_added(params):
    x = with_reposts()
    idx = PostIndex.build([f"p{i}" for i in range(len(x))], x, **params)
    for k in range(1, len(REPOSTS) + 1):
        for row in idx.search(np.repeat(x[:1], 3, 0), k):  # one query, and a batch of them
            assert [h.id for h in row] == [f"p{i}" for i in REPOSTS[:k]]
    hits = idx.search(x[0], 2, exclude={"p5"})[0]
    assert [h.id for h in hits] == ["p0", "p100"]


def test_the_tie_fetch_stops_at_its_cap(monkeypatch):
    """A text reposted by thousands of ids must not turn one query into a search of all of them: the fetch stops
    TIE_FETCH_MAX past the k-th (here 4), and the hits are still k posts of the tied vector."""
    from postemb_rt.retrieval import index as I

    monkeypatch.setattr(I, "TIE_FETCH_MAX", 4)
    x = with_reposts()
    x[:600] = x[0]  # 600 posts of one vector
    idx = PostIndex.build([f"p{i}" for i in range(len(x))], x, kind="hnsw")
    fetched = []
    search = idx.index.search
    monkeypatch.setattr(idx.index, "search", lambda q, n, params=None: fetched.append(n) or search(q, n, params=params))
    hits = idx.search(x[0], 3)[0]
    assert len(hits) == 3 and all(h.score == pytest.approx(1.0) for h in hits)
    assert fetched == [4, 7]  # k + 1, then capped at k + TIE_FETCH_MAX
