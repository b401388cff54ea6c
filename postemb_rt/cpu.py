"""What this CPU can do, as the runtime's choices need it: its feature flags, and whether bf16
(AVX512-BF16 or AMX) and OpenVINO's int8 (AVX512-VNNI or AMX) run natively for the libraries we
call."""
from __future__ import annotations

import os

# ONEDNN_MAX_CPU_ISA values, lowest first, up to the first level with native bf16 (oneDNN's order;
# OpenVINO's copy of oneDNN honours the same variable)
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The kernel's feature flags of the first CPU (empty where there is no /proc/cpuinfo)."""
    try:
        with open(path) as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def _native(any_of: set[str], level: str, flags: set[str] | None, environ) -> bool:
    """The CPU has one of the flags ``any_of`` and ONEDNN_MAX_CPU_ISA does not hold oneDNN below
    ``level`` (one of ONEDNN_ISAS)."""
    flags = cpu_flags() if flags is None else flags
    cap = (os.environ if environ is None else environ).get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return bool(any_of & flags) and cap not in ONEDNN_ISAS[:ONEDNN_ISAS.index(level)]


def native_bf16(flags: set[str] | None = None, environ=None) -> bool:
    """True when bf16 matmuls run natively here: the CPU has AVX512-BF16 or AMX-BF16 and
    ONEDNN_MAX_CPU_ISA does not hold oneDNN below them (then bf16 would be emulated, slower than
    fp32, and OpenVINO's bf16 graph does not compile)."""
    return _native({"avx512_bf16", "amx_bf16"}, "AVX512_CORE_BF16", flags, environ)


def vnni512(flags: set[str] | None = None, environ=None) -> bool:
    """True when OpenVINO's int8 matmuls run natively here: the CPU has AVX512-VNNI or AMX-INT8
    and ONEDNN_MAX_CPU_ISA does not hold oneDNN below them. Measured with AVX512-VNNI (Zen 5,
    RESULTS.md "Static int8 on OpenVINO"); the AMX CPUs have it too. Held below VNNI it was no
    faster than onnxruntime's int8 (AVX512_CORE) or slower than fp32 (AVX2), so elsewhere int8
    stays on onnxruntime."""
    return _native({"avx512_vnni", "amx_int8"}, "AVX512_CORE_VNNI", flags, environ)


# oneDNN verbose modes that time every primitive's execution (ONEDNN_VERBOSE, or its old name
# DNNL_VERBOSE; comma-separated): 1, 2, all, profile, profile_exec. Measured with OpenVINO 2026.4.1:
# with any of them set, its CPU plugin fails to compile our graph ("could not execute a primitive"
# on a constant's reorder); 0, none, error, check, dispatch and profile_create compile.
VERBOSE_EXEC = {"1", "2", "all", "profile", "profile_exec"}


def onednn_exec_verbose(environ=None) -> str | None:
    """``"NAME=value"`` when oneDNN's verbose mode times primitive executions (VERBOSE_EXEC), else
    None. OpenVINO's CPU plugin cannot compile our graph then, so backend="auto" leaves it out."""
    environ = os.environ if environ is None else environ
    for name in ("ONEDNN_VERBOSE", "DNNL_VERBOSE"):
        value = environ.get(name, "")
        if {v.strip().lower() for v in value.split(",")} & VERBOSE_EXEC:
            return f"{name}={value}"
    return None
