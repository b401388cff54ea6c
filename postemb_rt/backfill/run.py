"""The run (driver side): ``backfill`` plans the files, runs their splits on a Ray Data
actor pool, checks and commits each finished file, resumes an interrupted run, and reports."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..durable import atomic_write, durable_rename, read_json
from ..errors import PostEmbError, ValidationError
from .plan import (MARKER, ROWS_PER_SPLIT, STAGING, SUCCESS, FilePlan, errors_name, jsonl_rows, list_inputs, part_name,
                   plan_file)
from .splits import SplitEmbedder

log = logging.getLogger("postemb_rt.backfill")


class BackfillError(PostEmbError, RuntimeError):
    """Some files failed (unreadable input, a split's model failure); they stay uncommitted
    and a re-run retries them. ``.report``: the BackfillReport of the run."""



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
    from ..model_dir import resolve

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

    from ..model_dir import resolve

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
            from ..encoder import Encoder

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
