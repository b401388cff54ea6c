"""Resuming (driver side): what an output folder already holds, and whether this run may add to it.

One output holds vectors of one model (vector version and fingerprint) and one prompt, read from
input columns of one pair of names, and ids of one type; its committed files say so in their
``_SUCCESS.json``, and the staging folder of an unfinished file in its ``_source.json``
(``MARKER``), which also records the source and the split plan its finished parts were made from."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..durable import atomic_write, read_json
from ..errors import ValidationError
from .plan import ID_TYPES, MARKER, STAGING, SUCCESS, Columns, FilePlan, jsonl_first_id_type, parquet_id_type

log = logging.getLogger("postemb_rt.backfill")


def _model_of(meta: dict) -> tuple:
    return meta.get("model_version"), meta.get("model_fingerprint")


def committed(out: Path):
    """(the _SUCCESS.json of one committed file of ``out``, its meta), or (None, {}) if none."""
    for success in out.rglob(SUCCESS):
        if STAGING not in success.relative_to(out).parts:
            return success, read_json(success) or {}
    return None, {}


def check_model_version(out: Path, model_version: str, fingerprint: str) -> None:
    success, meta = committed(out)
    if success is not None:
        theirs = _model_of(meta)
        if theirs[0] not in (None, model_version) or theirs[1] not in (None, fingerprint):
            raise ValidationError(
                f"`--output` {str(out)!r} holds embeddings of model {theirs[0]!r} (fingerprint {theirs[1]}, "
                f"{success.parent}); this run uses {model_version!r} (fingerprint {fingerprint}). "
                "Fix: pick a new --output folder, or run with the --model, --precision, --long-posts and "
                "--truncate-dim that wrote it (its version says them: <model>@<dim>+<precision>+<mode>).")
        # one committed file is enough: every file of a folder was written by one model


_UNRECORDED = object()
# What one output shares beside its model: (the key its records hold, the flag, how a refusal says it, what a
# record without the key means). Outputs of versions before prompts recorded none: not checked. Outputs of
# versions before --id-column / --text-column were read from `id` and `text`: the only names there were.
SHARED = (("prompt_name", "--prompt-name", "was embedded with prompt {theirs!r}; this run uses {ours!r} (None: no "
           "prompt). One output holds vectors of one prompt", _UNRECORDED),
          ("id_column", "--id-column", "was read with id column {theirs!r}; this run reads {ours!r}. One output's "
           "ids come from one column", Columns().id),
          ("text_column", "--text-column", "was read with text column {theirs!r}; this run reads {ours!r}. One "
           "output's vectors come from one column", Columns().text))


def recorded(have: dict) -> dict:
    """A _SUCCESS.json or a staging marker ``have``, with the SHARED keys a record of an older version
    lacks filled in as that version read them (the columns; the prompt stays unrecorded)."""
    return {**{key: before for key, _, _, before in SHARED if before is not _UNRECORDED}, **have}


def check_same(have: dict, want: dict, where: str, fix: str) -> None:
    """Refuse to add to an output with another prompt or other input columns than it was made with
    (``have``: a _SUCCESS.json or a staging marker, ``where`` it is; ``want``: this run's values of
    the SHARED keys). ``fix`` is the error's advice, with ``{flag}`` standing for the flag that differs."""
    have = recorded(have)
    for key, flag, says, _ in SHARED:
        theirs = have.get(key, _UNRECORDED)
        if theirs is not _UNRECORDED and theirs != want[key]:
            raise ValidationError(f"`{flag}`: {where} {says.format(theirs=theirs, ours=want[key])}. "
                                  f"Fix: {fix.format(flag=flag)}")


def output_id_type(out: Path) -> tuple[str | None, str]:
    """(the id type of the committed files of ``out``, where it was read), or (None, "") when
    nothing is committed. Outputs of older versions (no ``id_type`` in _SUCCESS.json): from a
    part's schema."""
    success, meta = committed(out)
    if success is None:
        return None, ""
    if meta.get("id_type") in ID_TYPES:
        return meta["id_type"], str(success)
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in sorted(success.parent.glob("part-*.parquet")):
        t = pq.read_schema(part).field("id").type
        if pa.types.is_integer(t):
            return "int", str(part)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string", str(part)
    return None, ""


