"""Redis names and the store: stream and key names, the client set-up (``connect``), the
Lua scripts that write a post's record and its announcement (``STORE_LUA``) or move events
to the dead-letter stream (``DEAD_LUA``), each all or nothing, or forget dead consumers
(``FORGET_LUA``), which Redis errors are worth retrying (``transient``), the server checks
(``check_server``) and reading a record back (``fetch``).

Record layout (hash ``postemb:{vector_version}:{post_id}``):
    vector          dim*4 bytes, float32 little-endian, unit L2 norm
    dim, post_id
    model_version   the model's version (``Encoder.model_version``)
    vector_version  the key's version: ``Encoder.vector_version``, the model version plus
                    ``+<precision>`` / ``+chunk`` when the precision or the long-post mode
                    changes the numbers (vectors of two modes never share a key)
    created_at      seconds since the epoch (producer's clock), "%.6f"
    embedded_at     seconds since the epoch when the worker sent the write that stored it
                    (the attempt that succeeded, after any retries of a Redis outage), "%.6f"
    event_id        the ``posts`` stream id the record came from
    text_sha256     hex SHA-256 of the post's UTF-8 text (the content the vector is of)
    prompt_name     the model's prompt the text was embedded with ("" for none; records
                    written before prompts lack it, and were embedded with no prompt name)

Tombstone (the same key, once the post is deleted: ``publish_delete``): ``post_id``,
``event_id`` (the deletion's), ``deleted_at`` (producer's clock) and ``removed_at`` (when the
worker wrote it), "%.6f"; no ``vector``. A record is a tombstone when it has ``deleted_at``;
``fetch`` returns None for it, and every reader of the records must skip it. Tombstones are
kept, never expired: without one, an older create or edit of the post still in the stream or
pending in the group (a backlog, a crashed worker's batch, an outage) would bring the post back,
and no expiry can bound how late that event comes. They cost ~200 bytes of Redis memory
each (a 4-field hash). One may be deleted by hand once every group has acknowledged every
event up to its ``event_id`` (XINFO GROUPS: nothing pending before it, last-delivered-id past it).

Announcement (``embeddings`` stream): post_id, key, model_version, vector_version,
created_at, embedded_at, prompt_name. A deletion's announcement: post_id, key, model_version,
vector_version, deleted_at, removed_at; a consumer tells it apart by ``deleted_at`` (it has no
``created_at`` / ``embedded_at``), and drops the post.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from ..errors import ValidationError

POSTS_STREAM = "posts"
DEAD_STREAM = "posts-dead"
EMBEDDINGS_STREAM = "embeddings"
KEY_PREFIX = "postemb"
# Producer-side cap on the ``posts`` stream (XADD MAXLEN ~): 1M events is ~1.4 h of backlog
# at 200 posts/s and ~150-250 MB of Redis memory for short posts. See publish().
POSTS_MAXLEN = 1_000_000
EMBEDDINGS_MAXLEN = 1_000_000  # announcements kept (MAXLEN ~) for downstream consumers
DEAD_MAXLEN = 100_000


def connect(url: str = "redis://127.0.0.1:6379/0", **kwargs):
    """A redis-py client for ``url`` with the timeouts the pipeline expects (bytes replies).

    socket_timeout (10 s) must exceed the longest XREADGROUP BLOCK the worker issues (1 s); it
    bounds one command against a Redis that does not answer (frozen, or packets dropped).
    A dropped or refused connection (``ConnectionError``) is retried by redis-py itself
    (``Retry``: 5 retries, backoff 50 ms .. 0.8 s, about 1.5 s of waiting in all); a timeout is
    not: redis-py would retry it after a full socket_timeout each time, and its health-check
    PING (``health_check_interval``) would nest a second such loop inside every attempt, so a
    frozen Redis held one call for minutes. Past that the worker's own loop keeps retrying
    without limit, with its backoff, and stops waiting at once on ``Worker.stop`` (every command
    it sends is safe to repeat).
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # ExponentialBackoff waits min(cap, base * 2^n) before retry n: 50, 100, 200, 400, 800 ms
    opts = dict(socket_timeout=10.0, socket_connect_timeout=2.0, health_check_interval=0,
                decode_responses=False,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.025), 5, supported_errors=(redis.ConnectionError,)),
                retry_on_error=[redis.ConnectionError])
    opts.update(kwargs)

    def hide(text: str) -> str:  # a password in the URL is never printed
        return re.sub(r"(//[^/@:]*:)[^/]*@", r"\1***@", text)
    if isinstance(url, str):
        # redis-py reads the path's digits as the database and ignores any other path (database 0)
        parts = urlsplit(url)
        if parts.scheme in ("redis", "rediss") and not re.fullmatch(r"/?\d*", parts.path):
            raise ValidationError(f"`--redis` names database {parts.path[1:]!r}, not a number: redis-py would use "
                                  f"database 0. Given: {hide(url)!r}. Fix: e.g. redis://127.0.0.1:6379/0 (the path "
                                  "is the database number and nothing else).")
    try:
        return redis.Redis.from_url(url, **opts)
    except ValueError as exc:  # redis-py's "Redis URL must specify one of the following schemes ..."
        raise ValidationError(f"`--redis` is not a Redis URL: {hide(str(exc))}. Given: {hide(url)!r}. Fix: "
                              "e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS, unix:///path/to/socket).") from None


