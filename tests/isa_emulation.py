"""Older x86 CPUs, emulated on this one: the backend, precision and kernel tests again with the
libraries held to an older instruction set (run by `make test` through `make test-isa`).

    python -m tests.isa_emulation [avx2|avx512-core|avx512-vnni ...] [-- extra pytest args]

| pass | stands for | oneDNN | MKL | ATen | our pooling kernel |
|---|---|---|---|---|---|
| avx2 | AVX2 only (Haswell .. Zen 3) | ONEDNN_MAX_CPU_ISA=AVX2 | MKL_ENABLE_INSTRUCTIONS=AVX2 | ATEN_CPU_CAPABILITY=avx2 | POSTEMB_CPU_ISA=avx2 |
| avx512-core | AVX-512 without BF16 or VNNI (Skylake-SP) | AVX512_CORE | AVX512 | avx512 | POSTEMB_CPU_ISA=generic (the portable fallback) |
| avx512-vnni | AVX-512 with VNNI, without BF16 (Cascade Lake, Ice Lake) | AVX512_CORE_VNNI | AVX512_E1 | avx512 | POSTEMB_CPU_ISA=avx512 |

OpenVINO's CPU plugin bundles its own oneDNN and honours ONEDNN_MAX_CPU_ISA too.

Not emulated: MLAS, onnxruntime's own kernels. onnxruntime 1.32 has no run-time switch for them
(MLAS picks its kernels from cpuid in its platform constructor; its only ISA options are build
flags, e.g. onnxruntime PR 20215), so onnxruntime still runs this CPU's best kernels in every pass,
and the int8 tests are left out of the two passes below VNNI (``-k "not int8"``; they are also the
slowest): there int8 runs on onnxruntime, since OpenVINO's int8 is offered only from AVX512-VNNI up
(``postemb_rt.cpu.vnni512``; held below it, its int8 matmuls ran slower or no faster, and less
exactly: a small test graph's int8 matmul was off by 12% of its range, against under 1% with
VNNI). The avx512-vnni pass runs them (and the pass checks of tests/test_isa_emulation.py; the
float tests would repeat avx512-core): there ``precision="auto"`` skips bf16 (not native) and
takes OpenVINO's int8 with its float part in f32, the path of the most common AVX-512 Xeons,
which no machine here has natively. Nor does anything that reads the CPU's features itself
change: /proc/cpuinfo, torch's ``_is_mkldnn_bf16_supported``, OpenVINO's
OPTIMIZATION_CAPABILITIES. tests/test_isa_emulation.py checks that each pass's variables take
effect.
"""
from __future__ import annotations

import os
import subprocess
import sys

from postemb_rt.cpu import cpu_flags

PASSES = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "POSTEMB_CPU_ISA": "avx2"},
    "avx512-core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                    "ATEN_CPU_CAPABILITY": "avx512", "POSTEMB_CPU_ISA": "generic"},
    "avx512-vnni": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX512_E1",
                    "ATEN_CPU_CAPABILITY": "avx512", "POSTEMB_CPU_ISA": "avx512"},
}
# The tests that exercise the ISA-dependent code: every backend against the torch reference (the C++
# pooling kernel on the path the pass forces), bf16 and the fidelity bar. The kernel's own tests
# already run every path on this CPU (tests/kernels), so they are not repeated. tests/test_profile_cpu.py:
# the profiler reads oneDNN's verbose lines, which name the ISA a pass holds (an AVX2-only CPU once captured none).
# The CPU features a pass needs (it can only hold libraries below what the CPU has).
NEEDS = {"avx2": {"avx2"}, "avx512-core": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
         "avx512-vnni": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}}
TESTS = ["tests/backends", "tests/test_precision.py", "tests/test_isa_emulation.py", "tests/test_profile_cpu.py"]
# The VNNI pass runs only what differs from avx512-core there: the int8 tests and the pass's own checks.
SELECT = {"avx2": ["-k", "not int8"], "avx512-core": ["-k", "not int8"], "avx512-vnni": ["-k", "int8 or pass"]}
# Emulation artefacts, per pass: tests that fail only because the emulation is partial (none today:
# OpenVINO's bf16 under ONEDNN_MAX_CPU_ISA below BF16 is refused by the runtime, postemb_rt.cpu).
DESELECT: dict[str, list[str]] = {}




def missing(name: str) -> list[str]:
    """The features the pass needs that this CPU lacks (then the pass cannot run here)."""
    return sorted(NEEDS[name] - cpu_flags())


def env_for(name: str) -> dict:
    """os.environ with the pass's variables set."""
    if name not in PASSES:
        raise ValueError(f"`pass` must be one of {sorted(PASSES)}. Given: {name!r}.")
    return {**os.environ, **PASSES[name], "POSTEMB_ISA_PASS": name}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    names = (argv[: argv.index("--")] if "--" in argv else argv) or list(PASSES)
    worst = 0
    for name in names:
        env = env_for(name)
        if missing(name):
            print(f"== emulated ISA pass {name}: not run, this CPU lacks {', '.join(missing(name))}", flush=True)
            continue
        print(f"== emulated ISA pass {name}: {' '.join(f'{k}={v}' for k, v in PASSES[name].items())}", flush=True)
        deselect = [arg for nodeid in DESELECT.get(name, ()) for arg in ("--deselect", nodeid)]
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *SELECT[name],
                              *deselect, *extra], env=env)
        worst = max(worst, rc)
    return worst


if __name__ == "__main__":
    sys.exit(main())
