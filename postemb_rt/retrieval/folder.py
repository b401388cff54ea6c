"""A ``PostIndex`` folder on disk: what :meth:`PostIndex.save` writes and :meth:`PostIndex.load` reads.

Files: ``index.faiss`` (faiss.write_index, or write_index_binary), ``ids.parquet`` (one column
``id``, int64 or string), ``vectors.npy`` (binary with rescoring only: float32 (n, dim)),
``index.json`` (``PostIndex.describe()``, plus ``files``: each other file's byte count and
SHA-256). ``files`` ties the folder together: ``load`` checks each file against it before
reading any, so files of two saves (a save interrupted by an older version, a folder put
together by hand) are refused by name instead of pairing ids with another save's vectors.

Saving writes a whole new folder beside the target (``.<name>.tmp-<random>-<writer>``), fsyncs
it, then swaps it in (``durable.new_folder``): the old folder is renamed aside
(``.<name>.old-<random>-<writer>``), the new one renamed into place, the old one removed. An error
or an interrupt (Ctrl-C) before the swap removes the new folder and leaves the old index as it was;
a crash (kill -9, power cut) while writing leaves the old index whole plus a ``.<name>.tmp-*``
folder, which the next save to the same folder on the same host removes once its writer (the
process named in it) no longer runs. Only a crash between the two renames (two system calls)
leaves no index at the name: ``load`` then names the aside folder holding the previous one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ValidationError

FILES = ("index.faiss", "ids.parquet", "vectors.npy", "index.json")
REQUIRED = ("dim", "kind", "ef_search", "nprobe", "nlist")  # index.json keys every version wrote


def _damaged(folder: Path, what: str) -> ValidationError:
    return ValidationError(f"`index` {str(folder)!r}: {what}. Fix: rebuild the index (postemb index build "
                           f"--out {folder}, or PostIndex.save); if this folder is a copy of one, copy the whole folder "
                           "again.")


def check_target(folder, name: str = "folder") -> Path:
    """The folder a save will replace, absolute, a symlink resolved; raises ValidationError (naming the
    argument ``name``) unless it is absent, empty, or holds only an index's files (and an older
    save's ``.tmp-*`` leftovers): a save replaces the folder whole, so never one holding more."""
    folder = Path(os.path.abspath(folder))  # "." or "x/..": a name to put the new folder beside
    folder = folder.resolve() if folder.is_symlink() else folder
    if folder.exists() and not folder.is_dir():
        raise ValidationError(f"`{name}` {str(folder)!r} is a file, not a folder. Fix: save into a new folder.")
    if folder.is_dir():
        other = sorted(p.name for p in folder.iterdir() if p.name not in FILES and not p.name.startswith(".tmp-"))
        if other:
            raise ValidationError(
                f"`{name}` {str(folder)!r} holds files that are not an index's ({', '.join(map(repr, other[:3]))}"
                f"{', ...' if len(other) > 3 else ''}), and a save replaces the folder whole. Fix: save into a new "
                "folder, or into an index folder (one from `postemb index build`).")
    return folder


