"""long_posts="chunk": windows, the token-weighted combination, max_chunks, and stats."""
import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from postemb_rt.long_posts import Chunked, combine, split
from tests.conftest import LONG_POST, SAMPLE_TEXTS, assert_exact, cosines

SHORT = [t for t in SAMPLE_TEXTS if t != LONG_POST and len(t) < 200]


@pytest.fixture(scope="module")
def enc():
    with Encoder.from_pretrained("base", backend="torch", max_length=32, long_posts="chunk", chunk_overlap=4,
                                 max_chunks=8) as e:
        yield e


def test_a_post_that_fits_one_window_is_exactly_the_truncate_result(enc):
    a = enc.encode(SHORT)
    b = enc.encode(SHORT, long_posts="truncate")
    assert np.array_equal(a, b)
    assert enc.last_stats.chunked == 0 and enc.last_stats.windows == 0


def test_a_long_post_is_the_token_weighted_mean_of_its_windows(enc):
    text = "Scaling inference for post embeddings means batching, caching and care. " * 6
    windows = enc.tokenizer.windows([text], enc.chunk_overlap)[0]
    assert len(windows) > 1 and all(len(w) <= enc.max_length for w in windows)
    assert all(w[0] == 101 and w[-1] == 102 for w in windows)  # every window is [CLS] ... [SEP]
    assert windows[1][1:1 + enc.chunk_overlap] == windows[0][-1 - enc.chunk_overlap:-1]  # the overlap
    from postemb_rt import native

    raw = np.concatenate([enc.backend.embed(*native.pack_padded([w], enc.tokenizer.pad_id), normalize=False)
                          for w in windows]).astype(np.float64)
    n = np.array([len(w) for w in windows], dtype=np.float64)
    want = (raw * n[:, None]).sum(0) / n.sum()
    want /= np.linalg.norm(want)
    got = enc.encode([text, "hi"])
    assert_exact(got[:1], want[None])
    st = enc.last_stats
    assert (st.posts, st.chunked, st.windows, st.truncated) == (2, 1, len(windows), [])
    assert abs(np.linalg.norm(got[0]) - 1) < 1e-5
    trunc = enc.encode([text], long_posts="truncate")
    assert cosines(got[:1], trunc)[0] < 0.99999  # the rest of the post changed the vector


def test_chunk_mode_is_independent_of_the_batch(enc):
    texts = [LONG_POST, "hi", LONG_POST[:300], "#MondayMotivation"]
    whole = enc.encode(texts, batch_size=3)
    one_by_one = np.stack([enc.encode([t]) [0] for t in texts])
    assert_exact(whole, one_by_one)


def test_max_chunks_truncates_or_raises_as_asked(enc):
    assert len(enc.tokenizer.windows([LONG_POST], enc.chunk_overlap)[0]) > enc.max_chunks
    enc.encode([LONG_POST, "hi"])
    assert enc.last_stats.truncated == [0] and enc.last_stats.windows == enc.max_chunks
    with pytest.raises(ValidationError, match=r"`texts\[1\]` needs \d+ windows, more than max_chunks \(8\).*Fix:"):
        enc.encode(["hi", LONG_POST], truncate=False)


def test_submit_matches_encode_in_chunk_mode(enc):
    texts = ["Scaling inference means batching and caching. " * 8, "hi", LONG_POST]
    got = enc.submit(texts).result(timeout=120)
    assert_exact(got, enc.encode(texts))
    assert np.array_equal(enc.submit("hi").result(timeout=60), enc.encode("hi", long_posts="truncate"))


def test_bad_options_name_the_argument():
    with pytest.raises(ValidationError, match=r"`long_posts` must be one of \('truncate', 'chunk'\). Given: 'split'"):
        Encoder.from_pretrained("base", backend="torch", long_posts="split", warmup=False)
    with pytest.raises(ValidationError, match=r"`chunk_overlap` must be an int in \[0, 30\)"):
        Encoder.from_pretrained("base", backend="torch", max_length=32, chunk_overlap=30, warmup=False)
    with pytest.raises(ValidationError, match=r"`max_chunks` must be an int >= 1. Given: 0"):
        Encoder.from_pretrained("base", backend="torch", max_chunks=0, warmup=False)


def test_combine_weights_by_tokens():
    c = Chunked([], [], [[1, 2], [1, 2, 3, 4]], np.array([3, 3]), [])
    posts, v = combine(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), c, normalize=False)
    assert posts.tolist() == [3] and np.allclose(v, [[1 / 3, 2 / 3]])
    assert split([[[1, 2]], [[1, 3], [1, 4]]], 4, True).singles == [0]


def test_default_overlap_fits_a_short_max_length():
    """The default overlap (32) shrinks to a quarter of the window for a short max_length: truncate
    mode must not fail on a chunking default it never uses."""
    from postemb_rt import Encoder

    with Encoder.from_pretrained("base", backend="torch", max_length=16, warmup=False) as enc:
        assert enc.chunk_overlap == (16 - 2) // 4 and enc.encode(["a short post"]).shape == (1, enc.dim)
    with Encoder.from_pretrained("base", backend="torch", warmup=False) as enc:
        assert enc.chunk_overlap == 32  # unchanged at the model's max_length


def test_max_seq_length_keeps_the_chunk_overlap_asked_at_load():
    """Setting max_seq_length replaced an explicit chunk_overlap by the default for the new length (4 became 31);
    one that no longer fits is refused naming it, and the default still follows the length."""
    from postemb_rt import Encoder

    with Encoder.from_pretrained("base", backend="torch", max_length=32, chunk_overlap=4, warmup=False) as enc:
        enc.max_seq_length = 128
        assert (enc.max_length, enc.chunk_overlap) == (128, 4)
    with Encoder.from_pretrained("base", backend="torch", max_length=64, chunk_overlap=20, warmup=False) as enc:
        with pytest.raises(ValidationError, match=r"`chunk_overlap` must be an int in \[0, 14\)"):
            enc.max_seq_length = 16
    with Encoder.from_pretrained("base", backend="torch", max_length=16, warmup=False) as enc:
        enc.max_seq_length = 128
        assert enc.chunk_overlap == (128 - 2) // 4  # the default for 128 tokens (a quarter of the window)
