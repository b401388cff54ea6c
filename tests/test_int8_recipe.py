"""The int8 recipes (postemb_rt.onnx_export: quantize_int8 for onnxruntime, smoothed_for_static_int8
for OpenVINO): which matmuls run in int8, the SmoothQuant-style smoothing before it
(postemb_rt.int8_smooth) and the static ranges, on a small random BERT built here."""
import json
import logging

import numpy as np
import onnx
import pytest
import torch

from postemb_rt import ValidationError
from postemb_rt import int8_smooth as sm
from postemb_rt.int8_static import GELU_MIN
from postemb_rt.model_dir import resolve
from postemb_rt.onnx_export import (STATIC_RANGES_FILE, export_onnx, int8_nodes, int8_smoothed_nodes, quantize_int8,
                                    smoothed_for_static_int8)
from postemb_rt.tokenization import PostTokenizer
from tests.conftest import SAMPLE_TEXTS, assert_exact
from tests.st_models import build_st_folder

TEXTS = SAMPLE_TEXTS + [f"post number {i} about topic {i % 7}" for i in range(30)]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """A 2-layer BERT with a Dense head (32 -> 48, tanh), exported with the fused Attention op."""
    root = tmp_path_factory.mktemp("int8")
    st = build_st_folder(root / "st", dense=[(48, True, torch.nn.Tanh())])
    return export_onnx(resolve(st), root / "fp32")


def layers_of(model):
    """{node name: (layer, kind)} read from the node names torch.onnx gives the BERT modules."""
    kinds = {}
    layer = -1
    for n in model.graph.node:
        if n.op_type == "Attention":
            layer += 1
            kinds[n.name] = (layer, "qkv")
        elif n.op_type == "MatMul":
            kind = ("out" if "attention/output" in n.name else "up" if "intermediate" in n.name
                    else "down" if "output/dense" in n.name else "head")
            kinds[n.name] = (layer, kind)
    return kinds


def run(path, texts, tokenizer, output="embedding"):
    import onnxruntime as ort

    from postemb_rt import native

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ids, mask = native.pack_padded(tokenizer(texts).ids, tokenizer.pad_id)
    return sess.run([output], {"input_ids": ids, "attention_mask": mask})[0]


def tokenizer_of(md):
    return PostTokenizer(md.tokenizer_path, md.config.max_length, lowercase=md.config.do_lower_case)


def test_int8_nodes_are_qkv_out_up_of_every_layer_and_down_of_the_second_half(fp32):
    model = onnx.load(str(fp32.onnx_path))
    kinds = layers_of(model)
    assert sorted(k for k in kinds.values() if k[1] != "head") == sorted(
        (layer, kind) for layer in range(2) for kind in ("qkv", "out", "up", "down"))
    picked = {kinds[n] for n in int8_nodes(model)}
    assert picked == {(0, "qkv"), (0, "out"), (0, "up"), (1, "qkv"), (1, "out"), (1, "up"), (1, "down")}
    assert {kinds[n] for n in int8_smoothed_nodes(model)} == picked - {(1, "down")}  # downs: never smoothed


def test_base_model_runs_five_sixths_of_its_matmul_flops_in_int8():
    from benchmarks.compare import int8_share

    # per layer (384 hidden, 1536 intermediate): QKV 3h^2, out h^2, up and down 4h^2 each = 12h^2;
    # float32: the down-projections of layers 0-2 = 3 x 4h^2 of 6 x 12h^2 = 1/6
    assert int8_share() == pytest.approx(5 / 6, abs=1e-3)


def test_smoothed_float32_graph_computes_the_same_embeddings(fp32, tmp_path):
    model = onnx.load(str(fp32.onnx_path))
    tok = tokenizer_of(fp32)
    targets = sm.smoothable(model)
    act_max = sm.activation_maxima(fp32.onnx_path, tok, TEXTS[:20], targets)
    assert {n.name for n, _ in targets} == set(act_max) and all(a.min() >= 0 for a in act_max.values())
    rng = np.random.default_rng(0)  # uneven channel maxima, so the scales really differ per channel
    act_max = {k: v * rng.uniform(0.05, 20.0, v.shape) for k, v in act_max.items()}
    before = len(model.graph.node)
    done = sm.smooth(model, act_max, alpha=0.75)
    assert sorted(done) == sorted(act_max)
    muls = [n for n in model.graph.node if n.name.endswith("_smooth")]
    kinds = layers_of(onnx.load(str(fp32.onnx_path)))
    # attention output: folded into V of the Attention op; every other smoothed input gets one Mul
    assert {kinds[n.name[: -len("_smooth")]][1] for n in muls} == {"qkv", "up", "down"}
    assert len(model.graph.node) == before + len(muls) == before + 3 * 2
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "smoothed.onnx"))
    for output in ("embedding", "pooled"):
        assert_exact(run(tmp_path / "smoothed.onnx", TEXTS, tok, output), run(fp32.onnx_path, TEXTS, tok, output))


