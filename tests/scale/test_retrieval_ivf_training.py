"""An IVF index learns its centroids from a sample spread over all it is built from, not from the first
rows: input sorted by time or topic (a backfill's output is in post order) would place every centroid
among the first topics, and a query of a later topic would probe lists that do not hold its neighbours."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from postemb_rt.retrieval import PostIndex  # noqa: E402

N, TOPICS, DIM = 30_000, 20, 50
PARAMS = {"kind": "ivf", "nlist": 32, "nprobe": 2}  # trains on 256 * 32 = 8,192 of the 30,000 rows


def sorted_by_topic(seed=0):
    """float32 (N, DIM) unit vectors around TOPICS directions, in topic order; and 300 of them as queries."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((TOPICS, DIM))
    x = centers[np.sort(rng.integers(0, TOPICS, N))] + 0.6 * rng.standard_normal((N, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, x[rng.choice(N, 300, replace=False)]


def recall_at_10(idx, x, q):
    exact = PostIndex.build(range(N), x, kind="flat").search(q, 10)
    got = idx.search(q, 10)
    return np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(exact, got)])


def test_build_trains_on_a_sample_of_all_its_rows():
    x, q = sorted_by_topic()
    assert recall_at_10(PostIndex.build(range(N), x, **PARAMS), x, q) >= 0.9  # the first rows only: 0.6


def test_from_parquet_trains_on_a_sample_of_every_file(tmp_path):
    x, q = sorted_by_topic()
    for part in range(3):  # three files in post order, read in batches smaller than the training sample
        rows = slice(part * N // 3, (part + 1) * N // 3)
        pq.write_table(pa.table({"id": pa.array(range(N)[rows], pa.int64()),
                                 "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), DIM),
                                 "model_version": pa.array(["v1"] * (N // 3))}), tmp_path / f"part-{part}.parquet")
    idx = PostIndex.from_parquet(tmp_path, batch_rows=2_000, **PARAMS)
    assert idx.index.is_trained and len(idx) == N and idx.ids == list(range(N))
    assert recall_at_10(idx, x, q) >= 0.9