def decide_id_type(files: list[Path], out: Path, id_type: str = "auto", columns: Columns = Columns()) -> str:
    """The one id type ("int" or "string") of the output, decided before any work, or a
    ValidationError naming the clash and the fix.

    An output that already holds committed files keeps their type (``id_type`` must then be
    "auto" or that type). Else ``id_type`` "int" / "string" as asked, or for "auto": Parquet
    inputs, the type of their id columns (``columns.id``, read from the footers; integer and string
    columns mixed are refused: use "string"); JSONL inputs, the type of the first valid id of
    the first file. Rows then cast: integer ids into a "string" output as their decimal
    strings; a string id into an "int" output is a bad row (errors file, with the fix), and a
    string Parquet column into an "int" output is refused here."""
    if id_type not in ("auto", *ID_TYPES):
        raise ValidationError(f"`id_type` must be 'auto', 'int' or 'string'. Given: {id_type!r}.")
    have, where = output_id_type(out)
    if have is not None and id_type not in ("auto", have):
        raise ValidationError(
            f"`--id-type` {id_type!r}: `--output` {str(out)!r} already holds {have} ids ({where}); one output has "
            f"one id type. Fix: --id-type {have} (or auto), or pick a new --output folder.")
    want = have or (id_type if id_type != "auto" else None)
    why = f"the ids already in {where}" if have else "--id-type int"
    if files[0].suffix == ".parquet":
        found: dict[str, Path] = {}
        for f in files:
            try:
                t = parquet_id_type(f, columns)
            except ValidationError:
                raise
            except Exception:  # noqa: BLE001 - an unreadable file fails alone when it is planned
                continue
            if t is not None:
                found.setdefault(t, f)
        if want == "int" and "string" in found:
            raise ValidationError(
                f"`--input` file {str(found['string'])!r} has string ids, but this output's ids are integers ({why}). "
                "Fix: pick a new --output folder and run with --id-type string.")
        if want is None and len(found) > 1:
            raise ValidationError(
                f"`--input` mixes integer ids ({found['int']}) and string ids ({found['string']}); an output holds one "
                "id type, so its index can read it. Fix: --id-type string (integer ids are written as their decimal "
                "strings), or split the input into one folder per id type.")
        return want or next(iter(found), "string")
    if want is not None:
        return want
    for f in files:
        t = jsonl_first_id_type(f, columns.id)
        if t is not None:
            return t
    return "string"  # no row has an id: every row is bad, the parts are empty


def marker(plan: FilePlan, model_version: str, fingerprint: str, rows_per_split: int, id_type: str,
           prompt_name: str | None = None, columns: Columns = Columns()) -> dict:
    """What the staging folder of an unfinished file was started with (``_source.json``):
    the source's size and mtime, the model (vector version and fingerprint), the split plan
    (each split's first and count, and its skip in a cut row group: for JSONL, byte ranges), the
    id type, the prompt name and the input's id and text columns, so parts of different runs are
    never mixed."""
    return {"size": plan.size, "mtime_ns": plan.mtime_ns, "model_version": model_version,
            "model_fingerprint": fingerprint, "rows_per_split": rows_per_split,
            "splits": [[s.first, s.count] + ([s.skip] if s.skip else []) for s in plan.splits], "id_type": id_type,
            "prompt_name": prompt_name, "id_column": columns.id, "text_column": columns.text}


def resume_staging(staging: Path, want: dict, rel: str) -> None:
    """Keep the finished parts of ``staging`` if its marker matches ``want``; restart the file
    if the source or the split plan changed; refuse if another model, prompt or pair of columns
    wrote them (``check_same``)."""
    have = read_json(staging / MARKER)
    have = recorded(have) if isinstance(have, dict) else have  # an older version's marker: its columns
    if have == want:
        return
    if have is not None and staging.is_dir() and any(staging.glob("part-*.parquet")):
        if _model_of(have) != _model_of(want):
            raise ValidationError(
                f"`--output`: the unfinished file {rel!r} ({staging}) was started with model "
                f"{have.get('model_version')!r} (fingerprint {have.get('model_fingerprint')}); this run uses "
                f"{want['model_version']!r} (fingerprint {want['model_fingerprint']}). Its parts would be committed "
                "under the wrong model. Fix: finish it with the first run's --model, --precision, --long-posts and "
                "--truncate-dim (its version says them: <model>@<dim>+<precision>+<mode>), or delete that staging "
                "folder (or pick a new --output folder) to embed it with this one.")
        check_same(have, want, f"the unfinished file {rel!r} ({staging})", "finish it with that {flag}, or delete "
                   "that staging folder (or pick a new --output folder) to embed it with this one.")
        if (have.get("size"), have.get("mtime_ns")) == (want["size"], want["mtime_ns"]):
            log.warning("%s: the split plan or id type changed since the interrupted run (rows_per_split %s -> "
                        "%s, id type %s -> %s); its finished splits are discarded and the file restarts", rel,
                        have.get("rows_per_split"), want["rows_per_split"], have.get("id_type"), want["id_type"])
    shutil.rmtree(staging, ignore_errors=True)  # absent, or from another version of the file or plan
    staging.mkdir(parents=True)
    atomic_write(staging / MARKER, json.dumps(want))
