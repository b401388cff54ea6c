"""What a fleet of different CPUs shares through one cache (an NFS home, a cache baked into an image on a
build machine): a fidelity measured on one CPU must not vouch for numbers another CPU computes differently.
The CPUs are faked (their /proc/cpuinfo flags); no vendor's microarchitecture is assumed."""
import pytest

from postemb_rt import cpu

pytest.importorskip("onnxruntime")

SKYLAKE_LIKE = {"avx2", "avx512f", "avx512bw"}  # AVX-512 without VNNI (Skylake-SP); Zen 3 is {"avx2"}
VNNI = [{"avx2", "avx512f", "avx512bw", "avx512_vnni"}, {"avx2", "avx_vnni"}, {"avx2", "amx_tile", "amx_int8"}]


@pytest.mark.parametrize("flags, want", [({"avx2"}, "u8s8-madd16"), (SKYLAKE_LIKE, "u8s8-madd16"),
                                         *((f, "u8s8-vnni") for f in VNNI)])
def test_onnxruntime_int8_kernels_follow_the_cpus_vnni(flags, want):
    """MLAS multiplies u8 x s8 with VNNI (AVX512-VNNI, AVX-VNNI, AMX-INT8) into int32, else with
    vpmaddubsw, whose int16 pair sums saturate (onnxruntime's quantization docs): other numbers."""
    assert cpu.mlas_int8_kernels(flags) == want


def test_onnxruntime_int8_fidelity_is_keyed_by_the_cpus_int8_kernels(monkeypatch):
    from postemb_rt.backends.onnx_backend import OnnxBackend
    from postemb_rt.model_dir import resolve

    md = resolve("base")
    seen = {}
    for name, flags in (("no vnni", {"avx2"}), ("avx512-vnni", VNNI[0]), ("avx-vnni", VNNI[1])):
        monkeypatch.setattr(cpu, "cpu_flags", lambda path="/proc/cpuinfo", f=flags: set(f))
        backend = OnnxBackend(md, precision="int8")
        seen[name] = (backend.numerics, backend.describe()["int8"])
        backend.close()
    assert seen["no vnni"][0] != seen["avx512-vnni"][0] == seen["avx-vnni"][0]  # numerics: the fidelity key
    assert "saturat" in seen["no vnni"][1] and "VNNI" in seen["avx512-vnni"][1]
    fp32 = OnnxBackend(md, precision="fp32")
    assert fp32.numerics == "" and "int8" not in fp32.describe()  # exact fp32: nothing to key or say


@pytest.mark.parametrize("flags, shown, kernels", [
    ({"avx2", "fma", "avx_vnni"}, "avx2 avx_vnni", "u8s8-vnni"),  # AVX-VNNI without AVX-512 (Intel's E-core Xeons)
    ({"avx2", "fma"}, "avx2", "u8s8-madd16"),                      # Haswell .. Zen 3
])
def test_the_cpu_report_shows_what_picks_onnxruntimes_int8_kernels(flags, shown, kernels):
    """`python -m postemb_rt.cpu` (the top of a CPU report) and the gate's table showed the flags of the oneDNN
    paths only: on an AVX-VNNI CPU without AVX-512, whose onnxruntime int8 runs MLAS's exact VNNI sums (not the
    saturating vpmaddubsw of a plain AVX2 CPU), neither the flag nor the kernels were in the report."""
    lines = cpu.describe(flags=flags, environ={}, usable=2, machine=2, quota=None, kernel_amx=False)
    assert f"flags that pick a path: {shown}" in lines
    assert any(line.startswith(f"onnxruntime int8 (MLAS, from cpuid; no cap holds it): {kernels} (") for line in lines)
