"""``PostIndex.from_parquet`` on folders whose files differ in schema (what a folder gathered over time
holds: an older export without a ``model_version`` column, ids written as int32 by one tool and int64 by
another): every file is read by the schema of all of them, not the first file's."""
from __future__ import annotations

import numpy as np
import pytest

from postemb_rt.errors import ValidationError

pa = pytest.importorskip("pyarrow")
pytest.importorskip("faiss")
import pyarrow.parquet as pq  # noqa: E402

from postemb_rt.retrieval import PostIndex  # noqa: E402


def _table(ids, version=None, id_type=None, seed=0):
    v = np.random.default_rng(seed).normal(size=(len(ids), 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cols = {"id": pa.array(ids, id_type or pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 8)}
    if version is not None:
        cols["model_version"] = pa.array([version] * len(ids), pa.string())
    return pa.table(cols)


def test_a_first_file_without_a_version_column_does_not_hide_the_versions_of_the_others(tmp_path):
    """Before, the folder was read by its first file's schema: the other files' model_version columns
    were dropped, so v3 and v4 vectors made one index of no version, or (v4 stated) one labelled v4."""
    pq.write_table(_table([1, 2]), tmp_path / "0-old.parquet")
    pq.write_table(_table([3, 4], "postemb-mt50-v3", seed=1), tmp_path / "1.parquet")
    pq.write_table(_table([5, 6], "postemb-mt50-v4", seed=2), tmp_path / "2.parquet")
    with pytest.raises(ValidationError, match="mixes model versions"):
        PostIndex.from_parquet(tmp_path)
    with pytest.raises(ValidationError, match="'postemb-mt50-v4' is not the version .* 'postemb-mt50-v3'"):
        PostIndex.from_parquet(tmp_path, vector_version="postemb-mt50-v4")
    (tmp_path / "1.parquet").unlink()  # rows of no version, stated: the rest must agree
    idx = PostIndex.from_parquet(tmp_path, vector_version="postemb-mt50-v4", allow_unversioned=False)
    assert (idx.ids, idx.vector_version) == ([1, 2, 5, 6], "postemb-mt50-v4")


def test_int32_and_int64_id_files_build_one_index(tmp_path):
    """Before: "Integer value 1099511627776 not in range" (the folder read as int32, its first file's type)."""
    pq.write_table(_table([1, 2], "v", pa.int32()), tmp_path / "a.parquet")
    pq.write_table(_table([2 ** 40, 7], "v", seed=1).append_column("note", pa.array(["x", "y"])),
                   tmp_path / "b.parquet")
    pq.write_table(_table([8], "v", seed=2).append_column("note", pa.array([1.5])), tmp_path / "c.parquet")
    assert PostIndex.from_parquet(tmp_path).ids == [1, 2, 2 ** 40, 7, 8]  # other columns may differ


def test_from_parquet_reports_its_progress_up_to_every_row(tmp_path):
    """A build over millions of posts takes minutes: ``index build`` draws a bar from these calls."""
    pq.write_table(_table(list(range(10)), "v"), tmp_path / "a.parquet")
    pq.write_table(_table(list(range(10, 15)), "v", seed=1), tmp_path / "b.parquet")
    calls = []
    idx = PostIndex.from_parquet(tmp_path, batch_rows=4, on_progress=lambda done, total: calls.append((done, total)))
    assert len(idx) == 15 and len(calls) >= 4 and calls[-1] == (15, 15)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and {t for _, t in calls} == {15}
