"""Durable file writes: the one helper for "write to a temporary name, fsync the file,
rename, fsync the folder"; and the one reader of the small JSON files written so.

A plain ``os.replace`` is atomic but not durable: after a power cut the rename may be on
disk while the file's data is not (an empty or truncated file under the final name), or
the rename itself may be lost. POSIX needs an fsync of the file before the rename, and an
fsync of the folder after it, for both to survive.

Temporary names carry their writer, ``<pid>@<host>`` (:func:`_writer`), so a writer killed
(kill -9, OOM) before it could clean up is recognised: a later write of the same final path
removes the leftovers of writers of this host that no longer run (:func:`_sweep`), and never one
of a running process or of another host (a shared file system), which may still be writing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("postemb_rt")


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


def _writer() -> str:
    """This process as the writer a temporary name carries: ``<pid>@<host>``. host: the host name
    (characters other than letters, digits, '.' and '-' as '_', at most 64), plus ``~<inode hex>`` of
    the PID namespace where Linux shows it, so two containers that share a host name and a volume
    but not their PIDs never take each other's running writers for dead."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "_"
    try:
        host += f"~{os.stat('/proc/self/ns/pid').st_ino:x}"
    except OSError:
        pass
    return f"{os.getpid()}@{host}"


def _dead(writer: str) -> bool:
    """True only when ``writer`` (:func:`_writer`'s form) is a process of this host (and PID
    namespace) that no longer runs, so what it left is garbage. Another host's, a running
    process's (another user's too: kill answers EPERM), or any where kill cannot probe: False."""
    pid, at, host = writer.partition("@")
    mine, _, my_host = _writer().partition("@")
    if not at or not pid.isdigit() or host != my_host or pid == mine or os.name != "posix":
        return False
    return not pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether the process ``pid`` of this host runs: False only when the kernel says there is none
    (ESRCH). Another user's process (EPERM), or one kill cannot probe (a pid past its range): True."""
    try:
        os.kill(pid, 0)  # signal 0: no signal sent, only the check that the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def _sweep(folder: Path, writer_of: Callable[[str], str | None]) -> None:
    """Remove each entry of ``folder`` whose name ``writer_of`` maps to a dead writer (:func:`_dead`):
    a temporary file or folder left by a killed process. Best effort: an entry that cannot be
    removed stays, with a warning; the write that sweeps goes on either way."""
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError:
        return
    for name in names:
        writer = writer_of(name)
        if writer is None or not _dead(writer):
            continue
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another writer of the same path swept it first
            continue
        except OSError as exc:
            log.warning("could not remove %s, left by process %s, which no longer runs: %s", path, writer, exc)
            continue
        log.info("removed %s, left by process %s, which no longer runs (it stopped mid-write)", path, writer)


def _temporary(final: Path) -> Path:
    """A new, empty file beside ``final``, unique per call (a random name created with O_EXCL,
    so two writers of one file, even two threads of one process, never share it):
    ``.tmp-<16 hex>-<writer>-<name>`` (:func:`_writer`). Created with the umask's permissions as
    ``open()`` would, not ``tempfile.mkstemp``'s 0600: outputs that others should read stay
    readable. The name ends with ``final``'s (at most 120 characters of it), so writers that add
    a missing suffix (``numpy.save``) keep the name given."""
    writer = _writer()
    while True:
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex[:16]}-{writer}-{final.name[-120:]}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue


def _file_writer(final: Path) -> Callable[[str], str | None]:
    """The writer of a name :func:`_temporary` gives for ``final``, else None."""
    head, tail = ".tmp-", f"-{final.name[-120:]}"

    def writer_of(name: str) -> str | None:
        if not (name.startswith(head) and name.endswith(tail)):
            return None
        middle = name[len(head):len(name) - len(tail)]  # <16 hex>-<writer>
        return middle[17:] if len(middle) > 17 and middle[16] == "-" else None
    return writer_of


