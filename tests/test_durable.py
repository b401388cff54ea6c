"""``postemb_rt.durable``: the data is fsynced before the rename, the folder after it."""
from __future__ import annotations

import os

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
    assert calls[0][1].endswith(".tmp-%d-a.json" % os.getpid()) and calls[1][1] == str(final)
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
