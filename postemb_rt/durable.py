"""Durable file writes: the one helper for "write to a temporary name, fsync the file,
rename, fsync the folder"; and the one reader of the small JSON files written so.

A plain ``os.replace`` is atomic but not durable: after a power cut the rename may be on
disk while the file's data is not (an empty or truncated file under the final name), or
the rename itself may be lost. POSIX needs an fsync of the file before the rename, and an
fsync of the folder after it, for both to survive.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


def fsync_dir(path: str | Path) -> None:
    """fsync a folder, so the names created, removed or renamed in it are on disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(final: str | Path, write: Callable[[Path], None] | bytes | str) -> Path:
    """Write ``final`` durably: ``write(tmp)`` (or the bytes / str given) to a temporary name
    in the same folder, fsync it, rename it to ``final``, fsync the folder. Readers see the
    old file or the whole new one, never a part, and so does a reboot after a power cut.
    Returns ``final``. The temporary file is removed if ``write`` fails."""
    final = Path(final)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    try:
        if callable(write):
            write(tmp)
        elif isinstance(write, str):
            tmp.write_text(write, encoding="utf-8")
        else:
            tmp.write_bytes(write)
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return final


def durable_rename(src: str | Path, dst: str | Path) -> None:
    """``os.rename(src, dst)`` (a file or a whole folder, whose contents must already be
    durable, e.g. written by :func:`atomic_write`), then fsync both parent folders."""
    src, dst = Path(src), Path(dst)
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def read_json(path: str | Path, what: str | None = None, fix: str = "restore the file"):
    """The JSON value stored in ``path`` (UTF-8).

    what=None: a marker or cache file that may be absent (not written yet, or by an older
    version): None when it is missing or not valid JSON. Else ``what`` names the file in the
    errors: ``ModelNotFoundError`` when it is missing, ``ValidationError`` when it is not
    valid JSON, each ending with ``fix``.
    """
    from .errors import ModelNotFoundError, ValidationError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if what is None:
            return None
        raise ModelNotFoundError(f"`{path}` ({what}) is missing. Fix: {fix}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if what is None:
            return None
        raise ValidationError(f"`{path}` ({what}) is not valid JSON: {exc}. Fix: restore the file.") from None