def _folder_writer(final: Path, kind: str) -> Callable[[str], str | None]:
    """The writer of a ``.<name>.<kind>-<16 hex>-<writer>`` folder that :func:`new_folder` names
    beside ``final`` (kind: tmp or old), else None."""
    head = f".{final.name}.{kind}-"

    def writer_of(name: str) -> str | None:
        rest = name[len(head):] if name.startswith(head) else ""
        return rest[17:] if len(rest) > 17 and rest[16] == "-" else None
    return writer_of


def check_writable(final: str | Path, arg: str, folder: bool = False) -> None:
    """Refuse, before any work, an output file that could not be written: a folder where the
    file goes, a folder that cannot be created (a file on the way, no permission), or a folder
    this process may not create files in (tried with :func:`_temporary`, then removed).
    ``folder``: ``final`` is a folder built beside itself (:func:`new_folder`), so only the
    place beside it is tried. ValidationError naming ``arg`` (the flag), the path and the OS's reason."""
    from .errors import ValidationError

    final = Path(os.path.abspath(final)) if folder else Path(final)
    if final.is_dir() and not folder:
        raise ValidationError(f"`{arg}` {str(final)!r} is a folder. Fix: name a file in it, e.g. "
                              f"{str(final / ('embeddings' + final.suffix))!r}.")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _temporary(final).unlink()
    except OSError as exc:
        where = exc.filename and (final.parent if Path(exc.filename).name.startswith(".tmp-") else exc.filename)
        why = (f"{where} is a file, not a folder" if isinstance(exc, (FileExistsError, NotADirectoryError))
               else f"{exc.strerror or exc}{f' ({where})' if where else ''}")
        raise ValidationError(f"`{arg}` {str(final)!r} cannot be written: {why}. Fix: pass a path in a folder this "
                              "user may create files in.") from None


def atomic_write(final: str | Path, write: Callable[[Path], None] | bytes | str) -> Path:
    """Write ``final`` durably: ``write(tmp)`` (or the bytes / str given) to a temporary name
    in the same folder (unique per call), fsync it, rename it to ``final``, fsync the folder.
    Readers see the old file or the whole new one, never a part, and so does a reboot after a
    power cut. Returns ``final``. The temporary file is removed if anything fails (a full disk:
    the OSError propagates and nothing is left behind); temporary files of ``final`` that killed
    writers left (kill -9) are removed first (:func:`_sweep`)."""
    final = Path(final)
    _sweep(final.parent, _file_writer(final))
    tmp = _temporary(final)
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


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under ``root`` (and ``root`` itself), deepest first: a folder
    built by tools that do not fsync (an ONNX export) made durable before :func:`durable_rename`
    publishes it."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync_file(Path(dirpath) / name)
        fsync_dir(dirpath)


def durable_rename(src: str | Path, dst: str | Path) -> None:
    """``os.rename(src, dst)`` (a file or a whole folder, whose contents must already be
    durable, e.g. written by :func:`atomic_write`), then fsync both parent folders."""
    src, dst = Path(src), Path(dst)
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it (os.umask sets it, for a
    moment in which another thread's new file would get the wrong permissions)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def new_folder(final: str | Path) -> Iterator[Path]:
    """Build the folder ``final`` whole or not at all. Yields a new, empty folder beside it
    (``.<name>.tmp-<random>-<writer>``, :func:`_writer`) to write into; when the block ends, its
    files get the umask's permissions (as ``open()`` gives; safetensors writes 0600), it is fsynced
    and swapped in: ``final``, if there, is renamed aside (``.<name>.old-<random>-<writer>``), the
    new folder renamed into place, the old one removed. On an exception (Ctrl-C, a full disk) the
    new folder is removed and ``final`` is left as it was. Only a crash between the two renames
    leaves no folder at ``final``: the old one is then the ``.<name>.old-*`` folder beside it.
    What killed writers of ``final`` left is removed (:func:`_sweep`): their ``.tmp-`` folders
    first, their ``.old-`` folders once the new folder is in place (until then such a folder may
    be the only copy of the previous one)."""
    final = Path(os.path.abspath(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_of, probe_of = _folder_writer(final, "tmp"), _file_writer(final)  # probe: check_writable(folder=True)'s
    _sweep(final.parent, lambda name: tmp_of(name) or probe_of(name))
    writer = _writer()
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:16]}-{writer}")
    tmp.mkdir()
    aside = None
    try:
        yield tmp
        mask = _umask()
        for dirpath, _, filenames in os.walk(tmp):
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)
        fsync_tree(tmp)
        if final.exists():
            aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:16]}-{writer}")
            os.rename(final, aside)
        try:
            durable_rename(tmp, final)
        except BaseException:
            if aside is not None:
                os.rename(aside, final)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
        fsync_dir(final.parent)
    _sweep(final.parent, _folder_writer(final, "old"))


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


