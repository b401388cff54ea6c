"""Static int8 inputs for onnxruntime's int8 graph (``onnx_export.quantize_int8``, recipe 4).

onnxruntime's dynamic quantization (``quantize_dynamic``) computes each quantized matmul's input
scale at run time, from the minimum and maximum of the whole batch it is given: a post's vector then
moves with its batch neighbours and their padding (up to 3.4e-3 in cosine on real posts, measured
2026-12-06), which breaks "an embedding is a pure function of (text, model version)".
:func:`static_inputs` rewrites that graph so each input is quantized with one fixed scale and zero
point from its calibrated range (the largest |value| it took on the calibration posts, after
smoothing; ``onnx_export.smooth_int8``), as OpenVINO's static int8 does with the same ranges:
``DynamicQuantizeLinear`` becomes ``QuantizeLinear`` with constants, and each
``MatMulInteger -> Cast -> Mul(a_scale * b_scale)`` becomes one ``MatMulIntegerToFloat`` (the op
onnxruntime itself fuses the dynamic pattern into; with a constant scale its fusion no longer
matches). Weights are untouched (int8, one scale per output channel); ``QAttention`` takes the static
scale as it took the dynamic one.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

GELU_MIN = -0.1700  # erf GELU's minimum (-0.16997, at x = -0.7518): no post-GELU value is lower


def input_range(r: float, after_gelu: bool) -> tuple[float, float]:
    """The range [lo, hi] a calibrated input of largest |value| ``r`` is quantized over: [-r, r],
    or [GELU_MIN, r] for a GELU's output (nothing below GELU_MIN; twice the resolution)."""
    return (GELU_MIN if after_gelu else -r), r


def static_inputs(model, ranges: dict[str, float]) -> int:
    """Rewrite the ``onnx.ModelProto`` ``model`` of ``quantize_dynamic`` in place, as the module's
    docstring says. ``ranges``: {the name of each quantized input tensor: its largest |value|}; a
    ``DynamicQuantizeLinear`` whose input has no range is an error (it would stay batch-dependent).
    uint8 inputs, as the dynamic graph had: scale (hi - lo) / 255, zero point round(-lo / scale).
    Returns how many inputs were made static."""
    from onnx import helper, numpy_helper

    producer = {out: node for node in model.graph.node for out in node.output}
    nodes, n = [], 0
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in ranges:
            raise ValueError(f"int8: the dynamically quantized input {x!r} has no calibrated range. Fix: "
                             "calibrate every node onnx_export.int8_nodes names (onnx_export.smooth_int8).")
        lo, hi = input_range(ranges[x], x in producer and producer[x].op_type in ("Gelu", "BiasGelu", "FastGelu"))
        scale = np.float32((hi - lo) / 255.0)
        zero_point = np.uint8(np.clip(round(-lo / float(scale)), 0, 255))
        q, q_scale, q_zero_point = node.output
        model.graph.initializer.extend([numpy_helper.from_array(np.array(scale), q_scale),
                                        numpy_helper.from_array(np.array(zero_point), q_zero_point)])
        nodes.append(helper.make_node("QuantizeLinear", [x, q_scale, q_zero_point], [q], name=f"{node.name}_static"))
        n += 1
    del model.graph.node[:]
    model.graph.node.extend(_to_float_matmuls(nodes))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):  # MatMulIntegerToFloat's domain
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return n


def _to_float_matmuls(nodes: list) -> list:
    """``nodes`` with each ``MatMulInteger -> Cast -> Mul(., Mul(a_scale, b_scale))`` (quantize_dynamic's
    pattern) replaced by one ``MatMulIntegerToFloat(a, b, a_scale, b_scale, a_zero_point, b_zero_point)``."""
    from onnx import helper

    producer = {out: node for node in nodes for out in node.output}
    consumers = defaultdict(list)
    for node in nodes:
        for name in node.input:
            consumers[name].append(node)
    replaced, dropped = {}, set()
    for node in nodes:
        if node.op_type != "MatMulInteger" or len(consumers[node.output[0]]) != 1:
            continue
        cast = consumers[node.output[0]][0]
        after = consumers[cast.output[0]] if cast.op_type == "Cast" else []
        if len(after) != 1 or after[0].op_type != "Mul":
            continue
        mul = after[0]
        scales = producer.get(next(i for i in mul.input if i != cast.output[0]))
        if scales is None or scales.op_type != "Mul" or len(consumers[scales.output[0]]) != 1:
            continue
        a, b, a_zero_point, b_zero_point = node.input
        replaced[id(node)] = helper.make_node(
            "MatMulIntegerToFloat", [a, b, *scales.input, a_zero_point, b_zero_point], [mul.output[0]],
            name=f"{node.name}_to_float", domain="com.microsoft")
        dropped |= {id(cast), id(mul), id(scales)}
    return [replaced.get(id(node), node) for node in nodes if id(node) not in dropped]


def per_batch_inputs(onnx_path) -> int:
    """How many inputs of the int8 ONNX model at ``onnx_path`` are quantized per batch at run time
    (``DynamicQuantizeLinear``): 0 for this module's graphs, > 0 for one of recipe 3 (before 2026-12-06)."""
    import onnx

    return sum(node.op_type == "DynamicQuantizeLinear"
               for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)
