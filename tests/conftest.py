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


# "Exact" means float32. A model silently running in bf16 passes cosine >= 0.9999 (its minimum
# cosine to float32 is ~0.99996) but not these: its components are off by ~1e-3.
EXACT_ATOL = 1e-5  # max abs error per component
EXACT_COS = 0.999999  # min row-wise cosine


def exact_errors(got, want):
    """(max abs error per component, min row-wise cosine) of two (n, d) arrays (float64 maths)."""
    import numpy as np

    got = np.atleast_2d(np.asarray(got, dtype=np.float64))
    want = np.atleast_2d(np.asarray(want, dtype=np.float64))
    assert got.shape == want.shape, f"shapes differ: {got.shape} vs {want.shape}"
    return float(np.abs(got - want).max()), float(cosines(got, want).min())


def assert_exact(got, want, atol: float = EXACT_ATOL, min_cos: float = EXACT_COS):
    """Float32 agreement: max |got - want| <= atol per component AND every row's cosine >= min_cos.
    Returns the measured (max abs error, min cosine)."""
    err, cos = exact_errors(got, want)
    assert err <= atol and cos >= min_cos, (
        f"not exact (float32): max abs error {err:.3g} (bar {atol:g}), min cosine {cos:.9f} (bar {min_cos})")
    return err, cos
