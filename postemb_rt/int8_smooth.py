"""SmoothQuant-style smoothing of an exported float32 ONNX graph before int8 quantization.

Dynamic int8 quantization (``onnx_export.quantize_int8``) gives each matmul's activations one
scale per tensor, so a few input channels with large magnitudes (outlier channels, common after
LayerNorm in BERT-style encoders, and in the post-GELU feed-forward activations) leave the other
channels only a few int8 levels. Smoothing (Xiao et al., "SmoothQuant", ICML 2023) moves that
range into the weights, which are quantized per output channel: for a matmul ``X @ W`` with W
(in, out) and per-input-channel maxima ``a_j = max |X_j|`` (calibrated on real posts) and
``w_j = max_k |W_jk|``, it uses ``s_j = a_j**alpha / w_j**(1 - alpha)`` and computes
``(X / s) @ (diag(s) W)``, the same product in exact arithmetic.

Where ``1 / s`` goes:
- the attention output projection's input is the fused ``Attention`` op's output, linear in
  V: ``1 / s`` is folded into V's columns of that op's QKV weight and bias (no new node);
- every other input (LayerNorm outputs, which also feed the residual, and GELU outputs) gets an
  explicit ``Mul`` by ``1 / s`` in front of the matmul (elementwise, cheap next to the matmul).

The float32 smoothed graph computes the same embeddings as the original up to float rounding
(tests/test_int8_recipe.py checks it); only its quantized copy differs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("postemb_rt")

DEFAULT_ALPHA = 0.5
CALIBRATION_POSTS = "tweeteval/emoji/train_text.txt"  # train split: never the fidelity / benchmark posts
_EPS = 1e-5


def smoothable(onnx_model) -> list:
    """The graph's matmul nodes with a constant 2-D weight, in graph order: (node, weight name).
    MatMul: the weight is an initializer input; Attention (fused QKV): input 1."""
    weights = {t.name: t for t in onnx_model.graph.initializer}
    found = []
    for node in onnx_model.graph.node:
        if node.op_type == "MatMul":
            w = next((i for i in node.input[1:] if i in weights and len(weights[i].dims) == 2), None)
        elif node.op_type == "Attention":
            w = node.input[1] if node.input[1] in weights and len(weights[node.input[1]].dims) == 2 else None
        else:
            w = None
        if w is not None:
            found.append((node, w))
    return found


def calibration_posts(n_short: int = 512, n_long: int = 64, seed: int = 0) -> tuple[list[str], str]:
    """(texts, source): ``n_short`` tweets from the TweetEval emoji *train* split and ``n_long``
    long posts made of consecutive train tweets (lengths as ``postemb_rt.data.long_posts`` draws
    them), so both workloads' activations are seen. Without the shared data: the built-in sample."""
    from .data import BUILTIN_POSTS, concatenated_posts, data_root, read_lines

    root = data_root(required=False)
    if root is None:
        log.warning("int8 smoothing: no shared data, calibrating on the %d built-in posts", len(BUILTIN_POSTS))
        return list(BUILTIN_POSTS), "built-in sample"
    tweets = [t for t in read_lines(root / CALIBRATION_POSTS) if t.strip()]
    longs = concatenated_posts(tweets, n_long, seed, start=n_short)  # tweets the short ones do not use
    return tweets[:n_short] + longs, f"TweetEval emoji train: {n_short} tweets + {n_long} long posts"


def activation_maxima(onnx_path: str | Path, tokenizer, texts: list[str], nodes: list,
                      batch_size: int = 32) -> dict[str, np.ndarray]:
    """{node name: per-input-channel max |X_j| over the real (unpadded) tokens of ``texts``} for the
    input 0 of each node in ``nodes`` (from :func:`smoothable`). ``tokenizer``: a
    ``postemb_rt.tokenization.PostTokenizer``. Runs the graph in onnxruntime, with
    ``postemb_rt.cpu.model_threads()`` threads."""
    import onnx
    import onnxruntime as ort

    from . import native
    from .cpu import model_threads
    from .errors import ValidationError

    if not texts:
        raise ValidationError("`texts` must hold at least one calibration post. Given: an empty list.")
    model = onnx.load(str(onnx_path))
    inputs = {n.name: n.input[0] for n, _ in nodes}
    have = {o.name for o in model.graph.output}
    for name in dict.fromkeys(inputs.values()):
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = model_threads()
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    wanted = list(dict.fromkeys(inputs.values()))
    seqs = tokenizer(texts).ids
    order = np.argsort([len(s) for s in seqs])  # similar lengths together: little padding
    maxima: dict[str, np.ndarray] = {}
    for b in range(0, len(order), batch_size):
        ids, mask = native.pack_padded([seqs[i] for i in order[b:b + batch_size]], tokenizer.pad_id)
        outs = sess.run(wanted, {"input_ids": ids, "attention_mask": mask})
        real = mask.astype(bool)
        for name, x in zip(wanted, outs):
            m = np.abs(x[real]).max(axis=0)  # (B, S, C)[real] -> (tokens, C) -> (C,)
            maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
    return {node: maxima[t] for node, t in inputs.items()}


