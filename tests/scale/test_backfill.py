"""``postemb_rt.backfill`` on Ray Data: rows, ids and vectors, bad rows, resuming without duplicates.

The splitting and reading of files is tested without Ray (fast); the end-to-end runs use
a local Ray with 2 CPUs (``ray_local``) and the shipped default model.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from postemb_rt.errors import ValidationError
from tests.conftest import assert_exact
from tests.scale.conftest import POSTS, prompted_model

pa = pytest.importorskip("pyarrow")
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from postemb_rt import backfill as bf  # noqa: E402
from postemb_rt.backfill import run as bf_run, splits as bf_splits  # noqa: E402


def write_parquet_set(folder, n_files=3, rows_per_group=5):
    """n_files Parquet files under folder/ (one in a subfolder), several row groups each; ids
    are globally unique strings. Returns {id: text}."""
    truth = {}
    per = len(POSTS) // n_files
    for f in range(n_files):
        texts = POSTS[f * per:(f + 1) * per]
        ids = [f"f{f}-{i}" for i in range(len(texts))]
        truth.update(zip(ids, texts))
        path = folder / ("sub" if f == 0 else "") / f"posts-{f}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=rows_per_group)
    return truth


def read_output(out):
    t = pads.dataset(str(out), format="parquet").to_table()
    return t.column("id").to_pylist(), np.array(t.column("embedding").to_pylist(), np.float32), t


# -- without Ray ----------------------------------------------------------------------------
def test_parquet_splits_follow_row_groups_and_cover_every_row(tmp_path):
    pq.write_table(pa.table({"id": list(range(23)), "text": ["x"] * 23}), tmp_path / "a.parquet", row_group_size=5)
    plan = bf.plan_file(tmp_path / "a.parquet", tmp_path, rows_per_split=8)
    # row groups of 5,5,5,5,3 rows; a split closes once it holds >= 8 rows
    assert [(s.first, s.count, s.rows) for s in plan.splits] == [(0, 2, 10), (2, 2, 10), (4, 1, 3)]
    ids = [i for s in plan.splits for i in bf_splits._read_parquet_split(s, "int")[0].to_pylist()]
    assert ids == list(range(23))


def test_jsonl_byte_splits_read_every_line_exactly_once(tmp_path):
    lines = [json.dumps({"id": i, "text": POSTS[i % len(POSTS)] * (1 + i % 3)}, ensure_ascii=False) for i in range(60)]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines[:30]) + "\n\n   \n" + "\n".join(lines[30:]), encoding="utf-8")  # no final newline
    plan = bf.plan_file(path, tmp_path, rows_per_split=1)  # 200-byte splits: boundaries fall mid-line
    assert len(plan.splits) > 20
    got = []
    for s in plan.splits:
        ids, texts, bad = bf_splits._read_jsonl_split(s, "int")
        assert bad == []
        got += ids
    assert got == list(range(60))


def test_bad_parquet_rows_are_reported_not_embedded(tmp_path):
    pq.write_table(pa.table({"id": ["a", None, "c", "d"], "text": ["ok", "no id", None, "fine"]}), tmp_path / "b.parquet")
    (s,) = bf.plan_file(tmp_path / "b.parquet", tmp_path).splits
    ids, texts, bad = bf_splits._read_parquet_split(s, "string")
    assert ids.to_pylist() == ["a", "d"] and texts == ["ok", "fine"]
    assert [(b["id"], b["reason"]) for b in bad] == [(None, "`id` is null"), ("c", "`text` is null")]


def test_inputs_are_checked_before_any_work(tmp_path):
    (tmp_path / "mixed").mkdir()
    pq.write_table(pa.table({"id": [1], "text": ["a"]}), tmp_path / "mixed" / "a.parquet")
    (tmp_path / "mixed" / "b.jsonl").write_text('{"id": 1, "text": "b"}\n')
    with pytest.raises(ValidationError, match="mixes .parquet and .jsonl"):
        bf.backfill(tmp_path / "mixed", tmp_path / "out")
    pq.write_table(pa.table({"post": [1], "text": ["a"]}), tmp_path / "noid.parquet")
    with pytest.raises(ValidationError, match=r"needs columns `id` and `text` \(--id-column, --text-column\)\. Given "
                                              r"columns: \['post', 'text'\]\. Fix: name the columns it holds its ids "):
        bf.backfill(tmp_path / "noid.parquet", tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match=r"`--input` '.*nowhere' does not exist\. Fix: give a folder of "
                                                r"\.parquet or \.jsonl files, or one such file"):
        bf.backfill(tmp_path / "nowhere", tmp_path / "out3")
    (tmp_path / "out4" / "x.parquet").mkdir(parents=True)
    (tmp_path / "out4" / "x.parquet" / bf.SUCCESS).write_text(json.dumps({"model_version": "other-model"}))
    with pytest.raises(ValidationError, match="'other-model'.*Fix: pick a new --output"):
        bf.backfill(tmp_path / "mixed" / "a.parquet", tmp_path / "out4")
    with pytest.raises(ValidationError, match="'auto' is refused by backfill.*Fix: name one precision"):
        bf.backfill(tmp_path / "mixed" / "a.parquet", tmp_path / "out5", precision="auto")  # one version per output
    assert not (tmp_path / "out5").exists()


def test_unreadable_file_fails_alone_and_is_named(tmp_path, capsys):
    (tmp_path / "posts").mkdir()
    (tmp_path / "posts" / "broken.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(bf.BackfillError, match=r"1 file\(s\) failed.*broken.parquet: cannot read it") as exc:
        bf.backfill(tmp_path / "posts", tmp_path / "emb")
    assert exc.value.report.files_failed == 1 and exc.value.report.files_committed == 0
    assert not (tmp_path / "emb" / "broken.parquet").exists()
    from postemb_rt.cli import main

    assert main(["backfill", "--input", str(tmp_path / "posts"), "--output", str(tmp_path / "emb")]) == 1
    out, err = capsys.readouterr()
    assert "0 committed, 0 skipped (done before), 1 failed" in out and "broken.parquet: cannot read it" in err


# -- on Ray -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backfilled(tmp_path_factory, ray_local):
    """One finished backfill of write_parquet_set (3 files, 2 workers, splits of 8 rows): (input folder,
    output folder, {id: text}, report). Tests only read it, or change a copy (shutil.copytree keeps mtimes)."""
    root = tmp_path_factory.mktemp("backfilled")
    truth = write_parquet_set(root / "posts")
    report = bf.backfill(root / "posts", root / "emb", num_workers=2, rows_per_split=8)
    return root / "posts", root / "emb", truth, report


def test_backfill_output_rows_ids_and_vectors_match_encode(backfilled, default_encoder):
    _, emb, truth, report = backfilled
    assert (report.files_committed, report.rows_embedded, report.rows_bad) == (3, len(truth), 0)
    assert report.splits_run > 3 and report.workers == 2
    ids, vectors, table = read_output(emb)
    assert sorted(ids) == sorted(truth) and len(ids) == len(truth)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 50)
    assert set(table.column("model_version").to_pylist()) == {default_encoder.model_version}
    expected = default_encoder.encode([truth[i] for i in ids])
    assert_exact(vectors, expected)
    # the output mirrors the input tree, one folder per input file, each with its counts
    meta = json.loads((emb / "sub" / "posts-0.parquet" / bf.SUCCESS).read_text())
    assert meta["rows"] == len(POSTS) // 3 and meta["bad_rows"] == 0
    assert not (emb / bf.STAGING).exists()  # an empty staging folder is removed at the end


def test_cli_backfill_jsonl_sends_bad_rows_to_errors_file_with_reason(tmp_path, ray_local, capsys):
    from postemb_rt.cli import main

    src = tmp_path / "posts"
    src.mkdir()
    good = [{"id": i, "text": POSTS[i]} for i in range(6)]
    lines = [json.dumps(g) for g in good[:3]] + [
        json.dumps({"id": 100, "text": None}),
        json.dumps({"id": 101, "text": 5}),
        "this is not json",
        json.dumps({"text": "no id"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"id": 103, "text": ""}),  # an empty post: skipped, counted apart from the bad rows
    ] + [json.dumps(g) for g in good[3:]]
    data = "\n".join(lines).encode() + b'\n{"id": 102, "text": "bad \xff byte"}\n'
    (src / "a.jsonl").write_bytes(data)
    assert main(["backfill", "--input", str(src), "--output", str(tmp_path / "emb"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "backfilled 6 posts" in printed and "bad rows: 6" in printed and "_errors-00000.jsonl" in printed
    assert "empty texts skipped: 1" in printed
    meta = json.loads((tmp_path / "emb" / "a.jsonl" / bf.SUCCESS).read_text())
    assert (meta["rows"], meta["bad_rows"], meta["empty_rows"]) == (6, 6, 1)
    ids, vectors, _ = read_output(tmp_path / "emb")
    assert sorted(ids) == list(range(6))
    errors = [json.loads(x) for x in (tmp_path / "emb" / "a.jsonl" / "_errors-00000.jsonl").read_text().splitlines()]
    reasons = {e["reason"] for e in errors}
    assert reasons == {"`text` is missing or null", "`text` must be a string. Given: int",
                       "not valid JSON (Expecting value)", "`id` is missing or null",
                       "must be a JSON object. Given: list", "line is not valid UTF-8", bf_splits.empty_text_reason()}
    assert {e["id"] for e in errors if e["id"] is not None} == {100, 101, 103}
    assert all(isinstance(e["byte"], int) for e in errors)
    # the same command again: nothing to do, nothing written
    assert main(["backfill", "--input", str(src), "--output", str(tmp_path / "emb"), "--no-progress"]) == 0
    second = capsys.readouterr().out
    assert "backfilled 0 posts" in second and "0 committed, 1 skipped" in second


def test_rerun_after_interruption_skips_finished_files_and_writes_no_duplicates(tmp_path, ray_local):
    truth = write_parquet_set(tmp_path / "posts", n_files=4, rows_per_group=3)

    class Interrupt(Exception):
        pass

    def stop_after_first_commit(row, report):
        if report.files_committed >= 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3,
                    on_split=stop_after_first_commit)
    done = sorted(p.parent for p in (tmp_path / "emb").rglob(bf.SUCCESS))
    assert 1 <= len(done) < 4
    first_parts = {p: p.stat().st_mtime_ns for d in done for p in d.glob("part-*.parquet")}

    started = []  # on_start: once, before any split, with the rows left (a progress bar's total)
    report = bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=2, rows_per_split=3,
                         on_start=lambda r: started.append((r.rows_planned, r.splits_run)))
    assert report.files_skipped == len(done) and report.files_committed == 4 - len(done)
    assert started == [(report.rows_embedded + report.rows_bad + report.rows_empty, 0)]
    assert 0 < started[0][0] < len(truth)  # the rows of the splits left, not of the whole input
    ids, _, _ = read_output(tmp_path / "emb")
    assert len(ids) == len(set(ids)) == len(truth) and set(ids) == set(truth)
    assert {p: p.stat().st_mtime_ns for p in first_parts} == first_parts  # finished files untouched

    again = bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=2, rows_per_split=3)
    assert (again.files_skipped, again.splits_run, again.rows_embedded) == (4, 0, 0)
    assert sorted(read_output(tmp_path / "emb")[0]) == sorted(ids)


def test_changed_input_file_is_not_silently_reembedded(tmp_path, backfilled, caplog):
    import shutil

    src, emb, _, _ = backfilled
    shutil.copytree(src, tmp_path / "posts")  # a copy of a finished backfill, every mtime as it was embedded
    shutil.copytree(emb, tmp_path / "emb")
    path = tmp_path / "posts" / "sub" / "posts-0.parquet"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    report = bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1)
    assert report.files_skipped == 3 and report.splits_run == 0  # the changed file as well as the other two
    assert "changed since it was embedded" in caplog.text


# -- resuming safely: the model, the split plan, the row count, durable commits ---------------
class Interrupt(Exception):
    pass


def _stop_at_first_split(row, report):
    raise Interrupt


def test_jsonl_commit_checks_the_row_count_against_the_input(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": POSTS[i]}) + "\n" for i in range(5)) + "\n  \n")
    assert bf.jsonl_rows(src) == 5  # blank lines are not rows, as the split reader skips them
    plan = bf.plan_file(src, tmp_path)
    staging = tmp_path / "out" / bf.STAGING / plan.rel
    staging.mkdir(parents=True)
    vectors = np.ones((4, 50), np.float32)  # a part that lost a row
    pq.write_table(bf.embeddings_table([0, 1, 2, 3], vectors, "m", "int"), staging / bf.part_name(0))
    with pytest.raises(bf.BackfillError, match=r"4 embedded \+ 0 bad rows \+ 0 empty texts != 5 input rows"):
        bf_run._commit(tmp_path / "out", plan, bf.BackfillReport(model_version="m"))
    assert not (tmp_path / "out" / plan.rel).exists()
    # the fifth row was an empty text: listed in the errors file, it makes the count add up, counted apart
    record = {"byte": 0, "id": 4, "reason": bf_splits.empty_text_reason(), "split": 0}
    (staging / "_errors-00000.jsonl").write_text(json.dumps(record) + "\n")
    bf_run._commit(tmp_path / "out", plan, bf.BackfillReport(model_version="m"))
    meta = json.loads((tmp_path / "out" / plan.rel / bf.SUCCESS).read_text())
    assert (meta["rows"], meta["bad_rows"], meta["empty_rows"]) == (4, 0, 1)


def test_resume_with_another_model_is_refused_naming_both(tmp_path, ray_local):
    write_parquet_set(tmp_path / "posts", n_files=1, rows_per_group=3)
    with pytest.raises(Interrupt):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", "default", num_workers=1, rows_per_split=3,
                    on_split=_stop_at_first_split)
    default_v = bf.resolve_model_version("default")
    with pytest.raises(ValidationError, match=rf"started with model '{default_v}'.*this run uses "
                                              r"'all-MiniLM-L6-v2'.*Fix: finish it with the first run's --model, "
                                              r"--precision"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", "base", num_workers=1, rows_per_split=3)
    report = bf.backfill(tmp_path / "posts", tmp_path / "emb", "default", num_workers=1, rows_per_split=3)
    assert report.splits_reused >= 1 and report.files_committed == 1
    meta = json.loads((tmp_path / "emb" / "sub" / "posts-0.parquet" / bf.SUCCESS).read_text())
    assert meta["model_version"] == default_v and meta["model_fingerprint"] == report.model_fingerprint
    ids, _, t = read_output(tmp_path / "emb")
    assert len(ids) == len(set(ids)) == len(POSTS) // 1 and set(t.column("model_version").to_pylist()) == {default_v}


def test_changed_rows_per_split_restarts_a_jsonl_file_no_row_lost_or_doubled(tmp_path, ray_local, caplog):
    src = tmp_path / "posts"
    src.mkdir()
    # 1100 bytes: rows_per_split 3 (600-byte splits) and 4 (800-byte splits) both make 2 splits,
    # with different byte ranges
    rows = [{"id": i, "text": f"post {i}: " + "x" * 80} for i in range(10)]  # 110 bytes each
    (src / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    size = (src / "a.jsonl").stat().st_size
    assert len(bf.plan_file(src / "a.jsonl", src, 3).splits) == len(bf.plan_file(src / "a.jsonl", src, 4).splits) == 2, size
    with pytest.raises(Interrupt):
        bf.backfill(src, tmp_path / "emb", num_workers=1, rows_per_split=3, on_split=_stop_at_first_split)
    staging = tmp_path / "emb" / bf.STAGING / "a.jsonl"
    (staging / bf.part_name(1)).unlink(missing_ok=True)  # the interruption came after split 0 only
    assert (staging / bf.part_name(0)).exists()
    report = bf.backfill(src, tmp_path / "emb", num_workers=1, rows_per_split=4)
    assert report.files_committed == 1 and report.splits_reused == 0 and report.rows_embedded == 10
    assert "the split plan or id type changed" in caplog.text
    ids, _, _ = read_output(tmp_path / "emb")
    assert sorted(ids) == list(range(10))  # the old plan's split 0 + the new split 1 would miss rows 6 and 7


def test_backfill_on_a_two_node_ray_cluster_survives_a_killed_worker_node(tmp_path):
    """A real two-node cluster (``ray.cluster_utils.Cluster``: separate head and worker raylets
    on 127.0.0.1), the worker node SIGKILLed after the first split; the run, or its rerun,
    commits every file with every row exactly once. See ray_cluster_backfill.py."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("ray.cluster_utils", reason="ray is not installed (pip install -e '.[scale]')")
    truth = write_parquet_set(tmp_path / "posts", n_files=3, rows_per_group=3)
    script = Path(__file__).with_name("ray_cluster_backfill.py")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), RAY_USAGE_STATS_ENABLED="0")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "posts"), str(tmp_path / "emb")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["killed"] and summary["workers"] == 2, summary
    assert summary["committed"] == 3, summary
    ids, _, _ = read_output(tmp_path / "emb")
    assert len(ids) == len(set(ids)) == len(truth) and set(ids) == set(truth)