# KEYS[1] = embeddings stream, KEYS[1+i] = hash key of item i.
# ARGV = embeddings maxlen, model_version, vector_version, dim, embedded_at (a deletion's removed_at), then
#        per item event_id, post_id, created_at (a deletion's deleted_at), vector bytes, text_sha256,
#        prompt_name ("" for none), op ("" for a post, "delete" for a deletion: vector and text_sha256 "").
# All or nothing: every key's TYPE is checked before the first write, and a key of the wrong
# type fails the whole call with an error that names it (nothing written, nothing
# announced). Past the checks no command can fail on the data (an out-of-memory server
# refuses the first write of a script, never a later one), so a call writes every record
# or none. (A command the user's ACL refuses, e.g. DEL without +del, fails the call midway:
# items before it stay written, unacknowledged, and their re-delivery is a rewrite.) A hash
# already holding this event id or a newer one for the post is left alone (a re-delivery or
# an older event arriving late). A newer event with the text already
# stored with the same prompt (the post published twice) only moves ``event_id`` forward: no
# new vector, no announcement. A newer deletion replaces the record with a tombstone (DEL, then
# HSET) and announces it; on a tombstone it only moves ``event_id`` forward. A newer post over
# a tombstone deletes it and writes the record. Items are applied in order (event order), so a
# batch announces in event order. Returns {records written, tombstones written} (= announced) and one
# letter per item: w (a record written), d (a tombstone written), - (nothing new: a rewrite).
# No items (KEYS[1] only): the checks alone, the worker's probe.
STORE_LUA = """
local function check(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= want and t ~= 'none' then
    return 'WRONGTYPE postemb store: key ' .. key .. ' holds a ' .. t .. ', not a ' .. want ..
           '; nothing was written. Fix: delete or rename that key'
  end
end
local bad = check(KEYS[1], 'stream')
for i = 2, #KEYS do bad = bad or check(KEYS[i], 'hash') end
if bad then return redis.error_reply(bad) end
if #ARGV ~= 5 + (#KEYS - 1) * 7 then
  return redis.error_reply('ERR postemb store: ' .. #ARGV .. ' arguments for ' .. (#KEYS - 1) .. ' items')
end
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not bm then return true end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local written, deleted, done = 0, 0, {}
for i = 2, #KEYS do
  local a = 6 + (i - 2) * 7
  local cur = redis.call('HMGET', KEYS[i], 'event_id', 'text_sha256', 'prompt_name', 'deleted_at')
  done[i - 1] = '-'
  if (not cur[1]) or newer(ARGV[a], cur[1]) then
    if ARGV[a + 6] == 'delete' then
      if cur[4] then
        redis.call('HSET', KEYS[i], 'event_id', ARGV[a])
      else
        redis.call('DEL', KEYS[i])
        redis.call('HSET', KEYS[i], 'post_id', ARGV[a + 1], 'event_id', ARGV[a], 'deleted_at', ARGV[a + 2],
                   'removed_at', ARGV[5])
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'post_id', ARGV[a + 1], 'key', KEYS[i],
                   'model_version', ARGV[2], 'vector_version', ARGV[3], 'deleted_at', ARGV[a + 2],
                   'removed_at', ARGV[5])
        deleted, done[i - 1] = deleted + 1, 'd'
      end
    elseif cur[1] and cur[2] == ARGV[a + 4] and (cur[3] or '') == ARGV[a + 5] then
      redis.call('HSET', KEYS[i], 'event_id', ARGV[a])  -- (a tombstone has no text_sha256)
    else
      if cur[4] then redis.call('DEL', KEYS[i]) end
      redis.call('HSET', KEYS[i], 'vector', ARGV[a + 3], 'dim', ARGV[4], 'model_version', ARGV[2],
                 'vector_version', ARGV[3], 'post_id', ARGV[a + 1], 'created_at', ARGV[a + 2],
                 'embedded_at', ARGV[5], 'event_id', ARGV[a], 'text_sha256', ARGV[a + 4],
                 'prompt_name', ARGV[a + 5])
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'post_id', ARGV[a + 1], 'key', KEYS[i],
                 'model_version', ARGV[2], 'vector_version', ARGV[3], 'created_at', ARGV[a + 2],
                 'embedded_at', ARGV[5], 'prompt_name', ARGV[a + 5])
      written, done[i - 1] = written + 1, 'w'
    end
  end
end
return {written, deleted, table.concat(done)}
"""

