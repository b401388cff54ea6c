"""export/build_engine.py's checks of --onnx and --out before any build (no TensorRT needed: --dry-run
runs them). The rest of its argument handling is tested in tests/gpu/test_build_engine.py."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "export" / "build_engine.py"


@pytest.fixture(scope="module")
def build_engine():
    spec = importlib.util.spec_from_file_location("build_engine", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def onnx_dir(tmp_path):
    """A stand-in external-pooling ONNX model directory (only TensorRT would read the ONNX bytes)."""
    from postemb_rt.model_dir import PostEmbConfig

    d = tmp_path / "onnx-ext"
    d.mkdir()
    cfg = PostEmbConfig(model_version="test-v1", hidden_size=384, encoder=None, onnx="model.onnx",
                        onnx_pooling="external", max_length=256)
    (d / "postemb.json").write_text(cfg.to_json())
    (d / "tokenizer.json").write_text(json.dumps({}))
    (d / "model.onnx").write_bytes(b"not really onnx")
    return d


def run(mod, capsys, *args):
    code = mod.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_out_may_be_new_empty_the_onnx_folder_or_an_earlier_build(build_engine, onnx_dir, tmp_path, capsys):
    onnx = onnx_dir / "model.onnx"
    (tmp_path / "empty").mkdir()
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "engine.json").write_text("{}")
    for out in (tmp_path / "new", tmp_path / "empty", onnx_dir, tmp_path / "earlier"):
        assert run(build_engine, capsys, "--onnx", onnx, "--out", out, "--dry-run")[0] == 0, out


def test_an_out_folder_of_other_files_is_refused_before_the_build(build_engine, onnx_dir, tmp_path, capsys):
    """The build copies the model's files into --out over any of the same names: another model's
    folder would be left half one model, half the other."""
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "postemb.json").write_text("{}")
    (other / "adapters.safetensors").write_bytes(b"")
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--out", other, "--dry-run")
    assert code == 2 and f"`--out` '{other}' is a folder of other files" in err and "Fix:" in err
    (tmp_path / "a-file").write_text("")
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--out", tmp_path / "a-file",
                       "--dry-run")
    assert code == 2 and "is a file" in err and "Fix:" in err


def test_an_onnx_file_outside_an_export_folder_names_the_fix(build_engine, onnx_dir, tmp_path, capsys):
    """A folder whose model names no ONNX file (a sentence-transformers folder, a training run): the
    message must not point at a postemb.json that is not there."""
    (onnx_dir / "postemb.json").unlink()
    (onnx_dir / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--dry-run")
    assert code == 2 and "postemb.json" not in err.split("Fix:")[0]
    assert "names no ONNX file" in err and "Fix: python export/export_onnx.py" in err