# -- one id type per output, decided before any work ----------------------------------------
def test_mixed_parquet_id_types_are_refused_before_any_work(tmp_path):
    (tmp_path / "posts").mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), tmp_path / "posts" / "a.parquet")
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["c", "d"]}), tmp_path / "posts" / "b.parquet")
    with pytest.raises(ValidationError, match=r"mixes integer ids .*a.parquet\) and string ids .*b.parquet\).*"
                                              r"Fix: --id-type string"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb")
    assert not (tmp_path / "emb" / bf.STAGING).exists()  # refused before any file was started
    files = sorted((tmp_path / "posts").iterdir())
    assert bf_run.decide_id_type(files, tmp_path / "emb", "string") == "string"
    with pytest.raises(ValidationError, match=r"b.parquet' has string ids, but this output's ids are integers"):
        bf_run.decide_id_type(files, tmp_path / "emb", "int")
    pq.write_table(pa.table({"id": [1.5], "text": ["a"]}), tmp_path / "posts" / "b.parquet")
    with pytest.raises(ValidationError, match=r"column `id` must hold integers or strings. Given: double. Fix:"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb2")


def test_an_output_keeps_the_id_type_it_was_committed_with(tmp_path):
    (tmp_path / "posts").mkdir()
    (tmp_path / "posts" / "a.jsonl").write_text('{"id": "s1", "text": "a"}\n{"id": 2, "text": "b"}\n')
    files = [tmp_path / "posts" / "a.jsonl"]
    assert bf_run.decide_id_type(files, tmp_path / "emb", "auto") == "string"  # the first id's type
    done = tmp_path / "emb" / "old.jsonl"
    done.mkdir(parents=True)
    (done / bf.SUCCESS).write_text(json.dumps({"model_version": "m", "id_type": "int"}))
    assert bf_run.decide_id_type(files, tmp_path / "emb", "auto") == "int"
    with pytest.raises(ValidationError, match=r"`--id-type` 'string'.*already holds int ids.*Fix: --id-type int"):
        bf_run.decide_id_type(files, tmp_path / "emb", "string")
    (done / bf.SUCCESS).write_text(json.dumps({"model_version": "m"}))  # an older output: from a part's schema
    pq.write_table(bf.embeddings_table(["a"], np.ones((1, 4), np.float32), "m", "string"), done / bf.part_name(0))
    assert bf_run.decide_id_type(files, tmp_path / "emb", "auto") == "string"


def test_jsonl_ids_are_cast_to_the_output_type(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in
                            [{"id": 1, "text": "a"}, {"id": "x", "text": "b"}, {"id": 2 ** 63, "text": "c"}]))
    (s,) = bf.plan_file(path, tmp_path).splits
    ids, texts, bad = bf_splits._read_jsonl_split(s, "string")
    assert ids == ["1", "x", str(2 ** 63)] and bad == []
    ids, texts, bad = bf_splits._read_jsonl_split(s, "int")
    assert ids == [1] and texts == ["a"]
    assert [b["id"] for b in bad] == ["x", 2 ** 63]
    assert all("Fix: embed this input into a new --output with --id-type string" in b["reason"] for b in bad)
    empty = bf.embeddings_table([], np.zeros((0, 50), np.float32), "m", "int")  # a part with no good rows
    assert empty.schema.field("id").type == pa.int64()


def test_every_backfill_output_loads_in_the_index(tmp_path, ray_local):
    """A split with no good rows, and int and string ids across files: before, the first made
    a part with `id: null` and the second parts of two types, and the index could not read them."""
    from postemb_rt.retrieval.index import PostIndex

    src = tmp_path / "posts"
    src.mkdir()
    good = [json.dumps({"id": i, "text": POSTS[i]}) for i in range(3)]
    garbage = ["this line is not json " + "x" * 120] * 4  # > 200 bytes: a whole split of bad rows
    (src / "a.jsonl").write_text("\n".join(good + garbage + [json.dumps({"id": 7, "text": POSTS[7]})]) + "\n")
    (src / "b.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "text": POSTS[i]}) + "\n" for i in range(2)))
    report = bf.backfill(src, tmp_path / "emb", num_workers=1, rows_per_split=1, id_type="string")
    assert report.files_committed == 2 and report.rows_bad == 4 and report.id_type == "string"
    idx = PostIndex.from_parquet(tmp_path / "emb")
    assert sorted(idx.ids) == ["0", "1", "2", "7", "s0", "s1"]
    assert json.loads((tmp_path / "emb" / "a.jsonl" / bf.SUCCESS).read_text())["id_type"] == "string"


def test_vectors_carry_the_vector_version_and_a_resume_cannot_mix_long_post_modes(tmp_path, ray_local):
    write_parquet_set(tmp_path / "posts", n_files=1, rows_per_group=3)
    chunk_v = bf.resolve_model_version("default", long_posts="chunk")
    assert chunk_v == bf.resolve_model_version("default") + "+chunk"
    with pytest.raises(Interrupt):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3, long_posts="chunk",
                    on_split=_stop_at_first_split)
    with pytest.raises(ValidationError, match=rf"started with model '{re.escape(chunk_v)}'.*this run uses "
                                              rf"'{re.escape(bf.resolve_model_version('default'))}'"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3)
    report = bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3, long_posts="chunk")
    assert report.model_version == chunk_v and report.files_committed == 1
    assert set(read_output(tmp_path / "emb")[2].column("model_version").to_pylist()) == {chunk_v}


