"""benchmarks/profile_cpu.py: the OpenVINO profile's counters are the inference's own; the oneDNN
kernel table reads oneDNN's verbose lines and captures them from this process."""
import pytest

from benchmarks.profile_cpu import (median_batch, no_matmul_note, onednn_kernels, openvino_profile,
                                    parse_onednn_verbose)

TEXTS = [f"post {i}: " + "word " * (i % 37) for i in range(300)]


def test_median_batch_is_one_planned_batch_of_the_workload(base_onnx):
    ids, mask = median_batch(base_onnx, TEXTS)
    assert ids.shape == mask.shape and 1 <= ids.shape[0] <= 64
    lengths = mask.sum(1)
    assert lengths.max() == ids.shape[1] and lengths.min() >= 3  # [CLS] post ... [SEP], padded to the longest


def test_openvino_profile_counts_add_up_to_the_inference_and_name_the_kernels():
    from postemb_rt import Encoder

    enc = Encoder.from_pretrained("base", backend="openvino", precision="fp32")
    compiled = enc.backend._compiled
    shape, wall, by, impl = openvino_profile(enc, TEXTS, repeats=3)
    nodes = sum(by.values())
    assert 0.7 * wall <= nodes <= 1.3 * wall, (nodes, wall)  # static shape: the counters are this inference's
    assert max(by, key=by.get) == "FullyConnected"  # the matmuls dominate a 6-layer encoder
    assert sum(impl.values()) == pytest.approx(nodes) and any(k.startswith("FullyConnected: ") for k in impl)
    assert enc.backend._compiled is compiled and shape[0] <= 64  # profiled on its own compiled copy


VERBOSE = """onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with Intel DL Boost and bfloat16 support
onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,memory_descriptors,attributes,auxiliary,problem_desc,exec_time
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0,attr-scratchpad:user,,640x384:384x1536,1.5
onednn_verbose,v1,primitive,create:cache_miss,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0,,,640x384:384x1536,0.2
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0,attr-scratchpad:user,,640x1536:1536x384,0.5
onednn_verbose,v1,graph,exec,cpu,100002,sdp,,,,,dnnl_backend,0.7
onednn_verbose,exec,cpu,eltwise,jit:avx512_core_bf16,forward_inference,data_bf16::blocked:ab:f0,,alg:eltwise_gelu_erf,640x1536,0.25
a line of the program's own
"""


def test_the_verbose_parser_sums_exec_lines_per_primitive_and_implementation():
    got = parse_onednn_verbose(VERBOSE)
    assert got.keys() == {"matmul: brg_matmul:avx512_core_amx", "eltwise: jit:avx512_core_bf16"}
    calls, sec = got["matmul: brg_matmul:avx512_core_amx"]
    assert calls == 2 and sec == pytest.approx(0.002)  # creations, graph partitions and info lines not counted
    assert got["eltwise: jit:avx512_core_bf16"] == (1, pytest.approx(0.00025))  # the older format (no v1)


def test_onednn_kernels_captures_the_linear_this_process_runs_and_restores_stdout(capfd):
    """An mkldnn Linear runs in oneDNN on any x86 CPU (a bf16 F.linear reaches oneDNN only from
    AVX-512 up: under ONEDNN_MAX_CPU_ISA=AVX2, as on an AVX2-only Xeon or EPYC, it ran no primitive)."""
    import torch
    from torch.utils import mkldnn

    lin = mkldnn.to_mkldnn(torch.nn.Linear(64, 256).eval())
    x = torch.randn(32, 64).to_mkldnn()
    got = onednn_kernels(lambda: (lin(x), lin(x)))
    linear = {k: v for k, v in got.items() if k.startswith("inner_product: ")}
    assert sum(calls for calls, _ in linear.values()) == 2, got  # one implementation per CPU; its name varies
    print("after")
    assert capfd.readouterr().out == "after\n"  # nothing of oneDNN's leaked, and stdout is back


def test_an_empty_matmul_table_says_why_for_the_precision_profiled():
    assert no_matmul_note("fp32") == "no oneDNN matmul ran at fp32 (torch's fp32 matmuls go to MKL, not oneDNN)"
    assert "only from AVX-512 up" in no_matmul_note("bf16") and "MKL" not in no_matmul_note("bf16")


def test_the_share_of_matmul_time_on_amx_tiles_reads_either_librarys_kernel_names():
    from benchmarks.profile_cpu import amx_line

    openvino = {"FullyConnected: brgemm_avx512_amx_bf16": 0.060, "FullyConnectedQuantizedLegacy: brgemm_avx512_amx_I8":
                0.020, "FullyConnected: brgemm_avx512_bf16": 0.020, "Subgraph: jit_avx512_amx_bf16": 0.5,
                "MVN: jit_avx512_f32": 0.1}
    assert amx_line(openvino) == "matmul time on AMX tiles (an `amx` in the kernel name): 80% of 100.0 ms"
    onednn = {"matmul: brg_matmul:avx512_core_amx": (2, 0.003), "inner_product: brgemm:avx512_core_amx": (1, 0.001),
              "matmul: brg_matmul:avx512_core_bf16": (1, 0.004), "eltwise: jit:avx512_core": (5, 1.0)}
    assert amx_line(onednn) == "matmul time on AMX tiles (an `amx` in the kernel name): 50% of 8.0 ms"
    assert amx_line({"MVN: jit_avx512_f32": 0.1}) == "matmul time on AMX tiles: no matmul kernel ran"
