"""tests/gpu: the GPU path's CPU-testable parts (shape profiles, engine.json, CLI, errors,
CUDA-graph bucket logic) run everywhere; tests that need CUDA or TensorRT skip with a reason."""
import importlib.util
import json
import os

import pytest
import torch

if not torch.cuda.is_available():  # the Triton pooling kernel runs under its interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif("not __import__('torch').cuda.is_available()",
                                reason="needs a CUDA GPU (none here; run benchmarks/gpu_suite.py on one)")
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="needs the tensorrt package (not installable on CI machines)")


def tiny_onnx(path, hidden: int = 384, domain: str = "") -> None:
    """Write a tiny ONNX graph with the external-pooling export's inputs and output: last_hidden_state =
    Gather(an 8-row embedding, input_ids). ``domain``: that of its one node (ai.onnx by default)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embedding", "input_ids"], ["last_hidden_state"], domain=domain)], "tiny",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, hidden])],
        [numpy_helper.from_array(np.zeros((8, hidden), np.float32), "embedding")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture()
def onnx_dir(tmp_path):
    """A stand-in external-pooling ONNX model directory: a real but tiny ONNX graph (tiny_onnx) with
    the export's inputs and output; only TensorRT would build from it."""
    from postemb_rt.model_dir import PostEmbConfig

    d = tmp_path / "onnx-ext"
    d.mkdir()
    cfg = PostEmbConfig(model_version="test-v1", hidden_size=384, encoder=None, onnx="model.onnx",
                        onnx_pooling="external", max_length=256)
    (d / "postemb.json").write_text(cfg.to_json())
    (d / "tokenizer.json").write_text(json.dumps({}))
    tiny_onnx(d / "model.onnx")
    return d
