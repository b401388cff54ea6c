"""Closed-loop load on the dynamic batcher: C concurrent callers, each sending single posts
from the short-post workload and waiting for the answer before sending the next.

    python benchmarks/load_batcher.py                        # 1, 8, 64, 256 callers
    python benchmarks/load_batcher.py --callers 64 --requests 2000 --naive-requests 300

Compares, in the same run and on the same loaded model (onnxruntime):
  * batcher: ``Encoder.submit([post]).result()`` (the C++ dynamic batcher);
  * naive:   ``encode([post])`` under one lock (each caller waits its turn);
  * bulk:    one offline ``encode(all posts)`` call (the throughput ceiling).
Prints one line per case: posts/s, p50 and p99 latency, padding ratio, mean batch size.
"""
from __future__ import annotations

import argparse
import itertools
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class LoadResult:
    mode: str
    callers: int
    requests: int
    seconds: float
    posts_per_s: float
    p50_ms: float
    p99_ms: float
    padding_ratio: float
    mean_batch_size: float

    def line(self) -> str:
        return (f"{self.mode:8s} callers={self.callers:4d} requests={self.requests:5d} "
                f"{self.posts_per_s:8.1f} posts/s  p50 {self.p50_ms:7.1f} ms  p99 {self.p99_ms:7.1f} ms  "
                f"padding {self.padding_ratio:5.3f}  batch {self.mean_batch_size:5.1f}")


def closed_loop(call, posts: list[str], callers: int, requests: int) -> tuple[float, np.ndarray]:
    """Run `requests` calls of call(post) from `callers` threads in closed loop (each thread
    sends its next post when the previous one is answered). Returns (wall seconds, latencies
    in seconds). Posts are taken in workload order, cycling."""
    counter = itertools.count()
    latencies = np.zeros(requests)
    errors: list[BaseException] = []
    start_gate = threading.Barrier(callers + 1)

    def worker():
        start_gate.wait()
        while True:
            i = next(counter)
            if i >= requests:
                return
            t0 = time.perf_counter()
            try:
                call(posts[i % len(posts)])
            except BaseException as exc:  # noqa: BLE001 - surfaced after the run
                errors.append(exc)
                return
            latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(callers)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, latencies


def _result(mode, callers, wall, lat, padding=0.0, batch=1.0) -> LoadResult:
    return LoadResult(mode, callers, len(lat), wall, len(lat) / wall, float(np.percentile(lat, 50) * 1e3),
                      float(np.percentile(lat, 99) * 1e3), padding, batch)


def run_batcher(enc, posts, callers: int, requests: int) -> LoadResult:
    """Closed loop through Encoder.submit; padding and batch size from the batcher's stats."""
    before = enc.batcher.stats()
    wall, lat = closed_loop(lambda p: enc.submit([p]).result(), posts, callers, requests)
    after = enc.batcher.stats()
    padded = after["padded_tokens_computed"] - before["padded_tokens_computed"]
    real = after["tokens_computed"] - before["tokens_computed"]
    batches = after["batches"] - before["batches"]
    return _result("batcher", callers, wall, lat, 1.0 - real / padded if padded else 0.0,
                   (after["posts_computed"] - before["posts_computed"]) / max(batches, 1))


def run_naive(enc, posts, callers: int, requests: int) -> LoadResult:
    """Closed loop of encode([post]) under one lock: the alternative without a batcher."""
    lock = threading.Lock()

    def call(p):
        with lock:
            return enc.encode([p])

    wall, lat = closed_loop(call, posts, callers, requests)
    return _result("naive", callers, wall, lat)


def run_bulk(enc, posts) -> LoadResult:
    """One offline encode of all posts; latency = the whole call."""
    t0 = time.perf_counter()
    enc.encode(posts)
    wall = time.perf_counter() - t0
    r = _result("bulk", 1, wall, np.full(len(posts), wall), enc.last_stats.padding_ratio,
                len(posts) / max(enc.last_stats.batches, 1))
    return r


def load_encoder(backend: str = "onnxruntime", precision: str = "fp32", **batcher_options):
    from postemb_rt import Encoder

    enc = Encoder.from_pretrained("base", backend=backend, device="cpu", precision=precision)
    enc.start_batcher(**batcher_options)
    enc.submit("warm up the batcher").result()
    return enc


def main(argv=None) -> None:
    from postemb_rt.data import short_posts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--callers", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--requests", type=int, default=1000, help="requests per batcher case")
    ap.add_argument("--naive-requests", type=int, default=250, help="requests per naive case")
    ap.add_argument("--bulk", type=int, default=1000, help="posts in the bulk encode")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--precision", default="fp32",
                     help="fp32 (exact), or bf16 / int8 on CPU (gated by measured fidelity; which backend runs "
                          "each: README \"Fast precisions\")")
    ap.add_argument("--max-wait-us", type=int, default=500)
    ap.add_argument("--batch-overhead-tokens", type=int, default=64)
    ap.add_argument("--max-batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    posts = short_posts(max(args.requests, args.naive_requests, args.bulk))
    enc = load_encoder(args.backend, args.precision, max_wait_us=args.max_wait_us,
                       batch_overhead_tokens=args.batch_overhead_tokens, max_batch_size=args.max_batch_size)
    ran = enc.describe()
    print(f"model base backend {args.backend} precision {args.precision}: ran {ran['backend']} {ran['precision']}",
          flush=True)
    enc.encode(posts[:64])  # warm up
    results = [run_bulk(enc, posts[: args.bulk])]
    print(results[-1].line(), flush=True)
    by = {}
    for c in args.callers:
        for r in (run_batcher(enc, posts, c, args.requests), run_naive(enc, posts, c, args.naive_requests)):
            results.append(r)
            by[(r.mode, c)] = r
            print(r.line(), flush=True)
    # Bulk again: on a shared machine the load of others drifts; compare against both.
    results.append(run_bulk(enc, posts[: args.bulk]))
    print(results[-1].line(), flush=True)
    bulk = (results[0].posts_per_s + results[-1].posts_per_s) / 2
    for c in args.callers:
        b, n = by[("batcher", c)], by[("naive", c)]
        print(f"callers={c:4d}: batcher = {b.posts_per_s / bulk:5.1%} of bulk (mean of both bulk runs), "
              f"{b.posts_per_s / n.posts_per_s:4.2f}x naive", flush=True)
    enc.close()
    return [asdict(r) for r in results]


if __name__ == "__main__":
    main()
