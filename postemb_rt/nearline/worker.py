"""The consumer: ``Worker`` reads micro-batches from ``posts`` in a consumer group, embeds
them, writes them through the store script, and acknowledges them only then (at-least-once;
see the package docstring for the failure handling).

Waits between attempts use redis-py's ``EqualJitterBackoff`` (50 ms * 2^n with jitter,
capped at 5 s). The loop itself is not ``redis.retry.Retry``: it retries model failures as
well as Redis ones, tells a transient Redis failure (retried) from a deterministic one (the
batch is split until the post that causes it is alone, and that post is dead-lettered), and
every wait must end at once when ``stop()`` is called.

This module reads and runs the loop; the model calls (per prompt, bounded, a failing post
isolated) live in ``model.py`` (``ModelMixin``), the writes to Redis (store, acknowledge,
dead-letter), their retry and the isolation of a Redis failure in ``store.py``
(``StoreMixin``); both are bases of ``Worker``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from .. import prompts
from ..errors import ValidationError
from .events import MAX_TEXT_BYTES, Post, parse_event
from . import settings
from .health import WorkerStats, check_versions
from .keys import (DEAD_LUA, DEAD_STREAM, EMBEDDINGS_MAXLEN, EMBEDDINGS_STREAM, FORGET_LUA, KEY_PREFIX, POSTS_STREAM,
                   STORE_LUA, check_server, refused_everything, require_bytes, transient)
from .model import DEFAULT_MODEL_TIMEOUT_S, ModelMixin, ModelTimeoutError, _ModelThread
from .store import Stopped, StoreError, StoreMixin, fix_hint

log = logging.getLogger("postemb_rt.nearline")
FORGET_EVERY_S = 60.0  # how often a worker looks for dead consumers to forget

class Worker(StoreMixin, ModelMixin):
    """One consumer in a consumer group: micro-batches from ``posts`` -> vectors in the store.

    client: redis-py client with bytes replies (:func:`connect`).
    encoder: anything with ``encode(list[str]) -> float32 (n, dim)``, ``model_version``, ``dim``
        and ``vector_version`` (the version stored with the vectors: :attr:`Encoder.vector_version`,
        the model version plus the precision and long-post mode when they change the numbers;
        a duck-typed encoder without it stores under its ``model_version``).
    batch_size: at most this many events per micro-batch.
    max_wait_ms: once the first event of a batch is read, wait at most this long for more
        (0: take what is there; a busy worker batches naturally while it encodes).
    claim_idle_ms: pending events idle this long (their consumer is presumed dead) are claimed.
        Redelivered events (claimed, or our own replayed after a restart) are taken and
        processed one at a time, so the delivery count of an event counts the attempts on
        it alone: a post that kills or hangs the worker reaches ``max_deliveries`` by itself
        and the innocent posts of its batch are stored.
    forget_idle_ms: consumers of the group that hold no pending event and have not read for
        this long are removed from it (at most once a minute, atomically: ``FORGET_LUA``), so
        that restarts under the HOST-PID default name do not pile up in the group and in
        ``--stats``. Nothing pending is ever dropped; a live worker reads at least every
        ``poll_ms``, and one forgotten anyway is added back by its next read. 0: never.
    max_deliveries: an event delivered more often than this without being finished is poison
        (it crashes or hangs the worker) and is dead-lettered without being run again (>= 1).
    max_attempts: model calls per chunk before the chunk is split to find the post that
        fails (see :meth:`_embed`); transient Redis failures are retried without limit.
    model_timeout_s: a model call (one micro-batch, or a part of one) that runs longer than
        this stops the worker: ``run`` raises :class:`ModelTimeoutError` (``postemb nearline``
        exits with code 3 so that its supervisor restarts it). Its events stay pending and
        are retried one at a time, so a post that hangs the model is dead-lettered after
        ``max_deliveries``. 0 or None: no bound (the call runs on the worker's own thread).
    prompt_name: the model's prompt for events that name none (an event's ``prompt_name``
        wins; None: the model's default prompt, if any). Each micro-batch is embedded with one
        model call per distinct prompt in it. An event naming a prompt the model lacks is
        dead-lettered with a reason listing the model's prompts. The prompt used is stored
        in the record (``prompt_name``). Prompts need an :class:`~postemb_rt.Encoder` (its
        ``model.config``); a duck-typed encoder without one embeds without prompts and
        dead-letters events that name one.
    truncate_dim: a nested prefix the model declares (``matryoshka_dims``; needs an
        :class:`~postemb_rt.Encoder`): every vector is its first ``truncate_dim`` components
        re-normalised, stored under the vector version ``<model>@<k>`` (so a store never mixes
        dims). None: the model's full dim.
    """

    def __init__(self, client, encoder, group: str = "embedder", consumer: str | None = None, *,
                 batch_size: int = 64, max_wait_ms: float = 10.0, claim_idle_ms: int = 30_000,
                 forget_idle_ms: int = 3_600_000, max_deliveries: int = 10, max_attempts: int = 3,
                 max_text_bytes: int = MAX_TEXT_BYTES, start_id: str = "0",
                 posts_stream: str = POSTS_STREAM, dead_stream: str = DEAD_STREAM,
                 embeddings_stream: str = EMBEDDINGS_STREAM, prefix: str = KEY_PREFIX,
                 embeddings_maxlen: int = EMBEDDINGS_MAXLEN, poll_ms: int = 500, heartbeat_s: float = 2.0,
                 model_timeout_s: float | None = DEFAULT_MODEL_TIMEOUT_S, prompt_name: str | None = None,
                 truncate_dim: int | None = None):
        settings.check(batch_size=batch_size, max_wait_ms=max_wait_ms, max_attempts=max_attempts,
                       claim_idle_ms=claim_idle_ms, forget_idle_ms=forget_idle_ms, max_deliveries=max_deliveries,
                       model_timeout_s=model_timeout_s)
        require_bytes(client)
        self.client, self.encoder = client, encoder
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size, self.max_wait_ms = batch_size, max_wait_ms
        self.claim_idle_ms, self.max_deliveries, self.forget_idle_ms = claim_idle_ms, max_deliveries, forget_idle_ms
        self.max_attempts = max_attempts
        self.max_text_bytes, self.start_id = max_text_bytes, start_id
        self.posts, self.dead, self.embeddings = posts_stream, dead_stream, embeddings_stream
        self.prefix, self.embeddings_maxlen, self.poll_ms = prefix, embeddings_maxlen, poll_ms
        self.model_timeout_s, self.heartbeat_s = float(model_timeout_s or 0.0), heartbeat_s
        self.model_version, self.dim = encoder.model_version, encoder.dim
        # the store's version: keys, records, announcements and heartbeats carry it
        self.vector_version = getattr(encoder, "vector_version", None) or encoder.model_version
        # the model's prompts (postemb_rt.prompts): None for a duck-typed encoder without a config
        self._model_config = getattr(getattr(encoder, "model", None), "config", None)
        self.truncate_dim = None
        default = getattr(encoder, "truncate_dim", None)  # the encoder's own prefix (from_pretrained(truncate_dim=k))
        truncate_dim = default if truncate_dim is None else truncate_dim  # the full dim: passed on if default cuts
        if truncate_dim is not None and (truncate_dim != encoder.dim or default not in (None, truncate_dim)):
            if self._model_config is None:
                raise ValidationError(f"`truncate_dim` {truncate_dim!r}: this encoder ({type(encoder).__name__}) "
                                      "declares no nested dims. Fix: pass a postemb_rt Encoder, or no truncate_dim.")
            self.vector_version = encoder.vector_version_at(truncate_dim)  # refuses an undeclared dim
            self.truncate_dim = self.dim = truncate_dim
        if prompt_name is not None:
            if self._model_config is None:
                raise ValidationError(f"`prompt_name` {prompt_name!r}: this encoder ({type(encoder).__name__}) has no "
                                      "prompts. Fix: pass a postemb_rt Encoder, or no prompt_name.")
            prompts.resolve(self._model_config, prompt_name=prompt_name,  # unknown: refused, listing them
                            fix="use one of those, or leave `prompt_name` out (the model's default)")
        self.prompt_name = prompts.name_in_use(self._model_config, prompt_name)
        self.stats = WorkerStats()
        self.stop_event = threading.Event()
        self._script = client.register_script(STORE_LUA)
        self._dead_script = client.register_script(DEAD_LUA)
        self._forget_script = client.register_script(FORGET_LUA)
        from redis.backoff import EqualJitterBackoff

        # wait before attempt n+1: uniform(0.5, 1) * min(5 s, 50 ms * 2^n)
        self._backoff = EqualJitterBackoff(cap=5.0, base=0.05)
        self._own_cursor: bytes | str | None = "0"  # replay our own pending entries first
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_forget = 0.0
        self._forget_refused = False  # forgetting consumers was refused: warned once
        self._next_beat = 0.0
        self._redis_ok = True  # the last loop step reached Redis (else the final heartbeat is skipped)
        self._beat_refused = False  # the heartbeat key is refused (NOPERM): warned once
        self._instance = os.urandom(8).hex()  # tells this worker's heartbeats from another's under its name
        self._twin_warned = False  # another live worker under this consumer name: warned once
        self._mixed_warned = False  # a live worker of this group on another vector version: warned once
        self._group_ready = False
        self._model: _ModelThread | None = None
        self._model_hung = False

    # -- public ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the current batch and return."""
        self.stop_event.set()

    @property
    def model_hung(self) -> bool:
        """True once a model call ran past ``model_timeout_s``: its thread is stuck, and the
        encoder must not be closed under it (the process exits instead)."""
        return self._model_hung

    def run(self, max_events: int | None = None) -> int:
        """Process until :meth:`stop` (or ``max_events`` handled: stored, deleted, rewritten or
        dead-lettered). Returns 0. Raises :class:`~.store.StoreError` when Redis refuses a
        write for every post or refuses the worker (credentials, permissions),
        :class:`ModelTimeoutError` when a model call hangs (then this worker cannot run again:
        exit the process)."""
        if self._model_hung:
            raise ModelTimeoutError("this worker's model thread is still stuck in a call that ran past "
                                    f"`model_timeout_s` ({self.model_timeout_s} s). Fix: exit the process and "
                                    "start a new worker.")
        failures = 0
        log.info("worker %s/%s on %s: model %s (vectors %s, dim %d, default prompt %s), batch %d, wait %.0f ms",
                 self.group, self.consumer, self.posts, self.model_version, self.vector_version, self.dim,
                 self.prompt_name, self.batch_size, self.max_wait_ms)
        try:
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
                    self._redis_ok = True
                except Stopped:
                    self._redis_ok = False  # stopped while retrying a failing Redis
                    log.warning("stopping with a batch unfinished; it stays pending and will be claimed")
                    break
                except Exception as exc:
                    self._redis_ok = False
                    if refused_everything(exc):  # credentials or permissions: no retry can cure it
                        raise StoreError(f"redis refused the worker: {type(exc).__name__}: {str(exc).rstrip('.')}. "
                                         f"The batch in hand was not acknowledged (its events stay pending). "
                                         f"Fix: {fix_hint(exc, self)}") from exc
                    if not transient(exc):
                        raise
                    self._group_ready = False
                    if "NOGROUP" in str(exc):
                        log.warning("group %r or stream %r is gone (server restarted?); recreating", self.group,
                                    self.posts)
                        continue
                    self.stats.reconnects += 1
                    self._own_cursor = "0"  # entries read before the failure are ours: replay them first
                    failures += 1
                    wait = self._wait_s(failures)
                    log.warning("redis unavailable (%s); retrying in %.2f s", exc, wait)
                    self.stop_event.wait(wait)
        finally:
            if self._model is not None and not self._model_hung:
                self._model.close()
                self._model = None
            self._final_heartbeat()
            log.info("worker %s stopped: %s", self.consumer, self.stats.snapshot())
        return 0

    # -- reading --------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        import redis

        check_server(self.client)
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
        """(entries, redelivered): our own pending entries after a restart, then idle entries
        of other consumers (XAUTOCLAIM, at most every claim_idle_ms/4), then new ones.

        Redelivered entries come one at a time (COUNT 1): reading or claiming an entry adds
        one to its delivery count, so counting one entry at a time makes the count the
        number of attempts on that entry alone. Taking a dead worker's whole batch at once
        would add one to every entry of it for each crash, and the crashing post's innocent
        neighbours would reach max_deliveries with it."""
        if self._own_cursor is not None:
            entries = self._read(self._own_cursor, 1, None)
            if entries:
                self._own_cursor = entries[-1][0]
                return entries, True
            self._own_cursor = None
        now = time.monotonic()
        if now >= self._next_claim:
            resp = self.client.xautoclaim(self.posts, self.group, self.consumer, self.claim_idle_ms,
                                          start_id=self._claim_cursor, count=1)
            cursor, entries = resp[0], resp[1]
            deleted = resp[2] if len(resp) > 2 else []
            if deleted:  # Redis >= 7 drops trimmed ids from the PEL itself
                self.stats.trimmed += len(deleted)
                log.error("%d pending events were trimmed from %r before being embedded (lost): %s",
                          len(deleted), self.posts, deleted[:5])
            self._claim_cursor = cursor
            if cursor in (b"0-0", "0-0"):  # sweep done; next one after a pause
                self._next_claim = now + self.claim_idle_ms / 4000.0
                self._forget_dead_consumers(now)
            if entries:
                self.stats.claimed += len(entries)
                log.warning("claimed idle pending event %s", entries[0][0])
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
                                          f"(max_deliveries={self.max_deliveries}): the worker crashed or its "
                                          f"model hung (model_timeout_s={self.model_timeout_s}) on it"))
                continue
            post, reason = parse_event(eid, fields, self.max_text_bytes)
            if isinstance(post, Post) and post.prompt_name is not None:
                post, reason = self._check_prompt(post)
            if post is None:
                dead.append((eid, fields, reason))
            else:
                good.append(post)
        if gone:
            self.stats.trimmed += len(gone)
            log.error("%d pending events were trimmed from %r before being embedded (lost)", len(gone), self.posts)
            self._ack(gone)
        if dead:
            self._dead_letter(dead)
        if good:  # deletions need no model call: stored with the batch's posts, in event order
            posts = [p for p in good if isinstance(p, Post)]
            vectors, rejected = self._embed(posts)
            got = dict(zip([p.event_id for p in posts], vectors))
            keep = [p for p in good if not isinstance(p, Post) or got[p.event_id] is not None]
            if keep:
                rejected += self._store(keep, [got.get(p.event_id) for p in keep])
            if rejected:
                self._dead_letter(rejected)
        # every entry is now acknowledged: stored (a post, a tombstone, or a rewrite), dead-lettered, or trimmed
        self.stats.events += sum(1 for eid, _ in entries if eid is not None)

    def _forget_dead_consumers(self, now: float) -> None:
        """Remove the group's consumers idle ``forget_idle_ms`` with nothing pending, at most
        every ``FORGET_EVERY_S``. Housekeeping must not stop the pipeline: a refusal (a Redis
        user not granted XINFO CONSUMERS or XGROUP DELCONSUMER) is warned once, and the worker
        goes on; a transient failure is raised, for the loop's backoff."""
        import redis

        if not self.forget_idle_ms or now < self._next_forget:
            return
        self._next_forget = now + FORGET_EVERY_S
        try:
            gone = self._forget_script(keys=[self.posts], args=[self.group, self.forget_idle_ms, self.consumer])
        except redis.ResponseError as exc:
            if transient(exc):
                raise
            if not self._forget_refused:
                self._forget_refused = True
                log.warning("forgetting dead consumers was refused (%s: %s); the worker goes on, and dead "
                            "consumers stay listed in the group. Fix: ACL SETUSER <user> +xinfo|consumers "
                            "+xgroup|delconsumer, or --forget-idle-ms 0", type(exc).__name__, exc)
            return
        if gone:
            self.stats.forgotten += len(gone)
            names = [g.decode() if isinstance(g, bytes) else g for g in gone]
            log.info("forgot %d consumers of group %r idle over %d ms with nothing pending: %s%s", len(names),
                     self.group, self.forget_idle_ms, ", ".join(names[:10]), " ..." if len(names) > 10 else "")

    def _over_delivered(self, ids: list) -> dict:
        if not ids:
            return {}
        rows = self.client.xpending_range(self.posts, self.group, min=ids[0], max=ids[-1], count=len(ids),
                                          consumername=self.consumer)  # just claimed: ours now
        want = set(ids)
        return {r["message_id"]: r["times_delivered"] for r in rows
                if r["message_id"] in want and r["times_delivered"] > self.max_deliveries}

    def _wait_s(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (capped at 5 s from n = 7)."""
        return self._backoff.compute(min(failures, 20))  # bounded exponent: 2^n stays a small float

    def _heartbeat(self, client=None, force: bool = False) -> None:
        """Publish this worker's counters (JSON at ``{prefix}:nearline:worker:{group}:{consumer}``,
        expiring after 5 heartbeats) for ``postemb nearline --stats``, at most every
        ``heartbeat_s`` unless ``force``. client: the one to send it with (default: the worker's).

        Observability must not stop the pipeline: a heartbeat the worker's Redis user may not
        write (NOPERM) logs one warning naming the key and the grant, and the worker goes on
        embedding (it keeps trying, and logs once more when the heartbeat is accepted again).
        A transient failure is raised, for the loop's backoff like any other Redis failure."""
        import redis

        now = time.monotonic()
        if not force and now < self._next_beat:
            return
        self._next_beat = now + self.heartbeat_s
        key = self.heartbeat_key()
        snap = self.stats.snapshot() | {"consumer": self.consumer, "model_version": self.model_version,
                                         "vector_version": self.vector_version, "prompt_name": self.prompt_name,
                                         "pid": os.getpid(), "at": time.time(), "instance": self._instance}
        try:
            r = client or self.client  # GET: the beat it replaces, to tell a second live worker under this name
            old = r.set(key, json.dumps(snap), ex=(ttl := max(1, int(self.heartbeat_s * 5))), get=True)
            check_versions(self, r, ttl)
        except redis.exceptions.NoPermissionError as exc:
            if not self._beat_refused:
                self._beat_refused = True
                log.warning("heartbeat refused: the worker's Redis user may not SET %r (%s: %s); the worker "
                            "goes on embedding, but `postemb nearline --stats` will not list it. Fix: ACL SETUSER "
                            "<user> +set ~%s:nearline:worker:*", key, type(exc).__name__, exc, self.prefix)
            return
        if self._beat_refused:
            self._beat_refused = False
            log.warning("heartbeat accepted again on %r", key)
        self._check_twin(old)

    def _check_twin(self, old) -> None:
        """Warn once when the heartbeat replaced (``old``) is another live worker's under this consumer
        name: written by another instance after this one started (a predecessor's last beat is older)."""
        try:
            beat = json.loads(old) if old else None
        except ValueError:
            return
        if self._twin_warned or not isinstance(beat, dict) or beat.get("instance") in (None, self._instance):
            return
        if float(beat.get("at") or 0) > self.stats.started_at:
            self._twin_warned = True
            log.warning("another live worker uses the consumer name %r of group %r (pid %s): the two read as one "
                        "consumer, each replays the other's pending events as its own, and --stats lists one of "
                        "them. Fix: give each worker its own --consumer (default: HOST-PID)", self.consumer,
                        self.group, beat.get("pid"))

    def heartbeat_key(self) -> str:
        """The key of this worker's heartbeat: ``{prefix}:nearline:worker:{group}:{consumer}``."""
        return f"{self.prefix}:nearline:worker:{self.group}:{self.consumer}"

    def _final_heartbeat(self, timeout_s: float = 1.0) -> None:
        """The last counters, on stopping: on a connection of its own with a ``timeout_s`` socket
        timeout and no retry, and skipped when the loop's last step failed on Redis, so that a
        Redis that does not answer (frozen, packets dropped) cannot hold the exit a supervisor
        waits for."""
        if not self._redis_ok:
            log.info("final heartbeat skipped: redis failed on the last step")
            return
        import redis

        pool = getattr(self.client, "connection_pool", None)
        client = None
        if pool is not None:  # a redis-py client: the same server and credentials, bounded
            kw = dict(pool.connection_kwargs, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                      retry=None, retry_on_error=[])
            client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kw))
        try:
            self._heartbeat(client, force=True)
        except Exception as exc:  # noqa: BLE001 - observability must not stop the exit
            log.info("final heartbeat failed: %s", exc)
        finally:
            if client is not None:
                client.connection_pool.disconnect()
