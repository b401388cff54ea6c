"""What this CPU can do, as the runtime's choices need it: its feature flags, and whether bf16
(AVX512-BF16 or AMX) and OpenVINO's int8 (AVX512-VNNI or AMX) run natively for the libraries we
call."""
from __future__ import annotations

import math
import os
from pathlib import Path

# The CPU flags that decide the runtime's fast paths (native bf16, OpenVINO's int8), shown in reports.
# avx_vnni: onnxruntime's int8 kernels (mlas_int8_kernels) on a CPU without AVX-512.
PATH_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
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


def _cap_setting(environ=None) -> str:
    """The variable that sets the oneDNN cap and its value as given ("ONEDNN_MAX_CPU_ISA=AVX2"), "" when unset."""
    environ = os.environ if environ is None else environ
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if environ.get(name, "").strip():
            return f"{name}={environ[name].strip()}"
    return ""


def onednn_cap(environ=None) -> str:
    """The ISA cap oneDNN (torch's, and OpenVINO's copy) reads, upper-cased, "" when unset: its
    variable ONEDNN_MAX_CPU_ISA, else the older name DNNL_MAX_CPU_ISA (oneDNN reads both, ONEDNN_
    first, an empty value as unset: seen with torch 2.13's oneDNN 3.12; OpenVINO 2026.4.1's copy
    honours DNNL_MAX_CPU_ISA too)."""
    return _cap_setting(environ).partition("=")[2].upper()


def _native(any_of: set[str], level: str, flags: set[str] | None, environ) -> bool:
    """The CPU has one of the flags ``any_of`` and the oneDNN cap (:func:`onednn_cap`) does not
    hold oneDNN below ``level`` (one of ONEDNN_ISAS)."""
    flags = cpu_flags() if flags is None else flags
    return bool(any_of & flags) and onednn_cap(environ) not in ONEDNN_ISAS[:ONEDNN_ISAS.index(level)]


# kind -> (the flags that run it natively, the oneDNN level they need, their names for a reason)
NATIVE = {"bf16": ({"avx512_bf16", "amx_bf16"}, "AVX512_CORE_BF16", "AVX512-BF16 and AMX-BF16"),
          "int8": ({"avx512_vnni", "amx_int8"}, "AVX512_CORE_VNNI", "AVX512-VNNI and AMX-INT8")}


def not_native(kind: str, flags: set[str] | None = None, environ=None) -> str:
    """Why ``kind`` ("bf16": :func:`native_bf16`; "int8": OpenVINO's, :func:`vnni512`) does not run
    natively here, for a report ("" when it does): the CPU lacks its instructions, or the oneDNN
    cap, named as set, holds oneDNN below them (a cap set fleet-wide on CPUs that have them)."""
    any_of, level, names = NATIVE[kind]
    flags = cpu_flags() if flags is None else flags
    if not any_of & flags:
        return f"this CPU lacks {names}"
    if _native(any_of, level, flags, environ):
        return ""
    return f"{_cap_setting(environ)} holds oneDNN below {level}, which this CPU has"


def native_bf16(flags: set[str] | None = None, environ=None) -> bool:
    """True when bf16 matmuls run natively here: the CPU has AVX512-BF16 or AMX-BF16 and
    ONEDNN_MAX_CPU_ISA does not hold oneDNN below them (then bf16 would be emulated, slower than
    fp32, and OpenVINO's bf16 graph does not compile; DNNL_MAX_CPU_ISA, its older name, counts too)."""
    return _native(*NATIVE["bf16"][:2], flags, environ)


def vnni512(flags: set[str] | None = None, environ=None) -> bool:
    """True when OpenVINO's int8 matmuls run natively here: the CPU has AVX512-VNNI or AMX-INT8
    and ONEDNN_MAX_CPU_ISA does not hold oneDNN below them. Measured with AVX512-VNNI (Zen 5,
    RESULTS.md "Static int8 on OpenVINO"); the AMX CPUs have it too. Held below VNNI it was no
    faster than onnxruntime's int8 (AVX512_CORE) or slower than fp32 (AVX2), so elsewhere int8
    stays on onnxruntime."""
    return _native(*NATIVE["int8"][:2], flags, environ)


# The flags with which onnxruntime's MLAS multiplies u8 x s8 int8 matmuls with VNNI into int32 (AVX512-VNNI,
# AVX-VNNI, AMX-INT8); without one it uses vpmaddubsw, whose int16 sums of pairs saturate (onnxruntime's
# quantization docs), so its int8 computes other numbers there.
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
# How each kernel of mlas_int8_kernels sums (the reports' and the onnxruntime backend's one wording)
MLAS_INT8_SUMS = {"u8s8-vnni": "VNNI or AMX-INT8: exact int32 sums",
                  "u8s8-madd16": "vpmaddubsw: int16 pair sums may saturate"}


