"""benchmarks/cpu_report.sh: every step runs, in order, into one log, and a failed step is named at
the end without stopping the ones after it (the benchmarks replaced by a stub Python that prints
its arguments, so no timing happens here)."""
import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["gate", "compare", "compare-st-openvino", "profile-openvino-bf16", "profile-openvino-int8",
         "profile-torch-bf16", "profile-onnxruntime-int8",
         "server-onnxruntime-fp32", "server-auto-auto", "server-openvino-int8",
         "batcher-auto-auto", "nearline-auto-fp32", "nearline-auto-auto", "backfill"]


def _stub(tmp_path, fail_when: str = "") -> Path:
    """A stand-in for Python: prints its arguments; exits 3 when they contain ``fail_when``."""
    stub = tmp_path / "python"
    fail = f'case "$*" in *"{fail_when}"*) exit 3;; esac\n' if fail_when else ""
    stub.write_text('#!/bin/sh\necho "ran: $*"\n' + fail)
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return stub


def _run(tmp_path, stub, st_ov=None):
    log = tmp_path / "report.txt"
    env = {**os.environ, "PY": str(stub), "ST_OV_PY": str(st_ov or stub)}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "cpu_report.sh"), str(log)], env=env,
                       capture_output=True, text=True, timeout=60)
    return r, log.read_text()


def test_every_step_runs_in_order_into_one_log(tmp_path):
    r, log = _run(tmp_path, _stub(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert log.startswith("# CPU report, ") and "Model name:" in log
    header = log.split("\n## ")[0]
    # the topology and vendor lines an unfamiliar server needs (sockets, NUMA nodes, SMT), and the runtime's view
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
    keys = [k for k in ("Vendor ID", "CPU(s)", "Socket(s)", "NUMA node(s)", "Thread(s) per core", "Flags")
            if f"\n{k}:" in "\n" + lscpu]  # the ones this machine's lscpu prints (NUMA needs /sys)
    assert {"Vendor ID", "CPU(s)", "Socket(s)", "Flags"} <= set(keys)
    assert all(f"\n{k}:" in header for k in keys)
    assert "ran: -m postemb_rt.cpu" in header  # usable CPUs, the oneDNN cap, the kernel's AMX tile state
    headers = [line.split(" (")[0][3:] for line in log.splitlines() if line.startswith("## ")]
    assert headers == STEPS
    assert "ran: benchmarks/profile_cpu.py --backend openvino --precision int8" in log
    assert "ran: benchmarks/load_server.py --model base --backend auto --precision auto" in log
    assert "ran: benchmarks/load_nearline.py --search-only --workers 2 --model default --precision auto" in log
    assert log.rstrip().endswith(f"every step ran (log: {tmp_path / 'report.txt'})")


def test_a_failed_step_is_named_at_the_end_and_the_rest_still_run(tmp_path):
    r, log = _run(tmp_path, _stub(tmp_path, fail_when="--precision int8"))
    assert r.returncode == 1
    assert "FAILED: profile-openvino-int8 profile-onnxruntime-int8 server-openvino-int8" in log
    assert "ran: benchmarks/load_server.py --model base --backend auto --precision auto" in log
    assert "ran: benchmarks/bench_backfill.py --n 8000 --files 4 --rounds 2" in log


def test_a_missing_side_environment_fails_that_step_with_the_fix(tmp_path):
    r, log = _run(tmp_path, _stub(tmp_path), st_ov=tmp_path / "absent" / "python")
    assert r.returncode == 1
    assert "make compare-st-openvino builds it" in log and "FAILED: compare-st-openvino" in log
    assert "ran: benchmarks/load_server.py" in log


def test_the_side_environment_step_runs_compares_named_set_of_st_openvino_rows(tmp_path):
    from benchmarks.compare import provider_list

    _, log = _run(tmp_path, _stub(tmp_path))
    assert "ran: benchmarks/compare.py --n 4000 --long 500 --repeats 3 --providers st-openvino" in log
    rows = provider_list("st-openvino")
    assert rows[:2] == ["sentence-transformers", "sentence-transformers:openvino"] and "openvino:int8" in rows
    assert provider_list("torch,onnxruntime:int8") == ["torch", "onnxruntime:int8"]
