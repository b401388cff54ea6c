"""Where an index's vectors come from: Parquet embeddings (``postemb backfill`` / ``postemb
embed`` output) and the near-line Redis store (``postemb_rt.nearline``). Each reader checks
its source (columns, one vector version) and hands back ids and float32 vectors, and the
prompt the posts were embedded with where the source records it (``one_prompt``);
``PostIndex.from_parquet`` / ``PostIndex.from_redis`` build the index from them.
``pyarrow`` and ``redis`` are imported inside the reader that needs them.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ValidationError

log = logging.getLogger("postemb_rt")

_NULLS = " (null: no version; `vector_version` states the version of such rows)"


@contextmanager
def _arrow_errors(path):
    """pyarrow's errors on reading ``path`` as the ValidationError naming it (no traceback)."""
    import pyarrow as pa

    try:
        yield
    except FileNotFoundError:
        raise ValidationError(f"`path` {str(path)!r} does not exist. Fix: give a Parquet file or a folder of them "
                              "(postemb embed --out X.parquet, or postemb backfill's output).") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ValidationError(f"`path` {str(path)!r} is not readable as Parquet embeddings of one dim: {exc}. Fix: "
                              "give the Parquet output of postemb embed or backfill (one model per index).") from None


def _unversioned(path, why: str) -> ValidationError:
    return ValidationError(
        f"`path` {str(path)!r} records no vector version ({why}), so the index would not know which model made "
        "its vectors and `index query --text` could not check the query's model against them. Given: no "
        "`vector_version`. Fix: give `vector_version` (the Encoder.vector_version that embedded them, e.g. "
        "'postemb-mt50-v4'; `postemb embed` and backfill write it in the column), or build without one on purpose "
        "(`allow_unversioned`).")


def one_prompt(records: dict, source) -> str | None:
    """The one prompt name of a source's posts ("" for none), from ``records`` {where: the prompt name
    recorded there, None where nothing is}: None (not known) when some place records nothing, or
    when two disagree (logged as a warning naming both: the index then holds vectors of several
    prompts, so queries cannot match one)."""
    names: dict = {}
    for where, name in records.items():
        if name is None:
            return None
        names.setdefault(name, where)
    if len(names) > 1:
        (a, wa), (b, wb) = list(names.items())[:2]
        log.warning("%s: its posts were embedded with several prompts (%r in %s, %r in %s): the index records none",
                    source, a or "none", wa, b or "none", wb)
        return None
    return next(iter(names), None)


def stated_prompt(given: str | None, recorded: str | None, source) -> str | None:
    """The posts' prompt name for an index built from ``source``: what it ``recorded``, or the caller's
    ``given`` one where it records none; both known and different: ValidationError."""
    if given is not None and recorded is not None and given != recorded:
        raise ValidationError(f"`prompt_name` {given!r} is not the prompt {source} records for its posts: {recorded!r} "
                              "(\"\": none). Fix: leave `prompt_name` out (the source says it).")
    return recorded if given is None else given


def parquet_prompt(files) -> str | None:
    """The prompt name the Parquet ``files`` were embedded with ("" for none): per file, as the
    ``postemb backfill`` output folder holding it records it (``prompt_name`` in its ``_SUCCESS.json``;
    null there: no prompt), else as the file itself does (``postemb embed``: its schema metadata,
    ``splits.PROMPT_KEY``). None when a file has neither (a backfill of a version before prompts, an
    embed with a ``--prompt`` text, other Parquet) or the records disagree (``one_prompt``)."""
    import pyarrow.parquet as pq

    from ..backfill.plan import SUCCESS
    from ..backfill.splits import PROMPT_KEY
    from ..durable import read_json

    records, folders = {}, {}
    for f in sorted(files):
        folder = Path(f).parent
        if folder not in folders:
            meta = read_json(folder / SUCCESS)
            folders[folder] = meta.get("prompt_name", 0) if isinstance(meta, dict) else 0  # 0: no record
        name = folders[folder]
        if name == 0:  # no backfill record: the file's own
            own = (pq.read_schema(f).metadata or {}).get(PROMPT_KEY)
            records[str(f)] = None if own is None else own.decode()
        else:
            records[str(folder)] = "" if name is None else name if isinstance(name, str) else None
    return one_prompt(records, "the Parquet embeddings")