# KEYS[1] = dead-letter stream, KEYS[2] = posts stream.
# ARGV = group, dead maxlen, then per record: event id, n (an even field count), n values
#        (field, value, field, value, ...).
# Adds each record to the dead-letter stream and acknowledges its event, all or nothing as
# STORE_LUA: types and record shapes are checked before the first write, and an error
# names the key or the event. An event no longer pending in the group is skipped: a retry of a
# call whose reply was lost (a timeout, a dropped connection), or another worker that claimed it
# and moved it first, adds no second record. Returns the number of records moved. No records:
# the checks alone (the worker's probe).
DEAD_LUA = """
local function check(key)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'stream' and t ~= 'none' then
    return 'WRONGTYPE postemb dead-letter: key ' .. key .. ' holds a ' .. t ..
           ', not a stream; nothing was written. Fix: delete or rename that key'
  end
end
local bad = check(KEYS[1]) or check(KEYS[2])
if bad then return redis.error_reply(bad) end
local records, i = {}, 3
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  if (not n) or n < 2 or n % 2 == 1 or n > 7000 or i + 1 + n > #ARGV then
    return redis.error_reply('ERR postemb dead-letter: the record of event ' .. ARGV[i] ..
                             ' has a bad field count ' .. tostring(ARGV[i + 1]) .. ' (2..7000, even)')
  end
  records[#records + 1] = {i + 2, i + 1 + n}
  i = i + 2 + n
end
local ids = {}
for _, r in ipairs(records) do
  local id = ARGV[r[1] - 2]
  if #redis.call('XPENDING', KEYS[2], ARGV[1], id, id, 1) > 0 then  -- else moved already: no second record
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, r[1], r[2]))
    ids[#ids + 1] = id
  end
end
if #ids > 0 then redis.call('XACK', KEYS[2], ARGV[1], unpack(ids)) end
return #ids
"""

# KEYS[1] = posts stream. ARGV = group, idle ms, the calling consumer.
# Forgets the group's consumers that hold no pending event and have been idle at least ARGV[2]
# ms: dead workers (each restart under the HOST-PID default name adds one, and --stats lists
# them all). One script, so no consumer can read an event between the check and the delete
# (XGROUP DELCONSUMER drops a consumer's pending entries with it). A live worker reads at
# least every poll, so its idle time stays far below the bound; one forgotten anyway is
# created again by its next read, with nothing lost. Returns the names forgotten.
FORGET_LUA = """
local gone = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) and f['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    gone[#gone + 1] = f['name']
  end
end
return gone
"""

