"""The rest of ``SentenceTransformer``'s API on ``Encoder`` (postemb_rt.st_api): ``similarity``,
``similarity_pairwise`` and ``similarity_fn_name``, the dimension getters and ``max_seq_length``,
each compared with sentence-transformers itself on the same folder."""
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from tests.conftest import SAMPLE_TEXTS, assert_exact
from tests.st_models import build_st_folder

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

FNS = ["cosine", "dot", "euclidean", "manhattan"]
LONG = " ".join(["word"] * 100)  # longer than any max_seq_length below


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A sentence-transformers folder without Normalize (raw vectors: the four scores differ)."""
    return build_st_folder(tmp_path_factory.mktemp("stapi") / "raw", normalize=False)


@pytest.fixture(scope="module")
def st(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


@pytest.fixture
def enc(folder, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    with Encoder.from_pretrained(folder, backend="torch") as e:
        yield e


@pytest.mark.parametrize("fn", FNS)
def test_similarity_and_pairwise_equal_sentence_transformers(enc, st, fn):
    a, b = enc.encode(SAMPLE_TEXTS[:4]), enc.encode(SAMPLE_TEXTS[2:6])
    st.similarity_fn_name = fn
    enc.similarity_fn_name = fn
    want, want_pairs = st.similarity(a, b), st.similarity_pairwise(a, b)
    for x, y in [(a, b), (torch.from_numpy(a), torch.from_numpy(b)), (list(a), list(torch.from_numpy(b)))]:
        got = enc.similarity(x, y)
        assert isinstance(got, torch.Tensor) and got.shape == (4, 4) and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-5), (fn, got, want)
        assert torch.allclose(enc.similarity_pairwise(x, y), want_pairs, atol=1e-5)
    assert torch.allclose(enc.similarity(a[0], b), want[:1], atol=1e-5)  # a 1-D input is one row
    if fn != "cosine":
        st.similarity_fn_name = "cosine"
        assert not torch.allclose(got, st.similarity(a, b), atol=1e-3)  # the test can tell the functions apart


def test_similarity_fn_name_comes_from_the_folder_and_is_checked(folder, tmp_path, enc):
    from sentence_transformers import SentenceTransformer, SimilarityFunction

    assert enc.similarity_fn_name == "cosine"
    enc.similarity_fn_name = SimilarityFunction.DOT_PRODUCT  # sentence-transformers' enum works too
    assert enc.similarity_fn_name == "dot"
    with pytest.raises(ValidationError, match=r"`similarity_fn_name` must be one of .*Given: 'maxsim'"):
        enc.similarity_fn_name = "maxsim"
    dot = Path(shutil.copytree(folder, tmp_path / "dot"))
    cfg_path = dot / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "similarity_fn_name": "manhattan"}))
    with Encoder.from_pretrained(dot, backend="torch") as e:
        assert e.similarity_fn_name == SentenceTransformer(str(dot), device="cpu").similarity_fn_name == "manhattan"
        v = e.encode(SAMPLE_TEXTS[:3])
        assert torch.allclose(e.similarity(v, v), -torch.cdist(torch.from_numpy(v), torch.from_numpy(v), p=1))
    # ST's constructor argument, over the folder's (it was a TypeError), and carried by pickling
    with Encoder.from_pretrained(dot, backend="torch", similarity_fn_name=SimilarityFunction.COSINE) as e:
        assert e.similarity_fn_name == SentenceTransformer(str(dot), device="cpu",
                                                           similarity_fn_name="cosine").similarity_fn_name == "cosine"
        assert pickle.loads(pickle.dumps(e)).similarity_fn_name == "cosine"
    with pytest.raises(ValidationError, match=r"`similarity_fn_name` must be one of .*Given: 'maxsim'"):
        Encoder.from_pretrained(tmp_path / "not loaded", similarity_fn_name="maxsim")  # before the model loads
    cfg_path.write_text(json.dumps({**cfg, "similarity_fn_name": "hamming"}))
    with pytest.raises(ValidationError, match=r"similarity_fn_name 'hamming'; it must be one of"):
        Encoder.from_pretrained(dot, backend="torch")


def test_similarity_refuses_what_it_cannot_score(enc):
    v = enc.encode(SAMPLE_TEXTS[:3])
    with pytest.raises(ValidationError, match=r"must have one dim. Given: 32 and 16"):
        enc.similarity(v, v[:, :16])
    with pytest.raises(ValidationError, match=r"as many rows for pairwise scores. Given: 3 and 2"):
        enc.similarity_pairwise(v, v[:2])
    with pytest.raises(ValidationError, match=r"`embeddings1` must be embeddings"):
        enc.similarity(np.zeros((2, 3, 4)), v)


def test_dimension_and_max_seq_length_as_sentence_transformers(enc, st):
    assert enc.get_sentence_embedding_dimension() == enc.get_embedding_dimension() == \
        st.get_embedding_dimension() == enc.dim
    assert enc.max_seq_length == st.max_seq_length == enc.max_length == 64
    version = enc.vector_version
    st.max_seq_length = enc.max_seq_length = 16
    try:
        assert enc.max_length == 16 and enc.vector_version == version + "+max16"
        assert_exact(enc.encode([LONG, "short"]), st.encode([LONG, "short"]))
        assert enc.last_stats.truncated == [0]
    finally:
        st.max_seq_length = 64
    for bad in (1, 65, 16.0, True):
        with pytest.raises(ValidationError, match=r"`max_seq_length` must be an int from 3 \(2 special tokens and one "
                                                   r"of text\) to the model's "):
            enc.max_seq_length = bad
    enc.submit(["a post"]).result()
    with pytest.raises(ValidationError, match=r"cannot change once submit\(\)/aencode\(\) started the batcher"):
        enc.max_seq_length = 32


@pytest.fixture(scope="module")
def mrl(tmp_path_factory):
    """A normalising folder (dim 32) with a postemb.json declaring matryoshka_dims [8, 16]."""
    norm = build_st_folder(tmp_path_factory.mktemp("stapi-mrl") / "norm")
    (norm / "postemb.json").write_text(json.dumps(dict(model_version="tiny-mrl", hidden_size=32, pooling="mean",
                                                       max_length=64, encoder=".", matryoshka_dims=[8, 16])))
    return norm


def test_truncate_dim_at_load_is_encode_and_submits_default_as_sentence_transformers(mrl, tmp_path, monkeypatch):
    """from_pretrained(truncate_dim=16) (SentenceTransformer(..., truncate_dim=16)): encode, submit and
    aencode return the re-normalised 16-d prefix, the version says @16, the getters say 16;
    truncate_embeddings changes it for a block; an undeclared dim is refused before the model loads."""
    import asyncio

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    texts = SAMPLE_TEXTS[:5]
    with Encoder.from_pretrained(mrl, backend="torch") as full, \
            Encoder.from_pretrained(mrl, backend="torch", truncate_dim=16) as enc:
        want = full.encode(texts, truncate_dim=16)
        assert_exact(enc.encode(texts), want)
        assert enc.encode(texts, truncate_dim=32).shape == (5, 32)  # a call's own dim still wins
        assert_exact(enc.submit(texts).result(), want)
        assert_exact(enc.submit(texts[0]).result()[None], want[:1])  # one str: (16,)
        assert_exact(asyncio.run(enc.aencode(texts)), want)
        assert enc.submit([]).result().shape == (0, 16)
        chunked = enc.submit([LONG, "short"], long_posts="chunk").result()  # windows combined, then the prefix
        assert_exact(chunked, full.encode([LONG, "short"], long_posts="chunk", truncate_dim=16))
        assert enc.vector_version == full.vector_version + "@16" and enc.get_sentence_embedding_dimension() == 16
        assert enc.describe()["truncate_dim"] == 16 and enc.describe()["vector_version"].endswith("@16")
        with enc.truncate_embeddings(8):
            assert enc.encode(texts).shape == (5, 8) and enc.vector_version.endswith("@8")
            assert_exact(enc.submit(texts).result(), full.encode(texts, truncate_dim=8))
        with enc.truncate_embeddings(None):
            assert enc.encode(texts).shape == (5, 32) and enc.vector_version == full.vector_version
        assert enc.truncate_dim == 16 and full.truncate_dim is None
    with pytest.raises(ValidationError, match=r"`truncate_dim` must be one of .*\[8, 16, 32\].*Given: 12"):
        Encoder.from_pretrained(mrl, backend="torch", truncate_dim=12)


def test_truncate_sentence_embeddings_is_the_older_name_as_in_sentence_transformers(mrl):
    """ST still has ``truncate_sentence_embeddings`` (its pre-3.x name, deprecated); it was an AttributeError here."""
    import warnings

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(mrl), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with st.truncate_sentence_embeddings(8):
            want, want_dim = st.encode(SAMPLE_TEXTS[:3], normalize_embeddings=True), st.get_embedding_dimension()
    with Encoder.from_pretrained(mrl, backend="torch") as enc:
        with enc.truncate_sentence_embeddings(8):
            assert enc.get_sentence_embedding_dimension() == want_dim == 8
            assert_exact(enc.encode(SAMPLE_TEXTS[:3]), want)
        assert enc.truncate_dim is None and enc.encode("a post").shape == (32,)


def test_torch_module_surface_is_this_encoder_where_it_runs(enc, st):
    """device / to / cpu / eval / float / train(False) as on a SentenceTransformer (this Encoder, on the device it
    runs on); moving, casting and training are refused naming from_pretrained's arguments."""
    assert enc.device == st.device == torch.device("cpu") and isinstance(enc.device, torch.device)
    assert enc.training is st.eval().training is False  # an Encoder is always in eval mode
    for same in (enc.to("cpu"), enc.to(torch.device("cpu")), enc.to(device="cpu"), enc.to(torch.float32), enc.cpu(),
                 enc.eval(), enc.train(False), enc.float(), enc.to("cpu", non_blocking=True)):
        assert same is enc
    assert_exact(enc.to("cpu").encode(SAMPLE_TEXTS[:3]), st.to("cpu").encode(SAMPLE_TEXTS[:3]))
    for call in (lambda: enc.to("cuda"), lambda: enc.cuda(), lambda: enc.to(torch.device("cuda", 1))):
        with pytest.raises(ValidationError, match=r"`device` must be None or the device this Encoder was loaded on "
                                                  r"\('cpu'\).*Fix: Encoder.from_pretrained\(..., device='cuda"):
            call()
    for call, want in ((enc.half, "fp16"), (enc.bfloat16, "bf16"), (lambda: enc.to(torch.float16), "fp16")):
        with pytest.raises(ValidationError, match=rf"compute precision is set at load, not cast; this one runs fp32.*"
                                                  rf"Fix: Encoder.from_pretrained\(..., precision='{want}'\)"):
            call()
    with pytest.raises(ValidationError, match=r"`train\(\)`: an Encoder runs a model.*Fix: fine-tune with"):
        enc.train()


