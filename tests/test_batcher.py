"""The dynamic batcher from Python: Encoder.submit / aencode and batching.DynamicBatcher.

Most tests use a cheap fake backend (a deterministic function of each row's real tokens, so
padding and batch composition must not change it); the equality-with-encode test uses the
real model.
"""
import asyncio
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from postemb_rt import Encoder, OverloadedError, ValidationError
from postemb_rt.backends.base import Backend
from postemb_rt.batching import BatcherClosedError, DeadlineExceededError, DynamicBatcher
from postemb_rt.model_dir import resolve
from tests.conftest import assert_exact

WORDS = ("post hiring launch team data model growth berlin remote rust python coffee monday "
         "thrilled announce lesson startup ship repeat climate energy 🚀 日本語 ünïcödé").split()


def random_texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def fake_vectors(ids: np.ndarray, mask: np.ndarray, dim: int = 8) -> np.ndarray:
    """(B, S) int64 -> (B, dim) float32; depends on the real tokens of each row only."""
    pos = np.arange(ids.shape[1])[None, :, None]
    k = np.arange(1, dim + 1)[None, None, :]
    v = (np.sin(ids[:, :, None] * 0.013 * k + pos * 0.1) * mask[:, :, None]).sum(1)
    return v.astype(np.float32)


class Gated:
    """A model whose every call waits inside until ``gate`` is set (30 s at most): ``entered`` is set once
    a call is inside, ``computed`` gets each row's first id, then ``model`` answers."""

    def __init__(self, model=None):
        self.gate, self.entered, self.computed = threading.Event(), threading.Event(), []
        self.model = model or fake_vectors

    def __call__(self, ids, mask):
        self.entered.set()
        self.gate.wait(30)
        self.computed.extend(int(x) for x in ids[:, 0])
        return self.model(ids, mask)


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, model, sleep_s: float = 0.0):
        super().__init__(model)
        self.sleep_s = sleep_s
        self.calls = 0
        self.gate: threading.Event | None = None  # when set up: every call waits for it (30 s at most)
        self.inside = threading.Event()  # a call is waiting on the gate
        self.gate_timeouts = 0

    def embed(self, input_ids, attention_mask, normalize=True):
        self.calls += 1
        if self.gate is not None:
            self.inside.set()
            self.gate_timeouts += not self.gate.wait(30)
        if self.sleep_s:
            time.sleep(self.sleep_s)  # releases the GIL, like onnxruntime and torch
        return fake_vectors(input_ids, attention_mask, dim=self.model.config.dim)


@pytest.fixture(scope="module")
def base_dir():
    return resolve("base")


@pytest.fixture
def fake_encoder(base_dir):
    enc = Encoder(base_dir, FakeBackend(base_dir), "test")
    yield enc
    enc.close()


IMPLS = ["native", "serial"]  # the C++ batcher, and SerialCore (no extension: one request at a time)


def make_batcher(embed, impl, **options) -> DynamicBatcher:
    return DynamicBatcher(embed, native=impl == "native", **options)


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


