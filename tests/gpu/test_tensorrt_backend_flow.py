"""The tensorrt backend's data flow on CPU, with a stand-in engine (hidden states = a fixed
embedding table lookup) and host memory in place of device memory: shapes and addresses
bound per batch, rows beyond the profile split, pooling + projection + normalisation by the
Triton kernel (interpreted), output order. What it cannot show: real TensorRT or CUDA."""
import contextlib
import sys
import types

import numpy as np
import pytest
import torch

from postemb_rt.engine_meta import INPUTS, EngineMeta, ShapeProfile, file_sha256
from postemb_rt.errors import EngineMismatchError
from postemb_rt.ops.reference import masked_mean_pool_l2_ref
from tests.conftest import assert_exact
from tests.gpu import fake_tensorrt

# A CPU simulation: the Triton kernel runs interpreted on CPU tensors, which a CUDA build of
# Triton refuses. On a CUDA machine test_torch_cuda.py and benchmarks/gpu_suite.py run the real path.
pytestmark = pytest.mark.skipif("__import__('torch').cuda.is_available()",
                                reason="CPU simulation of the GPU path; this machine runs the real one")

H, D, VOCAB = 384, 50, 1000


def write_meta(directory, lo=(1, 1)):
    prof = ShapeProfile(lo, (4, 8), (4, 32)).as_dict()  # at most 4 rows: larger batches are split
    EngineMeta(precision="fp16", inputs={n: prof for n in INPUTS}, hidden_size=H, model_version="test-v1",
               tensorrt_version="10.9.0", compute_capability="9.0", device_name="Fake H100",
               engine_sha256=file_sha256(directory / "model.plan"), engine_bytes=4).write(directory)


@pytest.fixture()
def engine_dir(onnx_dir):
    import json

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    save_file({"weight": torch.randn(D, H, generator=g) / H**0.5, "bias": torch.randn(D, generator=g) * 0.1},
              str(onnx_dir / "projection.safetensors"))
    cfg = json.loads((onnx_dir / "postemb.json").read_text())
    (onnx_dir / "postemb.json").write_text(json.dumps({**cfg, "projection_dim": D}))
    (onnx_dir / "model.plan").write_bytes(b"PLAN")
    write_meta(onnx_dir)
    return onnx_dir


@pytest.fixture()
def table():
    return np.random.default_rng(1).standard_normal((VOCAB, H)).astype(np.float32)


@pytest.fixture()
def backend(engine_dir, table, monkeypatch):
    return make_backend(engine_dir, table, monkeypatch)


def make_backend(engine_dir, table, monkeypatch, lo=(1, 1)):
    """A TensorRTBackend on the stand-in engine (profile min ``lo``, max 4x32), its tensors kept on the CPU."""
    write_meta(engine_dir, lo)
    trt = fake_tensorrt.add_runtime(fake_tensorrt.make(), lambda ids, mask: table[ids], profile=(lo, (4, 32)))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "device", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a: types.SimpleNamespace(cuda_stream=0))
    from postemb_rt.backends import tensorrt_backend
    from postemb_rt.model_dir import load_model_dir

    monkeypatch.setattr(tensorrt_backend, "_device", lambda torch, device: torch.device("cpu"))
    be = tensorrt_backend.TensorRTBackend(load_model_dir(engine_dir), device="cuda", precision="fp16")
    be.calls = trt.calls
    return be


def batch(rows, seq, seed=2):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (rows, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, rows)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return np.ascontiguousarray(ids * mask), mask


def expected(backend, table, ids, mask, normalize=True):
    w, b = backend._pool.weight, backend._pool.bias
    return masked_mean_pool_l2_ref(torch.from_numpy(table[ids]), torch.from_numpy(mask), w, b,
                                   normalize=normalize, dtype=torch.float64).float().numpy()


@pytest.mark.parametrize("rows, seq", [(1, 1), (3, 7), (4, 32), (11, 17)])
def test_embeddings_match_the_reference_and_rows_beyond_the_profile_are_split(backend, table, rows, seq):
    ids, mask = batch(rows, seq)
    got = backend.embed(ids, mask)
    assert got.shape == (rows, D) and got.dtype == np.float32
    assert_exact(got, expected(backend, table, ids, mask))
    runs = [c for c in backend.calls if c[0] == "execute_async_v3"]
    assert [c[1] for c in runs] == [min(4, rows - i) for i in range(0, rows, 4)] and all(c[2] == seq for c in runs)


def test_unnormalized_output_is_the_projected_mean(backend, table):
    ids, mask = batch(5, 9)
    assert_exact(backend.embed(ids, mask, normalize=False), expected(backend, table, ids, mask, normalize=False))


def test_seq_beyond_the_profile_raises_before_running(backend):
    ids, mask = batch(2, 33)
    with pytest.raises(EngineMismatchError, match=r"seq length 33 is outside .*seq 1..32"):
        backend.embed(ids, mask)
    assert not [c for c in backend.calls if c[0] == "execute_async_v3"]


@pytest.mark.parametrize("rows, seq", [(1, 3), (3, 7), (6, 8), (5, 20)])
def test_batches_below_the_profile_minimum_are_padded_up_to_it(engine_dir, table, monkeypatch, rows, seq):
    """An engine built with --min-shape 2x8: fewer rows or a shorter padded length than that are
    padded up to it (extra rows dropped, extra columns masked), not refused by TensorRT."""
    be = make_backend(engine_dir, table, monkeypatch, lo=(2, 8))
    ids, mask = batch(rows, seq)
    assert_exact(be.embed(ids, mask), expected(be, table, ids, mask))
    runs = [c[1:] for c in be.calls if c[0] == "execute_async_v3"]
    assert runs == [(max(2, min(4, rows - i)), max(8, seq)) for i in range(0, rows, 4)]


def test_describe_names_engine_profile_and_kernel(backend):
    info = backend.describe()
    assert info["backend"] == "tensorrt" and info["precision"] == "fp16" and info["profile"]["max"] == [4, 32]
    assert info["pooling_kernel"] == "triton masked_mean_pool_l2" and info["tensorrt_version"] == "10.9.0"
    assert backend.max_batch_tokens == 128
