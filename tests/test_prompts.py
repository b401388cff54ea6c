"""Prompts (postemb_rt.prompts): a sentence-transformers folder's ``prompts`` / ``default_prompt_name``
honoured with the numbers of ``SentenceTransformer.encode``, ``prompt_name`` / ``prompt`` on encode,
encode_query / encode_document, submit; and the errors for what is not computed."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from postemb_rt.data import BUILTIN_POSTS
from tests.conftest import SAMPLE_TEXTS, assert_exact
from tests.st_models import build_st_folder

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

# short posts, odd cases ("" and "hi"), and posts past max_seq_length (64): the prompt counts towards it
TEXTS = list(SAMPLE_TEXTS) + list(BUILTIN_POSTS[:6])
PROMPTS = {"query": "query: ", "passage": "passage: ", "classification": "Classify the topic of this post: "}


def _edit(path: Path, **changes):
    cfg = json.loads(path.read_text()) if path.exists() else {}
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small random folder (BERT, mean pooling, Dense, Normalize) with e5-style prompts, default 'passage'."""
    d = build_st_folder(tmp_path_factory.mktemp("prompts") / "e5ish", dense=[(16, True, torch.nn.Tanh())])
    _edit(d / "config_sentence_transformers.json", prompts=PROMPTS, default_prompt_name="passage")
    return d


