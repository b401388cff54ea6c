"""postemb_rt.cpu on faked CPUs: the oneDNN cap under both of its variable names, and whether the
kernel lets a process use AMX tiles (no vendor's microarchitecture assumed)."""
import pytest

from postemb_rt import cpu

BF16_CPU = {"avx512f", "avx512_vnni", "avx512_bf16"}


@pytest.mark.parametrize("env, bf16, vnni", [
    ({"DNNL_MAX_CPU_ISA": "AVX2"}, False, False),  # oneDNN's older name holds it as well
    ({"DNNL_MAX_CPU_ISA": "avx512_core_vnni"}, False, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "DNNL_MAX_CPU_ISA": "AVX2"}, True, True),  # ONEDNN_ first
    ({"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX"}, False, False),
    ({"ONEDNN_MAX_CPU_ISA": "", "DNNL_MAX_CPU_ISA": "AVX2"}, False, False),  # an empty value is unset
])
def test_the_onednn_cap_is_read_under_both_names_as_onednn_reads_it(env, bf16, vnni):
    assert cpu.native_bf16(BF16_CPU, env) is bf16
    assert cpu.vnni512(BF16_CPU, env) is vnni


class FakeLibc:
    """arch_prctl(ARCH_GET_XCOMP_SUPP) through ``syscall``: returns ``rc`` and writes ``mask``."""

    def __init__(self, rc, mask=0):
        self.rc, self.mask, self.calls = rc, mask, []

    def syscall(self, number, code, out):
        self.calls.append((number.value, code.value))
        out._obj.value = self.mask
        return self.rc


@pytest.mark.parametrize("libc, want", [
    (FakeLibc(0, 0x602e7), True),   # x87 .. AVX-512 state and XTILECFG/XTILEDATA (bits 17, 18): Linux >= 5.16 on AMX
    (FakeLibc(0, 0xe7), False),     # a kernel that knows AMX on a CPU (or VM) without it
    (FakeLibc(-1), False),          # EINVAL: a kernel before 5.16, which may list amx_* flags all the same
])
def test_kernel_amx_tiles_asks_the_kernel_for_tile_state(libc, want):
    assert cpu.kernel_amx_tiles(libc=libc) is want
    assert libc.calls == [(158, 0x1021)]  # SYS_arch_prctl, ARCH_GET_XCOMP_SUPP


def test_kernel_amx_tiles_on_this_machine_agrees_with_its_flags():
    got = cpu.kernel_amx_tiles()
    assert got in (True, False, None)
    if got:  # a kernel with tile state lists the flags; the flags without it mean an old kernel
        assert "amx_tile" in cpu.cpu_flags()


def test_describe_says_what_the_runtime_reads_of_this_cpu():
    lines = cpu.describe(flags={"avx512f", "avx512_bf16", "amx_bf16", "sse2"}, environ={"DNNL_MAX_CPU_ISA": "avx2"},
                         usable=3, machine=64, quota=2.5, kernel_amx=False)
    assert lines == [
        "CPUs usable: 3 of 64 (affinity mask and cgroup quota 2.5 CPUs)",
        "flags that pick a path: avx512f avx512_bf16 amx_bf16",
        "oneDNN cap: AVX2 -> native bf16 no, OpenVINO int8 (AVX512-VNNI/AMX) no",
        "onnxruntime int8 (MLAS, from cpuid; no cap holds it): u8s8-madd16 (vpmaddubsw: int16 pair sums may saturate)",
        "AMX tile state in this kernel: no (amx_* flags without it: a kernel before 5.16; no library can use tiles)",
    ]
    plain = cpu.describe(flags=set(), environ={}, usable=2, machine=2, quota=None, kernel_amx=None)
    assert plain[0] == "CPUs usable: 2 of 2 (affinity mask; no cgroup quota)"
    assert plain[1] == "flags that pick a path: none" and plain[2].startswith("oneDNN cap: none -> native bf16 no")
    assert plain[4] == "AMX tile state in this kernel: unknown (not Linux x86-64)"


def test_python_m_postemb_rt_cpu_prints_the_description_of_this_machine():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "postemb_rt.cpu"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("CPUs usable: ") and "AMX tile state in this kernel: " in r.stdout


def _topology(tmp_path, cores: dict[int, tuple[int, int]]):
    """A fake /sys/devices/system/cpu: {cpu: (socket, core id)}."""
    for c, (package, core) in cores.items():
        topo = tmp_path / f"cpu{c}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return str(tmp_path)


def test_physical_cores_counts_smt_siblings_once_and_each_socket_apart(tmp_path):
    # 2 sockets x 2 cores x 2 threads; core ids repeat on each socket, as Linux numbers them
    sysfs = _topology(tmp_path, {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1),
                                 4: (0, 0), 5: (0, 1), 6: (1, 0), 7: (1, 1)})
    assert cpu.physical_cores(set(range(8)), sysfs) == 4
    assert cpu.physical_cores({0, 4}, sysfs) == 1  # one core's two hyperthreads (taskset -c 0,4)
    assert cpu.physical_cores({0, 2}, sysfs) == 2
    assert cpu.physical_cores({0, 9}, sysfs) is None  # cpu9 unreadable: unknown, not a guess


def test_physical_cores_of_this_process_are_at_most_its_cpus():
    import os

    n = cpu.physical_cores()
    assert n is None or 1 <= n <= len(os.sched_getaffinity(0))


SPR_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse2 avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni \
amx_bf16 avx512_fp16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer posted_intr invvpid ept_x_only
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
flags\t\t: fpu sse2
"""


def test_an_intel_amx_cpuinfo_gives_the_first_cpus_flags_and_the_paths_they_open(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(SPR_CPUINFO)
    flags = cpu.cpu_flags(str(path))
    assert {"amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512_fp16"} <= flags
    assert "vnmi" not in flags and "spectre_v1" not in flags  # the vmx flags and bugs lines are not flags
    assert cpu.native_bf16(flags, {}) and cpu.vnni512(flags, {})
    assert cpu.describe(flags=flags, environ={}, usable=2, machine=2, quota=None, kernel_amx=True)[1:] == [
        "flags that pick a path: avx2 avx_vnni avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8",
        "oneDNN cap: none -> native bf16 yes, OpenVINO int8 (AVX512-VNNI/AMX) yes",
        "onnxruntime int8 (MLAS, from cpuid; no cap holds it): u8s8-vnni (VNNI or AMX-INT8: exact int32 sums)",
        "AMX tile state in this kernel: yes"]
    assert cpu.cpu_flags(str(tmp_path / "absent")) == set()
