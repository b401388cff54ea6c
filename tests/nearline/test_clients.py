"""The Redis client a worker is given: replies as bytes, and the database its URL names. Against a
real redis-server, with the fake model of ``test_faults``.
"""
from __future__ import annotations

import argparse

import pytest

from postemb_rt import ValidationError, nearline
from tests.nearline.test_faults import FakeEncoder, publish_all

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'redis>=5')")


def test_a_client_that_decodes_replies_is_refused_before_any_event_is_read(redis_server, redis_client):
    """With decode_responses=True every field name comes back as str, so every event read as one
    missing `post_id`: the worker dead-lettered and acknowledged the whole stream, embedding nothing."""
    publish_all(redis_client, 3)
    decoding = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ValidationError, match=r"`client` decodes replies.*decode_responses=True.*Fix: "
                                              r"nearline.connect"):
        nearline.Worker(decoding, FakeEncoder())
    with pytest.raises(ValidationError, match=r"`client` decodes replies"):
        nearline.fetch(decoding, "fake-v1", "p0")
    with pytest.raises(ValidationError, match=r"`client` decodes replies"):
        nearline.stats(decoding)
    assert redis_client.xlen("posts-dead") == 0 and not redis_client.exists("postemb:fake-v1:p0")
    decoding.close()


def _command(argv: list[str]):
    from postemb_rt.commands import nearline as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command, parser.parse_args(argv)


def test_a_database_redis_refuses_ends_the_command_before_the_model_loads(redis_server, redis_client, monkeypatch):
    """Redis answers SELECT 99 with "DB index is out of range": the command used to log that Redis "does
    not answer yet", load the model, then die with a traceback (exit 1); --stats said to start Redis."""
    from postemb_rt.encoder import Encoder

    loaded = []
    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(lambda cls, *a, **k: loaded.append(1)))
    url = redis_server.url.rsplit("/", 1)[0] + "/99"
    for extra in ([], ["--stats"]):
        command, args = _command(["--redis", url, *extra])
        with pytest.raises(nearline.StoreError, match=r"refused the connection: ResponseError: DB index is out of "
                                                      r"range.*Fix: .*database"):
            command.run(args)
    assert not loaded


@pytest.mark.parametrize("path", ["/x", "/posts", "/0/1", "/-1"])
def test_a_url_whose_database_is_not_a_number_is_refused(path):
    """redis-py ignores a database it cannot parse and uses database 0: redis://host:6379/posts wrote to
    database 0 without a word."""
    with pytest.raises(ValidationError, match=r"`--redis` names database .* not a number.*Given: "
                                              r"'redis://127.0.0.1:6379" + path):
        nearline.connect("redis://127.0.0.1:6379" + path)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/3",
                                 "redis://127.0.0.1:6379/?db=2", "unix:///tmp/redis.sock?db=1"])
def test_urls_with_a_database_number_or_none_are_accepted(url):
    nearline.connect(url).close()


@pytest.mark.parametrize("policy, warned", [("allkeys-lru", True), ("allkeys-random", True), ("noeviction", False),
                                            ("volatile-lru", False)])
def test_a_redis_that_may_evict_any_key_is_warned_about(redis_server, redis_client, caplog, policy, warned):
    """allkeys-* evicts records, tombstones, the posts stream and its group under memory pressure: posts
    lost or deleted ones back, without an error anywhere. The worker said nothing."""
    publish_all(redis_client, 2)
    redis_client.config_set("maxmemory-policy", policy)
    try:
        w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder())
        with caplog.at_level("WARNING", logger="postemb_rt.nearline"):
            w.run(max_events=2)
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    said = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(said) == int(warned) and redis_client.exists("postemb:fake-v1:p1")
    if warned:
        assert policy in said[0] and "Fix: CONFIG SET maxmemory-policy noeviction" in said[0]


def test_publish_refuses_a_text_with_nul_that_a_worker_would_dead_letter(redis_client):
    """publish refused an empty or oversized text up front, but took one with a NUL character, which every
    worker then dead-letters as a binary payload."""
    with pytest.raises(ValidationError, match=r"`text` contains a NUL character \(at index 3\).*Fix: remove"):
        nearline.publish(redis_client, "p0", "abc\x00def")
    assert redis_client.xlen("posts") == 0
    post, reason = nearline.parse_event(b"1-0", {b"post_id": b"p0", b"text": b"abc\x00def"})
    assert post is None and "NUL" in reason  # what it would have become
