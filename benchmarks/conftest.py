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
