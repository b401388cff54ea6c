"""``postemb backfill`` on awkward inputs and arguments: dictionary-encoded, non-text and all-null
``text`` columns, uint64 ids past int64, a UTF-8 byte order mark, an output inside the input or
that cannot be created, a batch size of 0, fp16 (CPU workers), the staging folder left behind, and
columns named otherwise (``--id-column``, ``--text-column``). Each is checked on the planning and reading
functions, or refused before Ray starts: no test here needs Ray."""
from __future__ import annotations

import json

import pytest

from postemb_rt.errors import ValidationError

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from postemb_rt import backfill as bf  # noqa: E402
from postemb_rt.backfill import resume as bf_resume, run as bf_run, splits as bf_splits  # noqa: E402
from postemb_rt.backfill.plan import MARKER, Columns  # noqa: E402
from postemb_rt.cli import main  # noqa: E402

INT_FIX = "`id` is outside the int64 range. Fix: embed this input into a new --output with --id-type string"


def _read(path, id_type="int", columns=Columns()):
    """(ids, texts, bad) of every split of ``path``, through the run's own check of its columns."""
    assert bf_run.decide_id_type([path], path.parent / "no-output", id_type, columns) == id_type
    ids, texts, bad = [], [], []
    for s in bf.plan_file(path, path.parent, rows_per_split=4, columns=columns).splits:
        read = bf_splits._read_parquet_split if s.kind == "parquet" else bf_splits._read_jsonl_split
        i, t, b = read(s, id_type, columns)
        ids += i.to_pylist() if hasattr(i, "to_pylist") else i
        texts += t
        bad += b
    return ids, texts, bad


def test_a_dictionary_encoded_text_column_is_read_by_its_values(tmp_path):
    """What pandas writes for a `category` column: before, every row was a bad row and the file
    was committed with 0 rows."""
    pd = pytest.importorskip("pandas")
    words = ["hiring", "coffee", None, "hiring", "robots"] * 2
    pd.DataFrame({"id": range(10), "text": pd.Categorical(words)}).to_parquet(tmp_path / "cat.parquet",
                                                                              row_group_size=3)
    assert pa.types.is_dictionary(pq.read_schema(tmp_path / "cat.parquet").field("text").type)
    ids, texts, bad = _read(tmp_path / "cat.parquet")
    assert ids == [i for i in range(10) if words[i] is not None] and texts == [w for w in words if w is not None]
    assert [(b["id"], b["reason"]) for b in bad] == [(2, "`text` is null"), (7, "`text` is null")]
    pd.DataFrame({"id": pd.Categorical([f"p{i}" for i in range(4)]), "text": ["a"] * 4}).to_parquet(
        tmp_path / "cat-id.parquet")  # ids too
    assert _read(tmp_path / "cat-id.parquet", "string")[:2] == (["p0", "p1", "p2", "p3"], ["a"] * 4)


def test_an_all_null_text_column_makes_bad_rows_that_say_so(tmp_path):
    pq.write_table(pa.table({"id": [1, 2, 3], "text": pa.nulls(3)}), tmp_path / "n.parquet")
    ids, texts, bad = _read(tmp_path / "n.parquet")
    assert ids == [] and [(b["id"], b["reason"]) for b in bad] == [(i, "`text` is null") for i in (1, 2, 3)]


@pytest.mark.parametrize("column", [pa.array([1, 2], pa.int64()), pa.array([1.5, 2.5])])
def test_a_text_column_that_holds_no_text_is_refused_before_any_work(tmp_path, capsys, column):
    (tmp_path / "posts").mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["fine", "ok"]}), tmp_path / "posts" / "a.parquet")
    pq.write_table(pa.table({"id": [3, 4], "text": column}), tmp_path / "posts" / "b.parquet")
    want = rf"b.parquet': column `text` must hold strings. Given: {column.type}. Fix: cast the column to string"
    with pytest.raises(ValidationError, match=want):
        bf.backfill(tmp_path / "posts", tmp_path / "emb")
    assert not (tmp_path / "emb" / bf.STAGING).exists()  # refused before any file was started
    assert main(["backfill", "--input", str(tmp_path / "posts"), "--output", str(tmp_path / "emb")]) == 2
    assert "column `text` must hold strings" in capsys.readouterr().err


