"""``PostIndex`` arguments a user gets wrong: refused when given, naming the argument, the value and the fix,
not a FAISS error at the first query (nprobe 0) or a value silently replaced (nlist 0), nor an empty build
of plain lists told that its 'row 0 has norm 0'."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")

from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.retrieval import PostIndex  # noqa: E402


@pytest.mark.parametrize("name, value", [("nprobe", 0), ("nprobe", -3), ("ef_search", 0), ("ef_search", 1.5),
                                         ("nlist", 0), ("nlist", True)])
def test_search_parameters_must_be_positive_ints(name, value):
    with pytest.raises(ValidationError, match=rf"`{name}` must be a positive int\. Given: {value!r}\. Fix: "):
        PostIndex(8, "ivf" if name != "ef_search" else "hnsw", **{name: value})


def test_an_empty_build_of_plain_lists_is_told_the_width_is_missing():
    with pytest.raises(ValidationError, match=r"`vectors` must have shape \(n, dim\)\. Given: \(0,\), no rows and no "
                                              r"width\. Fix: np.empty\(\(0, dim\), np.float32\)"):
        PostIndex.build([], [], kind="flat")
    assert len(PostIndex.build([], np.empty((0, 8), np.float32), kind="flat")) == 0


@pytest.mark.parametrize("binary", [False, True])
def test_an_ivf_index_maps_positions_to_vectors_once_and_keeps_the_map_through_adds(binary):
    """``vectors_of`` (each member query) rebuilt FAISS's direct map, a pass over every list: O(n) per call."""
    x = np.random.default_rng(0).standard_normal((3000, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    idx = PostIndex.build(range(2000), x[:2000], kind="ivf", nlist=16, binary=binary)

    class Counting:  # the FAISS index, its make_direct_map calls counted
        def __init__(self, index):
            self.inner, self.calls = index, 0

        def make_direct_map(self, *a):
            self.calls += 1
            return self.inner.make_direct_map(*a)

        def __getattr__(self, name):
            return getattr(self.inner, name)
    idx.index = Counting(idx.index)
    want = idx.vectors_of([3, 1999])
    for _ in range(3):
        np.testing.assert_array_equal(idx.vectors_of([3, 1999]), want)
    idx.add(range(2000, 3000), x[2000:])
    got = idx.vectors_of([2500])
    assert idx.index.calls == 1
    if not binary:
        np.testing.assert_allclose(got[0], x[2500])
