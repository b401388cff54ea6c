"""`postemb embed` and the CLI front end, as a user meets them: the output path, pipes, logs and progress."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from postemb_rt.cli import main
from tests.test_cli import no_model  # noqa: F401 (a fixture)


def test_an_out_that_is_the_input_is_refused_before_the_model_loads(tmp_path, capsys, no_model):  # noqa: F811
    src = tmp_path / "posts.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), src)
    (tmp_path / "link.parquet").symlink_to(src)
    for out in (src, tmp_path / "." / "posts.parquet", tmp_path / "link.parquet"):
        assert main(["embed", str(src), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"`--out` {str(out)!r} is INPUT" in err and "Fix: " in err and err.count("\n") == 1, err
    assert pq.read_table(src).column_names == ["text"]  # the posts are still there


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(tmp_path):
    """`postemb demo | head -3`: the reader gone, the command stops as unix tools do (exit 128 + SIGPIPE),
    with no traceback and no 'error: Broken pipe ... Fix: check that path'."""
    import os
    import signal
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has left before the first line: every write to stdout fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "postemb_rt.cli", "demo", "--n", "8", "--queries", "1"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 128 + signal.SIGPIPE and done.stderr == "", done.stderr


def test_verbose_is_our_info_not_every_librarys(capsys):
    """-v: postemb_rt's INFO lines; another library's INFO (onnxruntime's quantizer logs dozens per model on the
    root logger) stays out, its warnings not."""
    import logging

    from postemb_rt.cli import configure_logging

    try:
        configure_logging(verbose=True, log_format="text")
        logging.getLogger("postemb_rt").info("ours")
        logging.getLogger("postemb_rt.server").info("ours too")
        logging.info("a library's detail")
        logging.getLogger("somelib").warning("a library's warning")
        assert capsys.readouterr().err.splitlines() == [
            "INFO postemb_rt: ours", "INFO postemb_rt.server: ours too", "WARNING somelib: a library's warning"]
        configure_logging(verbose=False, log_format="text")
        logging.getLogger("postemb_rt").info("ours")
        assert capsys.readouterr().err == ""
    finally:
        configure_logging(verbose=False, log_format="text")


def _json_lines(err: str) -> list[dict]:
    import json

    lines = err.splitlines()
    assert lines, "no log line"
    return [json.loads(line) for line in lines]  # every line one JSON object


def test_json_logs_hold_python_warnings_too():
    import subprocess
    import sys

    code = ("import warnings; from postemb_rt.cli import configure_logging; configure_logging(False, 'json'); "
            "warnings.warn('a library is deprecated', DeprecationWarning, stacklevel=1); "
            "warnings.warn('a library warns', UserWarning)")
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120)
    records = _json_lines(done.stderr)
    assert [r["level"] for r in records] == ["WARNING", "WARNING"], done.stderr
    assert "a library is deprecated" in records[0]["message"] and "a library warns" in records[1]["message"]


def test_json_logs_hold_embeds_warning_and_its_errors(tmp_path, capsys):
    src = tmp_path / "posts.jsonl"
    src.write_text("\n")
    assert main(["--log-format", "json", "embed", str(src), "--out", str(tmp_path / "o.npy")]) == 0
    out, err = capsys.readouterr()
    assert any(r["level"] == "WARNING" and "holds no posts" in r["message"] for r in _json_lines(err)), err
    assert out.startswith("embedded 0 posts")  # the summary: stdout, as before
    assert main(["--log-format", "json", "embed", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o.npy")]) == 2
    (record,) = _json_lines(capsys.readouterr().err)
    assert record["level"] == "ERROR" and record["message"].startswith("postemb embed: error: `INPUT` "), record


@pytest.mark.parametrize("tty", [False, True])
def test_the_progress_bar_is_drawn_on_a_terminal_only(tmp_path, capsys, monkeypatch, tty):
    """stderr a file or a pipe (a job's log): no bar, whose carriage-return redraws would fill it."""
    import sys

    from postemb_rt.commands import embed

    monkeypatch.setattr(embed, "PROGRESS_MIN_POSTS", 2)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    (tmp_path / "posts.txt").write_text("one post\nanother post\na third\n")
    assert main(["embed", str(tmp_path / "posts.txt"), "--out", str(tmp_path / "o.npy")]) == 0
    assert ("3/3" in capsys.readouterr().err) == tty


def _damage(path, column: int) -> None:
    """Overwrite the first data page header of ``column`` (row group 0) with bytes Parquet cannot read."""
    offset = pq.ParquetFile(path).metadata.row_group(0).column(column).data_page_offset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 16)