def test_uint64_ids_past_int64_are_bad_rows_as_in_jsonl(tmp_path):
    """Before, the whole file failed with a raw ArrowInvalid, on every rerun."""
    big = [1, 2 ** 63, 2 ** 64 - 1, 5]
    pq.write_table(pa.table({"id": pa.array(big, pa.uint64()), "text": ["a", "b", "c", "d"]}), tmp_path / "u.parquet")
    ids, texts, bad = _read(tmp_path / "u.parquet", "int")
    assert (ids, texts) == ([1, 5], ["a", "d"])
    assert [(b["id"], b["reason"]) for b in bad] == [(2 ** 63, INT_FIX), (2 ** 64 - 1, INT_FIX)]
    (tmp_path / "u.jsonl").write_text("".join(json.dumps({"id": i, "text": "t"}) + "\n" for i in big))
    assert [b["reason"] for b in _read(tmp_path / "u.jsonl", "int")[2]] == [INT_FIX, INT_FIX]  # the same reason
    assert _read(tmp_path / "u.parquet", "string")[0] == [str(i) for i in big]


def test_a_byte_order_mark_at_the_start_of_a_jsonl_file_is_not_part_of_row_1(tmp_path):
    rows = "".join(json.dumps({"id": i, "text": f"post {i} " + "x" * 90}) + "\n" for i in range(12))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    (tmp_path / "bom-line.jsonl").write_bytes(b"\xef\xbb\xbf\n" + rows.encode())  # a BOM alone on line 1
    for name in ("bom.jsonl", "bom-line.jsonl"):
        assert bf.plan_file(tmp_path / name, tmp_path, rows_per_split=4).splits[1:], "several splits"
        ids, texts, bad = _read(tmp_path / name, "int")
        assert (ids, bad) == (list(range(12)), []) and texts[0].startswith("post 0")
        assert bf.jsonl_rows(tmp_path / name) == 12  # the count a commit checks the parts against
    # the id type of a run comes from the first row with an id: row 1, after the mark
    (tmp_path / "mixed.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"id": 1, "text": "a"}\n{"id": "b", "text": "b"}\n')
    assert bf.plan.jsonl_first_id_type(tmp_path / "mixed.jsonl") == "int"


@pytest.mark.parametrize("where", ["inside", "equal"])
def test_an_output_inside_or_equal_to_the_input_is_refused(tmp_path, capsys, where):
    """Before, `--output in3/emb` worked once and its rerun read its own parts as input;
    `--output in3` ended in a NotADirectoryError traceback."""
    src = tmp_path / "in3"
    src.mkdir()
    pq.write_table(pa.table({"id": [1], "text": ["a"]}), src / "a.parquet")
    out = src / "emb" if where == "inside" else src
    with pytest.raises(ValidationError, match=r"`--output` .* is (inside )?the `--input` folder .*Fix: pick an "
                                              r"--output folder outside the input"):
        bf.backfill(src, out)
    assert main(["backfill", "--input", str(src), "--output", str(out)]) == 2
    assert "Fix: pick an --output folder outside" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == ["a.parquet"]  # nothing written
    with pytest.raises(ValidationError, match="is the `--input` file"):
        bf.backfill(src / "a.parquet", src / "a.parquet")
    with pytest.raises(ValidationError, match=r"`--output` .* holds the `--input` .*Fix: pick an --output folder "
                                              "apart from the input"):
        bf.backfill(src, tmp_path)
    assert not (src / "_staging").exists() and not (tmp_path / "_staging").exists()


def test_an_output_that_cannot_be_created_names_the_flag_the_value_and_the_reason(tmp_path, capsys):
    pq.write_table(pa.table({"id": [1], "text": ["a"]}), tmp_path / "a.parquet")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "emb"
    with pytest.raises(ValidationError, match=rf"`--output` '{out}' cannot be created: Not a directory "
                                              r"\(NotADirectoryError\)\. Fix: pick an --output folder"):
        bf.backfill(tmp_path / "a.parquet", out)
    assert main(["backfill", "--input", str(tmp_path / "a.parquet"), "--output", str(out)]) == 2
    assert "cannot be created: Not a directory" in capsys.readouterr().err


def test_a_batch_size_below_1_is_refused_before_any_work(tmp_path, capsys):
    """Before, Ray started and every split failed after the model loaded."""
    pq.write_table(pa.table({"id": [1], "text": ["a"]}), tmp_path / "a.parquet")
    with pytest.raises(ValidationError, match=r"`batch_size` must be >= 1\. Given: 0\."):
        bf.backfill(tmp_path / "a.parquet", tmp_path / "emb", batch_size=0)
    assert not (tmp_path / "emb").exists()
    assert main(["backfill", "--input", str(tmp_path / "a.parquet"), "--output", str(tmp_path / "emb"),
                 "--batch-size", "0"]) == 2
    assert "`--batch-size` must be >= 1. Given: 0." in capsys.readouterr().err


def test_fp16_is_refused_before_any_work_as_backfill_runs_on_cpu(tmp_path, capsys):
    """Before, the output and a staging folder were made, then the driver's warm-up failed with a fix
    (backend='torch' on CUDA) that a backfill, whose workers load the model on CPU, cannot take."""
    pq.write_table(pa.table({"id": [1], "text": ["a"]}), tmp_path / "a.parquet")
    with pytest.raises(ValidationError, match=r"`precision` 'fp16' is refused by backfill: .*CPU.*Fix: fp32, bf16 "
                                              r"or int8"):
        bf.backfill(tmp_path / "a.parquet", tmp_path / "emb", precision="fp16")
    assert not (tmp_path / "emb").exists()
    assert main(["backfill", "--input", str(tmp_path / "a.parquet"), "--output", str(tmp_path / "emb"),
                 "--precision", "fp16"]) == 2
    assert "`--precision` 'fp16' is refused by backfill" in capsys.readouterr().err


def test_a_finished_run_leaves_no_empty_staging_folder(tmp_path):
    """Every file committed already (no Ray started): the empty staging folders an interrupted
    run left are removed, the staging folder itself included; an unfinished file's are kept."""
    pq.write_table(pa.table({"id": [1], "text": ["a"]}), tmp_path / "a.parquet")
    done = tmp_path / "emb" / "a.parquet"
    done.mkdir(parents=True)
    (done / bf.SUCCESS).write_text(json.dumps({"model_version": bf.resolve_model_version("default")}))
    (tmp_path / "emb" / bf.STAGING / "sub" / "b.parquet").mkdir(parents=True)
    report = bf.backfill(tmp_path / "a.parquet", tmp_path / "emb")
    assert report.files_skipped == 1 and not (tmp_path / "emb" / bf.STAGING).exists()
    unfinished = tmp_path / "emb" / bf.STAGING / "c.parquet"
    unfinished.mkdir(parents=True)
    (unfinished / bf.part_name(0)).write_bytes(b"part")
    bf_run._remove_empty_dirs(tmp_path / "emb" / bf.STAGING)
    assert (unfinished / bf.part_name(0)).exists()


def test_an_empty_text_is_skipped_with_its_reason_and_whitespace_is_embedded(tmp_path):
    """As the HTTP server refuses "" and the near-line worker dead-letters it: no vector for it (one
    [CLS] [SEP] vector per empty post would be noise in an index); listed with its id and reason."""
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["a post", "", " "]}), tmp_path / "s.parquet")
    pq.write_table(pa.table({"id": [1, 2], "text": pa.array([b"", b"ok"], pa.binary())}), tmp_path / "b.parquet")
    (tmp_path / "j.jsonl").write_text('{"id": 1, "text": ""}\n{"id": 2, "text": "  "}\n{"id": 3, "text": "hi"}\n')
    for name, want_ids, want_texts, empty_id in (("s.parquet", [1, 3], ["a post", " "], 2),
                                                 ("b.parquet", [2], ["ok"], 1), ("j.jsonl", [2, 3], ["  ", "hi"], 1)):
        ids, texts, bad = _read(tmp_path / name)
        assert (ids, texts) == (want_ids, want_texts), name
        assert [(b["id"], b["reason"]) for b in bad] == [(empty_id, bf_splits.empty_text_reason())], name
        assert bf_splits.count_empty(bad) == 1


