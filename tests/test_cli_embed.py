"""`postemb embed` and the CLI front end, as a user meets them: the output path, pipes, logs and progress."""
import pyarrow as pa
import pyarrow.parquet as pq

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
