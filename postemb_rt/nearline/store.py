"""The worker's Redis write paths: store (the store script: write and announce), acknowledge,
dead-letter (the dead-letter script), and the retry and isolation around them.

Redis failures are of two kinds (``keys.transient`` tells them apart). A transient one
(connection lost, LOADING, a failover, OOM, ...) is retried without limit (:meth:`_retry`),
nothing being acknowledged before it is written. A deterministic one (WRONGTYPE, a script
error) is never retried: :meth:`_isolate` splits the batch until the item that causes it is
alone, then an empty call (the script's key checks alone) tells that item's own fault
(dead-lettered) from a shared one (a wrong-type stream key, NOPERM: :class:`StoreError`,
the worker stops).
"""
from __future__ import annotations

import hashlib
import logging
import time

import numpy as np

from ..errors import PostEmbError
from .events import DELETE_OP, Deletion, Post, event_fields
from .keys import (DEAD_MAXLEN, DEAD_STREAM, EMBEDDINGS_STREAM, KEY_PREFIX, POSTS_STREAM, acl_rules,
                   refused_everything, store_key, transient)

log = logging.getLogger("postemb_rt.nearline")


class StoreError(PostEmbError):
    """Redis refuses a write for every post, not for one (a shared key of the wrong type, a
    refused permission), or refuses the worker altogether (wrong credentials). The worker
    stops; nothing was acknowledged, so the events stay pending until the cause is fixed."""


class Stopped(Exception):
    """Shutdown was asked for while a batch could not be finished; it stays pending."""


