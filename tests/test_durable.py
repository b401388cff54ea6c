"""``postemb_rt.durable``: the data is fsynced before the rename, the folder after it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from postemb_rt import durable


@pytest.fixture
def calls(monkeypatch):
    """Record fsync (of which path) and rename calls, in order."""
    seen = []
    real_fsync, real_replace, real_rename, real_open = os.fsync, os.replace, os.rename, os.open
    fds = {}

    def fake_open(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        fds[fd] = os.fspath(path)
        return fd

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "fsync", lambda fd: (seen.append(("fsync", fds.get(fd))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(("rename", os.fspath(b))), real_replace(a, b))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (seen.append(("rename", os.fspath(b))), real_rename(a, b))[1])
    return seen


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, calls):
    final = tmp_path / "a.json"
    durable.atomic_write(final, '{"x": 1}')
    assert final.read_text() == '{"x": 1}'
    kinds = [c[0] for c in calls]
    assert kinds == ["fsync", "rename", "fsync"], calls
    assert Path(calls[0][1]).name.startswith(".tmp-") and calls[0][1].endswith("-a.json")
    assert calls[1][1] == str(final)
    assert calls[2][1] == str(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    final = tmp_path / "b.bin"
    durable.atomic_write(final, b"old")

    def broken(p):
        p.write_bytes(b"half")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        durable.atomic_write(final, broken)
    assert final.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["b.bin"]


def test_durable_rename_fsyncs_both_parent_folders(tmp_path, calls):
    (tmp_path / "staging" / "f").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    durable.durable_rename(tmp_path / "staging" / "f", tmp_path / "out" / "f")
    assert calls == [("rename", str(tmp_path / "out" / "f")), ("fsync", str(tmp_path / "out")),
                     ("fsync", str(tmp_path / "staging"))]


def test_read_json_of_an_optional_file_is_none_when_missing_or_corrupt(tmp_path):
    assert durable.read_json(tmp_path / "absent.json") is None
    (tmp_path / "half.json").write_text('{"x": ')
    assert durable.read_json(tmp_path / "half.json") is None
    durable.atomic_write(tmp_path / "ok.json", '{"x": 1}')
    assert durable.read_json(tmp_path / "ok.json") == {"x": 1}


def test_read_json_of_a_required_file_names_it_and_the_fix(tmp_path):
    from postemb_rt import ModelNotFoundError, ValidationError

    with pytest.raises(ModelNotFoundError, match=r"absent.json` \(the module list\) is missing. Fix: save it"):
        durable.read_json(tmp_path / "absent.json", "the module list", fix="save it")
    (tmp_path / "half.json").write_text('{"x": ')
    with pytest.raises(ValidationError, match=r"half.json` \(config\) is not valid JSON: .*Fix: restore the file"):
        durable.read_json(tmp_path / "half.json", "config")


def test_two_writers_of_one_file_in_one_process_do_not_collide(tmp_path):
    """Each call writes its own temporary file: two threads writing the same final name at once
    both succeed (one wins the rename), where a per-process name made the second fail."""
    import threading

    final = tmp_path / "shared.json"
    both_written = threading.Barrier(2, timeout=10)
    errors = []

    def writer(value):
        def write(p):
            p.write_text(value)
            both_written.wait()  # both temporaries exist before either is renamed

        try:
            durable.atomic_write(final, write)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in ('{"w": 1}', '{"w": 2}')]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert final.read_text() in ('{"w": 1}', '{"w": 2}')
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


def test_atomic_write_keeps_the_umask_permissions(tmp_path):
    """The temporary file is created as a plain open() would create it (not mkstemp's 0600), so
    outputs others should read stay readable."""
    old = os.umask(0o022)
    try:
        durable.atomic_write(tmp_path / "p.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "p.txt").stat().st_mode & 0o777 == 0o644


def test_fsync_tree_fsyncs_every_file_and_folder(tmp_path, calls):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.bin").write_bytes(b"a")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"b")
    durable.fsync_tree(tmp_path / "d")
    synced = {c[1] for c in calls if c[0] == "fsync"}
    assert synced == {str(tmp_path / "d"), str(tmp_path / "d" / "sub"), str(tmp_path / "d" / "a.bin"),
                      str(tmp_path / "d" / "sub" / "b.bin")}


# -- leftovers of killed writers -------------------------------------------------------------------
WRITER = """
import sys, time
from pathlib import Path
from postemb_rt import durable

final = Path(sys.argv[2])
def hold(tmp):
    (tmp / "part.bin" if tmp.is_dir() else tmp).write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(120)
if sys.argv[1] == "file":
    durable.atomic_write(final, hold)
else:
    with durable.new_folder(final) as tmp:
        hold(tmp)
"""


def _killed_while_writing(kind: str, final: Path) -> None:
    """Run a writer of ``final`` (atomic_write or new_folder) in a child process and kill -9 it mid-write."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(final)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline() == b"writing\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _as(pid: int, host: str | None = None) -> str:
    """The writer part of a temporary name for process ``pid`` of this host (or of ``host``)."""
    return f"{pid}@{host or durable._writer().partition('@')[2]}"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_writer_killed_mid_write_leaves_a_temporary_the_next_write_of_the_path_removes(tmp_path, kind, caplog):
    final = tmp_path / ("out.json" if kind == "file" else "model")
    _killed_while_writing(kind, final)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-" if kind == "file" else ".model.tmp-"), left
    with caplog.at_level("INFO", logger="postemb_rt"):
        if kind == "file":
            durable.atomic_write(final, "{}")
        else:
            with durable.new_folder(final) as tmp:
                (tmp / "a.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    assert f"removed {tmp_path / left[0]}, left by process" in caplog.text and "which no longer runs" in caplog.text


def test_leftovers_of_running_or_remote_writers_and_of_other_paths_are_kept(tmp_path):
    """Only a dead writer of this host is known to be gone: this process (another thread may be
    writing), another running process, another host on a shared volume, a name without a writer
    (an older version's) and a temporary of another file all stay."""
    import subprocess
    import sys

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        keep = [f".tmp-{'a' * 16}-{_as(os.getpid())}-x.json", f".tmp-{'b' * 16}-{_as(alive.pid)}-x.json",
                f".tmp-{'c' * 16}-{_as(dead, 'other-host')}-x.json", f".tmp-{'d' * 16}-x.json",
                f".tmp-{'e' * 16}-{_as(dead)}-y.json", f".tmp-{'1' * 16}-{_as(dead)}-a-x.json",
                f".x.json.tmp-{'f' * 16}-{_as(os.getpid())}"]
        gone = [f".tmp-{'0' * 16}-{_as(dead)}-x.json"]
        for name in keep + gone:
            (tmp_path / name).write_text("left")
        durable.atomic_write(tmp_path / "x.json", "{}")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["x.json"])
    finally:
        alive.kill()
        alive.wait()


def test_an_aside_folder_of_a_dead_writer_stays_until_a_new_folder_is_in_place(tmp_path):
    """A crash between new_folder's two renames leaves no folder at the name and the previous one
    aside (``.<name>.old-*``): the only copy, kept while a new write can still fail."""
    final, dead = tmp_path / "idx", _dead_pid()
    aside = tmp_path / f".idx.old-{'0' * 16}-{_as(dead)}"
    aside.mkdir()
    (aside / "index.json").write_text("{}")
    with pytest.raises(OSError, match="disk full"):
        with durable.new_folder(final):
            raise OSError("disk full (simulated)")
    assert aside.is_dir() and not final.exists()
    with durable.new_folder(final) as tmp:
        (tmp / "index.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_a_leftover_that_cannot_be_removed_is_logged_and_the_write_goes_on(tmp_path, monkeypatch, caplog):
    left = tmp_path / f".tmp-{'0' * 16}-{_as(_dead_pid())}-x.json"
    left.write_text("left")
    real_unlink = Path.unlink

    def refuse(self, *a, **k):
        if self == left:
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, *a, **k)
    monkeypatch.setattr(Path, "unlink", refuse)
    durable.atomic_write(tmp_path / "x.json", "{}")
    assert (tmp_path / "x.json").read_text() == "{}" and left.exists()
    assert f"could not remove {left}" in caplog.text


def test_check_writable_names_the_folder_not_the_temporary_name(tmp_path, monkeypatch):
    from postemb_rt import ValidationError

    real_open = os.open

    def refuse(path, flags, *a, **k):
        if Path(path).name.startswith(".tmp-"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *a, **k)
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ValidationError) as err:
        durable.check_writable(tmp_path / "e.npy", "--out")
    assert f"cannot be written: Permission denied ({tmp_path}). Fix:" in str(err.value)
    assert ".tmp-" not in str(err.value)