def write(idx, folder) -> Path:
    """Save ``idx`` as the folder ``folder`` (see the module docstring): on return the folder holds
    the whole new index, durably; on an exception it holds what it held before. Returns ``folder``."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..durable import new_folder
    from ..model_dir import _file_digest

    final = check_target(folder)
    # the old folder stays in place until the swap: a memory map of its vectors.npy (idx's, when
    # idx was loaded from there) is read below and stays valid after the old folder is removed
    with new_folder(final) as tmp:
        (faiss.write_index_binary if idx.binary else faiss.write_index)(idx.index, str(tmp / "index.faiss"))
        pq.write_table(pa.table({"id": pa.array(idx.ids)}), tmp / "ids.parquet")
        if idx.rescore:
            np.save(tmp / "vectors.npy", idx._floats())
        meta = idx.describe()
        meta["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": _file_digest(p)} for p in sorted(tmp.iterdir())}
        (tmp / "index.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return Path(folder)


def _meta(folder: Path) -> dict:
    path = folder / "index.json"
    if folder.is_file():
        raise ValidationError(f"`index` {str(folder)!r} is a file, not an index folder. Fix: give the folder holding "
                              f"it, {str(folder.parent)!r} (an index is a folder: index.faiss, ids.parquet, "
                              "index.json).")
    if not path.exists():
        aside = sorted(p for p in folder.parent.glob(f".{folder.name}.old-*") if (p / "index.json").exists())
        hint = (f" A save was interrupted between its two renames: the previous index is in {str(aside[0])!r}. "
                f"Fix: rename that folder to {str(folder)!r}, or build one with `postemb index build`."
                if aside else " Fix: build one with `postemb index build`.")
        raise FileNotFoundError(f"`index` {str(folder)!r} is not a saved PostIndex (no index.json).{hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(folder, f"index.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _damaged(folder, f"index.json is not a JSON object (it holds a {type(meta).__name__})")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise _damaged(folder, f"index.json lacks {missing}")
    return meta


def _check_files(folder: Path, files, needed: list[str]) -> None:
    """Each needed file is the one index.json recorded (byte count, then SHA-256)."""
    from ..model_dir import _file_digest

    for name in needed:
        rec = files.get(name) if isinstance(files, dict) else None
        if not isinstance(rec, dict) or not {"bytes", "sha256"} <= set(rec):
            raise _damaged(folder, f"index.json records no size and SHA-256 for {name}")
        size = (folder / name).stat().st_size
        if size != rec["bytes"] or _file_digest(folder / name) != rec["sha256"]:
            got = f"{size} bytes" if size != rec["bytes"] else "another SHA-256"
            raise _damaged(folder, f"{name} is not the file index.json was saved with ({got}; saved: "
                                   f"{rec['bytes']} bytes, sha256 {str(rec['sha256'])[:12]}...): files of two saves, "
                                   "or one damaged")


def read(cls, folder, mmap: bool = True):
    """The ``cls`` (PostIndex) saved in ``folder``; every damage is one ValidationError naming the
    folder, the file, what is wrong and the fix (a missing index.json: FileNotFoundError)."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    meta = _meta(folder)
    idx = cls.__new__(cls)
    idx.dim, idx.kind = meta["dim"], meta["kind"]
    idx.vector_version = meta.get("vector_version", meta.get("model_version"))  # older files: model_version
    idx.prompt_name = meta.get("prompt_name")  # older files: none (the posts' prompt not known)
    idx.binary, idx.rescore = bool(meta.get("binary", False)), int(meta.get("rescore", 0))
    idx.bits = int(meta.get("bits", 0))
    idx.ef_search, idx.nprobe, idx.nlist = meta["ef_search"], meta["nprobe"], meta["nlist"]
    idx.skipped, idx.conflicts, idx.conflict_ids, idx._float_parts = 0, 0, [], []
    needed = ["index.faiss", "ids.parquet"] + (["vectors.npy"] if idx.rescore else [])
    for name in needed:
        if not (folder / name).is_file():
            raise _damaged(folder, f"{name} is missing")
    # Folders saved before index.json recorded its files (no "files"): the files are not checked
    # against each other, only the counts and shapes below (ntotal = ids = count, dims, vectors.npy's
    # shape); files of two saves with equal counts load, paired wrongly. Rebuilding such an index
    # (or loading and saving it) records its files.
    if "files" in meta:
        _check_files(folder, meta["files"], needed)
    try:
        idx.index = (faiss.read_index_binary if idx.binary else faiss.read_index)(str(folder / "index.faiss"))
    except RuntimeError as exc:
        raise _damaged(folder, f"index.faiss is not readable by faiss ({str(exc).rpartition('Error: ')[2]})") from None
    try:
        idx.ids = pq.read_table(folder / "ids.parquet").column("id").to_pylist()
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise _damaged(folder, f"ids.parquet is not readable as a column `id` ({type(exc).__name__}: {exc})") from None
    idx._pos = {pid: i for i, pid in enumerate(idx.ids)}
    want_d, count = idx.bits if idx.binary else idx.dim, meta.get("count", len(idx.ids))
    if not idx.index.ntotal == len(idx.ids) == count or idx.index.d != want_d:
        raise _damaged(folder, f"its files disagree: index.faiss holds {idx.index.ntotal} vectors of {idx.index.d} "
                               f"{'bits' if idx.binary else 'dims'}, ids.parquet {len(idx.ids)} ids, index.json says "
                               f"{count} of {want_d}")
    if idx.rescore:
        try:
            floats = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as exc:
            raise _damaged(folder, f"vectors.npy is not readable ({exc})") from None
        if floats.shape != (len(idx.ids), idx.dim) or floats.dtype != np.float32:
            raise _damaged(folder, f"vectors.npy is {floats.dtype} {floats.shape}, expected float32 "
                                   f"({len(idx.ids)}, {idx.dim})")
        idx._float_parts = [floats]
    return idx
