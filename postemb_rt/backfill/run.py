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
from .plan import (LOCK_NAME, MARKER, ROWS_PER_SPLIT, STAGING, SUCCESS, Columns, FilePlan, check_columns,
                   check_jsonl_fields, errors_name, jsonl_rows, list_inputs, make_output, part_name, plan_file)
from .ray_setup import check_actor_size, check_address, ray_init, rows, sigterm_interrupts
from .resume import check_model_version, check_same, committed, decide_id_type, marker, resume_staging
from .splits import SplitEmbedder, count_empty, describe_error

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
    rows_empty: int = 0  # empty texts: skipped, no vector (splits.empty_text_reason, in the errors files)
    rows_planned: int | None = None  # rows of the splits this run embeds (None: a JSONL split's, unknown until read)
    seconds: float = 0.0
    model_version: str = ""  # the vector version written with each vector (Encoder.vector_version)
    model_fingerprint: str = ""
    prompt_name: str | None = None  # the model's prompt every post was embedded with (None: no prompt)
    id_column: str = "id"  # the input's columns (Parquet) or fields (JSONL) read
    text_column: str = "text"
    id_type: str = ""  # of the output's `id` column: "int" (int64) or "string"
    workers: int = 0
    failures: list[str] = field(default_factory=list)
    errors_files: list[str] = field(default_factory=list)

    @property
    def posts_per_s(self) -> float:
        return self.rows_embedded / self.seconds if self.seconds > 0 else 0.0



# -- the run (driver) ---------------------------------------------------------------------
def resolve_model_version(model: str, precision: str = "fp32", long_posts: str = "truncate",
                          truncate_dim: int | None = None) -> str:
    """The version a backfill with ``model``, ``precision`` and ``long_posts`` writes with each
    vector: ``postemb_rt.encoder.vector_version`` (the model version, plus ``@<k>`` for a nested
    prefix, ``+<precision>`` and ``+chunk`` where they change the numbers), the same string
    ``Encoder.vector_version`` gives (``truncate_dim`` None: the model's default prefix, if its config
    sets one). No model is loaded."""
    from ..encode_options import check_truncate_dim
    from ..model_dir import vector_version
    from ..model_dir import resolve

    cfg = resolve(model).config
    return vector_version(cfg.model_version, precision, long_posts, check_truncate_dim(cfg, truncate_dim))


