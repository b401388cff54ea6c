"""Vectors of another vector version (another model, precision or nested prefix: ``Encoder.vector_version``)
than an index holds find unrelated posts without any error when they have its width. ``search`` and ``add``
take the version of the vectors they are given and refuse another, naming both and the fix."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")

from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.retrieval import PostIndex, retrieve, member_embedding  # noqa: E402


def unit(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, 8))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_search_and_add_refuse_vectors_of_another_version():
    idx = PostIndex.build(range(40), unit(40, 0), kind="flat", vector_version="m-v4")
    q = unit(2, 1)
    assert [len(r) for r in idx.search(q, 3, vector_version="m-v4")] == [3, 3]
    for call in (lambda: idx.search(q, 3, vector_version="m-v3+bf16"),
                 lambda: idx.search_positions(q, 3, vector_version="m-v3+bf16"),
                 lambda: retrieve(idx, member_embedding(q), 3, vector_version="m-v3+bf16")):
        with pytest.raises(ValidationError, match=r"`vector_version` 'm-v3\+bf16': the queries are not the index's "
                                                  r"vectors, which are 'm-v4'.* Fix: embed them with an encoder whose "
                                                  r"vector_version is 'm-v4'"):
            call()
    with pytest.raises(ValidationError, match=r"`vector_version` 'm-v4@4': the vectors are not the index's vectors, "
                                              r"which are 'm-v4'"):
        idx.add(range(40, 42), q, vector_version="m-v4@4")
    assert len(idx) == 40
    assert idx.add(range(40, 42), q, vector_version="m-v4") == 2


def test_an_index_of_no_version_takes_the_first_version_it_is_told():
    idx = PostIndex(8, "flat")
    idx.add(range(3), unit(3, 2), vector_version="m-v4")
    assert idx.vector_version == "m-v4"
    with pytest.raises(ValidationError, match=r"which are 'm-v4'"):
        idx.search(unit(1, 3), 2, vector_version="other")