class StoreMixin:
    """The write paths of :class:`~postemb_rt.nearline.worker.Worker`, which is their only
    user; kept apart from its read and embed loop. They use the worker's ``client``,
    ``stats``, ``stop_event``, stream and group names (``posts``, ``dead``, ``embeddings``,
    ``group``, ``consumer``), store settings (``prefix``, ``embeddings_maxlen``,
    ``model_version``, ``vector_version``, ``dim``, ``claim_idle_ms``), its registered
    scripts (``_script``: STORE_LUA, ``_dead_script``: DEAD_LUA), ``_group_ready`` /
    ``_ensure_group()`` and ``_wait_s(failures)`` (the backoff)."""

    def _store(self, posts: list[Post | Deletion], vectors: list) -> list:
        """Write and announce (the store script), then acknowledge. posts: posts and deletions in
        event order; vectors: float32 (dim,) for each post, None for each deletion. Returns the
        dead-letter entries (event_id, fields, reason) of events the store refuses
        deterministically (e.g. WRONGTYPE at the post's key): found by splitting the batch, the
        rest is stored."""
        t0 = time.perf_counter()
        items = [(p, [p.event_id, p.post_id, f"{p.deleted_at:.6f}", "", "", "", DELETE_OP]) if isinstance(p, Deletion)
                 else (p, [p.event_id, p.post_id, f"{p.created_at:.6f}",
                           np.ascontiguousarray(v, dtype="<f4").tobytes(),  # dim*4 bytes
                           hashlib.sha256(p.text.encode("utf-8")).hexdigest(), self.prompt_of(p) or "", ""])
                 for p, v in zip(posts, vectors)]

        def write(chunk):
            # embedded_at: when this attempt writes, so an attempt that succeeds after retries
            # (a Redis outage) stamps the time the record really appeared, not the first try
            embedded_at = time.time()
            keys = [self.embeddings] + [store_key(self.vector_version, p.post_id, self.prefix) for p, _ in chunk]
            args = [self.embeddings_maxlen, self.model_version, self.vector_version, self.dim, f"{embedded_at:.6f}"]
            for _, a in chunk:
                args += a
            return self._script(keys=keys, args=args), embedded_at

        results, failed = self._isolate("store", items, write, lambda item: item[0].event_id)
        done = [p for chunk, _ in results for p, _ in chunk]
        if done:
            self._ack([p.event_id for p in done])  # never before the write above has succeeded
        written = sum(int(n[0]) for _, (n, _) in results)
        deleted = sum(int(n[1]) for _, (n, _) in results)
        self.stats.stored += written
        self.stats.deleted += deleted
        self.stats.rewrites += len(done) - written - deleted
        # the records written only: a rewrite (a re-delivery, the same text again) made nothing fresher
        self.stats.freshness.extend(t - p.created_at for chunk, (n, t) in results
                                    for (p, _), outcome in zip(chunk, bytes(n[2])) if outcome == ord("w"))
        self.stats.store_s += time.perf_counter() - t0
        return [(p.event_id, event_fields(p), f"the store refused it: {type(err).__name__}: {err}"[:1000])
                for (p, _), err in failed]

    def _ack(self, ids: list) -> None:
        try:
            self._retry("ack", lambda: self.client.xack(self.posts, self.group, *ids), ids)
        except Stopped:
            raise
        except Exception as exc:
            raise StoreError(f"XACK on {self.posts!r} (group {self.group!r}) failed deterministically: "
                             f"{type(exc).__name__}: {exc}. The events stay pending (nothing is lost). "
                             f"Fix: {fix_hint(exc, self)}") from exc

    def _dead_letter(self, dead: list) -> None:
        """Move entries (event_id, fields, reason) to the dead-letter stream and acknowledge
        them, in one all-or-nothing script call (DEAD_LUA). A record Redis refuses (e.g. an
        event with more than 3,500 fields) is isolated and replaced by a minimal one (ids and
        reason, the event's own fields dropped)."""
        def move(chunk):
            args = [self.group, DEAD_MAXLEN]
            for eid, fields, reason in chunk:
                rec = {k: v for k, v in fields.items()
                       if k not in (b"event_id", b"reason", b"group", b"consumer", b"dead_at")}
                rec.update({b"event_id": eid, b"reason": reason, b"group": self.group,
                            b"consumer": self.consumer, b"dead_at": f"{time.time():.6f}"})
                args += [eid, 2 * len(rec)] + [x for kv in rec.items() for x in kv]
            return self._dead_script(keys=[self.dead, self.posts], args=args)

        _, failed = self._isolate("dead-letter", dead, move, lambda item: item[0])
        for (eid, _, reason), err in failed:
            minimal = (eid, {}, f"{reason} [the event's own fields were dropped: the dead-letter stream refused "
                                f"them: {type(err).__name__}: {err}]"[:2000])
            try:
                self._retry("dead-letter (minimal record)", lambda m=minimal: move([m]), [eid])
            except Stopped:
                raise
            except Exception as exc:
                raise StoreError(f"dead-lettering event {eid!r} on {self.dead!r} failed: {type(exc).__name__}: "
                                 f"{exc}. It stays pending. Fix: {fix_hint(exc, self)}") from exc
        self.stats.dead += len(dead)
        for eid, _, reason in dead:
            log.warning("dead-lettered %s: %s", eid, reason)

    def _isolate(self, what: str, items: list, write, event_id) -> tuple[list, list]:
        """write(chunk) for all items, in as few calls as the data allow. Transient Redis
        failures are retried (:meth:`_retry`). A deterministic failure splits the chunk in
        two until the item that causes it is alone; then an empty call (the script's key
        checks alone) tells an item's own fault from a shared one. Returns (results, failed):
        results [(chunk, write's return)], failed [(item, exception)]. Raises StoreError for
        a shared fault (a wrong-type stream key, NOPERM): no post is to blame for it.
        event_id(item): the event an item is of (to keep the chunk's entries ours while retrying)."""
        import redis

        results, failed, todo = [], [], [(0, len(items))]
        while todo:
            lo, hi = todo.pop()
            chunk = items[lo:hi]
            ids = [event_id(x) for x in chunk]
            try:
                results.append((chunk, self._retry(what, lambda c=chunk: write(c), ids)))
                continue
            except Stopped:
                raise
            except Exception as exc:  # noqa: BLE001 - deterministic (_retry retries the rest)
                err = exc
            self.stats.retries += 1
            if refused_everything(err):
                raise StoreError(f"{what} refused: {type(err).__name__}: {err}. Nothing was acknowledged. "
                                 f"Fix: {fix_hint(err, self)}") from err
            if hi - lo > 1:
                log.warning("%s failed for %d events (%s: %s); splitting the batch to find the cause", what,
                            hi - lo, type(err).__name__, err)
                mid = (lo + hi) // 2
                todo += [(mid, hi), (lo, mid)]
                continue
            try:
                self._retry(f"{what} (probe)", lambda: write([]), [])
            except Stopped:
                raise
            except Exception as probe_err:
                raise StoreError(f"{what} fails for every post, not one: {type(probe_err).__name__}: {probe_err}. "
                                 f"Nothing was acknowledged: the events stay pending. "
                                 f"Fix: {fix_hint(probe_err, self)}") from probe_err
            failed.append((chunk[0], err))
        return results, failed

    def _retry(self, what: str, fn, ids: list, retry_if=transient):
        """fn() until it succeeds; exponential backoff with jitter (50 ms .. 5 s) after each
        failure for which ``retry_if(exc)`` is true (default: a transient Redis failure); any
        other is raised at once, for the caller to isolate. While retrying, the batch's
        pending entries are re-claimed by us now and then so other workers do not take them
        over. Raises Stopped if shutdown is asked for meanwhile."""
        failures = 0
        started = last_touch = time.monotonic()
        while True:
            try:
                return fn()
            except Exception as exc:
                if not retry_if(exc):
                    raise
                err = exc
            if "NOGROUP" in str(err):  # the stream/group vanished (restart without persistence)
                self._group_ready = False
            self.stats.retries += 1
            failures += 1
            wait = self._wait_s(failures)
            log.warning("%s failed for %d events (%s: %s); retry in %.2f s", what, len(ids),
                        type(err).__name__, err, wait)
            if self.stop_event.wait(wait):
                raise Stopped()
            try:
                if not self._group_ready:
                    self._ensure_group()
                if ids and time.monotonic() - last_touch > self.claim_idle_ms / 2000.0:
                    self.client.xclaim(self.posts, self.group, self.consumer, 0, ids, justid=True)
                    last_touch = time.monotonic()
            except Exception:  # the broker is down too; the next attempt will tell
                pass
            if self.stop_event.is_set():  # asked while the commands above waited on a silent Redis
                raise Stopped()
            if time.monotonic() - started > 60 and failures % 10 == 0:
                log.error("%s has been failing for %.0f s", what, time.monotonic() - started)


def fix_hint(exc: BaseException, worker=None) -> str:
    """The "Fix:" of an error Redis gave the worker. worker: whose stream names and key prefix
    a least-privilege ACL rule names (None: the defaults)."""
    import redis

    if "WRONGTYPE" in str(exc):
        return "delete or rename the key the error names (or point the worker at other stream names)."
    if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
        return ("give the worker the right credentials in its Redis URL, redis://[USER]:PASSWORD@HOST:PORT/DB "
                "(--redis, or $POSTEMB_REDIS), for a user that is enabled.")
    if refused_everything(exc):  # a permission (NOPERM), the credentials being handled above
        names = ((worker.posts, worker.dead, worker.embeddings, worker.prefix) if worker is not None
                 else (POSTS_STREAM, DEAD_STREAM, EMBEDDINGS_STREAM, KEY_PREFIX))
        return (f"grant the worker's Redis user every command and key it needs: ACL SETUSER <user> "
                f"{acl_rules(*names)} (the scripts run TYPE, HMGET, HSET, DEL, XADD, XPENDING and XACK; SET writes the "
                f"heartbeat at {names[3]}:nearline:worker:*).")
    return "see the Redis error above; the worker can go on once Redis accepts the write."