def test_an_interrupted_backfill_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import postemb_rt.backfill as package

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(package, "backfill", interrupted)
    assert main(["backfill", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 130
    assert ("postemb backfill: interrupted. Finished splits are kept in " + str(tmp_path / "out") + ": run the same "
            "command again to resume") in capsys.readouterr().err


# -- columns named otherwise ----------------------------------------------------------------------
def test_id_and_text_columns_named_otherwise_are_read_and_bad_rows_name_them(tmp_path):
    cols = Columns("post_id", "body")
    # an `id` column of strings beside the integer `post_id`: decide_id_type says "int" only from the right one
    pq.write_table(pa.table({"post_id": [1, 2, None, 3], "body": ["a post", None, "x", ""],
                             "id": ["not", "the", "id", "!"]}), tmp_path / "p.parquet")
    (tmp_path / "j.jsonl").write_text('{"post_id": 5, "body": "hi", "text": "not the text"}\n'
                                      '{"id": 6, "body": "no post_id"}\n{"post_id": 7, "text": "no body"}\n'
                                      '{"post_id": 8, "body": ""}\n')
    empty = "`body` is empty: nothing to embed (skipped: no vector)"  # it said `text`
    ids, texts, bad = _read(tmp_path / "p.parquet", columns=cols)
    assert (ids, texts) == ([1], ["a post"])
    assert [(b["id"], b["reason"]) for b in bad] == [(2, "`body` is null"), (None, "`post_id` is null"), (3, empty)]
    ids, texts, bad = _read(tmp_path / "j.jsonl", columns=cols)
    assert (ids, texts) == ([5], ["hi"])
    assert [(b["id"], b["reason"]) for b in bad] == [(None, "`post_id` is missing or null"),
                                                     (7, "`body` is missing or null"), (8, empty)]
    assert bf_splits.count_empty(bad) == 1  # counted as an empty text, as `text`'s reason is
    assert bf_splits.count_empty([json.dumps(b) for b in bad]) == 1  # and as a line of an errors file


def test_an_input_without_the_columns_is_refused_naming_the_options(tmp_path, capsys):
    pq.write_table(pa.table({"post_id": [1], "body": ["a"]}), tmp_path / "a.parquet")
    argv = ["backfill", "--input", str(tmp_path / "a.parquet"), "--output", str(tmp_path / "emb")]
    with pytest.raises(ValidationError, match=r"needs columns `id` and `text` \(--id-column, --text-column\)\. Given "
                                              r"columns: \['post_id', 'body'\]\. Fix: name the columns it holds"):
        bf.backfill(tmp_path / "a.parquet", tmp_path / "emb")
    assert main([*argv, "--id-column", "post_id"]) == 2
    assert "needs columns `post_id` and `text`" in capsys.readouterr().err
    for more, says in ((["--id-column", "body", "--text-column", "body"],
                        "`--id-column` and `--text-column` must name two columns. Given: 'body' for both."),
                       (["--text-column", ""], "`--text-column` must be a column name (a non-empty str). Given: ''.")):
        assert main([*argv, *more]) == 2
        assert says in capsys.readouterr().err


def test_a_resume_refuses_other_columns_than_the_output_was_read_with(tmp_path, capsys):
    """As another prompt is refused: a committed file's _SUCCESS.json, or an unfinished file's staging
    marker, names the columns; a record of a version before the options was read from `id` and `text`."""
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"post_id": [1], "body": ["a"]}), tmp_path / "in" / "a.parquet")
    done = tmp_path / "emb" / "a.parquet"
    done.mkdir(parents=True)
    meta = {"model_version": bf.resolve_model_version("default"), "id_column": "post_id", "text_column": "body"}
    (done / bf.SUCCESS).write_text(json.dumps(meta))
    pq.write_table(pa.table({"id": [2], "text": ["b"]}), tmp_path / "in" / "b.parquet")  # a new file, named plainly
    argv = ["backfill", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "emb")]
    assert main(argv) == 2
    assert ("`--id-column`: `--output` " in (err := capsys.readouterr().err) and "was read with id column 'post_id'; "
            "this run reads 'id'. One output's ids come from one column. Fix: pick a new --output folder, or run "
            "with the --id-column that wrote it." in err)
    del meta["id_column"], meta["text_column"]  # a _SUCCESS.json of before the options: `id` and `text`
    (done / bf.SUCCESS).write_text(json.dumps(meta))
    assert main([*argv, "--id-column", "post_id", "--text-column", "body"]) == 2
    assert "was read with id column 'id'; this run reads 'post_id'" in capsys.readouterr().err

    plan = bf.plan_file(tmp_path / "in" / "a.parquet", tmp_path / "in", columns=Columns("post_id", "body"))
    staging = tmp_path / "staging"
    started = bf_resume.marker(plan, "m", "fp", 10, "int", None, Columns("post_id", "body"))
    bf_resume.resume_staging(staging, started, "a.parquet")  # a new staging folder, its marker written
    (staging / bf.part_name(0)).write_bytes(b"a finished part")
    with pytest.raises(ValidationError, match=r"`--text-column`: the unfinished file 'a.parquet' .* was read with "
                                              r"text column 'body'; this run reads 'text'\. .*Fix: finish it with "
                                              r"that --text-column, or delete"):
        bf_resume.resume_staging(staging, {**started, "text_column": "text"}, "a.parquet")
    plain = bf_resume.marker(plan, "m", "fp", 10, "int")  # `id` and `text`
    old = {k: v for k, v in plain.items() if k not in ("id_column", "text_column")}
    (staging / MARKER).write_text(json.dumps(old))  # a marker of before the options
    bf_resume.resume_staging(staging, plain, "a.parquet")
    assert (staging / bf.part_name(0)).exists()  # the same run: its finished part is kept, not restarted


