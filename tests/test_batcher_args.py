"""What the dynamic batcher accepts (postemb_rt/batcher_args.py, csrc/bindings.cpp rows_from_python):
every mistake is refused at once, before anything is queued, with a message naming the argument,
the value given and the fix; on the C++ batcher and on SerialCore alike."""
import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from postemb_rt.batching import DynamicBatcher
from tests.test_batcher import IMPLS, FakeBackend, fake_vectors, make_batcher

VOCAB = 30522  # all-MiniLM-L6-v2's tokenizer (the base model's)


@pytest.fixture(params=IMPLS)
def enc(request):
    from postemb_rt.model_dir import resolve

    md = resolve("base")
    enc = Encoder(md, FakeBackend(md), "test")
    enc.start_batcher(native=request.param == "native")
    yield enc
    enc.close()


# -- token ids ---------------------------------------------------------------------------
@pytest.mark.parametrize("ids, given", [([101, -5, 102], "-5"), ([101, 10**6, 102], "1000000"),
                                        ([101, VOCAB, 102], str(VOCAB)), ([101, 2**70], str(2**70))])
def test_token_ids_outside_the_vocabulary_are_refused_before_the_model_runs(enc, ids, given):
    """An id past the embedding table is read silently as garbage by OpenVINO and onnxruntime: the
    Encoder's batcher knows its tokenizer's vocabulary and refuses such ids at submit."""
    with pytest.raises(ValidationError, match=rf"`posts\[1\]\[1\]` is {given}, not a token id of this model "
                                              rf"\(0..{VOCAB - 1}\). Fix: pass ids from the model's own tokenizer"):
        enc.batcher.submit([[101, 102], ids])
    assert enc.backend.calls == 0 and enc.batcher.stats()["requests_submitted"] == 0
    ok = enc.batcher.submit([[0, VOCAB - 1], np.array([101, 7592, 102])]).result(timeout=30)  # the range's ends
    assert ok.shape == (2, enc.dim)


@pytest.mark.parametrize("impl", IMPLS)
def test_without_a_vocabulary_negative_ids_are_still_refused(impl):
    with make_batcher(fake_vectors, impl) as b:
        with pytest.raises(ValidationError, match=r"`posts\[0\]\[1\]` is -1, not a token id \(ids are >= 0"):
            b.submit([[5, -1]])
        assert b.submit([[5, 10**9]]).result(timeout=30).shape == (1, 8)


@pytest.mark.parametrize("posts, match", [
    ([[1.5, 2.0]], r"`posts\[0\]\[0\]` must be an int token id. Given: float \(1.5\). Fix: pass a list of token-id"),
    ([["a", "b"]], r"`posts\[0\]\[0\]` must be an int token id. Given: str \('a'\)"),
    ([np.array([1.0, 2.0])], r"`posts\[0\]\[0\]` must be an int token id. Given: \S*float64"),
    ([[101, True]], r"`posts\[0\]\[1\]` must be an int token id. Given: bool \(True\)"),
    ([[1, 2], 5], r"`posts\[1\]` must be a sequence of int token ids. Given: int. Fix:"),
    (None, r"`posts` must be a list of token-id lists. Given: NoneType. Fix: .*Encoder.tokenizer\(texts\).ids"),
    (5, r"`posts` must be a list of token-id lists. Given: int. Fix:"),
    ("abc", r"`posts` must be a list of token-id lists. Given: str. Fix: .*Encoder.submit\(texts\)"),
])
def test_posts_that_are_not_lists_of_int_ids_are_a_type_error_naming_the_place(enc, posts, match):
    with pytest.raises(TypeError, match=match):
        enc.batcher.submit(posts)
    assert enc.batcher.stats()["requests_submitted"] == 0


def test_tuples_and_numpy_integer_rows_are_token_ids(enc):
    got = enc.batcher.submit(((101, 7592, 102), np.array([101, 102], dtype=np.int32))).result(timeout=30)
    want = enc.batcher.submit([[101, 7592, 102], [101, 102]]).result(timeout=30)
    np.testing.assert_array_equal(got, want)


# -- timeout -----------------------------------------------------------------------------
@pytest.mark.parametrize("timeout, given", [(-1, "-1"), (0, "0"), (0.0, "0.0"), (float("nan"), "nan"),
                                            ("5", r"'5' \(str\)"), (True, r"True \(bool\)")])
