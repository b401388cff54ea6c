"""Near-line embedding pipeline on Redis Streams.

    posts (stream) --XREADGROUP--> Worker: validate -> Encoder.encode -> store -> XACK
                                     |                                   |
                                     +--> posts-dead (poison + reason)   +--> postemb:{model_version}:{post_id} (hash)
                                                                         +--> embeddings (stream, announcements)

Delivery is at-least-once: an event is acknowledged only after its embedding is written,
so a crash anywhere leaves it pending, and a live worker claims it (XAUTOCLAIM) once it
has been idle for ``claim_idle_ms``. The store write is idempotent: a Lua script writes
the hash and announces it in one atomic step, and skips an event when the record already
holds this post's current content (same ``text_sha256``) or a newer event for the post.
The guarantee, exactly: the hash ends up with one embedding per (model version, post id),
of the newest event's text; the ``embeddings`` stream gets one announcement per
(post id, distinct text) in event order: a re-delivered event, or the same post
published twice with the same text, announces nothing new; an edited text (a new event
with different text) is announced again, as it should be. A late, older event is never
announced. An announcement can still be lost only with the Redis node itself (its
persistence settings decide that), never by a worker crash.

Failures: an input the model rejects (``ValidationError``) is isolated at once by
splitting its batch; any other model failure is retried ``max_attempts`` times, then the
batch is split until the failing post is alone. A post that still fails alone while a
probe text encodes fine is dead-lettered with the error; if the probe fails too, the
model itself is down and the batch is retried (with backoff) until it comes back, so a
model outage never dead-letters good posts. A Redis outage is retried without limit:
nothing is acknowledged before it is written.

Single node only: the store script writes several keys in one atomic step, which Redis
Cluster refuses (CROSSSLOT) unless every key shares one hash slot, and putting every key
in one slot would remove the point of a cluster. The worker checks ``INFO cluster`` on
connecting and refuses a cluster node with a clear error (use one primary, with replicas
or Sentinel for failover).

Record layout (hash ``postemb:{model_version}:{post_id}``):
    vector        dim*4 bytes, float32 little-endian, unit L2 norm
    dim, model_version, post_id
    created_at    seconds since the epoch (producer's clock), "%.6f"
    embedded_at   seconds since the epoch when the worker wrote it, "%.6f"
    event_id      the ``posts`` stream id the record came from
    text_sha256   hex SHA-256 of the post's UTF-8 text (the content the vector is of)

``redis`` (redis-py >= 5) is imported here only; ``import postemb_rt`` does not need it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .errors import ValidationError

log = logging.getLogger("postemb_rt.nearline")

POSTS_STREAM = "posts"
DEAD_STREAM = "posts-dead"
EMBEDDINGS_STREAM = "embeddings"
KEY_PREFIX = "postemb"
# Producer-side cap on the ``posts`` stream (XADD MAXLEN ~): 1M events is ~1.4 h of backlog
# at 200 posts/s and ~150-250 MB of Redis memory for short posts. See publish().
POSTS_MAXLEN = 1_000_000
EMBEDDINGS_MAXLEN = 1_000_000  # announcements kept (MAXLEN ~) for downstream consumers
DEAD_MAXLEN = 100_000
MAX_TEXT_BYTES = 32 * 1024  # a post larger than this (UTF-8) is poison, not a post
MAX_POST_ID_BYTES = 256
PROBE_TEXT = "model health probe"  # encoded to tell a failing post from a failing model


def connect(url: str = "redis://127.0.0.1:6379/0", **kwargs):
    """A redis-py client for ``url`` with the timeouts the pipeline expects (bytes replies).

    socket_timeout must exceed the longest XREADGROUP BLOCK the worker issues (1 s).
    A dropped connection or a timeout is retried by redis-py itself (``Retry``: 5 retries,
    exponential backoff 50 ms .. 1 s, about 1.5 s in all); past that the worker's own loop
    keeps retrying without limit (every command it sends is safe to repeat).
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    opts = dict(socket_timeout=10.0, socket_connect_timeout=2.0, health_check_interval=15,
                decode_responses=False, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 5),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    opts.update(kwargs)
    return redis.Redis.from_url(url, **opts)