def mlas_int8_kernels(flags: set[str] | None = None) -> str:
    """Which u8 x s8 dot product onnxruntime's int8 matmuls run on this CPU: "u8s8-vnni" (exact int32
    sums) or "u8s8-madd16" (vpmaddubsw: pair sums saturate at int16). MLAS reads cpuid itself, so
    ONEDNN_MAX_CPU_ISA does not change it."""
    flags = cpu_flags() if flags is None else flags
    return "u8s8-vnni" if flags & VNNI_FLAGS else "u8s8-madd16"


# arch_prctl(2) on Linux x86-64: its syscall number, the query for the XSAVE state components the
# kernel supports (Linux >= 5.16, asm/prctl.h) and AMX tile data's component (asm/fpu/types.h).
SYS_ARCH_PRCTL, ARCH_GET_XCOMP_SUPP, XFEATURE_XTILEDATA = 158, 0x1021, 18


def kernel_amx_tiles(libc=None) -> bool | None:
    """True when the kernel supports AMX tile state (arch_prctl ARCH_GET_XCOMP_SUPP lists XTILEDATA),
    False when it does not (a kernel before 5.16 answers EINVAL, and may list the amx_* flags in
    /proc/cpuinfo all the same: then no library can use the tiles), None where it cannot be asked
    (not Linux x86-64). A process must also request the tiles (ARCH_REQ_XCOMP_PERM) before its
    first tile instruction: oneDNN (torch's and OpenVINO's), MLAS and torch do that themselves,
    so nothing here needs to. ``libc``: for tests."""
    import ctypes
    import platform
    import sys

    if libc is None:
        if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
            return None
        libc = ctypes.CDLL(None, use_errno=True)
    mask = ctypes.c_uint64(0)
    try:  # syscall(2) is variadic: its arguments passed as longs, as it reads them
        rc = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_GET_XCOMP_SUPP), ctypes.byref(mask))
    except (AttributeError, OSError):
        return None
    return rc == 0 and bool(mask.value >> XFEATURE_XTILEDATA & 1)


# oneDNN levels below AMX beyond ONEDNN_ISAS (whose last, AVX512_CORE_BF16, is below it too)
BELOW_AMX = (*ONEDNN_ISAS, "AVX512_CORE_FP16")


def amx_tiles(flags: set[str] | None = None, environ=None, kernel_amx=None) -> bool:
    """True when oneDNN (torch's, OpenVINO's copy) runs bf16 matmuls on AMX tiles here: ``amx_bf16`` in the
    flags, a kernel that enables tile state (:func:`kernel_amx_tiles` not False; ``kernel_amx``: for tests)
    and no oneDNN cap below AMX."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" not in flags or onednn_cap(environ) in BELOW_AMX:
        return False
    return (kernel_amx_tiles() if kernel_amx is None else kernel_amx) is not False


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


def _quota_files(proc_cgroup: str, cgroup_root: str) -> list[tuple[Path, str]]:
    """(file, "v2" | "v1") for this process's cgroup and each of its ancestors: cgroup v2's
    cpu.max, v1's cpu.cfs_quota_us (under the cpu controller's mount)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            mounts, name, kind = [Path(cgroup_root)], "cpu.max", "v2"
        elif "cpu" in controllers.split(","):
            mounts, name, kind = [Path(cgroup_root) / d for d in ("cpu,cpuacct", "cpu")], "cpu.cfs_quota_us", "v1"
        else:
            continue
        parts = [q for q in path.strip("/").split("/") if q]
        for mount in mounts:
            for depth in range(len(parts), -1, -1):
                out.append((mount.joinpath(*parts[:depth]) / name, kind))
    return out


