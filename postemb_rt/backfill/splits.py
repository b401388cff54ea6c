"""One split (actor side): read it, check every row, embed the good ones, write its part
(and its errors file) into the staging folder durably."""
from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

from ..durable import atomic_write
from .plan import BOM, ID_TYPES, STAGING, Columns, Split, errors_name, parquet_text_kind, part_name

INT64 = (-(2 ** 63), 2 ** 63 - 1)
# An empty text ("") gets no vector: the HTTP server refuses it and the near-line worker dead-letters it
# ([CLS] [SEP] alone is no post's vector). Listed in the errors file with this reason, counted apart from
# the bad rows (a post without text is not a broken row). Whitespace is text, as to the server.
EMPTY_TEXT = " is empty: nothing to embed (skipped: no vector)"  # the end of the reason (empty_text_reason)


def empty_text_reason(columns: Columns = Columns()) -> str:
    """The errors file's reason for an empty text, naming the text column (``--text-column``)."""
    return f"`{columns.text}`{EMPTY_TEXT}"


def count_empty(bad) -> int:
    """How many of the errors records ``bad`` (dicts, or the errors file's JSON lines) are empty texts."""
    return sum(1 for b in bad if str(b.get("reason") if isinstance(b, dict) else
                                     EMPTY_TEXT in b and json.loads(b).get("reason")).endswith(EMPTY_TEXT))


