"""benchmarks/throughput_gate.py: the floor logic on fake timings, the path choice on fake CPU flags,
and the real gate failing on a really slowed runtime."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import throughput_gate as gate
from postemb_rt.cpu import PATH_FLAGS

ROOT = Path(__file__).resolve().parent.parent


def test_ratio_per_round_is_baseline_over_row_and_the_median_is_gated():
    seconds = {"sentence-transformers": [3.0, 3.0, 3.3], "auto": [2.0, 1.5, 1.1], "fastest": [1.0, 1.5, 1.1]}
    v = gate.evaluate(seconds, {"auto": 0.9, "fastest": 1.5})
    assert v["rows"]["auto"]["ratios"] == pytest.approx([1.5, 2.0, 3.0])
    assert v["rows"]["auto"]["ratio"] == pytest.approx(2.0)
    assert v["rows"]["fastest"]["ratio"] == pytest.approx(3.0)
    assert v["passed"] and v["failures"] == []


def test_one_noisy_round_does_not_fail_the_gate_but_a_slowed_runtime_does():
    noisy = {"sentence-transformers": [3.0] * 5, "auto": [2.0, 2.0, 6.0, 2.0, 2.0], "fastest": [1.0] * 5}
    assert gate.evaluate(noisy, gate.FLOORS)["passed"]
    slowed = {"sentence-transformers": [3.0] * 5, "auto": [2.0] * 5, "fastest": [2.5, 2.4, 2.6, 1.0, 2.5]}
    v = gate.evaluate(slowed, gate.FLOORS)
    assert not v["passed"] and v["rows"]["auto"]["ok"] and not v["rows"]["fastest"]["ok"]
    assert v["failures"] == ["fastest: median 1.20x sentence-transformers is below its floor 1.50x "
                             "(rounds: 1.20, 1.25, 1.15, 3.00, 1.20)"]


def test_a_ratio_exactly_at_the_floor_passes():
    v = gate.evaluate({"sentence-transformers": [0.9], "auto": [1.0]}, {"auto": 0.9})
    assert v["rows"]["auto"]["ratio"] == pytest.approx(0.9) and v["passed"]


@pytest.mark.parametrize("seconds, floors, match", [
    ({"auto": [1.0]}, {"auto": 0.9}, r"`seconds` must hold the baseline row 'sentence-transformers'"),
    ({"sentence-transformers": [1.0, 1.0], "auto": [1.0]}, {"auto": 0.9},
     r"`seconds\['auto'\]` must have one time per round, as the baseline \(2\). Given: 1"),
    ({"sentence-transformers": [1.0], "fastest": [1.0]}, {"auto": 0.9}, r"Missing: 'fastest'"),
])
def test_evaluate_rejects_mismatched_input_naming_it(seconds, floors, match):
    with pytest.raises(ValueError, match=match):
        gate.evaluate(seconds, floors)


def test_without_the_shared_data_the_workload_is_the_built_in_posts_repeated(monkeypatch, tmp_path):
    from postemb_rt import data

    monkeypatch.setenv("POSTEMB_DATA", str(tmp_path))  # holds no tweeteval/
    monkeypatch.setattr(data, "_CHECKOUT", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    texts, what = gate.workload(40)
    assert len(texts) == 40 and texts[:16] == data.BUILTIN_POSTS and texts[16] == data.BUILTIN_POSTS[0]
    assert what.startswith("built-in posts repeated (shared data not found")


def test_rounds_are_interleaved_with_the_first_row_rotating():
    calls = []

    def fake(name):
        def encode(texts):
            calls.append(name)
            return np.ones((len(texts), 4), np.float32) / 2
        return encode

    encoders = {n: fake(n) for n in ("sentence-transformers", "auto", "fastest")}
    seconds, outs = gate.interleaved_seconds(encoders, ["a", "b"], rounds=4)
    assert calls == ["sentence-transformers", "auto", "fastest", "auto", "fastest", "sentence-transformers",
                     "fastest", "sentence-transformers", "auto", "sentence-transformers", "auto", "fastest"]
    assert {n: len(s) for n, s in seconds.items()} == {n: 4 for n in encoders}
    assert all(t > 0 for s in seconds.values() for t in s) and outs["auto"].shape == (2, 4)


def test_table_names_the_machine_and_marks_a_row_below_its_floor():
    verdict = gate.evaluate({"sentence-transformers": [2.0], "auto": [1.0], "fastest": [2.0]}, gate.FLOORS)
    for name, row in verdict["rows"].items():
        row.update(what=name, seconds=[1.0], posts_per_s=100.0, min_cos_vs_baseline=0.99999)
    report = {"date": "2026-12-03 23:00 UTC", "cpu": "Fake CPU", "cpus": 2, "flags": ["avx2", "amx_bf16"],
              "load_start": (0.5, 0.4, 0.3), "load_end": (0.7, 0.5, 0.3), "posts": 10, "workload": "short posts",
              "rounds": 1,
              "baseline": {"what": "ST", "posts_per_s": 50.0}, **verdict}
    lines = gate.table(report)
    assert lines[0].startswith("# throughput gate | 2026-12-03 23:00 UTC | Fake CPU | 2 CPUs | flags: avx2 amx_bf16 "
                               "| load (1 min) before/after 0.50/0.70")
    assert any(line.startswith("| auto |") and line.endswith("| ok |") for line in lines)
    assert any(line.startswith("| fastest |") and "BELOW FLOOR" in line for line in lines)
    assert lines[-1].startswith("FAIL: fastest: median 1.00x") and not any("WARNING" in line for line in lines)
    loaded = dict(report, load_end=(5.5, 3.0, 1.0))
    assert gate.overloaded(loaded) and not gate.overloaded(report)
    assert any(line.startswith("WARNING: other processes load this machine (1-min load 0.50 before, 5.50 after, "
                               "on 2 CPUs)") for line in gate.table(loaded))


def test_the_real_gate_fails_when_our_runtime_is_slowed(tmp_path):
    """The gate itself, end to end, with our rows really slowed: one intra-op thread and fp32 on the
    "fastest" row (against sentence-transformers on every core). Exits 1 and says which row."""
    from postemb_rt.cpu import usable_cpus

    if usable_cpus() < 2:  # the CPUs this process may use (a taskset mask, a 1-CPU container), not the machine's
        pytest.skip(f"needs 2 usable CPUs (this process may use {usable_cpus()} of {os.cpu_count()}): one thread "
                    "for our runtime against all of them for sentence-transformers")
    out = tmp_path / "gate.json"
    # the int8 row's first load measures its fidelity (1,200 posts by default, here on one thread), outside the
    # timed rounds: what is checked here is the ratios, so a smaller (still > k = 10) sample keeps it short.
    # OMP_NUM_THREADS is dropped: it would hold the baseline's threads too
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "POSTEMB_FIDELITY_POSTS": "120"}
    r = subprocess.run([sys.executable, "benchmarks/throughput_gate.py", "--n", "64", "--rounds", "3",
                        "--fastest", "onnxruntime:fp32", "--ours-threads", "1", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode in (0, 1), r.stdout + r.stderr
    report = json.loads(out.read_text())
    if r.returncode == 0 and gate.overloaded(report):
        # Seen on a 2-core machine shared by several sessions (load 5-7): sentence-transformers' two
        # threads ran at 1/12 of their idle speed, our one thread at 1/2, and every ratio rose 4x.
        # CI runs this alone; on a loaded machine the test cannot judge the gate.
        pytest.skip(f"machine loaded by other processes (load {report['load_start'][0]:.1f} -> "
                    f"{report['load_end'][0]:.1f} on {report['cpus']} CPUs): the ratios are not reliable")
    assert r.returncode == 1, r.stdout + r.stderr
    fastest = report["rows"]["fastest"]
    assert not report["passed"] and not fastest["ok"] and fastest["ratio"] < gate.FLOORS["fastest"]
    assert fastest["what"] == "onnxruntime:fp32 -> onnxruntime, fp32" and fastest["why"] == "forced by --fastest"
    assert report["threads_env"] == "1" and len(fastest["ratios"]) == 3
    assert "FAIL: fastest: median" in r.stdout and "| fastest |" in r.stdout
    # the int8 row runs too, on the backend auto picks for int8 here, one thread like the others
    assert report["rows"]["int8"]["what"].startswith("auto:int8 -> ") and report["rows"]["int8"]["what"].endswith(", int8")
    assert "| int8 |" in r.stdout


def test_table_says_when_fewer_cpus_are_usable_and_when_the_kernel_cannot_run_the_amx_flags():
    verdict = gate.evaluate({"sentence-transformers": [2.0], "auto": [1.0]}, gate.FLOORS)
    verdict["rows"]["auto"].update(what="auto", seconds=[1.0], posts_per_s=100.0, min_cos_vs_baseline=1.0)
    report = {"date": "d", "cpu": "Fake CPU", "cpus": 64, "usable_cpus": 4, "flags": ["avx512f", "amx_bf16"],
              "amx_tiles": False, "load_start": (0.5,), "load_end": (0.7,), "posts": 10, "workload": "w",
              "rounds": 1, "baseline": {"what": "ST", "posts_per_s": 50.0}, **verdict}
    head = gate.table(report)[0]
    assert "| Fake CPU | 64 CPUs (4 usable) | flags: avx512f amx_bf16 (no AMX tile state in this kernel) |" in head
    assert gate.SHOWN_FLAGS is PATH_FLAGS  # one list


def test_the_baseline_runs_on_the_cpus_a_quota_leaves_as_our_rows_do(monkeypatch):
    """torch's default thread count reads a CPU mask but not a cgroup quota: in a container with a CPU limit on a
    larger host (a CI pod) the baseline ran a thread per host core, throttled, against our rows' quota
    (cpu.model_threads), and every ratio rose with its slowdown. Here: a fake quota of 1 CPU, fake rows."""
    import torch

    from postemb_rt import cpu

    monkeypatch.setattr(cpu, "cgroup_cpu_quota", lambda *a, **k: 1.0)
    monkeypatch.delenv("POSTEMB_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []

    def rows(model, fastest):
        def encode(texts, name):
            seen.append((name, torch.get_num_threads()))
            return np.ones((len(texts), 4), np.float32) / 2
        encoders = {n: (lambda texts, n=n: encode(texts, n)) for n in (gate.BASELINE, *gate.PROVIDERS)}
        return encoders, {n: n for n in encoders}

    monkeypatch.setattr(gate, "load_rows", rows)
    saved = torch.get_num_threads()
    try:
        report = gate.run(8, 2, gate.FLOORS)
    finally:
        torch.set_num_threads(saved)
    assert {t for n, t in seen if n == gate.BASELINE} == {1} and report["baseline"]["threads"] == 1
    if os.cpu_count() > 1:
        assert cpu.model_threads() == 1  # our rows: the same one CPU
    assert gate.table(report)[1].endswith("posts/s (median), torch threads: 1")
