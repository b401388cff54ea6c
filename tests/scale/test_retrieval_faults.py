"""``PostIndex`` and ``postemb index`` when things go wrong: an interrupted save, index folders
mixed up or damaged, ids of two types, bad ``--member`` lists, an unreachable store, and
repeated ids in the input. Each gives the old index whole or one ValidationError naming the
thing and the fix, never a traceback or a silent wrong answer."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")
pytest.importorskip("scipy", reason="scipy is not installed (pip install -e '.[scale]')")

from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.retrieval import PostIndex  # noqa: E402
from tests.scale.test_retrieval import DIM, random_unit  # noqa: E402

N = 300


def saved(folder, ids=None, seed=1, **params):
    """An index over N random unit vectors saved in ``folder``; returns (index, vectors)."""
    x = random_unit(N, seed)
    idx = PostIndex.build([f"p{i}" for i in range(N)] if ids is None else ids, x, **params)
    idx.save(folder)
    return idx, x


# -- saving --------------------------------------------------------------------------------------
def test_an_interrupted_save_leaves_the_old_index_whole(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    old, x = saved(tmp_path / "idx")
    new = PostIndex.build([f"p{i}" for i in reversed(range(N))], random_unit(N, 2))  # same count, other order

    def fail(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pq, "write_table", fail)  # index.faiss is written before ids.parquet
    with pytest.raises(OSError, match="No space left"):
        new.save(tmp_path / "idx")
    monkeypatch.undo()
    back = PostIndex.load(tmp_path / "idx")
    assert back.search(x[250], 1)[0][0].id == "p250" and back.ids == old.ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folder left beside it
    new.save(tmp_path / "idx")
    assert PostIndex.load(tmp_path / "idx").ids == new.ids


@pytest.mark.parametrize("name", ["index.faiss", "ids.parquet", "vectors.npy"])
def test_files_of_two_saves_mixed_in_one_folder_are_refused(tmp_path, name):
    # same count and shapes: the old checks (counts, dims) passed, and ids were paired with other vectors
    _, x = saved(tmp_path / "a", binary=True, rescore=2)
    saved(tmp_path / "b", ids=[f"p{i}" for i in reversed(range(N))], seed=2, binary=True, rescore=2)
    shutil.copyfile(tmp_path / "b" / name, tmp_path / "a" / name)
    with pytest.raises(ValidationError, match=rf"`index` '.*a': {name} is not the file index.json was saved "
                                              r"with .*Fix: rebuild the index \(postemb index build"):
        PostIndex.load(tmp_path / "a")


def test_an_index_folder_saved_before_file_records_still_loads(tmp_path):
    idx, x = saved(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    del meta["files"]
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    assert PostIndex.load(tmp_path / "idx").search(x[7], 1)[0][0].id == "p7"


def test_save_replaces_an_index_folder_but_never_a_folder_of_other_files(tmp_path):
    saved(tmp_path / "idx")
    (tmp_path / "idx" / ".tmp-0123456789abcdef-index.faiss").write_bytes(b"x")  # left by an older save
    idx, x = saved(tmp_path / "idx", seed=3)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["ids.parquet", "index.faiss", "index.json"]
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(ValidationError, match=r"`folder` '.*home' holds files that are not an index's \('notes.txt'\)"
                                              r".*Fix: save into a new folder"):
        idx.save(tmp_path / "home")
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    idx.save(tmp_path / "empty")
    assert PostIndex.load(tmp_path / "empty").search(x[3], 1)[0][0].id == "p3"


# -- damaged folders -----------------------------------------------------------------------------
def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_key(path, key):
    meta = json.loads(path.read_text())
    del meta[key]
    path.write_text(json.dumps(meta))


DAMAGE = {  # what is done to the folder -> what the error says
    "index.faiss truncated": (lambda f: _truncate(f / "index.faiss"), "index.faiss is not the file index.json"),
    "index.faiss missing": (lambda f: (f / "index.faiss").unlink(), "index.faiss is missing"),
    "ids.parquet missing": (lambda f: (f / "ids.parquet").unlink(), "ids.parquet is missing"),
    "index.json truncated": (lambda f: _truncate(f / "index.json"), "index.json is not valid JSON"),
    "index.json without dim": (lambda f: _drop_key(f / "index.json", "dim"), r"index.json lacks \['dim'\]"),
    "index.json a list": (lambda f: (f / "index.json").write_text("[]"), "index.json is not a JSON object"),
    "vectors.npy missing": (lambda f: (f / "vectors.npy").unlink(), "vectors.npy is missing"),
}
OLD_DAMAGE = {  # the same in a folder saved before index.json recorded its files: read, and failing there
    "index.faiss truncated": (lambda f: _truncate(f / "index.faiss"), "index.faiss is not readable by faiss"),
    "ids.parquet truncated": (lambda f: _truncate(f / "ids.parquet"), "ids.parquet is not readable"),
    "vectors.npy truncated": (lambda f: _truncate(f / "vectors.npy"), "vectors.npy is not readable"),
}


CASES = [pytest.param(False, damage, says, id=what) for what, (damage, says) in DAMAGE.items()] + [
    pytest.param(True, damage, says, id=f"{what}, saved before file records")
    for what, (damage, says) in {**DAMAGE, **OLD_DAMAGE}.items()]


@pytest.mark.parametrize("old,damage,says", CASES)
def test_a_damaged_index_folder_is_one_error_naming_the_file_and_the_fix(tmp_path, old, damage, says):
    saved(tmp_path / "idx", binary=True, rescore=2)
    if old:
        _drop_key(tmp_path / "idx" / "index.json", "files")
    damage(tmp_path / "idx")
    # a partial copy (rsync of some files) is mended by copying again, not only by a rebuild
    with pytest.raises(ValidationError, match=rf"`index` '.*idx': {says}.*Fix: rebuild the index .*; if this folder "
                                              r"is a copy of one, copy the whole folder again\.$"):
        PostIndex.load(tmp_path / "idx")


def test_a_file_of_an_index_given_as_the_index_names_its_folder(tmp_path):
    saved(tmp_path / "idx")  # was: "is not a saved PostIndex (no index.json)", given index.json itself
    with pytest.raises(ValidationError, match=r"`index` '.*idx/index.json' is a file, not an index folder. Fix: give "
                                              r"the folder holding it, '.*idx'"):
        PostIndex.load(tmp_path / "idx" / "index.json")


# -- ids -----------------------------------------------------------------------------------------
def test_an_index_holds_one_id_type(tmp_path):
    idx = PostIndex.build([1, 2], random_unit(2))
    with pytest.raises(ValidationError, match=r"`ids\[1\]` must be an int like the index's ids \(one id type per "
                                              r"index\). Given: 'x' \(str\)"):
        idx.add([3, "x"], random_unit(2, 3))
    assert len(idx) == 2 and idx.position(3) is None  # nothing of the refused call was added
    with pytest.raises(ValidationError, match=r"`ids\[0\]` must be an int or str. Given: 1.5 \(float\)"):
        PostIndex.build([1.5], random_unit(1))
    with pytest.raises(ValidationError, match=r"`ids\[0\]` must be an int or str. Given: True \(bool\)"):
        idx.add([True], random_unit(1))
    with pytest.raises(ValidationError, match=r"`ids\[1\]` must be a str like `ids\[0\]`"):
        PostIndex.build(["a", 2], random_unit(2))
    with pytest.raises(ValidationError, match=r"`ids\[0\]` must fit in int64 \(ids.parquet's type\). Given: 9223372"):
        idx.add([1 << 63], random_unit(1))  # it failed in save, with index.faiss written
    assert idx.add(np.array([3], np.int64), random_unit(1, 4)) == 1 and idx.ids[-1] == 3  # numpy ints are ints
    idx.save(tmp_path / "idx")
    assert PostIndex.load(tmp_path / "idx").ids == [1, 2, 3]


def test_build_counts_the_rows_it_skips_as_repeated_ids(caplog):
    x = random_unit(5)
    with caplog.at_level("WARNING", logger="postemb_rt"):
        idx = PostIndex.build(["a", "b", "a", "c", "a"], x)
    assert idx.ids == ["a", "b", "c"] and idx.skipped == 2
    np.testing.assert_allclose(idx.vectors_of(["a"])[0], x[0])  # the first row of an id is kept
    assert "skipped 2 of 5 rows: their id came earlier" in caplog.text


def test_search_refuses_k_0_even_with_ids_to_exclude():
    idx = PostIndex.build(["a", "b"], random_unit(2))
    with pytest.raises(ValidationError, match="`k` must be a positive int. Given: 0"):
        idx.search(random_unit(1, 5), k=0, exclude={"a"})  # k grew by the excluded id and passed: [[]]


# -- the command ---------------------------------------------------------------------------------
def test_cli_member_lists_are_parsed_deduplicated_and_checked(tmp_path, capsys):
    from postemb_rt.cli import main

    saved(tmp_path / "idx")
    q = ["index", "query", "--index", str(tmp_path / "idx"), "--k", "3", "--json", "--member"]
    assert main(q + ["p1,p1, p1 ,"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"].startswith("member of 1 posts,") and "p1" not in {h["id"] for h in out["hits"]}
    assert main(q + [",,"]) == 2
    assert "`--member` must name at least one post id. Given: ',,'" in capsys.readouterr().err
    assert main(q + ["p1,nope"]) == 2
    err = capsys.readouterr().err
    assert "`--member` id 'nope' is not in the index" in err and "ids like 'p0'" in err and "ids[" not in err
    assert main(q[:-1] + ["--k", "0", "--member", "p1"]) == 2
    assert "`--k` must be a positive int. Given: 0" in capsys.readouterr().err
    ints = PostIndex.build([10, 20, 30], random_unit(3))
    ints.save(tmp_path / "ints")
    assert main(["index", "query", "--index", str(tmp_path / "ints"), "--member", "10, 20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query"].startswith("member of 2 posts,")
    spaced = PostIndex.build([" a", "b"], random_unit(2))  # an id with a space: taken as given when the index holds it
    spaced.save(tmp_path / "spaced")
    assert main(["index", "query", "--index", str(tmp_path / "spaced"), "--member", " a, b ", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query"].startswith("member of 2 posts,")


def test_cli_build_refuses_two_sources_a_foreign_out_folder_and_an_unreachable_store(tmp_path, capsys):
    pytest.importorskip("redis", reason="redis-py is not installed")
    from postemb_rt.cli import main

    build = ["index", "build", "--out", str(tmp_path / "idx"), "--vector-version", "v1"]
    assert main(build + ["--input", str(tmp_path), "--redis", "redis://127.0.0.1:1/0"]) == 2
    assert "give `--input` or `--redis`, not both" in capsys.readouterr().err
    assert main(build + ["--redis", "redis://:s3cret@127.0.0.1:1/0"]) == 2  # nothing listens on port 1
    err = capsys.readouterr().err
    assert "`--redis` 127.0.0.1:1 db 0 does not answer" in err and "Fix: start it" in err
    assert "s3cret" not in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["index", "build", "--input", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2  # before reading
    assert f"`--out` '{tmp_path}' holds files that are not an index's ('notes.txt')" in capsys.readouterr().err


def test_cli_build_reports_rows_skipped_as_repeated_ids(tmp_path, capsys):
    import pyarrow.parquet as pq

    from postemb_rt.backfill import embeddings_table
    from postemb_rt.cli import main

    (tmp_path / "emb").mkdir()
    ids = [f"p{i % 40}" for i in range(50)]  # p0..p9 twice
    x = random_unit(50)
    x[40:45] = x[:5]  # p0..p4 repeat their vector, p5..p9 come with another
    pq.write_table(embeddings_table(ids, x, "m1", "string"), tmp_path / "emb" / "part-00000.parquet")
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    out, err = capsys.readouterr()
    assert "indexed 40 posts" in out
    assert ("warning: skipped 10 of 50 rows: their id came earlier (the first row of each id is kept); 5 of them had "
            "another vector than their id's first row (ids 'p5', 'p6', 'p7', ...): two posts under one id") in out
    assert "skipped 10 of 50 rows" in err and "5 of them had another vector" in err  # the log warning


@pytest.mark.parametrize("params", [{"kind": "flat"}, {"kind": "hnsw"}, {"kind": "ivf", "nlist": 2},
                                    {"binary": True}, {"binary": True, "rescore": 2}], ids=str)
def test_repeated_ids_with_another_vector_are_counted_apart_and_named(params, caplog, tmp_path):
    """A repeat of the same vector (a resumed backfill) is a plain skip; one of another vector (one id for
    two posts, or an edited post embedded again) is counted and named, in one add and across adds."""
    x = random_unit(100, 7)
    ids = [f"p{i}" for i in range(100)]
    noisy = x[3] + np.float32(1e-7)  # re-embedding noise: the same vector
    with caplog.at_level("WARNING", logger="postemb_rt"):
        idx = PostIndex.build(ids + ["p3", "p4"], np.vstack([x, noisy / np.linalg.norm(noisy), x[5]]), **params)
    assert (idx.skipped, idx.conflicts, idx.conflict_ids) == (2, 1, ["p4"])
    assert "skipped 2 of 102 rows" in caplog.text and "1 of them had another vector than their id's first row " \
           "(ids 'p4'): two posts under one id, or a post edited and embedded again, and the index holds the first" \
           in caplog.text
    assert idx.add(["p0", "p1", "new"], np.vstack([x[0], x[2], x[9]])) == 1  # p0 the same, p1 another
    assert (idx.skipped, idx.conflicts, idx.conflict_ids) == (4, 2, ["p4", "p1"])
    assert idx.search(x[1], 1)[0][0].id == "p1"  # the first vector kept
    idx.save(tmp_path / "idx")
    back = PostIndex.load(tmp_path / "idx")
    assert back.add(["p2", "p6"], np.vstack([x[3], x[6]])) == 0 and (back.conflicts, back.conflict_ids) == (1, ["p2"])


def _versionless_parquet(path, n=20):
    """Parquet embeddings without the `model_version` column (a hand-made export), for ``n`` 50-d posts."""
    import pyarrow.parquet as pq

    from postemb_rt.backfill import embeddings_table

    pq.write_table(embeddings_table([f"p{i}" for i in range(n)], random_unit(n), "x", "string")
                   .drop_columns(["model_version"]), path)
    return path


def test_cli_build_from_parquet_without_a_version_needs_one_or_an_explicit_opt_out(tmp_path, capsys):
    """An index of no version cannot check a query's model against its vectors: from Parquet without
    a `model_version` column, `index build` asks for --vector-version (recorded, then checked by
    `query --text`) and builds an index of no version only with --allow-unversioned."""
    from postemb_rt.cli import main

    src = _versionless_parquet(tmp_path / "e.parquet")
    build = ["index", "build", "--input", str(src), "--out", str(tmp_path / "idx")]
    assert main(build) == 2
    err = capsys.readouterr().err
    assert f"`--input` '{src}' records no vector version (no model_version column; its columns: ['id', 'embedding'])" \
           in err and "Given: no `--vector-version`. Fix: give `--vector-version` (the Encoder.vector_version" in err
    assert "(`--allow-unversioned`)" in err and not (tmp_path / "idx").exists()
    assert main(build + ["--vector-version", "postemb-mt50-v4"]) == 0
    assert "vector version=postemb-mt50-v4" in capsys.readouterr().out
    assert PostIndex.load(tmp_path / "idx").vector_version == "postemb-mt50-v4"
    query = ["index", "query", "--index", str(tmp_path / "idx"), "--text", "hi", "--model", "base"]
    assert main(query) == 2  # checked before the model loads
    assert "gives vectors of version 'all-MiniLM-L6-v2' but the index holds 'postemb-mt50-v4'" \
           in capsys.readouterr().err
    assert main(build + ["--allow-unversioned"]) == 0
    out, err = capsys.readouterr()
    assert "vector version=None" in out and f"{src} records no vector version (no model_version column" in err
    assert PostIndex.load(tmp_path / "idx").vector_version is None
    assert main([*query[:-1], "default", "--json"]) == 0  # queried, with a warning
    assert f"`--index` '{tmp_path / 'idx'}' records no vector version, so `--model` 'default' is not checked" \
           in capsys.readouterr().err


def test_a_stated_vector_version_must_agree_with_the_column_and_fills_null_rows(tmp_path):
    import pyarrow.parquet as pq

    from postemb_rt.backfill import embeddings_table

    x = random_unit(4)
    pq.write_table(embeddings_table(["a", "b"], x[:2], "m1", "string"), tmp_path / "e.parquet")
    assert PostIndex.from_parquet(tmp_path / "e.parquet", vector_version="m1").vector_version == "m1"
    with pytest.raises(ValidationError, match=r"`vector_version` 'm2' is not the version .* records in its "
                                              r"model_version column: 'm1'. Fix: leave `vector_version` out"):
        PostIndex.from_parquet(tmp_path / "e.parquet", vector_version="m2")
    nulls = embeddings_table(["c", "d"], x[2:], "m1", "string")
    nulls = nulls.set_column(2, "model_version", pa_nulls(nulls))
    (tmp_path / "d").mkdir()
    pq.write_table(nulls, tmp_path / "d" / "part-0.parquet")
    with pytest.raises(ValidationError, match="records no vector version \\(its model_version column is null\\)"):
        PostIndex.from_parquet(tmp_path / "d", allow_unversioned=False)
    assert PostIndex.from_parquet(tmp_path / "d", vector_version="m1", allow_unversioned=False).vector_version == "m1"
    pq.write_table(embeddings_table(["a", "b"], x[:2], "m1", "string"), tmp_path / "d" / "part-1.parquet")
    with pytest.raises(ValidationError, match=r"mixes model versions (None and 'm1'|'m1' and None).*`vector_version` "
                                              r"states the version of such rows"):  # a null batch took the index's
        PostIndex.from_parquet(tmp_path / "d", batch_rows=2)
    assert PostIndex.from_parquet(tmp_path / "d", vector_version="m1").vector_version == "m1"


def pa_nulls(table):
    import pyarrow as pa

    return pa.nulls(table.num_rows, pa.string())


def test_parquet_rows_that_hold_no_embedding_are_named_by_file_and_id(tmp_path, capsys):
    # NaN, zero, null and ragged rows were refused as `vectors` "row 7" (of a batch: no file, no id), or a traceback
    import pyarrow as pa
    import pyarrow.parquet as pq

    from postemb_rt.cli import main

    (tmp_path / "empty" / "_staging").mkdir(parents=True)
    with pytest.raises(ValidationError, match=r"`path` '.*empty' holds no Parquet files \(names starting with _ or \. "
                                              r"are skipped.*\)\. Fix: give"):
        PostIndex.from_parquet(tmp_path / "empty")
    x = random_unit(6)

    def write(name, rows, ids=(10, 11, 12, 13, 14, 15), fixed=True):
        typ = pa.list_(pa.float32(), DIM) if fixed else pa.list_(pa.float32())
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"id": pa.array(ids[:3], pa.int64()), "embedding": pa.array(list(x[:3]), typ),
                                 "model_version": ["m"] * 3}), tmp_path / name / "part-0.parquet")
        pq.write_table(pa.table({"id": pa.array(ids[3:], pa.int64()), "embedding": pa.array(rows, typ),
                                 "model_version": ["m"] * 3}), tmp_path / name / "part-1.parquet")
        return tmp_path / name

    nan, zero = x[3:].copy(), x[3:].copy()
    nan[1, 5], zero[2] = np.nan, 0
    cases = [(write("nan", list(nan)), r"post id 14 \(row 1\) of '.*part-1.parquet' has NaN or inf in its embedding"),
             (write("zero", list(zero)), r"post id 15 \(row 2\) of '.*part-1.parquet' has an embedding of norm 0, "
                                         r"not a unit vector"),
             (write("noid", list(x[3:]), ids=(10, 11, 12, 13, None, 15)), r"row 1 of '.*part-1.parquet' has no id"),
             (write("noemb", [x[3], None, x[5]]), r"post id 14 \(row 1\) of '.*part-1.parquet' has no embedding"),
             (write("ragged", [x[3], x[4, :40], x[5]], fixed=False),
              r"post id 14 \(row 1\) of '.*part-1.parquet' has an embedding of 40 values, the others 50")]
    for folder, says in cases:
        with pytest.raises(ValidationError, match=rf"`path` '.*{folder.name}': {says}.*\. Fix: "):
            PostIndex.from_parquet(folder, batch_rows=2)
    assert main(["index", "build", "--input", str(tmp_path / "nan"), "--out", str(tmp_path / "idx")]) == 2
    assert f"`--input` '{tmp_path / 'nan'}': post id 14 (row 1) of" in capsys.readouterr().err


def test_parquet_files_of_two_id_types_or_widths_in_one_folder_are_named(tmp_path):
    # arrow's own error ("Failed to parse string: 's0' as a scalar of type int64", "Size of FixedSizeList is not the
    # same") named neither file, and said "one model per index" for ids of two types
    import pyarrow.parquet as pq

    from postemb_rt.backfill import embeddings_table

    x = random_unit(4)
    short = x[:, :16] / np.linalg.norm(x[:, :16], axis=1, keepdims=True)
    (tmp_path / "ids" / "b").mkdir(parents=True)
    pq.write_table(embeddings_table([1, 2], x[:2], "m", "int"), tmp_path / "ids" / "a.parquet")
    pq.write_table(embeddings_table(["s0", "s1"], x[2:], "m", "string"), tmp_path / "ids" / "b" / "c.parquet")
    with pytest.raises(ValidationError, match=r"`path` '.*ids': the ids of '.*b/c.parquet' are string, those of "
                                              r"'.*a.parquet' int \(one id type per index\)\. Fix: "):
        PostIndex.from_parquet(tmp_path / "ids")
    (tmp_path / "dims" / "b").mkdir(parents=True)
    pq.write_table(embeddings_table([1, 2], x[:2], "m", "int"), tmp_path / "dims" / "a.parquet")
    pq.write_table(embeddings_table([3, 4], short[2:], "m@16", "int"), tmp_path / "dims" / "b" / "c.parquet")
    with pytest.raises(ValidationError, match=r"`path` '.*dims': the embeddings of '.*b/c.parquet' have 16 values, "
                                              r"those of '.*a.parquet' 50 \(two models or truncate dims\)\. Fix: "):
        PostIndex.from_parquet(tmp_path / "dims")
    pq.write_table(embeddings_table([1], x[:1], "m", "int").drop(["embedding"]), tmp_path / "ids" / "b" / "c.parquet")
    with pytest.raises(ValidationError, match=r"`path` '.*ids': '.*b/c.parquet' has no column `embedding` \(its "
                                              r"columns: \['id', 'model_version'\]\): not embeddings\. Fix: "):
        PostIndex.from_parquet(tmp_path / "ids")  # was: its rows "have no embedding (null)"


def test_store_records_that_hold_no_embedding_are_named_by_key(tmp_path):
    # a NaN record was `vectors` "row 2" (of SCAN order), one of another length or of odd bytes a ValueError traceback
    pytest.importorskip("redis", reason="redis-py is not installed")
    from postemb_rt import nearline
    from tests.nearline.conftest import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        client = nearline.connect(server.url)
        x = random_unit(4)
        nan = x[3].copy()
        nan[2] = np.inf
        for version, last in [("nan", nan.tobytes()), ("short", x[3, :40].tobytes()), ("odd", b"abc"),
                              ("zero", np.zeros(DIM, "<f4").tobytes())]:
            for i, vec in enumerate([*(v.tobytes() for v in x[:3]), last]):
                client.hset(nearline.store_key(version, f"p{i}"), mapping={"post_id": f"p{i}", "vector": vec})
        for version, says in [("nan", "has NaN or inf in its vector"), ("short", "holds 40 values, most others 50"),
                              ("odd", "holds 3 bytes, not float32 values"), ("zero", "has a vector of norm 0")]:
            with pytest.raises(ValidationError, match=rf"`vector_version` '{version}': the store's record "
                                                      rf"'postemb:{version}:p3' \(post 'p3'\) {says}.*\. Fix: "):
                PostIndex.from_redis(client, version)
        client.close()
    finally:
        server.stop()
