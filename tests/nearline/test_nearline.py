"""Near-line pipeline against a real redis-server: end to end, crash, poison, restart."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from postemb_rt import ValidationError, nearline
from tests.conftest import assert_exact

WORDS = ("hiring launch team data model growth lesson startup remote python rust ship customer product "
         "design scale coffee monday career network mentor cloud security climate energy learning "
         "leadership feedback release open source community conference talk #AI #jobs 🚀 🎉 Berlin").split()


def make_posts(n: int, seed: int = 0) -> list[str]:
    """n distinct short posts (3..24 words, tweet-sized)."""
    rng = random.Random(seed)
    return [f"post {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(3, 24))) for i in range(n)]


def wait_until(pred, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@contextlib.contextmanager
def running(worker: nearline.Worker):
    """Run a worker in a thread; stop it (finishing its batch) on exit."""
    errors = worker.errors = []

    def target():
        try:
            worker.run()
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    t = threading.Thread(target=target, name=worker.consumer, daemon=True)
    t.start()
    try:
        yield worker
    finally:
        worker.stop()
        t.join(60)
        assert not t.is_alive(), f"worker {worker.consumer} did not stop"


def drained(client, group="embedder"):
    g = next((x for x in client.xinfo_groups("posts") if x["name"] == group.encode()), None)
    return g is not None and g["pending"] == 0 and g["lag"] == 0


def announcements(client) -> list[str]:
    return [f[b"post_id"].decode() for _, f in client.xrange("embeddings")]


def stored_keys(client, model_version) -> set[bytes]:
    return set(client.scan_iter(match=f"postemb:{model_version}:*", count=1000))


def assert_exactly_once(client, model_version, ids: list[str]):
    ann = announcements(client)
    assert len(ann) == len(set(ann)), "a post was announced (written) twice"
    assert sorted(ann) == sorted(ids)
    assert stored_keys(client, model_version) == {f"postemb:{model_version}:{i}".encode() for i in ids}
    assert drained(client)


# -- producer --------------------------------------------------------------------------


def test_publish_writes_fields_validates_and_trims(redis_client):
    eid = nearline.publish(redis_client, 7, "héllo", created_at=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))
    ((got_id, fields),) = redis_client.xrange("posts")
    assert got_id == eid
    assert fields == {b"post_id": b"7", b"text": "héllo".encode(), b"created_at": b"1735689600.000000"}
    for bad in (dict(post_id=None, text="x"), dict(post_id="", text="x"), dict(post_id="p", text=b"x"),
                dict(post_id="p", text="x" * (nearline.MAX_TEXT_BYTES + 1)),
                dict(post_id="p", text="x", created_at=dt.datetime(2025, 1, 1)),
                dict(post_id="p", text="x", created_at=float("nan"))):
        with pytest.raises(ValidationError):
            nearline.publish(redis_client, **bad)
    for ms in (time.time() * 1000, time.time() + 2 * 86_400):  # a day of skew is tolerated, not two
        with pytest.raises(ValidationError, match=r"`created_at` .* s in the future: seconds since the epoch .*Fix"):
            nearline.publish(redis_client, "p", "x", created_at=ms)
    nearline.publish(redis_client, "p", "x", created_at=time.time() + 3600)
    with pytest.raises(ValidationError, match=r"`text` is an empty string.*Given: ''.*Fix"):
        nearline.publish(redis_client, "p", "")  # as the HTTP server: [CLS][SEP] alone is no post's vector
    nearline.publish(redis_client, "p", " ")  # whitespace is text to the server too: embedded
    for i in range(1000):  # MAXLEN ~ trims whole macro-nodes: bounded, not exact
        nearline.publish(redis_client, i, "x", stream="small", maxlen=50)
    assert 50 <= redis_client.xlen("small") < 1000


def test_poison_event_reasons():
    ok, why = nearline.parse_event(b"1700000000000-0", {b"post_id": b"1", b"text": b"hi"})
    assert ok.created_at == 1700000000.0 and why == ""  # created_at defaults to the broker's time
    cases = {
        "missing field `text`": {b"post_id": b"1"},
        "missing field `post_id`": {b"text": b"hi"},
        "not valid UTF-8": {b"post_id": b"1", b"text": b"\xc3\x28"},
        "not text": {b"post_id": b"1", b"text": b"\x00\x01binary"},
        "oversized": {b"post_id": b"1", b"text": b"x" * (nearline.MAX_TEXT_BYTES + 1)},
        "invalid `created_at`": {b"post_id": b"1", b"text": b"hi", b"created_at": b"yesterday"},
        "empty `text`: nothing to embed": {b"post_id": b"1", b"text": b""},
        "in the future: seconds since the epoch are expected, this looks like milliseconds":
            {b"post_id": b"1", b"text": b"hi", b"created_at": f"{time.time() * 1000:.0f}".encode()},
        "in the future: seconds since the epoch are expected, this looks like microseconds":
            {b"post_id": b"1", b"text": b"hi", b"created_at": f"{time.time() * 1e6:.0f}".encode()},
    }
    for reason, fields in cases.items():
        post, why = nearline.parse_event(b"1-0", fields)
        assert post is None and reason in why, (fields, why)


# -- end to end ------------------------------------------------------------------------


def test_end_to_end_two_workers_store_every_post_exactly_once_equal_to_encode(redis_server, redis_client,
                                                                              nearline_encoder):
    """N posts published while two workers of one group read: each stored and announced once, by both workers
    together, with the vectors encode gives. (N was 2,000: its model time, twice over, was most of the test's,
    and 600 (10 batches of 64 and more) cover the same interleavings.)"""
    enc = nearline_encoder
    n = 600
    texts = make_posts(n)
    workers = [nearline.Worker(nearline.connect(redis_server.url), enc, consumer=f"w{i}", batch_size=64)
               for i in range(2)]
    t0 = time.time()
    with running(workers[0]), running(workers[1]):
        for i, text in enumerate(texts):
            nearline.publish(redis_client, i, text)
        wait_until(lambda: drained(redis_client) and redis_client.xlen("embeddings") >= n, 120, f"{n} posts")
    assert not workers[0].errors and not workers[1].errors
    assert workers[0].vector_version == enc.vector_version == enc.model_version  # fp32 + truncate: the plain version
    ids = [str(i) for i in range(n)]
    assert_exactly_once(redis_client, enc.model_version, ids)
    assert all(w.stats.events > 0 for w in workers), "both workers should share the load"
    assert sum(w.stats.stored for w in workers) == n and sum(w.stats.rewrites for w in workers) == 0

    want = enc.encode(texts)
    pipe = redis_client.pipeline(transaction=False)
    for i in ids:
        pipe.hgetall(nearline.store_key(enc.model_version, i))
    rows = pipe.execute()
    got = np.stack([np.frombuffer(r[b"vector"], dtype="<f4") for r in rows])
    assert got.shape == (n, enc.dim) and got.dtype == np.float32
    assert_exact(got, want)
    for r in rows[:50]:
        assert t0 - 1 <= float(r[b"created_at"]) <= float(r[b"embedded_at"]) <= time.time()
        assert int(r[b"dim"]) == enc.dim and r[b"model_version"].decode() == enc.model_version

    s = nearline.stats(redis_client, window_s=600)
    assert s["lag"] == 0 and s["pending"] == 0 and s["embeddings_len"] == n
    assert s["throughput_per_s"] > 0 and 0 <= s["freshness_p50_s"] <= s["freshness_p99_s"]


def test_a_nested_prefix_is_stored_under_its_own_vector_version(redis_server, redis_client, nearline_encoder):
    """truncate_dim=16 on default (v4: matryoshka_dims [32, 16, 8]): 16-d vectors equal to
    encode(truncate_dim=16), under "<model>@16", never beside the 50-d ones; an undeclared dim is refused."""
    enc = nearline_encoder
    texts = make_posts(40, seed=3)
    worker = nearline.Worker(nearline.connect(redis_server.url), enc, consumer="nested", truncate_dim=16)
    version = enc.model_version + "@16"
    assert worker.vector_version == version and worker.dim == 16
    with running(worker):
        for i, text in enumerate(texts):
            nearline.publish(redis_client, 9000 + i, text)
        wait_until(lambda: drained(redis_client), 60, "40 posts")
    assert not worker.errors
    rows = [redis_client.hgetall(nearline.store_key(version, str(9000 + i))) for i in range(len(texts))]
    got = np.stack([np.frombuffer(r[b"vector"], dtype="<f4") for r in rows])
    assert_exact(got, enc.encode(texts, truncate_dim=16))
    assert int(rows[0][b"dim"]) == 16 and not redis_client.exists(nearline.store_key(enc.model_version, "9000"))
    with pytest.raises(ValidationError, match=r"`truncate_dim` must be one of .*\[8, 16, 32, 50\].*Given: 12"):
        nearline.Worker(redis_client, enc, truncate_dim=12)
    with enc.truncate_embeddings(16):  # the encoder's own default prefix: the same worker, the same version
        again = nearline.Worker(redis_client, enc)
        assert (again.vector_version, again.dim, again.truncate_dim) == (version, 16, 16)


def test_the_full_dim_asked_of_an_encoder_with_a_default_prefix_is_stored_whole(redis_server, redis_client,
                                                                                 nearline_encoder):
    """truncate_dim=50 (the full dim) on an encoder loaded with a default prefix of 16
    (from_pretrained(truncate_dim=16), a sentence-transformers folder's truncate_dim): the worker took 50 for
    "nothing to cut", and encode applied its default, so 16 floats were stored with dim 50 under "<model>@16"."""
    enc = nearline_encoder
    texts = make_posts(3, seed=8)
    with enc.truncate_embeddings(16):
        worker = nearline.Worker(nearline.connect(redis_server.url), enc, consumer="whole", truncate_dim=50)
        assert (worker.vector_version, worker.dim) == (enc.model_version, 50)
        for i, text in enumerate(texts):
            nearline.publish(redis_client, i, text)
        worker.run(max_events=3)
    rows = [redis_client.hgetall(nearline.store_key(enc.model_version, str(i))) for i in range(3)]
    got = np.stack([np.frombuffer(r[b"vector"], dtype="<f4") for r in rows])
    assert_exact(got, enc.encode(texts))
    assert int(rows[0][b"dim"]) == 50 and not redis_client.exists(nearline.store_key(enc.model_version + "@16", "0"))


def test_the_command_names_the_version_it_stores_under(redis_server, redis_client, nearline_encoder, monkeypatch,
                                                        capsys):
    """Its start line said the full-dim version with --truncate-dim 16, while it stored under "@16"."""
    from postemb_rt.commands import nearline as command
    from postemb_rt.encoder import Encoder

    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(lambda cls, *a, **k: nearline_encoder))
    monkeypatch.setattr(nearline_encoder, "close", lambda: None)  # the shared fixture outlives the command
    nearline.publish(redis_client, 1, "a post")
    assert command.main(["--redis", redis_server.url, "--truncate-dim", "16", "--max-events", "1"]) == 0
    version = nearline_encoder.model_version + "@16"
    assert f"vectors {version};" in capsys.readouterr().out
    assert redis_client.exists(nearline.store_key(version, "1"))


def test_reprocessing_is_an_idempotent_noop(redis_server, redis_client, nearline_encoder):
    texts = make_posts(100, seed=1)
    for i, text in enumerate(texts):
        nearline.publish(redis_client, i, text)
    with running(nearline.Worker(nearline.connect(redis_server.url), nearline_encoder, "g1")) as w1:
        wait_until(lambda: w1.stats.events == 100, 60, "first pass")
    key = nearline.store_key(nearline_encoder.model_version, 42)
    before = redis_client.hgetall(key)
    # a second group replays every event: the same records, no new announcement
    with running(nearline.Worker(nearline.connect(redis_server.url), nearline_encoder, "g2")) as w2:
        wait_until(lambda: w2.stats.events == 100, 60, "replay")
    assert w2.stats.rewrites == 100 and w2.stats.stored == 0
    assert redis_client.hgetall(key) == before
    assert redis_client.xlen("embeddings") == 100


class Crash(BaseException):
    """Simulates the process dying at a chosen point (not caught by the worker's retries)."""


def test_crash_between_write_and_ack_causes_only_a_rewrite(redis_server, redis_client, nearline_encoder):
    for i, text in enumerate(make_posts(40, seed=2)):
        nearline.publish(redis_client, i, text)
    c1 = nearline.connect(redis_server.url)
    w1 = nearline.Worker(c1, nearline_encoder, consumer="dies", batch_size=40, max_wait_ms=200)

    def xack_crash(*a, **k):
        raise Crash()

    c1.xack = xack_crash
    with running(w1):
        wait_until(lambda: w1.errors, 60, "the crash after the write")
    assert redis_client.xlen("embeddings") == 40
    assert isinstance(w1.errors[0], Crash)
    assert redis_client.xpending("posts", "embedder")["pending"] == 40  # written, never acked
    w2 = nearline.Worker(nearline.connect(redis_server.url), nearline_encoder, consumer="live", claim_idle_ms=200)
    with running(w2):
        wait_until(lambda: drained(redis_client), 60, "the claim")
    assert w2.stats.claimed == 40 and w2.stats.rewrites == 40 and w2.stats.stored == 0
    assert_exactly_once(redis_client, nearline_encoder.model_version, [str(i) for i in range(40)])


def has_consumer(client, name: str) -> bool:
    if not client.exists("posts") or not client.xinfo_groups("posts"):
        return False
    return any(c["name"] == name.encode() for c in client.xinfo_consumers("posts", "embedder"))


# a worker that dies of a signal (SIGABRT, SIGSEGV) leaves every thread's traceback in its log
_WORKER_ENV = {**os.environ, "PYTHONFAULTHANDLER": "1"}


def _worker_cmd(url, consumer, *extra):
    return [sys.executable, "-m", "postemb_rt.commands.nearline", "--redis", url, "--consumer", consumer, *extra]


def test_kill9_mid_batch_while_posts_arrive_then_new_worker_recovers(redis_server, redis_client,
                                                                     nearline_encoder, tmp_path):
    texts = make_posts(600, seed=3)
    published = []

    def produce():  # ~150 posts/s for 4 s, through the crash and the takeover
        c = nearline.connect(redis_server.url)
        for i, text in enumerate(texts):
            nearline.publish(c, i, text)
            published.append(i)
            time.sleep(1 / 150)

    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(_worker_cmd(redis_server.url, "victim", "--batch-size", "16", "--max-wait-ms", "50"),
                            stdout=log, stderr=subprocess.STDOUT, env=_WORKER_ENV)
    try:
        wait_until(lambda: has_consumer(redis_client, "victim"), 90, "the worker to start", every=0.1)
        producer = threading.Thread(target=produce)
        producer.start()

        def victim_pending():
            return redis_client.xpending_range("posts", "embedder", "-", "+", 100, consumername="victim")

        while True:  # freeze it while it holds a batch, then kill -9
            wait_until(lambda: redis_client.xlen("embeddings") >= 32 and victim_pending(), 60, "a batch in flight",
                       every=0.01)
            proc.send_signal(signal.SIGSTOP)
            if victim_pending():
                break
            proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)
        in_flight = len(victim_pending())
        assert in_flight > 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    rescuer = nearline.Worker(nearline.connect(redis_server.url), nearline_encoder, consumer="rescuer",
                              claim_idle_ms=500)
    with running(rescuer):
        producer.join(30)
        wait_until(lambda: len(published) == 600 and drained(redis_client)
                   and redis_client.xlen("embeddings") == 600, 120, "every post")
    assert rescuer.stats.claimed >= in_flight
    assert_exactly_once(redis_client, nearline_encoder.model_version, [str(i) for i in range(600)])


# -- poison and failures ---------------------------------------------------------------


def test_poison_events_go_to_dead_letter_and_the_rest_flow(redis_server, redis_client, nearline_encoder):
    bad = [{"post_id": "b1"}, {"text": "no id"}, {"post_id": "b3", "text": b"\xff\xfe\xfd"},
           {"post_id": "b4", "text": b"\x00\x00PNG"}, {"post_id": "b5", "text": b"y" * 40_000},
           {"post_id": "b6", "text": "ok", "created_at": "soon"}, {"post_id": "b7", "text": ""}]
    good = make_posts(60, seed=4)
    for i, text in enumerate(good):
        nearline.publish(redis_client, i, text)
        if i % 9 == 0:
            redis_client.xadd("posts", bad[i // 9])
    with running(nearline.Worker(nearline.connect(redis_server.url), nearline_encoder, batch_size=8)) as w:
        wait_until(lambda: drained(redis_client), 60, "drain")
    assert w.stats.dead == len(bad) and w.stats.stored == 60
    dead = redis_client.xrange("posts-dead")
    assert len(dead) == len(bad)
    reasons = [f[b"reason"].decode() for _, f in dead]
    for want in ("missing field `text`", "missing field `post_id`", "not valid UTF-8", "not text", "oversized",
                 "invalid `created_at`", "empty `text`"):
        assert any(want in r for r in reasons), (want, reasons)
    assert all(f[b"event_id"] and f[b"consumer"] == w.consumer.encode() for _, f in dead)
    assert_exactly_once(redis_client, nearline_encoder.model_version, [str(i) for i in range(60)])


class FlakyEncoder:
    """The real encoder, failing the first ``failures`` calls and rejecting one text."""

    def __init__(self, enc, failures: int, reject: str | None = None):
        self.enc, self.failures, self.reject, self.calls = enc, failures, reject, 0
        self.model_version, self.dim = enc.model_version, enc.dim

    def encode(self, texts, **kw):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("backend out of memory (simulated)")
        if self.reject in texts:
            raise ValidationError(f"`texts[{texts.index(self.reject)}]` cannot be encoded (simulated)")
        return self.enc.encode(texts, **kw)


def test_model_failure_is_retried_and_never_acked_before_the_write(redis_server, redis_client, nearline_encoder):
    texts = make_posts(20, seed=5)
    flaky = FlakyEncoder(nearline_encoder, failures=3, reject=texts[7])
    for i, text in enumerate(texts):
        nearline.publish(redis_client, i, text)
    w = nearline.Worker(nearline.connect(redis_server.url), flaky, batch_size=20, max_wait_ms=100)
    with running(w):
        wait_until(lambda: flaky.calls >= 2, 30, "a failure")
        assert redis_client.xpending("posts", "embedder")["pending"] == 20  # held, not acked
        assert not stored_keys(redis_client, flaky.model_version)
        wait_until(lambda: drained(redis_client), 60, "drain")
    assert w.stats.retries >= 3
    ((_, dead),) = redis_client.xrange("posts-dead")
    assert dead[b"post_id"] == b"7" and b"the model rejected it" in dead[b"reason"]
    assert_exactly_once(redis_client, flaky.model_version, [str(i) for i in range(20) if i != 7])


def test_redis_restart_and_connection_drop_worker_reconnects(persistent_redis, nearline_encoder):
    server = persistent_redis
    client = nearline.connect(server.url)
    texts = make_posts(300, seed=6)
    w = nearline.Worker(nearline.connect(server.url), nearline_encoder, batch_size=32)
    with running(w):
        for i in range(100):
            nearline.publish(client, i, texts[i])
        wait_until(lambda: client.xlen("embeddings") >= 30, 60, "some progress")
        run_id = client.info("server")["run_id"]
        server.restart(down_s=0.5)  # mid-run: a batch is usually in flight
        for i in range(100, 200):
            nearline.publish(client, i, texts[i])
        wait_until(lambda: client.xlen("embeddings") >= 150, 60, "progress after the restart")
        client.client_kill_filter(_type="normal", skipme=True)  # drop every other connection
        for i in range(200, 300):
            nearline.publish(client, i, texts[i])
        wait_until(lambda: drained(client) and client.xlen("embeddings") == 300, 60, "every post")
    assert not w.errors
    # the outage was real; redis-py's Retry (nearline.connect) may hide it from the worker's counters
    assert client.info("server")["run_id"] != run_id
    assert_exactly_once(client, nearline_encoder.model_version, [str(i) for i in range(300)])


# -- the command -----------------------------------------------------------------------


def test_cli_worker_sigterm_finishes_batch_exits_0_and_stats(redis_server, redis_client, tmp_path):
    for i, text in enumerate(make_posts(300, seed=7)):
        nearline.publish(redis_client, i, text)
    with open(tmp_path / "worker.log", "w") as log:
        proc = subprocess.Popen(_worker_cmd(redis_server.url, "cli", "--batch-size", "32"), stdout=log,
                                stderr=subprocess.STDOUT, env=_WORKER_ENV)
        try:
            wait_until(lambda: redis_client.xlen("embeddings") >= 32, 90, "first batch", every=0.1)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
            assert rc == 0, f"exit code {rc}; the worker's log:\n{(tmp_path / 'worker.log').read_text()}"
        finally:
            if proc.poll() is None:
                proc.kill()
    assert redis_client.xpending("posts", "embedder")["pending"] == 0  # its batch was finished and acked
    n = redis_client.xlen("embeddings")
    assert 32 <= n < 300
    out = subprocess.run([sys.executable, "-m", "postemb_rt.commands.nearline", "--redis", redis_server.url,
                          "--stats", "--json"], capture_output=True, text=True, timeout=60, check=True)
    s = json.loads(out.stdout)
    assert s["lag"] == 300 - n and s["pending"] == 0 and s["embeddings_len"] == n
    assert s["freshness_p99_s"] is not None and s["throughput_per_s"] > 0
    text = subprocess.run([sys.executable, "-m", "postemb_rt.commands.nearline", "--redis", redis_server.url,
                           "--stats"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"lag {300 - n} events" in text and "pending 0" in text


# -- hardening: a post that always fails, duplicates, cluster ------------------------------


class PoisonEncoder:
    """The real encoder, raising a RuntimeError (not a ValidationError) on every call whose
    texts include one marked post, as a backend bug that only this post triggers would."""

    def __init__(self, enc, marker: str):
        self.enc, self.marker, self.calls = enc, marker, 0
        self.model_version, self.dim = enc.model_version, enc.dim

    def encode(self, texts, **kw):
        self.calls += 1
        if any(self.marker in t for t in texts):
            raise RuntimeError("kernel crashed on this input (simulated)")
        return self.enc.encode(texts, **kw)


def test_post_that_always_fails_is_isolated_dead_lettered_and_the_rest_flow(redis_server, redis_client,
                                                                            nearline_encoder):
    texts = make_posts(64, seed=8)
    texts[37] = "POISON " + texts[37]
    enc = PoisonEncoder(nearline_encoder, "POISON")
    for i, text in enumerate(texts):
        nearline.publish(redis_client, i, text)
    w = nearline.Worker(nearline.connect(redis_server.url), enc, batch_size=64, max_wait_ms=200, max_attempts=2)
    with running(w):
        wait_until(lambda: drained(redis_client), 60, "the first 64 posts (one poison)")
        for i, text in enumerate(make_posts(40, seed=9), start=100):  # throughput recovers after it
            nearline.publish(redis_client, i, text)
        wait_until(lambda: drained(redis_client) and redis_client.xlen("embeddings") == 63 + 40, 60, "later posts")
    assert not w.errors
    ((_, dead),) = redis_client.xrange("posts-dead")
    assert dead[b"post_id"] == b"37"
    assert b"the model failed on it 2 times" in dead[b"reason"] and b"kernel crashed" in dead[b"reason"]
    assert w.stats.dead == 1
    assert_exactly_once(redis_client, enc.model_version, [str(i) for i in range(64) if i != 37]
                        + [str(i) for i in range(100, 140)])


class DownEncoder:
    """Fails every call until ``up`` is set (the model is down, not a post)."""

    def __init__(self, enc):
        self.enc, self.up, self.calls = enc, threading.Event(), 0
        self.model_version, self.dim = enc.model_version, enc.dim

    def encode(self, texts, **kw):
        self.calls += 1
        if not self.up.is_set():
            raise RuntimeError("backend unavailable (simulated)")
        return self.enc.encode(texts, **kw)


def test_model_outage_dead_letters_nothing_and_resumes(redis_server, redis_client, nearline_encoder):
    enc = DownEncoder(nearline_encoder)
    for i, text in enumerate(make_posts(8, seed=10)):
        nearline.publish(redis_client, i, text)
    w = nearline.Worker(nearline.connect(redis_server.url), enc, batch_size=8, max_wait_ms=100, max_attempts=1)
    with running(w):
        # every split fails and so does the probe: the worker must hold the batch
        wait_until(lambda: enc.calls >= 8, 60, "the worker to keep retrying the probe")  # 4 splits, 4 probes
        assert redis_client.xlen("posts-dead") == 0 and redis_client.xlen("embeddings") == 0
        assert redis_client.xpending("posts", "embedder")["pending"] == 8
        enc.up.set()
        wait_until(lambda: drained(redis_client), 60, "drain after the model came back")
    assert not w.errors and redis_client.xlen("posts-dead") == 0
    assert_exactly_once(redis_client, enc.model_version, [str(i) for i in range(8)])


def test_same_post_published_twice_is_announced_once_an_edit_again(redis_server, redis_client, nearline_encoder):
    nearline.publish(redis_client, "p", "the first text")
    nearline.publish(redis_client, "p", "the first text")  # a retried publish: a second event
    nearline.publish(redis_client, "q", "another post")
    w = nearline.Worker(nearline.connect(redis_server.url), nearline_encoder, batch_size=1)
    with running(w):
        wait_until(lambda: drained(redis_client), 60, "the duplicates")
        assert announcements(redis_client) == ["p", "q"]
        last = nearline.publish(redis_client, "p", "an edited text")
        wait_until(lambda: drained(redis_client), 60, "the edit")
    assert announcements(redis_client) == ["p", "q", "p"]
    rec = redis_client.hgetall(nearline.store_key(nearline_encoder.model_version, "p"))
    assert rec[b"event_id"] == last
    want = nearline_encoder.encode(["an edited text"])[0]
    assert_exact(np.frombuffer(rec[b"vector"], "<f4"), want)
    assert w.stats.rewrites == 1 and w.stats.stored == 3


def test_worker_refuses_a_redis_cluster_node(tmp_path, nearline_encoder):
    from tests.nearline.conftest import RedisServer, _need_binary, free_cluster_port

    _need_binary()
    server = RedisServer(tmp_path)
    server.port = free_cluster_port()
    server.start_args = ["--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf")]
    server.start()
    try:
        w = nearline.Worker(nearline.connect(server.url), nearline_encoder)
        with pytest.raises(ValidationError, match=r"Redis Cluster.*CROSSSLOT.*Fix: point --redis at a single"):
            w.run(max_events=1)
    finally:
        server.stop()


# -- prompts --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompted_encoder(tmp_path_factory):
    """The default model with e5-style prompts in its postemb.json (default prompt 'passage')."""
    import shutil

    from postemb_rt import Encoder
    from postemb_rt.model_dir import resolve

    d = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(resolve("default").path, d)
    cfg = json.loads((d / "postemb.json").read_text())
    cfg.update(prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="passage")
    (d / "postemb.json").write_text(json.dumps(cfg))
    with Encoder.from_pretrained(d, device="cpu") as enc:
        yield enc


class CallLog:
    """An Encoder, logging the texts and keyword arguments of each encode call."""

    def __init__(self, enc):
        self.enc, self.calls = enc, []
        self.model, self.model_version, self.dim = enc.model, enc.model_version, enc.dim
        self.vector_version = enc.vector_version

    def encode(self, texts, **kw):
        self.calls.append((list(texts), kw.get("prompt_name")))
        return self.enc.encode(texts, **kw)


def test_prompt_events_publish_validate_and_refuse_bad_names(redis_client, prompted_encoder):
    nearline.publish(redis_client, 1, "hi", created_at=1.0, prompt_name="query")
    ((eid, fields),) = redis_client.xrange("posts")
    assert fields[b"prompt_name"] == b"query"
    post, why = nearline.parse_event(eid, fields)
    assert post.prompt_name == "query" and why == ""
    for bad in ("", 3, "x" * 300):
        with pytest.raises(ValidationError, match="`prompt_name` must be a non-empty str"):
            nearline.publish(redis_client, 1, "hi", prompt_name=bad)
    assert nearline.parse_event(b"1-0", {b"post_id": b"1", b"text": b"hi", b"prompt_name": b""})[1] == \
        "`prompt_name` must be 1..256 bytes. Given: 0 bytes"
    with pytest.raises(ValidationError, match=r"prompts \['document', 'passage', 'query'\]\. Given: 'nope'\. "
                                              r"Fix: use one of those, or leave `prompt_name` out"):
        nearline.Worker(redis_client, prompted_encoder, prompt_name="nope")  # `postemb nearline`: `--prompt-name`


def test_batch_is_embedded_once_per_prompt_recorded_and_unknown_prompt_dead_lettered(redis_server, redis_client,
                                                                                     prompted_encoder):
    texts = make_posts(6, seed=11)
    prompt_of = {0: None, 1: "query", 2: "passage", 3: None, 4: "query", 5: "nope"}
    for i, text in enumerate(texts):
        nearline.publish(redis_client, i, text, created_at=1.0, prompt_name=prompt_of[i])
    enc = CallLog(prompted_encoder)
    with running(nearline.Worker(nearline.connect(redis_server.url), enc, batch_size=8, max_wait_ms=200)) as w:
        wait_until(lambda: drained(redis_client), 60, "drain")
    # one micro-batch: one model call per distinct prompt (None -> the model's default, 'passage')
    assert sorted((p, len(t)) for t, p in enc.calls) == [("passage", 3), ("query", 2)]
    assert w.stats.stored == 5 and w.stats.dead == 1
    ((_, dead),) = redis_client.xrange("posts-dead")
    assert dead[b"post_id"] == b"5" and dead[b"prompt_name"] == b"nope"
    assert b"bad `prompt_name`" in dead[b"reason"] and b"['document', 'passage', 'query']" in dead[b"reason"]
    for i in range(5):
        rec = nearline.fetch(redis_client, prompted_encoder.vector_version, i)
        want = prompt_of[i] or "passage"
        assert rec.prompt_name == want
        assert_exact(rec.vector[None], prompted_encoder.encode([texts[i]], prompt_name=want))
    # the same text again with another prompt is another vector: stored and announced, not a no-op
    nearline.publish(redis_client, 0, texts[0], created_at=2.0, prompt_name="query")
    with running(nearline.Worker(nearline.connect(redis_server.url), enc, prompt_name="query")) as w:
        wait_until(lambda: drained(redis_client), 60, "drain")
    assert w.stats.stored == 1 and w.stats.rewrites == 0
    rec = nearline.fetch(redis_client, prompted_encoder.vector_version, 0)
    assert rec.prompt_name == "query"
    assert_exact(rec.vector[None], prompted_encoder.encode([texts[0]], prompt_name="query"))
    assert [f[b"prompt_name"] for _, f in redis_client.xrange("embeddings")][-1] == b"query"


def test_a_rejected_post_is_isolated_within_its_prompt_group(redis_server, redis_client, prompted_encoder):
    texts = make_posts(6, seed=12)
    texts[3] = "REJECTED " + texts[3]
    for i, text in enumerate(texts):
        nearline.publish(redis_client, i, text, created_at=1.0, prompt_name="query" if i % 2 else None)

    class Rejecting(CallLog):
        def encode(self, texts, **kw):
            self.calls.append((list(texts), kw.get("prompt_name")))
            if any(t.startswith("REJECTED") for t in texts):
                raise ValidationError("`texts` holds a post the model rejects (simulated)")
            return self.enc.encode(texts, **kw)

    enc = Rejecting(prompted_encoder)
    with running(nearline.Worker(nearline.connect(redis_server.url), enc, batch_size=8, max_wait_ms=200)) as w:
        wait_until(lambda: drained(redis_client), 60, "drain")
    assert w.stats.stored == 5 and w.stats.dead == 1
    ((_, dead),) = redis_client.xrange("posts-dead")
    assert dead[b"post_id"] == b"3" and b"the model rejected it" in dead[b"reason"]
    assert dead[b"prompt_name"] == b"query"
    # the 'passage' group ran once, untouched by the split of the 'query' group
    assert [len(t) for t, p in enc.calls if p == "passage"] == [3]
    for i in (0, 1, 2, 4, 5):
        want = "query" if i % 2 else "passage"
        assert_exact(nearline.fetch(redis_client, prompted_encoder.vector_version, i).vector[None],
                     prompted_encoder.encode([texts[i]], prompt_name=want))
