"""Backfill under a full disk: a 2 MB tmpfs (mounted here; needs root, which CI has) holds the
output and is filled up after the first finished split. The run must fail with an error that
says so and what to do, commit nothing partial or corrupt, leave no temporary file, and a
re-run after space is freed must finish every file with every row exactly once. And stopped by
SIGTERM (a scheduler's stop): as by Ctrl-C, then resumed by the same command. And given relative
paths, which the actors (another working directory) must not read against their own."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.scale.conftest import POSTS
from tests.scale.test_backfill import read_output, write_parquet_set

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from postemb_rt import backfill as bf  # noqa: E402


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs at tmp_path/disk, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"mount -t tmpfs failed as root: {res.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(path) -> None:
    """Write ``path`` until the file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def committed_folders(out):
    return {p.parent for p in out.rglob(bf.SUCCESS) if bf.STAGING not in p.relative_to(out).parts}


def assert_committed_output_is_whole(out):
    """Every output folder outside _staging has _SUCCESS.json and exactly the rows it counts;
    no temporary file anywhere."""
    assert not [p for p in out.rglob(".tmp-*")], "a temporary file was left behind"
    for part in out.rglob("part-*.parquet"):
        if bf.STAGING in part.relative_to(out).parts:
            continue
        assert (part.parent / bf.SUCCESS).exists(), f"{part} is visible without a commit"
    for folder in committed_folders(out):
        meta = json.loads((folder / bf.SUCCESS).read_text())
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("part-*.parquet"))
        assert rows == meta["rows"], folder


def test_a_full_disk_fails_clearly_commits_nothing_partial_and_a_rerun_finishes(tmp_path, small_disk, ray_local):
    from postemb_rt.retrieval.index import PostIndex

    truth = write_parquet_set(tmp_path / "posts", n_files=3, rows_per_group=3)
    out, filler = small_disk / "emb", small_disk / "filler"

    def fill_after_first_split(row, report):
        if not filler.exists():
            fill(filler)

    with pytest.raises(bf.BackfillError, match=r"no space left on the output's file system.*Fix: free space") as exc:
        bf.backfill(tmp_path / "posts", out, num_workers=1, rows_per_split=3, on_split=fill_after_first_split)
    first = exc.value.report
    assert first.files_failed >= 1 and first.files_committed + first.files_failed == 3
    assert_committed_output_is_whole(out)
    done = committed_folders(out)
    if done:  # what was committed before the disk filled up is readable as it is
        assert len(PostIndex.from_parquet(out)) == sum(json.loads((d / bf.SUCCESS).read_text())["rows"] for d in done)

    filler.unlink()  # space freed: the same command finishes the rest
    report = bf.backfill(tmp_path / "posts", out, num_workers=1, rows_per_split=3)
    assert report.files_skipped == len(done) and report.files_committed == 3 - len(done)
    assert_committed_output_is_whole(out)
    ids, _, _ = read_output(out)
    assert len(ids) == len(set(ids)) == len(truth) and set(ids) == set(truth)
    assert len(PostIndex.from_parquet(out)) == len(POSTS) // 3 * 3


def test_sigterm_stops_a_backfill_as_ctrl_c_does_and_the_same_command_resumes(tmp_path, ray_local):
    """``postemb backfill`` sent SIGTERM mid-run (a scheduler's stop, ``kill``): it says it was interrupted
    and how to resume, and exits 130 as on Ctrl-C, not with Ray's handlers (``sys.exit(15)`` and a
    stack trace from its C++ core, which then aborts the process 3 s later); the same run then
    commits every row exactly once, reusing the splits finished before the signal."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    # ~30 splits of one or two rows (200 bytes each): seconds of work after the first, for the signal to land in,
    # and few for the resume to run (200 rows, ~150 splits, made the resume most of the test's time)
    n = 40
    (inp / "p.jsonl").write_text("".join(json.dumps({"id": i, "text": f"{POSTS[i % len(POSTS)]} #{i}"}) + "\n"
                                         for i in range(n)))
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(root),
                                                                          "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "postemb_rt.cli", "backfill", "--input", str(inp), "--output",
                             str(out), "--num-workers", "1", "--rows-per-split", "1", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 300
        while not list((out / bf.STAGING / "p.jsonl").glob("part-*.parquet")):  # Ray runs: a split is done
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before a split was done"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert f"postemb backfill: interrupted. Finished splits are kept in {out}: run the same command again" in err
    assert "SIGTERM received" not in err and "Traceback" not in err, err[-3000:]
    assert not (out / "p.jsonl" / bf.SUCCESS).exists()  # stopped before the end
    report = bf.backfill(inp, out, num_workers=1, rows_per_split=1)
    assert report.splits_reused >= 1 and report.files_committed == 1
    ids, _, _ = read_output(out)
    assert sorted(ids) == list(range(n))


def test_relative_paths_mean_the_driver_s_folder_not_each_actor_s(tmp_path, ray_local, monkeypatch):
    """Ray actors do not run in the driver's working directory (on a cluster: where `ray start` ran;
    here: where the session's Ray started). Before, `--input posts --output emb` reached them
    relative, so every split failed with FileNotFoundError (or read and wrote another node's folders),
    and `--model my-model` (a folder) killed every actor: "neither a registered name nor a directory"."""
    from postemb_rt.model_dir import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").symlink_to(resolve("default").path, target_is_directory=True)
    truth = write_parquet_set(Path("posts"), n_files=1)
    report = bf.backfill("posts", "emb", "my-model", num_workers=1)
    assert (report.files_committed, report.rows_embedded) == (1, len(truth))
    assert sorted(read_output(tmp_path / "emb")[0]) == sorted(truth)
