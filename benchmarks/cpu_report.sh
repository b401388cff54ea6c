#!/usr/bin/env bash
# Every CPU measurement of issue 27 on this machine, one command after another, into one log:
# the CPU, the throughput gate, the full encode table, sentence-transformers on its own OpenVINO
# backend, where each fast path's time goes (OpenVINO's and torch's kernel names: `amx` on AMX), the server at
# onnxruntime fp32, its default and int8, then the dynamic batcher at the server's precision, the
# near-line worker at its default (fp32) and at `auto`, and the Ray backfill (the near-line steps
# need redis-server). 23 minutes on a 2-core Zen 4; run it on an idle machine.
#
#   make cpu-report                       # or: bash benchmarks/cpu_report.sh [LOG]
#
# LOG (default .benchmarks/cpu-report-<date>.txt) gets everything printed. A step that fails is
# named at the end and the script exits 1; the steps after it still run. PY and ST_OV_PY are the
# project's Python and the side environment's (`make compare-st-openvino` builds it).
set -u -o pipefail
cd "$(dirname "$0")/.."
LOG=${1:-.benchmarks/cpu-report-$(date -u +%Y%m%d-%H%M).txt}
PY=${PY:-.venv/bin/python}
ST_OV_PY=${ST_OV_PY:-.venv-st-openvino/bin/python}
mkdir -p "$(dirname "$LOG")"
failed=()

step() {  # step NAME COMMAND...: run it, log it, remember a failure
    local name=$1; shift
    { echo; echo "## $name ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1 /proc/loadavg)): $*"; } | tee -a "$LOG"
    "$@" 2>&1 | grep --line-buffered -v 'it/s]$' | tee -a "$LOG" || failed+=("$name")
}

# lscpu in the C locale (its labels are translated otherwise); sockets, NUMA nodes and SMT set what the
# thread counts mean on a server; then what the runtime reads: usable CPUs (taskset, cgroup quota), the
# oneDNN cap, and whether the kernel enables AMX tile state (amx_* flags alone do not say).
{ echo "# CPU report, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null)"
  LC_ALL=C lscpu | grep -E '^(Vendor ID|Model name|CPU family|Model|Stepping|CPU\(s\)|Thread\(s\) per core|'\
'Core\(s\) per socket|Socket\(s\)|NUMA node\(s\)|Hypervisor vendor|Flags):'
  "$PY" -m postemb_rt.cpu
  nproc; uptime; } | tee "$LOG"

step gate "$PY" benchmarks/throughput_gate.py
step compare "$PY" benchmarks/compare.py --n 4000 --long 500 --repeats 3 --providers \
    sentence-transformers,torch,onnxruntime,openvino,torch:bf16,openvino:bf16,onnxruntime:int8,openvino:int8,auto:auto
if [ -x "$ST_OV_PY" ]; then
    step compare-st-openvino "$ST_OV_PY" benchmarks/compare.py --n 4000 --long 500 --repeats 3 --providers st-openvino
else
    echo "## compare-st-openvino: skipped, $ST_OV_PY not found (make compare-st-openvino builds it)" | tee -a "$LOG"
    failed+=(compare-st-openvino)
fi
step profile-openvino-bf16 "$PY" benchmarks/profile_cpu.py --backend openvino --precision bf16
step profile-openvino-int8 "$PY" benchmarks/profile_cpu.py --backend openvino --precision int8
step profile-torch-bf16 "$PY" benchmarks/profile_cpu.py --precision bf16
step profile-onnxruntime-int8 "$PY" benchmarks/profile_cpu.py --backend onnxruntime --precision int8
for bp in "onnxruntime fp32" "auto auto" "openvino int8"; do
    set -- $bp
    step "server-$1-$2" "$PY" benchmarks/load_server.py --model base --backend "$1" --precision "$2" \
        --clients 1,64 --batch-clients 1 --requests 1000 --batch-requests 20 --posts 2000
done
step batcher-auto-auto "$PY" benchmarks/load_batcher.py --backend auto --precision auto
for p in fp32 auto; do
    step "nearline-auto-$p" "$PY" benchmarks/load_nearline.py --search-only --workers 2 --model default --precision "$p"
done
step backfill "$PY" benchmarks/bench_backfill.py --n 8000 --files 4 --rounds 2

echo | tee -a "$LOG"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (log: $LOG)" | tee -a "$LOG"
    exit 1
fi
echo "every step ran (log: $LOG)" | tee -a "$LOG"