def _as_epoch(created_at) -> float:
    if created_at is None:
        return time.time()
    if isinstance(created_at, _dt.datetime):
        if created_at.tzinfo is None:
            raise ValidationError(f"`created_at` must be timezone-aware. Given: {created_at!r}.")
        return created_at.timestamp()
    if isinstance(created_at, bool) or not isinstance(created_at, (int, float)) or not math.isfinite(created_at) \
            or created_at < 0:
        raise ValidationError(f"`created_at` must be seconds since the epoch (float >= 0) or an aware datetime. "
                              f"Given: {created_at!r}.")
    return float(created_at)


def publish(client, post_id, text: str, created_at=None, *, stream: str = POSTS_STREAM,
            maxlen: int | None = POSTS_MAXLEN) -> bytes:
    """Append a post-created event to the ``posts`` stream; returns its stream id.

    client: a redis-py client (see :func:`connect`).
    post_id: str or int, non-empty, at most 256 UTF-8 bytes.
    text: the post (str, at most MAX_TEXT_BYTES = 32 KiB as UTF-8; longer posts are
        rejected here, and a worker dead-letters any that reach it from other producers).
    created_at: seconds since the epoch (float) or an aware datetime; default: now.
    Event fields: ``post_id``, ``text`` (UTF-8), ``created_at`` ("%.6f").

    maxlen policy: each XADD trims the stream approximately (``MAXLEN ~ maxlen``, whole
    macro-nodes, O(1) amortised) to bound Redis memory. Trimming ignores consumer groups,
    so an event trimmed before any worker read it is lost: size ``maxlen`` above the
    peak rate times the longest backlog you will tolerate (default 1,000,000 = ~1.4 h at
    200 posts/s) and alert on ``postemb nearline --stats`` lag. Pending (read, not yet
    acknowledged) events that get trimmed are reported by the worker as ``trimmed``.
    ``maxlen=None`` never trims (then trim acknowledged history yourself, e.g. XTRIM MINID).
    Publishing is at-least-once too: a retried publish may add a second event for the
    same post, which the idempotent store absorbs (same vector, one hash per post).
    """
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)):
        raise ValidationError(f"`post_id` must be str or int. Given: {type(post_id).__name__}.")
    pid = str(post_id)
    if not pid or len(pid.encode("utf-8")) > MAX_POST_ID_BYTES:
        raise ValidationError(f"`post_id` must be 1..{MAX_POST_ID_BYTES} UTF-8 bytes. Given: {pid[:40]!r} "
                              f"({len(pid.encode('utf-8'))} bytes).")
    if not isinstance(text, str):
        raise ValidationError(f"`text` must be str. Given: {type(text).__name__}.")
    data = text.encode("utf-8")
    if len(data) > MAX_TEXT_BYTES:
        raise ValidationError(f"`text` must be at most {MAX_TEXT_BYTES} UTF-8 bytes. Given: {len(data)} bytes.")
    fields = {"post_id": pid, "text": data, "created_at": f"{_as_epoch(created_at):.6f}"}
    return client.xadd(stream, fields, maxlen=maxlen, approximate=True)


@dataclass
class Post:
    event_id: bytes
    post_id: str
    text: str
    created_at: float


def _id_ms(event_id) -> int:
    s = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
    return int(s.split("-", 1)[0])


def parse_event(event_id: bytes, fields: dict, max_text_bytes: int = MAX_TEXT_BYTES) -> tuple[Post | None, str]:
    """Validate one ``posts`` entry. Returns (Post, "") or (None, reason) for a poison event."""
    if not fields:
        return None, "empty event (no fields)"
    raw_pid, raw_text = fields.get(b"post_id"), fields.get(b"text")
    if raw_pid is None:
        return None, "missing field `post_id`"
    if raw_text is None:
        return None, "missing field `text`"
    try:
        pid = raw_pid.decode("utf-8")
    except UnicodeDecodeError:
        return None, "`post_id` is not valid UTF-8"
    if not pid or len(raw_pid) > MAX_POST_ID_BYTES:
        return None, f"`post_id` must be 1..{MAX_POST_ID_BYTES} bytes. Given: {len(raw_pid)} bytes"
    if len(raw_text) > max_text_bytes:
        return None, f"oversized `text`: {len(raw_text)} bytes > {max_text_bytes}"
    try:
        text = raw_text.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"`text` is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if "\x00" in text:
        return None, "`text` is not text (contains NUL bytes: a binary payload)"
    raw_ts = fields.get(b"created_at")
    if raw_ts is None:
        created = _id_ms(event_id) / 1000.0  # the broker's append time
    else:
        try:
            created = float(raw_ts)
        except ValueError:
            created = float("nan")
        if not math.isfinite(created) or created < 0:
            return None, f"invalid `created_at`: {raw_ts[:40]!r}"
    return Post(event_id, pid, text, created), ""


