"""Closed-loop HTTP load on ``postemb serve`` (loopback only): C concurrent clients, each on
its own keep-alive connection, sending a request and waiting for the answer before the next.

    python benchmarks/load_server.py                      # starts a server, 1/16/64/256 clients
    python benchmarks/load_server.py --clients 64 --requests 3000
    python benchmarks/load_server.py --url http://127.0.0.1:8080 --api-key KEY   # a running server

Cases, all in one run and on the same model:
  * bulk:    offline ``Encoder.encode(posts)`` in this process while the server is idle (the
             throughput ceiling; same backend as the server);
  * single:  ``POST /v1/embeddings`` with one post per request at each --clients level;
  * batch64: ``POST /embed_full`` (the native route; ``/embed`` is TEI's) with 64 posts per request at each
    --batch-clients level.
Prints one line per case (posts/s, share of bulk, p50/p99 latency, server-side mean batch
size and padding from /metrics) and writes them as JSON with --json. The client is a small
asyncio HTTP/1.1 loop (no HTTP library) so that it costs the shared cores little.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Case:
    mode: str
    clients: int
    requests: int
    posts: int
    seconds: float
    posts_per_s: float
    of_bulk: float
    p50_ms: float
    p99_ms: float
    errors: dict
    mean_batch_size: float
    padding_ratio: float

    def line(self) -> str:
        return (f"{self.mode:8s} clients={self.clients:4d} requests={self.requests:5d} {self.posts_per_s:8.1f} posts/s "
                f"({self.of_bulk:5.1%} of bulk)  p50 {self.p50_ms:7.1f} ms  p99 {self.p99_ms:7.1f} ms  "
                f"batch {self.mean_batch_size:5.1f}  padding {self.padding_ratio:5.3f}"
                + (f"  errors {self.errors}" if self.errors else ""))


async def _closed_loop(url: str, path: str, bodies: list[bytes], clients: int, requests: int,
                       api_key: str | None) -> tuple[float, np.ndarray, dict]:
    """(wall seconds, latencies (s) of the 200 answers, {status: count} of the others)."""
    u = urlsplit(url)
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n{auth}"
    counter = itertools.count()
    lat = np.full(requests, np.nan)
    errors: dict = {}

    async def client():
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        try:
            while (i := next(counter)) < requests:
                body = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                resp = await reader.readuntil(b"\r\n\r\n")
                status = int(resp[9:12])
                length = 0
                for line in resp.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if status == 200:
                    lat[i] = time.perf_counter() - t0
                else:
                    errors[status] = errors.get(status, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, lat[~np.isnan(lat)], errors


def _scrape(url: str, api_key: str | None) -> dict:
    import urllib.request

    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    out = {}
    for line in urllib.request.urlopen(req, timeout=30).read().decode().splitlines():
        if line.startswith("postemb_batcher_") and line.split()[0].endswith("_total"):
            out[line.split()[0][len("postemb_batcher_"):-len("_total")]] = float(line.split()[1])
    return out


def run_case(url, api_key, mode, path, bodies, posts_per_request, clients, requests, bulk_rate) -> Case:
    before = _scrape(url, api_key)
    seconds, lat, errors = asyncio.run(_closed_loop(url, path, bodies, clients, requests, api_key))
    after = _scrape(url, api_key)
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    ok = len(lat)
    rate = ok * posts_per_request / seconds
    padded = d.get("padded_tokens_computed", 0.0)
    return Case(mode, clients, requests, ok * posts_per_request, seconds, rate, rate / bulk_rate,
                float(np.percentile(lat, 50) * 1e3) if ok else float("nan"),
                float(np.percentile(lat, 99) * 1e3) if ok else float("nan"), errors,
                d["posts_computed"] / d["batches"] if d.get("batches") else 0.0,
                1.0 - d["tokens_computed"] / padded if padded else 0.0)


def start_server(model: str, backend: str, *options: str) -> tuple[subprocess.Popen, str]:
    """``postemb serve`` on a free loopback port; returns (process, url) once /ready is 200."""
    argv = [sys.executable, "-m", "postemb_rt.cli", "serve", "--model", model, "--backend", backend,
            "--host", "127.0.0.1", "--port", "0", *options]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"server did not start: {line}")
    url = line.split("listening on ")[1].split()[0]
    import urllib.request

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url + "/ready", timeout=5).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server not ready after 300 s")


def load_posts(n: int) -> list[str]:
    from postemb_rt.data import data_root, short_posts

    if data_root(required=False) is not None:
        return short_posts(n)
    words = "hiring climate startup launch team growth data engineering product lessons".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(5 + i % 30)) for i in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (loopback only); default: start one")
    p.add_argument("--api-key", default=os.environ.get("POSTEMB_API_KEY"))
    p.add_argument("--model", default="default")
    p.add_argument("--backend", default="onnxruntime",
                   help="auto, torch, onnxruntime or openvino (default onnxruntime, the rows of 'HTTP server')")
    p.add_argument("--precision", default="fp32",
                   help="fp32 (exact), bf16 or int8 on CPU (gated by measured fidelity), or auto (`postemb serve`'s "
                        "default: the fastest that clears the bar); with --backend auto, which backend runs each: "
                        "README 'Backends'")
    p.add_argument("--clients", default="1,16,64,256", help="single-post concurrency levels")
    p.add_argument("--batch-clients", default="1,4", help="64-post request concurrency levels")
    p.add_argument("--requests", type=int, default=2000, help="single-post requests per level (>= 4 x clients)")
    p.add_argument("--batch-requests", type=int, default=40, help="64-post requests per level")
    p.add_argument("--posts", type=int, default=4000, help="workload size (short posts)")
    p.add_argument("--max-queued-tokens", type=int, default=65536)
    p.add_argument("--max-wait-us", type=int, default=500)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="the server's model threads, and the bulk reference's "
                   "(default: the server's default, one per physical core)")
    p.add_argument("--batch-overhead-tokens", type=int, default=None, help="the server's (default: its default)")
    p.add_argument("--json", default=None, help="write the cases here")
    args = p.parse_args(argv)
    for name in ("posts", "requests", "batch_requests"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1. Given: {getattr(args, name)}.")
    if args.batch_clients.strip(",") and args.posts < 64:  # a batch64 request sends 64 distinct posts
        p.error(f"--posts must be >= 64 with --batch-clients (each batch request sends 64 posts). Given: "
                f"{args.posts}. Fix: --posts 64 or more, or --batch-clients ''.")
    host = urlsplit(args.url).hostname if args.url else "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--url must be on loopback. Given: {args.url!r}.")

    posts = load_posts(args.posts)
    proc = None
    if args.url is None:
        options = ["--precision", args.precision, "--max-queued-tokens", str(args.max_queued_tokens),
                   "--max-wait-us", str(args.max_wait_us), "--max-batch-size", str(args.max_batch_size)]
        if args.threads:
            options += ["--threads", str(args.threads)]
        if args.batch_overhead_tokens is not None:
            options += ["--batch-overhead-tokens", str(args.batch_overhead_tokens)]
        proc, url = start_server(args.model, args.backend, *options)
    else:
        url = args.url.rstrip("/")
    try:
        from postemb_rt import Encoder

        # the same model threads as the server (postemb serve's default: the backend's, one per physical core)
        if args.threads:
            os.environ["POSTEMB_NUM_THREADS"] = str(args.threads)
        threads = args.threads or os.environ.get("POSTEMB_NUM_THREADS") or "the backend's default"
        enc = Encoder.from_pretrained(args.model, backend=args.backend, precision=args.precision)
        enc.encode(posts[:256])

        def bulk() -> float:
            t0 = time.perf_counter()
            enc.encode(posts)
            return time.perf_counter() - t0

        bulk_s = bulk()
        bulk_rate = len(posts) / bulk_s
        print(f"model {args.model} backend {args.backend} precision {args.precision}, {threads} model thread(s); "
              f"{len(posts)} posts; "
              f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
        cases = [Case("bulk", 0, 1, len(posts), bulk_s, bulk_rate, 1.0, bulk_s * 1e3, bulk_s * 1e3, {}, 0.0, 0.0)]
        print(cases[0].line())
        singles = [json.dumps({"input": t, "encoding_format": "base64"}).encode() for t in posts]
        run_case(url, args.api_key, "warm-up", "/v1/embeddings", singles, 1, 16, 200, bulk_rate)
        for c in (int(x) for x in args.clients.split(",") if x):
            cases.append(run_case(url, args.api_key, "single", "/v1/embeddings", singles, 1, c,
                                  max(args.requests, 4 * c), bulk_rate))
            print(cases[-1].line(), flush=True)
        chunks = [json.dumps({"inputs": posts[i:i + 64]}).encode() for i in range(0, len(posts) - 63, 64)]
        for c in (int(x) for x in args.batch_clients.split(",") if x):
            cases.append(run_case(url, args.api_key, "batch64", "/embed_full", chunks, 64, c, args.batch_requests,
                                  bulk_rate))
            print(cases[-1].line(), flush=True)
        after_s = bulk()  # the cores' load drifts: the ceiling again, after the sweep
        cases.append(Case("bulk", 0, 1, len(posts), after_s, len(posts) / after_s, bulk_s / after_s,
                          after_s * 1e3, after_s * 1e3, {}, 0.0, 0.0))
        print(cases[-1].line() + "  (after the sweep)")
        enc.close()
        la = os.getloadavg()
        print(f"load average after: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"cases": [asdict(c) for c in cases], "loadavg_after": la}, f, indent=1)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
