"""Shared fixtures. Tests make their own small data; nothing here reads ../shared/data."""
import pytest


LONG_POST = " ".join(["Scaling inference for post embeddings means batching, caching and care."] * 40)

SAMPLE_TEXTS = [
    "Thrilled to announce I've joined a new team!",
    "hi",
    "",
    "We are hiring: backend engineers (Rust, Python) in Berlin & remote. DM me 🚀🚀",
    "Climate change is the defining challenge of our generation; renewables are the answer.",
    "Ünïcödé, 日本語のテキスト, and emoji 🎉 in one post.",
    LONG_POST,  # longer than max_length (256 tokens): truncated
    "Three lessons from failing my first startup: listen, ship, repeat. " * 5,
    "#MondayMotivation",
    "   leading and trailing spaces   ",
]


@pytest.fixture(scope="session")
def sample_texts():
    return list(SAMPLE_TEXTS)


@pytest.fixture(scope="session")
def base_torch():
    from postemb_rt import Encoder

    return Encoder.from_pretrained("base", backend="torch", device="cpu")


@pytest.fixture(scope="session")
def base_onnx():
    from postemb_rt import Encoder

    return Encoder.from_pretrained("base", backend="onnxruntime", device="cpu")


def cosines(a, b):
    """Row-wise cosine similarity of two (n, d) arrays."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