# KEYS[1] = embeddings stream, KEYS[1+i] = hash key of item i.
# ARGV = embeddings maxlen, model_version, dim, embedded_at, then per item
#        event_id, post_id, created_at, vector bytes, text_sha256.
# A hash already holding this event id or a newer one for the post is left alone (a
# re-delivery or an older event arriving late). A newer event with the text already
# stored (the post published twice) only moves ``event_id`` forward: no new vector, no
# announcement. Returns the number of records written (= announced).
_STORE_LUA = """
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not bm then return true end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local written = 0
for i = 2, #KEYS do
  local a = 5 + (i - 2) * 5
  local cur = redis.call('HMGET', KEYS[i], 'event_id', 'text_sha256')
  if (not cur[1]) or newer(ARGV[a], cur[1]) then
    if cur[1] and cur[2] == ARGV[a + 4] then
      redis.call('HSET', KEYS[i], 'event_id', ARGV[a])
    else
      redis.call('HSET', KEYS[i], 'vector', ARGV[a + 3], 'dim', ARGV[3], 'model_version', ARGV[2],
                 'post_id', ARGV[a + 1], 'created_at', ARGV[a + 2], 'embedded_at', ARGV[4],
                 'event_id', ARGV[a], 'text_sha256', ARGV[a + 4])
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'post_id', ARGV[a + 1], 'key', KEYS[i],
                 'model_version', ARGV[2], 'created_at', ARGV[a + 2], 'embedded_at', ARGV[4])
      written = written + 1
    end
  end
end
return written
"""


def store_key(model_version: str, post_id: str, prefix: str = KEY_PREFIX) -> str:
    return f"{prefix}:{model_version}:{post_id}"


@dataclass
class StoredEmbedding:
    vector: np.ndarray  # float32 (dim,)
    created_at: float
    embedded_at: float
    event_id: str
    model_version: str


def fetch(client, model_version: str, post_id, prefix: str = KEY_PREFIX) -> StoredEmbedding | None:
    """Read one stored embedding back (None if absent). vector: float32 (dim,)."""
    h = client.hgetall(store_key(model_version, str(post_id), prefix))
    if not h:
        return None
    return StoredEmbedding(np.frombuffer(h[b"vector"], dtype="<f4").astype(np.float32),
                           float(h[b"created_at"]), float(h[b"embedded_at"]), h[b"event_id"].decode(),
                           h[b"model_version"].decode())


def _refuse_cluster(client) -> None:
    """Raise ValidationError on a Redis Cluster node (see the module docstring: the store
    script writes several keys atomically, which a cluster refuses with CROSSSLOT)."""
    info = client.info("cluster")
    if int(info.get("cluster_enabled", 0) or 0):
        raise ValidationError(
            "`client` is connected to a Redis Cluster node (INFO cluster: cluster_enabled:1); the near-line store "
            "writes a post's hash and its announcement in one atomic script, which Redis Cluster refuses "
            "(CROSSSLOT). Fix: point --redis at a single Redis primary (use replicas or Sentinel for failover).")


class _Stopped(Exception):
    """Shutdown was asked for while a batch could not be finished; it stays pending."""


