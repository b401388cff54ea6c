"""What a feed's odd posts embed to, on every CPU backend in float32: the same vectors as
sentence-transformers on the same folder, cut at the same token, and the same vector for a post
alone, beside long posts, in another order or in batches of one (README "Encoding semantics")."""
import numpy as np
import pytest

from postemb_rt import Encoder, native
from tests.conftest import assert_exact

MAX = 256  # the base model's max_length
# (what a feed carries, why it is here)
EDGE = [
    ("", "empty: [CLS] [SEP]"),
    (" \t\n\r ", "whitespace only"),
    ("🚀", "one emoji"),
    ("👨\u200d👩\u200d👧\u200d👦 family", "zero-width joiners"),
    ("a\u200bb\u200cc\u200dd", "zero-width space / non-joiner / joiner inside a word"),
    ("שלום עולם, מה שלומך?", "right-to-left"),
    ("\u202eevil\u202c text", "bidi override"),
    ("\x00", "NUL only"),
    ("a\x00b\x01c\x7f\x1b[31mred", "control characters, an ANSI escape"),
    ("\ufeffhello", "a BOM inside a post"),
    ("x" * 5000, "one word past WordPiece's 100 characters"),
    ("😀" * 400, "an emoji run"),
    ("[SEP] [CLS] [MASK]", "special tokens written as text"),
    (" ".join(["hello"] * (MAX - 3)), "max_length - 1 tokens"),
    (" ".join(["hello"] * (MAX - 2)), "exactly max_length tokens"),
    (" ".join(["hello"] * (MAX - 1)), "max_length + 1 tokens: cut"),
    ("Scaling inference means batching and caching. " * 60, "far past max_length: cut"),
]
TEXTS = [t for t, _ in EDGE]
LONG = ["Three lessons from failing my first startup: listen, ship, repeat. " * 30] * 5
BACKENDS = ("torch", "onnxruntime", "openvino")


@pytest.fixture(scope="module")
def st_vectors():
    """sentence-transformers on the base model's own folder, and its token count of each text."""
    st_pkg = pytest.importorskip("sentence_transformers")
    from postemb_rt.model_dir import base_encoder_path

    st = st_pkg.SentenceTransformer(str(base_encoder_path()), device="cpu")
    assert st.max_seq_length == MAX
    return st.encode(TEXTS, batch_size=4)


@pytest.fixture(scope="module", params=BACKENDS)
def enc(request):
    with Encoder.from_pretrained("base", backend=request.param, device="cpu") as e:
        yield e


def test_edge_posts_embed_as_sentence_transformers_does(enc, st_vectors):
    got = enc.encode(TEXTS, batch_size=4)
    assert_exact(got, st_vectors)
    whole = [len(e.ids) for e in enc.tokenizer.encodings(TEXTS)]
    assert whole[TEXTS.index(EDGE[14][0])] == MAX  # the table's boundary posts are what they say
    assert enc.last_stats.truncated == [i for i, n in enumerate(whole) if n > MAX] == [15, 16]


def test_a_posts_vector_does_not_depend_on_its_batch_or_order(enc):
    together = enc.encode(TEXTS)
    alone = np.stack([enc.encode(t) for t in TEXTS])
    beside_long = enc.encode(LONG + TEXTS + LONG, max_batch_tokens=10**6)[len(LONG):-len(LONG)]
    reversed_ = enc.encode(TEXTS[::-1], batch_size=3)[::-1]
    one_by_one = enc.encode(TEXTS, batch_size=1)
    over_budget = enc.encode(TEXTS, max_batch_tokens=1)  # every post alone exceeds the budget: one per batch
    assert enc.last_stats.batches == len(TEXTS)
    for other in (alone, beside_long, reversed_, one_by_one, over_budget):
        assert_exact(other, together)
    dup = enc.encode([TEXTS[5], "hi", TEXTS[5]] + LONG, max_batch_tokens=10**6)
    assert_exact(dup[:1], dup[2:3])


def test_onnxruntime_int8_vectors_do_not_depend_on_the_batch():
    """onnxruntime's int8 quantizes each matmul's input with one calibrated scale (recipe 4,
    postemb_rt.int8_static). Recipe 3 took one range over the whole (rows, tokens, features) batch at run
    time, so a post's vector moved with its neighbours and their padding: 1 - cos up to ~3e-3 on real
    posts (`default`), ~1e-2 beside emoji runs (2026-12-06)."""
    from postemb_rt.backends.onnx_backend import OnnxBackend
    from postemb_rt.model_dir import resolve
    from postemb_rt.tokenization import PostTokenizer

    md = resolve("base")
    backend = OnnxBackend(md, precision="int8")  # the backend alone: no fidelity gate to measure
    tok = PostTokenizer(md.tokenizer_path, MAX)
    ids = tok(["hi there", "😀" * 3 + " a party", *LONG]).ids
    alone = np.concatenate([backend.embed(*native.pack_padded([row], tok.pad_id)) for row in ids])
    batched = backend.embed(*native.pack_padded(ids, tok.pad_id))
    assert_exact(batched, alone)  # as float32 is: the same vectors up to the order of float sums
