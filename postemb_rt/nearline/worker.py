"""The consumer: ``Worker`` reads micro-batches from ``posts`` in a consumer group, embeds
them, writes them through the store script, and acknowledges them only then (at-least-once;
see the package docstring for the failure handling).

Waits between attempts use redis-py's ``EqualJitterBackoff`` (50 ms * 2^n with jitter,
capped at 5 s). The loop itself is not ``redis.retry.Retry``: it retries model failures as
well as Redis ones, and every wait must end at once when ``stop()`` is called.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time

import numpy as np

from ..errors import ValidationError
from .events import MAX_TEXT_BYTES, Post, parse_event
from .health import WorkerStats
from .keys import (DEAD_MAXLEN, DEAD_STREAM, EMBEDDINGS_MAXLEN, EMBEDDINGS_STREAM, KEY_PREFIX, POSTS_STREAM,
                   STORE_LUA, refuse_cluster, store_key)

log = logging.getLogger("postemb_rt.nearline")

PROBE_TEXT = "model health probe"  # encoded to tell a failing post from a failing model


class _Stopped(Exception):
    """Shutdown was asked for while a batch could not be finished; it stays pending."""


class Worker:
    """One consumer in a consumer group: micro-batches from ``posts`` -> vectors in the store.

    client: redis-py client with bytes replies (:func:`connect`).
    encoder: anything with ``encode(list[str]) -> float32 (n, dim)``, ``model_version`` and ``dim``.
    batch_size: at most this many events per micro-batch.
    max_wait_ms: once the first event of a batch is read, wait at most this long for more
        (0: take what is there; a busy worker batches naturally while it encodes).
    claim_idle_ms: pending events idle this long (their consumer is presumed dead) are claimed.
    max_deliveries: an event delivered more often than this without being finished is poison
        (e.g. it crashes the worker) and is dead-lettered.
    max_attempts: model calls per chunk before the chunk is split to find the post that
        fails (see :meth:`_embed`); Redis failures are retried without limit.
    """

    def __init__(self, client, encoder, group: str = "embedder", consumer: str | None = None, *,
                 batch_size: int = 64, max_wait_ms: float = 10.0, claim_idle_ms: int = 30_000,
                 max_deliveries: int = 10, max_attempts: int = 3, max_text_bytes: int = MAX_TEXT_BYTES, start_id: str = "0",
                 posts_stream: str = POSTS_STREAM, dead_stream: str = DEAD_STREAM,
                 embeddings_stream: str = EMBEDDINGS_STREAM, prefix: str = KEY_PREFIX,
                 embeddings_maxlen: int = EMBEDDINGS_MAXLEN, poll_ms: int = 500, heartbeat_s: float = 2.0):
        if batch_size < 1:
            raise ValidationError(f"`batch_size` must be >= 1. Given: {batch_size}.")
        if max_wait_ms < 0:
            raise ValidationError(f"`max_wait_ms` must be >= 0. Given: {max_wait_ms}.")
        if max_attempts < 1:
            raise ValidationError(f"`max_attempts` must be >= 1. Given: {max_attempts}.")
        if claim_idle_ms < 1:
            raise ValidationError(f"`claim_idle_ms` must be >= 1. Given: {claim_idle_ms}.")
        self.client, self.encoder = client, encoder
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size, self.max_wait_ms = batch_size, max_wait_ms
        self.claim_idle_ms, self.max_deliveries = claim_idle_ms, max_deliveries
        self.max_attempts = max_attempts
        self.max_text_bytes, self.start_id = max_text_bytes, start_id
        self.posts, self.dead, self.embeddings = posts_stream, dead_stream, embeddings_stream
        self.prefix, self.embeddings_maxlen = prefix, embeddings_maxlen
        self.poll_ms, self.heartbeat_s = poll_ms, heartbeat_s
        self.model_version, self.dim = encoder.model_version, encoder.dim
        self.stats = WorkerStats()
        self.stop_event = threading.Event()
        self._script = client.register_script(STORE_LUA)
        from redis.backoff import EqualJitterBackoff

        # wait before attempt n+1: uniform(0.5, 1) * min(5 s, 50 ms * 2^n)
        self._backoff = EqualJitterBackoff(cap=5.0, base=0.05)
        self._own_cursor: bytes | str | None = "0"  # replay our own pending entries first
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_beat = 0.0
        self._group_ready = False

    # -- public ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the current batch and return."""
        self.stop_event.set()

    def run(self, max_events: int | None = None) -> int:
        """Process until :meth:`stop` (or ``max_events`` handled). Returns 0."""
        import redis

        transient = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
        failures = 0
        log.info("worker %s/%s on %s: model %s (dim %d), batch %d, wait %.0f ms", self.group, self.consumer,
                 self.posts, self.model_version, self.dim, self.batch_size, self.max_wait_ms)
        while not self.stop_event.is_set():
            if max_events is not None and self.stats.events >= max_events:
                break
            try:
                if not self._group_ready:
                    self._ensure_group()
                entries, claimed = self._next_batch()
                if entries:
                    self._process(entries, claimed)
                self._heartbeat()
                failures = 0
            except _Stopped:
                log.warning("stopping with a batch unfinished; it stays pending and will be claimed")
                break
            except transient as exc:
                self.stats.reconnects += 1
                self._group_ready = False
                self._own_cursor = "0"  # entries read before the failure are ours: replay them first
                failures += 1
                wait = self._wait_s(failures)
                log.warning("redis unavailable (%s); retrying in %.2f s", exc, wait)
                self.stop_event.wait(wait)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("group %r or stream %r is gone (server restarted?); recreating", self.group, self.posts)
                self._group_ready = False
        self._heartbeat(force=True)
        log.info("worker %s stopped: %s", self.consumer, self.stats.snapshot())
        return 0

    # -- reading --------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        import redis

        refuse_cluster(self.client)
        try:
            # id "0": a new group starts from the beginning of the stream, so no event
            # published before the first worker started is skipped.
            self.client.xgroup_create(self.posts, self.group, id=self.start_id, mkstream=True)
            log.info("created group %r on %r at %s", self.group, self.posts, self.start_id)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, stream_id, count: int, block: int | None):
        resp = self.client.xreadgroup(self.group, self.consumer, {self.posts: stream_id}, count=count, block=block)
        if not resp:
            return []
        if isinstance(resp, dict):  # RESP3
            return list(resp.get(self.posts.encode()) or resp.get(self.posts) or [[]])[0]
        return resp[0][1]

    def _next_batch(self) -> tuple[list, bool]:
        """(entries, claimed): our own pending entries after a restart, then idle entries
        of other consumers (XAUTOCLAIM, at most every claim_idle_ms/4), then new ones."""
        if self._own_cursor is not None:
            entries = self._read(self._own_cursor, self.batch_size, None)
            if entries:
                self._own_cursor = entries[-1][0]
                return entries, True
            self._own_cursor = None
        now = time.monotonic()
        if now >= self._next_claim:
            resp = self.client.xautoclaim(self.posts, self.group, self.consumer, self.claim_idle_ms,
                                          start_id=self._claim_cursor, count=self.batch_size)
            cursor, entries = resp[0], resp[1]
            deleted = resp[2] if len(resp) > 2 else []
            if deleted:  # Redis >= 7 drops trimmed ids from the PEL itself
                self.stats.trimmed += len(deleted)
                log.error("%d pending events were trimmed from %r before being embedded (lost): %s",
                          len(deleted), self.posts, deleted[:5])
            self._claim_cursor = cursor
            if cursor in (b"0-0", "0-0"):  # sweep done; next one after a pause
                self._next_claim = now + self.claim_idle_ms / 4000.0
            if entries:
                self.stats.claimed += len(entries)
                log.warning("claimed %d idle pending events", len(entries))
                return entries, True
        first = self._read(">", self.batch_size, min(self.poll_ms, max(1, int(self.claim_idle_ms / 4))))
        if not first or self.max_wait_ms <= 0:
            return first, False
        batch = list(first)
        deadline = time.monotonic() + self.max_wait_ms / 1000.0
        while len(batch) < self.batch_size:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 1:
                break
            more = self._read(">", self.batch_size - len(batch), left_ms)
            if not more:
                break
            batch.extend(more)
        return batch, False

    # -- processing -----------------------------------------------------------------------

    def _process(self, entries: list, claimed: bool) -> None:
        self.stats.batches += 1
        over = self._over_delivered([e[0] for e in entries if e[0] is not None]) if claimed else {}
        good, dead, gone = [], [], []
        for eid, fields in entries:
            if eid is None:
                continue
            if not fields:  # re-read of a pending entry whose event was trimmed
                gone.append(eid)
                continue
            if eid in over:
                dead.append((eid, fields, f"delivered {over[eid]} times without being finished "
                                          f"(max_deliveries={self.max_deliveries}): the worker dies on it?"))
                continue
            post, reason = parse_event(eid, fields, self.max_text_bytes)
            if post is None:
                dead.append((eid, fields, reason))
            else:
                good.append(post)
        if gone:
            self.stats.trimmed += len(gone)
            log.error("%d pending events were trimmed from %r before being embedded (lost)", len(gone), self.posts)
            self._retry("ack", lambda: self.client.xack(self.posts, self.group, *gone), [])
        if dead:
            self._dead_letter(dead)
        if good:
            vectors, rejected = self._embed(good)
            if rejected:
                self._dead_letter(rejected)
                kept = {p.event_id for p, _ in zip(good, vectors) if _ is not None}
                good, vectors = [p for p in good if p.event_id in kept], [v for v in vectors if v is not None]
            if good:
                self._store(good, vectors)
        self.stats.events += len(good) + len(dead) + len(gone)

    def _over_delivered(self, ids: list) -> dict:
        if not ids or self.max_deliveries <= 0:
            return {}
        rows = self.client.xpending_range(self.posts, self.group, min=ids[0], max=ids[-1], count=len(ids),
                                          consumername=self.consumer)  # just claimed: ours now
        want = set(ids)
        return {r["message_id"]: r["times_delivered"] for r in rows
                if r["message_id"] in want and r["times_delivered"] > self.max_deliveries}

    def _embed(self, posts: list[Post]) -> tuple[list, list]:
        """Vectors for posts (None where the post could not be embedded) and the rejected
        entries (event_id, fields, reason) to dead-letter.

        A chunk the model rejects (ValidationError) is split at once. Any other failure is
        retried up to ``max_attempts`` times with backoff, then the chunk is split, until
        the failing post is alone. A post that keeps failing alone is dead-lettered only if
        the probe text encodes fine (the post is the culprit); if the probe fails too, the
        model is down for every input, so the call is retried without limit (nothing is
        acknowledged meanwhile) instead of dead-lettering good posts."""
        vectors, rejected, todo = [None] * len(posts), [], [(0, len(posts))]
        while todo:
            lo, hi = todo.pop()
            chunk = posts[lo:hi]
            try:
                vectors[lo:hi] = self._encode_bounded(chunk)
                continue
            except ValidationError as exc:
                err, why = exc, "the model rejected it"
            except _Stopped:
                raise
            except Exception as exc:  # noqa: BLE001 - still failing after max_attempts
                err, why = exc, f"the model failed on it {self.max_attempts} times"
            if hi - lo > 1:
                mid = (lo + hi) // 2
                todo += [(mid, hi), (lo, mid)]
                continue
            if not isinstance(err, ValidationError):
                # alone and still failing: the post, or the model as a whole?
                self._retry("encode (probe)", lambda: self._encode_once([PROBE_TEXT]), [p.event_id for p in posts])
                try:
                    vectors[lo:hi] = self._encode_once([p.text for p in chunk])  # the model is fine now: last try
                    continue
                except Exception as exc:  # noqa: BLE001
                    err = exc
            p = posts[lo]
            rejected.append((p.event_id, {b"post_id": p.post_id.encode(), b"text": p.text.encode()},
                             f"{why}: {type(err).__name__}: {err}"[:1000]))
        return vectors, rejected

    def _encode_once(self, texts: list[str]) -> list:
        t = time.perf_counter()
        try:
            return list(self.encoder.encode(texts, batch_size=len(texts)))
        finally:
            self.stats.encode_s += time.perf_counter() - t

    def _encode_bounded(self, chunk: list[Post]) -> list:
        """encode(chunk), retried up to max_attempts times (backoff 50 ms .. 5 s) on any error
        but a ValidationError; the last error is raised. Raises _Stopped on shutdown."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._encode_once([p.text for p in chunk])
            except ValidationError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.stats.retries += 1  # retried here, or split by the caller
                if attempt == self.max_attempts:
                    raise
                wait = self._wait_s(attempt)
                log.warning("encode failed for %d events (attempt %d/%d: %s: %s); retry in %.2f s", len(chunk),
                            attempt, self.max_attempts, type(exc).__name__, exc, wait)
                if self.stop_event.wait(wait):
                    raise _Stopped() from None
        raise AssertionError("unreachable")

    def _store(self, posts: list[Post], vectors: list) -> None:
        t0 = time.perf_counter()
        embedded_at = f"{time.time():.6f}"
        keys = [self.embeddings] + [store_key(self.model_version, p.post_id, self.prefix) for p in posts]
        args = [self.embeddings_maxlen, self.model_version, self.dim, embedded_at]
        for p, v in zip(posts, vectors):
            args += [p.event_id, p.post_id, f"{p.created_at:.6f}",
                     np.ascontiguousarray(v, dtype="<f4").tobytes(),  # dim*4 bytes
                     hashlib.sha256(p.text.encode("utf-8")).hexdigest()]
        ids = [p.event_id for p in posts]
        written = self._retry("store", lambda: self._script(keys=keys, args=args), ids)
        # never before the write above has succeeded
        self._retry("ack", lambda: self.client.xack(self.posts, self.group, *ids), ids)
        self.stats.stored += written
        self.stats.rewrites += len(posts) - written
        t = float(embedded_at)
        self.stats.freshness.extend(t - p.created_at for p in posts)
        self.stats.store_s += time.perf_counter() - t0

    def _dead_letter(self, dead: list) -> None:
        def move():
            pipe = self.client.pipeline(transaction=True)  # dead-letter and ack atomically
            for eid, fields, reason in dead:
                rec = {k: v for k, v in fields.items() if k not in (b"event_id", b"reason")}
                rec.update({b"event_id": eid, b"reason": reason, b"group": self.group,
                            b"consumer": self.consumer, b"dead_at": f"{time.time():.6f}"})
                pipe.xadd(self.dead, rec, maxlen=DEAD_MAXLEN, approximate=True)
            pipe.xack(self.posts, self.group, *[d[0] for d in dead])
            pipe.execute()

        self._retry("dead-letter", move, [d[0] for d in dead])
        self.stats.dead += len(dead)
        for eid, _, reason in dead:
            log.warning("dead-lettered %s: %s", eid, reason)

    def _retry(self, what: str, fn, ids: list, fatal: tuple = ()):
        """fn() until it succeeds; exponential backoff with jitter (50 ms .. 5 s). While
        retrying, the batch's pending entries are re-claimed by us now and then so other
        workers do not take them over. Raises _Stopped if shutdown is asked for meanwhile."""
        import redis

        failures = 0
        started = last_touch = time.monotonic()
        while True:
            try:
                return fn()
            except fatal:
                raise
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream/group vanished (restart without persistence)
                    self._group_ready = False
                err = exc
            except Exception as exc:  # model or store failure: keep the batch, try again
                err = exc
            self.stats.retries += 1
            failures += 1
            wait = self._wait_s(failures)
            log.warning("%s failed for %d events (%s: %s); retry in %.2f s", what, len(ids),
                        type(err).__name__, err, wait)
            if self.stop_event.wait(wait):
                raise _Stopped()
            try:
                if not self._group_ready:
                    self._ensure_group()
                if ids and time.monotonic() - last_touch > self.claim_idle_ms / 2000.0:
                    self.client.xclaim(self.posts, self.group, self.consumer, 0, ids, justid=True)
                    last_touch = time.monotonic()
            except Exception:  # the broker is down too; the next attempt will tell
                pass
            if time.monotonic() - started > 60 and failures % 10 == 0:
                log.error("%s has been failing for %.0f s", what, time.monotonic() - started)

    def _wait_s(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (capped at 5 s from n = 7)."""
        return self._backoff.compute(min(failures, 20))  # bounded exponent: 2^n stays a small float

    def _heartbeat(self, force: bool = False) -> None:
        """Publish this worker's counters (hash ``{prefix}:nearline:worker:{group}:{consumer}``,
        expiring after 5 heartbeats) for ``postemb nearline --stats``."""
        now = time.monotonic()
        if not force and now < self._next_beat:
            return
        self._next_beat = now + self.heartbeat_s
        key = f"{self.prefix}:nearline:worker:{self.group}:{self.consumer}"
        snap = self.stats.snapshot() | {"consumer": self.consumer, "model_version": self.model_version,
                                         "pid": os.getpid(), "at": time.time()}
        try:
            self.client.set(key, json.dumps(snap), ex=max(1, int(self.heartbeat_s * 5)))
        except Exception as exc:  # observability must not stop the pipeline
            if force:
                log.debug("final heartbeat failed: %s", exc)
            else:
                raise
