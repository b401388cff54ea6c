"""TorchCudaRunner's bucket path on CPU: the real model and the Triton kernel (interpreted),
with graph capture replaced by "rerun the captured function on the static buffers" (what a
replay does) and CUDA streams by no-ops. Shows that staging, padding to a bucket, splitting
rows and normalising never change an embedding. What it cannot show: CUDA graph capture
itself, pinned-memory copies, fp16/bf16 kernels on a GPU."""
import contextlib
import types

import numpy as np
import pytest
import torch

from postemb_rt.backends import torch_cuda
from tests.conftest import assert_exact

# A CPU simulation: the Triton kernel runs interpreted on CPU tensors, which a CUDA build of
# Triton refuses. On a CUDA machine test_torch_cuda.py and benchmarks/gpu_suite.py run the real path.
pytestmark = pytest.mark.skipif("__import__('torch').cuda.is_available()",
                                reason="CPU simulation of the GPU path; this machine runs the real one")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The base encoder with max_length 32: three buckets (1x16, 2x16, 1x32) keep the CPU run short."""
    from postemb_rt.model_dir import BASE_PACKAGE, PostEmbConfig, load_model_dir

    root = tmp_path_factory.mktemp("short")
    (root / "postemb.json").write_text(PostEmbConfig(model_version="short", hidden_size=384, max_length=32,
                                                     encoder=f"pip:{BASE_PACKAGE}").to_json())
    return load_model_dir(root)


@pytest.fixture(scope="module")
def runner(reference, small_model):  # the reference loads transformers fully before torch.cuda is patched
    mp = pytest.MonkeyPatch()
    stub_stream = types.SimpleNamespace(wait_stream=lambda s: None, synchronize=lambda: None)
    mp.setattr(torch_cuda, "new_stream", lambda device: stub_stream)
    for name, value in (("device", lambda *a: contextlib.nullcontext()),
                        ("stream", lambda *a: contextlib.nullcontext()), ("graph_pool_handle", lambda: None),
                        ("synchronize", lambda *a: None)):
        mp.setattr(torch.cuda, name, value)

    def fake_capture(fn, pool, stream, device):
        out = fn()
        return (lambda: out.copy_(fn())), out

    mp.setattr(torch_cuda, "capture_graph", fake_capture)
    r = torch_cuda.TorchCudaRunner(small_model, "cpu", "fp32", max_batch_tokens=32, use_graphs=True)
    yield r
    mp.undo()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches: one intra-op thread is several times faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference():
    from postemb_rt.modeling import PostEmbModel
    from postemb_rt.model_dir import resolve

    model = PostEmbModel.from_model_dir(resolve("base"))

    def embed(ids, mask, normalize=True):
        with torch.inference_mode():  # one unpadded row at a time: no padding anywhere
            rows = [model(torch.from_numpy(i[m == 1][None]), torch.ones((1, int(m.sum())), dtype=torch.int64))
                    for i, m in zip(ids, mask)]
        return np.concatenate([(unit if normalize else pooled).numpy() for pooled, unit in rows])
    return embed


def batch(rows, seq, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, seq + 1, rows)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, 20000, (rows, seq), dtype=np.int64) * mask
    ids[:, 0] = 101
    return np.ascontiguousarray(ids), mask


def test_buckets_are_captured_and_reported(runner):
    assert sorted(runner._graphs) == [(1, 16), (1, 32), (2, 16)] and runner.graphs == "3 buckets"
    assert runner.describe()["attention"] == "sdpa"


@pytest.mark.parametrize("rows, seq", [(1, 1), (2, 16), (3, 20), (5, 3)])
def test_bucketed_rows_equal_the_unpadded_reference(runner, reference, rows, seq):
    ids, mask = batch(rows, seq)
    before = runner.eager_batches
    got = runner(ids, mask)
    assert runner.eager_batches == before  # more rows than a bucket holds: split, still replayed
    assert_exact(got, reference(ids, mask))


def test_unnormalized_output_is_the_pooled_vector(runner, reference):
    ids, mask = batch(2, 12, seed=3)
    assert_exact(runner(ids, mask, normalize=False), reference(ids, mask, normalize=False))


@pytest.mark.parametrize("pooling, dense", [("cls", [(24, True, "relu")]), ("mean", [(48, True, "gelu"), (8, False, None)]),
                                            ("max", []), ("mean", [(20, False, None)])])
def test_sentence_transformers_heads_match_on_the_cuda_path(tmp_path, pooling, dense):
    """The runner computes a sentence-transformers folder's pooling and Dense head as
    sentence-transformers does (eager; mean pooling with one linear head in the Triton kernel)."""
    from postemb_rt import native
    from postemb_rt.model_dir import load_model_dir
    from postemb_rt.tokenization import PostTokenizer
    from tests.test_st_folder import st_reference
    from tests.st_models import build_st_folder

    acts = {"relu": torch.nn.ReLU(), "gelu": torch.nn.GELU(), None: None}
    path = build_st_folder(tmp_path / "st", "bert", pooling=pooling, dense=[(o, b, acts[a]) for o, b, a in dense])
    texts = ["a post about hiring", "hi", "Climate change is the defining challenge of our generation."]
    want = st_reference(path, texts)
    md = load_model_dir(path)
    mp = pytest.MonkeyPatch()
    mp.setattr(torch_cuda, "new_stream", lambda device: types.SimpleNamespace(synchronize=lambda: None))
    for name in ("device", "stream"):
        mp.setattr(torch.cuda, name, lambda *a: contextlib.nullcontext())
    try:
        r = torch_cuda.TorchCudaRunner(md, "cpu", "fp32", use_graphs=False)
        ids, mask = native.pack_padded(PostTokenizer(md.tokenizer_path, md.config.max_length)(texts).ids, 0)
        got = r(ids, mask, normalize=True)
    finally:
        mp.undo()
    assert_exact(got, want)
