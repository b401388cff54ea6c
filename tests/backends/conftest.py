"""Backends under test: torch, and onnxruntime with pooling in the graph and external (C++),
for the base model and for a small model with a 50-d projection (weight + bias)."""
import json

import numpy as np
import pytest


@pytest.fixture(scope="session")
def projected_model(tmp_path_factory):
    """A model directory: the base encoder (borrowed from its pip package) + a random 384->50
    projection with bias."""
    import torch
    from safetensors.torch import save_file

    from postemb_rt.model_dir import BASE_PACKAGE, PostEmbConfig, load_model_dir

    root = tmp_path_factory.mktemp("projected")
    g = torch.Generator().manual_seed(0)
    save_file({"weight": torch.randn(50, 384, generator=g) / 384**0.5, "bias": torch.randn(50, generator=g) * 0.1},
              str(root / "projection.safetensors"))
    cfg = PostEmbConfig(model_version="test-projected", hidden_size=384, projection_dim=50,
                        encoder=f"pip:{BASE_PACKAGE}")
    (root / "postemb.json").write_text(cfg.to_json())
    return load_model_dir(root)


def _export(tmp_path_factory, model, pooling):
    from postemb_rt.onnx_export import export_onnx

    return export_onnx(model, tmp_path_factory.mktemp(f"onnx-{pooling}"), pooling=pooling)


@pytest.fixture(scope="session")
def encoders(tmp_path_factory, projected_model):
    """{(model, variant): Encoder}; variants: torch, onnx-graph, onnx-external, and OpenVINO on both
    exports (openvino-graph, openvino-external)."""
    from postemb_rt import Encoder
    from postemb_rt.model_dir import resolve

    base = resolve("base")
    out = {}
    for name, md in (("base", base), ("projected", projected_model)):
        out[name, "torch"] = Encoder.from_pretrained(md.path, backend="torch", device="cpu")
        for pooling in ("graph", "external"):
            if (name, pooling) == ("projected", "graph"):
                continue  # the graph path is the same exporter code as for base
            exported = _export(tmp_path_factory, md, pooling)
            out[name, f"onnx-{pooling}"] = Encoder.from_pretrained(exported.path, backend="onnxruntime", device="cpu")
            out[name, f"openvino-{pooling}"] = Encoder.from_pretrained(exported.path, backend="openvino", device="cpu")
    return out


def reference_embeddings(model_dir, texts, normalize=True):
    """The torch reference: PostEmbModel.forward (reference pooling), one unpadded post at a time."""
    import torch

    from postemb_rt.modeling import PostEmbModel
    from postemb_rt.tokenization import PostTokenizer

    model = PostEmbModel.from_model_dir(model_dir)
    tok = PostTokenizer(model_dir.tokenizer_path, model_dir.config.max_length)(texts)
    rows = []
    with torch.inference_mode():
        for ids in tok.ids:
            t = torch.tensor([ids])
            pooled, unit = model(t, torch.ones_like(t))
            rows.append((unit if normalize else pooled)[0].numpy())
    return np.stack(rows)


def model_dirs(projected_model):
    from postemb_rt.model_dir import resolve

    return {"base": resolve("base"), "projected": projected_model}


