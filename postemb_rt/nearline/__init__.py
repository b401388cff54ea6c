"""Near-line embedding pipeline on Redis Streams.

    posts (stream) --XREADGROUP--> Worker: validate -> Encoder.encode -> store -> XACK
                                     |                                   |
                                     +--> posts-dead (poison + reason)   +--> postemb:{vector_version}:{post_id} (hash)
                                                                         +--> embeddings (stream, announcements)

``vector_version`` is the encoder's :attr:`~postemb_rt.Encoder.vector_version`: the model
version, plus ``+<precision>`` / ``+chunk`` when the precision or the long-post mode changes
the numbers (the plain model version for fp32 + truncate), so vectors of two modes never
share a key. Read a record back with ``fetch(client, encoder.vector_version, post_id)``.

Prompts: an event may carry ``prompt_name`` (``publish(..., prompt_name="query")``), else the
worker's ``prompt_name`` (``--prompt-name``; default: the model's default prompt) applies. A
micro-batch is embedded with one model call per distinct prompt in it; an event naming a
prompt the model lacks is dead-lettered (the reason lists the model's prompts); the record
and its announcement carry ``prompt_name``, and the same text with another prompt is a new
vector (stored and announced again).

Delivery is at-least-once: an event is acknowledged only after its embedding is written,
so a crash anywhere leaves it pending, and a live worker claims it (XAUTOCLAIM) once it
has been idle for ``claim_idle_ms``. A consumer with nothing pending that has not read for
``forget_idle_ms`` (a dead worker) is removed from the group. The store write is
idempotent: a Lua script writes the hash and announces it, all or nothing (every key's type is checked before the first
write; a key of the wrong type fails the call with an error naming it, and nothing is
written), and skips an event when the record already holds this post's current content
(same ``text_sha256``) or a newer event for the post.

Deletions: ``publish_delete(client, post_id)`` appends a deletion event (``op`` = ``delete``)
to the same ``posts`` stream, so the stream's order decides between it and the post's creates
and edits. The worker handles it without a model call, in the same store script call as the
posts of its batch, in event order: a deletion newer than the record replaces it with a
tombstone (no vector; ``fetch`` returns None, readers of the records skip it) and is announced
with ``deleted_at`` (see ``keys``); a post never seen is tombstoned too. Tombstones are kept,
never expired (``keys`` says why and what they cost).

The guarantee, exactly: the hash ends up with one record per (vector version, post id), of the
newest event: the embedding of its text, or a tombstone when that event is a deletion (an older
create or edit arriving late never brings a deleted post back; a newer one does). The
``embeddings`` stream gets one announcement per (post id, distinct text) and per deletion of a
live or never-seen post, in event order: a re-delivered event, the same post published twice
with the same text, or a deleted post deleted again, announces nothing new; an edited text (a
new event with different text), or a post published again after its deletion, is announced
again, as it should be. A late, older event is never announced. An announcement can still be
lost only with the Redis node itself (its persistence settings decide that), never by a worker
crash. A deletion applies to the worker's vector version: each group reads it (one group per
vector version), and records of a version no worker runs any more keep their vectors.

Failures, each costing only the post that causes it:
- The model: an input it rejects (``ValidationError``) is isolated at once by splitting
  its batch; any other model failure is retried ``max_attempts`` times, then the batch is
  split until the failing post is alone. A post that still fails alone while a probe text
  encodes fine is dead-lettered with the error; if the probe fails too, the model itself is
  down and the batch is retried (with backoff) until it comes back, so a model outage
  never dead-letters good posts.
- Redis, transient (``keys.transient``: connection lost or refused, timeouts, LOADING,
  READONLY/MASTERDOWN during a failover, BUSY, OOM, MISCONF, NOGROUP after a restart):
  retried without limit; nothing is acknowledged before it is written.
- Redis, deterministic (a ``ResponseError`` such as WRONGTYPE, a script error): never
  retried. In the store and dead-letter paths the batch is split until the post that
  causes it is alone; that post is dead-lettered with the error, the rest are stored. If
  an empty call (the script's key checks alone) fails too, no post is to blame (e.g. the
  ``embeddings`` or ``posts-dead`` key holds a string, or NOPERM): the worker stops with
  ``StoreError`` naming the key and the fix, acknowledging nothing.
- Redis refusing the worker (wrong or missing credentials, a disabled user: redis-py's
  AuthenticationError / AuthorizationError, which subclass ConnectionError): not transient;
  the worker stops with ``StoreError`` at once, acknowledging nothing (``keys.refused_everything``).
- A post that kills the worker (a crash) or hangs the model: redelivered events are
  claimed and processed one at a time, so the delivery count of each counts the attempts
  on it alone; a post delivered more than ``max_deliveries`` times is dead-lettered
  without being run again, and its batch neighbours are stored. A model call that runs
  past ``model_timeout_s`` (default 60 s) stops the worker with ``ModelTimeoutError``
  (``postemb nearline`` exits with code 3; its supervisor restarts it).

Single node only: the store script writes several keys in one atomic step, which Redis
Cluster refuses (CROSSSLOT) unless every key shares one hash slot, and putting every key
in one slot would remove the point of a cluster. The worker checks ``INFO`` on
connecting and refuses a cluster node with a clear error (use one primary, with replicas
or Sentinel for failover), and warns when its maxmemory-policy may evict any key
(allkeys-*). Needs Redis >= 6.2 (XAUTOCLAIM); tested with 7.0.

Modules: ``keys`` (stream and key names, the client set-up, the store script, reading a
stored embedding back), ``events`` (publishing and validating post and deletion events),
``worker`` (the consumer loop), ``store`` (the worker's Redis writes: store, acknowledge,
dead-letter, retry, and isolating the post a deterministic failure is of), ``health`` (worker
counters and the pipeline's health), ``settings`` (range checks of the numeric settings).
The names below are the public API: ``from postemb_rt import nearline``, then
``nearline.connect``, ``nearline.publish``, ``nearline.publish_delete``, ``nearline.Worker``,
``nearline.stats``.

``redis`` (redis-py >= 5) is imported inside the functions that talk to Redis only;
``import postemb_rt`` does not need it.
"""
from .events import MAX_POST_ID_BYTES, MAX_TEXT_BYTES, Deletion, Post, parse_event, publish, publish_delete
from .health import WorkerStats, stats
from .keys import (DEAD_MAXLEN, DEAD_STREAM, EMBEDDINGS_MAXLEN, EMBEDDINGS_STREAM, KEY_PREFIX, POSTS_MAXLEN,
                   POSTS_STREAM, StoredEmbedding, connect, fetch, store_key)
from .store import StoreError
from .model import DEFAULT_MODEL_TIMEOUT_S, EXIT_MODEL_TIMEOUT, PROBE_TEXT, ModelTimeoutError
from .worker import Worker

__all__ = ["connect", "publish", "publish_delete", "parse_event", "fetch", "store_key", "stats", "Worker",
           "WorkerStats", "Post", "Deletion", "StoreError", "ModelTimeoutError", "DEFAULT_MODEL_TIMEOUT_S", "EXIT_MODEL_TIMEOUT",
           "StoredEmbedding", "POSTS_STREAM", "DEAD_STREAM", "EMBEDDINGS_STREAM", "KEY_PREFIX", "POSTS_MAXLEN",
           "EMBEDDINGS_MAXLEN", "DEAD_MAXLEN", "MAX_TEXT_BYTES", "MAX_POST_ID_BYTES", "PROBE_TEXT"]