def test_quantized_graph_runs_qattention_and_keeps_the_first_half_down_projections_float32(fp32, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        q = quantize_int8(fp32, tmp_path / "int8", calibration=TEXTS[:20])
    # onnxruntime's generic "consider pre-processing" advice does not reach the user, and the filter
    # that drops it is gone again
    assert "pre-processing" not in caplog.text and not logging.getLogger().filters
    model = onnx.load(str(q.onnx_path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QAttention") == 2 and "Attention" not in ops
    assert ops.count("MatMulIntegerToFloat") == 5  # out, up of both layers and layer 1's down
    # every input static (int8_static): one QuantizeLinear per int8 node, no scale computed at run time
    assert ops.count("QuantizeLinear") == 7 and "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    q_inputs = [(producer.get(n.input[0]), float(consts[n.input[1]]), int(consts[n.input[2]]))
                for n in model.graph.node if n.op_type == "QuantizeLinear"]
    # a GELU's output is quantized over [GELU_MIN, r] (one: layer 1's down-projection), every other input over [-r, r]
    (gelu,) = [(scale, zp) for op, scale, zp in q_inputs if op == "BiasGelu"]
    assert -gelu[0] * gelu[1] == pytest.approx(GELU_MIN, abs=gelu[0])
    assert {op for op, _, _ in q_inputs} == {"BiasGelu", "Mul", "QAttention"}
    assert {zp for op, _, zp in q_inputs if op != "BiasGelu"} <= {127, 128}
    float_matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert any("layer.0/output/dense" in n for n in float_matmuls)
    assert not any("layer.1/output/dense" in n for n in float_matmuls)
    assert sum(n.name.endswith("_smooth") for n in model.graph.node) == 4  # qkv and up of both layers
    assert q.config.precision == "int8" and q.config.fidelity is None
    vecs = run(q.onnx_path, TEXTS, tokenizer_of(q))
    assert vecs.shape == (len(TEXTS), fp32.config.dim) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


def test_static_int8_ranges_are_the_maxima_of_the_tensors_the_int8_matmuls_read(fp32, tmp_path):
    smoothed = smoothed_for_static_int8(fp32, tmp_path / "static", calibration=TEXTS[:20])
    ranges = json.loads((smoothed.path / STATIC_RANGES_FILE).read_text())
    model = onnx.load(str(smoothed.onnx_path))
    reads = {n.name: n.input[0] for n in model.graph.node}
    assert sorted(ranges) == sorted(reads[n] for n in int8_nodes(model))
    # recalibrated on the smoothed graph, each read tensor's largest |value| is its stored range
    targets = [t for t in sm.smoothable(model) if t[0].name in set(int8_nodes(model))]
    act_max = sm.activation_maxima(smoothed.onnx_path, tokenizer_of(smoothed), TEXTS[:20], targets)
    for node, a in act_max.items():
        assert ranges[reads[node]] == pytest.approx(float(a.max()), rel=1e-3)
    assert smoothed.config.precision == "fp32"  # a float32 graph: OpenVINO quantizes it at load
    assert_exact(run(smoothed.onnx_path, TEXTS, tokenizer_of(smoothed)), run(fp32.onnx_path, TEXTS, tokenizer_of(fp32)))


def test_smoothing_errors_name_the_argument_the_value_and_the_fix(fp32):
    model = onnx.load(str(fp32.onnx_path))
    node, weight = sm.smoothable(model)[0]
    good = {node.name: np.ones(32, dtype=np.float32)}  # 32: the test model's hidden size
    with pytest.raises(ValidationError, match=r"`alpha` must be between 0 and 1. Given: 1.5. Fix: 0.5"):
        sm.smooth(model, good, alpha=1.5)
    with pytest.raises(ValidationError, match=r"`act_max\[.*\]` must have shape \(32,\).*Given: \(7,\)"):
        sm.smooth(model, {node.name: np.ones(7, dtype=np.float32)})
    with pytest.raises(ValidationError, match=r"`act_max` names nodes that are not matmuls.*Fix: take the nodes"):
        sm.smooth(model, {"no such node": np.ones(32, dtype=np.float32)})
    with pytest.raises(ValidationError, match="`texts` must hold at least one calibration post"):
        sm.activation_maxima(fp32.onnx_path, tokenizer_of(fp32), [], [(node, weight)])



def test_an_input_without_a_calibrated_range_is_refused_not_left_dynamic():
    from onnx import TensorProto, helper

    from postemb_rt.int8_static import static_inputs

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dq")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, [2])])
    with pytest.raises(ValueError, match="'x' has no calibrated range"):
        static_inputs(helper.make_model(graph), {"y": 1.0})


def test_an_int8_folder_with_per_batch_scales_says_so_and_warns_to_export_it_again(fp32, tmp_path, caplog):
    """An int8 folder exported before 2026-12-06 (recipe 3: onnxruntime's quantize_dynamic as it is)
    still loads, but describe() and a warning say its vectors move with their batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from postemb_rt.backends.onnx_backend import OnnxBackend
    from postemb_rt.model_dir import load_model_dir
    from postemb_rt.onnx_export import _copy_dir_files

    old, new = tmp_path / "recipe3", tmp_path / "recipe4"
    old.mkdir()
    quantize_dynamic(str(fp32.onnx_path), str(old / "model.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    _copy_dir_files(fp32, old, "int8")
    quantize_int8(fp32, new, calibration=TEXTS[:20])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="postemb_rt"):
        static = OnnxBackend(load_model_dir(new), precision="int8").describe()["int8"]
        assert not caplog.records
        dynamic = OnnxBackend(load_model_dir(old), precision="int8").describe()["int8"]
    assert static.startswith("static int8") and "no vector depends on its batch" in static
    assert dynamic.startswith("dynamic int8") and "a vector moves with its batch" in dynamic
    assert "export it again" in caplog.text and str(old / "model.onnx") in caplog.text
