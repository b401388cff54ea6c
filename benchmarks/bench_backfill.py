"""Backfill throughput on Ray Data vs a single-process ``Encoder.encode`` over the same posts.

    python benchmarks/bench_backfill.py [--n 20000] [--files 8] [--rounds 2] [--configs Nx1,1xN] [--out FILE.json]
    POSTEMB_BENCH_N=200 pytest benchmarks/bench_backfill.py --benchmark-disable    # as a quick test

Workload: the first ``--n`` short posts (TweetEval emoji test), written as ``--files``
Parquet files (row groups of n/files rows, one split each). In one run, interleaved for
``--rounds`` rounds:

- baseline: one process, ``Encoder.from_pretrained("default")`` (loaded once, before the
  clock), reads the same files with pyarrow, ``encode``s every post (the backend's own
  threads: one per core), writes one Parquet file of embeddings;
- backfill, per config ``WxT`` (W actors of T threads; default ``Nx1,1xN`` for the N CPUs this
  process may use, ``postemb_rt.cpu.usable_cpus``: the baseline's cores, so 2x1,1x2 on 2 cores):
  ``postemb_rt.backfill.backfill`` into a fresh output folder, on a Ray started once before the
  rounds (``ray.init(num_cpus=N)``, its start time reported apart). The clock covers everything a re-run pays: planning,
  actor start and model load, inference, writes, commits.

Prints one line per measurement, then the medians and backfill/baseline; target >= 0.85.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compare import cpu_name  # noqa: E402

TARGET = 0.85


def default_configs(cpus: int) -> str:
    """``Nx1,1xN``: every CPU the baseline uses, as N one-thread actors and as one N-thread actor."""
    return f"{cpus}x1" if cpus == 1 else f"{cpus}x1,1x{cpus}"


def parse_configs(text: str, cpus: int) -> list[tuple[int, int]]:
    """[(workers, threads)] from ``--configs`` (``WxT,...``); each must fit the ``cpus`` Ray is given
    (every actor asks Ray for T CPUs: more than it has and the pool never fills)."""
    out = []
    for c in text.split(","):
        try:
            w, t = (int(x) for x in c.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"`--configs` must be WORKERSxTHREADS pairs, comma-separated (e.g. 2x1,1x2). "
                             f"Given: {text!r}.") from None
        if w < 1 or t < 1 or w * t > cpus:
            raise ValueError(f"`--configs` {c!r}: workers and threads must be >= 1 and workers x threads at most "
                             f"the {cpus} CPUs this process may use. Given: {text!r}. Fix: e.g. "
                             f"{default_configs(cpus)}.")
        out.append((w, t))
    return out


def write_workload(texts: list[str], folder: Path, files: int) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // files)
    paths = []
    for f in range(files):
        part = texts[f * per:(f + 1) * per]
        if not part:
            break
        path = folder / f"posts-{f:04d}.parquet"
        pq.write_table(pa.table({"id": list(range(f * per, f * per + len(part))), "text": part}), path,
                       row_group_size=len(part))
        paths.append(path)
    return paths


def run_baseline(enc, paths: list[Path], out: Path) -> float:
    """Seconds for read + encode + write in this process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from postemb_rt.backfill import embeddings_table

    start = time.perf_counter()
    t = pa.concat_tables([pq.read_table(p, columns=["id", "text"]) for p in paths])
    vectors = enc.encode(t.column("text").to_pylist())
    pq.write_table(embeddings_table(t.column("id"), vectors, enc.vector_version, "int"), out)
    return time.perf_counter() - start


