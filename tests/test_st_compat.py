"""Folders a user loads with ``SentenceTransformer(path)`` that are not plain ``Transformer -> Pooling -> Dense* ->
Normalize`` pipelines of sentence-transformers' defaults: each must give sentence-transformers' vectors, or be
refused by name (never other vectors)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from postemb_rt.data import BUILTIN_POSTS
from tests.st_models import build_st_folder

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

# short posts, and one longer than every max_seq_length here (64) and the encoder's 160 positions
TEXTS = ["a post", "", *BUILTIN_POSTS[:6], " ".join(BUILTIN_POSTS)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A sentence-transformers folder (BERT, 160 positions, max_seq_length 64 in tokenizer_config.json)."""
    return build_st_folder(tmp_path_factory.mktemp("compat") / "mean")


def st_encode(path, texts=TEXTS):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device="cpu")
    return st, st.encode(texts, batch_size=4)


def assert_close(got, want):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tokenizer_config", [True, False])
def test_a_plain_hugging_face_folder_is_what_sentence_transformers_makes_of_it(folder, tmp_path, tokenizer_config):
    """SentenceTransformer(hf_dir) builds Transformer -> Pooling(mean), no Normalize, cut at the tokenizer's
    model_max_length capped at max_position_embeddings (160 without tokenizer_config.json)."""
    d = tmp_path / "hf"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors") + (("tokenizer_config.json",) * tokenizer_config):
        shutil.copy(folder / name, d / name)
    st, want = st_encode(d)
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling"]
    with Encoder.from_pretrained(d, backend="torch") as enc:
        assert enc.max_seq_length == st.max_seq_length == (64 if tokenizer_config else 160)
        assert_close(enc.encode(TEXTS, batch_size=3), want)
        assert not enc.describe()["normalize"]
        assert_close(enc.encode(TEXTS, normalize_embeddings=True), st.encode(TEXTS, normalize_embeddings=True))


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory):
    return build_st_folder(tmp_path_factory.mktemp("compat") / "dense", dense=[(16, True, torch.nn.Tanh())])


@pytest.mark.parametrize("module, key, value", [
    ("2_Dense", "module_output_name", "dense_embedding"),  # ST keeps the pooled vector as the sentence embedding
    ("3_Normalize", "module_input_name", "token_embeddings"),  # ST normalises the tokens (ColBERT), not the vector
    ("3_Normalize", "module_output_name", "normalized"),  # ST leaves sentence_embedding raw
])
def test_a_dense_or_normalize_on_another_feature_is_refused_not_applied(dense_folder, tmp_path, module, key, value):
    d = Path(shutil.copytree(dense_folder, tmp_path / "f"))
    cfg_file = d / module / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    cfg_file.write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValidationError, match=rf"`{cfg_file}`.*{key} {value!r}.*'sentence_embedding'.*Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)
    cfg_file.write_text(json.dumps({**cfg, key: "sentence_embedding"}))  # the default, spelled out: loads
    with Encoder.from_pretrained(d, backend="torch") as enc:
        assert_close(enc.encode(TEXTS), st_encode(d)[1])
