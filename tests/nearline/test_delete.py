"""Deleting a post: ``publish_delete`` events, tombstones, and the "newer event wins" rule across
creates, edits and deletions. Against a real redis-server, with the fake model of ``test_faults``
(its ``calls`` show which texts reached the model)."""
from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest

from postemb_rt import ValidationError, nearline
from tests.nearline.test_faults import FakeEncoder, fake_vector

TOMBSTONE_FIELDS = {b"post_id", b"event_id", b"deleted_at", b"removed_at"}


def worker(redis_server, encoder=None, **kw) -> nearline.Worker:
    kw = {"batch_size": 16, "max_wait_ms": 50, **kw}
    return nearline.Worker(nearline.connect(redis_server.url), encoder or FakeEncoder(), **kw)


def feed(client) -> list[tuple[str, str]]:
    """The ``embeddings`` stream as (post id, "put" or "delete"), in order."""
    return [(f[b"post_id"].decode(), "delete" if b"deleted_at" in f else "put") for _, f in client.xrange("embeddings")]


def record(client, post_id) -> dict:
    return client.hgetall(nearline.store_key("fake-v1", post_id))


# -- the event --------------------------------------------------------------------------------


def test_publish_delete_writes_its_fields_and_validates(redis_client):
    eid = nearline.publish_delete(redis_client, 7, deleted_at=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))
    ((got_id, fields),) = redis_client.xrange("posts")
    assert got_id == eid and fields == {b"post_id": b"7", b"op": b"delete", b"deleted_at": b"1735689600.000000"}
    before = time.time()
    nearline.publish_delete(redis_client, "p")
    assert float(redis_client.xrange("posts")[-1][1][b"deleted_at"]) >= before - 1e-3  # default: now
    for bad, match in ((dict(post_id=None), r"`post_id` must be str or int\. Given: NoneType"),
                       (dict(post_id=""), r"`post_id` must be 1\.\.256 UTF-8 bytes"),
                       (dict(post_id="p", deleted_at=dt.datetime(2025, 1, 1)), r"`deleted_at` must be timezone-aware"),
                       (dict(post_id="p", deleted_at=float("nan")), r"`deleted_at` must be seconds since the epoch"),
                       (dict(post_id="p", deleted_at=time.time() * 1000),
                        r"`deleted_at` .* s in the future: .*milliseconds.*Fix")):
        with pytest.raises(ValidationError, match=match):
            nearline.publish_delete(redis_client, **bad)
    assert redis_client.xlen("posts") == 2
    with pytest.raises(ValidationError, match=r"Given: ''\. .*publish_delete\(client, post_id\)"):
        nearline.publish(redis_client, "p", "")  # a text edited to "": the error names the deletion


def test_deletion_events_parse_and_bad_ones_are_poison():
    got, why = nearline.parse_event(b"1700000000000-0", {b"post_id": b"1", b"op": b"delete"})
    assert why == "" and (got.post_id, got.deleted_at) == ("1", 1700000000.0)  # default: the broker's time
    got, _ = nearline.parse_event(b"1-0", {b"post_id": b"1", b"op": b"delete", b"deleted_at": b"12.5"})
    assert isinstance(got, nearline.Deletion) and got.deleted_at == 12.5
    cases = {
        "unknown `op` b'remove'": {b"post_id": b"1", b"op": b"remove"},
        "carries no `text`": {b"post_id": b"1", b"op": b"delete", b"text": b"hi"},
        "missing field `post_id`": {b"op": b"delete"},
        "invalid `deleted_at`": {b"post_id": b"1", b"op": b"delete", b"deleted_at": b"yesterday"},
        "`deleted_at` ": {b"post_id": b"1", b"op": b"delete", b"deleted_at": f"{time.time() * 1e3:.0f}".encode()},
        "`post_id` must be 1..256 bytes": {b"post_id": b"", b"op": b"delete"},
        "publish_delete": {b"post_id": b"1", b"text": b""},  # an empty text says what a deletion is
    }
    for reason, fields in cases.items():
        got, why = nearline.parse_event(b"1-0", fields)
        assert got is None and reason in why, (fields, why)


# -- the store --------------------------------------------------------------------------------


