"""build_engine.py against a recording stand-in for the TensorRT Python API (CPU): the calls
it makes, the files it writes, and the tensorrt backend's checks of those files before it
would deserialize anything."""
import importlib.util
import sys
from pathlib import Path

import pytest

from postemb_rt.engine_meta import EngineMeta
from postemb_rt.errors import EngineMismatchError, ValidationError
from tests.gpu import fake_tensorrt

SCRIPT = Path(__file__).resolve().parents[2] / "export" / "build_engine.py"


@pytest.fixture()
def build_engine():
    spec = importlib.util.spec_from_file_location("build_engine_api", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def fake_gpu(monkeypatch):
    """tensorrt = the recorder; torch reports one sm_90 GPU."""
    import torch

    trt = fake_tensorrt.make()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake H100")
    return trt


def test_fp16_build_makes_the_documented_calls(build_engine, onnx_dir, fake_gpu, tmp_path, capsys):
    cache = tmp_path / "cache" / "timing.bin"
    code = build_engine.main(["--onnx", str(onnx_dir / "model.onnx"), "--fp16", "--max-shape", "64x128",
                              "--timing-cache", str(cache), "--workspace-gib", "2"])
    assert code == 0, capsys.readouterr().err
    calls = fake_gpu.calls
    assert ("create_network", 0) in calls  # TensorRT 10: explicit batch is the only mode
    assert ("parse_from_file", str(onnx_dir / "model.onnx")) in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 2 * 2**30) in calls and ("set_flag", "FP16") in calls
    for name in ("input_ids", "attention_mask"):
        assert ("set_shape", name, (1, 1), (32, 64), (64, 128)) in calls
    order = [c[0] for c in calls]
    assert order.index("add_optimization_profile") < order.index("build_serialized_network")
    assert ("create_timing_cache", b"") in calls and ("set_timing_cache", False) in calls
    assert cache.read_bytes() == b"TIMINGS"
    assert (onnx_dir / "model.plan").read_bytes() == b"PLAN-BYTES"
    meta = EngineMeta.read(onnx_dir)
    assert (meta.precision, meta.tensorrt_version, meta.compute_capability, meta.device_name) == \
        ("fp16", "10.9.0", "9.0", "Fake H100")
    assert meta.engine_bytes == 10 and len(meta.engine_sha256) == 64 and meta.output_dtype == "float32"


def test_fp32_build_turns_tf32_off_and_fp16_leaves_it(build_engine, onnx_dir, fake_gpu, monkeypatch):
    """TensorRT enables BuilderFlag.TF32 by default; a float32 engine must be exact, so it clears it."""
    assert build_engine.main(["--onnx", str(onnx_dir / "model.onnx")]) == 0
    assert ("clear_flag", "TF32") in fake_gpu.calls and not any(c[0] == "set_flag" for c in fake_gpu.calls)
    half = fake_tensorrt.make()
    monkeypatch.setitem(sys.modules, "tensorrt", half)
    assert build_engine.main(["--onnx", str(onnx_dir / "model.onnx"), "--fp16"]) == 0
    assert ("set_flag", "FP16") in half.calls and ("clear_flag", "TF32") not in half.calls


def test_out_dir_gets_a_complete_model_directory(build_engine, onnx_dir, fake_gpu, tmp_path):
    out = tmp_path / "engine-dir"
    assert build_engine.main(["--onnx", str(onnx_dir / "model.onnx"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"engine.json", "model.plan", "model.onnx", "postemb.json",
                                               "tokenizer.json"}
    assert not (onnx_dir / "model.plan").exists()


def test_tensorrt_11_without_weak_typing_flags_explains_the_fix(build_engine, onnx_dir, fake_gpu, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make(version="11.1.0", has_fp16=False))
    assert build_engine.main(["--onnx", str(onnx_dir / "model.onnx"), "--bf16"]) == 1
    err = capsys.readouterr().err
    assert "no BuilderFlag.BF16" in err and "build without --bf16" in err
    assert not (onnx_dir / "engine.json").exists()


def test_parse_errors_exit_1_with_the_parser_message(build_engine, onnx_dir, fake_gpu, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make(parse_ok=False))
    assert build_engine.main(["--onnx", str(onnx_dir / "model.onnx")]) == 1
    assert "In node 3 (Gather): unsupported" in capsys.readouterr().err


def test_no_cuda_exits_2(build_engine, onnx_dir, fake_gpu, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build_engine.main(["--onnx", str(onnx_dir / "model.onnx")]) == 2
    assert "none is visible" in capsys.readouterr().err


@pytest.fixture()
def built(build_engine, onnx_dir, fake_gpu):
    assert build_engine.main(["--onnx", str(onnx_dir / "model.onnx"), "--fp16"]) == 0
    from postemb_rt.model_dir import load_model_dir

    return load_model_dir(onnx_dir)


def backend(md, **kw):
    from postemb_rt.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(md, device="cuda", **kw)


def test_backend_precision_must_match_the_engine(built):
    with pytest.raises(ValidationError, match=r"must match the engine's \('fp16'.*Given: 'fp32'.*precision='fp16'"):
        backend(built, precision="fp32")


def test_backend_refuses_an_engine_from_another_tensorrt(built, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make(version="10.11.0"))
    with pytest.raises(EngineMismatchError, match=r"built with 10.9.0, installed 10.11.0.*build_engine.py .*--fp16"):
        backend(built, precision="fp16")


def test_backend_refuses_another_gpu_generation(built, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(EngineMismatchError, match=r"compute capability 9.0 \(Fake H100\), this GPU is 8.0"):
        backend(built, precision="fp16")


def test_backend_refuses_a_swapped_engine_file(built):
    (built.path / "model.plan").write_bytes(b"another engine")
    with pytest.raises(EngineMismatchError, match=r"sha256 differs"):
        backend(built, precision="fp16")
