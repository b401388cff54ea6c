"""``postemb index build|query``: an ANN index over post embeddings, and top-k queries on it.

build: from Parquet embeddings (``postemb backfill`` or ``postemb embed`` output: a file
or a folder; their ``model_version`` column is the vector version the index records, and Parquet
without one needs ``--vector-version V``, or ``--allow-unversioned`` for an index that records
none) or from the near-line store (``--redis URL --vector-version V``: the version the
worker stores under, e.g. postemb-mt50-v4 or postemb-mt50-v4+bf16+chunk); FAISS kind by size
(flat up to 20k posts, HNSW up to 2M, IVF beyond) unless ``--kind`` says. ``--binary`` stores
sign bits (1 bit per dimension, Hamming distance); ``--rescore N`` keeps the float vectors
too and re-ranks the k*N Hamming-nearest by cosine. Rows whose id came earlier are skipped
(the first row of each id is kept) and counted in a warning, which counts apart, and names, those
whose vector is not their id's first row's (two posts under one id, or a post edited and embedded
again: retrieval/repeats.py says why they are reported, not refused).
query: by text (``--text``), embedded the way the index's vectors were: the index records
their vector version (model version + "@K" for a nested prefix + "+<precision>" when not fp32
+ "+maxN" for a shorter max_length + "+chunk" in chunk mode), and the query encoder is loaded
with that prefix, precision, max_length and long-post mode; ``--model``
must be that model (default: default); ``--precision`` / ``--long-posts`` may say the same
thing explicitly, and anything that would give another vector version is refused;
``--prompt-name`` / ``--prompt`` as in ``postemb embed`` (default: the model's default prompt). A
prompt is not part of the vector version: the index records the one its posts were embedded with
where its source says it (a backfill output's _SUCCESS.json, the near-line records; build prints
it), and a query embedded with that same prompt on a model whose query and document prompts
differ gets a warning naming the fix (``--prompt-name query`` against posts embedded with
``document``); the query still runs. Or for a
member (``--member ID,ID,...``: the posts they engaged with, each counted once; Ward clusters,
one query per cluster, merged; the history itself is left out; ``--mean`` uses the single mean
vector instead). See docs/RETRIEVAL.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from ..errors import ValidationError
from . import add_prompt_args

log = logging.getLogger("postemb_rt")


def _parse_id(raw: str, index):
    """A post id from the command line: as given if the index holds it, else as an int."""
    if index.position(raw) is not None:
        return raw
    try:
        return int(raw)
    except ValueError:
        return raw


def member_ids(raw: str, index, where: str) -> list:
    """The ids of ``--member`` ``raw``, in order, each once: split at commas, an item is taken as
    given when the index holds it so, else with surrounding spaces stripped (empty items
    dropped), as a str or else an int (``_parse_id``). Raises ValidationError naming
    ``--member`` when no id is left or one is not in the index (``where``: the index folder)."""
    items = {}  # id -> the item that gave it
    for item in raw.split(","):
        item = item if index.position(item) is not None else item.strip()
        if item:
            items.setdefault(_parse_id(item, index), item)
    if not items:
        raise ValidationError(f"`--member` must name at least one post id. Given: {raw!r}. Fix: --member ID,ID,... "
                              "(comma-separated ids of posts in the index).")
    for pid, item in items.items():
        if index.position(pid) is None:
            like = f"ids like {index.ids[0]!r}" if len(index) else "none"
            raise ValidationError(f"`--member` id {item!r} is not in the index {where!r} ({len(index)} posts, "
                                  f"{like}). Fix: ids of posts the index holds.")
    return list(items)


def _store(url: str):
    """(client, where) for ``--redis`` ``url``; where: host:port and db, never the password."""
    from .. import nearline

    client = nearline.connect(url)
    kw = client.connection_pool.connection_kwargs
    where = f"{kw['host']}:{kw.get('port', 6379)}" if "host" in kw else str(kw.get("path"))
    return client, f"{where} db {kw.get('db', 0)}"


def _store_error(exc: Exception, where: str) -> ValidationError:
    """A Redis error while reading ``--redis``, as one line naming it and the fix."""
    import redis

    why = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
    if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
                        redis.exceptions.NoPermissionError)):
        return ValidationError(f"`--redis` {where} refused the credentials: {why}. Fix: give a user that may SCAN and "
                               "HMGET the store's keys, redis://[USER]:PASSWORD@HOST:PORT/DB.")
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return ValidationError(f"`--redis` {where} does not answer: {why}. Fix: start it, or point --redis at the "
                               "store the near-line worker writes to (redis://HOST:PORT/DB).")
    return ValidationError(f"`--redis` {where}: reading the store failed: {why}. Fix: see the Redis error.")


def split_vector_version(version: str) -> tuple[str, str, str, int | None, int | None]:
    """``postemb_rt.model_dir.vector_version``'s inverse: "X@16+bf16+max64+chunk" -> ("X", "bf16", "chunk",
    16, 64); "X" -> ("X", "fp32", "truncate", None, None). Suffixes are read from the right, so a model
    version that itself holds "+" or "@" stays whole unless "@<digits>" ends it."""
    from ..encoder import PRECISIONS
    from ..model_dir import vector_version

    model, precision, long_posts, dim, max_length = version, "fp32", "truncate", None, None
    if model.endswith("+chunk"):
        model, long_posts = model[: -len("+chunk")], "chunk"
    head, plus, tail = model.rpartition("+max")
    if plus and head and tail.isdigit() and not tail.startswith("0"):
        model, max_length = head, int(tail)
    for p in PRECISIONS:
        if p not in ("fp32", "auto") and model.endswith(f"+{p}"):
            model, precision = model[: -len(p) - 1], p
            break
    head, at, k = model.rpartition("@")
    if at and head and k.isdigit() and not k.startswith("0"):
        model, dim = head, int(k)
    assert vector_version(model, precision, long_posts, dim, max_length) == version
    return model, precision, long_posts, dim, max_length


def query_encoder(args, index_version: str | None):
    """The encoder for ``--text`` queries, loaded so its vector version is the index's: the
    precision and long-post mode come from the index's recorded version unless ``--precision`` /
    ``--long-posts`` say otherwise (then they must agree with it); a nested prefix (``@<k>``) is
    returned as the ``truncate_dim`` to encode queries with. Checked before the model loads, with
    ``--prompt-name`` / ``--prompt``. Returns (encoder, truncate_dim or None)."""
    from ..encoder import Encoder
    from ..model_dir import vector_version
    from ..model_dir import resolve
    from ..prompts import resolve as resolve_prompt

    if index_version:
        model, want_p, want_lp, dim, max_length = split_vector_version(index_version)
    else:  # an index built without a version (--allow-unversioned, PostIndex.build in code): the encoder's defaults
        model, want_p, want_lp, dim, max_length = None, "fp32", "truncate", None, None
        log.warning("`--index` %r records no vector version, so `--model` %r is not checked against the model that "
                    "made its vectors: if another model (or precision) made them, the hits mean nothing. Fix: rebuild "
                    "the index with --vector-version V.", args.index, args.model)
    precision, long_posts = args.precision or want_p, args.long_posts or want_lp
    config = resolve(args.model).config
    resolve_prompt(config, prompt=args.prompt, prompt_name=args.prompt_name)  # a bad one: refused before the load
    got = vector_version(config.model_version, precision, long_posts, dim, max_length)
    if index_version and got != index_version:
        raise ValidationError(
            f"`--model` {args.model!r} with --precision {precision} --long-posts {long_posts} gives vectors of "
            f"version {got!r} but the index holds {index_version!r} vectors. Fix: --model with model version "
            f"{model!r}, and --precision {want_p} --long-posts {want_lp} (or leave both out: they are read from "
            "the index).")
    return Encoder.from_pretrained(args.model, device=args.device, precision=precision, long_posts=long_posts,
                                   max_length=max_length), dim


def prompt_warning(config, prompt: str | None, prompt_name: str | None, posts_prompt: str | None) -> str | None:
    """What to warn when ``--text`` queries (``prompt`` / ``prompt_name``, as ``prompts.resolve`` takes
    them) are embedded with the prompt text the index's posts were (``posts_prompt``: its record, a
    name of ``config``'s prompts, "" for none) on a model whose ``query`` and ``document`` prompts
    differ (e5, bge, nomic style: queries and posts each take their own); None when they are not, the
    model's two are one text (every post and query alike, as ``default``), or the posts' prompt is
    not known. A warning, not a refusal: a query may be meant as a post (post-to-post search)."""
    from ..prompts import model_prompts, resolve

    prompts = model_prompts(config)
    posts = prompts.get(posts_prompt) if posts_prompt else ""
    if posts_prompt is None or posts is None or prompts["query"] == prompts["document"]:
        return None
    if resolve(config, prompt=prompt, prompt_name=prompt_name) != posts:
        return None
    sides = f"query {prompts['query']!r}, document {prompts['document']!r}"
    fix = ("the posts were embedded with the query prompt: rebuild the index from posts embedded with the one for "
           "documents (postemb backfill --prompt-name document)" if posts == prompts["query"] else
           "--prompt-name query")
    same = f"prompt {posts_prompt!r}, {posts!r}" if posts_prompt else "no prompt"
    return (f"`--text` queries are embedded as the index's posts were ({same}), but this model's query and "
            f"document prompts differ ({sides}): a query and the posts it should find usually take one each. "
            f"Fix: {fix} (or leave it so when the queries are posts themselves).")


def run_build(args) -> int:
    from ..retrieval import PostIndex
    from ..retrieval.folder import check_target
    from ..retrieval.repeats import skipped_message

    start = time.perf_counter()
    if args.rescore and not args.binary:
        raise ValidationError(f"`--rescore` {args.rescore} needs `--binary` (a float index ranks by exact cosine "
                              "already). Fix: add --binary, or drop --rescore.")
    if args.input and args.redis:
        raise ValidationError(f"`index build` reads one source: give `--input` or `--redis`, not both. Given: --input "
                              f"{args.input!r} and --redis. Fix: drop one (build one index per source).")
    params = {"kind": args.kind, "binary": args.binary, "rescore": args.rescore}
    check_target(args.out, "--out")  # before the build: a folder save() would refuse
    if args.redis:
        import redis

        if not args.vector_version:
            raise ValidationError("`--redis` needs `--vector-version` (which embeddings to index: the version the "
                                  "near-line worker stores under, its Encoder.vector_version). Given: none.")
        client, where = _store(args.redis)
        try:
            idx = PostIndex.from_redis(client, args.vector_version, **params)
        except redis.RedisError as exc:
            raise _store_error(exc, where) from None
        finally:
            client.close()
        source, rows = f"redis {where}", len(idx) + idx.skipped
    else:
        if not args.input:
            raise ValidationError("`index build` needs `--input` (Parquet embeddings) or `--redis URL`. Given: neither.")
        bar = None

        def progress(done: int, total: int) -> None:  # on a terminal only: no redraws in a log
            nonlocal bar
            if bar is None and not args.no_progress and sys.stderr.isatty():
                from tqdm.auto import tqdm

                bar = tqdm(unit="post", desc="index build", total=total)
            if bar is not None:
                bar.update(done - bar.n)
        try:
            idx = PostIndex.from_parquet(args.input, vector_version=args.vector_version,
                                         allow_unversioned=args.allow_unversioned, on_progress=progress, **params)
        finally:
            if bar is not None:
                bar.close()
        source, rows = args.input, len(idx) + idx.skipped
    idx.save(args.out)
    d = idx.describe()
    binary = f", binary ({d['bits']} bits, rescore {d['rescore']})" if d["binary"] else ""
    prompt = {None: "not known", "": "none"}.get(d["prompt_name"], d["prompt_name"])
    print(f"indexed {d['count']} posts from {source} in {time.perf_counter() - start:.1f} s: kind={d['kind']} "
          f"({d['faiss_index']}), dim={d['dim']}{binary}, vector version={d['vector_version']}, posts' prompt="
          f"{prompt} -> {args.out}")
    if idx.skipped:
        print(f"warning: {skipped_message(idx, rows)}")
    return 0


def run_query(args) -> int:
    from ..retrieval import PostIndex, mean_embedding, member_embedding, retrieve

    if bool(args.text) == bool(args.member):
        raise ValidationError("`index query` needs either `--text` or `--member`. Given: "
                              f"{'both' if args.text else 'neither'}.")
    if args.k < 1:
        raise ValidationError(f"`--k` must be a positive int. Given: {args.k}.")
    if args.member and (args.prompt_name is not None or args.prompt is not None):
        given = f"--prompt-name {args.prompt_name!r}" if args.prompt_name is not None else f"--prompt {args.prompt!r}"
        raise ValidationError(f"`--prompt-name` / `--prompt` apply to `--text` queries (a member's vectors are the "
                              f"stored ones). Given: {given} with --member. Fix: drop it.")
    from ..retrieval.members import DISTANCE_THRESHOLD, MAX_CLUSTERS

    member_only = [("--mean", args.mean, False), ("--distance-threshold", args.distance_threshold, DISTANCE_THRESHOLD),
                   ("--max-clusters", args.max_clusters, MAX_CLUSTERS)]
    for flag, value, default in member_only if args.text else []:
        if value != default:
            given = flag if value is True else f"{flag} {value}"
            raise ValidationError(f"`{flag}` applies to `--member` queries (how a member's posts are clustered). "
                                  f"Given: {given} with --text. Fix: drop it.")
    idx = PostIndex.load(args.index)
    if args.rescore and not idx.binary:
        raise ValidationError(f"`--rescore` {args.rescore} applies to a binary index (`index build --binary --rescore "
                              f"N`); `--index` {args.index!r} is a float index, which ranks by exact cosine already. "
                              "Fix: drop --rescore.")
    results = []
    if args.text:
        enc, dim = query_encoder(args, idx.vector_version)
        if warning := prompt_warning(enc.model.config, args.prompt, args.prompt_name, idx.prompt_name):
            log.warning("%s", warning)
        try:
            vectors = enc.encode(args.text, truncate_dim=dim, prompt_name=args.prompt_name, prompt=args.prompt)
        finally:
            enc.close()
        for text, hits in zip(args.text, idx.search(vectors, args.k, rescore=args.rescore)):
            results.append({"query": text, "hits": hits})
    else:
        ids = member_ids(args.member, idx, args.index)
        history = idx.vectors_of(ids)
        member = mean_embedding(history) if args.mean else member_embedding(
            history, distance_threshold=args.distance_threshold, max_clusters=args.max_clusters)
        hits = retrieve(idx, member, args.k, exclude=ids, rescore=args.rescore)
        results.append({"query": f"member of {len(ids)} posts, {len(member)} cluster(s) "
                                 f"(weights {', '.join(f'{w:.2f}' for w in member.weights)})", "hits": hits})
    for r in results:
        if args.json:
            print(json.dumps({"query": r["query"], "hits": [{"id": h.id, "score": round(h.score, 6)} for h in r["hits"]]},
                             ensure_ascii=False, default=str))
            continue
        print(f"# {r['query']}")
        for rank, h in enumerate(r["hits"], 1):
            print(f"{rank:>3}  {h.score:.4f}  {h.id}")
    return 0


def register(sub) -> None:
    from ..retrieval.members import DISTANCE_THRESHOLD, MAX_CLUSTERS

    p = sub.add_parser("index", help="build or query an ANN index of post embeddings", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    isub = p.add_subparsers(dest="index_command", required=True, metavar="build|query")
    b = isub.add_parser("build", help="build an index from Parquet embeddings or the near-line store")
    b.add_argument("--input", help="Parquet embeddings: a file or a folder (columns id, embedding, model_version)")
    b.add_argument("--redis", help="or: a near-line store URL (redis://host:port/db)")
    b.add_argument("--vector-version", "--model-version", dest="vector_version",
                   help="the vectors' version (Encoder.vector_version: model version + '@K' for a nested prefix "
                        "+ '+<precision>' when not fp32 + '+maxN' for a shorter max_length + '+chunk' in chunk "
                        "mode, e.g. postemb-mt50-v4@16+bf16). With --redis: the version the worker stores under. "
                        "With --input: the version of rows without one (no model_version column, or null), which "
                        "the column's must equal (default: the column's). --model-version is its old name")
    b.add_argument("--allow-unversioned", action="store_true",
                   help="with --input: build from Parquet that records no vector version, none given, an index of "
                        "no version: `index query --text` cannot check its model against it (default: refused)")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf"], help="FAISS index kind (default: auto)")
    b.add_argument("--binary", action="store_true",
                   help="store sign bits (1 bit per dimension, Hamming distance) instead of float32")
    b.add_argument("--rescore", type=int, default=0, metavar="N",
                   help="with --binary: keep the float vectors too (vectors.npy) and re-rank the k*N nearest by "
                        "Hamming with them (default: 0, no rescoring; 4 is usual)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal, for --input)")
    b.set_defaults(func=run_build)
    q = isub.add_parser("query", help="top-k posts for texts or for a member")
    q.add_argument("--index", required=True, help="index folder (from `postemb index build`)")
    q.add_argument("--text", action="append", help="a query post (repeatable)")
    q.add_argument("--member", help="comma-separated ids of the posts a member engaged with; spaces around an id "
                                    "are dropped unless the index holds it with them, empty items are ignored, "
                                    "a repeated id counts once")
    q.add_argument("--k", type=int, default=10, help="posts to return (default: 10)")
    q.add_argument("--model", default="default", help="with --text: the model that embeds it; must be the index's "
                                                      "(default: default)")
    q.add_argument("--device", default="cpu", help="with --text: cpu, cuda[:N] or auto (default: cpu; an fp16 "
                                                   "index's vectors need cuda)")
    q.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"],
                   help="with --text: compute precision (default: the one the index's vector version records)")
    q.add_argument("--long-posts", choices=["truncate", "chunk"],
                   help="with --text: long-post mode (default: the one the index's vector version records)")
    add_prompt_args(q, "--text query")
    q.add_argument("--rescore", type=int, metavar="N",
                   help="binary index: rescore multiplier for this query (default: the index's; 0: Hamming order)")
    q.add_argument("--mean", action="store_true", help="with --member: one mean vector instead of Ward clusters")
    q.add_argument("--distance-threshold", type=float, default=DISTANCE_THRESHOLD,
                   help=f"with --member: Ward cut height (default: {DISTANCE_THRESHOLD})")
    q.add_argument("--max-clusters", type=int, default=MAX_CLUSTERS,
                   help=f"with --member: clusters at most (default: {MAX_CLUSTERS})")
    q.add_argument("--json", action="store_true", help="one JSON object per query")
    q.set_defaults(func=run_query)
