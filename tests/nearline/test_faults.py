"""Near-line fault suite: one bad post, key or outage costs only itself.

Each test states exactly what is stored, dead-lettered and pending afterwards. The model is
a fake (vectors from a hash of the text) wherever its numbers do not matter, so every test
runs in about a second against a real redis-server.
"""
from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

from postemb_rt import ValidationError, nearline
from tests.nearline.conftest import free_port
from tests.nearline.test_nearline import Crash, drained, running, wait_until

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'redis>=5')")

DIM = 8


def fake_vector(text: str) -> np.ndarray:
    v = np.frombuffer(hashlib.sha256(text.encode()).digest()[:DIM * 4], dtype="<u4").astype(np.float32) - 2.0 ** 31
    return (v / np.linalg.norm(v)).astype(np.float32)


class FakeEncoder:
    """The Worker's encoder contract, with faults keyed on a marker in a post's text:
    ``crash`` kills the worker (a BaseException, as a segfault would end the process),
    ``hang`` blocks until ``release`` is set, ``reject`` raises ValidationError."""

    def __init__(self, crash=None, hang=None, reject=None, delay_s=0.0, model_version="fake-v1",
                 vector_version="fake-v1"):
        self.crash, self.hang, self.reject, self.delay_s = crash, hang, reject, delay_s
        self.model_version, self.dim = model_version, DIM
        if vector_version is not None:
            self.vector_version = vector_version
        self.release = threading.Event()
        self.calls: list[list[str]] = []
        self.threads: set[threading.Thread] = set()  # the threads encode ran on
        self.closed = False

    def close(self):
        self.closed = True

    def encode(self, texts, **kw):
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread())
        if self.crash and any(self.crash in t for t in texts):
            raise Crash()
        if self.hang and any(self.hang in t for t in texts):
            self.release.wait()
        if self.reject and any(self.reject in t for t in texts):
            raise ValidationError(f"`texts` holds a post the model rejects ({self.reject}; simulated)")
        time.sleep(self.delay_s)
        return np.stack([fake_vector(t) for t in texts])


def publish_all(client, n: int, marked: dict | None = None, start: int = 0) -> list[str]:
    """Posts p{start}..p{start+n-1}; ``marked`` maps an index to a marker put in its text."""
    marked = marked or {}
    ids = []
    for i in range(start, start + n):
        nearline.publish(client, f"p{i}", f"{marked.get(i, '')} post number {i}".strip())
        ids.append(f"p{i}")
    return ids


def stored_ids(client, version="fake-v1") -> set[str]:
    """Post ids with an embedding record (a hash) under ``version``."""
    prefix = f"postemb:{version}:"
    return {k.decode()[len(prefix):] for k in client.scan_iter(match=prefix + "*", _type="hash")}


def dead(client) -> dict[str, str]:
    """event post_id (or event id when the record has none) -> reason, for every dead-letter record."""
    return {(f.get(b"post_id") or f[b"event_id"]).decode(): f[b"reason"].decode()
            for _, f in client.xrange("posts-dead")}


def pending(client) -> int:
    return client.xpending("posts", "embedder")["pending"]


def run_until_done(url, client, encoder, *, limit=8, timeout=15.0, **kw) -> list[nearline.Worker]:
    """Start worker after worker (each a new consumer, as a supervisor restarts a dead process)
    until the group is drained; returns them. A worker's death is its ``errors``."""
    workers = []
    for i in range(limit):
        w = nearline.Worker(nearline.connect(url), encoder, consumer=f"w{i}", claim_idle_ms=50, **kw)
        workers.append(w)
        with running(w):
            wait_until(lambda: w.errors or drained(client), timeout, f"worker w{i} to finish or die")
        if not w.errors and drained(client):
            return workers
    raise AssertionError(f"not drained after {limit} workers: {[w.errors for w in workers]}")


# -- which Redis errors are retried ---------------------------------------------------------


