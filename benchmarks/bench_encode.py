"""End-to-end encode throughput: each backend of this project vs sentence-transformers.

    pytest benchmarks/bench_encode.py --benchmark-only            # 4000 short posts
    POSTEMB_BENCH_N=200 pytest benchmarks/bench_encode.py --benchmark-disable   # as a test

extra_info carries posts/s and tokens/s; the baseline is sentence-transformers'
`SentenceTransformer(base).encode(texts, batch_size=32)`.
"""
import pytest

PROVIDERS = ["sentence-transformers", "torch", "onnxruntime", "openvino"]


ST_BACKENDS = ("torch", "onnx", "openvino")  # SentenceTransformer(..., backend=...)


def make_encode(provider, model: str = "base"):
    """A callable texts -> (n, d) float32 for one provider, loaded and warmed up:

    - "sentence-transformers": ``SentenceTransformer(base)`` on torch in float32, the baseline;
      "sentence-transformers:openvino" (or ":onnx"): the same model on sentence-transformers' own
      ``backend=`` (exported by optimum at load, OpenVINO at its own default precision: bf16 on a
      CPU with native bf16; needs optimum-intel, README "Benchmarks");
    - this project's backend with an optional ":precision", e.g. "onnxruntime:int8" or "auto:auto",
      and an optional "@chunk" for long_posts="chunk", e.g. "onnxruntime@chunk".

    The callables carry ``precision`` and ``backend``: what ran ("auto" resolved)."""
    if provider.split(":")[0] == "sentence-transformers":
        return _sentence_transformers(provider.partition(":")[2] or "torch")
    from postemb_rt import Encoder

    provider, _, mode = provider.partition("@")  # "@chunk": long_posts="chunk" (whole long posts)
    backend, _, precision = provider.partition(":")
    enc = Encoder.from_pretrained(model, backend=backend, device="cpu", precision=precision or "fp32",
                                  long_posts=mode or "truncate")

    def encode(texts):
        return enc.encode(texts)

    encode.precision = enc.backend.precision  # what "auto" resolved to (compare.py's ceiling column)
    encode.backend = enc.backend.name
    return encode


def _sentence_transformers(backend: str):
    if backend not in ST_BACKENDS:
        raise ValueError(f"provider `sentence-transformers:{backend}`: the backend must be one of {list(ST_BACKENDS)}. "
                         f"Given: {backend!r}.")
    from sentence_transformers import SentenceTransformer

    from postemb_rt.model_dir import base_encoder_path

    st = SentenceTransformer(str(base_encoder_path()), device="cpu", backend=backend)
    st.encode(["warm up"])

    def encode(texts):
        return st.encode(texts, batch_size=32, normalize_embeddings=True)

    encode.backend = f"sentence-transformers+{backend}"
    encode.precision = "fp32"
    if backend == "openvino":  # the precision OpenVINO chose for the compiled model (its default, not ours)
        from postemb_rt.backends.openvino_backend import PRECISION_OF_HINT, inference_precision

        hint = inference_precision(st[0].auto_model.request)
        encode.precision = PRECISION_OF_HINT.get(hint, hint)
    return encode


def token_lengths(texts, chunk: bool = False) -> list[int]:
    """Real tokens per sequence the model computes: each truncated post, or (``chunk``) each
    window of long_posts="chunk"."""
    from postemb_rt.long_posts import DEFAULT_MAX_CHUNKS, DEFAULT_OVERLAP
    from postemb_rt.model_dir import resolve
    from postemb_rt.tokenization import PostTokenizer

    md = resolve("base")
    tok = PostTokenizer(md.tokenizer_path, md.config.max_length)
    if chunk:
        return [len(w) for post in tok.windows(texts, DEFAULT_OVERLAP) for w in post[:DEFAULT_MAX_CHUNKS]]
    return list(tok(texts).lengths)


def count_tokens(texts, chunk: bool = False) -> int:
    """Real tokens the model computes: truncated posts, or (``chunk``) every window of long_posts="chunk"."""
    return int(sum(token_lengths(texts, chunk)))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_encode_short_posts(benchmark, provider, short_workload):
    encode = make_encode(provider)
    out = benchmark.pedantic(encode, args=(short_workload,), rounds=3, iterations=1, warmup_rounds=0)
    assert out.shape == (len(short_workload), 384)
    if benchmark.stats is not None:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["posts_per_s"] = round(len(short_workload) / seconds, 1)
        benchmark.extra_info["tokens_per_s"] = round(count_tokens(short_workload) / seconds, 1)


@pytest.mark.parametrize("provider", ["onnxruntime", "onnxruntime@chunk"])
def test_encode_long_posts(benchmark, provider, long_workload):
    """The long-post workload, truncated vs embedded whole (chunk mode: more windows, more tokens)."""
    encode = make_encode(provider)
    out = benchmark.pedantic(encode, args=(long_workload,), rounds=3, iterations=1, warmup_rounds=0)
    assert out.shape == (len(long_workload), 384)
    if benchmark.stats is not None:
        benchmark.extra_info["posts_per_s"] = round(len(long_workload) / benchmark.stats.stats.median, 1)


def test_sentence_transformers_providers_name_their_backend_and_refuse_an_unknown_one():
    encode = make_encode("sentence-transformers:torch")
    assert (encode.backend, encode.precision) == ("sentence-transformers+torch", "fp32")
    assert encode(["a post", "another post"]).shape == (2, 384)
    with pytest.raises(ValueError, match=r"the backend must be one of \['torch', 'onnx', 'openvino'\]. Given: 'tensorrt'"):
        make_encode("sentence-transformers:tensorrt")
