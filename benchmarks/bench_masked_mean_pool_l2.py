"""masked_mean_pool_l2: the C++ CPU kernel vs the torch eager composition (the reference
function in float32: mask multiply, sum, divide, matmul, add, normalise), and graph vs
external pooling end to end through the onnxruntime backend.

    pytest benchmarks/bench_masked_mean_pool_l2.py --benchmark-only
    POSTEMB_BENCH_N=64 pytest benchmarks/bench_masked_mean_pool_l2.py --benchmark-disable   # as a test

Kernel cases: extra_info gb_per_s counts the hidden states read (B*S*H*4 bytes; every token
unmasked, so the kernel skips nothing) and, for the kernel, speedup_vs_eager (run the eager
case of the same shape first: parametrize order does that). End-to-end cases: posts_per_s
on the short-post workload (POSTEMB_BENCH_N, default 4000).
"""
import numpy as np
import pytest
import torch

from postemb_rt import _C
from postemb_rt.ops.reference import masked_mean_pool_l2_ref

SHAPES = [(64, 128, 384), (256, 256, 768)]
D = 50
_median = {}  # (provider, shape) -> median seconds, for the ratio


def make_inputs(B, S, H):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, S, H, generator=g)
    mask = torch.ones(B, S, dtype=torch.int64)
    weight = torch.randn(H, D, generator=g) / H**0.5
    bias = torch.randn(D, generator=g)
    return hidden, mask, weight, bias


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("provider", ["torch-eager", "cpp"])
def test_masked_mean_pool_l2(benchmark, provider, shape):
    hidden, mask, weight, bias = make_inputs(*shape)
    if provider == "cpp":
        args = (hidden.numpy(), mask.numpy(), weight.numpy(), bias.numpy())
        fn = _C.masked_mean_pool_l2
        benchmark.extra_info["isa"] = _C.cpu_isa()
    else:
        args = (hidden, mask, weight, bias)
        fn = torch.inference_mode()(masked_mean_pool_l2_ref)
    out = benchmark.pedantic(fn, args=args, rounds=10, iterations=1, warmup_rounds=1)
    ref = masked_mean_pool_l2_ref(hidden, mask, weight, bias, dtype=torch.float64)
    err = (torch.as_tensor(np.asarray(out)).double() - ref).norm(dim=1) / ref.norm(dim=1)
    if provider == "cpp":
        assert err.max() < 1e-6  # the target: within 1e-6 relative of the reference
    benchmark.extra_info["max_rel_err"] = float(err.max())
    if benchmark.stats is not None:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median
        _median[provider, shape] = seconds
        benchmark.extra_info["gb_per_s"] = round(hidden.numel() * 4 / seconds / 1e9, 2)
        if provider == "cpp" and ("torch-eager", shape) in _median:
            benchmark.extra_info["speedup_vs_eager"] = round(_median["torch-eager", shape] / seconds, 1)


@pytest.mark.parametrize("pooling", ["graph", "external"])
def test_onnx_pooling_short_posts(benchmark, pooling, short_workload):
    from postemb_rt import Encoder
    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import cached_export

    enc = Encoder.from_pretrained(cached_export(resolve("base"), pooling=pooling).path, backend="onnxruntime",
                                  device="cpu")
    benchmark.extra_info["pooling_kernel"] = enc.describe()["pooling_kernel"]
    out = benchmark.pedantic(enc.encode, args=(short_workload,), rounds=3, iterations=1, warmup_rounds=0)
    assert out.shape == (len(short_workload), 384)
    if benchmark.stats is not None:
        benchmark.extra_info["posts_per_s"] = round(len(short_workload) / benchmark.stats.stats.median, 1)
