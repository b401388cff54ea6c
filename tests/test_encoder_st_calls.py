"""Calls copied from code written for sentence-transformers 6, run on an Encoder of the same folder:
``encode_query`` / ``encode_document`` with ST's own keyword names, and the errors for inputs that are not text."""
import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from tests.conftest import SAMPLE_TEXTS, assert_exact
from tests.st_models import build_st_folder

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

TEXTS = list(SAMPLE_TEXTS[:5])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_st_folder(tmp_path_factory.mktemp("stcalls") / "norm")


@pytest.fixture(scope="module")
def st(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", prompts={"query": "q: ", "document": "d: "})


@pytest.fixture(scope="module")
def enc(folder):
    with Encoder.from_pretrained(folder, backend="torch", prompts={"query": "q: ", "document": "d: "}) as e:
        yield e


@pytest.mark.parametrize("method", ["encode_query", "encode_document"])
def test_encode_query_and_document_take_the_texts_by_sentence_transformers_names(enc, st, method):
    """ST 6's ``encode_query(inputs=...)`` (and the older ``sentences=``) took the texts; here they were a
    TypeError (a required positional ``texts``), so ST code calling them by keyword did not run."""
    want = getattr(st, method)(TEXTS)
    for kw in ("inputs", "sentences"):
        assert_exact(getattr(enc, method)(**{kw: TEXTS}), want)
        assert getattr(enc, method)(**{kw: TEXTS[0]}).shape == (32,)
    assert_exact(getattr(enc, method)(inputs=TEXTS, prompt=""), st.encode(TEXTS, prompt=""))


@pytest.mark.parametrize("method", ["encode_query", "encode_document"])
def test_encode_query_and_document_refuse_positional_options_as_encode_does(enc, method):
    """ST takes ``prompt_name`` second; ``encode`` refuses a second positional argument with that fix, and
    ``encode_query`` / ``encode_document`` now say the same instead of a bare TypeError."""
    with pytest.raises(ValidationError, match=r"`encode` takes the texts as its only positional argument.*Fix: pass "
                                              r"the others by keyword"):
        getattr(enc, method)(TEXTS, "query")
    with pytest.raises(ValidationError, match=r"`texts` must be a str or a list of str. Given: None"):
        getattr(enc, method)()


@pytest.mark.parametrize("texts, fix", [
    (None, r"Fix: pass the texts: encode\(texts\), or as `inputs=` / `sentences=`"),
    (b"a post", r"Fix: decode them to str first: texts.decode\('utf-8'\)"),
    (bytearray(b"a post"), r"Fix: decode them to str first"),
    (42, r"Fix: pass a str or a list of str \(str\(x\) for a number\)"),
])
def test_texts_that_are_not_text_are_refused_with_the_fix(enc, texts, fix):
    """The error named the type only: no fix for None (texts not passed), bytes (not decoded) or a number."""
    for call in (enc.encode, enc.submit, enc.encode_query):
        with pytest.raises(ValidationError, match=rf"`texts` must be a str or a list of str. Given: "
                                                  rf"{type(texts).__name__}\. {fix}"):
            call(texts)


def test_a_bytes_item_is_refused_with_decode_as_the_fix(enc):
    """``str(b'...')`` (the fix given for a number) would embed "b'...'": the fix for bytes is to decode them."""
    with pytest.raises(ValidationError, match=r"`texts\[1\]` must be str. Given: bytes \(b'x'\). Fix: decode it: "
                                              r"texts\[1\].decode\('utf-8'\)"):
        enc.encode(["a post", b"x"])


@pytest.mark.parametrize("kwargs, fix", [({"trust_remote_code": True}, "no remote code runs here"),
                                         ({"cache_folder": "/tmp/x"}, "POSTEMB_CACHE"),
                                         ({"model_kwargs": {"torch_dtype": "bfloat16"}}, "precision="),
                                         ({"token": "hf_x"}, "local folder"),
                                         ({"max_seq_len": 64}, "help(Encoder.from_pretrained)")])
def test_a_sentence_transformers_constructor_argument_gets_a_type_error_naming_what_to_pass(folder, kwargs, fix):
    """SentenceTransformer(folder, trust_remote_code=True) copied as Encoder.from_pretrained(...) got Python's bare
    'unexpected keyword argument', with nothing on what this runtime takes instead."""
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{next(iter(kwargs))}'") as err:
        Encoder.from_pretrained(folder, backend="torch", **kwargs)
    assert f"Fix: {fix}" in str(err.value) or fix in str(err.value).split("Fix: ")[1]
