"""Side-by-side throughput table in one run: this project's backends and precisions vs
sentence-transformers.

    python benchmarks/compare.py [--n 4000] [--long 0] [--repeats 3] [--model base]
        [--providers sentence-transformers,torch,onnxruntime,torch:bf16,onnxruntime:int8]
    python benchmarks/compare.py --long 1000 --providers onnxruntime,onnxruntime@chunk   # long posts whole
    python benchmarks/compare.py --quick --providers torch,onnxruntime   # smoke run (200 posts, 1 round)

A provider ending in ``@chunk`` embeds with ``long_posts="chunk"`` (long posts whole, as
windows); its tokens/s counts every window's tokens, the work it really does.

For each provider (a backend, optionally ``:precision``): posts/s and tokens/s (real tokens,
not padding) on the short-post workload (first N posts of TweetEval emoji test; see
postemb_rt/data.py) and, with --long, the long-post workload; the ratio to the
sentence-transformers float32 baseline (`SentenceTransformer(base).encode(texts,
batch_size=32)`); the cosine to the torch float32 reference (min and mean) and overlap@10
of nearest neighbours (postemb_rt.fidelity); and the fraction of the ceiling of the
precision it computes in.

Ceilings (benchmarks/ceilings.py): for each workload, the best of the libraries the runtime
could use (MKL, oneDNN, MLAS; fp32, bf16, int8) at the model's own GEMM shapes with M = rows x
padded tokens of the workload's median batch (Encoder.encode's planner), on the workloads'
thread count, measured just before and just after that workload's rounds (best kept). They
are printed after the table with the library that won each GEMM and the ISA peak (cores x
512-bit instructions per cycle x lanes x 2 x clock, clock and instructions per cycle
measured by benchmarks/isa_probe.c). A row above 100% of its ceiling is not printed as a
percentage: its cell says OVER CEILING, a WARNING line follows the table, the JSON (--json)
has "over_ceiling": true, and the script exits with status 2. So does a ceiling above the ISA
peak.
FLOPs per token come from the model config: 2 x layers x (4 H^2 + 2 H I), about 21 MFLOP
for all-MiniLM-L6-v2 (attention scores add 4 S H per layer, under 2% at these lengths).
Both int8 backends keep the same matmuls float (postemb_rt.onnx_export.int8_nodes picks the
rest), so an int8 row's ceiling is the time those FLOPs need at the int8 ceiling and the float
ones at theirs: float32 on onnxruntime, OpenVINO's inference precision (bf16 where native).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

try:  # before the repo root is on sys.path: imported after it, transformers 5.5 (the side environment of
    # `make compare-st-openvino`) takes this repo's kernels/ folder for the package `kernels`, reads its
    # version as "N/A" and fails. transformers 5.24 (the project's environment) does not.
    import sentence_transformers  # noqa: F401
except ImportError:
    pass
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_encode import PROVIDERS, count_tokens, make_encode, token_lengths  # noqa: E402


def int8_share() -> float:
    """Share of the model's matmul FLOPs that the int8 model runs in int8 (the rest is float32):
    the nodes postemb_rt.onnx_export.int8_nodes picks (MatMuls, and fused Attention ops, whose QKV
    weight (H, 3H) is counted), weighed by their weights' in x out, from the base model's ONNX export."""
    import onnx

    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import cached_export, int8_nodes

    m = onnx.load(str(cached_export(resolve("base")).onnx_path))
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    picked = set(int8_nodes(m))
    total = quant = 0
    for node in m.graph.node:
        if node.op_type not in ("MatMul", "Attention", "Gemm"):
            continue
        w = next((shapes[i] for i in node.input if i in shapes and len(shapes[i]) == 2), None)
        if w is None:
            continue
        total += w[0] * w[1]
        quant += w[0] * w[1] if node.name in picked else 0
    return quant / total


def model_dims() -> tuple[int, int, int]:
    """(hidden, intermediate, layers) of the base encoder's config."""
    import json

    from postemb_rt.model_dir import base_encoder_path

    cfg = json.loads((base_encoder_path() / "config.json").read_text())
    return cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]


def flops_per_token() -> float:
    h, i, layers = model_dims()
    return 2 * layers * (4 * h * h + 2 * h * i)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# Named sets for --providers. "st-openvino": issue 27's target rows against sentence-transformers on
