"""A folder whose tokenizer cuts long posts on the left (``"truncation_side": "left"`` in tokenizer_config.json,
or a left truncation in tokenizer.json): ``Encoder.encode`` keeps a long post's end, as ``SentenceTransformer``
does, while the server's text-embeddings-inference routes keep cutting on the right by default (TEI reads no
tokenizer_config.json) and their ``truncation_direction`` still picks the side per request."""
import json
import shutil
import time

import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from postemb_rt.model_dir import base_encoder_path, load_model_dir
from tests.st_models import build_st_folder

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

# ~430 tokens: past max_seq_length (256 for the base model, 64 for the tiny folders); its end differs from its start
LONG = " ".join(f"item{i}" for i in range(200)) + " and the end of the post: football, goals and a late winner " * 8
TEXTS = [LONG, "a short post about football", "Hiring backend engineers in Berlin and remote!"]


def _edit(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _cos(a, b) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _st(path, texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True)


@pytest.fixture(scope="module")
def left(tmp_path_factory):
    """The packaged base model (all-MiniLM-L6-v2) copied with ``"truncation_side": "left"``."""
    d = tmp_path_factory.mktemp("side") / "minilm-left"
    shutil.copytree(base_encoder_path(), d)
    _edit(d / "tokenizer_config.json", truncation_side="left")
    return d


def test_encode_keeps_a_long_posts_end_as_sentence_transformers_does(left):
    want, right_cut = _st(left, TEXTS), _st(base_encoder_path(), TEXTS)
    with Encoder.from_pretrained(left, backend="torch") as enc:
        assert enc.tokenizer.truncation_side == "left"
        got = enc.encode(TEXTS)
        assert enc.last_stats.truncated == [0]
        submitted = enc.submit(TEXTS).result(timeout=120)  # the batcher's path (near-line, server) too
        ids = enc.tokenizer([LONG]).ids[0]
        assert len(ids) == enc.max_length and enc.tokenizer.encode(LONG) == ids
        assert enc.tokenize([LONG])["input_ids"][0].tolist() == ids  # ST's tokenize, cut the same way
    assert _cos(got, want).min() > 0.9999 and _cos(submitted, want).min() > 0.9999
    assert _cos(got[0], right_cut[0]) < 0.99  # the end, not the start
    assert _cos(got[1:], right_cut[1:]).min() > 0.9999  # posts that fit are not cut at all


def test_a_left_truncation_in_tokenizer_json_is_read_as_transformers_reads_it(tmp_path):
    """No truncation_side in tokenizer_config.json: transformers takes tokenizer.json's truncation direction."""
    d = build_st_folder(tmp_path / "tiny")
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["truncation"] = {"direction": "Left", "max_length": 64, "strategy": "LongestFirst", "stride": 0}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("truncation_side", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    want = _st(d, TEXTS)
    with Encoder.from_pretrained(d, backend="torch") as enc:
        assert enc.tokenizer.truncation_side == "left"
        assert _cos(enc.encode(TEXTS), want).min() > 0.9999


def test_the_side_is_part_of_the_folders_model_version_and_cannot_be_changed_on_a_loaded_encoder(tmp_path):
    d = build_st_folder(tmp_path / "tiny")
    right = load_model_dir(d).config.model_version
    _edit(d / "tokenizer_config.json", truncation_side="left")
    assert load_model_dir(d).config.model_version != right  # so Encoder's vectors of the two never share a version
    with Encoder.from_pretrained(d, backend="torch") as enc:
        enc.tokenizer.truncation_side = "left"  # what it is: nothing changes
        with pytest.raises(ValidationError, match=r"truncation_side.* Given: 'right'\. Fix: .*tokenizer_config"):
            enc.tokenizer.truncation_side = "right"  # ST's idiom; here the version would no longer say it
        assert enc.tokenizer.truncation_side == "left"


def test_a_truncation_side_transformers_refuses_is_named(tmp_path):
    d = build_st_folder(tmp_path / "tiny")
    _edit(d / "tokenizer_config.json", truncation_side="middle")
    with pytest.raises(ValidationError, match=r"tokenizer_config.json` has truncation_side 'middle'.*Fix: "):
        Encoder.from_pretrained(d, backend="torch")


def test_the_servers_routes_cut_on_the_right_by_default_and_say_so_in_the_version(left):
    """TEI's default direction is "right" whatever the folder says (and the other routes' too, for now); the
    answer's version then names the side (``+right``) so that it never shares a version with ``Encoder.encode``'s
    left-cut vectors of this folder."""
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.routes import create_app

    app = create_app(ServeConfig(model=str(left), backend="torch", precision="fp32"))
    with TestClient(app) as c, Encoder.from_pretrained(left, backend="torch") as enc, \
            Encoder.from_pretrained(base_encoder_path(), backend="torch") as base:
        rt, deadline = app.state.runtime, time.monotonic() + 120
        while not rt.ready:
            assert rt.load_error is None and time.monotonic() < deadline, rt.load_error or "still loading"
            time.sleep(0.05)
        default = c.post("/embed", json={"inputs": TEXTS})
        asked_left = c.post("/embed", json={"inputs": TEXTS, "truncation_direction": "left"})
        assert default.status_code == asked_left.status_code == 200, default.text[:300]
        assert _cos(np.array(default.json()), base.encode(TEXTS)).min() > 0.9999  # right-cut, as TEI
        assert _cos(np.array(asked_left.json()), enc.encode(TEXTS)).min() > 0.9999  # the folder's own cut
        assert default.headers["X-Vector-Version"] == enc.vector_version + "+right" != enc.vector_version
        assert asked_left.headers["X-Vector-Version"] == enc.vector_version  # the folder's own cut adds nothing
        oa = c.post("/v1/embeddings", json={"input": TEXTS})  # the OpenAI route: right, as today (see README)
        assert oa.status_code == 200, oa.text[:300]
        assert _cos(np.array([d["embedding"] for d in oa.json()["data"]]), base.encode(TEXTS)).min() > 0.9999
        assert oa.json()["vector_version"] == enc.vector_version + "+right"
        assert rt.vector_version(None, "truncate", "left") == rt.vector_version(None, "truncate", None) \
            == enc.vector_version  # the model's side adds nothing
        assert rt.vector_version(None, "chunk", "right") == enc.vector_version_at(None, "chunk")  # no cut there