def test_a_jsonl_file_whose_rows_lack_a_field_altogether_is_refused_naming_the_options(tmp_path, capsys):
    """A forgotten --id-column / --text-column on JSONL: refused before any work, as a Parquet file without
    the columns is, not committed as a file whose every row is bad (which a resume with the right flags
    would then refuse to add to). A file where only some rows lack a field runs: those are bad rows."""
    (tmp_path / "in").mkdir()
    rows = [{"post_id": f"p{i}", "body": f"post {i}"} for i in range(150)]
    (tmp_path / "in" / "a.jsonl").write_text("not json\n\n" + "".join(json.dumps(r) + "\n" for r in rows))
    argv = ["backfill", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "emb")]
    assert main(argv) == 2
    assert ("needs columns `id` and `text` (--id-column, --text-column). Fields of its first 100 objects: "
            "['post_id', 'body']. Fix: name the columns it holds its ids and texts in"
            in capsys.readouterr().err)
    assert main([*argv, "--id-column", "post_id"]) == 2  # the text field still not one it uses
    assert "needs columns `post_id` and `text`" in capsys.readouterr().err
    assert not (tmp_path / "emb").exists()  # refused before the output is made
    rows[0] = {"post_id": "p0"}  # some rows without `body`, the rest with it: bad rows, not a refusal
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bf.plan.check_jsonl_fields([tmp_path / "in" / "a.jsonl"], Columns("post_id", "body"))