def test_transient_redis_errors_are_told_from_deterministic_ones():
    from redis.exceptions import (AuthenticationError, AuthorizationError, BusyLoadingError, ConnectionError, DataError,
                                  NoPermissionError, OutOfMemoryError, ReadOnlyError, ResponseError, TimeoutError)

    retried = [ConnectionError("refused"), TimeoutError("timed out"), BusyLoadingError("loading"),
               ReadOnlyError("You can't write against a read only replica."), OutOfMemoryError("maxmemory"),
               ResponseError("NOGROUP No such key 'posts' or consumer group 'embedder'"),
               ResponseError("BUSY Redis is busy running a script."), ResponseError("MISCONF unable to persist")]
    refused = [ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
               ResponseError("ERR user_script:1: Script attempted to access nonexistent global variable"),
               NoPermissionError("User w has no permissions to run the 'xack' command"), DataError("bad arg"),
               RuntimeError("not redis"), AuthenticationError("invalid username-password pair"),
               AuthorizationError("user is disabled")]  # both subclass ConnectionError in redis-py
    assert [nearline.keys.transient(e) for e in retried] == [True] * len(retried)
    assert [nearline.keys.transient(e) for e in refused] == [False] * len(refused)


# -- the store script ----------------------------------------------------------------------


def test_store_script_checks_every_key_before_writing_and_names_the_bad_one(redis_client):
    redis_client.set("postemb:v:p2", "not a hash")
    script = redis_client.register_script(nearline.keys.STORE_LUA)
    keys = ["embeddings"] + [nearline.store_key("v", f"p{i}") for i in (1, 2, 3)]
    args = [1000, "v", "v", DIM, "1.0"]
    for i in (1, 2, 3):
        args += [f"1-{i}", f"p{i}", "1.0", fake_vector(str(i)).tobytes(), "sha", ""]
    with pytest.raises(redis.ResponseError) as err:
        script(keys=keys, args=args)
    # all or nothing: p1 (before the bad key) is neither written nor announced
    assert not redis_client.exists("postemb:v:p1", "postemb:v:p3") and not redis_client.exists("embeddings")
    assert "WRONGTYPE postemb store: key postemb:v:p2 holds a string, not a hash; nothing was written" in str(err.value)
    redis_client.set("embeddings", "not a stream")
    with pytest.raises(redis.ResponseError, match="key embeddings holds a string, not a stream"):
        script(keys=keys[:2], args=args[:11])
    assert not redis_client.exists("postemb:v:p1")


# -- deterministic Redis errors -------------------------------------------------------------


def test_wrongtype_key_mid_stream_dead_letters_that_post_alone(redis_server, redis_client):
    enc = FakeEncoder()
    w = nearline.Worker(nearline.connect(redis_server.url), enc, batch_size=8, max_wait_ms=100, max_deliveries=3)
    with running(w):
        ids = publish_all(redis_client, 10)
        wait_until(lambda: drained(redis_client) and w.stats.events == 10, 10, "the first 10 posts")
        redis_client.set("postemb:fake-v1:p12", "squatter")  # a string where p12's hash goes
        ids += publish_all(redis_client, 10, start=10)
        wait_until(lambda: drained(redis_client), 10, "the next 10 posts, one of them refused by Redis")
    assert not w.errors
    assert stored_ids(redis_client) == set(ids) - {"p12"}
    reasons = dead(redis_client)
    assert list(reasons) == ["p12"]
    assert "the store refused it" in reasons["p12"] and "WRONGTYPE" in reasons["p12"]
    assert "postemb:fake-v1:p12" in reasons["p12"]
    assert redis_client.get("postemb:fake-v1:p12") == b"squatter"  # never overwritten
    assert pending(redis_client) == 0 and redis_client.xlen("embeddings") == 19
    assert (w.stats.stored, w.stats.dead, w.stats.events) == (19, 1, 20)


def run_expecting(worker, exc_type, timeout=10.0):
    """worker.run() in a thread; returns the exception it raised (which must be exc_type)."""
    got = []

    def target():
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - checked below
            got.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        worker.stop()
        t.join(30)
        pytest.fail(f"the worker kept retrying for {timeout} s instead of raising {exc_type.__name__}")
    assert len(got) == 1 and isinstance(got[0], exc_type), got
    return got[0]


