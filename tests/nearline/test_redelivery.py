"""A write repeated (a retry after a lost reply, or a second worker on the same event) adds nothing
twice. Against a real redis-server, with the fake model of ``test_faults``.
"""
from __future__ import annotations

import pytest

from postemb_rt import nearline
from tests.nearline.test_faults import FakeEncoder, dead, pending

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'redis>=5')")


def test_a_dead_letter_retried_after_its_reply_was_lost_is_recorded_once(redis_server, redis_client):
    """The dead-letter script ran, then its reply was lost (a socket timeout): the retry added a second
    record of the same event to posts-dead."""
    redis_client.xadd("posts", {"post_id": "bad"})  # poison: no text
    nearline.publish(redis_client, "ok", "fine text")
    w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), consumer="w")
    real, calls = w._dead_script, []

    def reply_lost_once(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        if len(calls) == 1:
            raise redis.TimeoutError("Timeout reading from socket (simulated: the script ran, its reply was lost)")
        return out

    w._dead_script = reply_lost_once
    w.run(max_events=2)
    assert len(calls) >= 2  # it was retried
    assert redis_client.xlen("posts-dead") == 1 and list(dead(redis_client)) == ["bad"]
    assert pending(redis_client) == 0 and redis_client.exists("postemb:fake-v1:ok")


def test_an_event_two_workers_dead_letter_is_recorded_once(redis_server, redis_client):
    """Worker a holds a poison event past claim_idle_ms; worker b claims it and dead-letters it; a, done
    at last, dead-letters it too: one record, and a's late call acknowledges nothing twice."""
    eid = redis_client.xadd("posts", {"post_id": "bad", "text": b"\xff\xfe"})  # not UTF-8
    a = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), consumer="a")
    b = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), consumer="b", claim_idle_ms=1)
    a._ensure_group()
    entries, _ = a._next_batch()
    assert [e[0] for e in entries] == [eid]
    b.run(max_events=1)  # claims a's event (idle >= 1 ms) and dead-letters it
    assert redis_client.xlen("posts-dead") == 1 and pending(redis_client) == 0
    a._process(entries, False)
    assert redis_client.xlen("posts-dead") == 1 and list(dead(redis_client)) == ["bad"]
    assert redis_client.xrange("posts-dead")[0][1][b"consumer"] == b"b"