def read_safetensors(path: str | Path, what: str, framework: str = "pt") -> dict:
    """The tensors of the safetensors file ``path`` (torch tensors, or numpy arrays with
    ``framework="np"``). A damaged or partly written file raises ``ValidationError`` naming it
    (``what``) and the fix, as read_json does for a JSON file: safetensors' own error names neither."""
    from safetensors import SafetensorError, safe_open

    from .errors import ValidationError

    try:
        with safe_open(str(path), framework=framework) as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise ValidationError(f"`{path}` ({what}) is not a readable safetensors file: {exc}. It is damaged or was "
                              "not written whole. Fix: restore the file (copy the model again).") from None


@contextmanager
def one_builder(final: str | Path, what: str) -> Iterator[None]:
    """Held while a process checks for, and builds, the cache entry ``final`` (``what`` names it in
    the log): a second process that needs the same entry (two server workers, Ray workers on one
    node) waits, logging once, then finds it built instead of building it too. An OS file lock
    (filelock) beside the entry, released when its holder exits, a crash included. Callers check
    for a good entry before taking it, so a read-only cache that holds the entry needs no lock."""
    from filelock import FileLock, Timeout

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(final.with_name(f".{final.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for another process that is building %s (%s)", what, final)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def seal(key: str, field: str, content) -> str:
    """SHA-256 binding a cache entry's key and content (canonical JSON of {"key", field})."""
    return hashlib.sha256(json.dumps({"key": key, field: content}, sort_keys=True).encode()).hexdigest()


def write_sealed(path: str | Path, key: str, field: str, content) -> None:
    """Store ``content`` (JSON-able) durably in ``path`` as ``{"key", field, "sha256"}``, the
    hash binding key and content (``read_sealed`` checks it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"key": key, field: content, "sha256": seal(key, field, content)}, indent=2) + "\n")


def read_sealed(path: str | Path, key: str, field: str):
    """(content, "") of a cache entry written by ``write_sealed`` under ``key``; (None, why) when it
    is absent, not sealed (an older version's, or another shape), written under another key, or
    edited or damaged since (its sha256 does not match). The caller checks the content's own shape."""
    stored = read_json(path)
    if stored is None:
        return None, "absent or not JSON"
    if not isinstance(stored, dict) or set(stored) != {"key", field, "sha256"}:
        return None, "not a sealed entry (an older version's, or another shape)"
    if stored["key"] != key:
        return None, "written under another key"
    if stored["sha256"] != seal(key, field, stored[field]):
        return None, "its sha256 does not match its key and content"
    return stored[field], ""


def confined(root: Path, spec, key: str, where: Path, fix: str) -> Path:
    """``root / spec`` for a path named in a folder's own file ``where`` (a model directory's
    postemb.json, a sentence-transformers folder's modules.json), which must stay inside the
    folder: relative, no ``..``, and not leading out through a symlink. Checked before anything
    under the path is read; ``fix`` is the error's advice. The one such check."""
    from .errors import ValidationError

    if not isinstance(spec, str) or not spec:
        raise ValidationError(f"`{key}` in {where} must be a file name inside the model directory. Given: {spec!r}.")
    p = Path(spec)
    if p.is_absolute() or ".." in p.parts:
        raise ValidationError(
            f"`{key}` in {where} must be a path inside the model directory (relative, without '..'). "
            f"Given: {spec!r}. Fix: {fix}.")
    resolved = (root / p).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValidationError(
            f"`{key}` in {where} leads out of the model directory through a symlink: {spec!r} -> {resolved}. "
            f"Fix: {fix}.")
    return resolved
