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
