"""Counters and health: ``WorkerStats`` (one worker's counters, published as its heartbeat)
and ``stats`` (the pipeline's lag, pending entries, throughput and freshness, read from
Redis alone: ``postemb nearline --stats``)."""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..errors import ValidationError
from . import settings
from .events import id_ms
from .keys import DEAD_STREAM, EMBEDDINGS_STREAM, KEY_PREFIX, POSTS_STREAM, require_bytes, scan_literal

log = logging.getLogger("postemb_rt.nearline")


@dataclass
class WorkerStats:
    started_at: float = field(default_factory=time.time)
    batches: int = 0
    events: int = 0          # entries handled (stored, deleted, skipped as rewrites, or dead-lettered)
    stored: int = 0          # hashes written
    deleted: int = 0         # tombstones written (deletions announced)
    rewrites: int = 0        # re-deliveries, or events older than the record (no-op)
    dead: int = 0
    claimed: int = 0         # entries taken over from idle consumers
    forgotten: int = 0       # dead consumers removed from the group (nothing pending, idle forget_idle_ms)
    trimmed: int = 0         # pending entries whose event was trimmed from the stream
    retries: int = 0         # model/store attempts that failed (then retried, or the batch split)
    reconnects: int = 0
    model_timeouts: int = 0  # model calls that ran past model_timeout_s (the worker stopped)
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


def check_versions(worker, client, ttl_s: int) -> None:
    """Warn once when a live worker of ``worker``'s group stores under another vector version, or embeds the
    posts whose event names no prompt with another default prompt (``--prompt-name``).

    A group delivers each event to one of its consumers, so workers of two vector versions in one group (a
    rolling deploy of a new model, --precision auto on mixed CPUs) split the posts: each version gets part
    of them, neither all; workers of two default prompts store each such post with either prompt. Each
    heartbeat records (SET ... GET, expiring as the heartbeats do: ``ttl_s``) the version and the prompt at
    ``{prefix}:nearline:worker:{group}`` and reads the ones it replaces, so two alternating there are seen
    within a few beats, without a SCAN."""
    beat = {"vector_version": worker.vector_version, "prompt_name": worker.prompt_name, "by": worker.consumer,
            "at": time.time()}
    old = client.set(f"{worker.prefix}:nearline:worker:{worker.group}", json.dumps(beat), ex=ttl_s, get=True)
    try:
        other = json.loads(old) if old else None
    except ValueError:
        return
    if worker._mixed_warned or not isinstance(other, dict) or other.get("vector_version") is None:
        return
    if other["vector_version"] != worker.vector_version:
        worker._mixed_warned = True
        log.warning("group %r has live workers of two vector versions: this one stores %r, worker %r stores %r. "
                    "Each event goes to one worker of the group, so each version gets only part of the posts. Fix: "
                    "one group per vector version (--group), e.g. a new group for the new version, then stop the old "
                    "workers", worker.group, worker.vector_version, other.get("by"), other["vector_version"])
    elif other.get("prompt_name", worker.prompt_name) != worker.prompt_name:  # (beats of before: no prompt_name)
        worker._mixed_warned = True
        log.warning("group %r has live workers of two default prompts: this one embeds the posts whose event names "
                    "no prompt_name with prompt %r, worker %r with %r (None: no prompt). Each event goes to one "
                    "worker of the group, so each such post gets either prompt. Fix: give every worker of a group "
                    "the same --prompt-name (or a group of its own)", worker.group, worker.prompt_name,
                    other.get("by"), other["prompt_name"])


def _pct(values, p):
    return round(float(np.percentile(values, p)), 4) if len(values) else None


