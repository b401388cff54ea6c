"""tensorrt backend: the errors it raises where it cannot run, and (GPU + TensorRT only)
parity with the CPU float32 reference."""
import pytest

from postemb_rt import Encoder
from postemb_rt.errors import BackendUnavailableError
from tests.conftest import assert_exact
from tests.gpu.conftest import HAS_TRT, needs_cuda, needs_trt


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_backend_by_name_without_tensorrt_raises_with_install_hint():
    from postemb_rt import backends

    with pytest.raises(BackendUnavailableError, match=r"backend 'tensorrt' needs the package `tensorrt`.*pip install"):
        backends.backend_class("tensorrt")
    with pytest.raises(BackendUnavailableError, match=r"needs the package `tensorrt`"):
        Encoder.from_pretrained("base", backend="tensorrt", device="cpu")


def test_backend_on_cpu_device_says_cuda_only(onnx_dir):
    from postemb_rt.backends.tensorrt_backend import TensorRTBackend
    from postemb_rt.model_dir import load_model_dir

    with pytest.raises(BackendUnavailableError, match=r"runs on CUDA only. Given: device='cpu'"):
        TensorRTBackend(load_model_dir(onnx_dir), device="cpu")


def test_runtime_does_not_import_the_builder():
    import ast
    from pathlib import Path

    import postemb_rt

    for path in Path(postemb_rt.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in ("export", "build_engine") for m in mods), path


@needs_cuda
@needs_trt
@pytest.mark.parametrize("precision, min_cos", [("fp32", None), ("fp16", 0.999)])
def test_engine_matches_the_cpu_reference(tmp_path, sample_texts, precision, min_cos):
    import importlib.util
    from pathlib import Path

    import numpy as np

    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import export_onnx

    out = export_onnx(resolve("base"), tmp_path / "trt", pooling="external")
    script = Path(__file__).resolve().parents[2] / "export" / "build_engine.py"
    spec = importlib.util.spec_from_file_location("build_engine", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    flags = [] if precision == "fp32" else [f"--{precision}"]
    assert mod.main(["--onnx", str(out.onnx_path), "--max-batch", "16", *flags]) == 0
    ref = Encoder.from_pretrained("base", backend="torch", device="cpu").encode(sample_texts)
    enc = Encoder.from_pretrained(out.path, backend="tensorrt", device="cuda", precision=precision)
    got = enc.encode(sample_texts * 5, batch_size=7)  # > 16 rows per call: split across the profile
    if precision == "fp32":  # exact: build_engine.py clears BuilderFlag.TF32 for float32 engines
        assert_exact(got, np.tile(ref, (5, 1)))
    else:
        cos = np.sum(np.tile(ref, (5, 1)) * got, axis=1)
        assert cos.min() >= min_cos, cos.min()
    assert enc.describe()["backend"] == "tensorrt"
