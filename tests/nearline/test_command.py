"""``postemb nearline`` as an operator runs it: ``python -m postemb_rt.commands.nearline`` and its
environment, ``--stats`` on a group that does not exist and after a trim, a second Ctrl-C. Against a
real redis-server, with the fake model of ``test_faults``.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postemb_rt import nearline
from tests.nearline.test_faults import FakeEncoder, pending, publish_all, stored_ids
from tests.nearline.test_nearline import _WORKER_ENV, drained, running, wait_until

ROOT = Path(__file__).resolve().parents[2]
# `postemb nearline` in a process of its own, with the fake model, which hangs on a post marked "hang"
CLI_WITH_HANGING_MODEL = """
import sys
from postemb_rt.commands import nearline as command
from postemb_rt.encoder import Encoder
from tests.nearline.test_faults import FakeEncoder
Encoder.from_pretrained = classmethod(lambda cls, *a, **k: FakeEncoder(hang="hang"))
sys.exit(command.main(sys.argv[1:]))
"""

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


def test_a_second_ctrl_c_stops_at_once_with_one_line_and_exit_130(redis_server, redis_client):
    """The second SIGINT used to raise KeyboardInterrupt in the middle of the batch: a traceback, then
    up to 10 s joining the model thread still in its call, then the encoder closed under that call."""
    publish_all(redis_client, 1, marked={0: "hang"})
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_HANGING_MODEL, "--redis", redis_server.url,
                             "--consumer", "twice"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=_WORKER_ENV)
    try:
        wait_until(lambda: redis_client.exists("postemb:nearline:worker:embedder:twice") or
                   nearline.stats(redis_client)["pending"] == 1, 30, "the worker to take the post")
        time.sleep(0.3)  # in the model call, which hangs
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == ("postemb nearline: second SIGINT: stopped at once; the batch in hand "
                                           "was not acknowledged (its events stay pending, to be redelivered)")
    assert pending(redis_client) == 1


def test_two_live_workers_with_one_consumer_name_are_warned_about(redis_server, redis_client, caplog):
    """Two workers started with the same --consumer read as one consumer: each replays the other's pending
    events as its own, and they overwrite one heartbeat, so --stats lists one worker. Nothing said so."""
    ids = publish_all(redis_client, 20)
    a, b = (nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(delay_s=0.01), consumer="same",
                            batch_size=2, max_wait_ms=0, heartbeat_s=0.05) for _ in range(2))
    with caplog.at_level("WARNING", logger="postemb_rt.nearline"), running(a), running(b):
        wait_until(lambda: drained(redis_client), 30, "both workers to drain the stream")
        wait_until(lambda: any("consumer name" in r.getMessage() for r in caplog.records), 5, "the warning")
    assert stored_ids(redis_client) == set(ids) and not a.errors and not b.errors
    warnings = [r.getMessage() for r in caplog.records if "consumer name" in r.getMessage()]
    assert len(warnings) <= 2  # once per worker at most
    assert "another live worker uses the consumer name 'same' of group 'embedder'" in warnings[0]
    assert "Fix: give each worker its own --consumer (default: HOST-PID)" in warnings[0]


def test_a_restart_under_the_same_consumer_name_is_not_warned_about(redis_server, redis_client, caplog):
    """A supervisor restarting a worker with a fixed name finds its predecessor's last heartbeat: no warning."""
    publish_all(redis_client, 2)
    first = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), consumer="same", heartbeat_s=0.01)
    first.run(max_events=2)
    publish_all(redis_client, 2, start=2)
    second = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), consumer="same", heartbeat_s=0.01)
    with caplog.at_level("WARNING", logger="postemb_rt.nearline"):
        second.run(max_events=2)
    assert not [r for r in caplog.records if "consumer name" in r.getMessage()]


def test_dead_stream_help_names_every_kind_of_event_that_goes_there(capsys):
    """It said only "events that failed --max-deliveries times": malformed events and posts the model
    rejects go there too, at once."""
    from postemb_rt.commands import nearline as command

    with pytest.raises(SystemExit):
        command.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "poison events (malformed, refused by the model or the store, or delivered more than --max-deliveries" \
           " times), each with its reason" in text