@pytest.fixture(scope="module")
def prompted(folder, tmp_path_factory):
    """The raw folder with prompts and a default prompt in its config_sentence_transformers.json."""
    d = Path(shutil.copytree(folder, tmp_path_factory.mktemp("stapi-prompts") / "prompted"))
    cfg_path = d / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "prompts": {"query": "query: ", "document": "passage: ", "topic": "t: "},
                                    "default_prompt_name": "query"}))
    return d


def test_prompts_and_default_prompt_name_as_sentence_transformers(enc, st, prompted):
    from sentence_transformers import SentenceTransformer

    assert dict(enc.prompts) == st.prompts == {"query": "", "document": ""}
    assert enc.default_prompt_name is st.default_prompt_name is None
    ref = SentenceTransformer(str(prompted), device="cpu")
    with Encoder.from_pretrained(prompted, backend="torch") as e:
        assert dict(e.prompts) == ref.prompts and e.default_prompt_name == ref.default_prompt_name == "query"
        assert_exact(e.encode(SAMPLE_TEXTS[:3], prompt=e.prompts["topic"]),
                     ref.encode(SAMPLE_TEXTS[:3], prompt_name="topic"))
        with pytest.raises(TypeError):  # read-only: a change would not reach encode
            e.prompts["query"] = "q: "
        with pytest.raises(ValidationError, match=r"`prompts` are set at load.*Fix: pass prompt=.*"
                                                  r"from_pretrained\(\.\.\., prompts="):
            e.prompts = {"query": "q: "}
        with pytest.raises(ValidationError, match=r"`default_prompt_name` is set at load.*Fix: pass prompt_name=.*"
                                                  r"from_pretrained\(\.\.\., default_prompt_name="):
            e.default_prompt_name = None


