"""Tokenization of a model folder as sentence-transformers (transformers' tokenizer) reads it."""
import json
import shutil

import pytest

from postemb_rt import Encoder, ValidationError
from tests.conftest import assert_exact

LONG = "It starts here. " + "hello " * 300 + "and it ends here."


def _folder(tmp_path, **tokenizer_config):
    """The base model's sentence-transformers folder, its tokenizer_config.json updated."""
    from postemb_rt.model_dir import base_encoder_path

    folder = tmp_path / "model"
    shutil.copytree(base_encoder_path(), folder)
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **tokenizer_config}))
    return folder


def test_truncation_side_left_keeps_the_end_of_a_long_post_as_sentence_transformers(tmp_path):
    """transformers cuts at the side tokenizer_config.json's `truncation_side` names; we cut the end always,
    so a folder saying "left" embedded another part of every long post than sentence-transformers."""
    st_pkg = pytest.importorskip("sentence_transformers")
    folder = _folder(tmp_path, truncation_side="left")
    st = st_pkg.SentenceTransformer(str(folder), device="cpu")
    want_ids = st.preprocess([LONG])["input_ids"][0].tolist()
    with Encoder.from_pretrained(folder, backend="torch") as enc:
        ids = enc.tokenizer([LONG]).ids[0]
        assert ids == want_ids and ids[-3:-1] == enc.tokenizer.encode("here.", add_special_tokens=False)
        assert_exact(enc.encode([LONG, "short"]), st.encode([LONG, "short"]))
        assert enc.last_stats.truncated == [0]
        windows = enc.tokenizer.windows([LONG], enc.chunk_overlap)[0]  # chunk mode still covers the whole post
        assert windows[0] == ids and len(windows) == 2
        assert enc.tokenizer.encode("It starts", add_special_tokens=False)[0] in windows[1]


def test_an_unknown_truncation_side_is_refused_naming_the_file(tmp_path):
    folder = _folder(tmp_path, truncation_side="middle")
    with pytest.raises(ValidationError, match=r"`truncation_side` in .*tokenizer_config.json must be 'right' or "
                                              r"'left'. Given: 'middle'"):
        Encoder.from_pretrained(folder, backend="torch", warmup=False)