# -- correctness under load --------------------------------------------------------------
@pytest.mark.parametrize("impl,run", [("native", 0), ("native", 1), ("native", 2)])
def test_stress_every_caller_gets_exactly_its_rows(fake_encoder, impl, run):
    """32 threads x 200 requests of 1-8 posts: each future holds exactly its rows, in order,
    equal to a single-threaded encode; nothing lost or duplicated."""
    rng = random.Random(run)
    pool = random_texts(rng, 400)
    expected = dict(zip(pool, fake_encoder.encode(pool)))
    n_threads, n_requests = 32, 200
    plans = [[rng.sample(pool, rng.randint(1, 8)) for _ in range(n_requests)] for _ in range(n_threads)]
    errors: list[BaseException] = []
    fake_encoder.start_batcher(max_batch_size=32, max_wait_us=300, native=impl == "native")

    def caller(plan):
        try:
            for texts in plan:
                got = fake_encoder.submit(texts).result(timeout=60)
                assert got.shape == (len(texts), fake_encoder.dim) and got.dtype == np.float32
                assert_exact(got, np.stack([expected[t] for t in texts]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    s = fake_encoder.batcher.stats()
    total_posts = sum(len(texts) for plan in plans for texts in plan)
    assert s["requests_ok"] == s["requests_submitted"] == n_threads * n_requests
    assert s["posts_computed"] == total_posts  # nothing lost, nothing computed twice
    assert s["pending_requests"] == s["queued_posts"] == s["queued_tokens"] == 0
    assert s["batch_size"]["count"] == s["batches"] and s["batch_size"]["sum"] == total_posts
    assert 0.0 <= s["padding_ratio"] < 0.5


def test_concurrent_submit_matches_encode_on_the_real_model(base_torch):
    """Real model: results through the batcher match a single-threaded encode (exact: float32 bar of tests.conftest.assert_exact)."""
    rng = random.Random(7)
    plans = [[random_texts(rng, rng.randint(1, 8)) for _ in range(3)] for _ in range(12)]
    flat = [t for plan in plans for texts in plan for t in texts]
    expected = base_torch.encode(flat)
    results: dict[int, list[np.ndarray]] = {}

    def caller(i, plan):
        results[i] = [base_torch.submit(texts).result(timeout=120) for texts in plan]

    threads = [threading.Thread(target=caller, args=(i, p)) for i, p in enumerate(plans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = np.concatenate([r for i in range(len(plans)) for r in results[i]])
    assert got.shape == expected.shape
    assert_exact(got, expected)


def test_submit_shapes_and_validation(fake_encoder):
    one = fake_encoder.submit("a single post").result(timeout=10)
    assert one.shape == (fake_encoder.dim,)
    assert_exact(one, fake_encoder.encode("a single post"))
    assert fake_encoder.submit([]).result().shape == (0, fake_encoder.dim)
    with pytest.raises(ValidationError, match=r"`texts\[1\]` must be str"):
        fake_encoder.submit(["ok", None])


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_backend_exception_fails_exactly_the_requests_of_that_batch(impl):
    """Posts carry their request id as first token; the backend raises on any batch that holds
    a multiple of 7. Exactly the requests in such a batch fail, with the original exception."""
    batches: list[set[int]] = []
    lock = threading.Lock()

    def embed(ids, mask):
        rids = {int(x) for x in ids[:, 0]}
        with lock:
            batches.append(rids)
        if any(r % 7 == 0 for r in rids):
            raise KeyError(f"poisoned batch {sorted(rids)}")
        return fake_vectors(ids, mask)

    with make_batcher(embed, impl, max_batch_size=4, max_wait_us=200) as b:
        futs = {}

        def caller(start):
            for rid in range(start, start + 50):
                futs[rid] = b.submit([[rid, 5, 6], [rid, 7]])

        threads = [threading.Thread(target=caller, args=(1 + 50 * i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        poisoned = set().union(*(bs for bs in batches_when_done(futs, batches) if any(r % 7 == 0 for r in bs)))
        for rid, fut in futs.items():
            if rid in poisoned:
                with pytest.raises(KeyError, match="poisoned batch"):
                    fut.result()
            else:
                assert fut.result().shape == (2, 8)
        # The batcher keeps serving after failures.
        assert b.submit([[1, 2, 3]]).result(timeout=10).shape == (1, 8)
        s = b.stats()
    assert s["batches_failed"] > 0 and s["requests_failed"] == len(poisoned)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.dtype(np.float32, metadata={"source": "runtime"}),
                                   np.dtype(np.float32).newbyteorder("=")], ids=["metadata", "native-order"])
def test_a_float32_result_is_accepted_whatever_its_dtype_object(impl, dtype):
    """float32 is float32: a dtype object equal to np.float32 but not numpy's own instance (one
    carrying metadata, or a native-order copy) was refused as 'must return float32. Given: float32'."""
    def embed(ids, mask):
        return fake_vectors(ids, mask).view(dtype)

    with make_batcher(embed, impl, max_wait_us=0) as b:
        got = b.submit([[1, 2, 3]]).result(timeout=30)
    assert_exact(got, fake_vectors(np.array([[1, 2, 3]]), np.ones((1, 3), np.int64)))


def batches_when_done(futs, batches):
    for f in futs.values():
        f.exception(timeout=30)
    return batches


@pytest.mark.parametrize("impl", IMPLS)
def test_overload_raises_immediately_and_bounds_the_queue(impl):
    gate = threading.Event()

    def embed(ids, mask):
        gate.wait(10)
        return fake_vectors(ids, mask)

    b = make_batcher(embed, impl, max_queued_tokens=100, max_batch_size=1, max_wait_us=0)
    try:
        accepted = [b.submit([[1] * 10])]
        refused = []

        def flood():  # the model is blocked on the gate: a submit that waited would never return
            try:
                for _ in range(100):
                    accepted.append(b.submit([[1] * 10]))
            except OverloadedError as exc:
                refused.append(exc)

        t = threading.Thread(target=flood)
        t.start()
        t.join(30)
        assert not t.is_alive(), "submit blocked on a full queue instead of raising OverloadedError"
        assert len(refused) == 1 and "max_queued_tokens is 100" in str(refused[0])
        s = b.stats()
        assert s["queued_tokens"] <= 100 and s["requests_rejected"] == 1
        gate.set()
        for f in accepted:
            assert f.result(timeout=10).shape == (1, 8)
        assert b.submit([[1] * 10]).result(timeout=10).shape == (1, 8)  # accepted again
        with pytest.raises(ValidationError, match="more than max_queued_tokens"):
            b.submit([[1] * 101])  # can never fit: a ValidationError, not an overload
    finally:
        gate.set()
        b.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_expired_request_fails_clearly_and_is_not_computed(impl):
    gate, entered = threading.Event(), threading.Event()
    seen: list[int] = []

    def embed(ids, mask):
        seen.extend(int(x) for x in ids[:, 0])
        entered.set()
        gate.wait(10)
        return fake_vectors(ids, mask)

    with make_batcher(embed, impl, max_batch_size=1, max_wait_us=0) as b:
        busy = b.submit([[1, 2]])
        assert entered.wait(10)  # the scheduler is now inside embed, blocked on the gate
        late = b.submit([[77, 2]], timeout=0.01)
        fine = b.submit([[3, 2]], timeout=30)
        expires = time.monotonic() + 0.01
        while time.monotonic() <= expires:  # what we wait for here is the deadline itself
            time.sleep(expires - time.monotonic() + 0.001)
        gate.set()
        with pytest.raises(DeadlineExceededError, match="deadline passed"):
            late.result(timeout=10)
        assert busy.result(timeout=10).shape == fine.result(timeout=10).shape == (1, 8)
        assert 77 not in seen
        assert b.stats()["requests_expired"] == 1


# -- shutdown -------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("drain", [True, False])
def test_close_while_callers_are_blocked(drain, impl):
    """close() with 40 callers blocked on result() while the model is inside its first batch:
    drain=True computes all 40; drain=False finishes the batch in flight only and fails every
    queued request with BatcherClosedError (none computed). No deadlock, and the scheduler
    thread is gone afterwards. Barriers are events, not sleeps."""
    before = os_threads()
    embed = Gated()
    gate, entered, computed = embed.gate, embed.entered, embed.computed
    b = make_batcher(embed, impl, max_batch_size=2, max_wait_us=0)
    outcomes: dict[int, str] = {}
    lock = threading.Lock()
    submitted = threading.Semaphore(0)

    def caller(i):
        try:
            fut = b.submit([[i + 1, 2, 3]])
        except BatcherClosedError:
            out = "refused"
        else:
            submitted.release()
            try:
                fut.result(timeout=30)
                out = "ok"
            except BatcherClosedError:
                out = "closed"
        with lock:
            outcomes[i + 1] = out

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    assert entered.wait(10)  # the scheduler holds post 1 inside embed
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(1, 40)]
    for t in [first] + threads:
        if t is not first:
            t.start()
    for _ in range(40):
        assert submitted.acquire(timeout=10)  # all 40 accepted before close
    closer = threading.Thread(target=b.close, kwargs={"drain": drain})
    closer.start()
    deadline = time.monotonic() + 10
    while not b.closed:  # close() has registered; its batch is still blocked on the gate
        assert time.monotonic() < deadline, "close() never registered"
        time.sleep(0.001)
    gate.set()
    closer.join(30)
    assert not closer.is_alive()
    for t in [first] + threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and len(outcomes) == 40
    assert "refused" not in outcomes.values()
    s = b.stats()
    if drain:
        assert set(outcomes.values()) == {"ok"} and sorted(computed) == list(range(1, 41))
        assert s["requests_closed"] == 0
    else:
        assert computed == [1]  # the batch in flight, nothing queued after it
        assert outcomes[1] == "ok" and all(outcomes[i] == "closed" for i in range(2, 41)), outcomes
        assert s["requests_closed"] == 39 and s["requests_ok"] == 1
    # A joined Python thread's OS thread can linger for a moment after join() returns.
    # Unrelated threads started by earlier tests (tokenizer pools, closed batchers) may end
    # meanwhile, so the count may drop below `before`; it must never stay above it.
    deadline = time.monotonic() + 5
    while os_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os_threads() <= before
    with pytest.raises(BatcherClosedError):
        b.submit([[1]])
    b.close()  # idempotent


@pytest.mark.parametrize("impl", IMPLS)
def test_each_caller_of_a_failed_batch_gets_its_own_exception(impl):
    class ModelCrash(RuntimeError):
        pass

    gate = threading.Event()

    def embed(ids, mask):
        gate.wait(10)
        raise ModelCrash("the kernel crashed (simulated)")

    with make_batcher(embed, impl, max_batch_size=8, max_wait_us=1_000_000) as b:
        futs = [b.submit([[i + 1, 2]]) for i in range(8)]  # max_wait 1 s: one batch of 8
        gate.set()
        errors = [f.exception(timeout=10) for f in futs]
    assert all(type(e) is ModelCrash and str(e) == "the kernel crashed (simulated)" for e in errors)
    assert len({id(e) for e in errors}) == 8, "one exception object shared by every future"


def test_encoder_close_drains_and_rejects_later_submits(base_dir):
    enc = Encoder(base_dir, FakeBackend(base_dir, sleep_s=0.01), "test")
    futs = [enc.submit(["post number %d" % i]) for i in range(30)]
    enc.close()
    assert all(f.done() and f.result().shape == (1, enc.dim) for f in futs)
    with pytest.raises(BatcherClosedError):
        enc.submit("too late")


@pytest.mark.parametrize("impl", IMPLS)
def test_interpreter_exit_with_work_in_flight_drains_and_exits(impl):
    script = textwrap.dedent("""
        import atexit
        futs = []
        # Registered before postemb_rt is imported, so it runs after the batcher's drain hook.
        atexit.register(lambda: print("done", sum(f.done() for f in futs), len(futs), flush=True))
        import threading, time, numpy as np
        from postemb_rt.batching import DynamicBatcher

        def embed(ids, mask):
            time.sleep(0.005)
            return np.ones((ids.shape[0], 4), np.float32)

        b = DynamicBatcher(embed, max_batch_size=2, native=NATIVE)
        futs.extend(b.submit([[1, 2, 3]]) for _ in range(40))
        def waiter():  # a daemon caller still blocked at exit
            futs[-1].result()
        threading.Thread(target=waiter, daemon=True).start()
        # no close(): the atexit hook of postemb_rt.batching drains the queue
    """)
    script = script.replace("NATIVE", str(impl == "native"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "terminate" not in out.stderr
    assert "done 40 40" in out.stdout


# -- asyncio ---------------------------------------------------------------------------------
def test_aencode_from_many_coroutines_never_blocks_the_loop(base_dir):
    backend = FakeBackend(base_dir, sleep_s=0.002)
    enc = Encoder(base_dir, backend, "test")
    rng = random.Random(3)
    requests = [random_texts(rng, rng.randint(1, 4)) for _ in range(300)]
    expected = [enc.encode(t) for t in requests]
    backend.gate = threading.Event()

    async def main():
        ticks = 0

        async def opener():
            # Runs on the loop: it can open the gate that the model (on the scheduler thread)
            # waits on only if aencode leaves the loop free meanwhile; if the loop were
            # blocked, the model would time out on the gate instead.
            nonlocal ticks
            while not backend.inside.is_set():
                await asyncio.sleep(0.001)
            for _ in range(10):
                await asyncio.sleep(0)
                ticks += 1
            backend.gate.set()

        tick = asyncio.create_task(opener())
        results = await asyncio.gather(*(enc.aencode(t) for t in requests))
        # A cancelled awaiter does not break the batcher.
        task = asyncio.create_task(enc.aencode(["cancel me"] * 3))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        results.append(await enc.aencode("after a cancel"))
        await tick
        return results, ticks

    try:
        results, ticks = asyncio.run(main())
        for got, want in zip(results, expected):
            assert_exact(got, want)
        assert results[-1].shape == (enc.dim,)
        # The model was held inside its first batch until the loop, still running, let it go.
        assert ticks == 10 and backend.gate_timeouts == 0
    finally:
        enc.close()


# -- batch formation and stats ----------------------------------------------------------------
@pytest.mark.parametrize("impl", ["native"])  # SerialCore groups nothing
def test_length_grouping_cuts_padding_and_stats_expose_it(impl):
    widths: list[tuple[int, int]] = []

    def embed(ids, mask):
        widths.append(ids.shape)
        return fake_vectors(ids, mask)

    # Nothing is due before 8 posts wait (max_wait 1 s): then they are grouped by length.
    with make_batcher(embed, impl, max_batch_size=8, max_wait_us=1_000_000, batch_overhead_tokens=16) as b:
        futs = [b.submit([[i + 1] * (40 if i % 2 else 8)]) for i in range(8)]
        for f in futs:
            f.result(timeout=10)
        s = b.stats()
    assert sorted(widths) == [(4, 8), (4, 40)]
    assert s["padding_ratio"] == 0.0 and s["mean_batch_size"] == 4.0
    for name in ("batch_size", "batch_padding_ratio", "queue_seconds", "inference_seconds"):
        h = s[name]
        assert len(h["counts"]) == len(h["bounds"]) + 1 and sum(h["counts"]) == h["count"]
    assert s["queue_seconds"]["count"] == 8 and s["inference_seconds"]["count"] == 2
    assert s["implementation"] == ("C++ (postemb_rt._C)" if impl == "native" else "python fallback")


@pytest.mark.parametrize("impl", IMPLS)
def test_options_are_validated(impl):
    with pytest.raises(ValidationError, match=r"`max_batch_size` must be an int from 1 to 2\*\*40. Given: 0"):
        DynamicBatcher(fake_vectors, max_batch_size=0)
    with pytest.raises(ValidationError, match="`max_wait_us`"):
        DynamicBatcher(fake_vectors, max_wait_us=-1)
    with make_batcher(fake_vectors, impl) as b:
        with pytest.raises(ValidationError, match=r"`posts\[1\]` must hold 1 to max_batch_tokens"):
            b.submit([[1, 2], []])
        with pytest.raises(TypeError, match="sequence of int"):
            b.submit(["not ids"])


def test_native_true_without_the_extension_raises_a_clear_error(monkeypatch):
    from postemb_rt import PostEmbError, native

    monkeypatch.setattr(native, "_C", None)
    with pytest.raises(PostEmbError, match=r"`native=True` needs the extension postemb_rt._C.*Fix:"):
        DynamicBatcher(lambda ids, mask: fake_vectors(ids, mask), native=True)


def test_without_the_extension_requests_are_computed_one_at_a_time_and_reported(monkeypatch, caplog, base_dir):
    """No postemb_rt._C: DynamicBatcher serves concurrent callers through SerialCore (each
    model call holds one request's posts only), says so in a warning, in stats() and in
    Encoder.describe(), and still answers every caller with its own rows."""
    from postemb_rt import native
    from postemb_rt.batching import SERIAL

    monkeypatch.setattr(native, "_C", None)
    calls: list[set[int]] = []

    def embed(ids, mask):
        calls.append({int(x) for x in ids[:, 0]})
        return fake_vectors(ids, mask)

    with caplog.at_level("WARNING", logger="postemb_rt"):
        b = DynamicBatcher(embed, max_batch_size=64, max_wait_us=100_000)
    assert "one request at a time" in caplog.text and "Fix: pip install -e ." in caplog.text
    futs = {}

    def caller(first):  # 4 threads x 10 requests, submitted concurrently
        for rid in range(first, first + 10):
            futs[rid] = b.submit([[rid, 5, 6], [rid, 7]])

    with b:
        threads = [threading.Thread(target=caller, args=(1 + 10 * i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for rid, fut in futs.items():
            ids = np.array([[rid, 5, 6], [rid, 7, 0]])
            np.testing.assert_allclose(fut.result(timeout=30), fake_vectors(ids, (ids > 0).astype(np.int64)))
        s = b.stats()
    assert sorted(min(c) for c in calls) == list(range(1, 41))
    assert all(len(c) == 1 for c in calls)  # never two requests in one model call
    assert s["implementation"] == SERIAL and b.implementation == SERIAL
    assert s["requests_ok"] == s["batches"] == 40 and s["posts_computed"] == 80
    assert s["pending_requests"] == s["queued_posts"] == s["queued_tokens"] == 0

    enc = Encoder(base_dir, FakeBackend(base_dir), "test")
    try:
        assert enc.submit(["a post", "another"]).result(timeout=10).shape == (2, enc.dim)
        assert enc.describe()["batcher"] == SERIAL
    finally:
        enc.close()