# Every command a worker sends, for a least-privilege Redis user (``acl_rules``): INFO (the server checks:
# cluster, eviction policy), XGROUP CREATE, XREADGROUP, XAUTOCLAIM, XPENDING and XCLAIM (redelivery),
# XACK, EVALSHA and SCRIPT LOAD (the three scripts; TYPE, HMGET, HSET, DEL (a deletion's tombstone), XADD,
# XACK, XPENDING, XINFO CONSUMERS and XGROUP DELCONSUMER run inside them, and ACLs apply there too), SET (the
# heartbeat), PING (``postemb nearline`` checks the credentials with it) and SELECT (a
# database other than 0). ``publish`` and ``publish_delete`` send XADD alone.
WORKER_COMMANDS = ("ping", "select", "info", "xgroup|create", "xreadgroup", "xautoclaim", "xpending", "xclaim",
                   "xack", "evalsha", "script|load", "type", "hmget", "hset", "del", "xadd", "set", "xinfo|consumers",
                   "xgroup|delconsumer")
# What ``postemb nearline --stats`` (``health.stats``) adds, all reads: the streams' types and lengths, the
# group, the oldest undelivered and pending events, the newest announcements, the heartbeats (SCAN, GET).
STATS_COMMANDS = ("type", "xlen", "exists", "xinfo|groups", "xinfo|consumers", "xrange", "xrevrange", "xpending",
                  "scan", "get")


def acl_rules(posts_stream: str = POSTS_STREAM, dead_stream: str = DEAD_STREAM,
              embeddings_stream: str = EMBEDDINGS_STREAM, prefix: str = KEY_PREFIX) -> str:
    """The ACL SETUSER rules one Redis user needs to run the worker, ``publish`` and ``postemb nearline
    --stats``, no more: their commands (``WORKER_COMMANDS``, ``STATS_COMMANDS``) and keys (the three
    streams; ``{prefix}:*``: the records and the heartbeats). A producer that only publishes needs
    ``+xadd ~{posts_stream}`` (and ``+select`` for a database other than 0)."""
    keys = [posts_stream, dead_stream, embeddings_stream, f"{prefix}:*"]
    commands = dict.fromkeys(WORKER_COMMANDS + STATS_COMMANDS)  # in order, once each
    return " ".join([f"+{c}" for c in commands] + [f"~{k}" for k in keys])


TRANSIENT_PREFIXES = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY ", "OOM", "MISCONF",
                      "NOREPLICAS", "NOSCRIPT", "NOGROUP", "UNBLOCKED")


def transient(exc: BaseException) -> bool:
    """True for a Redis failure that retrying can cure: the connection (dropped, refused,
    timed out), a server loading its data, a replica promoted or demoted (READONLY,
    MASTERDOWN), a busy script, out of memory (OOM: consumers trim), a failing disk
    (MISCONF), a stream or group lost in a restart (NOGROUP: the worker recreates it).
    False for the rest, which fail the same way every time: a key of the wrong type
    (WRONGTYPE), a script error, a refused permission (NOPERM), a client-side DataError, and
    refused credentials (``refused_everything``), which redis-py raises as a ConnectionError."""
    import redis

    if refused_everything(exc):
        return False
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return True
    if isinstance(exc, redis.ResponseError):
        if isinstance(exc, (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
                            redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                            redis.exceptions.NoScriptError)):
            return True
        return str(exc).startswith(TRANSIENT_PREFIXES)
    return False


# How Redis 7.0 refuses a command that a script runs for want of an ACL grant: a plain error, not
# NOPERM (e.g. a user granted the rules of before deletions, without +del, storing a tombstone).
SCRIPT_REFUSED = "The user executing the script can't"


def refused_everything(exc: BaseException) -> bool:
    """True when Redis refuses this client whatever it sends: a wrong or missing password, a
    disabled user (AuthenticationError, AuthorizationError), or a user without permission for a
    command or key (NOPERM, or ``SCRIPT_REFUSED`` inside a script). Neither retrying nor isolating
    a post can cure it: the worker stops."""
    import redis

    return isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
                            redis.exceptions.NoPermissionError)) or \
        (isinstance(exc, redis.ResponseError) and SCRIPT_REFUSED in str(exc))


