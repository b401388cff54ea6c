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

Modules: ``keys`` (stream and key names, the client set-up, the store script, reading a
stored embedding back), ``events`` (publishing and validating post-created events),
``worker`` (the consumer loop), ``health`` (worker counters and the pipeline's health).
The names below are the public API: ``from postemb_rt import nearline``, then
``nearline.connect``, ``nearline.publish``, ``nearline.Worker``, ``nearline.stats``.

``redis`` (redis-py >= 5) is imported inside the functions that talk to Redis only;
``import postemb_rt`` does not need it.
"""
from .events import MAX_POST_ID_BYTES, MAX_TEXT_BYTES, Post, parse_event, publish
from .health import WorkerStats, stats
from .keys import (DEAD_MAXLEN, DEAD_STREAM, EMBEDDINGS_MAXLEN, EMBEDDINGS_STREAM, KEY_PREFIX, POSTS_MAXLEN,
                   POSTS_STREAM, StoredEmbedding, connect, fetch, store_key)
from .worker import PROBE_TEXT, Worker

__all__ = ["connect", "publish", "parse_event", "fetch", "store_key", "stats", "Worker", "WorkerStats", "Post",
           "StoredEmbedding", "POSTS_STREAM", "DEAD_STREAM", "EMBEDDINGS_STREAM", "KEY_PREFIX", "POSTS_MAXLEN",
           "EMBEDDINGS_MAXLEN", "DEAD_MAXLEN", "MAX_TEXT_BYTES", "MAX_POST_ID_BYTES", "PROBE_TEXT"]
