import numpy as np
import pytest

from postemb_rt import BackendUnavailableError, Encoder, ModelNotFoundError, ValidationError
from tests.conftest import LONG_POST, assert_exact, cosines


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def enc(request, base_torch, base_onnx):
    return {"torch": base_torch, "onnxruntime": base_onnx}[request.param]


def test_onnxruntime_matches_torch_on_every_post(base_torch, base_onnx, sample_texts):
    assert_exact(base_onnx.encode(sample_texts), base_torch.encode(sample_texts))


def test_matches_sentence_transformers_normalized_encode(base_onnx, sample_texts):
    from sentence_transformers import SentenceTransformer

    from postemb_rt.model_dir import base_encoder_path

    st = SentenceTransformer(str(base_encoder_path()), device="cpu")
    ref = st.encode(sample_texts, normalize_embeddings=True, batch_size=4)
    assert_exact(base_onnx.encode(sample_texts), ref)


def test_post_alone_equals_post_in_batch_of_very_different_lengths(enc, sample_texts):
    batch = enc.encode(sample_texts, batch_size=len(sample_texts), max_batch_tokens=100_000)
    alone = np.stack([enc.encode([t]) [0] for t in sample_texts])
    assert_exact(batch, alone)


def test_batch_size_and_token_budget_do_not_change_embeddings(enc, sample_texts):
    a = enc.encode(sample_texts, batch_size=1)
    b = enc.encode(sample_texts, batch_size=3, max_batch_tokens=300)
    assert_exact(a, b)


def test_output_order_equals_input_order(enc, sample_texts):
    perm = np.random.default_rng(0).permutation(len(sample_texts))
    base = enc.encode(sample_texts)
    shuffled = enc.encode([sample_texts[i] for i in perm])
    assert_exact(shuffled, base[perm])
    # and the rows really differ from one another, so the check above can fail
    assert cosines(base[:-1], base[1:]).max() < 0.99