def read_parquet(path, batch_rows: int = 65_536, vector_version: str | None = None,
                 allow_unversioned: bool = True) -> tuple[int, Iterator[tuple[list, np.ndarray, object]], str | None]:
    """(n, batches, prompt name) for Parquet embeddings at ``path`` (columns ``id``, ``embedding``
    fixed-size list<float32>, optional ``model_version``: the vector version), a file or a
    folder (read recursively; ``_``/``.``-prefixed files and folders ignored). n: the row
    count; batches: (ids (b,), float32 (b, dim), vector version or None) of up to
    ``batch_rows`` rows, lazily; prompt name: ``parquet_prompt``'s. ``vector_version``: the
    version of rows without one (no column, or null), which rows with one must equal.
    ``allow_unversioned=False``: rows of no version are refused (before any is read when there is
    no column). Raises ValidationError for missing columns, no rows, rows of no version so refused,
    or more than one vector version (met while iterating)."""
    import pyarrow.dataset as pads

    with _arrow_errors(path):
        ds = pads.dataset(str(path), format="parquet")
    if not ds.files:
        raise ValidationError(f"`path` {str(path)!r} holds no Parquet files (names starting with _ or . are skipped: "
                              "a backfill's _staging/, _SUCCESS.json). Fix: give a Parquet file or a folder of them "
                              "(postemb embed --out X.parquet, or postemb backfill's output, once it has committed "
                              "files).")
    with _arrow_errors(path):  # every file by the schema of all: the first file's would drop the others' columns
        ds = pads.dataset(ds.files, format="parquet", schema=_unified(_one_kind(path, ds.files)))
    names = ds.schema.names
    if "id" not in names or "embedding" not in names:
        raise ValidationError(f"`path` {str(path)!r} needs columns `id` and `embedding`. Given columns: {names}.")
    n = ds.count_rows()
    if n == 0:
        raise ValidationError(f"`path` {str(path)!r} holds no embeddings (0 rows). Fix: give embeddings of at least "
                              "one post; a backfill lists the rows it did not embed, and why, in its output's "
                              "_errors-*.jsonl files.")
    cols = ["id", "embedding"] + (["model_version"] if "model_version" in names else [])
    if "model_version" not in cols and vector_version is None and not allow_unversioned:
        raise _unversioned(path, f"no model_version column; its columns: {names}")

    def batches():
        with _arrow_errors(path):
            yield from _batches()

    def _batches():
        first, seen, dim, rows = None, False, None, {}  # rows: {file: rows read from it}
        for tagged in ds.scanner(columns=cols, batch_size=batch_rows).scan_batches():
            batch, where = tagged.record_batch, tagged.fragment.path
            if batch.num_rows == 0:
                continue
            start = rows.get(where, 0)
            rows[where] = start + batch.num_rows
            ids = batch.column("id").to_pylist()
            vec = _embeddings(path, where, start, ids, batch.column("embedding"), dim)
            dim = vec.shape[1]
            mv = vector_version
            if "model_version" in cols:
                versions = {vector_version if v is None else v for v in batch.column("model_version").to_pylist()}
                if len(versions) != 1:
                    raise ValidationError(
                        f"`path` {str(path)!r} mixes model versions {sorted(map(str, versions))}. "
                        f"Fix: build one index per model version{_NULLS if None in versions else ''}.")
                mv = versions.pop()
                if vector_version is not None and mv != vector_version:
                    raise ValidationError(
                        f"`vector_version` {vector_version!r} is not the version {str(path)!r} records in its "
                        f"model_version column: {mv!r}. Fix: leave `vector_version` out (the column says it), or "
                        f"build from embeddings of {vector_version!r}.")
            if mv is None and not allow_unversioned:
                raise _unversioned(path, "its model_version column is null")
            if not seen:
                first, seen = mv, True
            elif mv != first:
                raise ValidationError(f"`path` {str(path)!r} mixes model versions {first!r} and {mv!r}. "
                                      f"Fix: build one index per model version{_NULLS if None in (mv, first) else ''}.")
            yield ids, vec, mv

    return n, batches(), parquet_prompt(ds.files)


def _unified(schemas: list):
    """The schema to read every file by: pyarrow's unification of the files' ``schemas``, their columns
    read here only (others may differ freely), a column some files lack reading as nulls there (int32 and
    int64 ids as int64), a dictionary column (pandas ``category``) as its values' type. A dataset takes its
    first file's schema, so a first file without ``model_version`` hid the other files' versions."""
    import pyarrow as pa

    plain = [pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in s
                        if f.name in ("id", "embedding", "model_version")]) for s in schemas]
    return pa.unify_schemas(plain, promote_options="permissive")


