"""One Encoder shared by several threads: ``submit`` futures waited on from a batcher's own thread, and
``last_stats`` read by the thread whose call it describes."""
import threading

import pytest

from postemb_rt import Encoder
from tests.conftest import LONG_POST


@pytest.fixture(scope="module")
def enc():
    with Encoder.from_pretrained("default", backend="onnxruntime") as e:
        yield e


@pytest.fixture(scope="module")
def enc16():
    with Encoder.from_pretrained("default", backend="onnxruntime", truncate_dim=16) as e:
        yield e


def _wait_in_a_done_callback(enc, **submit_kwargs):
    """What ``enc.submit(...).result()`` does when called in a done-callback (on the batcher's thread)."""
    seen, called = [], threading.Event()

    def callback(_):
        try:
            seen.append(enc.submit([LONG_POST], **submit_kwargs).result(timeout=5))
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            seen.append(exc)
        called.set()

    enc.submit([LONG_POST], **submit_kwargs).add_done_callback(callback)
    assert called.wait(60)
    return seen[0]


@pytest.mark.parametrize("case", ["truncate_dim at load", "chunk mode"])
def test_waiting_on_the_batchers_own_thread_raises_for_every_kind_of_submit(enc, enc16, case):
    """A plain submit's future refuses result() on the batcher's thread (it would wait for ever); the futures of
    an encoder loaded with truncate_dim and of chunk mode (gathered from the batchers' futures) waited instead:
    for ever without a timeout, and close() with them."""
    e, kwargs = (enc16, {}) if case == "truncate_dim at load" else (enc, {"long_posts": "chunk"})
    got = _wait_in_a_done_callback(e, **kwargs)
    assert isinstance(got, RuntimeError) and "batcher's own thread" in str(got), got
    assert e.submit([LONG_POST], **kwargs).result(timeout=60).shape == (1, 16 if e is enc16 else 50)