# its own OpenVINO backend (needs the side environment: `make compare-st-openvino`, cpu_report.sh).
PROVIDER_SETS = {"st-openvino": "sentence-transformers,sentence-transformers:openvino,openvino,openvino:bf16,"
                                "openvino:int8,auto:auto"}


def provider_list(arg: str) -> list[str]:
    """--providers as a list: a named set (PROVIDER_SETS) expanded, else split on commas."""
    return PROVIDER_SETS.get(arg, arg).split(",")


def measure_interleaved(encoders: dict, texts, repeats: int) -> dict:
    """{provider: (median seconds, last output)}. Rounds are interleaved (every provider
    once per round, rotating who goes first), so load from other processes hits all
    providers alike and the ratios stay fair on a shared machine."""
    names = list(encoders)
    times = {n: [] for n in names}
    outs = {}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            outs[n] = encoders[n](texts)
            times[n].append(time.perf_counter() - t)
    return {n: (float(np.median(times[n])), outs[n]) for n in names}


def ideal_seconds(tokens: int, fpt: float, precision: str, ceils: dict, share: float, rest: str = "fp32") -> float:
    """Seconds the workload's matmul FLOPs need at the ceiling of the precision they run in (int8:
    ``share`` of them at the int8 ceiling, ``int8_share()`` for both int8 backends, the rest at the
    ``rest`` ceiling: fp32 on onnxruntime, OpenVINO's inference precision there)."""
    rate = {p: c["ops_per_s"] or float("nan") for p, c in ceils.items()}
    if precision == "int8":
        return tokens * fpt * (share / rate["int8"] + (1 - share) / rate[rest])
    return tokens * fpt / rate[precision]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000, help="short posts (default 4000)")
    p.add_argument("--long", type=int, default=0, help="also run N long posts (median ~100 tokens)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--providers", default=",".join(PROVIDERS + ["openvino", "torch:bf16", "openvino:bf16",
                                                                 "onnxruntime:int8", "auto:auto"]),
                   help="backend[:precision], comma-separated, or the name of a set: "
                   + "; ".join(f"{k} = {v}" for k, v in PROVIDER_SETS.items()) + " (default: %(default)s)")
    p.add_argument("--model", default="base", help="model for this project's providers (default: base, the "
                   "model sentence-transformers runs)")
    p.add_argument("--ceiling-repeats", type=int, default=5, help="timed calls per GEMM and library in each "
                   "ceiling measurement (best kept; default 5)")
    p.add_argument("--quick", action="store_true", help="smoke run: --n 200, --long 50 if --long, 1 round, "
                   "2 ceiling repeats (numbers not for the record)")
    p.add_argument("--json", type=Path, default=None, help="also write rows, ceilings, ISA peak and warnings here")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.long = min(args.n, 200), min(args.long, 50)
        args.repeats, args.ceiling_repeats = 1, 2
    for name in ("n", "repeats", "ceiling_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1. Given: {getattr(args, name)}.")

    import json
    import os

    import torch

    from benchmarks import ceilings as ceil
    from postemb_rt.backends.openvino_backend import PRECISION_OF_HINT, compile_config
    from postemb_rt.data import long_posts, short_posts
    from postemb_rt.fidelity import overlap_at_k

    threads = ceil.default_threads()  # the runtime's backends' (a CPU mask or quota), else torch's
    torch.set_num_threads(ceil.baseline_threads())  # sentence-transformers' rows: within a quota too
    hidden, intermediate, _ = model_dims()
    share = int8_share()
    ov_rest = PRECISION_OF_HINT[compile_config("int8")["INFERENCE_PRECISION_HINT"]]  # int8's float part
    fpt = flops_per_token()
    workloads = [("short", short_posts(args.n))]
    if args.long:
        workloads.append(("long", long_posts(args.long)))
    peak = ceil.isa_peak(ceil.peak_cores(threads))  # SMT siblings share a core's pipes
    load_start = os.getloadavg()[0]
    print(f"# {date.today()} | {cpu_name()} | {os.cpu_count()} CPUs | load {load_start:.2f} | torch "
          f"{torch.__version__} threads {torch.get_num_threads()} | matmul ceilings: per workload, below the table "
          f"| {fpt / 1e6:.1f} MFLOP/token | int8 models: {share:.0%} of matmul FLOPs in int8\n")
    print("| workload | provider | posts/s | tokens/s | x baseline | cosine min / mean vs torch fp32 | overlap@10 "
          "| % of its ceiling |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    encoders = {name: make_encode(name, args.model) for name in provider_list(args.providers)}
    report = {"date": str(date.today()), "cpu": cpu_name(), "cpus": os.cpu_count(), "threads": threads,
              "load_start": load_start, "mflop_per_token": fpt / 1e6, "int8_share": share, "isa_peak": peak,
              "workloads": {}, "warnings": [], "over_ceiling": False}
    notes = []
    for wname, texts in workloads:
        m = ceil.typical_rows(token_lengths(texts))
        before = ceil.measure(m, threads, args.ceiling_repeats, hidden, intermediate)
        results = measure_interleaved(encoders, texts, args.repeats)
        measured = ceil.merge(before, ceil.measure(m, threads, args.ceiling_repeats, hidden, intermediate))
        ceils = ceil.ceilings(measured)
        wrep = report["workloads"][wname] = {"posts": len(texts), "m": m, "ceilings": ceils, "measurement": measured,
                                             "rows": []}
        ref = results["torch"][1] if "torch" in results else None
        base = results.get("sentence-transformers")
        for name, (seconds, out) in results.items():
            tokens = count_tokens(texts, chunk=name.endswith("@chunk"))
            rate = len(texts) / seconds
            ratio = f"{base[0] / seconds:.2f}" if base else "-"
            fid = "-", "-"
            row = {"provider": name, "posts_per_s": rate, "tokens_per_s": tokens / seconds}
            if ref is not None and out.shape == ref.shape:
                cos = np.sum(out * ref, axis=1)
                fid = f"{cos.min():.6f} / {cos.mean():.6f}", f"{overlap_at_k(ref, out):.3f}"
                row.update(cos_min=float(cos.min()), cos_mean=float(cos.mean()),
                           max_abs_err=float(np.abs(out - ref).max()))
            precision = getattr(encoders[name], "precision", "fp32")  # "auto" as resolved at load
            # OpenVINO's int8 runs the matmuls it leaves float at its inference precision
            rest = ov_rest if getattr(encoders[name], "backend", "") == "openvino" else "fp32"
            fraction = ideal_seconds(tokens, fpt, precision, ceils, share, rest) / seconds
            cell = ceil.fraction_cell(fraction)
            if not np.isfinite(fraction):  # a GEMM no library ran: nothing to check the row against
                row.update(precision=precision, fraction_of_ceiling=None, over_ceiling=None)
                cell = "- (no ceiling)"
                notes.append(f"WARNING: {wname}/{name}: no {precision} ceiling was measured (see the unavailable "
                             "libraries below), so this row cannot be checked against one")
            else:
                row.update(precision=precision, fraction_of_ceiling=fraction, over_ceiling=ceil.over_ceiling(fraction))
            wrep["rows"].append(row)
            if row["over_ceiling"]:
                notes.append(f"WARNING: {wname}/{name} computes at {fraction:.0%} of its {precision} ceiling: the "
                             "ceiling is wrong (a faster library, kernel or FLOP count is missing), not the row")
            resolved = "auto" in name or name.startswith("sentence-transformers:")
            shown = f"{name} (= {encoders[name].backend}:{precision})" if resolved else name
            print(f"| {wname} ({len(texts)}) | {shown} | {rate:.0f} | {tokens / seconds:.0f} | {ratio} | {fid[0]} | "
                  f"{fid[1]} | {cell} |", flush=True)
        notes += ceil.ceiling_warnings(ceils, peak)
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f} (1 min)")
    print(f"\nmatmul ceilings ({threads} threads; best library per GEMM, measured before and after each workload, "
          f"best kept; ISA peak clock {peak['clock_source']}):")
    for wname, wrep in report["workloads"].items():
        print(f"{wname}: M = {wrep['m']} (median rows x padded tokens of a batch)")
        print("\n".join(ceil.describe(wrep["ceilings"], wrep["measurement"], peak)))
    for line in notes:
        print(line)
    report["warnings"], report["over_ceiling"] = notes, any(
        r["over_ceiling"] is True for w in report["workloads"].values() for r in w["rows"])
    report["load_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 2 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
