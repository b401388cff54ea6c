"""Bounded load generator for the near-line pipeline (loopback only).

Publishes posts at a fixed rate for a fixed time to a Redis stream consumed by 1..N
``postemb nearline`` worker processes, then reports, per run:
    freshness (embedded_at - created_at) p50 / p90 / p99 / max over every published post
        (a post not embedded by the end of the drain timeout counts as +inf),
    sustained throughput (posts embedded inside the publish window / its length),
    lag at the end of publishing (events not yet embedded: undelivered + pending),
    and whether the run meets the target (p99 <= --target-p99, default 1 s).
``--search`` then looks for the highest rate whose p99 stays under the target
(x1.25 steps up from --rate, then bisection; at most --search-runs runs per worker count).

    python benchmarks/load_nearline.py --rate 200 --duration 60 --workers 1 2
    python benchmarks/load_nearline.py --duration 10 --workers 1            # quick
    python benchmarks/load_nearline.py --search --search-duration 20 --workers 1 2

By default it starts its own redis-server (no persistence) on a free loopback port and
stops it afterwards; ``--redis URL`` uses an existing loopback server instead (only keys
under ``bench:`` are touched). Posts: tweeteval/emoji/test_text.txt from the shared data
(``POSTEMB_DATA``), cycled if the run needs more.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from postemb_rt import nearline
from postemb_rt.cpu import usable_cpus
from postemb_rt.data import SHORT_POSTS, data_root, read_lines

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_DURATION_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    def __init__(self):
        if shutil.which("redis-server") is None:
            sys.exit("redis-server not found (Debian: apt-get install -y redis-server), or pass --redis URL")
        self.dir = tempfile.mkdtemp(prefix="postemb-bench-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        c = nearline.connect(self.url)
        for _ in range(200):
            try:
                c.ping()
                return
            except Exception:
                time.sleep(0.05)
        sys.exit("redis-server did not start")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_workers(url, n, tag, args, logdir):
    threads = args.threads or max(1, usable_cpus() // n)  # a taskset mask or a cgroup quota, not the machine
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "postemb_rt.commands.nearline", "--redis", url, "--group", "bench",
               "--consumer", f"{tag}-w{i}", "--model", args.model, "--backend", args.backend,
               "--precision", args.precision, "--threads", str(threads),
               "--batch-size", str(args.batch_size), "--max-wait-ms", str(args.max_wait_ms),
               "--posts-stream", f"bench:{tag}:posts", "--dead-stream", f"bench:{tag}:dead",
               "--embeddings-stream", f"bench:{tag}:embeddings"]
        log = open(os.path.join(logdir, f"{tag}-w{i}.log"), "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    return procs, threads


def stop_workers(procs):
    for p, _ in procs:
        p.send_signal(signal.SIGTERM)
    for p, log in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def group_backlog(client, stream) -> int:
    """Events not yet embedded: undelivered (lag) + delivered but unacknowledged (pending)."""
    g = next((x for x in client.xinfo_groups(stream) if x["name"] == b"bench"), None)
    if g is None:
        return client.xlen(stream)
    return int(g["lag"] or 0) + int(g["pending"])


def one_run(client, url, texts, workers, rate, duration, args, logdir) -> dict:
    tag = f"r{int(time.time() * 1000) % 10**9}"
    posts, emb = f"bench:{tag}:posts", f"bench:{tag}:embeddings"
    procs, threads = start_workers(url, workers, tag, args, logdir)
    try:
        # wait for every worker to load its model and join the group, then warm them up
        deadline = time.time() + 180
        while len(list(client.scan_iter(match=f"postemb:nearline:worker:bench:{tag}-*"))) < workers:
            if time.time() > deadline or any(p.poll() is not None for p, _ in procs):
                raise RuntimeError(f"workers did not start; see {logdir}")
            time.sleep(0.2)
        for i in range(64):
            nearline.publish(client, f"{tag}-warm{i}", texts[i], stream=posts, maxlen=None)
        while group_backlog(client, posts) > 0:
            time.sleep(0.05)
        n = int(round(rate * duration))
        late = 0
        start = time.time()
        for i in range(n):  # fixed rate on an absolute schedule; never bursts to catch up silently
            due = start + i / rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
            elif now - due > 0.05:
                late += 1
            # ids unique to the run: a post id stored before with the same text is not announced again
            nearline.publish(client, f"{tag}-p{i}", texts[i % len(texts)], stream=posts, maxlen=None)
        publish_s = time.time() - start
        end_lag = group_backlog(client, posts)
        drain_start = time.time()
        while group_backlog(client, posts) > 0 and time.time() - drain_start < args.drain_timeout:
            time.sleep(0.05)
        drain_s = time.time() - drain_start
        fresh, in_window = {}, 0
        for _, f in client.xrange(emb):
            pid = f[b"post_id"].decode()
            if pid.startswith(f"{tag}-p"):
                t = float(f[b"embedded_at"])
                fresh[pid] = t - float(f[b"created_at"])
                in_window += t <= start + publish_s
        values = np.array(list(fresh.values()) + [math.inf] * (n - len(fresh)))
        # "higher": an actual sample, never an interpolation with +inf (which gives NaN)
        pct = {f"p{p}_s": float(np.percentile(values, p, method="higher")) for p in (50, 90, 99)}
        worker_stats = [json.loads(client.get(k)) for k in
                        client.scan_iter(match=f"postemb:nearline:worker:bench:{tag}-*") if client.get(k)]
    finally:
        stop_workers(procs)
    for pattern in (f"bench:{tag}:*", f"postemb:*:{tag}-*"):  # the run's streams and stored embeddings
        for key in client.scan_iter(match=pattern):
            client.delete(key)
    res = {
        "workers": workers, "threads_per_worker": threads, "rate_target": rate, "duration_s": duration,
        "published": n, "publish_rate": round(n / publish_s, 1), "publish_late": late,
        "embedded": len(fresh), "throughput_per_s": round(in_window / publish_s, 1),
        **{k: _num(v) for k, v in pct.items()}, "max_s": _num(float(values.max())),
        "end_lag": end_lag, "drain_s": round(drain_s, 2),
        "batches": sum(w["batches"] for w in worker_stats),
        # share of the publish window the workers spent inside the model (1.0 per busy worker)
        "model_busy": round(sum(w["encode_s"] for w in worker_stats) / (time.time() - start), 2),
        "store_s": round(sum(w["store_s"] for w in worker_stats), 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    res["ok"] = bool(res["embedded"] == n and pct["p99_s"] <= args.target_p99)
    return res


def _num(v: float):
    return round(v, 3) if math.isfinite(v) else "inf"  # JSON has no infinity


def model_ceiling(texts, args, n: int = 1024) -> float:
    """posts/s of Encoder.encode alone, one process, batches of --batch-size: what one
    worker could reach with zero pipeline overhead on this machine right now."""
    from postemb_rt import Encoder

    enc = Encoder.from_pretrained(args.model, backend=args.backend, precision=args.precision)
    enc.encode(texts[:args.batch_size], batch_size=args.batch_size)
    t = time.perf_counter()
    enc.encode(texts[:n], batch_size=args.batch_size)
    rate = n / (time.perf_counter() - t)
    ran = enc.describe()
    print(f"ran {ran['backend']} {ran['precision']} (the workers load the same)", flush=True)
    enc.close()
    return round(rate, 1)


def search(client, url, texts, workers, args, logdir, report) -> dict | None:
    """Highest rate with p99 <= target: x1.25 up from args.rate until a miss, then bisect."""
    best, worst, rate = None, None, args.rate
    for _ in range(args.search_runs):
        res = report(one_run(client, url, texts, workers, rate, args.search_duration, args, logdir))
        if res["ok"]:
            best = res
        else:
            worst = rate
        if worst is None:
            rate = round(rate * 1.25)
        else:
            lo = best["rate_target"] if best else rate / 2
            if worst - lo <= max(10, 0.05 * worst):
                break
            rate = round((lo + worst) / 2)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="posts/s (default 200)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of publishing per run (default 60)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run (default 1 2)")
    p.add_argument("--threads", type=int, default=None, help="model threads per worker (default: the CPUs this "
                   "process may use / workers)")
    p.add_argument("--model", default="default")
    p.add_argument("--backend", default="auto", help="the workers' and the ceiling's backend (default auto)")
    p.add_argument("--precision", default="fp32",
                    help="fp32 (exact), or bf16 / int8 on CPU (gated by measured fidelity; which backend runs "
                         "each: README \"Fast precisions\")")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--target-p99", type=float, default=1.0, help="freshness p99 target, s (default 1)")
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--search", action="store_true", help="also search for the highest rate meeting the target")
    p.add_argument("--search-only", action="store_true", help="skip the fixed-rate runs")
    p.add_argument("--search-duration", type=float, default=20.0)
    p.add_argument("--search-runs", type=int, default=6)
    p.add_argument("--redis", default=None, help="an existing loopback Redis URL (default: start one)")
    p.add_argument("--json", default=None, help="write every run's results to this file")
    p.add_argument("--no-ceiling", action="store_true", help="skip the encode-only reference measurement")
    args = p.parse_args(argv)
    for d in (args.duration, args.search_duration):
        if not 0 < d <= MAX_DURATION_S:
            p.error(f"durations must be in (0, {MAX_DURATION_S}] s")
    if not 0 < args.rate <= 5000:
        p.error("--rate must be in (0, 5000]")

    own = None
    if args.redis:
        if urlparse(args.redis).hostname not in LOOPBACK:
            p.error(f"--redis must be a loopback address ({', '.join(sorted(LOOPBACK))}). Given: {args.redis}")
        url = args.redis
    else:
        own = OwnRedis()
        url = own.url
    texts = read_lines(data_root() / SHORT_POSTS)
    client = nearline.connect(url)
    logdir = tempfile.mkdtemp(prefix="postemb-bench-logs-")
    results = []

    def report(res):
        results.append(res)
        print(json.dumps(res), flush=True)
        return res

    print(f"redis {url}; {usable_cpus()} of {os.cpu_count()} CPUs usable; model {args.model} backend {args.backend} "
          f"precision {args.precision}; worker logs in {logdir}", flush=True)
    best = {}
    ceiling = None if args.no_ceiling else model_ceiling(texts, args)
    if ceiling:
        print(f"model ceiling (Encoder.encode alone, batch {args.batch_size}): {ceiling} posts/s; "
              f"load avg {os.getloadavg()[0]:.2f}", flush=True)
    try:
        for w in args.workers:
            if not args.search_only:
                report(one_run(client, url, texts, w, args.rate, args.duration, args, logdir))
            if args.search or args.search_only:
                best[w] = search(client, url, texts, w, args, logdir, report)
    finally:
        if own:
            own.close()
    print("\n| workers | rate target | duration s | throughput/s | fresh p50 s | p99 s | max s | end lag | "
          "meets p99<=%gs | load 1m |" % args.target_p99)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['rate_target']:g} | {r['duration_s']:g} | {r['throughput_per_s']} | "
              f"{r['p50_s']} | {r['p99_s']} | {r['max_s']} | {r['end_lag']} | {'yes' if r['ok'] else 'no'} | "
              f"{r['load_avg_1m']} |")
    for w, b in best.items():
        print(f"highest rate with p99 <= {args.target_p99} s, {w} worker(s): "
              f"{b['rate_target'] if b else 'none found'} posts/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"model_ceiling_per_s": ceiling, "runs": results, "best": best},
                                             indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
