"""`postemb embed - --out OUT`: posts from standard input, one per line, as a .txt INPUT."""
import os
import subprocess
import sys

import numpy as np
import pytest

from postemb_rt.cli import main
from tests.test_cli import no_model  # noqa: F401 (a fixture)


def _embed(tmp_path, stdin, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "postemb_rt.cli", "embed", "-", "--out", "e.npy", "--backend",
                           "torch", *extra], cwd=tmp_path, input=stdin, capture_output=True, env=env, timeout=300)


def test_dash_reads_the_posts_from_stdin_as_a_txt_file_would_give_them(tmp_path):
    """`cat posts.txt | postemb embed - --out e.npy` was refused ("`INPUT` must end in one of ... name the posts'
    file by its format"): the unix way to pass a stream, as sentence-transformers users script it."""
    posts = b"first post\r\n\nsecond post\n"
    (tmp_path / "posts.txt").write_bytes(posts)
    # both commands in one interpreter (one import of torch and transformers, not two), stdin a real pipe; the
    # next test runs `python -m postemb_rt.cli embed -` itself
    both = ("import sys; from postemb_rt.cli import main; "
            "sys.exit(main(['embed', '-', '--out', 'e.npy', '--backend', 'torch']) "
            "or main(['embed', 'posts.txt', '--out', 'f.npy', '--backend', 'torch']))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    piped = subprocess.run([sys.executable, "-c", both], cwd=tmp_path, input=posts, capture_output=True, env=env,
                           timeout=300)
    assert piped.returncode == 0, piped.stderr
    from_stdin = np.load(tmp_path / "e.npy")
    assert from_stdin.shape == (3, 50) and np.array_equal(from_stdin, np.load(tmp_path / "f.npy"))


def test_stdin_that_is_not_utf8_is_named(tmp_path):
    bad = _embed(tmp_path, b"ok\n\xff\xfe\n")
    assert bad.returncode == 2 and b"`INPUT` - (stdin):2: not UTF-8" in bad.stderr and b"Fix: " in bad.stderr, \
        bad.stderr
    assert not (tmp_path / "e.npy").exists()


def test_a_terminal_on_stdin_is_refused_not_waited_on(tmp_path, capsys, monkeypatch, no_model):  # noqa: F811
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    assert main(["embed", "-", "--out", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert "`INPUT` - reads the posts from stdin, which is a terminal" in err and "Fix: " in err, err


@pytest.mark.parametrize("flag", ["--help"])
def test_help_says_dash_is_stdin(flag, capsys):
    with pytest.raises(SystemExit):
        main(["embed", flag])
    assert "'-': stdin" in capsys.readouterr().out