def test_prompts_and_default_prompt_name_at_load_as_sentence_transformers_constructor(folder, prompted, monkeypatch):
    """SentenceTransformer(path, prompts=..., default_prompt_name=...): the given prompts over the model's own (by
    name), the given default over the model's; from_pretrained takes both (they were a TypeError), checks them
    before the model loads, and pickling carries them."""
    from sentence_transformers import SentenceTransformer

    from postemb_rt import backends

    given = dict(prompts={"query": "q: ", "title": "title: "}, default_prompt_name="title")
    ref = SentenceTransformer(str(prompted), device="cpu", **given)
    texts = SAMPLE_TEXTS[:4]
    with Encoder.from_pretrained(prompted, backend="torch", **given) as e:
        assert dict(e.prompts) == ref.prompts == {"query": "q: ", "document": "passage: ", "topic": "t: ",
                                                  "title": "title: "}
        assert e.default_prompt_name == ref.default_prompt_name == "title"
        assert e.describe()["default_prompt_name"] == "title"
        want = ref.encode(texts)
        assert_exact(e.encode(texts), want)
        assert_exact(e.submit(texts).result(), want)
        assert_exact(e.encode_query(texts), ref.encode_query(texts))
        assert_exact(e.encode(texts, prompt_name="document"), ref.encode(texts, prompt_name="document"))
        again = pickle.loads(pickle.dumps(e))
        with again:
            assert dict(again.prompts) == dict(e.prompts) and again.default_prompt_name == "title"
            assert_exact(again.encode(texts), want)
        with Encoder.from_pretrained(folder, backend="torch", prompts=e.prompts, default_prompt_name="title") as f:
            assert dict(f.prompts) == dict(e.prompts)  # another Encoder's (read-only) prompts, which pickle too
            assert dict(pickle.loads(pickle.dumps(f)).prompts) == dict(e.prompts)
    # the model's default stays when none is given; a built-in name is a default even when empty, as in ST
    for kwargs in (dict(prompts={"document": "doc: "}), dict(default_prompt_name="document")):
        ref = SentenceTransformer(str(prompted), device="cpu", **kwargs)
        with Encoder.from_pretrained(prompted, backend="torch", **kwargs) as e:
            assert (dict(e.prompts), e.default_prompt_name) == (ref.prompts, ref.default_prompt_name)
            assert_exact(e.encode(texts), ref.encode(texts))
    ref = SentenceTransformer(str(folder), device="cpu", default_prompt_name="query")
    with Encoder.from_pretrained(folder, backend="torch", default_prompt_name="query") as e:
        assert (dict(e.prompts), e.default_prompt_name) == (ref.prompts, ref.default_prompt_name)
    real = backends.backend_class

    def not_loaded(name):  # each refusal below comes before a backend loads the model
        real(name)
        raise AssertionError(f"the {name} backend was loaded")

    monkeypatch.setattr(backends, "backend_class", not_loaded)
    for kwargs, match in (
            (dict(default_prompt_name="nope"), r"`default_prompt_name` in Encoder.from_pretrained\(\.\.\.\) must be "
                                               r"one of the prompts \['document', 'query', 'topic'\]. Given: 'nope'"),
            (dict(prompts={"query": 1}), r"`prompts` in Encoder.from_pretrained\(\.\.\.\) must be a mapping of "
                                         r"prompt name to text. Given: \{'query': 1\}"),
            (dict(prompts=["query: "]), r"`prompts` in Encoder.from_pretrained\(\.\.\.\) must be a mapping")):
        with pytest.raises(ValidationError, match=match):
            Encoder.from_pretrained(prompted, backend="torch", **kwargs)
        with pytest.raises((ValueError, TypeError, AttributeError)):  # ST refuses them too (once loaded)
            SentenceTransformer(str(prompted), device="cpu", **kwargs).encode(texts)


