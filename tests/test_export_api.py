"""postemb_rt.onnx_export's Python API, as a user calls it: a model given by name or folder, errors naming the
argument (on a small random BERT built here)."""
import pytest

from postemb_rt import ValidationError
from postemb_rt.onnx_export import export_onnx, quantize_int8


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    """A 2-layer, 32-wide sentence-transformers folder (read only)."""
    pytest.importorskip("sentence_transformers")
    from tests.st_models import build_st_folder

    return build_st_folder(tmp_path_factory.mktemp("api") / "st")


def test_export_and_quantize_take_a_folder_as_str_or_path(st_folder, tmp_path):
    """Both took only a ModelDir: a folder or a registered name, as Encoder.from_pretrained takes, raised
    AttributeError: 'str' object has no attribute 'encoder_path'."""
    fp32 = export_onnx(str(st_folder), tmp_path / "fp32")
    assert fp32.config.onnx == "model.onnx" and fp32.config.precision == "fp32"
    int8 = quantize_int8(tmp_path / "fp32", tmp_path / "int8", calibration=["a post", "another post"])
    assert int8.config.precision == "int8" and (tmp_path / "int8" / "model.onnx").is_file()


def test_exporting_an_onnx_only_folder_names_the_argument_and_writes_nothing(st_folder, tmp_path):
    """It raised the torch backend's BackendUnavailableError ("use backend='onnxruntime'"), after creating
    out_dir."""
    export_onnx(st_folder, tmp_path / "fp32")
    with pytest.raises(ValidationError, match=r"`model` .*fp32.* holds only an ONNX model.*Fix: pass the model "):
        export_onnx(tmp_path / "fp32", tmp_path / "again")
    assert not (tmp_path / "again").exists()
    with pytest.raises(ValidationError, match=r"`model` must be a ModelDir, a registered name or a folder\. "
                                              r"Given: int\."):
        export_onnx(3, tmp_path / "again")