def test_parquet_input_reads_its_text_and_id_columns_only(tmp_path, capsys):
    """Other columns (a nested one, images, a damaged one) are neither read nor held in memory; a
    dictionary-encoded `id` (pandas' category) is read as its values."""
    import numpy as np

    src = tmp_path / "posts.parquet"
    ids = pa.array(["p1", "p2"]).dictionary_encode()
    pq.write_table(pa.table({"text": ["a post", "another"], "id": ids, "blob": [b"x" * 5000, b"y" * 5000],
                             "nested": [[{"k": 1}], []]}), src, compression="none")
    _damage(src, 2)
    out = tmp_path / "o.parquet"
    assert main(["embed", str(src), "--out", str(out)]) == 0, capsys.readouterr().err
    got = pq.read_table(out)
    assert got.column("id").to_pylist() == ["p1", "p2"]
    assert np.asarray(got.column("embedding").to_pylist()).shape == (2, 50)


def test_a_damaged_text_column_is_named_as_an_unreadable_input(tmp_path, capsys, no_model):  # noqa: F811
    src = tmp_path / "posts.parquet"
    pq.write_table(pa.table({"text": ["a" * 5000, "b" * 5000]}), src, compression="none")
    _damage(src, 0)
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert f"`INPUT` {src} is not a readable Parquet file: " in err and "Fix: " in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, words", [
    (["embed", "{tmp}/posts.csv", "--out", "{tmp}/o.npy"], "`INPUT` must end in one of ('.txt', '.jsonl', '.parquet'). "
                                                         "Given: '{tmp}/posts.csv'. Fix: "),
    (["embed", "{tmp}/none.txt", "--out", "{tmp}/o.npy"], "`INPUT` '{tmp}/none.txt' does not exist. Fix: "),
    (["embed", "{tmp}/posts.txt", "--out", "{tmp}/o"], "`--out` must end in one of ('.npy', '.parquet'). "
                                                      "Given: '{tmp}/o'. Fix: "),
    (["embed", "{tmp}/posts.txt", "--out", "{tmp}/o.npy", "--batch-size", "0"],
     "argument --batch-size: must be an integer >= 1. Given: '0'. Fix: "),
    (["demo", "--n", "0"], "argument --n: must be an integer >= 1. Given: '0'. Fix: "),
    (["demo", "--queries", "-1"], "argument --queries: must be an integer >= 0. Given: '-1'. Fix: "),
])
def test_flag_and_path_errors_name_the_fix_before_any_work(tmp_path, capsys, no_model, argv, words):  # noqa: F811
    (tmp_path / "posts.csv").write_text("x\n")
    (tmp_path / "posts.txt").write_text("x\n")
    try:
        code = main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as exc:  # the parser's own refusal
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and words.format(tmp=tmp_path) in err and err.count("\n") == 1, err


@pytest.mark.parametrize("option", [["-v"], ["--verbose"], ["--log-format", "json"], ["--log-format=json"]])
def test_a_global_option_after_the_command_says_where_it_goes(tmp_path, capsys, no_model, option):  # noqa: F811
    with pytest.raises(SystemExit) as exc:
        main(["embed", str(tmp_path / "posts.txt"), "--out", str(tmp_path / "o.npy"), *option])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == (
        f"postemb: error: `{option[0].split('=')[0]}` is an option of `postemb` itself, given after the command. "
        f"Fix: put it before the command: postemb {' '.join(option)} embed ...\n")
    with pytest.raises(SystemExit):
        main(["embed", str(tmp_path / "posts.txt"), "--out", str(tmp_path / "o.npy"), "--nosuch"])
    # the command's own help, which lists its flags (`postemb --help` lists commands only)
    assert "postemb embed: error: unrecognized arguments: --nosuch. Fix: see `postemb embed --help`." \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-v", "index", "build", str(tmp_path / "a.parquet"), "--out", str(tmp_path / "i"), "--nosuch"])
    assert "Fix: see `postemb index build --help`." in capsys.readouterr().err


def test_a_broken_pipe_that_is_not_stdouts_is_an_error(capsys, monkeypatch):
    """A BrokenPipeError of a socket or a child process inside a command is still said, with exit 2."""
    from postemb_rt.commands import embed

    def fail(args):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(embed, "run", fail)
    assert main(["embed", "x.txt", "--out", "o.npy"]) == 2
    assert capsys.readouterr().err.startswith("postemb embed: error: Broken pipe")
