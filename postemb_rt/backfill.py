"""Batch backfill on Ray Data: every post of a folder of Parquet or JSONL files -> Parquet embeddings.

    input/2024/01/a.parquet                      output/2024/01/a.parquet/part-00000.parquet   (id, embedding, model_version)
    input/2024/01/b.jsonl          backfill ->   output/2024/01/b.jsonl/part-00000.parquet
                                                 output/2024/01/b.jsonl/_errors-00000.jsonl    (bad rows and why)
                                                 output/2024/01/b.jsonl/_SUCCESS.json          (counts, source size/mtime)

The unit of work is a *split*: a run of Parquet row groups (about ``rows_per_split`` rows) or
a byte range of a JSONL file (lines belong to the split they start in). The driver lists
the splits, ``ray.data.from_items`` makes one row per split, and ``map_batches`` runs them
on a pool of actors (``ActorPoolStrategy``), each of which loads the model once and then,
per split: reads it, checks every row, embeds the good ones with ``Encoder.encode``,
writes ``part-NNNNN.parquet`` (and ``_errors-NNNNN.jsonl`` when some rows were bad) under
``output/_staging/<file>/`` by write-then-rename, and returns one summary row. Ray Data does
the scheduling, backpressure, actor restarts and task retries; the driver only sees the
summaries (a few bytes per split), never the embeddings.

Resuming and duplicates: a split's name is fixed by its position in the file, so a retried
or repeated split rewrites the same file instead of adding one. When every split of an
input file is done, the driver writes ``_SUCCESS.json`` and renames the staging folder into
place (one ``rename``: the file's embeddings appear all at once or not at all). A re-run
skips input files whose output has ``_SUCCESS.json``, and reuses the finished splits of a
file that was interrupted half-way (each part is complete: parts are renamed into place
only once written). The staging folder's ``_source.json`` records what its parts were made
from: the source's size and mtime, the model (version and content fingerprint) and the
split plan. A resumed run with another model is refused (naming both); a changed source
or split plan (``rows_per_split``) restarts that file, so parts of two plans are never
mixed. Before a commit the rows are counted against the input (Parquet: the footer;
JSONL: its non-blank lines). Every file is written by ``postemb_rt.durable`` (temporary
name, fsync, rename, fsync of the folder), and so is the commit's rename. Readers of ``output/`` (pyarrow, ``postemb index build``) ignore
``_staging/`` and every ``_``- or ``.``-prefixed file, so they see committed files only.

Paths must be visible under the same name to every Ray node (a shared file system) and
support an atomic ``rename`` (POSIX, NFS, Lustre); object stores (S3) are not supported.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .durable import atomic_write, durable_rename, read_json
from .errors import PostEmbError, ValidationError

log = logging.getLogger("postemb_rt.backfill")

FORMATS = (".parquet", ".jsonl")
STAGING = "_staging"
SUCCESS = "_SUCCESS.json"
MARKER = "_source.json"  # in a staging folder: what its parts were made from (see _marker)
ROWS_PER_SPLIT = 10_000  # ~30 s of CPU inference per split on one core: fine-grained resume, small retries


class BackfillError(PostEmbError, RuntimeError):
    """Some files failed (unreadable input, a split's model failure); they stay uncommitted
    and a re-run retries them. ``.report``: the BackfillReport of the run."""


@dataclass(frozen=True)
class Split:
    """One unit of work. ``rel``: the input file's path relative to the input root (also its
    output folder). Parquet: row groups [first, first + count). JSONL: bytes [start, end)."""

    path: str
    rel: str
    index: int
    kind: str  # "parquet" | "jsonl"
    first: int
    count: int
    rows: int  # rows in the split (Parquet: exact; JSONL: -1, unknown until read)


@dataclass
class FilePlan:
    path: Path
    rel: str
    size: int
    mtime_ns: int
    splits: list[Split]


@dataclass
class BackfillReport:
    """What a run did. ``rows_*`` count the splits run in *this* run (reused splits and
    skipped files excluded); ``errors_files`` lists the errors files of committed files."""

    files_total: int = 0
    files_skipped: int = 0  # already committed by an earlier run
    files_committed: int = 0
    files_failed: int = 0
    splits_run: int = 0
    splits_reused: int = 0  # finished by an interrupted earlier run
    rows_embedded: int = 0
    rows_bad: int = 0
    seconds: float = 0.0
    model_version: str = ""
    model_fingerprint: str = ""
    workers: int = 0
    failures: list[str] = field(default_factory=list)
    errors_files: list[str] = field(default_factory=list)

    @property
    def posts_per_s(self) -> float:
        return self.rows_embedded / self.seconds if self.seconds > 0 else 0.0


# -- planning (driver) --------------------------------------------------------------------
def list_inputs(input_path: Path) -> tuple[Path, list[Path]]:
    """(root, files): a single .parquet/.jsonl file, or every such file under a folder
    (recursively, sorted; ``_``/``.``-prefixed names skipped). One format per run."""
    if not input_path.exists():
        raise FileNotFoundError(f"`--input` {str(input_path)!r} does not exist.")
    if input_path.is_file():
        if input_path.suffix not in FORMATS:
            raise ValidationError(f"`--input` must be a folder or a file ending in {FORMATS}. Given: {str(input_path)!r}.")
        return input_path.parent, [input_path]
    files = sorted(p for p in input_path.rglob("*") if p.is_file() and p.suffix in FORMATS
                   and not any(part.startswith(("_", ".")) for part in p.relative_to(input_path).parts))
    if not files:
        raise ValidationError(f"`--input` {str(input_path)!r} holds no {' or '.join(FORMATS)} files.")
    kinds = {p.suffix for p in files}
    if len(kinds) > 1:
        raise ValidationError(f"`--input` {str(input_path)!r} mixes .parquet and .jsonl files. "
                              "Fix: put each format in its own folder and run backfill once per folder.")
    return input_path, files


def plan_file(path: Path, root: Path, rows_per_split: int = ROWS_PER_SPLIT) -> FilePlan:
    """The splits of one input file. Parquet: consecutive row groups up to ``rows_per_split``
    rows (a row group is never cut, so a file written as one huge row group is one split);
    reads only the footer, and checks the ``id`` and ``text`` columns exist. JSONL: byte
    ranges of about ``rows_per_split`` * 200 bytes (no read)."""
    st = path.stat()
    rel = path.relative_to(root).as_posix()
    splits: list[Split] = []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        names = meta.schema_arrow.names
        missing = [c for c in ("id", "text") if c not in names]
        if missing:
            raise ValidationError(f"`--input` file {str(path)!r} needs columns `id` and `text`. "
                                  f"Given columns: {names}.")
        first, rows = 0, 0
        for rg in range(meta.num_row_groups):
            rows += meta.metadata.row_group(rg).num_rows
            if rows >= rows_per_split or rg == meta.num_row_groups - 1:
                splits.append(Split(str(path), rel, len(splits), "parquet", first, rg + 1 - first, rows))
                first, rows = rg + 1, 0
    else:
        step = max(1, rows_per_split * 200)
        for start in range(0, max(st.st_size, 1), step):
            splits.append(Split(str(path), rel, len(splits), "jsonl", start, min(step, st.st_size - start), -1))
    return FilePlan(path, rel, st.st_size, st.st_mtime_ns, splits)


def jsonl_rows(path: Path) -> int:
    """Rows of a JSONL file as the split reader counts them: lines that are not blank
    (good and bad rows alike). Reads the file once, line by line."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            n += bool(line.strip())
    return n


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def errors_name(index: int) -> str:
    return f"_errors-{index:05d}.jsonl"