def test_delete_after_create_leaves_a_tombstone_announced_once(redis_server, redis_client):
    nearline.publish(redis_client, "p0", "first post")
    nearline.publish(redis_client, "p1", "second post")
    enc = FakeEncoder()
    worker(redis_server, enc).run(max_events=2)
    assert nearline.fetch(redis_client, "fake-v1", "p0") is not None
    before = time.time()
    eid = nearline.publish_delete(redis_client, "p0", deleted_at=1700000000.5)
    w = worker(redis_server, enc)
    w.run(max_events=1)
    rec = record(redis_client, "p0")
    assert set(rec) == TOMBSTONE_FIELDS and rec[b"event_id"] == eid and rec[b"deleted_at"] == b"1700000000.500000"
    assert float(rec[b"removed_at"]) >= before
    assert nearline.fetch(redis_client, "fake-v1", "p0") is None
    np.testing.assert_array_equal(nearline.fetch(redis_client, "fake-v1", "p1").vector, fake_vector("second post"))
    assert feed(redis_client) == [("p0", "put"), ("p1", "put"), ("p0", "delete")]
    (_, ann), = redis_client.xrevrange("embeddings", count=1)
    assert ann == {b"post_id": b"p0", b"key": nearline.store_key("fake-v1", "p0").encode(),
                   b"model_version": b"fake-v1", b"vector_version": b"fake-v1", b"deleted_at": b"1700000000.500000",
                   b"removed_at": rec[b"removed_at"]}
    assert enc.calls == [["first post", "second post"]]  # the deletion made no model call
    assert (w.stats.deleted, w.stats.stored, w.stats.rewrites) == (1, 0, 0)
    again = nearline.publish_delete(redis_client, "p0")  # deleted twice: nothing new to announce
    w.run(max_events=2)
    assert record(redis_client, "p0")[b"event_id"] == again and len(feed(redis_client)) == 3
    assert (w.stats.deleted, w.stats.rewrites) == (1, 1)


def test_a_redelivered_deletion_announces_nothing_new(redis_server, redis_client):
    nearline.publish(redis_client, "p", "a post")
    nearline.publish_delete(redis_client, "p")
    worker(redis_server, group="g1").run(max_events=2)
    tomb = record(redis_client, "p")
    replay = worker(redis_server, group="g2")  # a second group replays both events: each is older or equal
    replay.run(max_events=2)
    assert (replay.stats.rewrites, replay.stats.stored, replay.stats.deleted) == (2, 0, 0)
    assert record(redis_client, "p") == tomb and feed(redis_client) == [("p", "put"), ("p", "delete")]


def test_a_late_older_create_does_not_resurrect_a_deleted_post_and_a_newer_one_does(redis_server, redis_client):
    """The create of a never-stored post is pending with a dead consumer while its deletion is
    stored: the deletion leaves a tombstone, and the create, claimed late, is older: skipped."""
    nearline.publish(redis_client, "p", "the old text")
    redis_client.xgroup_create("posts", "embedder", id="0")
    redis_client.xreadgroup("embedder", "dead", {"posts": ">"}, count=1)  # read, never acknowledged
    nearline.publish_delete(redis_client, "p")
    live = worker(redis_server, claim_idle_ms=3_600_000)  # claims nothing: the deletion alone
    live.run(max_events=1)
    assert live.stats.deleted == 1 and set(record(redis_client, "p")) == TOMBSTONE_FIELDS
    enc = FakeEncoder()
    late = worker(redis_server, enc, claim_idle_ms=1)
    late.run(max_events=1)
    assert late.stats.claimed == 1 and late.stats.rewrites == 1 and late.stats.stored == 0
    assert nearline.fetch(redis_client, "fake-v1", "p") is None and feed(redis_client) == [("p", "delete")]
    assert redis_client.xpending("posts", "embedder")["pending"] == 0
    eid = nearline.publish(redis_client, "p", "posted again")  # newer than the deletion: back
    late.run(max_events=2)
    got = nearline.fetch(redis_client, "fake-v1", "p")
    np.testing.assert_array_equal(got.vector, fake_vector("posted again"))
    assert got.event_id == eid.decode() and b"deleted_at" not in record(redis_client, "p")
    assert feed(redis_client) == [("p", "delete"), ("p", "put")]


def test_a_mixed_batch_embeds_only_its_posts_and_applies_every_event_in_order(redis_server, redis_client):
    nearline.publish(redis_client, "a", "text a")
    nearline.publish(redis_client, "b", "text b")
    nearline.publish_delete(redis_client, "a")
    nearline.publish(redis_client, "c", "text c")
    nearline.publish_delete(redis_client, "ghost")  # never seen: a tombstone too
    nearline.publish_delete(redis_client, "b")
    nearline.publish(redis_client, "b", "text b, posted again")
    enc = FakeEncoder()
    w = worker(redis_server, enc)
    w.run(max_events=7)
    assert w.stats.batches == 1 and enc.calls == [["text a", "text b", "text c", "text b, posted again"]]
    assert feed(redis_client) == [("a", "put"), ("b", "put"), ("a", "delete"), ("c", "put"), ("ghost", "delete"),
                                  ("b", "delete"), ("b", "put")]
    assert (w.stats.stored, w.stats.deleted, w.stats.rewrites) == (4, 3, 0)
    assert {p: nearline.fetch(redis_client, "fake-v1", p) is None for p in "abc"} == {"a": True, "b": False,
                                                                                     "c": False}
    assert nearline.fetch(redis_client, "fake-v1", "ghost") is None
    assert set(record(redis_client, "ghost")) == TOMBSTONE_FIELDS
    np.testing.assert_array_equal(nearline.fetch(redis_client, "fake-v1", "b").vector,
                                  fake_vector("text b, posted again"))