def require_bytes(client) -> None:
    """Raise ValidationError for a redis-py client that decodes replies to str (decode_responses=True):
    event fields and records are read by their bytes names, and vectors are raw bytes."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None and getattr(pool, "connection_kwargs", {}).get("decode_responses"):
        raise ValidationError("`client` decodes replies to str (decode_responses=True), but event fields and "
                              "records are bytes (a vector is raw float32): a worker would read every event as "
                              "missing its fields and dead-letter it, a store read fails on the first vector. Given: a client with decode_responses=True. Fix: "
                              "nearline.connect(url), or redis.Redis(..., decode_responses=False).")


def scan_literal(text: str) -> str:
    """``text`` as a SCAN MATCH pattern matching it literally: Redis glob's ``* ? [ ] \\`` escaped by a
    backslash (unescaped, a prefix "a[1]" matched key "a1", "a*" every key starting with "a")."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def store_key(vector_version: str, post_id: str, prefix: str = KEY_PREFIX) -> str:
    """``{prefix}:{vector_version}:{post_id}``: the hash holding one post's embedding."""
    return f"{prefix}:{vector_version}:{post_id}"


@dataclass
class StoredEmbedding:
    vector: np.ndarray  # float32 (dim,)
    created_at: float
    embedded_at: float
    event_id: str
    model_version: str   # the model's own version (``Encoder.model_version``)
    vector_version: str  # the version the record is stored under (``Encoder.vector_version``)
    prompt_name: str = ""  # the model's prompt the text was embedded with ("" for none)


def fetch(client, vector_version: str, post_id, prefix: str = KEY_PREFIX) -> StoredEmbedding | None:
    """Read one stored embedding back (None if absent or deleted: a tombstone). vector: float32 (dim,).

    vector_version: the version the worker stores under, its encoder's ``vector_version``
    (the model version, plus ``+<precision>`` / ``+chunk`` for a fast precision or the chunk
    long-post mode; the plain model version for fp32 + truncate). Records written before
    the vector version existed report their model version as ``vector_version``."""
    require_bytes(client)
    h = client.hgetall(store_key(vector_version, str(post_id), prefix))
    if not h or b"deleted_at" in h:  # a tombstone
        return None
    model_version = h[b"model_version"].decode()
    return StoredEmbedding(np.frombuffer(h[b"vector"], dtype="<f4").astype(np.float32),
                           float(h[b"created_at"]), float(h[b"embedded_at"]), h[b"event_id"].decode(),
                           model_version, h.get(b"vector_version", b"").decode() or model_version,
                           h.get(b"prompt_name", b"").decode())


def check_server(client) -> None:
    """Raise ValidationError on a Redis Cluster node (see the module docstring: the store
    script writes several keys atomically, which a cluster refuses with CROSSSLOT); warn when the
    server may evict keys the pipeline needs (one INFO)."""
    info = client.info()
    if int(info.get("cluster_enabled", 0) or 0):
        raise ValidationError(
            "`client` is connected to a Redis Cluster node (INFO cluster: cluster_enabled:1); the near-line store "
            "writes a post's hash and its announcement in one atomic script, which Redis Cluster refuses "
            "(CROSSSLOT). Fix: point --redis at a single Redis primary (use replicas or Sentinel for failover).")
    policy = info.get("maxmemory_policy", "noeviction")
    policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    if policy.startswith("allkeys-"):  # volatile-*: only keys with a TTL (the heartbeats) may go
        logging.getLogger("postemb_rt.nearline").warning(
            "redis evicts any key under memory pressure (maxmemory-policy %s): records, tombstones (a deleted post "
            "comes back), the posts stream and its consumer group (events lost) can vanish without an error. Fix: "
            "CONFIG SET maxmemory-policy noeviction (a full Redis then refuses writes, which the worker retries "
            "without losing an event), or a volatile-* policy", policy)
