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