@pytest.fixture(scope="module")
def st(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


@pytest.fixture(scope="module")
def enc(folder):
    with Encoder.from_pretrained(folder, backend="torch") as e:
        yield e


@pytest.mark.parametrize("kwargs", [{}, {"prompt_name": "query"}, {"prompt_name": "classification"},
                                    {"prompt": "search_query: "}, {"prompt": ""}, {"prompt_name": "document"}],
                         ids=["default-prompt", "query", "long-prompt", "free-text", "empty-disables-default",
                              "builtin-empty-name"])
def test_prompts_match_sentence_transformers(enc, st, kwargs):
    want = st.encode(TEXTS, batch_size=8, **kwargs)
    assert_exact(enc.encode(TEXTS, batch_size=5, **kwargs), want)


def test_default_prompt_is_applied_and_changes_the_vector(enc):
    assert not np.allclose(enc.encode(TEXTS[:3]), enc.encode(TEXTS[:3], prompt=""))
    assert_exact(enc.encode(TEXTS[:3]), enc.encode(["passage: " + t for t in TEXTS[:3]], prompt=""))


def test_encode_query_and_document_match_sentence_transformers(enc, st):
    assert_exact(enc.encode_query(TEXTS), st.encode_query(TEXTS, batch_size=8))
    assert_exact(enc.encode_document(TEXTS), st.encode_document(TEXTS, batch_size=8))
    assert_exact(enc.encode_query(TEXTS, prompt_name="classification"),
                 st.encode_query(TEXTS, prompt_name="classification", batch_size=8))


def test_submit_and_aencode_apply_the_same_prompts(enc):
    import asyncio

    assert_exact(enc.submit(TEXTS).result(timeout=60), enc.encode(TEXTS))
    assert_exact(enc.submit(TEXTS, prompt_name="query").result(timeout=60), enc.encode(TEXTS, prompt_name="query"))
    got = asyncio.run(enc.aencode(TEXTS[:3], prompt="x: "))
    assert_exact(got, enc.encode(TEXTS[:3], prompt="x: "))


def test_onnxruntime_applies_the_default_prompt(folder, st):
    with Encoder.from_pretrained(folder, backend="onnxruntime") as e:
        assert_exact(e.encode(TEXTS), st.encode(TEXTS, batch_size=8))


def test_the_prompt_counts_towards_max_length(enc):
    """As sentence-transformers: prompt + text is tokenized and truncated as one text."""
    long = " ".join(BUILTIN_POSTS)
    enc.encode([long], prompt_name="classification")
    n_prompted = enc.last_stats.tokens
    assert n_prompted == enc.max_length and enc.last_stats.truncated == [0]


def test_a_post_the_prompt_pushes_past_max_length_names_the_prompt_when_truncate_is_false(enc):
    """A post that fits max_length alone but not after its prompt: the error named only the post, which the
    user had checked fits; it now names the prompt too, on encode and submit."""
    ids = enc.tokenizer([" ".join(BUILTIN_POSTS)], truncate=True).ids[0][1:enc.max_length - 2]  # 253 tokens
    post = enc.tokenizer.decode([ids], True)[0]
    assert len(enc.tokenizer([post], truncate=False, prompt=None).ids[0]) <= enc.max_length  # fits alone
    for call in (enc.encode, lambda t, **kw: enc.submit(t, **kw).result()):
        with pytest.raises(ValidationError, match=r"`texts\[0\]` with its prompt 'query: ' is longer than max_length "
                                                  r"\(\d+ tokens\) .* Fix: shorten them, encode without the prompt,"):
            call([post], prompt_name="query", truncate=False)
        call([post], prompt="", truncate=False)  # no prompt: it fits


def test_prompt_and_prompt_name_together_are_refused(enc):
    with pytest.raises(ValidationError, match=r"give `prompt` or `prompt_name`, not both.*Fix:"):
        enc.encode(TEXTS[:2], prompt="a: ", prompt_name="query")
    with pytest.raises(ValidationError, match=r"not both"):
        enc.submit(TEXTS[:2], prompt="a: ", prompt_name="query")


def test_unknown_prompt_name_lists_the_model_prompts(enc):
    with pytest.raises(ValidationError, match=r"`prompt_name` must be one of .*'classification', 'document', "
                                              r"'passage', 'query'.*Given: 'retrieval'.*Fix:"):
        enc.encode(TEXTS[:2], prompt_name="retrieval")
    with pytest.raises(ValidationError, match=r"`prompt` must be a str. Given: int"):
        enc.encode(TEXTS[:2], prompt=3)


def test_model_without_prompts_has_the_builtin_empty_ones(tmp_path):
    d = build_st_folder(tmp_path / "plain")
    with Encoder.from_pretrained(d, backend="torch") as e:
        assert_exact(e.encode(TEXTS[:3], prompt_name="query"), e.encode(TEXTS[:3]))
        assert e.model.config.default_prompt_name is None


def test_default_prompt_name_not_among_the_prompts_is_refused(folder, tmp_path):
    d = Path(shutil.copytree(folder, tmp_path / "bad"))
    _edit(d / "config_sentence_transformers.json", default_prompt_name="retrieval")
    with pytest.raises(ValidationError, match=r"`default_prompt_name` in .*config_sentence_transformers.json must be "
                                              r"one of the prompts .*Given: 'retrieval'. Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


def test_pooling_without_the_prompt_is_refused_where_a_prompt_applies(folder, tmp_path):
    """include_prompt: false (prompt tokens left out of pooling) is not computed: refused at load when
    the default prompt applies, and per call for a non-empty prompt; without a prompt it is exact."""
    d = Path(shutil.copytree(folder, tmp_path / "instructor"))
    _edit(d / "1_Pooling" / "config.json", include_prompt=False)
    with pytest.raises(ValidationError, match=r"default prompt 'passage' would be left out of pooling.*Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)
    _edit(d / "config_sentence_transformers.json", default_prompt_name=None)
    from sentence_transformers import SentenceTransformer

    with Encoder.from_pretrained(d, backend="torch") as e:
        assert_exact(e.encode(TEXTS), SentenceTransformer(str(d), device="cpu").encode(TEXTS))
        with pytest.raises(ValidationError, match=r"include_prompt: false.*Given prompt: 'query: '. Fix:"):
            e.encode(TEXTS[:2], prompt_name="query")
        e.encode(TEXTS[:2], prompt_name="document")  # empty: nothing to leave out


def test_lowercasing_folder_lowercases_the_prompt_too(tmp_path):
    from sentence_transformers import SentenceTransformer

    d = build_st_folder(tmp_path / "lower", do_lower_case=True, normalize=False)
    _edit(d / "config_sentence_transformers.json", prompts={"query": "Query: "}, default_prompt_name="query")
    with Encoder.from_pretrained(d, backend="torch") as e:
        assert_exact(e.encode(TEXTS), SentenceTransformer(str(d), device="cpu").encode(TEXTS))


def test_postemb_json_prompts(folder, tmp_path):
    """The same keys in postemb.json; unset, they stay out of the file (fingerprints of older models unchanged)."""
    from postemb_rt.model_dir import PostEmbConfig

    d = Path(shutil.copytree(folder, tmp_path / "md"))
    cfg = dict(model_version="tiny-prompts", hidden_size=32, pooling="mean", max_length=64, encoder=".")
    assert "prompts" not in json.loads(PostEmbConfig(**cfg).to_json())
    (d / "postemb.json").write_text(json.dumps({**cfg, "prompts": {"query": "q: "}, "default_prompt_name": "query"}))
    with Encoder.from_pretrained(d, backend="torch") as e:
        assert json.loads(e.model.config.to_json())["prompts"] == {"query": "q: "}
        assert_exact(e.encode(TEXTS[:4]), e.encode(["q: " + t for t in TEXTS[:4]], prompt=""))
    (d / "postemb.json").write_text(json.dumps({**cfg, "prompts": {"query": 3}}))
    with pytest.raises(ValidationError, match=r"`prompts` in .*postemb.json must be a mapping of prompt name to text"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


def test_an_exported_directory_keeps_the_prompts(folder, st, tmp_path):
    """export_onnx writes the folder's prompts into postemb.json: the ONNX-only directory embeds alike."""
    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import export_onnx

    out = export_onnx(resolve(folder), tmp_path / "onnx", optimize=False)
    assert out.config.default_prompt_name == "passage" and out.config.prompts == PROMPTS
    with Encoder.from_pretrained(out.path, backend="onnxruntime") as e:
        assert_exact(e.encode(TEXTS), st.encode(TEXTS, batch_size=8))
        assert_exact(e.encode(TEXTS, prompt_name="query"), st.encode(TEXTS, prompt_name="query", batch_size=8))


def test_describe_names_the_prompts_and_the_dims(enc):
    info = enc.describe()
    assert info["prompts"]["passage"] == PROMPTS["passage"] and info["default_prompt_name"] == "passage"
    assert info["matryoshka_dims"] == [enc.dim]  # no nested dims declared: the full one only