def _one_kind(path, files) -> list:
    """Each of the Parquet ``files`` has columns ``id`` and ``embedding``, and they hold ids of one type
    (int or string) and embeddings of one width, as their schemas say; else a ValidationError naming
    ``path`` and the file (two files that differ; arrow's own error, met while reading, names neither,
    and a file without a column reads as nulls). Returns the files' schemas."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def kinds(schema) -> tuple:
        for column in ("id", "embedding"):
            if column not in schema.names:
                raise ValidationError(
                    f"`path` {str(path)!r}: {f!r} has no column `{column}` (its columns: {schema.names}): not "
                    "embeddings. Fix: give a folder of embeddings only (postemb embed / backfill output), or move "
                    "that file out of it.")
        i, e = schema.field("id").type, schema.field("embedding").type
        return ("int" if pa.types.is_integer(i) else
                "string" if pa.types.is_string(i) or pa.types.is_large_string(i) else str(i),
                e.list_size if isinstance(e, pa.FixedSizeListType) else None)

    seen: list = [None, None]  # per kind: (value, file) of the first file that says it
    schemas = []
    for f in files:
        with _arrow_errors(f):
            schemas.append(pq.read_schema(f))
        for j, value in enumerate(kinds(schemas[-1])):
            if value is None:
                continue
            if seen[j] is None:
                seen[j] = (value, f)
            elif value != seen[j][0]:
                if j == 0:
                    raise ValidationError(
                        f"`path` {str(path)!r}: the ids of {f!r} are {value}, those of {seen[j][1]!r} {seen[j][0]} "
                        "(one id type per index). Fix: write every file's ids as one type (postemb backfill "
                        "--id-type), or build one index per id type.")
                raise ValidationError(
                    f"`path` {str(path)!r}: the embeddings of {f!r} have {value} values, those of {seen[j][1]!r} "
                    f"{seen[j][0]} (two models or truncate dims). Fix: build one index per vector version, "
                    "from a folder of its own.")
    return schemas


def _embeddings(path, where: str, start: int, ids: list, emb, dim: int | None) -> np.ndarray:
    """A batch's ``embedding`` column as float32 (b, dim), every row checked: an id, an embedding of
    ``dim`` values (None: the batch's first row's), finite, unit L2 (the encoder's output). A bad row:
    ValidationError naming ``path``, the file ``where``, the row (``start``: the batch's first row in
    that file) and its post id, with the fix."""
    import pyarrow.compute as pc

    def bad(i: int, what: str, fix: str) -> ValidationError:
        row = f"row {start + i}" if ids[i] is None else f"post id {ids[i]!r} (row {start + i})"
        return ValidationError(f"`path` {str(path)!r}: {row} of {where!r} {what}. Fix: {fix}.")

    redo = "re-embed that post (postemb embed / backfill write unit vectors), or drop the row"
    if None in ids:
        raise bad(ids.index(None), "has no id (null)", "give every row its post's id, or drop the row")
    if emb.null_count:
        raise bad(int(np.flatnonzero(emb.is_null().to_numpy(zero_copy_only=False))[0]), "has no embedding (null)", redo)
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    dim = int(lengths[0]) if dim is None else dim
    if dim == 0:
        raise bad(0, "has an empty embedding (0 values)", redo)
    if (lengths != dim).any():
        i = int(np.flatnonzero(lengths != dim)[0])
        raise bad(i, f"has an embedding of {lengths[i]} values, the others {dim}",
                  "build one index per model and truncate_dim, from its own embeddings")
    vec = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    if wrong := _first_not_unit(vec, "embedding"):
        raise bad(*wrong, redo)
    return vec


def _first_not_unit(vec: np.ndarray, what: str) -> tuple[int, str] | None:
    """(row, what is wrong with it) for the first row of float32 (n, dim) ``vec`` that is not a finite
    unit L2 vector (the encoder's output: ``checks.first_not_unit``), else None."""
    from .checks import first_not_unit

    bad = first_not_unit(vec)
    if bad is None:
        return None
    row, norm = bad
    if np.isnan(norm):
        return row, f"has NaN or inf in its {what}"
    article = "an" if what[0] in "aeiou" else "a"
    return row, f"has {article} {what} of norm {norm:.4g}, not a unit vector (the encoder's output)"


def read_store(client, vector_version: str, prefix: str | None = None,
               scan_count: int = 1000) -> tuple[list[str], np.ndarray, str | None]:
    """(ids (n,), float32 (n, dim), prompt name): every embedding hash at ``{prefix}:{vector_version}:*``
    in the near-line store, and the prompt its records name (their ``prompt_name``, "" for none; None
    when a record names none, written before prompts, or two differ: ``one_prompt``). ``client``: a
    redis-py client or a ``redis://`` URL. Reads in SCAN pages of ``scan_count`` keys, one pipeline
    each; a key SCAN returns twice (it may) is read once. Deleted posts' tombstones are skipped. Nothing under
    that version: ValidationError listing the versions the store does hold (from a few SCAN pages), or saying
    that every post there was deleted."""
    from .. import nearline

    from ..nearline.keys import require_bytes, scan_literal

    if isinstance(client, str):
        client = nearline.connect(client)
    require_bytes(client)  # a vector is raw float32: decoded replies failed on it (UnicodeDecodeError)
    prefix = prefix or nearline.KEY_PREFIX
    ids, vecs, keys_read, prompts, deleted = [], [], [], {}, 0  # prompts: {prompt name or None: its first post id}
    seen: set = set()  # SCAN may return a key twice (a rehash while it iterates, e.g. under a live worker)
    for keys in _scan_pages(client, f"{scan_literal(nearline.store_key(vector_version, '', prefix))}*", scan_count):
        keys = [k for k in dict.fromkeys(keys) if k not in seen]
        seen.update(keys)
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "post_id", "vector", "prompt_name")
        for key, (pid, vec, prompt) in zip(keys, pipe.execute()):
            key = key.decode() if isinstance(key, bytes) else key
            # the key whole: {prefix}:{version}:* also matches the records of a version "{version}:more"
            if pid is not None and key != nearline.store_key(vector_version, pid.decode(), prefix):
                continue
            if pid is None or vec is None:  # deleted between SCAN and HMGET, or a deleted post's tombstone
                deleted += pid is not None
                continue
            ids.append(pid.decode())
            keys_read.append(key)
            if len(vec) % 4 or not vec:
                raise _bad_record(vector_version, keys_read[-1], ids[-1], f"holds {len(vec)} bytes, not float32 values")
            vecs.append(np.frombuffer(vec, dtype="<f4"))
            prompts.setdefault(None if prompt is None else prompt.decode("utf-8", "replace"), ids[-1])
    if not ids and deleted:
        raise ValidationError(f"`vector_version` {vector_version!r}: every post the store holds under it was deleted "
                              f"({deleted} tombstones, no vectors), so there is nothing to index. Fix: build the index "
                              "once the worker has stored posts under it.")
    if not ids:
        held = _versions_held(client, prefix)
        raise ValidationError(
            f"`vector_version` {vector_version!r}: the store holds no embeddings under it (keys "
            f"{prefix}:{vector_version}:*). Versions it holds: {', '.join(map(repr, held)) or 'none'}"
            f"{' (from a sample of keys)' if held else ''}. Fix: pass the worker's vector version "
            "(Encoder.vector_version: the model version plus +<precision> / +chunk when not fp32 / truncate).")
    records = {f"post {pid!r}": name for name, pid in prompts.items()}
    lengths = np.array([len(v) for v in vecs])
    values, counts = np.unique(lengths, return_counts=True)
    if len(values) > 1:  # the odd one out: a record whose length most records do not have
        usual = int(values[np.argmax(counts)])
        i = int(np.flatnonzero(lengths != usual)[0])
        raise _bad_record(vector_version, keys_read[i], ids[i], f"holds {lengths[i]} values, most others {usual}")
    vectors = np.stack(vecs).astype(np.float32)
    if wrong := _first_not_unit(vectors, "vector"):
        raise _bad_record(vector_version, keys_read[wrong[0]], ids[wrong[0]], wrong[1])
    return ids, vectors, one_prompt(records, f"the store's {vector_version!r} records")


def _bad_record(vector_version: str, key: str, pid: str, what: str) -> ValidationError:
    return ValidationError(f"`vector_version` {vector_version!r}: the store's record {key!r} (post {pid!r}) {what}. "
                           "Fix: delete that key and have the near-line worker embed the post again (publish it), "
                           "or find what else writes under that version.")


def _versions_held(client, prefix: str, pages: int = 3, count: int = 1000) -> list[str]:
    """Vector versions seen in up to ``pages`` SCAN pages of ``{prefix}:*`` keys (a sample, cheap)."""
    from ..nearline.keys import scan_literal

    seen, cursor = set(), 0
    for _ in range(pages):
        cursor, keys = client.scan(cursor=cursor, match=f"{scan_literal(prefix)}:*", count=count)
        for key in keys:
            key = key.decode() if isinstance(key, bytes) else key
            version = key[len(prefix) + 1:].split(":", 1)[0]
            if version and version != "nearline":  # {prefix}:nearline:worker:* are worker counters
                seen.add(version)
        if cursor == 0:
            break
    return sorted(seen)


def _scan_pages(client, match: str, count: int):
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor=cursor, match=match, count=count)
        if keys:
            yield keys
        if cursor == 0:
            return
