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
    names = ("config.json", "tokenizer.json", "model.safetensors") + (("tokenizer_config.json",) * tokenizer_config)
    for name in names:
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


def _with_st_config(folder, tmp_path, **keys):
    d = Path(shutil.copytree(folder, tmp_path / "f"))
    cfg_file = d / "sentence_bert_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **keys}))
    return d, cfg_file


@pytest.mark.parametrize("keys, cut", [
    (dict(processing_kwargs={"text": {"max_length": 16}}), 16),  # sentence-transformers 6: the tokenizer call's
    (dict(processing_kwargs={"common": {"max_length": 20, "truncation": True}}), 20),
    (dict(processor_kwargs={"model_max_length": 24}), 24),  # the tokenizer's load arguments
    (dict(tokenizer_args={"model_max_length": 100, "use_fast": True}), 100),  # their name before 6, past 64
    (dict(max_seq_length=16, tokenizer_args={"model_max_length": 20}), 20),  # wins over max_seq_length, as there
])
def test_the_tokenizer_settings_of_sentence_bert_config_cut_as_in_sentence_transformers(folder, tmp_path, keys, cut):
    d, _ = _with_st_config(folder, tmp_path, **keys)
    want = st_encode(d)[1]
    with Encoder.from_pretrained(d, backend="torch") as enc:
        assert enc.max_seq_length == cut
        assert_close(enc.encode(TEXTS), want)


@pytest.mark.parametrize("keys, named", [
    (dict(tokenizer_args={"add_prefix_space": True}), "tokenizer_args.add_prefix_space"),
    (dict(processor_kwargs={"do_lower_case": True}), "processor_kwargs.do_lower_case"),
    (dict(processing_kwargs={"text": {"truncation": False}}), "processing_kwargs.text.truncation"),
    (dict(processing_kwargs={"text": {"padding_side": "left"}}), "processing_kwargs.text.padding_side"),
    (dict(query_length=32), "query_length"),  # encode_query's own cut (multi-vector models)
])
def test_tokenizer_settings_that_would_change_the_tokens_are_refused_by_name(folder, tmp_path, keys, named):
    d, cfg_file = _with_st_config(folder, tmp_path, **keys)
    with pytest.raises(ValidationError, match=rf"`{cfg_file}` .*{named}.*Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


@pytest.mark.parametrize("tokenizer_config, agrees", [
    ({"tokenizer_class": "BertTokenizer", "do_lower_case": True}, True),  # as tokenizer.json's BertNormalizer
    ({"tokenizer_class": "BertTokenizerFast"}, True),  # transformers' defaults: lower case, accents as lower case
    ({}, True),  # no class: config.json's model_type "bert" picks BertTokenizer
    ({"tokenizer_class": "BertTokenizer", "do_lower_case": False}, False),  # a cased tokenizer over an uncased vocab
    ({"tokenizer_class": "DistilBertTokenizer", "strip_accents": False}, False),
    ({"tokenizer_class": "BertTokenizer", "tokenize_chinese_chars": False}, False),
])
def test_a_tokenizer_config_that_rebuilds_another_normalizer_is_refused(folder, tmp_path, tokenizer_config, agrees):
    """transformers builds a BERT-family tokenizer's normalizer from tokenizer_config.json (do_lower_case,
    strip_accents, tokenize_chinese_chars), not from tokenizer.json, which postemb_rt reads."""
    d = Path(shutil.copytree(folder, tmp_path / "f"))
    cfg_file = d / "tokenizer_config.json"
    cfg = {k: v for k, v in json.loads(cfg_file.read_text()).items() if k != "tokenizer_class"}
    cfg_file.write_text(json.dumps({**cfg, **tokenizer_config}))
    texts = TEXTS + ["Über CAFÉ Ünïcödé 日本語"]
    if agrees:
        with Encoder.from_pretrained(d, backend="torch") as enc:
            assert_close(enc.encode(texts), st_encode(d, texts)[1])
    else:
        named = rf"`{cfg_file}` .*normalizer.*`{d}/tokenizer.json`.*Fix: .*save_pretrained"
        with pytest.raises(ValidationError, match=named):
            Encoder.from_pretrained(d, backend="torch", warmup=False)
        assert np.abs(st_encode(d, texts)[1] - Encoder.from_pretrained(
            Path(shutil.copytree(folder, tmp_path / "g")), backend="torch").encode(texts)).max() > 1e-3  # they differ


@pytest.fixture(scope="module")
def roberta_folder(tmp_path_factory):
    return build_st_folder(tmp_path_factory.mktemp("compat") / "roberta", arch="roberta")


@pytest.mark.parametrize("tokenizer_config, agrees", [
    ({"tokenizer_class": "RobertaTokenizer"}, True),  # add_prefix_space False, as tokenizer.json's ByteLevel
    ({}, True),  # no class: model_type "roberta"
    ({"tokenizer_class": "RobertaTokenizerFast", "add_prefix_space": True}, False),
])
def test_a_roberta_tokenizer_config_that_adds_a_prefix_space_is_refused(roberta_folder, tmp_path, tokenizer_config,
                                                                        agrees):
    d = Path(shutil.copytree(roberta_folder, tmp_path / "f"))
    cfg_file = d / "tokenizer_config.json"
    cfg = {k: v for k, v in json.loads(cfg_file.read_text()).items() if k != "tokenizer_class"}
    cfg_file.write_text(json.dumps({**cfg, **tokenizer_config}))
    if agrees:
        with Encoder.from_pretrained(d, backend="torch") as enc:
            assert_close(enc.encode(TEXTS), st_encode(d)[1])
    else:
        with pytest.raises(ValidationError, match=rf"`{cfg_file}` .*'add_prefix_space': True.*Fix: .*save_pretrained"):
            Encoder.from_pretrained(d, backend="torch", warmup=False)


def test_a_hub_model_id_is_refused_naming_the_download_and_the_folders_that_load(tmp_path, monkeypatch):
    """SentenceTransformer("org/name") downloads; postemb_rt never does, and says what to pass instead."""
    from postemb_rt import ModelNotFoundError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"'sentence-transformers/all-MiniLM-L6-v2' is neither a registered "
                                                 r"name .*nor a directory.*a sentence-transformers folder.*"
                                                 r"downloads nothing.*hf download "
                                                 r"sentence-transformers/all-MiniLM-L6-v2 --local-dir DIR"):
        Encoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
