"""Benchmark fixtures. `POSTEMB_BENCH_N` sets the workload size (default 4000 posts; CI
runs the benchmarks as tests with `--benchmark-disable` and a small N)."""
import os

import pytest


def bench_n(default: int = 4000) -> int:
    return int(os.environ.get("POSTEMB_BENCH_N", default))


@pytest.fixture(scope="session")
def short_workload():
    from postemb_rt.data import data_root, short_posts

    if data_root(required=False) is None:
        pytest.skip("shared data not found (set POSTEMB_DATA)")
    return short_posts(bench_n())


@pytest.fixture(scope="session")
def long_workload():
    """Long posts (median ~100 tokens, some past max_length): postemb_rt.data.long_posts."""
    from postemb_rt.data import data_root, long_posts

    if data_root(required=False) is None:
        pytest.skip("shared data not found (set POSTEMB_DATA)")
    return long_posts(max(bench_n(1000) // 4, 8))
