"""export/export_onnx.py --precision int8: what the exported folder says about its int8 (on a small random BERT)."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from postemb_rt import Encoder, cpu
from postemb_rt.model_dir import load_model_dir, resolve
from postemb_rt.onnx_export import export_onnx

SCRIPT = Path(__file__).resolve().parent.parent / "export" / "export_onnx.py"


def _export_module():
    spec = importlib.util.spec_from_file_location("export_onnx_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_int8_export_names_the_int8_kernels_its_fidelity_was_measured_with(tmp_path, monkeypatch):
    """onnxruntime's int8 matmuls sum differently by CPU (MLAS u8s8-vnni: exact int32; u8s8-madd16: vpmaddubsw,
    whose int16 pair sums saturate), and the folder's stored fidelity is trusted wherever it loads: it did not say
    on which kind it was measured, so a user on the other kind could not tell it was not measured for his CPU."""
    import onnxruntime

    pytest.importorskip("sentence_transformers")
    from tests.st_models import build_st_folder

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    export_onnx(resolve(build_st_folder(tmp_path / "st")), tmp_path / "fp32")
    args = argparse.Namespace(fidelity_posts=11, force=True)  # force: a random model may miss the bar
    assert _export_module().quantize_checked(tmp_path / "fp32", tmp_path / "int8", args) == 0
    stored = load_model_dir(tmp_path / "int8").config.fidelity
    assert stored["numerics"] == cpu.mlas_int8_kernels()
    assert stored["source"].endswith(f"; onnxruntime {onnxruntime.__version__}")
    with Encoder.from_pretrained(tmp_path / "int8", backend="onnxruntime", precision="int8") as enc:
        d = enc.describe()
        assert d["fidelity"] == stored and cpu.mlas_int8_kernels() in d["int8"]


def test_a_folder_measured_with_the_other_int8_kernels_loads_with_a_warning_naming_both(tmp_path, monkeypatch,
                                                                                        caplog):
    """Its stored fidelity was trusted silently on a CPU whose int8 sums differ from the ones it was measured on."""
    pytest.importorskip("sentence_transformers")
    from tests.st_models import build_st_folder

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    export_onnx(resolve(build_st_folder(tmp_path / "st")), tmp_path / "fp32")
    args = argparse.Namespace(fidelity_posts=11, force=True)
    assert _export_module().quantize_checked(tmp_path / "fp32", tmp_path / "int8", args) == 0
    other = {"u8s8-vnni": "u8s8-madd16", "u8s8-madd16": "u8s8-vnni"}[cpu.mlas_int8_kernels()]
    with caplog.at_level("WARNING", logger="postemb_rt"):
        with Encoder.from_pretrained(tmp_path / "int8", backend="onnxruntime", precision="int8") as enc:
            assert enc.fidelity.numerics == cpu.mlas_int8_kernels()
    assert not [r for r in caplog.records if "int8 fidelity was measured with" in r.getMessage()]
    cfg_file = tmp_path / "int8" / "postemb.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["fidelity"]["numerics"] = other  # as exported on the other kind of CPU
    cfg_file.write_text(json.dumps(cfg))
    with caplog.at_level("WARNING", logger="postemb_rt"):
        with Encoder.from_pretrained(tmp_path / "int8", backend="onnxruntime", precision="int8") as enc:
            assert enc.describe()["fidelity"]["numerics"] == other
    msgs = [r.getMessage() for r in caplog.records if "int8 fidelity was measured with" in r.getMessage()]
    assert len(msgs) == 1 and f"measured with {other}, and this CPU runs {cpu.mlas_int8_kernels()}" in msgs[0]
    assert "Fix: export it again" in msgs[0]
