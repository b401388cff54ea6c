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


def test_last_stats_describe_the_calling_threads_own_last_encode(enc):
    """``last_stats`` was one attribute for every thread: a thread that read it after its own encode got whichever
    call ended last anywhere (here another thread's, whose ``truncated`` indices are not its posts'). Each thread
    now reads its own last call; a thread that made none reads the last call of any thread."""
    encoded, other_done, seen = threading.Event(), threading.Event(), []

    def worker():
        enc.encode(["a short post", LONG_POST, "another"])
        encoded.set()
        assert other_done.wait(60)
        seen.append(enc.last_stats)

    t = threading.Thread(target=worker)
    t.start()
    assert encoded.wait(60)
    enc.encode(["hi"])  # this thread's call ends after the worker's
    other_done.set()
    t.join(60)
    assert (seen[0].posts, seen[0].truncated) == (3, [1])
    assert (enc.last_stats.posts, enc.last_stats.truncated) == (1, [])
    reader = []
    t = threading.Thread(target=lambda: reader.append(enc.last_stats))  # no encode of its own
    t.start()
    t.join(60)
    assert reader[0].posts == 1


def test_a_submit_returns_the_prefix_in_force_when_it_was_made():
    """``submit`` cut its vectors to the encoder's truncate_dim read when the batch came back, on the batcher's
    thread: a future made inside ``truncate_embeddings(8)`` and computed after the block ended came back 16-d (and
    one made before a block began, 8-d), so a caller's dim depended on when the model ran."""
    release, calls = threading.Event(), []
    enc16 = Encoder.from_pretrained("default", backend="onnxruntime", truncate_dim=16)  # its batcher not started
    embed = enc16.backend.embed

    def held_embed(*args, **kwargs):  # the batcher computes only once the test lets it
        calls.append(1)
        assert release.wait(60)
        return embed(*args, **kwargs)

    enc16.backend.embed = held_embed
    try:
        enc16.start_batcher()  # binds held_embed
        with enc16.truncate_embeddings(8):
            inside = enc16.submit(["a post"])
        outside = enc16.submit(["a post"])
        with enc16.truncate_embeddings(32):
            release.set()
            got = inside.result(timeout=60), outside.result(timeout=60)
    finally:
        release.set()
        enc16.close()
    assert [g.shape for g in got] == [(1, 8), (1, 16)]
    assert calls


def test_truncate_embeddings_blocks_of_two_threads_ending_out_of_order_restore_the_encoder(enc16):
    """Each block restored the dim it found when it began: thread A enters 8, thread B enters 32, A ends (32 stays:
    B's block), B ends and restored 8, A's dim, for ever after, so every later call of every thread got 8-d
    vectors. As in sentence-transformers, a block sets the dim for every thread while it lasts; now the last block
    begun and not ended is in force, and once all have ended, the encoder's own dim (16) again."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with enc16.truncate_embeddings(8):
            a_in.set()
            assert b_in.wait(60)
        a_out.set()

    def b():
        assert a_in.wait(60)
        with enc16.truncate_embeddings(32):
            b_in.set()
            assert a_out.wait(60)
            seen["inside b after a ended"] = enc16.truncate_dim

    threads = [threading.Thread(target=f) for f in (a, b)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert seen == {"inside b after a ended": 32}
    assert enc16.truncate_dim == 16 and enc16.encode(["a post"]).shape == (1, 16)
    with enc16.truncate_embeddings(8), enc16.truncate_embeddings(None):  # nested in one thread: as in ST
        assert enc16.encode(["a post"]).shape == (1, 50)
    assert enc16.truncate_dim == 16
