"""``postemb embed INPUT --out OUT``: embed a file of posts.

INPUT: ``-`` (standard input, read as a ``.txt`` file), ``.txt`` (one post per line; every line is a
post, empty lines included; ids are 0-based line numbers; a line ends at "\\n" only, a "\\r" just
before it is dropped, and U+2028, form feeds and the like stay inside the post), ``.jsonl`` (one
object per line with ``text`` and optional ``id``) or ``.parquet`` (column ``text``, optional
``id``; no other is read). Ids are all integers or all strings, never null (checked before the model
loads; without ``id``, posts are numbered by position). OUT: ``.npy`` (float32 (n, dim), input
order; with ``--quantize`` the quantized array and dtype, as ``Encoder.encode(precision=...)``) or
``.parquet`` (``id`` int64 or string, ``embedding`` as fixed-size list of float32,
``model_version``: the vector version, e.g. ``all-MiniLM-L6-v2+chunk``; the prompt's name in the
schema metadata, ``postemb.prompt_name``, "" for none, absent for a ``--prompt`` text), written
durably, and readable by ``postemb index build`` (which records that prompt).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

from .. import backends
from ..data import read_lines, split_lines
from ..durable import check_writable
from ..errors import ValidationError
from ..prompts import recorded_name
from ..quantization import PRECISIONS
from . import add_prompt_args, at_least

INT64 = (-(2 ** 63), 2 ** 63 - 1)

INPUTS = (".txt", ".jsonl", ".parquet")
OUTPUTS = (".npy", ".parquet")
PROGRESS_MIN_POSTS = 1000  # show a progress bar from this many posts on


def check_ids(ids: list, where) -> str:
    """The one id type of ``ids`` ("int" or "string"), or a ValidationError naming the first
    row (``where(i)``) whose id is null, of another type, or not of the first row's type."""
    kind = first = None
    names = {"int": "an integer", "string": "a string"}
    for i, pid in enumerate(ids):
        if pid is None:
            raise ValidationError(f"{where(i)}: `id` is null. Fix: give every post an id (all integers or all "
                                  "strings), or leave `id` out of every post to number them by position.")
        if isinstance(pid, bool) or not isinstance(pid, (int, str)):
            raise ValidationError(f"{where(i)}: `id` must be an integer or a string. Given: {type(pid).__name__} "
                                  f"({pid!r}). Fix: write the ids as integers or as strings.")
        if isinstance(pid, int) and not INT64[0] <= pid <= INT64[1]:
            raise ValidationError(f"{where(i)}: `id` {pid} is outside the int64 range. Fix: write the ids as strings.")
        k = "string" if isinstance(pid, str) else "int"
        if kind is None:
            kind, first = k, i
        elif k != kind:
            raise ValidationError(
                f"{where(i)}: `id` {pid!r} is {names[k]}, but {where(first)}'s is {names[kind]}; the output's `id` "
                "column holds one type. Fix: make every id a string (or every id an integer).")
    return kind or "int"


STDIN = "-"  # INPUT that names standard input


def read_stdin() -> list[str]:
    r"""The posts on standard input, as :func:`postemb_rt.data.read_lines` cuts a .txt file: one per
    "\n", empty lines kept, a "\r" before it dropped, a byte-order mark ignored."""
    if sys.stdin is None or sys.stdin.isatty():  # reading would wait for typed posts and a Ctrl-D
        raise ValidationError("`INPUT` - reads the posts from stdin, which is a terminal. Fix: pipe them in "
                              "(cat posts.txt | postemb embed - --out OUT) or name the file as INPUT.")
    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValidationError(f"`INPUT` - (stdin):{line}: not UTF-8 ({exc.reason}: {raw[exc.start:exc.end]!r}). "
                              "Fix: send UTF-8 text (e.g. through iconv -t UTF-8).") from None
    return split_lines(text)


