"""Dynamic batcher under closed-loop load: 1, 8, 64, 256 concurrent callers each sending
single short posts, vs the naive alternative (encode([post]) under one lock) and vs one
offline bulk encode, all on one onnxruntime model in the same run.

    pytest benchmarks/bench_batcher.py --benchmark-only -s          # 1000 requests per case
    POSTEMB_BENCH_N=200 pytest benchmarks/bench_batcher.py --benchmark-disable   # as a test
                                                 # (then at most 50 requests per case, or 1 per caller)

extra_info: posts_per_s, p50_ms, p99_ms, padding_ratio, mean_batch_size. The closed-loop
driver is benchmarks/load_batcher.py (also a script printing the same table).
"""
import pytest

from benchmarks.conftest import bench_n
from benchmarks.load_batcher import load_encoder, run_batcher, run_bulk, run_naive

CALLERS = [1, 8, 64, 256]


@pytest.fixture(scope="module")
def posts():
    from postemb_rt.data import data_root, short_posts

    if data_root(required=False) is None:
        pytest.skip("shared data not found (set POSTEMB_DATA)")
    return short_posts(max(bench_n(1000), 2 * max(CALLERS)))


@pytest.fixture(scope="module")
def encoder():
    enc = load_encoder("onnxruntime")
    enc.encode(["warm up"] * 32)
    yield enc
    enc.close()


def _record(benchmark, result):
    if benchmark.stats is not None:  # None under --benchmark-disable
        for k in ("posts_per_s", "p50_ms", "p99_ms", "padding_ratio", "mean_batch_size"):
            benchmark.extra_info[k] = round(getattr(result, k), 3)
    print("\n" + result.line())


def test_bulk_encode(benchmark, encoder, posts):
    n = bench_n(1000)
    result = benchmark.pedantic(run_bulk, args=(encoder, posts[:n]), rounds=1, iterations=1)
    assert result.requests == n
    _record(benchmark, result)


@pytest.mark.parametrize("callers", CALLERS)
@pytest.mark.parametrize("mode", ["batcher", "naive"])
def test_closed_loop(benchmark, encoder, posts, mode, callers):
    n = bench_n(1000)
    quick = getattr(benchmark, "disabled", False)  # run as a test: exercise every caller, no more
    if quick:
        n = min(n, 50)
    if mode == "batcher":
        fn, requests = run_batcher, max(n, (1 if quick else 2) * callers)
    else:  # one post at a time under a lock: fewer requests keep the run short
        fn, requests = run_naive, max(n // 4, callers)
    result = benchmark.pedantic(fn, args=(encoder, posts, callers, requests), rounds=1, iterations=1)
    assert result.requests == requests and result.posts_per_s > 0
    _record(benchmark, result)