def cgroup_cpu_quota(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (a container's ``--cpus``, a Kubernetes CPU
    limit): the smallest over its cgroup and their ancestors, cgroup v2 or v1; None without one."""
    quotas = []
    for f, kind in _quota_files(proc_cgroup, cgroup_root):
        try:
            if kind == "v2":
                quota, period = f.read_text().split()[:2]
            else:
                quota, period = f.read_text().strip(), (f.parent / "cpu.cfs_period_us").read_text().strip()
            if quota not in ("max", "-1") and int(period) > 0:
                quotas.append(int(quota) / int(period))
        except (OSError, ValueError):
            continue
    return min(quotas) if quotas else None


def usable_cpus(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: its affinity mask (``taskset``, a container's cpuset), capped
    by its cgroup CPU quota rounded up."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(proc_cgroup, cgroup_root)
    return max(1, min(n, math.ceil(quota))) if quota else n


def physical_cores(cpus: set[int] | None = None, sysfs: str = "/sys/devices/system/cpu") -> int | None:
    """The physical cores among ``cpus`` (default: this process's affinity mask): distinct (socket,
    core id) pairs of Linux's sysfs topology, so SMT siblings count once; None where a CPU's
    topology cannot be read."""
    cpus = os.sched_getaffinity(0) if cpus is None else cpus
    found = set()
    for c in cpus:
        topo = Path(sysfs) / f"cpu{c}" / "topology"
        try:
            found.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(found) or None


def omp_threads(environ=None) -> int | None:
    """``OMP_NUM_THREADS`` as OpenMP reads it: the first (outermost) level of its comma-separated list
    when that is an integer >= 1, else None (unset, or a value OpenMP ignores too)."""
    environ = os.environ if environ is None else environ
    first = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def model_threads(environ=None, usable: int | None = None) -> int:
    """Intra-op threads for onnxruntime, OpenVINO and torch on the CPU: ``POSTEMB_NUM_THREADS`` when
    set and not 0 (0 is the default, as ``postemb serve --threads 0``; it used to mean the library's
    own, which leaves a CPU mask); else ``OMP_NUM_THREADS`` (:func:`omp_threads`), which worker
    launchers set per worker (Ray to a task's num_cpus, 1 by default) and torch honours but
    onnxruntime and OpenVINO do not read;
    else, when this process may use fewer CPUs than the machine has (:func:`usable_cpus`), that
    many; else 0, the library's default (one thread per physical core). Without it, onnxruntime's
    default counts every physical core of the machine and pins a thread to each, so it leaves
    ``taskset`` and runs on cores given to other processes (two processes set to a core each:
    126-135 posts/s each, 167-173 with this; benchmarks/RESULTS.md "CPU limits"), and neither
    library reads a cgroup quota."""
    environ = os.environ if environ is None else environ
    value = environ.get("POSTEMB_NUM_THREADS", "").strip()
    if value:
        if not value.isdigit():
            from .errors import ValidationError

            raise ValidationError(f"`POSTEMB_NUM_THREADS` must be an integer >= 0 (0: the default). "
                                  f"Given: {value!r}. Fix: e.g. 1 per worker, or unset it.")
        if int(value):
            return int(value)
    omp = omp_threads(environ)
    if omp is not None:
        return omp
    usable = usable_cpus() if usable is None else usable
    return usable if usable < (os.cpu_count() or usable) else 0


_READ = object()


def describe(flags: set[str] | None = None, environ=None, usable: int | None = None, machine: int | None = None,
             quota=_READ, kernel_amx=_READ) -> list[str]:
    """What the runtime reads of this CPU, as lines for a report (``python -m postemb_rt.cpu``):
    the CPUs it may use, the flags that pick a path, the oneDNN cap and what it leaves native,
    onnxruntime's int8 kernels, and whether the kernel enables AMX tile state. Every argument
    defaults to this machine's."""
    flags = cpu_flags() if flags is None else flags
    quota = cgroup_cpu_quota() if quota is _READ else quota
    usable = usable_cpus() if usable is None else usable
    machine = (os.cpu_count() or usable) if machine is None else machine
    kernel_amx = kernel_amx_tiles() if kernel_amx is _READ else kernel_amx
    cap, mlas = onednn_cap(environ), mlas_int8_kernels(flags)
    yes = {True: "yes", False: "no"}
    amx = {True: "yes", None: "unknown (not Linux x86-64)"}.get(kernel_amx, "no") + (
        " (amx_* flags without it: a kernel before 5.16; no library can use tiles)"
        if kernel_amx is False and any(f.startswith("amx_") for f in flags) else "")
    return [f"CPUs usable: {usable} of {machine} (affinity mask"
            + (f" and cgroup quota {quota:g} CPUs)" if quota else "; no cgroup quota)"),
            f"flags that pick a path: {' '.join(f for f in PATH_FLAGS if f in flags) or 'none'}",
            f"oneDNN cap: {cap or 'none'} -> native bf16 {yes[native_bf16(flags, environ)]}, OpenVINO int8 "
            f"(AVX512-VNNI/AMX) {yes[vnni512(flags, environ)]}",
            f"onnxruntime int8 (MLAS, from cpuid; no cap holds it): {mlas} ({MLAS_INT8_SUMS[mlas]})",
            f"AMX tile state in this kernel: {amx}"]


if __name__ == "__main__":
    print("\n".join(describe()))
