"""`postemb` when its standard output cannot take the lines it prints (a full disk, /dev/full)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from postemb_rt.cli import main


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_stdout_that_cannot_be_written_is_named_as_stdout(tmp_path):
    """`postemb embed ... > /dev/full` said "No space left on device:. Fix: check that path: ..." (no path,
    as the error had none): now that stdout could not be written, once, without a second report at exit."""
    (tmp_path / "posts.txt").write_text("a post\nanother\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("PYTHONUNBUFFERED", None)  # stdout buffered, as it is by default: its last flush fails
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "postemb_rt.cli", "embed", "posts.txt", "--out", "e.npy",
                               "--backend", "torch"],
                              cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Exception ignored" not in done.stderr and done.stderr.count("postemb embed: error:") == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "postemb embed: error: writing to stdout failed: No space left on device. Fix: "), done.stderr
    assert np.load(tmp_path / "e.npy").shape == (2, 50)  # the work itself was done and kept


def test_an_os_error_without_a_path_has_no_dangling_colon(capsys, monkeypatch):
    from postemb_rt.commands import embed

    def fail(args):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(embed, "run", fail)
    assert main(["embed", "x.txt", "--out", "o.npy"]) == 2
    assert capsys.readouterr().err.startswith("postemb embed: error: Input/output error. Fix: check the command's "
                                              "paths and its stdout")


def test_a_closed_stdout_is_no_traceback(tmp_path):
    """`postemb embed ... >&-` (a launcher that closes fd 1): Python has no sys.stdout then, and the flush after
    the command, which had done its work, raised AttributeError with a traceback and exit 1."""
    (tmp_path / "posts.txt").write_text("a post\n")
    done = subprocess.run([sys.executable, "-m", "postemb_rt.cli", "embed", "posts.txt", "--out", "e.npy", "--backend",
                           "torch"], cwd=tmp_path, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=300, preexec_fn=lambda: os.close(1),
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert np.load(tmp_path / "e.npy").shape == (1, 50)


def test_ctrl_c_while_the_commands_load_is_exit_130_without_a_traceback(monkeypatch):
    """build_parser imports every command's module (numpy, the backends' registry): a Ctrl-C there was a
    KeyboardInterrupt traceback; it is 130, as a Ctrl-C once the command runs."""
    from postemb_rt import cli

    def interrupted(**kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["embed", "x.txt", "--out", "o.npy"]) == 130
