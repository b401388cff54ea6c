"""A sentence-transformers folder whose ``max_seq_length`` is past the positions its encoder has (e.g. 1024 set on
a 512-position BERT): sentence-transformers loads it and fails on any post longer than those positions (an index
error inside the model); an Encoder cuts there instead, with a warning naming the file, so one long post cannot
fail a batch of others' posts. Posts that fit get sentence-transformers' vectors, as before."""
import json
import logging
import shutil

import numpy as np
import pytest

from postemb_rt import Encoder
from tests.st_models import build_st_folder

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

POSITIONS = 160  # build_st_folder's encoders: max_position_embeddings 160 (RoBERTa's: 162, of which 160 usable)
LONG = " ".join(f"w{i}" for i in range(600))  # > 160 tokens


def _set_max_seq_length(d, value):
    for name in ("sentence_bert_config.json", "tokenizer_config.json"):  # ST 6 saves it as model_max_length
        cfg = json.loads((d / name).read_text())
        cfg["max_seq_length" if name.startswith("sentence") else "model_max_length"] = value
        (d / name).write_text(json.dumps(cfg))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_a_max_seq_length_past_the_encoders_positions_is_cut_there_with_a_warning(tmp_path, caplog, arch):
    from sentence_transformers import SentenceTransformer

    d = build_st_folder(tmp_path / "too-long", arch=arch)
    _set_max_seq_length(d, 100_000)
    fits = shutil.copytree(d, tmp_path / "fits")
    _set_max_seq_length(fits, POSITIONS)
    texts = ["a short post", LONG]
    with pytest.raises(Exception):  # what sentence-transformers does with the long post
        SentenceTransformer(str(d), device="cpu").encode(texts)
    want = SentenceTransformer(str(fits), device="cpu").encode(texts)
    with caplog.at_level(logging.WARNING, logger="postemb_rt"), Encoder.from_pretrained(d, backend="torch") as enc:
        assert enc.max_seq_length == POSITIONS
        got = enc.encode(texts)
        assert enc.last_stats.truncated == [1]
    assert "100000" in caplog.text and str(POSITIONS) in caplog.text and "Fix:" in caplog.text, caplog.text
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999
