"""The futures that DynamicBatcher.submit and Encoder.submit return, used as concurrent.futures and
asyncio users use them: done-callbacks that raise, cancel() of a combined future, which exception
a failed batch's callers get."""
import threading

import numpy as np
import pytest

from postemb_rt.batching import DeadlineExceededError, DynamicBatcher
from postemb_rt.futures import gather
from tests.test_batcher import Gated

IMPLS = ["native", "serial"]


def ones(ids, mask):
    return np.ones((ids.shape[0], 4), np.float32)


def exits(_fut):
    raise SystemExit("a callback exits")


@pytest.mark.parametrize("impl", IMPLS)
def test_a_done_callback_that_raises_does_not_strand_the_rest_of_its_batch(impl, caplog):
    """A callback raising BaseException (SystemExit here) escapes concurrent.futures' own guard, which
    catches Exception only; every other request of that batch must still be resolved, and the batcher
    keeps serving."""
    embed = Gated(ones)
    gate, entered = embed.gate, embed.entered
    with DynamicBatcher(embed, native=impl == "native", max_batch_size=8, max_wait_us=0) as b:
        first = b.submit([[1]])
        assert entered.wait(10)  # the model holds the first batch; the next three queue together
        futs = [b.submit([[i + 2]]) for i in range(3)]
        futs[0].add_done_callback(exits)
        gate.set()
        first.result(timeout=30)
        for f in futs:
            assert f.result(timeout=30).shape == (1, 4)
        assert b.submit([[9]]).result(timeout=30).shape == (1, 4)
    assert "a callback exits" in caplog.text


def test_cancelling_a_combined_future_drops_its_queued_parts_quietly(caplog):
    """Encoder.submit returns gather()'s Future in chunk mode and with truncate_dim: cancel() of it
    (an asyncio task awaiting aencode being cancelled) must cancel the parts, so their posts leave
    the queue uncomputed, and must log nothing when the parts finish."""
    embed = Gated(ones)
    gate, entered, computed = embed.gate, embed.entered, embed.computed
    with DynamicBatcher(embed, native=True, max_batch_size=8, max_wait_us=0) as b:
        busy = b.submit([[1]])
        assert entered.wait(10)
        parts = [b.submit([[2]]), b.submit([[3]])]
        combined = gather(parts, lambda res: np.concatenate(res))
        assert combined.cancel()
        assert all(p.cancelled() for p in parts)
        gate.set()
        busy.result(timeout=30)
        assert b.submit([[4]]).result(timeout=30).shape == (1, 4)
        assert b.stats()["requests_cancelled"] == 2
    assert computed == [1, 4]
    assert "exception calling callback" not in caplog.text and "InvalidStateError" not in caplog.text


@pytest.mark.parametrize("impl", IMPLS)
def test_a_failed_batch_nobody_waits_for_does_not_lend_its_exception_to_a_later_one(impl):
    """The first batch raises KeyError, but its only request was cancelled meanwhile; the second
    batch fails on a wrong return dtype. Its caller gets that error, not the first batch's KeyError."""
    gate, entered = threading.Event(), threading.Event()
    calls = []

    def embed(ids, mask):
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            gate.wait(30)
            raise KeyError("the first batch's error")
        return np.ones((ids.shape[0], 4), np.float64)

    with DynamicBatcher(embed, native=impl == "native", max_wait_us=0) as b:
        first = b.submit([[1]])
        assert entered.wait(10)
        assert first.cancel()
        gate.set()
        err = b.submit([[2]]).exception(timeout=30)
    assert not isinstance(err, KeyError) and "float32" in str(err), repr(err)


def test_a_deadline_shorter_than_max_wait_fails_when_it_passes():
    """max_wait_us of 10 minutes (a lone post waits that long for company): a request with a 10 ms
    deadline is reported expired when the deadline passes. The 60 s bound only catches a scheduler
    that sleeps until the batch is due."""
    with DynamicBatcher(ones, native=True, max_wait_us=600_000_000) as b:
        err = b.submit([[1, 2]], timeout=0.01).exception(timeout=60)
        assert isinstance(err, DeadlineExceededError), repr(err)
        b.close(drain=False)


@pytest.mark.parametrize("impl", IMPLS)
def test_waiting_inside_a_done_callback_raises_instead_of_hanging_the_batcher(impl):
    """Done-callbacks run on the batcher's own thread; result() there on a request not computed yet
    would wait for that very thread for ever (and close() with it). It raises RuntimeError naming
    the fix; a future already done still answers."""
    seen = []

    def callback(fut):
        later = b.submit([[5]])
        try:
            later.result(timeout=60)
        except RuntimeError as exc:
            seen.append(str(exc))
        seen.append(fut.result().shape)  # done: answers at once

    gate = threading.Event()

    def embed(ids, mask):
        gate.wait(30)  # the callback is attached before the first request is computed
        return ones(ids, mask)

    with DynamicBatcher(embed, native=impl == "native", max_wait_us=0) as b:
        first = b.submit([[1]])
        first.add_done_callback(callback)
        gate.set()
        first.result(timeout=60)
        assert b.submit([[2]]).result(timeout=60).shape == (1, 4)  # still serving
    assert len(seen) == 2 and "done-callback" in seen[0] and "add_done_callback" in seen[0], seen
    assert seen[1] == (1, 4)
