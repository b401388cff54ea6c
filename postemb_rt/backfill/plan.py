"""Planning (driver side): the input files of a run, and each file cut into splits, the unit
of work (a run of Parquet row groups, or a byte range of a JSONL file)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from ..errors import ValidationError

log = logging.getLogger("postemb_rt.backfill")
FORMATS = (".parquet", ".jsonl")
STAGING = "_staging"
SUCCESS = "_SUCCESS.json"
LOCK_NAME = ".postemb-backfill.lock"  # held by the run writing the output (backfill.run._only_run)
MARKER = "_source.json"  # in a staging folder: what its parts were made from (see _marker)
ROWS_PER_SPLIT = 10_000  # ~30 s of CPU inference per split on one core: fine-grained resume, small retries
ID_TYPES = ("int", "string")  # of an output's `id` column (Arrow int64 / string): one per output
BOM = b"\xef\xbb\xbf"  # the UTF-8 byte order mark some editors put at the start of a JSONL file
FIELD_PROBE_ROWS = 100  # JSONL objects read to tell a field name the file does not use (check_jsonl_fields)


class Columns(NamedTuple):
    """The names of the input's id and text columns (Parquet) or fields (JSONL): ``--id-column``,
    ``--text-column``. One pair per run, recorded with the output (a resume must use the same)."""

    id: str = "id"
    text: str = "text"


def check_columns(columns: Columns) -> Columns:
    """``columns``, or a ValidationError naming the argument: each a non-empty str, the two different."""
    for arg, name in (("id_column", columns.id), ("text_column", columns.text)):
        if not isinstance(name, str) or not name:
            raise ValidationError(f"`{arg}` must be a column name (a non-empty str). Given: {name!r}.")
    if columns.id == columns.text:
        raise ValidationError(f"`id_column` and `text_column` must name two columns. Given: {columns.id!r} for both. "
                              "Fix: name the input's id column and its text column.")
    return columns


@dataclass(frozen=True)
class Split:
    """One unit of work. ``rel``: the input file's path relative to the input root (also its
    output folder). Parquet: row groups [first, first + count), of which the ``rows`` rows from
    row ``skip`` (a piece of a row group larger than ``rows_per_split``: skip > 0 but for the
    first). JSONL: bytes [start, end)."""

    path: str
    rel: str
    index: int
    kind: str  # "parquet" | "jsonl"
    first: int
    count: int
    rows: int  # rows in the split (Parquet: exact; JSONL: -1, unknown until read)
    skip: int = 0  # Parquet: rows of the first row group before the split's (a cut row group)


@dataclass
class FilePlan:
    path: Path
    rel: str
    size: int
    mtime_ns: int
    splits: list[Split]




def list_inputs(input_path: Path) -> tuple[Path, list[Path]]:
    """(root, files): a single .parquet/.jsonl file, or every such file under a folder
    (recursively, sorted; ``_``/``.``-prefixed names skipped, as Spark and pyarrow skip them; a file of another
    suffix, e.g. ``.jsonl.gz``, is not read, and a warning counts them). One format per run."""
    if not input_path.exists():
        raise FileNotFoundError(f"`--input` {str(input_path)!r} does not exist. Fix: give a folder of "
                                f"{' or '.join(FORMATS)} files, or one such file.")
    if input_path.is_file():
        if input_path.suffix not in FORMATS:
            raise ValidationError(f"`--input` must be a folder or a file ending in {FORMATS}. "
                                  f"Given: {str(input_path)!r}.")
        return input_path.parent, [input_path]
    shown = [p for p in input_path.rglob("*")
             if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(input_path).parts)]
    files = sorted(p for p in shown if p.suffix in FORMATS)
    others = sorted(p for p in shown if p.suffix not in FORMATS)
    if files and others:  # e.g. a .jsonl.gz beside .jsonl files: not read, so said once
        log.warning(
            "%d file(s) under %s are not %s and are not read (e.g. %s); decompress or convert them to embed them",
            len(others), input_path, " or ".join(FORMATS), others[0].relative_to(input_path))
    if not files:
        raise ValidationError(f"`--input` {str(input_path)!r} holds no {' or '.join(FORMATS)} files.")
    kinds = {p.suffix for p in files}
    if len(kinds) > 1:
        raise ValidationError(f"`--input` {str(input_path)!r} mixes .parquet and .jsonl files. "
                              "Fix: put each format in its own folder and run backfill once per folder.")
    return input_path, files


def make_output(input_path: Path, out: Path) -> None:
    """Create the output folder ``out``, or a ValidationError naming `--output`, the value and the fix:
    ``out`` equal to or inside the input folder (a rerun would read the run's own parts as input), the
    input inside ``out`` (`postemb index build` on it would read the input as vectors), or a folder the
    OS will not create (read-only, under a file, a missing mount: its reason)."""
    inp_r, out_r = input_path.resolve(), out.resolve()
    if out_r == inp_r or (input_path.is_dir() and inp_r in out_r.parents):
        raise ValidationError(f"`--output` {str(out)!r} is {'the' if out_r == inp_r else 'inside the'} `--input` "
                              f"{'folder' if input_path.is_dir() else 'file'} {str(input_path)!r}: the run would "
                              "read its own output as input. Fix: pick an --output folder outside the input.")
    if out_r in inp_r.parents:
        raise ValidationError(f"`--output` {str(out)!r} holds the `--input` {str(input_path)!r}: `postemb index "
                              "build` on the output would read the input's files as vectors. Fix: pick an --output "
                              "folder apart from the input.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(f"`--output` {str(out)!r} cannot be created: {exc.strerror or exc} "
                              f"({type(exc).__name__}). Fix: pick an --output folder you can write to (on a "
                              "writable file system, not under a file).") from exc


def plan_file(path: Path, root: Path, rows_per_split: int = ROWS_PER_SPLIT,
              columns: Columns = Columns()) -> FilePlan:
    """The splits of one input file. Parquet: consecutive row groups up to ``rows_per_split``
    rows; a row group larger than that (pandas and pyarrow write up to 1,048,576 rows a group) is
    cut into near-equal pieces of at most ``rows_per_split`` rows, each its own split (each reads
    its group and keeps its rows: the extra read is small beside embedding them); reads only the
    footer, and checks that the ``columns`` exist. JSONL: byte ranges of about
    ``rows_per_split`` * 200 bytes (no read)."""
    st = path.stat()
    rel = path.relative_to(root).as_posix()
    splits: list[Split] = []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        _check_columns(path, meta.schema_arrow.names, columns)
        first, rows = 0, 0
        for rg in range(meta.num_row_groups):
            n = meta.metadata.row_group(rg).num_rows
            if n > rows_per_split:  # cut it; the groups before it close their own split first
                if rg > first:
                    splits.append(Split(str(path), rel, len(splits), "parquet", first, rg - first, rows))
                pieces = -(-n // rows_per_split)
                bounds = [n * i // pieces for i in range(pieces + 1)]
                for a, b in zip(bounds, bounds[1:]):
                    splits.append(Split(str(path), rel, len(splits), "parquet", rg, 1, b - a, a))
                first, rows = rg + 1, 0
                continue
            rows += n
            if rows >= rows_per_split or rg == meta.num_row_groups - 1:
                splits.append(Split(str(path), rel, len(splits), "parquet", first, rg + 1 - first, rows))
                first, rows = rg + 1, 0
    else:
        step = max(1, rows_per_split * 200)
        for start in range(0, max(st.st_size, 1), step):
            splits.append(Split(str(path), rel, len(splits), "jsonl", start, min(step, st.st_size - start), -1))
    return FilePlan(path, rel, st.st_size, st.st_mtime_ns, splits)


def _check_columns(path: Path, names: list[str], columns: Columns, given: str = "Given columns") -> None:
    if columns.id not in names or columns.text not in names:
        raise ValidationError(f"`--input` file {str(path)!r} needs columns `{columns.id}` and `{columns.text}` "
                              f"(--id-column, --text-column). {given}: {names}. Fix: name the columns it "
                              "holds its ids and texts in, e.g. --id-column post_id --text-column body.")


def check_jsonl_fields(files: list[Path], columns: Columns = Columns()) -> None:
    """Refuse, before any work, a JSONL file none of whose first ``FIELD_PROBE_ROWS`` objects has the id
    field or none the text field (``columns``): a name the file does not use (a forgotten --id-column /
    --text-column), which would otherwise make every row a bad row, as a Parquet file without the
    columns is refused. A file with some rows lacking a field is not refused: those are bad rows."""
    for path in (f for f in files if f.suffix == ".jsonl"):
        seen: dict = {}  # the fields met, in order
        objects = 0
        for obj in _jsonl_objects(path):
            objects += 1
            seen.update(dict.fromkeys(obj))
            if (columns.id in seen and columns.text in seen) or objects >= FIELD_PROBE_ROWS:
                break
        if objects:
            _check_columns(path, list(seen), columns, f"Fields of its first {objects} objects")


def jsonl_rows(path: Path) -> int:
    """Rows of a JSONL file as the split reader counts them: lines that are not blank
    (good and bad rows alike; a UTF-8 byte order mark at the start is not text). Reads the
    file once, line by line."""
    n = 0
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            n += bool((line.removeprefix(BOM) if i == 0 else line).strip())
    return n


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def errors_name(index: int) -> str:
    return f"_errors-{index:05d}.jsonl"


def parquet_id_type(path: Path, columns: Columns = Columns()) -> str | None:
    """The id type ("int" or "string") of a Parquet input's id column (``columns.id``), from its
    footer; None for a column of nulls only (every row is bad: it fits any output). Other column
    types are refused (ValidationError naming the file, the type and the fix), and so is a text
    column that holds no text (:func:`parquet_text_kind`). A dictionary-encoded column (what
    pandas writes for a ``category``) counts as its values' type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    _check_columns(path, schema.names, columns)
    parquet_text_kind(path, schema.field(columns.text).type, columns.text)
    t = schema.field(columns.id).type
    t = t.value_type if pa.types.is_dictionary(t) else t
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_null(t):
        return None
    raise ValidationError(f"`--input` file {str(path)!r}: column `{columns.id}` must hold integers or strings. Given: "
                          f"{t}. Fix: cast the column to int64 or string and run again.")


def parquet_text_kind(path, t, column: str = "text") -> str:
    """How the split reader takes a Parquet text column (named ``column``) of Arrow type ``t`` (a
    dictionary by its values' type): "string" (string, large_string, string_view), "binary" (each
    value decoded as UTF-8; an invalid one is a bad row) or "null" (a column of nulls only: every row
    is a bad row, "`text` is null"). Any other type is refused: ValidationError naming the file, the
    type, the fix."""
    import pyarrow as pa

    v = t.value_type if pa.types.is_dictionary(t) else t
    if pa.types.is_string(v) or pa.types.is_large_string(v) or pa.types.is_string_view(v):
        return "string"
    if pa.types.is_binary(v) or pa.types.is_large_binary(v) or pa.types.is_binary_view(v):
        return "binary"
    if pa.types.is_null(v):
        return "null"
    raise ValidationError(f"`--input` file {str(path)!r}: column `{column}` must hold strings. Given: {t}. "
                          "Fix: cast the column to string (or drop the file from the input) and run again.")


def jsonl_first_id_type(path: Path, id_column: str = "id") -> str | None:
    """The id type ("int" or "string") of the first row of a JSONL input with a valid id (field
    ``id_column``: an integer or a string); None when no row has one. Reads the file only up to that row."""
    for obj in _jsonl_objects(path):
        pid = obj.get(id_column)
        if isinstance(pid, str):
            return "string"
        if isinstance(pid, int) and not isinstance(pid, bool):
            return "int"
    return None


def _jsonl_objects(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file, in order, read lazily as the split reader reads rows: a UTF-8
    byte order mark at the start is not text; a line that is not JSON, not UTF-8, blank or not an object
    is skipped (a bad row there, not something to learn fields or id types from)."""
    import json

    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            try:
                obj = json.loads(raw.removeprefix(BOM) if i == 0 else raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict):
                yield obj