# -- reading and checking one split (actor) -----------------------------------------------
def _read_parquet_split(s: Split, id_type: str, columns: Columns = Columns()):
    """(ids: pyarrow Array of the good rows, cast to the output's ``id_type``, texts: list[str],
    bad: list[dict]), from the ``columns`` named. The run checked before any work that they cast
    (:func:`parquet_id_type`: integer or string ids, a string column only into a "string" output; a
    string-like, binary or all-null text); dictionary-encoded columns (pandas ``category``) are read
    by their values."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.ParquetFile(s.path).read_row_groups(list(range(s.first, s.first + s.count)), columns=list(columns))
    if s.skip or s.rows < t.num_rows:  # a piece of a row group larger than rows_per_split (plan_file)
        t = t.slice(s.skip, s.rows)
    ids, text = t.column(columns.id), t.column(columns.text)
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(ids.type.value_type)
    kind = parquet_text_kind(s.path, text.type, columns.text)  # checked by the run too; here for a file changed since
    ids = ids.combine_chunks()
    # string-like, binary, or a column of nulls only (every row bad: `text` is null)
    texts = _values(text, kind == "binary" or (kind == "string" and not _valid_utf8(text)))
    bad: list[dict] = []
    good = []
    for i, (pid, tx) in enumerate(zip(_values(ids, pa.types.is_string(ids.type) and not _valid_utf8(ids)), texts)):
        if pid is None:
            bad.append({"id": None, "row_in_split": i, "reason": f"`{columns.id}` is null"})
        elif isinstance(pid, bytes):
            bad.append({"id": pid.decode("utf-8", "backslashreplace"), "row_in_split": i,
                        "reason": f"`{columns.id}` is not valid UTF-8"})
        elif id_type == "int" and (why := _int_id_problem(pid)):  # a uint64 id above the int64 maximum
            bad.append({"id": pid, "row_in_split": i, "reason": why})
        elif tx is None:
            bad.append({"id": pid, "row_in_split": i, "reason": f"`{columns.text}` is null"})
        elif isinstance(tx, bytes):
            bad.append({"id": pid, "row_in_split": i, "reason": f"`{columns.text}` is not valid UTF-8"})
        elif not tx:
            bad.append({"id": pid, "row_in_split": i, "reason": empty_text_reason(columns)})
        else:
            good.append(i)
    if len(good) < len(texts):
        ids, texts = pc.take(ids, pa.array(good, type=pa.int64())), [texts[i] for i in good]
    return pc.cast(ids, arrow_id_type(id_type)), texts, bad


def _values(column, decode: bool) -> list:
    """``column``'s values as Python objects; ``decode``: each value's bytes decoded as UTF-8 (a binary
    column, or a string one holding invalid UTF-8), kept as bytes where that fails (a bad row)."""
    import pyarrow as pa

    if not decode:
        return column.to_pylist()
    out = []
    for v in column.cast(pa.large_binary()).to_pylist():
        try:
            out.append(None if v is None else v.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(v)
    return out


def _valid_utf8(column) -> bool:
    """Whether a string ``column`` (pyarrow) holds valid UTF-8: Arrow does not check a Parquet file's
    bytes on read, and one invalid value would make ``to_pylist`` fail the whole split on every run."""
    import pyarrow as pa

    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _int_id_problem(pid) -> str | None:
    """Why ``pid`` (an int or a str) cannot be an id of an "int" output, with the fix; None if it can."""
    if isinstance(pid, str):
        why = "`id` must be an integer: this output's ids are integers (`id_type` in its _SUCCESS.json)"
    elif not INT64[0] <= pid <= INT64[1]:
        why = "`id` is outside the int64 range"
    else:
        return None
    return f"{why}. Fix: embed this input into a new --output with --id-type string"


def _read_jsonl_split(s: Split, id_type: str, columns: Columns = Columns()):
    """(ids: list, texts: list[str], bad: list[dict]) for the lines starting in [first, first + count),
    from the fields ``columns`` names. ``id_type`` (the output's, decided before any work): "string"
    writes an integer id as its decimal string; "int" sends a string id to the errors file (with the fix)."""
    ids, texts, bad = [], [], []
    end = s.first + s.count
    with open(s.path, "rb") as f:
        if s.first > 0:
            f.seek(s.first - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line in progress belongs to the previous split
        elif f.read(len(BOM)) != BOM:  # a UTF-8 byte order mark (Windows editors) is no part of row 1
            f.seek(0)
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
            except (ValueError, RecursionError) as exc:  # or a number past Python's 4,300-digit limit, too deep
                bad.append({**where, "id": None, "reason": f"not valid JSON ({getattr(exc, 'msg', str(exc))[:200]})"})
                continue
            if not isinstance(obj, dict):
                bad.append({**where, "id": None, "reason": f"must be a JSON object. Given: {type(obj).__name__}"})
                continue
            pid = obj.get(columns.id)
            if pid is None or isinstance(pid, bool) or not isinstance(pid, (int, str)):
                why = f"`{columns.id}` is missing or null" if pid is None else \
                    f"`{columns.id}` must be a string or an integer. Given: {type(pid).__name__}"
                bad.append({**where, "id": None if pid is None else repr(pid)[:80], "reason": why})
                continue
            if isinstance(pid, str) and (why := _not_unicode(pid, columns.id)):  # the errors file gets it escaped
                bad.append({**where, "id": pid.encode("utf-8", "backslashreplace").decode(), "reason": why})
                continue
            if id_type == "string":
                pid = str(pid)
            elif why := _int_id_problem(pid):
                bad.append({**where, "id": pid, "reason": why})
                continue
            tx = obj.get(columns.text)
            if not isinstance(tx, str):
                why = f"`{columns.text}` is missing or null" if tx is None else \
                    f"`{columns.text}` must be a string. Given: {type(tx).__name__}"
                bad.append({**where, "id": pid, "reason": why})
                continue
            if why := _not_unicode(tx, columns.text):
                bad.append({**where, "id": pid, "reason": why})
                continue
            if not tx:
                bad.append({**where, "id": pid, "reason": empty_text_reason(columns)})
                continue
            ids.append(pid)
            texts.append(tx)
    return ids, texts, bad


def _not_unicode(value: str, field: str) -> str | None:
    """Why the JSONL ``field`` ``value`` can be neither embedded nor written (a lone surrogate: JSON's
    "\\ud83d" escape of half a UTF-16 pair, e.g. an emoji cut by a truncation, which the tokenizer and
    Arrow refuse), or None. One such row would otherwise fail its whole split on every run."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"`{field}` holds a lone surrogate (U+{ord(value[exc.start]):04X}, half of a UTF-16 pair): "
                "not Unicode text")
    return None


def arrow_id_type(id_type: str):
    """The Arrow type of an output's ``id`` column: int64 ("int") or string ("string")."""
    import pyarrow as pa

    if id_type not in ID_TYPES:
        raise ValueError(f"`id_type` must be one of {ID_TYPES}. Given: {id_type!r}.")
    return pa.int64() if id_type == "int" else pa.string()


PROMPT_KEY = b"postemb.prompt_name"  # a Parquet file's schema metadata: its rows' prompt name (embeddings_table)


def embeddings_table(ids, vectors, model_version: str, id_type: str, prompt_name: str | None = None):
    """The output schema (of ``postemb backfill`` and ``postemb embed``): ``id`` (int64 for
    ``id_type`` "int", string for "string", whatever the rows: a part with no good rows is
    still of that type), ``embedding`` fixed_size_list<float32>[dim], ``model_version``
    (string: the vector version, ``Encoder.vector_version``). ids: n ints or strs (or a
    pyarrow Array); vectors: float32 (n, dim). ``prompt_name`` (not None): the prompt the rows
    were embedded with ("" for none, ``prompts.recorded_name``), in the schema's metadata under
    ``PROMPT_KEY`` (``postemb embed``'s record; a backfill records it in ``_SUCCESS.json``)."""
    import pyarrow as pa

    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    ids = ids.cast(arrow_id_type(id_type)) if isinstance(ids, pa.Array) else pa.array(ids, arrow_id_type(id_type))
    table = pa.table({"id": ids, "embedding": emb,
                      "model_version": pa.array([model_version] * len(vectors), pa.string())})
    return table if prompt_name is None else table.replace_schema_metadata({PROMPT_KEY: prompt_name.encode()})