@pytest.mark.parametrize("key", ["embeddings", "posts-dead"])
def test_a_shared_key_of_the_wrong_type_stops_the_worker_and_acks_nothing(redis_server, redis_client, key):
    ids = publish_all(redis_client, 5)
    redis_client.xadd("posts", {"post_id": "bad"})  # poison (no text): goes to the dead-letter stream
    redis_client.set(key, "squatter")
    w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), batch_size=8, max_wait_ms=50)
    err = run_expecting(w, nearline.StoreError)
    assert f"key {key} holds a string" in str(err) and "Fix: delete or rename the key" in str(err)
    # no post is to blame: none is stored or dead-lettered for it, they all stay pending
    assert redis_client.get(key) == b"squatter" and not stored_ids(redis_client) and w.stats.stored == 0
    if key == "embeddings":  # the poison event went first, to the (sound) dead-letter stream
        assert list(dead(redis_client)) == ["bad"] and pending(redis_client) == 5
    else:
        assert pending(redis_client) == 6 and w.stats.dead == 0
    redis_client.delete(key)  # the operator's fix; the worker's own pending events are replayed
    w2 = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), consumer=w.consumer)
    with running(w2):
        wait_until(lambda: drained(redis_client), 10, "the replay after the fix")
    assert stored_ids(redis_client) == set(ids) and list(dead(redis_client)) == ["bad"] and pending(redis_client) == 0


def test_wrong_credentials_stop_the_worker_and_the_command_instead_of_retrying(redis_server, redis_client,
                                                                               monkeypatch, capsys):
    """redis-py raises refused credentials as a ConnectionError; they used to be retried forever."""
    import argparse

    from postemb_rt.commands import nearline as command
    from postemb_rt.encoder import Encoder

    redis_client.acl_setuser("w", enabled=True, passwords=["+right"], keys=["~*"], commands=["+@all"])
    publish_all(redis_client, 3)
    wrong = redis_server.url.replace("redis://", "redis://w:wrong@")
    w = nearline.Worker(nearline.connect(wrong), FakeEncoder(), batch_size=8, max_wait_ms=50)
    with pytest.raises(nearline.StoreError, match=r"refused the worker: AuthenticationError.*Fix: give the worker "
                                                  r"the right credentials"):
        w.run(max_events=3)
    loaded = []
    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(lambda cls, *a, **k: loaded.append(1)))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    for extra in ([], ["--stats"]):  # the command refuses before it loads a model
        with pytest.raises(nearline.StoreError, match=r"refused the credentials: AuthenticationError"):
            command.run(parser.parse_args(["--redis", wrong, *extra]))
    assert not loaded and redis_client.xlen("posts") == 3 and not stored_ids(redis_client)  # nothing read
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(nearline.StoreError, match=r"does not answer: ConnectionError.*Fix: start it"):
        command.run(parser.parse_args(["--redis", nobody, "--stats"]))
    redis_client.acl_deluser("w")


def test_ack_refused_stops_the_worker_instead_of_looping(redis_server, redis_client):
    redis_client.acl_setuser("noack", enabled=True, passwords=["+pw"], keys=["~*"], commands=["+@all", "-xack"])
    publish_all(redis_client, 5)
    url = redis_server.url.replace("redis://", "redis://noack:pw@")
    w = nearline.Worker(nearline.connect(url), FakeEncoder(), batch_size=8, max_wait_ms=50)
    with pytest.raises(nearline.StoreError,
                       match=r"XACK on 'posts'.*NoPermissionError.*xack.*stay pending.*Fix: grant"):
        w.run(max_events=5)
    assert stored_ids(redis_client) == {f"p{i}" for i in range(5)} and pending(redis_client) == 5
    redis_client.acl_deluser("noack")


def test_a_dead_letter_record_redis_refuses_is_replaced_by_a_minimal_one(redis_server, redis_client):
    ids = publish_all(redis_client, 4)
    fields = {f"f{i}": "x" for i in range(4000)} | {"post_id": "wide"}  # poison: no text; 8,000 values
    redis_client.xadd("posts", fields)
    redis_client.xadd("posts", {"post_id": "narrow"})
    w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), batch_size=8, max_wait_ms=50)
    w.run(max_events=6)
    reasons = dead(redis_client)
    assert stored_ids(redis_client) == set(ids) and pending(redis_client) == 0
    wide = next(f for _, f in redis_client.xrange("posts-dead") if b"f0" not in f and b"post_id" not in f)
    assert b"missing field `text`" in wide[b"reason"] and b"own fields were dropped" in wide[b"reason"]
    assert reasons["narrow"] == "missing field `text`" and len(reasons) == 2


# -- a post that crashes or hangs the worker ------------------------------------------------


