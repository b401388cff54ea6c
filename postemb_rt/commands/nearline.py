"""``postemb nearline``: run a near-line embedding worker, or show the pipeline's stats.

    postemb nearline --redis redis://127.0.0.1:6379/0 --group embedder --consumer w1 --model default
    postemb nearline --redis redis://127.0.0.1:6379/0 --group embedder --stats [--json]

Also runnable without the ``postemb`` entry point: ``python -m postemb_rt.commands.nearline ...``, which
reads the same environment variables (``--redis`` <- ``$POSTEMB_REDIS``, ...).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from .. import backends
from . import Parser, add_prompt_args
from ..nearline.model import DEFAULT_MODEL_TIMEOUT_S, EXIT_MODEL_TIMEOUT

log = logging.getLogger("postemb_rt.nearline")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "nearline", help="near-line worker: posts stream -> embeddings store (Redis Streams)",
        description="Embed post events from a Redis stream with a consumer group, store one hash per "
                    "post at postemb:{vector_version}:{post_id} (the model version, plus @K / +precision / +chunk "
                    "when --truncate-dim, the precision or the long-post mode change the numbers), announce it on "
                    "the `embeddings` stream, then acknowledge; a deletion (nearline.publish_delete) replaces the "
                    "record with a tombstone, announced the same way. "
                    "SIGTERM/SIGINT finish the current batch and exit 0 (a second one stops at once: SIGINT with exit "
                    "130, the batch left pending). Exit 2: a flag out of range, or Redis "
                    "refuses every write (a shared key of the wrong type, NOPERM; nothing acknowledged) or the "
                    "credentials (checked before the model loads). Exit 3: a model call ran past "
                    "--model-timeout (restart the worker; a post that hangs the model every time is dead-lettered "
                    "after --max-deliveries).")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", default=os.environ.get("POSTEMB_REDIS_URL", "redis://127.0.0.1:6379/0"),
                   help="Redis URL (default: $POSTEMB_REDIS, else its older name $POSTEMB_REDIS_URL, else "
                        "redis://127.0.0.1:6379/0)")
    p.add_argument("--group", default="embedder", help="consumer group (default: embedder)")
    p.add_argument("--consumer", default=None, help="consumer name, unique per live worker (default: HOST-PID)")
    p.add_argument("--model", default="default", help="model name or directory (default: default)")
    p.add_argument("--backend", default="auto", choices=backends.CHOICES,
                   help="the runtime (default: auto: the fastest installed for this device and precision)")
    p.add_argument("--long-posts", choices=["truncate", "chunk"], default="truncate",
                   help="posts longer than max_length: truncate, or chunk (embed them whole) (default: truncate)")
    p.add_argument("--precision", default="fp32", choices=backends.PRECISIONS,
                   help="fp32 (exact), or bf16 / int8 on CPU (gated by measured fidelity), or auto (the first "
                        "that clears the bar on this CPU: bf16 with native bf16, else int8, else fp32; a worker "
                        "on another CPU may pick another, and stores under its own vector version: give each "
                        "version a --group of its own, since a group's workers split its posts) (default: fp32)")
    add_prompt_args(p, "post whose event has no prompt_name field", text=False,
                    note="; an event naming a prompt the model lacks is dead-lettered; stored in each record")
    p.add_argument("--truncate-dim", type=int, default=None,
                   help="a nested prefix the model declares (its matryoshka_dims, e.g. 32, 16 or 8 for default): "
                        "store the first K components re-normalised, under vector version '<model>@K' "
                        "(default: the full dim)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for the model (sets POSTEMB_NUM_THREADS; default: one per physical "
                        "core, or the CPUs this process may use where a CPU mask or quota limits it)")
    p.add_argument("--batch-size", type=int, default=64, help="max events per micro-batch (default: 64)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="after a batch's first event, wait at most this long for more (default: 10)")
    p.add_argument("--claim-idle-ms", type=int, default=30_000,
                   help="claim other consumers' pending events idle this long (default: 30000)")
    p.add_argument("--forget-idle-ms", type=int, default=3_600_000,
                   help="remove from the group consumers with nothing pending that have not read for this long: "
                        "dead workers, which restarts under the HOST-PID default name pile up (0: never; "
                        "default: 3600000, one hour)")
    p.add_argument("--max-deliveries", type=int, default=10,
                   help="dead-letter an event delivered more often than this (>= 1; default: 10)")
    p.add_argument("--model-timeout", type=float, default=DEFAULT_MODEL_TIMEOUT_S, metavar="S",
                   help="a model call (one micro-batch) that runs longer than this stops the worker with exit code "
                        "3, for its supervisor to restart it; its events stay pending and are retried one at a "
                        "time (0: no bound; default: %(default)s)")
    p.add_argument("--posts-stream", default="posts",
                   help="the stream of post events: creates, edits, deletions (default: posts)")
    p.add_argument("--dead-stream", default="posts-dead",
                   help="where poison events (malformed, refused by the model or the store, or delivered more than "
                        "--max-deliveries times), each with its reason, go (default: posts-dead)")
    p.add_argument("--embeddings-stream", default="embeddings",
                   help="where each stored embedding is announced (default: embeddings)")
    p.add_argument("--max-events", type=int, default=None, help="exit after this many events (testing)")
    p.add_argument("--stats", action="store_true", help="print lag, pending, throughput and freshness; exit")
    p.add_argument("--window", type=float, default=60.0, help="--stats: seconds of history (> 0; default: 60)")
    p.add_argument("--json", action="store_true", help="--stats: print JSON")


def _print_stats(s: dict, posts_stream: str = "posts") -> None:
    def f(v, unit=""):
        return "-" if v is None else f"{v}{unit}"

    missing = "" if s.get("group_exists", True) else (
        f"does not exist on stream {posts_stream!r} (its groups: {', '.join(s['groups']) or 'none'}; a worker "
        "creates its group when it starts), ")
    print(f"group {s['group']}: {missing}lag {f(s['lag'])} events (oldest undelivered {f(s['lag_s'], ' s')}), "
          f"pending {s['pending']} (oldest {f(s['oldest_pending_s'], ' s')}), consumers {s.get('consumers', 0)}")
    print(f"streams: posts {s['posts_len']}, embeddings {s['embeddings_len']}, posts-dead {s['dead_len']}")
    over = s.get("throughput_window_s", s["window_s"])
    span = f"{over:.0f} s" if over >= s["window_s"] else \
        f"{over:.0f} s (the newest {s['sample']} announcements; --window {s['window_s']:.0f} s)"
    print(f"last {span}: {s['throughput_per_s']} posts/s, {s['deletions_per_s']} deletions/s; "
          f"freshness p50 {f(s['freshness_p50_s'], ' s')}"
          f", p90 {f(s['freshness_p90_s'], ' s')}, p99 {f(s['freshness_p99_s'], ' s')}, "
          f"max {f(s['freshness_max_s'], ' s')}")
    if s.get("foreign_announcements"):
        print(f"  skipped {s['foreign_announcements']} entries of the embeddings stream without a worker's fields "
              "(embedded_at or removed_at, created_at): another producer writes to it")
    for c, v in sorted(s.get("consumer_pending", {}).items()):
        print(f"  consumer {c}: pending {v['pending']}, idle {v['idle_ms']} ms")
    versions = sorted({str(w.get("vector_version") or w.get("model_version")) for w in s["workers"]})
    if len(versions) > 1:  # each event goes to one consumer: every version gets only part of the posts
        print(f"  warning: the live workers store under {len(versions)} vector versions ({', '.join(versions)}): "
              "each gets only part of the posts. Fix: one group per vector version (--group)")
    prompts = sorted({repr(w["prompt_name"]) for w in s["workers"] if "prompt_name" in w})
    if len(versions) == 1 and len(prompts) > 1:  # posts without a prompt_name get either worker's default prompt
        print(f"  warning: the live workers embed with {len(prompts)} default prompts ({', '.join(prompts)}): each "
              "post without a prompt_name gets either. Fix: the same --prompt-name for every worker of a group")
    for w in s["workers"]:
        print(f"  worker {w['consumer']} (pid {w['pid']}, {w.get('vector_version') or w['model_version']}): "
              f"events {w['events']}, "
              f"stored {w['stored']}, deleted {w.get('deleted', 0)}, rewrites {w['rewrites']}, dead {w['dead']}, "
              f"claimed {w['claimed']}, "
              f"retries {w['retries']}, reconnects {w['reconnects']}, p99 {f(w['freshness_p99_s'], ' s')}")


# the library's setting -> this command's flag, for the messages of nearline.settings.check
FLAGS = {"batch_size": "--batch-size", "max_wait_ms": "--max-wait-ms", "claim_idle_ms": "--claim-idle-ms",
         "forget_idle_ms": "--forget-idle-ms",
         "max_deliveries": "--max-deliveries", "model_timeout_s": "--model-timeout", "threads": "--threads",
         "window_s": "--window"}


def run(args) -> int:
    from .. import nearline
    from ..nearline import settings

    if args.stats:  # refused before anything connects or loads
        settings.check(FLAGS, window_s=args.window)
    else:
        settings.check(FLAGS, batch_size=args.batch_size, max_wait_ms=args.max_wait_ms,
                       claim_idle_ms=args.claim_idle_ms, forget_idle_ms=args.forget_idle_ms,
                       max_deliveries=args.max_deliveries, model_timeout_s=args.model_timeout, threads=args.threads)
    client = nearline.connect(args.redis)
    where = client.connection_pool.connection_kwargs  # never the password
    where = f"{where.get('host', where.get('path'))}:{where.get('port', '')} db {where.get('db', 0)}"
    _preflight(client, where, must_answer=args.stats)
    if args.stats:
        s = _stats(client, where, args)
        if args.json:
            print(json.dumps(s, indent=2, default=str))
        else:
            _print_stats(s, args.posts_stream)
        return 0
    if args.threads:
        os.environ["POSTEMB_NUM_THREADS"] = str(args.threads)
    from ..encoder import Encoder

    encoder = Encoder.from_pretrained(args.model, backend=args.backend, precision=args.precision,
                                      long_posts=args.long_posts)
    worker = nearline.Worker(client, encoder, args.group, args.consumer, batch_size=args.batch_size,
                             max_wait_ms=args.max_wait_ms, claim_idle_ms=args.claim_idle_ms,
                             forget_idle_ms=args.forget_idle_ms, max_deliveries=args.max_deliveries,
                             posts_stream=args.posts_stream,
                             dead_stream=args.dead_stream, embeddings_stream=args.embeddings_stream,
                             model_timeout_s=args.model_timeout, prompt_name=args.prompt_name,
                             truncate_dim=args.truncate_dim)

    def on_signal(signum, frame):
        log.warning("%s: finishing the current batch, then exiting", signal.Signals(signum).name)
        worker.stop()
        # a second signal ends the process at once: SIGTERM by its default action; SIGINT (a person
        # at a terminal) says so and exits 130, without a traceback, without waiting for the model
        # call in hand or closing the encoder under it
        signal.signal(signum, on_second_sigint if signum == signal.SIGINT else signal.SIG_DFL)

    def on_second_sigint(signum, frame):
        sys.stdout.flush()
        print("postemb nearline: second SIGINT: stopped at once; the batch in hand was not acknowledged (its "
              "events stay pending, to be redelivered)", file=sys.stderr, flush=True)
        os._exit(130)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    print(f"postemb nearline: consumer {worker.consumer!r} of group {args.group!r} reading stream "
          f"{args.posts_stream!r} on redis {where}; model {encoder.model_version}, vectors "
          f"{worker.vector_version}; SIGTERM finishes the batch in hand, then exits", flush=True)
    try:
        return worker.run(max_events=args.max_events)
    except nearline.ModelTimeoutError as exc:
        # the model thread is stuck and cannot be joined: exit now (it is a daemon thread)
        print(f"postemb nearline: error: {exc}", file=sys.stderr)
        return EXIT_MODEL_TIMEOUT
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if not worker.model_hung:  # release the backend now, not in the interpreter's teardown
            encoder.close()


def _stats(client, where: str, args) -> dict:
    """``nearline.stats`` for ``--stats``; a Redis error is one line with the fix, not a traceback (for a
    refused command or key, NOPERM, the ACL rules ``keys.acl_rules`` gives, which cover --stats)."""
    import redis

    from .. import nearline
    from ..nearline.keys import KEY_PREFIX, refused_everything
    from ..nearline.store import StoreError, fix_hint

    try:
        return nearline.stats(client, args.group, posts_stream=args.posts_stream, dead_stream=args.dead_stream,
                              embeddings_stream=args.embeddings_stream, window_s=args.window)
    except redis.RedisError as exc:
        names = argparse.Namespace(posts=args.posts_stream, dead=args.dead_stream, embeddings=args.embeddings_stream,
                                   prefix=KEY_PREFIX)
        fix = fix_hint(exc, names) if refused_everything(exc) else "check that it is up and reachable, then try again."
        raise StoreError(f"--stats: redis {where} failed a read: {type(exc).__name__}: {str(exc).rstrip('.')}. "
                         f"Fix: {fix}") from None


def _preflight(client, where: str, must_answer: bool) -> None:
    """One PING before the model loads. Refused credentials, or a connection Redis answers with an error
    (a database it does not have), end the command now (exit 2), not after the load; a server that does
    not answer ends ``--stats`` (``must_answer``) and is only logged for the worker, which retries until
    it answers (its loop's backoff)."""
    import redis

    from ..nearline.keys import refused_everything, transient
    from ..nearline.store import StoreError, fix_hint

    try:
        client.ping()
    except redis.RedisError as exc:
        why = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
        if refused_everything(exc):
            raise StoreError(f"redis {where} refused the credentials: {why}. Fix: {fix_hint(exc)}") from None
        if isinstance(exc, redis.ResponseError) and not transient(exc):  # it answered: an error no retry cures
            fix = ("name a database the server has in --redis (redis://HOST:PORT/DB, DB below its `databases` "
                   "setting: CONFIG GET databases, 16 by default)" if "DB index" in str(exc) else
                   "check that --redis (or $POSTEMB_REDIS) points at a Redis server, with the right database")
            raise StoreError(f"redis {where} refused the connection: {why}. Fix: {fix}.") from None
        if must_answer:
            raise StoreError(f"redis {where} does not answer: {why}. Fix: start it, or point --redis (or "
                             "$POSTEMB_REDIS) at the right one.") from None
        log.warning("redis %s does not answer yet (%s: %s); the worker starts and retries until it does",
                    where, type(exc).__name__, exc)


def main(argv: list[str] | None = None) -> int:
    from ..cli import apply_env_defaults
    from ..errors import PostEmbError

    p = Parser(prog="postemb nearline")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    add_arguments(p)
    try:
        apply_env_defaults(p)  # the flags' variables, as `postemb nearline` reads them ($POSTEMB_REDIS, ...)
        args = p.parse_args(argv)
    except PostEmbError as exc:  # a variable that does not parse
        print(f"postemb nearline: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except PostEmbError as exc:  # as `postemb nearline` reports it
        print(f"postemb nearline: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
