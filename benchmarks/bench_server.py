"""``postemb serve`` under closed-loop HTTP load on loopback: single-post requests from 1 and
64 clients and 64-post requests from 4, against a real server process (model "base",
onnxruntime). The full sweep with the bulk comparison is benchmarks/load_server.py.

    pytest benchmarks/bench_server.py --benchmark-only -s                        # 1000 requests a case
    POSTEMB_BENCH_N=200 pytest benchmarks/bench_server.py --benchmark-disable    # as a test (short)

extra_info: posts_per_s, p50_ms, p99_ms.
"""
import asyncio
import json

import numpy as np
import pytest

from benchmarks.conftest import bench_n
from benchmarks.load_server import _closed_loop, load_posts, start_server

for _name in ("fastapi", "uvicorn", "prometheus_client"):
    pytest.importorskip(_name, reason="the server needs the [serve] extra")


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("base", "onnxruntime", "--precision", "fp32")  # the rows of RESULTS.md: exact
    yield url
    proc.terminate()
    assert proc.wait(60) == 0


def _run(url, path, bodies, posts_per_request, clients, requests):
    seconds, lat, errors = asyncio.run(_closed_loop(url, path, bodies, clients, requests, None))
    assert not errors and len(lat) == requests, errors
    return seconds, lat, posts_per_request


def _record(benchmark, result):
    seconds, lat, per_request = result
    line = {"posts_per_s": len(lat) * per_request / seconds, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3)}
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info.update({k: round(v, 3) for k, v in line.items()})
    print("\n" + json.dumps(line))


@pytest.mark.parametrize("clients", [1, 64])
def test_single_post_requests(benchmark, server, clients):
    quick = getattr(benchmark, "disabled", False)
    requests = max(min(bench_n(1000), 100) if quick else bench_n(1000), clients)
    bodies = [json.dumps({"input": t}).encode() for t in load_posts(max(requests, 64))]
    result = benchmark.pedantic(_run, args=(server, "/v1/embeddings", bodies, 1, clients, requests), rounds=1,
                                iterations=1)
    _record(benchmark, result)


def test_64_post_requests(benchmark, server):
    quick = getattr(benchmark, "disabled", False)
    requests = 4 if quick else max(bench_n(1000) // 64, 8)
    posts = load_posts(64 * 8)
    bodies = [json.dumps({"inputs": posts[i:i + 64]}).encode() for i in range(0, len(posts), 64)]
    result = benchmark.pedantic(_run, args=(server, "/embed_full", bodies, 64, 4, requests), rounds=1, iterations=1)
    _record(benchmark, result)
