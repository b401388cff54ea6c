"""End-to-end encode throughput: each backend of this project vs sentence-transformers.

    pytest benchmarks/bench_encode.py --benchmark-only            # 4000 short posts
    POSTEMB_BENCH_N=200 pytest benchmarks/bench_encode.py --benchmark-disable   # as a test

extra_info carries posts/s and tokens/s; the baseline is sentence-transformers'
`SentenceTransformer(base).encode(texts, batch_size=32)`.
"""
import pytest

PROVIDERS = ["sentence-transformers", "torch", "onnxruntime", "openvino"]


def make_encode(provider, model: str = "base"):
    """A callable texts -> (n, d) float32 for one provider ("sentence-transformers", or a
    backend with an optional ":precision", e.g. "onnxruntime:int8" or "auto:auto", and an optional
    "@chunk" for long_posts="chunk", e.g. "onnxruntime@chunk"), loaded and warmed up. Our
    providers' callables carry ``precision`` and ``backend``: what ran ("auto" resolved)."""
    if provider == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        from postemb_rt.model_dir import base_encoder_path

        st = SentenceTransformer(str(base_encoder_path()), device="cpu")
        st.encode(["warm up"])
        return lambda texts: st.encode(texts, batch_size=32, normalize_embeddings=True)
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