def test_a_timeout_is_seconds_above_zero_or_none(enc, timeout, given):
    """0 and negative timeouts once meant "no deadline" silently; "5" was accepted."""
    match = rf"`timeout` must be a number of seconds > 0, or None for no deadline. Given: {given}. Fix:"
    for call in (lambda: enc.submit("a post", timeout=timeout), lambda: enc.submit([], timeout=timeout),
                 lambda: enc.batcher.submit([[101, 102]], timeout=timeout)):
        with pytest.raises(ValidationError, match=match):
            call()
    assert enc.batcher.stats()["requests_submitted"] == 0


def test_good_timeouts_are_accepted(enc):
    for timeout in (None, 30, 30.0, np.float64(30), float("inf")):
        assert enc.submit("a post", timeout=timeout).result(timeout=30).shape == (enc.dim,)


# -- the queue bound -----------------------------------------------------------------------
def test_a_request_larger_than_the_queue_says_where_the_limit_is_set_and_what_to_use(enc):
    with pytest.raises(ValidationError, match=r"`posts` hold 76800 tokens, more than max_queued_tokens \(65536\), "
                                              r"so they can never be queued. Fix: .*Encoder.encode\(\).*"
                                              r"Encoder.start_batcher\(max_queued_tokens=...\)"):
        enc.submit(["word " * 300] * 300)  # 300 posts cut to 256 tokens


def test_the_encoders_queue_must_hold_a_batch():
    from postemb_rt.model_dir import resolve

    md = resolve("base")
    with Encoder(md, FakeBackend(md), "test") as enc:
        with pytest.raises(ValidationError, match=r"`max_queued_tokens` must be >= max_batch_tokens \(4096\): .* "
                                                  r"Given: 10. Fix: leave it out \(default 65536\)"):
            enc.start_batcher(max_queued_tokens=10)
        assert enc.start_batcher(max_queued_tokens=4096, max_batch_tokens=4096).options["max_queued_tokens"] == 4096


def test_the_batchers_token_budget_must_hold_one_post_of_max_length():
    """start_batcher(max_batch_tokens=100) with max_length 256 was accepted, then every post over 100 tokens
    failed at submit ("`posts[0]` must hold 1 to max_batch_tokens (100) token ids"); from_pretrained refuses
    the same value up front, and now start_batcher does too."""
    from postemb_rt.model_dir import resolve

    md = resolve("base")
    with Encoder(md, FakeBackend(md), "test") as enc:
        with pytest.raises(ValidationError, match=r"`max_batch_tokens` must be an int >= max_length \(256\). "
                                                  r"Given: 100."):
            enc.start_batcher(max_batch_tokens=100)
        assert enc.start_batcher(max_batch_tokens=256).options["max_batch_tokens"] == 256


# -- options -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"max_batch_tokens": 2**70}, rf"`max_batch_tokens` must be an int from 1 to 2\*\*40. Given: {2**70}. Fix:"),
    ({"max_batch_size": 0}, r"`max_batch_size` must be an int from 1 to 2\*\*40. Given: 0. Fix:"),
    ({"max_batch_size": True}, r"`max_batch_size` must be an int from 1 .* Given: True \(bool\)"),
    ({"max_wait_us": 2.5}, r"`max_wait_us` must be an int from 0 .* Given: 2.5 \(float\)"),
    ({"pad_id": "x"}, r"`pad_id` must be an int from 0 to 2\*\*40. Given: 'x' \(str\). Fix:"),
    ({"pad_id": -1}, r"`pad_id` must be an int from 0 to 2\*\*40. Given: -1. Fix:"),
    ({"vocab_size": 0}, r"`vocab_size` must be an int from 1 to 2\*\*40 or None \(any id >= 0\). Given: 0"),
    ({"vocab_size": 10, "pad_id": 10}, r"`pad_id` must be a token id of this model \(0..9\). Given: 10. Fix:"),
])
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_options_are_refused_by_name_before_a_thread_starts(impl, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        make_batcher(fake_vectors, impl, **kwargs)


@pytest.mark.parametrize("impl", IMPLS)
def test_embed_must_be_callable(impl):
    """DynamicBatcher(None) was accepted, then failed every batch."""
    with pytest.raises(TypeError, match=r"`embed` must be callable: .* Given: NoneType. Fix:"):
        DynamicBatcher(None, native=impl == "native")
