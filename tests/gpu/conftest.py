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


@pytest.fixture()
def onnx_dir(tmp_path):
    """A stand-in external-pooling ONNX model directory (files exist; the ONNX bytes are not a
    model: only TensorRT would read them)."""
    from postemb_rt.model_dir import PostEmbConfig

    d = tmp_path / "onnx-ext"
    d.mkdir()
    cfg = PostEmbConfig(model_version="test-v1", hidden_size=384, encoder=None, onnx="model.onnx",
                        onnx_pooling="external", max_length=256)
    (d / "postemb.json").write_text(cfg.to_json())
    (d / "tokenizer.json").write_text(json.dumps({}))
    (d / "model.onnx").write_bytes(b"not really onnx")
    return d