def test_stats_finds_the_heartbeats_among_many_records_in_few_round_trips(redis_client):
    """--stats walks the whole keyspace (SCAN) for the heartbeats: at COUNT 100 that was one round trip
    per 100 keys, 100,000 of them for a store of 10M records."""
    pipe = redis_client.pipeline(transaction=False)
    for i in range(30_000):
        pipe.hset(f"postemb:fake-v1:{i}", "dim", 8)
    pipe.execute()
    redis_client.xgroup_create("posts", "embedder", id="0", mkstream=True)
    nearline.Worker(redis_client, FakeEncoder(), consumer="w1")._heartbeat()
    scans, send = [], redis_client.execute_command

    def counting(*args, **kwargs):
        scans.extend(args[:1] if args[0] == "SCAN" else [])
        return send(*args, **kwargs)

    redis_client.execute_command = counting
    assert [w["consumer"] for w in nearline.stats(redis_client)["workers"]] == ["w1"]
    assert 1 <= len(scans) <= 10


def test_stats_lists_the_workers_of_its_group_only(redis_client):
    """The heartbeat pattern of group "a" (postemb:nearline:worker:a:*) also matched group "a:b"'s, and a group
    name with glob characters ("e[1]") matched none of its own."""
    for group, consumer in (("a", "w1"), ("a:b", "w2"), ("e[1]", "w3"), ("e1", "w4")):
        nearline.Worker(redis_client, FakeEncoder(), group=group, consumer=consumer)._heartbeat()
    listed = {g: [w["consumer"] for w in nearline.stats(redis_client, g)["workers"]] for g in ("a", "a:b", "e[1]")}
    assert listed == {"a": ["w1"], "a:b": ["w2"], "e[1]": ["w3"]}


def test_stats_skips_and_counts_entries_another_producer_added_to_the_embeddings_stream(redis_server, redis_client,
                                                                                       capsys):
    """An entry without a worker's fields (embedded_at / removed_at, created_at) raised KeyError in `--stats`."""
    from postemb_rt.commands.nearline import _print_stats

    publish_all(redis_client, 2)
    nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), batch_size=2).run(max_events=2)
    redis_client.xadd("embeddings", {"note": "written by another service"})
    redis_client.xadd("embeddings", {"embedded_at": "not a time", "created_at": "1"})
    s = nearline.stats(redis_client)
    assert s["foreign_announcements"] == 2 and s["freshness_p50_s"] is not None  # the worker's two still counted
    _print_stats(s)
    assert "skipped 2 entries of the embeddings stream without a worker's fields" in capsys.readouterr().out


def test_stats_throughput_is_over_the_time_its_sample_covers_not_the_whole_window(redis_client, capsys):
    """--stats reads at most the newest 5,000 announcements; at more than 5,000 per --window (83/s for 60 s: a
    worker draining a backlog, the README's 200 posts/s benchmark) it divided them by the whole window and said
    83.33 posts/s whatever the rate."""
    from postemb_rt.commands.nearline import _print_stats

    now = time.time()
    pipe = redis_client.pipeline(transaction=False)
    for i in range(6000):  # 200 announcements a second over the last 30 s, each embedded 0.5 s after its post
        at = now - 30 + i / 200
        pipe.xadd("embeddings", {"post_id": str(i), "created_at": f"{at - 0.5:.6f}", "embedded_at": f"{at:.6f}"})
    pipe.xadd("embeddings", {"post_id": "d", "deleted_at": f"{now:.6f}", "removed_at": f"{now:.6f}"})
    pipe.execute()
    s = nearline.stats(redis_client, window_s=60)
    late = time.time() - now  # the sample's span ends at the read: 25 s plus the time writing it took
    assert 24.9 <= s["throughput_window_s"] <= 25 + late and s["freshness_p50_s"] == pytest.approx(0.5, abs=1e-3)
    assert s["throughput_per_s"] == pytest.approx(5000 / s["throughput_window_s"], rel=1e-3)  # not 5000 / 60
    assert s["deletions_per_s"] == round(1 / s["throughput_window_s"], 2)
    _print_stats(s)
    # the span the sample covers (25 s, more while this machine was slow to write it), not the 60 s window
    assert f"last {s['throughput_window_s']:.0f} s (the newest 5000 announcements; --window 60 s):" in \
        capsys.readouterr().out
    few = nearline.stats(redis_client, window_s=60, sample=10_000)  # the sample holds the whole window
    assert few["throughput_window_s"] == 60 and few["throughput_per_s"] == 100.0