def test_output_is_float32_unit_rows_of_model_dim(enc, sample_texts):
    out = enc.encode(sample_texts)
    assert out.dtype == np.float32 and out.shape == (len(sample_texts), enc.dim) == (len(sample_texts), 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_single_string_returns_one_vector(enc):
    v = enc.encode("just one post")
    assert v.shape == (enc.dim,)
    assert_exact(v[None], enc.encode(["just one post"]))


def test_empty_list_returns_zero_rows(enc):
    out = enc.encode([])
    assert out.shape == (0, enc.dim) and out.dtype == np.float32


def test_empty_string_is_embedded_as_cls_sep(enc):
    v = enc.encode([""])
    assert np.isfinite(v).all() and abs(np.linalg.norm(v) - 1) < 1e-5


def test_normalize_false_returns_the_pooled_vector(enc):
    raw = enc.encode(["a post", "another post"], normalize=False)
    unit = enc.encode(["a post", "another post"])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert_exact(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit)


def test_truncated_posts_are_counted(enc, sample_texts):
    enc.encode(sample_texts)
    assert enc.last_stats.truncated == [sample_texts.index(LONG_POST)]
    assert enc.last_stats.posts == len(sample_texts)


def test_truncate_false_rejects_overlong_post_with_its_index(enc):
    with pytest.raises(ValidationError, match=r"texts\[1\].*max_length \(256 tokens\).*truncate=True"):
        enc.encode(["short", LONG_POST], truncate=False)


@pytest.mark.parametrize("bad, index, typename", [(["ok", None], 1, "NoneType"), ([b"bytes"], 0, "bytes"),
                                                   (["a", "b", 3], 2, "int")])
def test_non_str_item_names_its_index_and_type(enc, bad, index, typename):
    with pytest.raises(ValidationError, match=rf"`texts\[{index}\]` must be str. Given: {typename}"):
        enc.encode(bad)


SURROGATE = "a lone surrogate .*U\\+D800.*not Unicode text.*Fix: .*encode\\('utf-8', 'replace'\\)"


def test_a_lone_surrogate_names_its_text_and_the_fix(base_torch):
    """json.loads('"\\ud800"') and bytes decoded with surrogateescape give str values that are
    not Unicode text; the tokenizer's own error (a TypeError) names neither the text nor a fix."""
    bad = ["fine", "half of a pair \ud800 here"]
    with pytest.raises(ValidationError, match=r"`texts\[1\]` holds " + SURROGATE):
        base_torch.encode(bad)
    with pytest.raises(ValidationError, match=r"`texts\[1\]` holds " + SURROGATE):
        base_torch.encode(bad, long_posts="chunk")
    with pytest.raises(ValidationError, match=r"`texts\[1\]` holds " + SURROGATE):
        base_torch.submit(bad).result()
    with pytest.raises(ValidationError, match=r"`text` holds " + SURROGATE):
        base_torch.tokenizer.tokenize(bad[1])
    assert base_torch.encode(["fine", "a whole pair \ud83d\ude42 here".encode("utf-16", "surrogatepass")
                              .decode("utf-16")]).shape == (2, 384)  # a pair joined into one character is fine


def test_a_dataframe_is_refused_not_embedded_as_its_column_names(base_torch):
    """Iterating a pandas DataFrame gives its column labels: embedding them would be a silent wrong answer."""
    import pandas as pd

    df = pd.DataFrame({"text": ["a post", "another post"], "id": [1, 2]})
    with pytest.raises(ValidationError, match=r"`texts` must be a str or a list of str. Given: DataFrame. .*column "
                                              r"names.*Fix: .*df\['text'\]"):
        base_torch.encode(df)
    with pytest.raises(ValidationError, match=r"Given: DataFrame"):
        base_torch.submit(df)
    assert base_torch.encode(df["text"]).shape == (2, 384)  # one column is a list of texts


def test_a_missing_value_is_named_with_its_value_and_the_fix(base_torch):
    """pandas' missing text is a float NaN: 'Given: float' alone does not say it is a missing value."""
    with pytest.raises(ValidationError, match=r"`texts\[1\]` must be str. Given: float \(nan\). Fix: "):
        base_torch.encode(["a post", float("nan")])


def test_non_iterable_texts_rejected(enc):
    with pytest.raises(ValidationError, match="`texts` must be a str or a list of str. Given: int"):
        enc.encode(42)
    for call in (enc.encode, enc.submit):  # a 0-d array was a bare TypeError ("iteration over a 0-d array")
        with pytest.raises(ValidationError, match=r"`texts` must be a str or a list of str. Given: ndarray\. A 0-d "
                                                  r"array holds one text\. Fix: texts\.item\(\)"):
            call(np.array("a post"))
    assert_exact(enc.encode(np.array(["a post", "another"])), enc.encode(["a post", "another"]))


def test_describe_reports_what_runs(enc):
    d = enc.describe()
    assert d["backend"] == enc.backend.name and d["dim"] == 384 and d["device"] == "cpu"
    for key in ("model_version", "precision", "pooling_kernel", "backend_reason", "packing", "max_length", "threads"):
        assert d[key], key  # threads: README "Backends" (torch's were not said)
    if enc.backend.name == "torch":
        import torch

        assert d["threads"] == torch.get_num_threads()


def test_describe_reports_the_batcher_once_started():
    with Encoder.from_pretrained("base", backend="torch", device="cpu", warmup=False) as enc:
        assert enc.describe()["batcher"] == "not started"
        enc.submit(["a post"]).result(timeout=60)
        assert enc.describe()["batcher"] == enc.batcher.implementation


def test_auto_backend_says_why():
    enc = Encoder.from_pretrained("base", backend="auto", device="cpu", warmup=False)
    assert enc.describe()["backend"] == "openvino"
    assert "fastest exact CPU backend" in enc.describe()["backend_reason"]


def test_default_resolves_to_a_registered_model():
    enc = Encoder.from_pretrained("default", backend="torch", device="cpu", warmup=False)
    assert enc.model_version


def test_the_previous_default_stays_loadable_beside_the_nested_default():
    """v4 (nested 50/32/16/8) replaced v3 as ``default``; v3 stays registered by its version so a
    store of v3 vectors can still be extended with matching ones. Both run the same graph."""
    from postemb_rt import model_dir

    new = model_dir.resolve("default").config
    old = Encoder.from_pretrained("postemb-mt50-v3", backend="torch", device="cpu", warmup=False)
    assert new.model_version == "postemb-mt50-v4" and new.matryoshka_dims == [32, 16, 8]
    assert old.model_version == "postemb-mt50-v3" and old.dim == new.projection_dim == 50
    with pytest.raises(ValidationError, match=r"`truncate_dim`"):  # v3 was not trained nested
        old.encode(["a post"], truncate_dim=16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backend": "tpu"}, r"`backend` must be one of \['auto', 'torch', 'onnxruntime'.*Given: 'tpu'"),
        ({"backend": ["torch"]}, r"`backend` must be one of .*Given: \['torch'\]"),
        ({"backend": "onnx"}, r"`backend` must be one of .*Given: 'onnx'\. Fix: backend='onnxruntime' \("
                              r"sentence-transformers' 'onnx'"),
        ({"precision": "int3"}, r"`precision` must be one of .*Given: 'int3'"),
        ({"device": "gpu0"}, r"`device` must be 'auto', 'cpu' or 'cuda\[:N\]'. Given: 'gpu0'"),
        ({"device": "cuda-1"}, r"`device` must be 'auto', 'cpu' or 'cuda\[:N\]'.*Given: 'cuda-1'"),
        ({"device": 0}, r"`device` must be 'auto', 'cpu' or 'cuda\[:N\]'.*Given: 0"),
        ({"max_length": 1000}, r"`max_length` must be between 3 \(2 special tokens and one of text\) and the model's "
                               r"max_length \(256\). Given: 1000"),
        ({"max_length": 2}, r"`max_length` must be between 3 \(2 special tokens and one of text\) and .*Given: 2\."),
        ({"max_batch_tokens": 100}, r"`max_batch_tokens` must be an int >= max_length \(256\). Given: 100"),
        # 0 used to be the default silently; "4096" a bare TypeError; 4096.0 loaded, and failed at the first submit
        ({"max_batch_tokens": 0}, r"`max_batch_tokens` must be an int >= max_length \(256\). Given: 0"),
        ({"max_batch_tokens": "4096"}, r"`max_batch_tokens` must be an int >= max_length \(256\). Given: '4096'"),
        ({"max_batch_tokens": 4096.0}, r"`max_batch_tokens` must be an int >= max_length \(256\). Given: 4096\.0"),
        ({"max_batch_tokens": True}, r"`max_batch_tokens` must be an int >= max_length \(256\). Given: True"),
        ({"max_length": 64, "max_batch_tokens": 32}, r"`max_batch_tokens` must be an int >= max_length \(64\)"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(kwargs, match, monkeypatch):
    from postemb_rt import backends

    real = backends.backend_class

    def not_loaded(name):  # each is refused before a backend loads the model
        real(name)  # which checks the name
        raise AssertionError(f"the {name} backend was loaded")

    monkeypatch.setattr(backends, "backend_class", not_loaded)
    with pytest.raises(ValidationError, match=match):
        Encoder.from_pretrained("base", **{"backend": "torch", **kwargs})


def test_max_batch_tokens_is_any_int_type_and_checked_per_call(base_onnx, sample_texts):
    """A numpy int is an int (it loaded, then the first submit refused it); encode's own budget is
    checked too (0 was the encoder's default silently, a str a bare TypeError); a row longer than a
    small budget runs alone, as before."""
    with Encoder.from_pretrained("base", backend="onnxruntime", max_batch_tokens=np.int64(512), warmup=False) as e:
        assert type(e.max_batch_tokens) is int and e.describe()["max_batch_tokens"] == 512
        assert_exact(e.submit(sample_texts[:3]).result(), base_onnx.encode(sample_texts[:3]))
    assert_exact(base_onnx.encode(sample_texts, max_batch_tokens=np.int64(8)), base_onnx.encode(sample_texts))
    for bad in (0, -5, "300", 300.0, False):
        with pytest.raises(ValidationError, match=rf"`max_batch_tokens` must be an int >= 1\. Given: {bad!r}"):
            base_onnx.encode(sample_texts, max_batch_tokens=bad)


def test_device_takes_a_torch_device_and_none_as_sentence_transformers_does():
    """enc.device is a torch.device, so code that loads a second Encoder beside the first passes one;
    SentenceTransformer(device=None) picks the device, as "auto" does."""
    import torch

    for device in (torch.device("cpu"), None):
        enc = Encoder.from_pretrained("base", backend="torch", device=device, warmup=False)
        assert enc.device == torch.device("cpu") and enc.describe()["device"] == "cpu"


@pytest.mark.parametrize("args, kwargs", [(("default",), {}), ((), {"model_name_or_path": "base"}), ((), {})])
def test_the_constructor_called_as_sentence_transformers_names_from_pretrained(args, kwargs):
    """SentenceTransformer("name") loads a model; Encoder("name") used to fail on 'missing 2 required
    positional arguments: backend and backend_reason', which names neither the mistake nor the fix."""
    with pytest.raises(ValidationError, match=r"Encoder\(\.\.\.\) is built by Encoder\.from_pretrained.*Fix: "
                                              r"Encoder\.from_pretrained\("):
        Encoder(*args, **kwargs)


def test_missing_model_directory_says_how_to_fix(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a registered name .* Fix:"):
        Encoder.from_pretrained(str(tmp_path / "nope"))


def test_cuda_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        Encoder.from_pretrained("base", backend="torch", device="cuda")


def test_a_closed_encoder_refuses_every_call_by_name():
    from postemb_rt.errors import BatcherClosedError

    enc = Encoder.from_pretrained("base", backend="onnxruntime", warmup=False)
    enc.close()
    for call in (lambda: enc.encode(["a post"]), lambda: enc.submit(["a post"])):
        with pytest.raises(BatcherClosedError, match="this Encoder is closed. Fix: load another"):
            call()


def test_close_waits_for_an_encode_running_on_another_thread(base_onnx, sample_texts):
    """close() drains: an encode already running on another thread finishes with every row (the backend was
    released under it: AttributeError on NoneType at its next batch), and later calls are refused."""
    import threading

    from postemb_rt.errors import BatcherClosedError

    enc = Encoder.from_pretrained("base", backend="onnxruntime", warmup=False)
    inside, release, real = threading.Event(), threading.Event(), enc.backend.embed

    def embed(*args, **kwargs):  # the first batch holds until the test has called close()
        inside.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    enc.backend.embed = embed
    got = {}
    worker = threading.Thread(target=lambda: got.update(v=enc.encode(sample_texts, batch_size=2)))
    worker.start()
    assert inside.wait(60)
    closer = threading.Thread(target=enc.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # waiting for the running encode
    with pytest.raises(BatcherClosedError, match="this Encoder is closed"):  # closing: nothing new starts
        enc.encode(["a post"])
    release.set()
    worker.join(60)
    closer.join(60)
    assert not closer.is_alive() and enc.describe()["batcher"] == "closed"
    assert_exact(got["v"], base_onnx.encode(sample_texts))