def test_a_nested_prefix_is_written_under_its_own_version_and_a_resume_cannot_mix_dims(tmp_path, ray_local,
                                                                                      default_encoder):
    """truncate_dim=16 on default (v4, nested 32/16/8): 16-d vectors equal to encode(truncate_dim=16),
    version "<model>@16"; resuming that output at the full dim is refused; an undeclared dim too."""
    truth = write_parquet_set(tmp_path / "posts", n_files=1, rows_per_group=3)
    v16 = bf.resolve_model_version("default", truncate_dim=16)
    assert v16 == bf.resolve_model_version("default") + "@16" == default_encoder.model_version + "@16"
    with pytest.raises(Interrupt):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3, truncate_dim=16,
                    on_split=_stop_at_first_split)
    with pytest.raises(ValidationError, match=rf"started with model '{re.escape(v16)}'.*--truncate-dim"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3)
    report = bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3, truncate_dim=16)
    assert report.model_version == v16 and report.files_committed == 1
    ids, vectors, table = read_output(tmp_path / "emb")
    assert set(table.column("model_version").to_pylist()) == {v16} and vectors.shape == (len(truth), 16)
    assert_exact(vectors, default_encoder.encode([truth[i] for i in ids], truncate_dim=16))
    with pytest.raises(ValidationError, match=r"`truncate_dim` must be one of .*\[8, 16, 32, 50\].*Given: 12"):
        bf.backfill(tmp_path / "posts", tmp_path / "other", num_workers=1, truncate_dim=12)