def read_posts(path: Path) -> tuple[list, list[str]]:
    """(ids, texts) from a .txt, .jsonl or .parquet file, or stdin (``-``, as .txt); errors name the file
    and line (or row). The ids are checked (:func:`check_ids`) here, before any model is loaded."""
    if str(path) == STDIN:
        texts = read_stdin()
        return list(range(len(texts))), texts
    if path.is_dir():  # before its suffix: a folder is not fixed by renaming it
        raise ValidationError(f"`INPUT` {str(path)!r} is a folder. Fix: name a file (a folder of Parquet or JSONL "
                              "files is `postemb backfill`'s input).")
    if path.suffix not in INPUTS:
        raise ValidationError(f"`INPUT` must end in one of {INPUTS}. Given: {str(path)!r}. Fix: name the posts' "
                              "file by its format (a CSV: write it as .jsonl or .parquet).")
    if not path.exists():
        raise FileNotFoundError(f"`INPUT` {str(path)!r} does not exist. Fix: check the path (relative paths start "
                                "at the current folder).")
    if path.suffix == ".txt":
        texts = read_lines(path, arg="INPUT")  # one post per "\n": ids are line numbers
        return list(range(len(texts))), texts
    if path.suffix == ".jsonl":
        ids, texts, linenos, has_id = [], [], [], None
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is not JSON
                except UnicodeDecodeError as exc:
                    raise ValidationError(f"`INPUT` {path}:{lineno} is not valid UTF-8 (byte {exc.start} of the "
                                          "line). Fix: save the file as UTF-8.") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValidationError(f"{path}:{lineno}: not valid JSON ({exc.msg}). Fix: one JSON object per "
                                          'line, e.g. {"id": 1, "text": "a post"}.') from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise ValidationError(f"{path}:{lineno}: needs a string field `text`. Given: "
                                          f'{line.strip()[:80]!r}. Fix: one object per line with the post as "text".')
                if has_id is not None and ("id" in obj) != has_id:
                    raise ValidationError(f"{path}:{lineno}: {'has' if 'id' in obj else 'has no'} `id`, unlike "
                                          f"{path}:{linenos[0]}; posts without one are numbered by position, which "
                                          "can repeat a given id. Fix: give every post an id, or none.")
                has_id = "id" in obj
                ids.append(obj.get("id", len(ids)))
                texts.append(obj["text"])
                linenos.append(lineno)
        check_ids(ids, lambda i: f"{path}:{linenos[i]}")
        check_unique(ids, lambda i: f"{path}:{linenos[i]}")
        return ids, texts
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(exc: Exception) -> ValidationError:
        why = " ".join(str(exc).split()).rstrip(".")  # pyarrow's message, one line
        return ValidationError(f"`INPUT` {path} is not a readable Parquet file: {why}. Fix: give a Parquet table with "
                               "a `text` column (and optionally `id`), or a .txt / .jsonl file.")

    try:  # (OSError: pyarrow's for a damaged page)
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise unreadable(exc) from None
    if "text" not in names:
        raise ValidationError(f"`INPUT` {path} needs a column `text`. Given columns: {names}. Fix: "
                              "name the column of posts `text` (postemb backfill --text-column reads another name).")
    try:  # those two columns only: others (images, nested rows, a damaged one) are neither read nor held
        table = pq.read_table(path, columns=[c for c in ("text", "id") if c in names])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise unreadable(exc) from None
    texts = table.column("text").to_pylist()
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValidationError(f"{path}: row {i} column `text` must be a string. Given: {type(t).__name__}. Fix: "
                                  "give every row its post's text (drop rows without one).")
    if "id" not in table.column_names:
        return list(range(len(texts))), texts
    col = table.column("id")
    if pa.types.is_dictionary(col.type):  # pandas' category: its values
        col = col.cast(col.type.value_type)
    if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            or pa.types.is_null(col.type)):
        raise ValidationError(f"`INPUT` {path}: column `id` must be integers or strings. Given: {col.type}. "
                              "Fix: cast the column to int64 or string.")
    ids = col.to_pylist()
    check_ids(ids, lambda i: f"{path} row {i}")
    check_unique(ids, lambda i: f"{path} row {i}")
    return ids, texts


def check_unique(ids: list, where) -> None:
    """A ValidationError naming the first id given twice and both places (``where(i)``): an
    index keeps one vector per id, so the second post would be dropped without a word."""
    seen: dict = {}
    for i, pid in enumerate(ids):
        j = seen.setdefault(pid, i)
        if j != i:
            raise ValidationError(f"{where(i)}: `id` {pid!r} was given before, at {where(j)}; an id names one post. "
                                  "Fix: make the ids unique (or leave `id` out to number the posts by position).")


