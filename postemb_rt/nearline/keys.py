"""Redis names and the store: stream and key names, the client set-up (``connect``), the
Lua script that writes a post's record and its announcement in one atomic step, and
reading a record back (``fetch``).

Record layout (hash ``postemb:{model_version}:{post_id}``):
    vector        dim*4 bytes, float32 little-endian, unit L2 norm
    dim, model_version, post_id
    created_at    seconds since the epoch (producer's clock), "%.6f"
    embedded_at   seconds since the epoch when the worker wrote it, "%.6f"
    event_id      the ``posts`` stream id the record came from
    text_sha256   hex SHA-256 of the post's UTF-8 text (the content the vector is of)
"""
from __future__ import annotations

from dataclasses import dataclass

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



# KEYS[1] = embeddings stream, KEYS[1+i] = hash key of item i.
# ARGV = embeddings maxlen, model_version, dim, embedded_at, then per item
#        event_id, post_id, created_at, vector bytes, text_sha256.
# A hash already holding this event id or a newer one for the post is left alone (a
# re-delivery or an older event arriving late). A newer event with the text already
# stored (the post published twice) only moves ``event_id`` forward: no new vector, no
# announcement. Returns the number of records written (= announced).
STORE_LUA = """
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


def refuse_cluster(client) -> None:
    """Raise ValidationError on a Redis Cluster node (see the module docstring: the store
    script writes several keys atomically, which a cluster refuses with CROSSSLOT)."""
    info = client.info("cluster")
    if int(info.get("cluster_enabled", 0) or 0):
        raise ValidationError(
            "`client` is connected to a Redis Cluster node (INFO cluster: cluster_enabled:1); the near-line store "
            "writes a post's hash and its announcement in one atomic script, which Redis Cluster refuses "
            "(CROSSSLOT). Fix: point --redis at a single Redis primary (use replicas or Sentinel for failover).")