def test_crashing_post_is_dead_lettered_alone_its_batch_is_stored(redis_server, redis_client):
    enc = FakeEncoder(crash="CRASH")
    ids = publish_all(redis_client, 5, marked={2: "CRASH"})
    workers = run_until_done(redis_server.url, redis_client, enc, batch_size=5, max_wait_ms=100, max_deliveries=3)
    assert [type(w.errors[0]) for w in workers[:-1]] == [Crash] * 3 and not workers[-1].errors
    assert stored_ids(redis_client) == set(ids) - {"p2"}
    reasons = dead(redis_client)
    assert list(reasons) == ["p2"] and "delivered 4 times" in reasons["p2"]
    assert pending(redis_client) == 0 and redis_client.xlen("embeddings") == 4
    # the crasher ran max_deliveries times (once in its batch, then alone), never again
    assert sum("CRASH" in " ".join(c) for c in enc.calls) == 3


def test_hanging_post_is_bounded_and_dead_lettered_alone(redis_server, redis_client):
    enc = FakeEncoder(hang="HANG")
    ids = publish_all(redis_client, 5, marked={3: "HANG"})
    try:
        workers = run_until_done(redis_server.url, redis_client, enc, batch_size=5, max_wait_ms=100,
                                 max_deliveries=2, model_timeout_s=0.3)
    finally:
        enc.release.set()  # let the stuck model threads end
    assert [type(w.errors[0]) for w in workers[:-1]] == [nearline.ModelTimeoutError] * 2
    assert "model_timeout_s` (0.3 s)" in str(workers[0].errors[0]) and workers[0].stats.model_timeouts == 1
    with pytest.raises(nearline.ModelTimeoutError, match="still stuck"):
        workers[0].run()  # a worker whose model thread hangs cannot run again
    assert stored_ids(redis_client) == set(ids) - {"p3"}
    reasons = dead(redis_client)
    assert list(reasons) == ["p3"] and "delivered 3 times" in reasons["p3"] and "hung" in reasons["p3"]
    assert pending(redis_client) == 0
    assert sum("HANG" in " ".join(c) for c in enc.calls) == 2


def test_cli_exits_3_on_a_model_timeout(redis_server, redis_client, monkeypatch, capsys):
    import argparse

    from postemb_rt.commands import nearline as command
    from postemb_rt.encoder import Encoder

    enc = FakeEncoder(hang="HANG")
    publish_all(redis_client, 2, marked={1: "HANG"})
    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(lambda cls, *a, **k: enc))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert parser.parse_args([]).model_timeout == nearline.DEFAULT_MODEL_TIMEOUT_S == 60.0
    args = parser.parse_args(["--redis", redis_server.url, "--consumer", "cli", "--model-timeout", "0.2"])
    try:
        assert command.run(args) == nearline.EXIT_MODEL_TIMEOUT == 3
    finally:
        enc.release.set()
    assert "`model_timeout_s` (0.2 s)" in capsys.readouterr().err
    assert pending(redis_client) == 2 and not stored_ids(redis_client)  # waiting for the next worker
    assert not enc.closed  # its model thread is stuck in it


def test_cli_joins_the_model_thread_and_closes_the_encoder_before_returning(redis_server, redis_client,
                                                                            monkeypatch):
    """Nothing the model thread holds (OpenVINO keeps an inference request per thread) is left
    for the interpreter's teardown, where destruction order is not ours to choose."""
    import argparse

    from postemb_rt.commands import nearline as command
    from postemb_rt.encoder import Encoder

    enc = FakeEncoder()
    ids = publish_all(redis_client, 6)
    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(lambda cls, *a, **k: enc))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--redis", redis_server.url, "--consumer", "cli", "--max-events", "6"])
    assert command.run(args) == 0
    assert stored_ids(redis_client) == set(ids)
    (model_thread,) = enc.threads
    assert model_thread is not threading.main_thread() and not model_thread.is_alive()
    assert enc.closed


def test_model_timeout_is_validated():
    for bad in (-1, float("nan"), "60", True):
        with pytest.raises(ValidationError, match=r"`model_timeout_s` must be .*Given"):
            nearline.Worker(_NoRedis(), FakeEncoder(), model_timeout_s=bad)


class _NoRedis:
    def register_script(self, script):
        return None


