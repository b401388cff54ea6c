"""torch backend on CUDA: bucket planning and padding (pure, CPU), precision validation,
and (CUDA only) graphs vs eager vs the CPU float32 reference."""
import numpy as np
import pytest

from postemb_rt import Encoder
from postemb_rt.backends.torch_cuda import (fill_padded, l2_normalize, pick_bucket, plan_buckets, seq_buckets,
                                            split_rows)
from postemb_rt.errors import BackendUnavailableError, ValidationError
from tests.conftest import assert_exact
from tests.gpu.conftest import needs_cuda


@pytest.mark.parametrize("max_length, want", [(256, [16, 32, 64, 128, 256]), (100, [16, 32, 64, 100]),
                                              (8, [8]), (512, [16, 32, 64, 128, 256, 512])])
def test_seq_buckets_end_at_max_length(max_length, want):
    assert seq_buckets(max_length) == want


def test_buckets_respect_the_token_budget_and_row_cap():
    buckets = plan_buckets(256, 4096, max_rows=64)
    assert all(b * s <= 4096 and b <= 64 for b, s in buckets)
    assert (64, 64) in buckets and (16, 256) in buckets and (32, 256) not in buckets
    assert {s for _, s in buckets} == {16, 32, 64, 128, 256} and all((1, s) in buckets for s in (16, 256))
    assert plan_buckets(256, 100)[-1] == (1, 256)  # a budget below max_length still gets one row per seq


@pytest.mark.parametrize("rows, seq, want", [(1, 1, (1, 16)), (3, 17, (4, 32)), (16, 16, (16, 16)),
                                             (1, 256, (1, 256)), (17, 200, None), (65, 16, None)])
def test_pick_bucket_takes_the_fewest_padded_slots(rows, seq, want):
    assert pick_bucket(plan_buckets(256, 4096, max_rows=64), rows, seq) == want


def test_pick_bucket_prefers_shorter_seq_on_ties():
    assert pick_bucket([(2, 32), (4, 16)], 1, 10) == (4, 16)


@pytest.mark.parametrize("rows, seq, want", [(10, 16, [(0, 10)]), (300, 16, [(0, 64), (64, 128), (128, 192),
                                                                         (192, 256), (256, 300)]),
                                             (40, 200, [(0, 16), (16, 32), (32, 40)]), (1, 257, [])])
def test_split_rows_fits_each_chunk_in_a_bucket(rows, seq, want):
    buckets = plan_buckets(256, 4096, max_rows=64)
    chunks = split_rows(buckets, rows, seq)
    assert chunks == want
    assert all(pick_bucket(buckets, b - a, seq) is not None for a, b in chunks)


def test_fill_padded_keeps_rows_and_gives_padding_rows_one_token():
    ids = np.arange(1, 7, dtype=np.int64).reshape(2, 3)
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.int64)
    dst_ids, dst_mask = np.full((4, 5), 9, np.int64), np.full((4, 5), 9, np.int64)
    fill_padded(dst_ids, dst_mask, ids, mask)
    np.testing.assert_array_equal(dst_ids, [[1, 2, 3, 0, 0], [4, 5, 6, 0, 0], [0] * 5, [0] * 5])
    np.testing.assert_array_equal(dst_mask, [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]])


def test_l2_normalize_matches_torch_and_keeps_zero_rows():
    import torch

    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, -2e-3]], dtype=np.float32)
    want = torch.nn.functional.normalize(torch.from_numpy(x), dim=-1).numpy()
    np.testing.assert_allclose(l2_normalize(x), want, rtol=1e-6)


@pytest.mark.parametrize("backend,precision", [("torch", "fp16"), ("onnxruntime", "fp16"), ("onnxruntime", "bf16")])
def test_cpu_backends_reject_precisions_they_do_not_run(backend, precision):
    """fp16 is CUDA-only; bf16 on CPU runs on torch (tests/test_precision.py), int8 on onnxruntime."""
    with pytest.raises(ValidationError, match=rf"`precision` for the {backend} backend (on CPU )?must be one of .*"
                                              rf"Given: '{precision}'. Fix: fp16 is CUDA-only"):
        Encoder.from_pretrained("base", backend=backend, device="cpu", precision=precision, warmup=False)


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_backend_unavailable():
    with pytest.raises(BackendUnavailableError, match=r"torch sees no CUDA device"):
        Encoder.from_pretrained("base", backend="torch", device="cuda", precision="bf16", warmup=False)


def test_unknown_cuda_precision_is_a_validation_error():
    from postemb_rt.backends.torch_backend import TorchBackend
    from postemb_rt.model_dir import resolve

    with pytest.raises(ValidationError, match=r"on CUDA must be one of \('fp32', 'fp16', 'bf16'\). Given: 'int8'"):
        TorchBackend(resolve("base"), device="cuda", precision="int8")


@needs_cuda
@pytest.mark.parametrize("precision, min_cos", [("fp32", None), ("fp16", 0.999), ("bf16", 0.995)])
def test_graphs_and_eager_match_the_cpu_reference(sample_texts, monkeypatch, precision, min_cos):
    ref = Encoder.from_pretrained("base", backend="torch", device="cpu").encode(sample_texts)
    graphs = Encoder.from_pretrained("base", backend="torch", device="cuda", precision=precision)
    assert graphs.describe()["cuda_graphs"].endswith("buckets"), graphs.describe()
    got = graphs.encode(sample_texts, batch_size=3)
    monkeypatch.setenv("POSTEMB_CUDA_GRAPHS", "0")
    eager = Encoder.from_pretrained("base", backend="torch", device="cuda", precision=precision)
    assert eager.describe()["cuda_graphs"].startswith("off")
    for out in (got, eager.encode(sample_texts, batch_size=3)):
        if precision == "fp32":  # exact: float32 on the GPU too (TF32 matmuls would fail this)
            assert_exact(out, ref)
        else:
            assert np.sum(ref * out, axis=1).min() >= min_cos
    if precision == "fp32":  # padding to a bucket never changes a row
        assert_exact(got, eager.encode(sample_texts, batch_size=3))
