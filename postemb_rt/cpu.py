"""What this CPU can do, as the runtime's choices need it: its feature flags, and whether bf16
(AVX512-BF16 or AMX) and OpenVINO's int8 (AVX512-VNNI or AMX) run natively for the libraries we
call."""
from __future__ import annotations

import os

# ONEDNN_MAX_CPU_ISA values that hold oneDNN (and OpenVINO's copy of it) below native bf16
BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
# ... and below AVX-512 VNNI, OpenVINO's int8 matmuls (held at AVX2, they fail to compile)
BELOW_VNNI512 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE"}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The kernel's feature flags of the first CPU (empty where there is no /proc/cpuinfo)."""
    try:
        with open(path) as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def native_bf16(flags: set[str] | None = None, environ=None) -> bool:
    """True when bf16 matmuls run natively here: the CPU has AVX512-BF16 or AMX-BF16 and
    ONEDNN_MAX_CPU_ISA does not hold oneDNN below them (then bf16 would be emulated, slower than
    fp32, and OpenVINO's bf16 graph does not compile)."""
    flags = cpu_flags() if flags is None else flags
    cap = (os.environ if environ is None else environ).get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return bool({"avx512_bf16", "amx_bf16"} & flags) and cap not in BELOW_BF16


def vnni512(flags: set[str] | None = None, environ=None) -> bool:
    """True when OpenVINO's int8 matmuls run natively here: the CPU has AVX512-VNNI or AMX-INT8
    and ONEDNN_MAX_CPU_ISA does not hold oneDNN below them. Measured with AVX512-VNNI (Zen 5,
    RESULTS.md "int8 on OpenVINO"); the AMX CPUs have it too. Elsewhere int8 stays on onnxruntime."""
    flags = cpu_flags() if flags is None else flags
    cap = (os.environ if environ is None else environ).get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return bool({"avx512_vnni", "amx_int8"} & flags) and cap not in BELOW_VNNI512