def test_sentence_transformers_evaluators_run_on_an_encoder(enc, st):
    """Evaluators call encode with precision=None and store metrics in model_card_data: same numbers as ST."""
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator, InformationRetrievalEvaluator

    texts = list(SAMPLE_TEXTS)
    sts = EmbeddingSimilarityEvaluator(texts[:5], texts[1:6], [0.1, 0.5, 0.9, 0.3, 0.2], name="sts")
    ir = InformationRetrievalEvaluator({"q1": texts[0], "q2": texts[3]}, {str(i): t for i, t in enumerate(texts)},
                                       {"q1": {"1"}, "q2": {"4", "5"}}, name="ir")
    for evaluator in (sts, ir):
        got, want = evaluator(enc), evaluator(st)
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-5 for k in got), (got, want)
        assert enc.evaluate(evaluator) == got  # ST's model.evaluate(evaluator): evaluator(model)
    assert [r["evaluator"] for r in enc.model_card_data.eval_results] == ["EmbeddingSimilarityEvaluator"] * 2 + [
        "InformationRetrievalEvaluator"] * 2


def test_get_max_seq_length_and_save(enc, st, tmp_path):
    assert enc.get_max_seq_length() == st.get_max_seq_length() == enc.max_length
    for call in (enc.save, enc.save_pretrained):
        with pytest.raises(ValidationError, match=r"an Encoder does not write models.*Fix: python "
                                                  r"export/export_sentence_transformers.py --model .* --out "):
            call(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    from types import SimpleNamespace

    from postemb_rt.st_api import SentenceTransformerAPI

    onnx_only = SimpleNamespace(model=SimpleNamespace(path=tmp_path / "m-onnx", encoder_path=None))
    with pytest.raises(ValidationError, match=r"holds only an ONNX model.*Fix: .* --model <the model directory it "
                                              r"was exported from>"):
        SentenceTransformerAPI.save(onnx_only, str(tmp_path / "out"))


def test_the_tokenizer_answers_what_code_for_sentence_transformers_asks_of_it(enc, st):
    """``model.tokenizer`` is a Hugging Face tokenizer in ST: its tokenize / encode / model_max_length."""
    text = "Thrilled to announce our new café! " + LONG
    assert enc.tokenizer.tokenize(text) == st.tokenizer.tokenize(text)  # whole, not truncated
    assert enc.tokenizer.encode("hello world") == st.tokenizer.encode("hello world")
    assert enc.tokenizer.encode(text) == st.tokenizer.encode(text, truncation=True, max_length=enc.max_length)
    assert enc.tokenizer.encode("hi", add_special_tokens=False) == st.tokenizer.encode("hi", add_special_tokens=False)
    assert enc.tokenizer.model_max_length == st.max_seq_length == enc.max_length
    with pytest.raises(ValidationError, match=r"`text` of tokenizer.encode must be a str. Given: list"):
        enc.tokenizer.encode(["a", "b"])


@pytest.mark.parametrize("tokenizer_class", [None, "BertTokenizer"])
def test_tokenize_gives_sentence_transformers_features(enc, st, folder, tokenizer_class, tmp_path):
    """``model.tokenize(texts)`` (ST's, deprecated there for ``preprocess``): int64 tensors padded to the longest
    text, cut at max_seq_length, token_type_ids where the tokenizer class gives them (BERT's; not the generic
    fast tokenizer's of the built folders); it was an AttributeError here."""
    from contextlib import ExitStack

    from sentence_transformers import SentenceTransformer

    texts = ["Thrilled to announce our new café!", "hi", LONG]
    with ExitStack() as stack:
        if tokenizer_class:
            d = Path(shutil.copytree(folder, tmp_path / "bert-tok"))
            cfg = json.loads((d / "tokenizer_config.json").read_text())
            (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": tokenizer_class}))
            st = SentenceTransformer(str(d), device="cpu")
            enc = stack.enter_context(Encoder.from_pretrained(d, backend="torch"))
        want = {k: v for k, v in st.tokenize(texts).items() if k != "modality"}  # ST 6 adds "modality": "text"
        got = enc.tokenize(texts)
        assert list(got) == list(want) and got["input_ids"].shape == (3, enc.max_seq_length)
        assert ("token_type_ids" in got) is (tokenizer_class is not None)
        for k, v in got.items():
            assert isinstance(v, torch.Tensor) and v.dtype == torch.int64 and torch.equal(v, want[k]), k
        assert enc.tokenize([]) == st.tokenize([]) == {}
        for prompt in (None, "query: "):  # ST 6's preprocess: tokenize, with the prompt before each text
            want = {k: v for k, v in st.preprocess(texts, prompt=prompt).items() if k != "modality"}
            got = enc.preprocess(texts, prompt=prompt)
            assert list(got) == list(want) and all(torch.equal(torch.as_tensor(got[k]), torch.as_tensor(want[k]))
                                                   for k in got)
        with pytest.raises(ValidationError, match=r"`texts` of tokenize must be a list of str.*Given: a str.*Fix: "
                                                  r"tokenize\(\[text\]\)"):
            enc.tokenize("one post")