def smooth(onnx_model, act_max: dict[str, np.ndarray], alpha: float = DEFAULT_ALPHA) -> dict[str, np.ndarray]:
    """Smooth, in place, every node of ``onnx_model`` named in ``act_max`` (from
    :func:`activation_maxima`) with strength ``alpha`` (0: all range stays in X, 1: all moves
    into W). Returns {smoothed node name: its scales ``s`` (float64 (in,))}: the node's input is
    now ``X / s``, whose channel maxima are ``act_max[name] / s``."""
    from onnx import helper, numpy_helper

    from .errors import ValidationError

    if not 0.0 <= alpha <= 1.0:
        raise ValidationError(f"`alpha` must be between 0 and 1. Given: {alpha}. Fix: 0.5 (SmoothQuant's default).")
    inits = {t.name: t for t in onnx_model.graph.initializer}
    producer = {o: n for n in onnx_model.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in onnx_model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    targets = {n.name: (n, w) for n, w in smoothable(onnx_model)}
    unknown = sorted(set(act_max) - set(targets))
    if unknown:
        raise ValidationError(f"`act_max` names nodes that are not matmuls with a constant weight: {unknown[:3]}. "
                              "Fix: take the nodes from int8_smooth.smoothable(onnx_model).")
    new_nodes: dict[str, object] = {}  # node name -> the Mul to insert in front of it
    done: dict[str, np.ndarray] = {}
    for name, a in act_max.items():
        node, wname = targets[name]
        if consumers.get(wname) != 1:
            raise ValidationError(f"`act_max[{name!r}]`: the weight {wname!r} is shared by {consumers.get(wname)} "
                                  "nodes, so it cannot be scaled for one of them. Fix: leave that node out.")
        w = numpy_helper.to_array(inits[wname]).astype(np.float64)
        if a.shape != (w.shape[0],):
            raise ValidationError(f"`act_max[{name!r}]` must have shape ({w.shape[0]},) (the weight's input "
                                  f"channels). Given: {a.shape}.")
        s = np.maximum(a.astype(np.float64), _EPS) ** alpha / np.maximum(np.abs(w).max(axis=1), _EPS) ** (1 - alpha)
        s = np.clip(s, 1e-4, 1e4)
        inits[wname].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), wname))
        src = producer.get(node.input[0])
        if (src is not None and src.op_type == "Attention" and consumers.get(node.input[0]) == 1
                and src.input[1] in inits and len(src.input) > 2 and src.input[2] in inits):
            _fold_into_v(inits[src.input[1]], inits[src.input[2]], 1.0 / s)
        else:
            inv = f"{name}_smooth_inv_scale"
            onnx_model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
            out = f"{node.input[0]}_smoothed_for_{name}"
            new_nodes[name] = helper.make_node("Mul", [node.input[0], inv], [out], name=f"{name}_smooth")
            node.input[0] = out
        done[name] = s
    if new_nodes:  # keep topological order: each Mul right before its matmul
        ordered = []
        for n in onnx_model.graph.node:
            if n.name in new_nodes:
                ordered.append(new_nodes[n.name])
            ordered.append(n)
        del onnx_model.graph.node[:]
        onnx_model.graph.node.extend(ordered)
    return done


def _fold_into_v(qkv_weight, qkv_bias, inv_s: np.ndarray) -> None:
    """Scale the V columns (the last third) of a fused Attention's QKV weight (H, 3H) and bias
    (3H,) by ``inv_s``: the attention output, a convex mix of V rows, is scaled the same way."""
    from onnx import numpy_helper

    w = numpy_helper.to_array(qkv_weight).astype(np.float64)
    b = numpy_helper.to_array(qkv_bias).astype(np.float64)
    h = w.shape[1] // 3
    w[:, 2 * h:] *= inv_s[None, :]
    b[2 * h:] *= inv_s
    qkv_weight.CopyFrom(numpy_helper.from_array(w.astype(np.float32), qkv_weight.name))
    qkv_bias.CopyFrom(numpy_helper.from_array(b.astype(np.float32), qkv_bias.name))
