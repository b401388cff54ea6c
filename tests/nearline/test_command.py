"""``postemb nearline`` as an operator runs it: ``python -m postemb_rt.commands.nearline`` and its
environment, ``--stats`` on a group that does not exist and after a trim, a second Ctrl-C. Against a
real redis-server, with the fake model of ``test_faults``.
"""
from __future__ import annotations

import json

import pytest

from postemb_rt import nearline
from tests.nearline.test_faults import publish_all

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'redis>=5')")


def test_python_m_reads_the_environment_as_postemb_nearline_does(redis_server, redis_client, monkeypatch, capsys):
    """`--help` names $POSTEMB_REDIS (and every flag's variable); `python -m postemb_rt.commands.nearline`
    used to ignore it and every other POSTEMB_* variable, and asked 127.0.0.1:6379."""
    from postemb_rt.commands import nearline as command

    publish_all(redis_client, 3)
    monkeypatch.setenv("POSTEMB_REDIS", redis_server.url)
    monkeypatch.setenv("POSTEMB_REDIS_URL", "redis://127.0.0.1:1/0")  # the older name loses
    monkeypatch.setenv("POSTEMB_JSON", "1")
    assert command.main(["--stats"]) == 0
    assert json.loads(capsys.readouterr().out)["posts_len"] == 3
    monkeypatch.delenv("POSTEMB_REDIS")
    monkeypatch.setenv("POSTEMB_REDIS_URL", redis_server.url)
    assert command.main(["--stats"]) == 0


def test_stats_of_a_group_that_does_not_exist_says_so(redis_server, redis_client, capsys):
    """`--group embeder` (a typo) printed lag, pending 0 and consumers 0 like a group that exists,
    and the age of its undelivered events as '-'."""
    from postemb_rt.commands import nearline as command

    publish_all(redis_client, 4)
    s = nearline.stats(redis_client, "embeder")
    assert s["group_exists"] is False and s["groups"] == [] and s["lag"] == 4 and s["lag_s"] is not None
    redis_client.xgroup_create("posts", "embedder", id="0")
    assert nearline.stats(redis_client, "embeder")["groups"] == ["embedder"]
    assert nearline.stats(redis_client)["group_exists"] is True
    assert command.main(["--redis", redis_server.url, "--group", "embeder", "--stats"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("group embeder: does not exist on stream 'posts' (its groups: embedder; a worker creates")
    assert "lag 4 events (oldest undelivered " in first and "undelivered -" not in first
    redis_client.delete("posts")
    assert command.main(["--redis", redis_server.url, "--group", "embeder", "--stats"]) == 0
    assert "does not exist on stream 'posts' (its groups: none; " in capsys.readouterr().out


def test_stats_lag_counts_only_undelivered_events_still_in_the_stream(redis_client):
    """Events trimmed before any delivery (MAXLEN while the workers were down) stayed in Redis's lag
    counter: --stats said lag 5 with 2 events in the stream, and lag 3 forever once all were read."""
    publish_all(redis_client, 10)
    redis_client.xgroup_create("posts", "embedder", id="0")
    redis_client.xreadgroup("embedder", "gone", {"posts": ">"}, count=7)
    redis_client.xtrim("posts", maxlen=0)
    publish_all(redis_client, 2, start=10)
    s = nearline.stats(redis_client)
    assert (s["posts_len"], s["lag"], s["pending"]) == (2, 2, 7)
    read = redis_client.xreadgroup("embedder", "live", {"posts": ">"}, count=10)
    assert len(read[0][1]) == 2
    s = nearline.stats(redis_client)
    assert (s["lag"], s["lag_s"]) == (0, 0.0)