def backfill(input_path, output_path, model: str = "default", *, backend: str = "auto",
             num_workers: int | None = None, threads_per_worker: int = 1, batch_size: int = 64,
             rows_per_split: int = ROWS_PER_SPLIT, ray_address: str | None = None,
             on_split: Callable[[dict, BackfillReport], None] | None = None,
             on_start: Callable[[BackfillReport], None] | None = None,
             long_posts: str = "truncate", precision: str = "fp32", id_type: str = "auto",
             prompt_name: str | None = None, truncate_dim: int | None = None, id_column: str = "id",
             text_column: str = "text") -> BackfillReport:
    """Embed every post under ``input_path`` into Parquet under ``output_path`` on Ray Data.

    input_path: a .parquet / .jsonl file or a folder of them (columns / fields ``id``, ``text``,
    or the names ``id_column`` and ``text_column`` give: one pair for every file; recorded in each
    ``_SUCCESS.json``, and a resume with others is refused, as with another prompt).
    output_path: a folder (created); see the module docstring for its layout.
    num_workers: model actors (default: the cluster's CPUs // threads_per_worker, at least 1); never
        more than the splits left to run.
    threads_per_worker: inference threads per actor, and the CPUs each asks Ray for.
    ray_address: None starts Ray on this machine (unless already started in this process), or
        joins the cluster in $RAY_ADDRESS when that is set; "auto" or "ray://host:port" /
        "host:port" joins a cluster (one that accepts no connection in 5 s is refused).
    on_split: called on the driver after each finished split (summary row, report so far);
        an exception raised there stops the run (what the tests use to interrupt one).
    on_start: called on the driver once the splits left to embed are known, before the model loads
        (``report.rows_planned``: their rows, for a progress bar's total; earlier runs' splits excluded).
    long_posts: "truncate" or "chunk" (embed whole posts; see postemb_rt.long_posts).
    precision: "fp32" (exact), "bf16" or "int8" (see ``Encoder.from_pretrained``): the workers run on CPU,
    so "fp16" is refused, and so is "auto" (workers on different CPUs would pick different ones).
    The output's ``model_version`` column holds the vector version (the model version plus
    ``@<k>`` / ``+<precision>`` / ``+chunk``); a resumed run must use the same (refused otherwise).
    id_type: "auto", "int" or "string": the one type of the output's ``id`` column, decided
    before any work (see :func:`decide_id_type`), so every output loads in
    ``PostIndex.from_parquet``.
    prompt_name: the model's prompt every post is embedded with (``Encoder.encode(prompt_name=)``;
    None: the model's default prompt, if it has one). An unknown name is refused before any
    work; the name used is recorded in each ``_SUCCESS.json`` (and the report), and a resume
    with another prompt is refused.
    truncate_dim: a nested prefix the model declares (``matryoshka_dims``): each vector is its
    first ``truncate_dim`` components re-normalised, and the vector version gets ``@<k>`` (so a
    resume at another dim is refused like one with another model). None: the model's default
    prefix if its config sets one (a sentence-transformers folder's ``truncate_dim``), else the full dim.
    Returns a BackfillReport; raises BackfillError after the run if some splits or commits
    failed (their files stay uncommitted, and a re-run finishes them; the rest is committed),
    e.g. on a full disk (the error says so and what to do).
    """
    import ray
    import ray.data as rd

    from ..model_dir import REGISTERED, resolve

    if threads_per_worker < 1:
        raise ValidationError(f"`threads_per_worker` must be >= 1. Given: {threads_per_worker}.")
    if num_workers is not None and num_workers < 1:
        raise ValidationError(f"`num_workers` must be >= 1. Given: {num_workers}.")
    if batch_size < 1:
        raise ValidationError(f"`batch_size` must be >= 1. Given: {batch_size}.")
    if rows_per_split < 1:
        raise ValidationError(f"`rows_per_split` must be >= 1. Given: {rows_per_split}.")
    columns = check_columns(Columns(id_column, text_column))
    start = time.perf_counter()
    inp, out = Path(input_path), Path(output_path)
    root, files = list_inputs(inp)
    check_jsonl_fields(files, columns)  # a Parquet file's columns: checked from its footer (decide_id_type)
    from ..encoder import PRECISIONS
    from ..model_dir import vector_version

    if precision == "auto":  # each node would resolve it for its own CPU: one output, several versions
        raise ValidationError("`precision` 'auto' is refused by backfill: every worker would pick the fastest "
                              "precision for its own CPU, and one output would hold vectors of several versions. "
                              "Fix: name one precision (fp32, bf16 or int8); `Encoder.from_pretrained('MODEL', "
                              "precision='auto').describe()['precision']` says which is fastest on a node.")
    if precision == "fp16":  # every backend refuses it on CPU, with a fix (CUDA) a backfill cannot take
        raise ValidationError("`precision` 'fp16' is refused by backfill: its workers load the model on CPU, where "
                              "fp16 does not run. Fix: fp32, bf16 or int8.")
    if precision not in PRECISIONS:
        raise ValidationError(f"`precision` must be one of {PRECISIONS}. Given: {precision!r}.")
    md = resolve(model)
    # the vector version (precision and long-post mode included): what each vector is written with
    from ..encode_options import check_truncate_dim

    truncate_dim = check_truncate_dim(md.config, truncate_dim)  # None: the full dim
    model_version = vector_version(md.config.model_version, precision, long_posts, truncate_dim)
    fingerprint = md.fingerprint
    from .. import prompts

    # an unknown name: refused here, listing the prompts
    prompts.resolve(md.config, prompt_name=prompt_name, fix="use one of those, or leave --prompt-name out")
    prompt_name = prompts.name_in_use(md.config, prompt_name)
    # an unreachable cluster, or actors larger than the local Ray: refused before the output folder is made
    check_actor_size(threads_per_worker, check_address(ray_address)[1])
    make_output(inp, out)
    lock = _only_run(out)  # held until the run ends: two runs into one output would undo each other's work
    started_ray, restore_sigterm, report = False, sigterm_interrupts(), None  # SIGTERM stops it as Ctrl-C does
    try:
        check_model_version(out, model_version, fingerprint)
        success, meta = committed(out)
        if success is not None:  # a new output: nothing to match
            check_same(meta, {"prompt_name": prompt_name, "id_column": columns.id, "text_column": columns.text},
                       f"`--output` {str(out)!r}", "pick a new --output folder, or run with the {flag} that wrote it.")
        id_type = decide_id_type(files, out, id_type, columns)
        report = BackfillReport(files_total=len(files), model_version=model_version, model_fingerprint=fingerprint,
                                id_type=id_type, prompt_name=prompt_name, id_column=columns.id,
                                text_column=columns.text)

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
                plan = plan_file(f, root, rows_per_split, columns)
            except ValidationError:
                raise  # a file without the id and text columns: the input is not what the run expects
            except Exception as exc:  # noqa: BLE001 - an unreadable file fails alone; the rest runs
                report.failures.append(f"{rel}: cannot read it ({type(exc).__name__}: {str(exc)[:300]}). Fix: "
                                       "replace it with a readable copy, or move it out of --input: every run fails "
                                       "on it until then")
                report.files_failed += 1
                continue
            staging = out / STAGING / rel
            try:
                resume_staging(staging, marker(plan, model_version, fingerprint, rows_per_split, id_type, prompt_name,
                                               columns), rel)
            except OSError as exc:  # a full disk: this file cannot start; the report names it
                report.failures.append(f"{rel}: cannot prepare its staging folder ({describe_error(exc)})"[:500])
                report.files_failed += 1
                continue
            left = {s.index for s in plan.splits if not (staging / part_name(s.index)).exists()}
            report.splits_reused += len(plan.splits) - len(left)
            pending[rel], todo[rel] = plan, left

        # absolute: an actor resolves a relative path against its own working directory, not the driver's
        units = [{**asdict(s), "path": os.path.abspath(s.path)} for rel, p in pending.items() for s in p.splits
                 if s.index in todo[rel]]
        report.rows_planned = None if any(u["rows"] < 0 for u in units) else sum(u["rows"] for u in units)
        if on_start is not None:
            on_start(report)
        for rel in [r for r, left in todo.items() if not left]:  # every split reused: commit now
            _try_commit(out, pending[rel], report)
        if units:
            # Warm the ONNX export cache once here, so the actors do not all export at once.
            from ..encoder import Encoder

            Encoder.from_pretrained(model, backend=backend, device="cpu", warmup=False, precision=precision).close()
            started_ray = ray_init(ray_address, None)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            workers = num_workers or max(1, cpus // threads_per_worker)
            workers = min(workers, len(units))
            report.workers = workers
            # a model folder by its absolute path (an actor reads a relative one against its own working
            # directory); a registered name as given (each node finds it in its own install)
            actor_model = model if isinstance(model, str) and model in REGISTERED else str(md.path)
            ctx = rd.DataContext.get_current()
            ctx.enable_progress_bars = False
            ds = rd.from_items(units, override_num_blocks=len(units))
            ds = ds.map_batches(
                SplitEmbedder, batch_size=1, batch_format="numpy",
                compute=rd.ActorPoolStrategy(size=workers), num_cpus=threads_per_worker,
                fn_constructor_kwargs=dict(model=actor_model, backend=backend, threads=threads_per_worker,
                                           batch_size=batch_size, out=os.path.abspath(out), long_posts=long_posts,
                                           precision=precision, id_type=id_type, vector_version=model_version,
                                           prompt_name=prompt_name, truncate_dim=truncate_dim, columns=columns),
            )
            for row in rows(ds):
                rel, index = row["rel"], int(row["index"])
                report.splits_run += 1
                if row["error"]:
                    report.failures.append(f"{rel} split {index}: {row['error']}")
                else:
                    report.rows_embedded += int(row["rows"])
                    report.rows_bad += int(row["bad"])
                    report.rows_empty += int(row["empty"])
                    todo[rel].discard(index)
                    if not todo[rel]:
                        _try_commit(out, pending[rel], report)
                if on_split is not None:
                    on_split(row, report)
        report.files_failed += sum(1 for rel, left in todo.items() if left)
    finally:
        if started_ray:
            ray.shutdown()
        restore_sigterm()
        _remove_empty_dirs(out / STAGING)
        lock.release()
        if report is not None:
            report.seconds = time.perf_counter() - start
    if report.failures:
        err = BackfillError(
            f"{report.files_failed} file(s) failed ({len(report.failures)} failure(s)); the other files are committed "
            f"and a re-run retries only the failed ones. First: {report.failures[0]}")
        err.report = report
        raise err
    return report


def _only_run(out: Path):
    """The output's lock (filelock: an OS lock, dropped when its holder ends, a kill included), taken without
    waiting; held by another run: ValidationError naming `--output` and the fix. Two runs into one output (a
    scheduler's retry beside a run still going, two terminals) each removed the other's staging and commits."""
    from filelock import FileLock, Timeout

    lock = FileLock(out / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValidationError(f"`--output` {str(out)!r} is being written by another backfill (it holds "
                              f"{str(out / LOCK_NAME)!r}): two runs into one output undo each other's work. Fix: wait "
                              "for that run to end (or stop it), then run again: it resumes where that one left off.") \
            from None
    return lock


def _try_commit(out: Path, plan: FilePlan, report: BackfillReport) -> None:
    """:func:`_commit`, a failure (a full disk, a row count that does not add up) recorded
    against this file alone: it stays uncommitted and the next run commits it."""
    try:
        _commit(out, plan, report)
    except (OSError, BackfillError) as exc:
        report.failures.append(f"{plan.rel}: cannot commit ({describe_error(exc)})"[:500])
        report.files_failed += 1


def _commit(out: Path, plan: FilePlan, report: BackfillReport) -> None:
    """All splits of a file are done: write _SUCCESS.json (counts checked against the parts),
    then rename the staging folder into place."""
    import pyarrow.parquet as pq

    staging = out / STAGING / plan.rel
    rows = sum(pq.ParquetFile(staging / part_name(s.index)).metadata.num_rows for s in plan.splits)
    errors = [staging / errors_name(s.index) for s in plan.splits if (staging / errors_name(s.index)).exists()]
    bad = empty = 0  # the errors files' lines: bad rows and empty texts
    for e in errors:
        with e.open(encoding="utf-8") as f:
            lines = f.readlines()
        bad, empty = bad + len(lines), empty + count_empty(lines)
    bad -= empty
    expected = sum(s.rows for s in plan.splits) if plan.path.suffix == ".parquet" else jsonl_rows(plan.path)
    if rows + bad + empty != expected:  # a part written twice or lost: never commit it
        raise BackfillError(f"{plan.path}: {rows} embedded + {bad} bad rows + {empty} empty texts != {expected} "
                            f"input rows; left in {staging} for inspection.")
    meta = {"source": str(plan.path), "source_size": plan.size, "source_mtime_ns": plan.mtime_ns,
            "model_version": report.model_version, "model_fingerprint": report.model_fingerprint,
            "id_type": report.id_type, "prompt_name": report.prompt_name, "id_column": report.id_column,
            "text_column": report.text_column, "rows": rows,
            "bad_rows": bad, "empty_rows": empty, "splits": len(plan.splits), "committed_at": time.time()}
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
    """Remove the empty folders under ``root`` (the staging folder), and ``root`` itself when
    it is left empty: a resumed run recreates what it needs."""
    if not root.is_dir():
        return
    for d in [*sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), root]:
        try:
            d.rmdir()
        except OSError:
            pass  # not empty: an unfinished file, resumed by the next run