def run_backfill(inp: Path, out: Path, workers: int, threads: int, rows_per_split: int) -> tuple[float, dict]:
    from postemb_rt.backfill import backfill

    split_seconds = []
    start = time.perf_counter()
    r = backfill(inp, out, num_workers=workers, threads_per_worker=threads, rows_per_split=rows_per_split,
                 on_split=lambda row, rep: split_seconds.append(float(row["seconds"])))
    wall = time.perf_counter() - start
    assert r.rows_embedded > 0 and not r.failures
    # time inside the actors' split calls (read, check, encode, write), per worker
    return wall, {"rows": r.rows_embedded, "splits": r.splits_run,
                  "in_actor_s_per_worker": round(sum(split_seconds) / workers, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="posts (default: 20000)")
    ap.add_argument("--files", type=int, default=8, help="input Parquet files = splits (default: 8)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    ap.add_argument("--configs", default=None, help="backfill configs WORKERSxTHREADS (default: Nx1,1xN for "
                    "the N CPUs this process may use)")
    ap.add_argument("--backend", default="auto", help="encoder backend for both sides (default: auto)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    import onnxruntime
    import ray
    import torch

    from postemb_rt import Encoder
    from postemb_rt.cpu import usable_cpus
    from postemb_rt.data import short_posts

    cpus = usable_cpus()
    try:
        configs = parse_configs(args.configs or default_configs(cpus), cpus)
    except ValueError as e:
        ap.error(str(e))
    texts = short_posts(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    paths = write_workload(texts, tmp / "posts", args.files)
    rows_per_split = -(-len(texts) // len(paths))
    load_before = os.getloadavg()
    header = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(),
              "cpus": cpus, "machine_cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
              "posts": len(texts), "files": len(paths), "ray": ray.__version__,
              "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    print(f"# {header['date']} | {header['cpu']} | {cpus} of {os.cpu_count()} CPUs usable | load "
          f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} | {len(texts)} posts in {len(paths)} files "
          f"| ray {ray.__version__}", flush=True)

    enc = Encoder.from_pretrained("default", backend=args.backend, device="cpu")
    enc.encode(texts[:64])
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t0
    print(f"ray.init: {ray_start:.1f} s (not in the backfill times); baseline: {enc.describe()['backend']}, "
          f"one process", flush=True)
    results = {"baseline": []} | {f"{w}x{t}": [] for w, t in configs}
    details = []
    try:
        for rnd in range(args.rounds):
            s = run_baseline(enc, paths, tmp / f"baseline-{rnd}.parquet")
            results["baseline"].append(len(texts) / s)
            print(f"round {rnd}: baseline          {s:6.1f} s  {len(texts) / s:6.1f} posts/s  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            for w, t in configs:
                s, info = run_backfill(tmp / "posts", tmp / f"out-{rnd}-{w}x{t}", w, t, rows_per_split)
                results[f"{w}x{t}"].append(info["rows"] / s)
                details.append({"round": rnd, "config": f"{w}x{t}", "seconds": round(s, 2), **info})
                print(f"round {rnd}: backfill {w} x {t} thr  {s:6.1f} s  {info['rows'] / s:6.1f} posts/s  "
                      f"(in actors {info['in_actor_s_per_worker']:.1f} s/worker)  load {os.getloadavg()[0]:.2f}",
                      flush=True)
    finally:
        ray.shutdown()
        enc.close()
    base = statistics.median(results["baseline"])
    summary = {"baseline_posts_per_s": round(base, 1)}
    print(f"\nmedian baseline (Encoder.encode, one process): {base:.1f} posts/s")
    for name, vals in results.items():
        if name == "baseline":
            continue
        med = statistics.median(vals)
        ratio = med / base
        summary[name] = {"posts_per_s": round(med, 1), "ratio": round(ratio, 3)}
        print(f"median backfill {name}: {med:.1f} posts/s = {ratio:.2f} x baseline "
              f"({'meets' if ratio >= TARGET else 'misses'} the >= {TARGET:.2f} target)")
    header["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average after: {header['loadavg_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps({**header, "ray_init_s": round(ray_start, 2), "summary": summary,
                                              "runs": details, "raw": results}, indent=1))
    return 0


# -- as a quick test (make test): a tiny workload through both paths, no timing assertions ------
def test_backfill_vs_encode_small(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[scale]')")
    import ray

    from benchmarks.conftest import bench_n
    from postemb_rt import Encoder
    from postemb_rt.data import data_root, short_posts

    if data_root(required=False) is None:
        pytest.skip("shared data not found (set POSTEMB_DATA)")
    texts = short_posts(min(bench_n(), 400))
    paths = write_workload(texts, tmp_path / "posts", 2)
    enc = Encoder.from_pretrained("default", device="cpu")
    assert run_baseline(enc, paths, tmp_path / "base.parquet") > 0
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        seconds, info = run_backfill(tmp_path / "posts", tmp_path / "out", 1, 1, -(-len(texts) // 2))
    finally:
        if started:
            ray.shutdown()
    assert info["rows"] == len(texts) and info["splits"] == 2 and seconds > 0


if __name__ == "__main__":
    sys.exit(main())
