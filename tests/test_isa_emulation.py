"""The emulated-ISA passes (tests/isa_emulation.py) hold the libraries to the ISA they claim: oneDNN
reports its ISA, ATen its capability, our pooling kernel its path. Each check runs in a fresh
process with the pass's variables (they are read once, at library load)."""
import os
import subprocess
import sys

import pytest

from tests.isa_emulation import PASSES, env_for, missing

# oneDNN's own name for each ONEDNN_MAX_CPU_ISA value, as its verbose mode prints it.
ONEDNN_NAMES = {"AVX2": "Intel AVX2", "AVX512_CORE": "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions",
                "AVX512_CORE_VNNI": "Intel AVX-512 with Intel DL Boost"}
PROBE = """
import torch
from torch.utils import mkldnn
from postemb_rt import _C
lin = mkldnn.to_mkldnn(torch.nn.Linear(32, 32).eval())
lin(torch.randn(4, 32).to_mkldnn())
print("aten:", torch.backends.cpu.get_cpu_capability())
print("pool:", _C.cpu_isa())
"""


@pytest.mark.parametrize("name", sorted(PASSES))
def test_each_pass_holds_onednn_aten_and_the_pooling_kernel_to_its_isa(name):
    if missing(name):
        pytest.skip(f"this CPU lacks {missing(name)}: it cannot run the {name} pass at all")
    want = PASSES[name]
    env = dict(env_for(name), ONEDNN_VERBOSE="1")
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"isa:{ONEDNN_NAMES[want['ONEDNN_MAX_CPU_ISA']]}\n" in r.stdout, r.stdout[:2000]
    assert f"aten: {want['ATEN_CPU_CAPABILITY'].upper()}\n" in r.stdout
    assert f"pool: {want['POSTEMB_CPU_ISA']}\n" in r.stdout


def test_inside_a_pass_the_variables_are_in_effect_here():
    """When the suite itself runs under a pass (make test-isa), this process is held too."""
    name = os.environ.get("POSTEMB_ISA_PASS")
    if name is None:
        pytest.skip("checks a process inside an emulated-ISA pass (make test-isa); the plain suite holds nothing")
    import torch

    from postemb_rt import _C

    assert torch.backends.cpu.get_cpu_capability() == PASSES[name]["ATEN_CPU_CAPABILITY"].upper()
    assert _C.cpu_isa() == PASSES[name]["POSTEMB_CPU_ISA"]


def test_inside_a_pass_the_runtime_chooses_as_on_the_cpu_it_stands_for():
    """Every pass is below native bf16; only the VNNI one offers OpenVINO's int8, so there
    precision="auto" goes bf16 -> skipped, int8 -> openvino (its float part in f32)."""
    name = os.environ.get("POSTEMB_ISA_PASS")
    if name is None:
        pytest.skip("checks a process inside an emulated-ISA pass (make test-isa); the plain suite holds nothing")
    from postemb_rt import backends, cpu
    from postemb_rt.backends.openvino_backend import compile_config
    from postemb_rt.model_dir import resolve

    vnni = name == "avx512-vnni"
    assert cpu.native_bf16() is False and cpu.vnni512() is vnni
    assert backends.precision_candidates(resolve("base"), "cpu")[0] == ["int8", "fp32"]
    assert backends.choose(resolve("base"), "cpu", "int8")[0] == ("openvino" if vnni else "onnxruntime")
    assert compile_config("int8")["INFERENCE_PRECISION_HINT"] == "f32"


def test_an_unknown_pass_is_named():
    with pytest.raises(ValueError, match=r"`pass` must be one of \['avx2', 'avx512-core', 'avx512-vnni'\]. Given: 'sse2'"):
        env_for("sse2")
