"""describe()'s reasons say truthfully why a fast path was left out on a fleet host: the CPU lacks the
instructions, or ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA holds oneDNN below them (a cap set fleet-wide on CPUs
that have them). CPUs faked by their flags; no vendor's microarchitecture assumed."""
import pytest

from postemb_rt import backends, cpu
from postemb_rt.model_dir import resolve

BF16_VNNI = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
AVX2_ONLY = {"avx2", "fma"}


@pytest.fixture
def fake_cpu(monkeypatch):
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)

    def use(flags, **env):
        monkeypatch.setattr(cpu, "cpu_flags", lambda path="/proc/cpuinfo": set(flags))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    return use


def test_auto_precision_names_the_onednn_cap_that_skips_bf16_on_a_cpu_that_has_it(fake_cpu):
    fake_cpu(BF16_VNNI, DNNL_MAX_CPU_ISA="avx512_core_vnni")
    got, why = backends.precision_candidates(resolve("base"), "cpu")
    assert got == ["int8", "fp32"]
    assert "no native bf16" in why and "DNNL_MAX_CPU_ISA=avx512_core_vnni holds oneDNN below" in why
    assert "lacks" not in why


def test_auto_precision_says_the_cpu_lacks_bf16_where_it_does(fake_cpu):
    fake_cpu(AVX2_ONLY)
    _, why = backends.precision_candidates(resolve("base"), "cpu")
    assert "no native bf16" in why and "this CPU lacks AVX512-BF16 and AMX-BF16" in why


@pytest.mark.parametrize("flags, env, cause", [
    (AVX2_ONLY, {}, "this CPU lacks AVX512-VNNI and AMX-INT8"),
    (BF16_VNNI, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "ONEDNN_MAX_CPU_ISA=AVX2 holds oneDNN below AVX512_CORE_VNNI"),
])
def test_int8_on_onnxruntime_says_why_openvino_was_left_out(fake_cpu, flags, env, cause):
    fake_cpu(flags, **env)
    name, why = backends.choose(resolve("base"), "cpu", "int8")
    assert name == "onnxruntime" and "only on AVX512-VNNI or AMX" in why and cause in why


def test_bf16_on_torch_says_why_openvino_was_left_out(fake_cpu):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    fake_cpu(BF16_VNNI, ONEDNN_MAX_CPU_ISA="AVX512_CORE")
    name, why = backends.choose(resolve("base"), "cpu", "bf16")
    assert name == "torch" and "ONEDNN_MAX_CPU_ISA=AVX512_CORE holds oneDNN below AVX512_CORE_BF16" in why


def test_native_paths_report_no_cause(fake_cpu):
    fake_cpu(BF16_VNNI, ONEDNN_MAX_CPU_ISA="AVX512_CORE_AMX")  # a cap above both
    assert cpu.not_native("bf16") == "" and cpu.not_native("int8") == ""
