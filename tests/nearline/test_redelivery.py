"""A write repeated (a retry after a lost reply, or a second worker on the same event) adds nothing
twice. Against a real redis-server, with the fake model of ``test_faults``.
"""
from __future__ import annotations

import time

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


def test_workers_of_two_vector_versions_in_one_group_are_warned_about(redis_server, redis_client, caplog):
    """A group hands each event to one consumer: a rolling deploy of a new model under the same --group
    (or --precision auto on mixed CPUs) split the posts between two vector versions, each incomplete,
    without a word."""
    from tests.nearline.test_faults import publish_all
    from tests.nearline.test_nearline import drained, running, wait_until

    publish_all(redis_client, 40)
    old = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(delay_s=0.01), consumer="old",
                          batch_size=2, heartbeat_s=0.05, poll_ms=50)
    new = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(delay_s=0.01, vector_version="fake-v2"),
                          consumer="new", batch_size=2, heartbeat_s=0.05, poll_ms=50)
    with caplog.at_level("WARNING", logger="postemb_rt.nearline"), running(old), running(new):
        wait_until(lambda: drained(redis_client) and old._mixed_warned and new._mixed_warned, 15,
                   "both workers to warn")
    warned = [r.getMessage() for r in caplog.records if "two vector versions" in r.getMessage()]
    assert len(warned) == 2  # once each
    assert "'fake-v1'" in warned[0] and "'fake-v2'" in warned[0] and "Fix: one group per vector version" in warned[0]


def test_workers_of_one_vector_version_are_not_warned_about(redis_server, redis_client, caplog):
    from tests.nearline.test_faults import publish_all
    from tests.nearline.test_nearline import drained, running, wait_until

    publish_all(redis_client, 20)
    workers = [nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(delay_s=0.01), consumer=f"w{i}",
                               batch_size=2, heartbeat_s=0.05) for i in range(2)]
    with caplog.at_level("WARNING", logger="postemb_rt.nearline"), running(workers[0]), running(workers[1]):
        wait_until(lambda: drained(redis_client), 15, "the group to drain")
        time.sleep(0.3)  # a few more heartbeats each
    assert not [r for r in caplog.records if "two vector versions" in r.getMessage()]


def test_stats_says_when_the_live_workers_of_a_group_store_two_vector_versions(redis_client, capsys):
    import json

    from postemb_rt.commands import nearline as command

    nearline.publish(redis_client, "p0", "a post")
    redis_client.xgroup_create("posts", "embedder", id="0")
    for consumer, version in (("old", "fake-v1"), ("new", "fake-v2")):
        nearline.Worker(redis_client, FakeEncoder(vector_version=version), consumer=consumer)._heartbeat()
    command._print_stats(nearline.stats(redis_client))
    out = capsys.readouterr().out
    assert "warning: the live workers store under 2 vector versions (fake-v1, fake-v2)" in out
    redis_client.delete("postemb:nearline:worker:embedder:new")
    command._print_stats(nearline.stats(redis_client))
    assert "vector versions" not in capsys.readouterr().out
    assert json.loads(redis_client.get("postemb:nearline:worker:embedder:old"))["vector_version"] == "fake-v1"


def test_worker_freshness_counts_the_records_written_not_the_rewrites(redis_server, redis_client):
    """The worker's freshness (its heartbeat's p50/p90/p99) took every event stored, re-deliveries and the same
    text published again included, though they wrote nothing; the embeddings stream, which --stats reads
    for the pipeline's freshness, announces only what was written."""
    w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), consumer="w")
    nearline.publish(redis_client, "p0", "a post", created_at=time.time() - 1000)
    w.run(max_events=1)
    nearline.publish(redis_client, "p0", "a post", created_at=time.time() - 5000)  # the same text again
    nearline.publish(redis_client, "p1", "another post")
    w.run(max_events=3)
    assert (w.stats.stored, w.stats.rewrites) == (2, 1) and len(w.stats.freshness) == 2
    assert 999 < w.stats.freshness[0] < 1100 and w.stats.freshness[1] < 100  # p0 then p1, not the rewrite
    assert redis_client.xlen("embeddings") == 2


def test_workers_of_two_default_prompts_in_one_group_are_warned_about(redis_client, nearline_encoder, caplog,
                                                                      capsys):
    """Two workers of one vector version, one started with --prompt-name query, one with document: each post
    without a prompt_name of its own was embedded with either prompt, as the group handed it out, without a word."""
    a = nearline.Worker(redis_client, nearline_encoder, consumer="a", prompt_name="query", heartbeat_s=0.01)
    b = nearline.Worker(redis_client, nearline_encoder, consumer="b", prompt_name="document", heartbeat_s=0.01)
    same = nearline.Worker(redis_client, nearline_encoder, consumer="c", prompt_name="document", heartbeat_s=0.01)
    with caplog.at_level("WARNING", logger="postemb_rt.nearline"):
        for w in (b, same, b, a, b):  # `same` only ever replaces b's beat: nothing to warn about
            w._heartbeat(force=True)
    warned = [r.getMessage() for r in caplog.records if "two default prompts" in r.getMessage()]
    assert (a._mixed_warned, b._mixed_warned, same._mixed_warned) == (True, True, False) and len(warned) == 2
    assert "prompt 'query', worker 'b' with 'document'" in warned[0] and "Fix: give every worker of a group the " \
           "same --prompt-name" in warned[0]
    assert not [r for r in caplog.records if "two vector versions" in r.getMessage()]
    from postemb_rt.commands import nearline as command

    command._print_stats(nearline.stats(redis_client))
    assert "warning: the live workers embed with 2 default prompts ('document', 'query'): each post without a " \
           "prompt_name gets either" in capsys.readouterr().out