def test_a_lone_surrogate_in_a_jsonl_row_is_a_bad_row_not_a_split_that_never_finishes(tmp_path):
    """JSON may escape half of a UTF-16 pair ("\\ud83d", e.g. an emoji cut by a truncation): Python reads
    it as a lone surrogate, which the tokenizer and Arrow refuse. Before, one such row failed its whole
    split on every run, so the file was never committed."""
    rows = [{"id": 1, "text": "fine"}, {"id": 2, "text": "cut emoji \ud83d"}, {"id": "x\udc00", "text": "odd id"},
            {"id": 3, "text": "also fine"}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="ascii")
    ids, texts, bad = _read(tmp_path / "s.jsonl", "string")
    assert (ids, texts) == (["1", "3"], ["fine", "also fine"])
    assert [(b["id"], b["reason"]) for b in bad] == [
        ("2", "`text` holds a lone surrogate (U+D83D, half of a UTF-16 pair): not Unicode text"),
        ("x\\udc00", "`id` holds a lone surrogate (U+DC00, half of a UTF-16 pair): not Unicode text")]
    emb = bf_splits.SplitEmbedder("default", "auto", 1, 8, str(tmp_path / "out"))
    split = bf.plan_file(tmp_path / "s.jsonl", tmp_path).splits[0]
    assert emb.run_split(split) == (2, 2, 0)  # the split finishes: 2 embedded, 2 bad, 0 empty
    staged = tmp_path / "out" / bf.STAGING / "s.jsonl"
    assert pq.read_table(staged / bf.part_name(0)).column("id").to_pylist() == ["1", "3"]
    errors = [json.loads(line) for line in (staged / "_errors-00000.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["id"] for e in errors] == ["2", "x\\udc00"]


def test_invalid_utf8_in_a_parquet_string_column_is_a_bad_row_as_in_a_binary_one(tmp_path):
    """Arrow does not check a Parquet string column's bytes on read; a writer that put raw bytes there made
    `to_pylist` raise UnicodeDecodeError, failing the whole split on every run (the file never committed)."""
    raw = pa.array([b"ok", b"bad \xff\xfe", None, b"fine"], pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), null_count=raw.null_count)
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": text}), tmp_path / "u.parquet")
    ids, texts, bad = _read(tmp_path / "u.parquet")
    assert (ids, texts) == ([1, 4], ["ok", "fine"])
    assert [(b["id"], b["reason"]) for b in bad] == [(2, "`text` is not valid UTF-8"), (3, "`text` is null")]
    pq.write_table(pa.table({"id": text, "text": ["a", "b", "c", "d"]}), tmp_path / "u-id.parquet")  # ids too
    ids, texts, bad = _read(tmp_path / "u-id.parquet", "string")
    assert (ids, texts) == (["ok", "fine"], ["a", "d"])
    assert [(b["id"], b["reason"]) for b in bad] == [("bad \\xff\\xfe", "`id` is not valid UTF-8"),
                                                     (None, "`id` is null")]


def test_a_row_group_larger_than_rows_per_split_is_cut_into_splits(tmp_path):
    """pandas and pyarrow write row groups of up to 1,048,576 rows: before, such a group was one split,
    so a 1M-row file kept one worker busy for most of an hour while the others idled, and an interruption
    lost the whole of it. Groups that fit keep their plan (an interrupted run's parts stay valid)."""
    pq.write_table(pa.table({"id": list(range(25)), "text": [f"p{i}" for i in range(25)]}), tmp_path / "one.parquet")
    plan = bf.plan_file(tmp_path / "one.parquet", tmp_path, rows_per_split=8)
    assert [(s.first, s.count, s.skip, s.rows) for s in plan.splits] == [(0, 1, 0, 6), (0, 1, 6, 6), (0, 1, 12, 6),
                                                                        (0, 1, 18, 7)]
    assert _read(tmp_path / "one.parquet")[:2] == (list(range(25)), [f"p{i}" for i in range(25)])  # 4 rows a split
    # groups of 3, 20, 3, 3 rows: the small ones are packed as before, the big one cut
    writer = pq.ParquetWriter(tmp_path / "mixed.parquet", pa.schema({"id": pa.int64(), "text": pa.string()}))
    start = 0
    for n in (3, 20, 3, 3):
        writer.write_table(pa.table({"id": range(start, start + n), "text": ["t"] * n}), row_group_size=n)
        start += n
    writer.close()
    plan = bf.plan_file(tmp_path / "mixed.parquet", tmp_path, rows_per_split=8)
    assert [(s.first, s.count, s.skip, s.rows) for s in plan.splits] == [(0, 1, 0, 3), (1, 1, 0, 6), (1, 1, 6, 7),
                                                                        (1, 1, 13, 7), (2, 2, 0, 6)]
    got = [i for s in plan.splits for i in bf_splits._read_parquet_split(s, "int")[0].to_pylist()]
    assert got == list(range(29))
    # the staging marker tells a cut plan from the uncut one an older version made of the same file
    want = bf_resume.marker(plan, "v", "fp", 8, "int")
    assert want["splits"] == [[0, 1], [1, 1], [1, 1, 6], [1, 1, 13], [2, 2]]


def test_an_unreadable_input_file_s_failure_says_a_rerun_fails_on_it_until_it_is_fixed(tmp_path, capsys):
    """A 0-byte .parquet (an interrupted copy) fails every run; before, the error said only that a re-run
    retries it, with no fix, so the exit status stayed 1 run after run."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zero.parquet").write_bytes(b"")
    assert main(["backfill", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "zero.parquet: cannot read it (ArrowInvalid: Parquet file size is 0 bytes). Fix: replace it with a " \
           "readable copy, or move it out of --input: every run fails on it until then" in err


def test_a_jsonl_number_past_python_s_digit_limit_or_nesting_too_deep_is_a_bad_row(tmp_path):
    """json.loads raises a plain ValueError (not JSONDecodeError) for an integer of over 4,300 digits, and
    RecursionError for arrays nested past the stack: before, one such row, in any field, failed its split
    on every run."""
    lines = ['{"id": 1, "text": "fine"}', '{"id": 2, "text": "x", "n": ' + "9" * 5000 + "}", '{"id": 3, "text": "ok"}',
             '{"id": 4, "text": "y", "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"]
    (tmp_path / "n.jsonl").write_text("\n".join(lines) + "\n")
    ids, texts, bad = _read(tmp_path / "n.jsonl", "int")
    assert (ids, texts) == ([1, 3], ["fine", "ok"])
    assert [b["reason"][:40] for b in bad] == ["not valid JSON (Exceeds the limit (4300 ",
                                               "not valid JSON (maximum recursion depth "]


def test_a_second_run_into_an_output_another_run_writes_is_refused(tmp_path, capsys):
    """Two runs into one output (a scheduler's retry beside a run still going) each removed the other's staging
    and committed files; the second is now refused before any work, and a run ended by a refusal of its own
    leaves the output free for the next."""
    from filelock import FileLock

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [1], "text": ["a post"]}), tmp_path / "in" / "a.parquet")
    out = tmp_path / "emb"
    argv = ["backfill", "--input", str(tmp_path / "in"), "--output", str(out)]
    out.mkdir()
    other = FileLock(out / bf_run.LOCK_NAME)
    other.acquire(timeout=0)  # the run still going (another process holds it the same way)
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"`--output` {str(out)!r} is being written by another backfill" in err and "Fix: wait" in err, err
        assert not (out / bf.STAGING).exists()  # nothing touched
    finally:
        other.release()
    done = out / "a.parquet"
    done.mkdir()
    (done / bf.SUCCESS).write_text(json.dumps({"model_version": "another-model"}))
    assert main(argv) == 2 and "holds embeddings of model 'another-model'" in capsys.readouterr().err
    free = FileLock(out / bf_run.LOCK_NAME)
    free.acquire(timeout=0)  # released by the refused run
    free.release()


def test_files_of_another_suffix_beside_the_inputs_are_named_in_a_warning_not_read_silently(tmp_path, caplog):
    """A folder of .jsonl files with a .jsonl.gz among them: the .gz is not read (one format, uncompressed),
    and a warning says how many such files were left and names one; ``_``/``.``-prefixed names (Spark's
    _SUCCESS, editors' .swp) are skipped without a word, as before."""
    for name in ("a.jsonl", "sub/b.jsonl", "c.jsonl.gz", "notes.txt", "_SUCCESS", ".a.jsonl.swp", "_tmp/d.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('{"id": 1, "text": "x"}\n')
    with caplog.at_level("WARNING", logger="postemb_rt.backfill"):
        root, files = bf.list_inputs(tmp_path)
    assert (root, [p.relative_to(tmp_path).as_posix() for p in files]) == (tmp_path, ["a.jsonl", "sub/b.jsonl"])
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"2 file(s) under {tmp_path} are not .parquet or .jsonl and are not read (e.g. c.jsonl.gz)")
    caplog.clear()
    for name in ("c.jsonl.gz", "notes.txt"):
        (tmp_path / name).unlink()
    with caplog.at_level("WARNING", logger="postemb_rt.backfill"):
        assert len(bf.list_inputs(tmp_path)[1]) == 2
    assert not caplog.records
