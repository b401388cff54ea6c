"""A model whose config declares ``truncate_dim`` (sentence-transformers' default output prefix) is served at
that dim when a request names no ``dimensions``, on every route, as ``Encoder.encode`` returns it; the vector
version says so (``@<k>``) and ``/info`` says which dim is the default. ``dimensions`` still asks for the
full dim. The model: a tiny sentence-transformers folder built here (no download), on torch in fp32."""
import json
import time

import numpy as np
import pytest

from tests.conftest import SAMPLE_TEXTS, assert_exact
from tests.server.conftest import require_serve_extra

require_serve_extra()
pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
openai = pytest.importorskip("openai", reason="the [test] extra installs openai")

TEXTS = [t for t in SAMPLE_TEXTS if t][:5]
K, DIM = 16, 32  # the declared truncate_dim, and the model's own dim


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(a TestClient of the app serving the folder, an Encoder of the same folder): dim 32, its postemb.json
    declaring matryoshka_dims [8, 16] and truncate_dim 16."""
    from starlette.testclient import TestClient

    from postemb_rt import Encoder
    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.routes import create_app
    from tests.st_models import build_st_folder

    root = tmp_path_factory.mktemp("truncate-dim")
    folder = build_st_folder(root / "td")
    (folder / "postemb.json").write_text(json.dumps(dict(
        model_version="tiny-td", hidden_size=DIM, pooling="mean", max_length=64, encoder=".",
        matryoshka_dims=[8, K], truncate_dim=K)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSTEMB_CACHE", str(root / "cache"))  # the int8 calibration of this folder
        app = create_app(ServeConfig(model=str(folder), backend="torch", precision="fp32"))
        with TestClient(app) as c, Encoder.from_pretrained(folder, backend="torch") as enc:
            rt, deadline = app.state.runtime, time.monotonic() + 120
            while not rt.ready:
                assert rt.load_error is None and time.monotonic() < deadline, rt.load_error or "still loading"
                time.sleep(0.05)
            yield c, enc


def _rows(r) -> np.ndarray:
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    return np.array(body if isinstance(body, list) else body["embeddings"], np.float32)


def test_the_openai_route_answers_the_declared_prefix_unless_dimensions_asks_for_more(served):
    c, enc = served
    want = enc.encode(TEXTS)
    assert enc.truncate_dim == K and want.shape == (len(TEXTS), K)  # Encoder.encode's default, as ST's
    oa = openai.OpenAI(base_url=str(c.base_url) + "/v1", api_key="none", http_client=c, max_retries=0)
    raw = oa.embeddings.with_raw_response.create(model="tiny-td", input=TEXTS, encoding_format="float")
    got = raw.parse()
    assert_exact(np.array([d.embedding for d in got.data], np.float32), want)
    assert got.model_extra["vector_version"] == raw.headers["X-Vector-Version"] == enc.vector_version == "tiny-td@16"
    full = oa.embeddings.create(model="tiny-td", input=TEXTS, dimensions=DIM, encoding_format="float")
    assert_exact(np.array([d.embedding for d in full.data], np.float32), enc.encode(TEXTS, truncate_dim=DIM))
    assert full.model_extra["vector_version"] == enc.vector_version_at(DIM) == "tiny-td"
    q = c.post("/v1/embeddings", json={"input": TEXTS, "embedding_type": "int8", "encoding_format": "float"})
    assert np.array_equal(np.array([d["embedding"] for d in q.json()["data"]]),
                          enc.encode(TEXTS, precision="int8").astype(np.int64))  # the prefix's own ranges


def test_tei_and_native_routes_answer_the_declared_prefix_too(served):
    c, enc = served
    want, version = enc.encode(TEXTS), enc.vector_version
    for path in ("/embed", "/embed_full"):
        r = c.post(path, json={"inputs": TEXTS})
        assert_exact(_rows(r), want)
        assert r.headers["X-Vector-Version"] == version, path
        full = c.post(path, json={"inputs": TEXTS, "dimensions": DIM})
        assert_exact(_rows(full), enc.encode(TEXTS, truncate_dim=DIM))
        assert full.headers["X-Vector-Version"] == enc.vector_version_at(DIM), path
        raw = c.post(path, json={"inputs": TEXTS, "normalize": False})  # the prefix of the raw vector, as encode's
        assert_exact(_rows(raw), enc.encode(TEXTS, normalize=False))
    native = c.post("/embed_full", json={"inputs": TEXTS}).json()
    assert native["dim"] == K and native["vector_version"] == version
    assert c.post("/embed_full", json={"inputs": TEXTS, "dimensions": DIM}).json()["dim"] == DIM
    int8 = c.post("/embed_full", json={"inputs": TEXTS, "encoding": "int8"}).json()
    assert np.array_equal(np.array(int8["embeddings"]), enc.encode(TEXTS, precision="int8").astype(np.int64))
    bits = c.post("/embed_full", json={"inputs": TEXTS, "encoding": "binary"}).json()
    assert bits["bytes_per_row"] == K // 8 and [len(r) for r in bits["embeddings"]] == [K // 8] * len(TEXTS)
    sim = c.post("/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}})
    assert sim.status_code == 200 and sim.headers["X-Vector-Version"] == version, sim.text[:300]
    assert np.abs(np.array(sim.json()) - want[1:] @ want[0]).max() <= 1e-5
    at_dim = enc.encode(TEXTS, truncate_dim=DIM)
    assert np.abs(np.array(sim.json()) - at_dim[1:] @ at_dim[0]).max() > 1e-4  # not the full vectors' cosines


def test_info_says_which_dim_a_request_naming_none_gets(served):
    c, enc = served
    info = c.get("/info").json()
    assert (info["dim"], info["default_dimensions"], info["dimensions"]) == (DIM, K, [8, K, DIM])
    assert info["vector_version"] == enc.vector_version
    assert len(info["encodings"]["int8"]["ranges"][0]) == K and info["encodings"]["binary"]["bytes_per_row"] == 2
    assert [(m["dim"], m["default_dimensions"]) for m in info["models"]] == [(DIM, K)]