# -- Redis restart --------------------------------------------------------------------------


def test_redis_restart_mid_stream_loses_and_dead_letters_nothing(persistent_redis):
    server = persistent_redis
    client = nearline.connect(server.url)
    enc = FakeEncoder(delay_s=0.005)
    w = nearline.Worker(nearline.connect(server.url), enc, batch_size=16, max_wait_ms=20)
    with running(w):
        ids = publish_all(client, 100)
        wait_until(lambda: client.xlen("embeddings") >= 20, 10, "some progress")
        server.restart(down_s=0.3)
        ids += publish_all(client, 100, start=100)
        wait_until(lambda: drained(client) and client.xlen("embeddings") == 200, 20, "every post")
    assert not w.errors
    assert stored_ids(client) == set(ids) and not dead(client) and pending(client) == 0
    assert sorted(f[b"post_id"].decode() for _, f in client.xrange("embeddings")) == sorted(ids)


# -- counting and versions ------------------------------------------------------------------


def test_run_max_events_counts_model_rejects(redis_server, redis_client):
    publish_all(redis_client, 5, marked={1: "REJECT"})
    w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(reject="REJECT"), batch_size=5,
                        max_wait_ms=100)
    t = threading.Thread(target=w.run, kwargs={"max_events": 5}, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        w.stop()
        t.join(10)
        pytest.fail("run(max_events=5) did not return after 4 stored + 1 dead-lettered")
    assert (w.stats.events, w.stats.stored, w.stats.dead) == (5, 4, 1)
    assert list(dead(redis_client)) == ["p1"] and pending(redis_client) == 0


def test_vectors_are_stored_under_the_encoders_vector_version(redis_server, redis_client):
    enc = FakeEncoder(model_version="fake-v1", vector_version="fake-v1+bf16+chunk")
    publish_all(redis_client, 3)
    w = nearline.Worker(nearline.connect(redis_server.url), enc, batch_size=3, max_wait_ms=50, heartbeat_s=0.01)
    w.run(max_events=3)
    assert stored_ids(redis_client, "fake-v1+bf16+chunk") == {"p0", "p1", "p2"}
    assert not stored_ids(redis_client, "fake-v1")  # never mixed with the exact vectors' version
    rec = nearline.fetch(redis_client, "fake-v1+bf16+chunk", "p1")
    assert (rec.model_version, rec.vector_version) == ("fake-v1", "fake-v1+bf16+chunk")
    np.testing.assert_array_equal(rec.vector, fake_vector("post number 1"))
    ann = redis_client.xrange("embeddings")[0][1]
    assert ann[b"vector_version"] == b"fake-v1+bf16+chunk" and ann[b"key"] == b"postemb:fake-v1+bf16+chunk:p0"
    (beat,) = nearline.stats(redis_client)["workers"]
    assert beat["vector_version"] == "fake-v1+bf16+chunk"
    # a duck-typed encoder without `vector_version` stores under its model version
    redis_client.flushall()
    publish_all(redis_client, 1)
    nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(vector_version=None)).run(max_events=1)
    assert stored_ids(redis_client, "fake-v1") == {"p0"}
    assert nearline.fetch(redis_client, "fake-v1", "p0").vector_version == "fake-v1"


def test_a_model_call_longer_than_the_heartbeats_life_keeps_the_worker_listed(redis_server, redis_client):
    """The heartbeat lives 5 beats; a model call longer than that (long posts on a busy CPU) dropped the live
    worker from --stats until the call ended. Now it beats while it waits on the model."""
    enc = FakeEncoder(delay_s=3.0)
    publish_all(redis_client, 1)
    w = nearline.Worker(nearline.connect(redis_server.url), enc, batch_size=1, max_wait_ms=10, heartbeat_s=0.2)
    t = threading.Thread(target=w.run, kwargs={"max_events": 1}, daemon=True)
    t.start()
    wait_until(lambda: enc.calls, 15, "the model call")  # the model call has started (heartbeats live 1 s, the call 3 s)
    seen = []
    for _ in range(10):
        time.sleep(0.25)
        seen.append(len(nearline.stats(redis_client)["workers"]))
    t.join(15)
    assert not t.is_alive() and w.stats.stored == 1
    assert all(n == 1 for n in seen), seen  # listed throughout the 2.5 s inside the call