@dataclass
class WorkerStats:
    started_at: float = field(default_factory=time.time)
    batches: int = 0
    events: int = 0          # entries handled (stored, skipped as rewrites, or dead-lettered)
    stored: int = 0          # hashes written
    rewrites: int = 0        # re-deliveries whose record already existed (no-op)
    dead: int = 0
    claimed: int = 0         # entries taken over from idle consumers
    trimmed: int = 0         # pending entries whose event was trimmed from the stream
    retries: int = 0         # model/store attempts that failed (then retried, or the batch split)
    reconnects: int = 0
    encode_s: float = 0.0    # wall time inside encoder.encode (incl. failed attempts)
    store_s: float = 0.0     # wall time writing + acknowledging
    freshness: deque = field(default_factory=lambda: deque(maxlen=4096))  # seconds, last N stored

    def snapshot(self) -> dict:
        f = np.array(self.freshness, dtype=np.float64)
        pct = {f"freshness_p{p}_s": (round(float(np.percentile(f, p)), 4) if f.size else None) for p in (50, 90, 99)}
        up = max(time.time() - self.started_at, 1e-9)
        snap = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()
                if k != "freshness"}
        return snap | pct | {"posts_per_s": round(self.events / up, 2)}


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
        self._script = client.register_script(_STORE_LUA)
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
        delay = _Backoff()
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
                delay.reset()
            except _Stopped:
                log.warning("stopping with a batch unfinished; it stays pending and will be claimed")
                break
            except transient as exc:
                self.stats.reconnects += 1
                self._group_ready = False
                self._own_cursor = "0"  # entries read before the failure are ours: replay them first
                wait = delay.next()
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

        _refuse_cluster(self.client)
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
        delay = _Backoff()
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._encode_once([p.text for p in chunk])
            except ValidationError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.stats.retries += 1  # retried here, or split by the caller
                if attempt == self.max_attempts:
                    raise
                wait = delay.next()
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

        delay = _Backoff()
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
            wait = delay.next()
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
            if time.monotonic() - started > 60 and delay.attempt % 10 == 0:
                log.error("%s has been failing for %.0f s", what, time.monotonic() - started)

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


class _Backoff:
    """Exponential backoff with full jitter: 50 ms * 2^n, capped at 5 s."""

    def __init__(self, base: float = 0.05, cap: float = 5.0):
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        self.attempt += 1
        return random.uniform(0.5, 1.0) * min(self.cap, self.base * 2 ** min(self.attempt, 20))

    def reset(self) -> None:
        self.attempt = 0


def _pct(values, p):
    return round(float(np.percentile(values, p)), 4) if len(values) else None


def stats(client, group: str = "embedder", *, posts_stream: str = POSTS_STREAM, dead_stream: str = DEAD_STREAM,
          embeddings_stream: str = EMBEDDINGS_STREAM, prefix: str = KEY_PREFIX, window_s: float = 60.0,
          sample: int = 5000) -> dict:
    """Pipeline health, read from Redis only (no model needed).

    lag: events in ``posts`` not yet delivered to the group; lag_s: age of the oldest of them.
    pending: delivered, not yet acknowledged; oldest_pending_s: age of the oldest.
    throughput_per_s and freshness (embedded_at - created_at) percentiles: over the last
    ``window_s`` seconds of the ``embeddings`` stream (at most ``sample`` announcements).
    """
    now = time.time()
    out: dict = {"group": group, "posts_len": client.xlen(posts_stream), "dead_len": client.xlen(dead_stream),
                 "embeddings_len": client.xlen(embeddings_stream)}
    groups = client.xinfo_groups(posts_stream) if client.exists(posts_stream) else []
    g = next((x for x in groups if x["name"] in (group, group.encode())), None)
    if g is None:
        out.update(lag=out["posts_len"], pending=0, consumers=0, lag_s=None, oldest_pending_s=None)
    else:
        lag = g.get("lag")
        last = g.get("last-delivered-id")
        nxt = client.xrange(posts_stream, min=b"(" + last if isinstance(last, bytes) else f"({last}", count=1)
        out.update(lag=lag, pending=g["pending"], consumers=g["consumers"],
                   last_delivered_id=last.decode() if isinstance(last, bytes) else last,
                   lag_s=round(now - _id_ms(nxt[0][0]) / 1000.0, 3) if nxt else 0.0)
        pend = client.xpending(posts_stream, group)
        out["oldest_pending_s"] = round(now - _id_ms(pend["min"]) / 1000.0, 3) if pend["pending"] else None
        out["consumer_pending"] = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]:
                                   {"pending": c["pending"], "idle_ms": c["idle"]}
                                   for c in client.xinfo_consumers(posts_stream, group)}
    fresh, times = [], []
    for _, f in client.xrevrange(embeddings_stream, count=sample):
        t = float(f[b"embedded_at"])
        if t < now - window_s:
            break
        times.append(t)
        fresh.append(t - float(f[b"created_at"]))
    out["window_s"] = window_s
    out["throughput_per_s"] = round(len(times) / window_s, 2)
    out.update({f"freshness_p{p}_s": _pct(fresh, p) for p in (50, 90, 99)})
    out["freshness_max_s"] = round(max(fresh), 4) if fresh else None
    workers = []
    for key in client.scan_iter(match=f"{prefix}:nearline:worker:{group}:*", count=100):
        raw = client.get(key)
        if raw:
            workers.append(json.loads(raw))
    out["workers"] = workers
    return out