def describe_error(exc: BaseException) -> str:
    """A split's or a commit's error as the report shows it; a full disk says what to do."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "No space left on device" in str(exc)):
        text = (f"no space left on the output's file system ({text}). Fix: free space there (or pick another "
                "--output) and run the same command again: finished splits and files are kept")
    return text[:500]


class SplitEmbedder:
    """The Ray Data actor: loads the model once, then embeds one split per call.

    ``__call__`` gets a batch of split descriptions (dict of numpy columns; ``batch_size=1``)
    and returns one summary row per split: rel, index, rows (embedded), bad, empty (texts
    skipped: empty_text_reason), seconds, error (empty, or why the split failed: it is then
    retried by a later run)."""

    def __init__(self, model: str, backend: str, threads: int, batch_size: int, out: str,
                 long_posts: str = "truncate", precision: str = "fp32", id_type: str = "string",
                 vector_version: str | None = None, prompt_name: str | None = None,
                 truncate_dim: int | None = None, columns: Columns = Columns()):
        os.environ["POSTEMB_NUM_THREADS"] = str(threads)  # read by the onnxruntime backend
        import torch

        torch.set_num_threads(threads)
        from ..encoder import Encoder

        self.enc = Encoder.from_pretrained(model, backend=backend, device="cpu", long_posts=long_posts,
                                           precision=precision)
        # the driver resolved it (None: the full dim, named as such: None would be the encoder's default)
        self.truncate_dim = truncate_dim or self.enc.dim
        self.vector_version = self.enc.vector_version_at(self.truncate_dim)
        if vector_version is not None and self.vector_version != vector_version:  # the model changed on disk
            raise RuntimeError(f"the model {model!r} loaded by this worker has vector version "
                               f"{self.vector_version!r}; the run started with {vector_version!r}.")
        self.batch_size = batch_size
        self.id_type = id_type
        self.columns = Columns(*columns)  # the input's id and text column names
        self.prompt_name = prompt_name  # the driver resolved it (None: the model has no default prompt)
        self.staging = Path(out) / STAGING

    def __call__(self, batch: dict) -> dict:
        out = {"rel": [], "index": [], "rows": [], "bad": [], "empty": [], "seconds": [], "error": []}
        for j in range(len(batch["rel"])):
            s = Split(**{k: (v[j].item() if hasattr(v[j], "item") else v[j]) for k, v in batch.items()})
            start = time.perf_counter()
            rows = bad = empty = 0
            error = ""
            try:
                rows, bad, empty = self.run_split(s)
            except Exception as exc:  # noqa: BLE001 - reported per split; the file stays uncommitted
                error = describe_error(exc)
            for k, v in zip(out, (s.rel, s.index, rows, bad, empty, time.perf_counter() - start, error)):
                out[k].append(v)
        return out

    def run_split(self, s: Split) -> tuple[int, int, int]:
        """Embed the split ``s`` and write its part (and errors file): (rows embedded, bad rows, empty texts)."""
        import pyarrow.parquet as pq

        read = _read_parquet_split if s.kind == "parquet" else _read_jsonl_split
        ids, texts, bad = read(s, self.id_type, self.columns)
        # prompt="" when no prompt applies: never the model's default behind the driver's back
        prompt = {"prompt_name": self.prompt_name} if self.prompt_name is not None else {"prompt": ""}
        vectors = self.enc.encode(texts, batch_size=self.batch_size, truncate_dim=self.truncate_dim, **prompt)
        folder = self.staging / s.rel
        folder.mkdir(parents=True, exist_ok=True)
        if bad:
            for b in bad:
                b.setdefault("split", s.index)
            lines = "".join(json.dumps(b, ensure_ascii=False, default=str) + "\n" for b in bad)
            atomic_write(folder / errors_name(s.index), lines)
        table = embeddings_table(ids, vectors, self.vector_version, self.id_type)
        # the part is written last: its presence marks the split done (errors file included)
        atomic_write(folder / part_name(s.index), lambda p: pq.write_table(table, p))
        empty = count_empty(bad)
        return len(texts), len(bad) - empty, empty