def write_embeddings(path: Path, ids: list, vectors, model_version: str, prompt_name: str | None = None) -> None:
    """Write ``vectors`` float32 (n, dim) to ``path`` (.npy, or .parquet with ``ids``, ``model_version``
    and the ``prompt_name`` they were embedded with: the schema of ``postemb backfill``) durably: a
    temporary name, fsync, rename, so a failure (a full disk) leaves no partial file under ``path``."""
    import numpy as np

    from ..backfill.splits import embeddings_table
    from ..durable import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        atomic_write(path, lambda tmp: np.save(tmp, vectors))
        return
    import pyarrow.parquet as pq

    table = embeddings_table(ids, vectors, model_version, check_ids(ids, lambda i: f"ids[{i}]"), prompt_name)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def run(args) -> int:
    from ..encoder import Encoder

    inp, out = Path(args.input), Path(args.out)
    if out.suffix not in OUTPUTS:
        raise ValidationError(f"`--out` must end in one of {OUTPUTS}. Given: {args.out!r}. Fix: add .npy (an array "
                              "in input order) or .parquet (with ids and the vector version).")
    if args.quantize != "float32" and out.suffix != ".npy":
        raise ValidationError(
            f"`--quantize {args.quantize}` needs a .npy `--out` (the quantized dtype is kept there); .parquet holds "
            f"float32 embeddings, as `postemb index build` reads them. Given: --out {args.out!r}. "
            "Fix: write to a .npy file, or drop --quantize.")
    if str(inp) != STDIN and out.exists() and inp.exists() and out.samefile(inp):  # read whole, then replaced
        raise ValidationError(f"`--out` {args.out!r} is INPUT itself; writing it would replace the posts with their "
                              "embeddings. Fix: pass another --out path.")
    ids, texts = read_posts(inp)
    if str(inp) == STDIN:
        inp = "stdin"  # as the messages below name it
    check_writable(out, "--out")
    enc = Encoder.from_pretrained(args.model, backend=args.backend, device=args.device,
                                  precision=args.precision, max_length=args.max_length, long_posts=args.long_posts)
    if not texts:
        logging.getLogger("postemb_rt").warning("%s holds no posts; writing an empty array", inp)
    opts = dict(precision=args.quantize, prompt_name=args.prompt_name, prompt=args.prompt,
                truncate_dim=args.truncate_dim)
    if args.quantize != "float32" and texts:  # imports sentence-transformers, calibrates (once): not timed
        enc.encode(texts[:1], **opts)
    start = time.perf_counter()
    show = not args.no_progress and len(texts) >= PROGRESS_MIN_POSTS and sys.stderr.isatty()  # no redraws in a log
    try:
        vectors = enc.encode(texts, batch_size=args.batch_size, show_progress_bar=show,
                             truncate=not args.no_truncate, **opts)
    except ValidationError as exc:  # the library names `texts[i]` and its argument: named here as posts and flags
        item = re.match(r"`texts\[(\d+)\]` ", str(exc))
        if item is None:
            raise
        i = int(item.group(1))
        post = f"post {i} of {inp} (id {ids[i]!r})"
        too_long = re.match(r"is longer than (max_length \(\d+ tokens\))", str(exc)[item.end():])
        if too_long is None:  # e.g. a lone surrogate (a "\ud800" JSON escape)
            raise ValidationError(f"{post} {str(exc)[item.end():]}") from None
        raise ValidationError(f"{post} is longer than {too_long.group(1)}, and "
                              "--no-truncate is given. Fix: shorten it, drop --no-truncate (posts are cut at "
                              "max_length), or --long-posts chunk (embed long posts whole).") from None
    seconds = time.perf_counter() - start
    version = enc.vector_version_at(args.truncate_dim)
    write_embeddings(out, ids, vectors, version, recorded_name(enc.model.config, args.prompt, args.prompt_name))
    st = enc.last_stats
    rate = len(texts) / seconds if seconds > 0 else float("inf")
    dim = args.truncate_dim or enc.truncate_dim or enc.dim  # asked for, else the encoder's default prefix
    print(f"embedded {len(texts)} posts in {seconds:.2f} s ({rate:.0f} posts/s, {st.tokens / max(seconds, 1e-9):.0f} "
          f"tokens/s), backend={enc.backend.name}, model={version}, dim={dim}"
          f"{f' ({vectors.shape[-1]} bytes per row, packed bits)' if args.quantize.endswith('binary') else ''}, "
          f"truncated={len(st.truncated)}, chunked={st.chunked} ({st.windows} windows) -> {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed a file of posts", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="posts: .txt, .jsonl or .parquet; '-': stdin, one post per line")
    p.add_argument("--out", required=True, help="embeddings: .npy or .parquet")
    p.add_argument("--model", default="default", help="'default', 'base' or a model directory (default: default)")
    p.add_argument("--backend", default="auto", choices=backends.CHOICES,
                   help="the runtime (default: auto: the fastest installed for this device and precision)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--precision", default="fp32", choices=backends.PRECISIONS,
                   help="fp32 (exact); on CPU bf16 or int8 (gated by measured fidelity, see README "
                        "\"Fast precisions\"); on CUDA fp16 or bf16; auto: the first that clears the bar here "
                        "(bf16 with native bf16, else int8, else fp32; the vector version says which) (default: fp32)")
    p.add_argument("--quantize", choices=list(PRECISIONS), default="float32",
                   help="output quantization, Encoder.encode(precision=...): int8 / uint8 one byte per dimension "
                        "(the model's calibration ranges), binary / ubinary one bit (8 per byte); .npy output "
                        "only, which keeps the dtype (default: float32)")
    add_prompt_args(p)
    p.add_argument("--truncate-dim", type=int, default=None,
                   help="a nested prefix the model declares (its matryoshka_dims, e.g. 32, 16 or 8 for default): the "
                        "first K components re-normalised; the vector version gets '@K' (default: the full dim)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="posts per batch at most (default: 64)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per post (default: the model's)")
    p.add_argument("--no-truncate", action="store_true",
                   help="fail on posts longer than max-length (with --long-posts chunk: than max_chunks windows)")
    p.add_argument("--long-posts", choices=["truncate", "chunk"], default="truncate",
                   help="truncate: cut posts at max-length; chunk: embed whole posts as windows of max-length "
                        "tokens, token-weighted mean (default: truncate)")
    p.add_argument("--no-progress", action="store_true",
                   help=f"no progress bar (default: one on stderr from {PROGRESS_MIN_POSTS} posts on, when it is a "
                        "terminal)")
    p.set_defaults(func=run)