# -- reading and checking one split (actor) -----------------------------------------------
def _read_parquet_split(s: Split):
    """(ids: pyarrow Array of the good rows, texts: list[str], bad: list[dict])."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.ParquetFile(s.path).read_row_groups(list(range(s.first, s.first + s.count)), columns=["id", "text"])
    ids, text = t.column("id").combine_chunks(), t.column("text").combine_chunks()
    bad: list[dict] = []
    if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
        texts = text.to_pylist()
    elif pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type):
        texts = []
        for v in text.to_pylist():
            try:
                texts.append(None if v is None else v.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(b"")  # marked bad below
    else:
        texts = [b""] * len(text)
    good = []
    for i, (pid, tx) in enumerate(zip(ids.to_pylist(), texts)):
        if pid is None:
            bad.append({"id": None, "row_in_split": i, "reason": "`id` is null"})
        elif tx is None:
            bad.append({"id": pid, "row_in_split": i, "reason": "`text` is null"})
        elif isinstance(tx, bytes):
            why = ("`text` is not valid UTF-8" if pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type)
                   else f"`text` must be a string column. Given: {text.type}")
            bad.append({"id": pid, "row_in_split": i, "reason": why})
        else:
            good.append(i)
    if len(good) == len(texts):
        return ids, texts, bad
    keep = pa.array(good, type=pa.int64())
    return pc.take(ids, keep), [texts[i] for i in good], bad


def _read_jsonl_split(s: Split):
    """(ids: list, texts: list[str], bad: list[dict]) for the lines starting in [first, first + count)."""
    ids, texts, bad = [], [], []
    end = s.first + s.count
    with open(s.path, "rb") as f:
        if s.first > 0:
            f.seek(s.first - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line in progress belongs to the previous split
        while True:
            offset = f.tell()
            if offset >= end:
                break
            raw = f.readline()
            if not raw:
                break
            if not raw.strip():
                continue  # blank lines are not rows
            where = {"byte": offset}
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.append({**where, "id": None, "reason": "line is not valid UTF-8"})
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append({**where, "id": None, "reason": f"not valid JSON ({exc.msg})"})
                continue
            if not isinstance(obj, dict):
                bad.append({**where, "id": None, "reason": f"must be a JSON object. Given: {type(obj).__name__}"})
                continue
            pid = obj.get("id")
            if pid is None or isinstance(pid, bool) or not isinstance(pid, (int, str)):
                why = "`id` is missing or null" if pid is None else \
                    f"`id` must be a string or an integer. Given: {type(pid).__name__}"
                bad.append({**where, "id": None if pid is None else repr(pid)[:80], "reason": why})
                continue
            tx = obj.get("text")
            if not isinstance(tx, str):
                why = "`text` is missing or null" if tx is None else f"`text` must be a string. Given: {type(tx).__name__}"
                bad.append({**where, "id": pid, "reason": why})
                continue
            ids.append(pid)
            texts.append(tx)
    if any(isinstance(i, str) for i in ids):  # one Arrow type per part: mixed ids are written as strings
        ids = [str(i) for i in ids]
    return ids, texts, bad


def embeddings_table(ids, vectors, model_version: str):
    """The output schema: ``id`` (as read), ``embedding`` fixed_size_list<float32>[dim],
    ``model_version`` (string). vectors: float32 (n, dim)."""
    import pyarrow as pa

    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({"id": ids, "embedding": emb, "model_version": pa.array([model_version] * len(vectors), pa.string())})


class SplitEmbedder:
    """The Ray Data actor: loads the model once, then embeds one split per call.

    ``__call__`` gets a batch of split descriptions (dict of numpy columns; ``batch_size=1``)
    and returns one summary row per split: rel, index, rows (embedded), bad, seconds,
    error (empty, or why the split failed: it is then retried by a later run)."""

    def __init__(self, model: str, backend: str, threads: int, batch_size: int, out: str,
                 long_posts: str = "truncate"):
        os.environ["POSTEMB_NUM_THREADS"] = str(threads)  # read by the onnxruntime backend
        import torch

        torch.set_num_threads(threads)
        from .encoder import Encoder

        self.enc = Encoder.from_pretrained(model, backend=backend, device="cpu", long_posts=long_posts)
        self.batch_size = batch_size
        self.staging = Path(out) / STAGING

    def __call__(self, batch: dict) -> dict:
        out = {"rel": [], "index": [], "rows": [], "bad": [], "seconds": [], "error": []}
        for j in range(len(batch["rel"])):
            s = Split(**{k: (v[j].item() if hasattr(v[j], "item") else v[j]) for k, v in batch.items()})
            start = time.perf_counter()
            rows = bad = 0
            error = ""
            try:
                rows, bad = self.run_split(s)
            except Exception as exc:  # noqa: BLE001 - reported per split; the file stays uncommitted
                error = f"{type(exc).__name__}: {exc}"[:500]
            for k, v in zip(out, (s.rel, s.index, rows, bad, time.perf_counter() - start, error)):
                out[k].append(v)
        return out

    def run_split(self, s: Split) -> tuple[int, int]:
        import pyarrow.parquet as pq

        ids, texts, bad = (_read_parquet_split if s.kind == "parquet" else _read_jsonl_split)(s)
        vectors = self.enc.encode(texts, batch_size=self.batch_size)
        folder = self.staging / s.rel
        folder.mkdir(parents=True, exist_ok=True)
        if bad:
            for b in bad:
                b.setdefault("split", s.index)
            lines = "".join(json.dumps(b, ensure_ascii=False, default=str) + "\n" for b in bad)
            atomic_write(folder / errors_name(s.index), lines)
        table = embeddings_table(ids, vectors, self.enc.model_version)
        # the part is written last: its presence marks the split done (errors file included)
        atomic_write(folder / part_name(s.index), lambda p: pq.write_table(table, p))
        return len(texts), len(bad)


# -- the run (driver) ---------------------------------------------------------------------
def _model_of(meta: dict) -> tuple:
    return meta.get("model_version"), meta.get("model_fingerprint")


def _check_model_version(out: Path, model_version: str, fingerprint: str) -> None:
    for success in out.rglob(SUCCESS):
        if STAGING in success.relative_to(out).parts:
            continue
        meta = read_json(success) or {}
        theirs = _model_of(meta)
        if theirs[0] not in (None, model_version) or theirs[1] not in (None, fingerprint):
            raise ValidationError(
                f"`--output` {str(out)!r} holds embeddings of model {theirs[0]!r} (fingerprint {theirs[1]}, "
                f"{success.parent}); this run uses {model_version!r} (fingerprint {fingerprint}). "
                "Fix: pick a new --output folder, or run with the model that wrote it.")
        return  # one committed file is enough: every file of a folder was written by one model


def _marker(plan: FilePlan, model_version: str, fingerprint: str, rows_per_split: int) -> dict:
    """What the staging folder of an unfinished file was started with (``_source.json``):
    the source's size and mtime, the model, and the split plan (each split's first and
    count: for JSONL, byte ranges), so parts of different runs are never mixed."""
    return {"size": plan.size, "mtime_ns": plan.mtime_ns, "model_version": model_version,
            "model_fingerprint": fingerprint, "rows_per_split": rows_per_split,
            "splits": [[s.first, s.count] for s in plan.splits]}


def _resume_staging(staging: Path, want: dict, rel: str) -> None:
    """Keep the finished parts of ``staging`` if its marker matches ``want``; restart the file
    if the source or the split plan changed; refuse if another model wrote them."""
    have = read_json(staging / MARKER)
    if have == want:
        return
    if have is not None and staging.is_dir() and any(staging.glob("part-*.parquet")):
        if _model_of(have) != _model_of(want):
            raise ValidationError(
                f"`--output`: the unfinished file {rel!r} ({staging}) was started with model "
                f"{have.get('model_version')!r} (fingerprint {have.get('model_fingerprint')}); this run uses "
                f"{want['model_version']!r} (fingerprint {want['model_fingerprint']}). Its parts would be committed "
                "under the wrong model. Fix: finish it with the first model, or delete that staging folder "
                "(or pick a new --output folder) to embed it with this one.")
        if (have.get("size"), have.get("mtime_ns")) == (want["size"], want["mtime_ns"]):
            log.warning("%s: the split plan changed since the interrupted run (rows_per_split %s -> %s); its "
                        "finished splits are discarded and the file restarts", rel, have.get("rows_per_split"),
                        want["rows_per_split"])
    shutil.rmtree(staging, ignore_errors=True)  # absent, or from another version of the file or plan
    staging.mkdir(parents=True)
    atomic_write(staging / MARKER, json.dumps(want))


def resolve_model_version(model: str) -> str:
    """The model version a backfill with ``model`` writes (no model is loaded)."""
    from .model_dir import resolve

    return resolve(model).config.model_version


def _ray_init(ray_address: str | None, num_cpus: int | None) -> bool:
    """Connect (or start a local Ray). Returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if ray_address:
        ray.init(address=ray_address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    return True


def backfill(input_path, output_path, model: str = "default", *, backend: str = "auto",
             num_workers: int | None = None, threads_per_worker: int = 1, batch_size: int = 64,
             rows_per_split: int = ROWS_PER_SPLIT, ray_address: str | None = None,
             on_split: Callable[[dict, BackfillReport], None] | None = None,
             long_posts: str = "truncate") -> BackfillReport:
    """Embed every post under ``input_path`` into Parquet under ``output_path`` on Ray Data.

    input_path: a .parquet / .jsonl file or a folder of them (columns / fields ``id``, ``text``).
    output_path: a folder (created); see the module docstring for its layout.
    num_workers: model actors (default: the cluster's CPUs // threads_per_worker, at least 1).
    threads_per_worker: inference threads per actor, and the CPUs each asks Ray for.
    ray_address: None starts Ray on this machine (unless already started in this process);
        "auto" or "ray://host:port" / "host:port" joins a cluster.
    on_split: called on the driver after each finished split (summary row, report so far);
        an exception raised there stops the run (what the tests use to interrupt one).
    long_posts: "truncate" or "chunk" (embed whole posts; see postemb_rt.long_posts).
    Returns a BackfillReport; raises BackfillError after the run if some splits failed
    (their files stay uncommitted; the rest is committed).
    """
    import ray
    import ray.data as rd

    from .model_dir import resolve

    if threads_per_worker < 1:
        raise ValidationError(f"`threads_per_worker` must be >= 1. Given: {threads_per_worker}.")
    if num_workers is not None and num_workers < 1:
        raise ValidationError(f"`num_workers` must be >= 1. Given: {num_workers}.")
    if rows_per_split < 1:
        raise ValidationError(f"`rows_per_split` must be >= 1. Given: {rows_per_split}.")
    start = time.perf_counter()
    inp, out = Path(input_path), Path(output_path)
    root, files = list_inputs(inp)
    md = resolve(model)
    model_version, fingerprint = md.config.model_version, md.fingerprint
    if long_posts != "truncate":  # chunk mode changes the vectors of long posts: part of what a resume must match
        fingerprint = f"{fingerprint}+{long_posts}"
    out.mkdir(parents=True, exist_ok=True)
    _check_model_version(out, model_version, fingerprint)
    report = BackfillReport(files_total=len(files), model_version=model_version, model_fingerprint=fingerprint)

    # what is left to do
    pending: dict[str, FilePlan] = {}
    todo: dict[str, set[int]] = {}
    for f in files:
        rel = f.relative_to(root).as_posix()
        done = read_json(out / rel / SUCCESS)
        if done is not None:
            st = f.stat()
            if (done.get("source_size"), done.get("source_mtime_ns")) != (st.st_size, st.st_mtime_ns):
                log.warning("%s changed since it was embedded; skipped (delete %s to embed it again)", f, out / rel)
            report.files_skipped += 1
            shutil.rmtree(out / STAGING / rel, ignore_errors=True)  # late writes of an interrupted run
            continue
        try:
            plan = plan_file(f, root, rows_per_split)
        except ValidationError:
            raise  # a file without `id`/`text`: the input is not what the run expects
        except Exception as exc:  # noqa: BLE001 - an unreadable file fails alone; the rest runs
            report.failures.append(f"{rel}: cannot read it ({type(exc).__name__}: {exc})"[:500])
            report.files_failed += 1
            continue
        staging = out / STAGING / rel
        _resume_staging(staging, _marker(plan, model_version, fingerprint, rows_per_split), rel)
        left = {s.index for s in plan.splits if not (staging / part_name(s.index)).exists()}
        report.splits_reused += len(plan.splits) - len(left)
        pending[rel], todo[rel] = plan, left

    started_ray = False
    try:
        units = [asdict(s) for rel, p in pending.items() for s in p.splits if s.index in todo[rel]]
        for rel in [r for r, left in todo.items() if not left]:  # every split reused: commit now
            _commit(out, pending[rel], report)
        if units:
            # Warm the ONNX export cache once here, so the actors do not all export at once.
            from .encoder import Encoder

            Encoder.from_pretrained(model, backend=backend, device="cpu", warmup=False).close()
            started_ray = _ray_init(ray_address, None)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            workers = num_workers or max(1, cpus // threads_per_worker)
            workers = min(workers, len(units))
            report.workers = workers
            ctx = rd.DataContext.get_current()
            ctx.enable_progress_bars = False
            ds = rd.from_items(units, override_num_blocks=len(units))
            ds = ds.map_batches(
                SplitEmbedder, batch_size=1, batch_format="numpy",
                compute=rd.ActorPoolStrategy(size=workers), num_cpus=threads_per_worker,
                fn_constructor_kwargs=dict(model=model, backend=backend, threads=threads_per_worker,
                                           batch_size=batch_size, out=str(out), long_posts=long_posts),
            )
            for row in ds.iter_rows():
                rel, index = row["rel"], int(row["index"])
                report.splits_run += 1
                if row["error"]:
                    report.failures.append(f"{rel} split {index}: {row['error']}")
                else:
                    report.rows_embedded += int(row["rows"])
                    report.rows_bad += int(row["bad"])
                    todo[rel].discard(index)
                    if not todo[rel]:
                        _commit(out, pending[rel], report)
                if on_split is not None:
                    on_split(row, report)
        report.files_failed += sum(1 for rel, left in todo.items() if left)
    finally:
        if started_ray:
            ray.shutdown()
        _remove_empty_dirs(out / STAGING)
        report.seconds = time.perf_counter() - start
    if report.failures:
        err = BackfillError(
            f"{report.files_failed} file(s) failed ({len(report.failures)} failure(s)); the other files are committed "
            f"and a re-run retries only the failed ones. First: {report.failures[0]}")
        err.report = report
        raise err
    return report


def _commit(out: Path, plan: FilePlan, report: BackfillReport) -> None:
    """All splits of a file are done: write _SUCCESS.json (counts checked against the parts),
    then rename the staging folder into place."""
    import pyarrow.parquet as pq

    staging = out / STAGING / plan.rel
    rows = sum(pq.ParquetFile(staging / part_name(s.index)).metadata.num_rows for s in plan.splits)
    errors = [staging / errors_name(s.index) for s in plan.splits if (staging / errors_name(s.index)).exists()]
    bad = sum(sum(1 for _ in e.open(encoding="utf-8")) for e in errors)
    expected = sum(s.rows for s in plan.splits) if plan.path.suffix == ".parquet" else jsonl_rows(plan.path)
    if rows + bad != expected:  # a part written twice or lost: never commit it
        raise BackfillError(f"{plan.path}: {rows} embedded + {bad} bad rows != {expected} input rows; "
                            f"left in {staging} for inspection.")
    meta = {"source": str(plan.path), "source_size": plan.size, "source_mtime_ns": plan.mtime_ns,
            "model_version": report.model_version, "model_fingerprint": report.model_fingerprint, "rows": rows,
            "bad_rows": bad, "splits": len(plan.splits), "committed_at": time.time()}
    atomic_write(staging / SUCCESS, json.dumps(meta, indent=1))
    (staging / MARKER).unlink(missing_ok=True)
    final = out / plan.rel
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # an uncommitted leftover (no _SUCCESS.json): replace it
        shutil.rmtree(final)
    durable_rename(staging, final)  # the parts and _SUCCESS.json are fsynced already
    report.files_committed += 1
    report.errors_files += [str(final / e.name) for e in errors]


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            pass  # not empty: an unfinished file, resumed by the next run