def test_a_deletion_the_store_refuses_is_dead_lettered_with_its_fields(redis_server, redis_client):
    redis_client.set(nearline.store_key("fake-v1", "squat"), "a string")
    nearline.publish(redis_client, "ok", "a post")
    nearline.publish_delete(redis_client, "squat", deleted_at=5.0)
    w = worker(redis_server)
    w.run(max_events=2)
    ((_, rec),) = redis_client.xrange("posts-dead")
    assert rec[b"op"] == b"delete" and rec[b"deleted_at"] == b"5.000000" and b"WRONGTYPE" in rec[b"reason"]
    assert (w.stats.stored, w.stats.dead, w.stats.deleted) == (1, 1, 0) and feed(redis_client) == [("ok", "put")]


# -- what reads the store ---------------------------------------------------------------------


def test_stats_count_deletions_apart_from_embeddings(redis_server, redis_client):
    nearline.publish(redis_client, "p", "a post")
    nearline.publish_delete(redis_client, "p")
    nearline.publish_delete(redis_client, "q")
    w = worker(redis_server, heartbeat_s=0.01)
    w.run(max_events=3)
    s = nearline.stats(redis_client, window_s=60)
    assert (s["throughput_per_s"], s["deletions_per_s"]) == (round(1 / 60, 2), round(2 / 60, 2))
    assert s["freshness_p50_s"] is not None  # from the one embedding's announcement
    assert [(b["consumer"], b["deleted"], b["stored"]) for b in s["workers"]] == [(w.consumer, 2, 1)]


def test_an_index_built_from_the_store_skips_tombstones(redis_server, redis_client):
    pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")
    from postemb_rt.retrieval import PostIndex

    for i in range(5):
        nearline.publish(redis_client, f"p{i}", f"post number {i}")
    nearline.publish_delete(redis_client, "p1")
    nearline.publish_delete(redis_client, "p4")
    nearline.publish_delete(redis_client, "never-posted")
    worker(redis_server).run(max_events=8)
    idx = PostIndex.from_redis(redis_client, "fake-v1")
    assert sorted(idx.ids) == ["p0", "p2", "p3"]
    assert idx.prompt_name == ""  # the records' prompt: a tombstone (it records none) does not make it unknown
    hits = idx.search(fake_vector("post number 1")[None], k=5)[0]
    assert sorted(h.id for h in hits) == ["p0", "p2", "p3"]  # the deleted posts' vectors are not served
    for pid in ("p0", "p2", "p3"):  # every post deleted: said so, not "holds no embeddings" beside that version
        nearline.publish_delete(redis_client, pid)
    worker(redis_server).run(max_events=3)
    with pytest.raises(ValidationError, match=r"`vector_version` 'fake-v1': every post the store holds under it was "
                                              r"deleted \(6 tombstones, no vectors\), so there is nothing to index"):
        PostIndex.from_redis(redis_client, "fake-v1")


def test_a_user_granted_the_rules_of_before_deletions_stops_the_worker_with_the_grant(redis_server, redis_client):
    """Without +del the store script's DEL is refused (Redis 7.0: a plain script error, not NOPERM): the
    worker stops naming the grant, and the deletion stays pending, neither dead-lettered nor lost; once
    granted, the worker replays its batch (the post the script wrote before the refusal: a rewrite)."""
    from tests.nearline.test_operations import _acl_user

    old_rules = nearline.keys.acl_rules().replace(" +del ", " ")
    url = f"redis://{_acl_user(redis_client, 'before', old_rules)}127.0.0.1:{redis_server.port}/0"
    nearline.publish(redis_client, "p", "a post")
    nearline.publish_delete(redis_client, "p")
    w = nearline.Worker(nearline.connect(url), FakeEncoder(), "embedder", "w1", batch_size=16, max_wait_ms=50)
    with pytest.raises(nearline.StoreError, match=r"Fix: grant .*ACL SETUSER <user> .*\+del "):
        w.run(max_events=2)
    assert redis_client.xpending("posts", "embedder")["pending"] == 2 and redis_client.xlen("posts-dead") == 0
    assert b"deleted_at" not in record(redis_client, "p") and ("p", "delete") not in feed(redis_client)
    redis_client.execute_command("ACL", "SETUSER", "before", "+del")
    again = nearline.Worker(nearline.connect(url), FakeEncoder(), "embedder", "w1", batch_size=16, max_wait_ms=50)
    again.run(max_events=2)
    assert (again.stats.rewrites, again.stats.deleted) == (1, 1) and feed(redis_client) == [("p", "put"),
                                                                                            ("p", "delete")]
    assert nearline.fetch(redis_client, "fake-v1", "p") is None and redis_client.xlen("posts-dead") == 0
    redis_client.acl_deluser("before")