# -- prompts --------------------------------------------------------------------------------
def test_unknown_prompt_name_is_refused_before_any_work_listing_the_prompts(tmp_path):
    write_parquet_set(tmp_path / "posts", n_files=1)
    with pytest.raises(ValidationError, match=r"`prompt_name` must be one of this model's prompts "
                                              r"\['document', 'passage', 'query'\]\. Given: 'nope'\. "
                                              r"Fix: use one of those, or leave --prompt-name out\.$"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", str(prompted_model(tmp_path)), prompt_name="nope")
    assert not (tmp_path / "emb").exists()


def test_prompt_name_embeds_every_post_is_recorded_and_a_resume_cannot_mix_prompts(tmp_path, ray_local):
    from postemb_rt import Encoder

    truth = write_parquet_set(tmp_path / "posts", n_files=1, rows_per_group=3)
    model = str(prompted_model(tmp_path))
    with pytest.raises(Interrupt):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", model, num_workers=1, rows_per_split=3,
                    prompt_name="query", on_split=_stop_at_first_split)
    # no --prompt-name: the model's default prompt ('passage'), not the 'query' the parts were made with
    with pytest.raises(ValidationError, match=r"`--prompt-name`: the unfinished file .* was embedded with prompt "
                                              r"'query'; this run uses 'passage'.*Fix: finish it with that"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", model, num_workers=1, rows_per_split=3)
    report = bf.backfill(tmp_path / "posts", tmp_path / "emb", model, num_workers=1, rows_per_split=3,
                         prompt_name="query")
    assert report.splits_reused >= 1 and report.files_committed == 1 and report.prompt_name == "query"
    meta = json.loads((tmp_path / "emb" / "sub" / "posts-0.parquet" / bf.SUCCESS).read_text())
    assert meta["prompt_name"] == "query"
    ids, vectors, _ = read_output(tmp_path / "emb")
    with Encoder.from_pretrained(model, device="cpu") as enc:
        texts = [truth[i] for i in ids]
        assert_exact(vectors, enc.encode(texts, prompt_name="query"))
        assert not np.allclose(vectors, enc.encode(texts), atol=1e-3)  # the prompt changed the vectors
    with pytest.raises(ValidationError, match=r"`--prompt-name`: `--output` .* was embedded with prompt 'query'; "
                                              r"this run uses 'passage'.*Fix: pick a new --output folder"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", model, num_workers=1, prompt_name="passage")


# -- other column names ------------------------------------------------------------------------
def test_columns_named_otherwise_are_embedded_recorded_and_a_resume_cannot_mix_them(tmp_path, ray_local, capsys,
                                                                                    default_encoder):
    from postemb_rt.cli import main

    texts = POSTS[:9]
    ids = [f"post-{i}" for i in range(len(texts))]
    (tmp_path / "posts").mkdir()
    # `id` and `text` are there too, and are not what the run is asked to read
    pq.write_table(pa.table({"post_id": ids, "body": texts, "id": list(range(9)), "text": ["decoy"] * 9}),
                   tmp_path / "posts" / "p.parquet", row_group_size=3)
    with pytest.raises(Interrupt):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3, id_column="post_id",
                    text_column="body", on_split=_stop_at_first_split)
    with pytest.raises(ValidationError, match=r"`--id-column`: the unfinished file 'p.parquet' .* was read with id "
                                              r"column 'post_id'; this run reads 'id'\..*Fix: finish it with that "
                                              r"--id-column, or delete that staging folder"):
        bf.backfill(tmp_path / "posts", tmp_path / "emb", num_workers=1, rows_per_split=3)
    argv = ["backfill", "--input", str(tmp_path / "posts"), "--output", str(tmp_path / "emb"), "--num-workers", "1",
            "--rows-per-split", "3", "--no-progress"]
    assert main([*argv, "--id-column", "post_id", "--text-column", "body"]) == 0
    ran, reused = map(int, re.search(r"splits: (\d+) run, (\d+) reused", capsys.readouterr().out).groups())
    assert reused >= 1 and ran + reused == 3  # the parts read from `body` were kept
    got_ids, vectors, _ = read_output(tmp_path / "emb")
    assert got_ids == ids
    assert_exact(vectors, default_encoder.encode(texts))
    meta = json.loads((tmp_path / "emb" / "p.parquet" / bf.SUCCESS).read_text())
    assert (meta["id_column"], meta["text_column"], meta["rows"]) == ("post_id", "body", 9)
    assert main([*argv, "--id-column", "post_id"]) == 2  # the committed file was read from `body`
    assert ("`--text-column`: `--output` " in (err := capsys.readouterr().err)
            and "was read with text column 'body'; this run reads 'text'" in err
            and "Fix: pick a new --output folder, or run with the --text-column that wrote it." in err)


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_datas_expected_chatter_is_kept_from_the_console(verbose, monkeypatch):
    """Ray Data's INFO lines (shown with ``postemb -v``) and its "Progress bars disabled" notice
    are dropped while a backfill runs its dataset; its warnings still show, and nothing is left
    changed afterwards."""
    import logging

    from postemb_rt.backfill import ray_setup

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    data, handler = logging.getLogger("ray.data"), Keep(level=logging.DEBUG)
    data.addHandler(handler)
    monkeypatch.setattr(data, "level", logging.DEBUG)  # Ray Data's own setting: everything to its file log
    monkeypatch.setattr(ray_setup.log, "level", logging.INFO if verbose else logging.WARNING)
    executor, progress = (logging.getLogger(f"ray.data._internal.{m}") for m in ("execution.streaming_executor",
                                                                                 "progress"))

    class Dataset:  # logs as Ray Data's does once it runs, i.e. when iterated
        def iter_rows(self):
            executor.info("Execution plan of Dataset ...")
            progress.warning("Progress bars disabled. To enable, set ...")
            executor.warning("a real warning")
            yield {"rel": "a.jsonl"}

    try:
        assert list(ray_setup.rows(Dataset())) == [{"rel": "a.jsonl"}]
        executor.info("after the run")
    finally:
        data.removeHandler(handler)
    during = (["Execution plan of Dataset ..."] if verbose else []) + ["a real warning"]
    assert seen == during + ["after the run"] and data.level == logging.DEBUG and not progress.filters