def stats(client, group: str = "embedder", *, posts_stream: str = POSTS_STREAM, dead_stream: str = DEAD_STREAM,
          embeddings_stream: str = EMBEDDINGS_STREAM, prefix: str = KEY_PREFIX, window_s: float = 60.0,
          sample: int = 5000) -> dict:
    """Pipeline health, read from Redis only (no model needed).

    group_exists: whether ``group`` exists on ``posts_stream`` (a worker creates it when it starts;
    False: no worker has, or a typo), groups: the names of the groups that do.
    lag: events in ``posts`` not yet delivered to the group (None when Redis cannot tell; events
    trimmed before any delivery are lost, not lag); lag_s: age of the oldest of them.
    pending: delivered, not yet acknowledged; oldest_pending_s: age of the oldest.
    throughput_per_s (embeddings announced), deletions_per_s (deletions announced) and freshness
    (embedded_at - created_at) percentiles: over the last ``window_s`` seconds (> 0) of the
    ``embeddings`` stream, read as at most its newest ``sample`` announcements; throughput_window_s:
    the seconds the rates are over (``window_s``, or less when the sample ends inside the window);
    foreign_announcements: entries of that sample without a worker's fields (another producer's), skipped.
    A stream name whose key holds another type raises ValidationError naming the argument and the key.
    """
    settings.check(window_s=window_s)
    require_bytes(client)
    for arg, key in (("posts_stream", posts_stream), ("dead_stream", dead_stream),
                     ("embeddings_stream", embeddings_stream)):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind not in ("stream", "none"):  # XLEN and XINFO would fail with a bare WRONGTYPE
            raise ValidationError(f"`{arg}`: key {key!r} holds a {kind}, not a stream. Given: {key!r}. Fix: name the "
                                  "stream the workers use, or delete or rename that key.")
    now = time.time()
    out: dict = {"group": group, "posts_len": client.xlen(posts_stream), "dead_len": client.xlen(dead_stream),
                 "embeddings_len": client.xlen(embeddings_stream)}
    groups = client.xinfo_groups(posts_stream) if client.exists(posts_stream) else []
    g = next((x for x in groups if x["name"] in (group, group.encode())), None)
    out["group_exists"] = g is not None
    out["groups"] = [x["name"].decode() if isinstance(x["name"], bytes) else x["name"] for x in groups]
    if g is None:  # no worker has started on it (or a typo): every event is undelivered
        first = client.xrange(posts_stream, count=1)
        out.update(lag=out["posts_len"], pending=0, consumers=0, oldest_pending_s=None,
                   lag_s=round(now - id_ms(first[0][0]) / 1000.0, 3) if first else None)
    else:
        lag = g.get("lag")
        last = g.get("last-delivered-id")
        nxt = client.xrange(posts_stream, min=b"(" + last if isinstance(last, bytes) else f"({last}", count=1)
        # Redis's lag (entries added - entries read) still counts events trimmed before any delivery:
        # none undelivered is left when nothing follows last-delivered-id, and never more than XLEN
        if not nxt:
            lag = 0
        elif lag is not None:
            lag = min(lag, out["posts_len"])
        out.update(lag=lag, pending=g["pending"], consumers=g["consumers"],
                   last_delivered_id=last.decode() if isinstance(last, bytes) else last,
                   lag_s=round(now - id_ms(nxt[0][0]) / 1000.0, 3) if nxt else 0.0)
        pend = client.xpending(posts_stream, group)
        out["oldest_pending_s"] = round(now - id_ms(pend["min"]) / 1000.0, 3) if pend["pending"] else None
        out["consumer_pending"] = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]:
                                   {"pending": c["pending"], "idle_ms": c["idle"]}
                                   for c in client.xinfo_consumers(posts_stream, group)}
    # the rates are over the window, or over the part of it the sample reaches: at more than `sample`
    # announcements per window_s, dividing the sample by the whole window gave sample / window_s at any rate
    fresh, deletions, foreign, oldest, covered = [], 0, 0, now, window_s
    announced = client.xrevrange(embeddings_stream, count=sample)
    for _, f in announced:
        try:
            t = float(f.get(b"embedded_at") or f[b"removed_at"])  # a deletion's announcement: removed_at
            age = None if b"deleted_at" in f else t - float(f[b"created_at"])
        except (KeyError, ValueError):  # an entry another producer added to the stream: not a worker's
            foreign += 1
            continue
        if t < now - window_s:
            break
        oldest = min(oldest, t)
        if age is None:
            deletions += 1
        else:
            fresh.append(age)
    else:  # no announcement older than the window was read: a full sample covers its newest part only
        if len(announced) >= sample:
            covered = min(window_s, max(now - oldest, 1e-3))
    out["foreign_announcements"] = foreign
    out["window_s"] = window_s
    out["sample"] = sample
    out["throughput_window_s"] = round(covered, 3)  # the seconds the rates below are over
    out["throughput_per_s"] = round(len(fresh) / covered, 2)
    out["deletions_per_s"] = round(deletions / covered, 2)
    out.update({f"freshness_p{p}_s": _pct(fresh, p) for p in (50, 90, 99)})
    out["freshness_max_s"] = round(max(fresh), 4) if fresh else None
    workers = []
    # the heartbeats are a handful of keys among every record of the store: SCAN walks the whole keyspace, so
    # COUNT 10,000 keeps that to one round trip per 10,000 keys (COUNT 100 took 100,000 for 10M records)
    # glob characters in the group name matched literally; the key checked whole, since the pattern of group "a"
    # also matches the heartbeats of group "a:b"
    base = f"{prefix}:nearline:worker:{group}:"
    pattern = scan_literal(base) + "*"
    for key in client.scan_iter(match=pattern, count=10_000, _type="string"):
        raw = client.get(key)
        try:
            beat = json.loads(raw) if raw else None
        except ValueError:  # not a worker's heartbeat
            beat = None
        if isinstance(beat, dict) and "consumer" in beat and key == f"{base}{beat['consumer']}".encode():
            workers.append(beat)
    out["workers"] = workers
    return out
