"""`postemb serve` answers like `Encoder.encode`: the official openai client, the native /embed
route with every encoding, probes, /info, /metrics and the API key (real server process)."""
import base64
import time

import numpy as np
import pytest

from tests.conftest import LONG_POST, assert_exact
from tests.server.conftest import API_KEY, LIMITS, TEXTS, require_serve_extra

httpx = require_serve_extra()

openai = pytest.importorskip("openai")



def test_openai_client_float_equals_encode(main_server, server_encoder):
    c = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    r = c.embeddings.create(model="base", input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    assert got.shape == (len(TEXTS), server_encoder.dim)
    assert_exact(got, server_encoder.encode(TEXTS))
    tokens = sum(server_encoder.tokenizer(TEXTS).lengths)
    assert r.usage.prompt_tokens == r.usage.total_tokens == tokens
    assert r.model == server_encoder.model_version


def test_openai_client_default_base64_and_single_string(main_server, server_encoder):
    c = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    r = c.embeddings.create(model="anything", input="one post about hiring")  # client asks for base64
    got = np.array(r.data[0].embedding, dtype=np.float32)
    assert_exact(got[None], server_encoder.encode(["one post about hiring"]))


def test_openai_client_lists_the_served_model(main_server, server_encoder):
    c = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    assert [(m.id, m.model_extra["aliases"]) for m in c.models.list()] == [(server_encoder.model_version, ["base"])]
    # the name the operator typed (`--model base`) is the model too, for models.retrieve (GET /v1/models/base was
    # a 404 while every embedding request, whatever its `model`, was answered)
    for name in ("base", server_encoder.model_version):
        assert c.models.retrieve(name).id == server_encoder.model_version
    with pytest.raises(openai.NotFoundError, match="'text-embedding-3-small' does not exist"):
        c.models.retrieve("text-embedding-3-small")  # a model card is not invented for any name
    assert c.embeddings.create(model="text-embedding-3-small", input="a post").model == server_encoder.model_version


def test_big_answers_are_complete(client, server_encoder):
    texts = [f"post number {i} about hiring and climate" for i in range(LIMITS["max_inputs"])]
    r = client.post("/embed_full", json={"inputs": texts})  # 32 x 384 numbers: encoded off the event loop
    got = np.array(r.json()["embeddings"], dtype=np.float32)
    assert_exact(got, server_encoder.encode(texts))


def test_base64_is_little_endian_float32_unit_rows(client, server_encoder):
    r = client.post("/v1/embeddings", json={"input": ["a", "b c"], "encoding_format": "base64",
                                            "dimensions": server_encoder.dim, "user": "ignored"})
    assert r.status_code == 200, r.text
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]]
    got = np.stack(rows)
    assert got.shape == (2, server_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert_exact(got, server_encoder.encode(["a", "b c"]))


def test_native_float32_reports_truncation_and_tokens(client, server_encoder):
    texts = ["short", "x " * 400]  # the second is over max_length tokens
    r = client.post("/embed_full", json={"inputs": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array(body["embeddings"], dtype=np.float32)
    assert body["dim"] == server_encoder.dim and body["encoding"] == "float32" and body["normalized"] is True
    assert body["truncated"] == [1]
    assert body["usage"]["prompt_tokens"] == sum(server_encoder.tokenizer(texts).lengths)
    assert_exact(got, server_encoder.encode(texts))


def test_native_unnormalized_rows_point_the_same_way(client, server_encoder):
    r = client.post("/embed_full", json={"inputs": ["a post", "another"], "normalize": False})
    got = np.array(r.json()["embeddings"], dtype=np.float32)
    want = server_encoder.encode(["a post", "another"], normalize=False)
    assert_exact(got, want)  # the raw vectors themselves, so their norms too


def test_native_int8_equals_encode_with_precision_int8(client, server_encoder):
    texts = TEXTS
    r = client.post("/embed_full", json={"inputs": texts, "encoding": "int8"})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"], dtype=np.int64)
    want = server_encoder.encode(texts, precision="int8")
    assert want.dtype == np.int8 and got.shape == want.shape == (len(texts), server_encoder.dim)
    np.testing.assert_array_equal(got, want)
    uint8 = client.post("/embed_full", json={"inputs": texts[:2], "encoding": "uint8"}).json()["embeddings"]
    np.testing.assert_array_equal(uint8, server_encoder.encode(texts[:2], precision="uint8"))


def test_openai_client_gets_quantized_and_packed_binary_rows(main_server, server_encoder):
    """/v1/embeddings' extension `embedding_type` (sent by the real openai client in extra_body): int8
    as Encoder.encode(precision="int8"); ubinary as the packed sign bits (unsigned bytes), both with
    encoding_format "float" (base64 is float32's, refused with them: test_server_drop_in)."""
    c = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    texts = TEXTS[:3]
    r = c.embeddings.create(model="m", input=texts, encoding_format="float", extra_body={"embedding_type": "int8"})
    np.testing.assert_array_equal([d.embedding for d in r.data], server_encoder.encode(texts, precision="int8"))
    r = c.embeddings.create(model="m", input=texts, encoding_format="float", extra_body={"embedding_type": "ubinary"})
    packed = np.array([d.embedding for d in r.data], dtype=np.uint8)
    np.testing.assert_array_equal(packed, server_encoder.encode(texts, precision="ubinary"))
    assert packed.shape == (3, (server_encoder.dim + 7) // 8)
    r = c.embeddings.create(model="m", input=texts, encoding_format="float", extra_body={"prompt_name": "query"})
    np.testing.assert_allclose([d.embedding for d in r.data], server_encoder.encode(texts, prompt_name="query"),
                               rtol=0, atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="passage"):  # not a prompt of the model: 400, as OpenAI
        c.embeddings.create(model="m", input=texts, extra_body={"prompt_name": "passage"})


def test_native_int8_ranges_are_the_models_and_do_not_depend_on_the_request(client, server_encoder):
    from postemb_rt.quantization import ranges_for

    a = client.post("/embed_full", json={"inputs": ["same post"], "encoding": "int8"}).json()
    b = client.post("/embed_full", json={"inputs": ["same post", LONG_POST[:1000], "!!!"], "encoding": "int8"}).json()
    assert a["embeddings"][0] == b["embeddings"][0]
    info = client.get("/info").json()["encodings"]["int8"]
    assert info["precision"] == "int8" and "scale" not in info
    np.testing.assert_allclose(info["ranges"], ranges_for(server_encoder, normalize=True), rtol=0, atol=1e-7)


def test_native_binary_is_packed_sign_bits(client, server_encoder):
    r = client.post("/embed_full", json={"inputs": TEXTS[:3], "encoding": "binary"})
    body = r.json()
    packed = np.array(body["embeddings"], dtype=np.uint8)
    assert packed.shape == (3, (server_encoder.dim + 7) // 8) == (3, body["bytes_per_row"])
    bits = np.unpackbits(packed, axis=1)[:, : server_encoder.dim]
    want = server_encoder.encode(TEXTS[:3]) > 0
    assert (bits == want).mean() >= 0.999  # a component within float noise of 0 may flip
    # sentence-transformers' "ubinary" (also accepted under that name); its "binary" is the bytes minus 128
    ubinary = server_encoder.encode(TEXTS[:3], precision="ubinary")
    assert (np.unpackbits(packed, axis=1) == np.unpackbits(ubinary, axis=1)).mean() >= 0.999
    again = client.post("/embed_full", json={"inputs": TEXTS[:3], "encoding": "ubinary"}).json()["embeddings"]
    np.testing.assert_array_equal(again, packed)


def test_probes_info_and_openapi(main_server, client, server_encoder):
    assert httpx.get(main_server.url + "/health").json() == {"status": "ok"}  # no key needed for probes
    deadline = time.monotonic() + 10  # the log says what runs, once loaded (printed as /ready turns 200)
    while not any(line.startswith("postemb serve: ready: ") for line in main_server.lines):
        assert time.monotonic() < deadline, "".join(main_server.lines)[-2000:]
        time.sleep(0.05)
    ready = next(line for line in main_server.lines if line.startswith("postemb serve: ready: "))
    assert f"on onnxruntime fp32 (exact), vectors {server_encoder.vector_version}" in ready, ready
    assert httpx.get(main_server.url + "/ready").status_code == 200
    info = client.get("/info").json()
    assert info["dim"] == server_encoder.dim and info["model"] == server_encoder.model_version
    asked = main_server.argv[main_server.argv.index("--backend") + 1]  # the fixture's --backend
    assert info["backend"] == asked and info["precision"] == "fp32" and info["precision_reason"] == "exact"
    assert info["limits"]["max_inputs"] == LIMITS["max_inputs"] and info["limits"]["api_key"] is True
    assert API_KEY not in client.get("/info").text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/embeddings", "/embed_full", "/embed", "/", "/invocations", "/similarity", "/tokenize",
            "/decode", "/health", "/ping", "/ready", "/info", "/metrics"} <= set(paths)


def test_metrics_export_requests_queue_and_batcher_histograms(client):
    client.post("/embed_full", json={"inputs": ["metrics post"]})
    client.post("/embed_full", json={"inputs": []})  # a 422
    text = client.get("/metrics").text
    for name in ('postemb_http_requests_total{route="/embed_full",status="200"}',
                 'postemb_http_requests_total{route="/embed_full",status="422"}',
                 "postemb_batcher_queued_posts ", "postemb_batcher_queued_tokens ",
                 'postemb_batcher_batch_size_bucket{le="+Inf"}', 'postemb_batcher_batch_padding_ratio_bucket',
                 "postemb_batcher_queue_seconds_count", "postemb_batcher_inference_seconds_sum",
                 "postemb_batcher_requests_rejected_total", 'postemb_http_request_seconds_bucket', "postemb_ready 1.0"):
        assert name in text, name


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
                                     {"Authorization": "Bearer"}])
def test_api_key_is_required_except_for_probes(main_server, headers):
    for path in ("/embed_full", "/v1/embeddings", "/embeddings", "/", "/invocations", "/similarity"):
        r = httpx.post(main_server.url + path, json={"inputs": ["x"], "input": ["x"]}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(main_server.url + "/metrics", headers=headers).status_code == 401
    for path in ("/health", "/ping", "/"):  # liveness: GET / and /ping as TEI answers them (load balancers, SageMaker)
        r = httpx.get(main_server.url + path, headers=headers)
        assert r.status_code == 200 and r.json() == {"status": "ok"}, path
        assert httpx.head(main_server.url + path, headers=headers).status_code == 200, path
    metrics = httpx.get(main_server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    assert 'postemb_http_requests_total{route="GET /",status="200"}' in metrics  # apart from POST / (embeds)
    assert httpx.head(main_server.url + "/ready", headers=headers).status_code == 200  # HEAD on every GET probe
    for path in ("/info", "/metrics"):
        assert httpx.head(main_server.url + path, headers=headers).status_code == 401
        assert httpx.head(main_server.url + path, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_every_answer_carries_a_request_id(main_server, client):
    """X-Request-ID: the client's own echoed (1-128 visible ASCII characters), else a new one per
    request; on errors, probes and 401s too, so a client and the server's log can be matched."""
    mine = client.post("/v1/embeddings", json={"input": "a"}, headers={"X-Request-ID": "trace-42/a.b"})
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "trace-42/a.b"
    new = [client.post("/v1/embeddings", json={"input": []}).headers["x-request-id"],  # a 422
           httpx.get(main_server.url + "/health").headers["x-request-id"],
           httpx.post(main_server.url + "/embed", json={"inputs": "a"}).headers["x-request-id"]]  # a 401
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in new) and len(set(new)) == 3
    for bad in ("has space", "x" * 129, ""):
        got = client.get("/info", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert got != bad and len(got) == 32


def test_native_chunk_mode_embeds_long_posts_whole(client, server_encoder):
    long = "Scaling inference for post embeddings means batching, caching and care. " * 25  # > 256 tokens, < 2000 chars
    texts = ["short post", long]
    r = client.post("/embed_full", json={"inputs": texts, "long_posts": "chunk"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["long_posts"] == "chunk" and body["chunked"] == 1 and body["windows"] > 1
    assert body["truncated"] == []
    got = np.array(body["embeddings"], dtype=np.float32)
    assert_exact(got, server_encoder.encode(texts, long_posts="chunk"))
    default = client.post("/embed_full", json={"inputs": texts}).json()  # the server default: truncate
    assert default["long_posts"] == "truncate" and default["chunked"] == 0
    bad = client.post("/embed_full", json={"inputs": texts, "long_posts": "split"})
    assert bad.status_code == 422 and "`long_posts` must be one of" in bad.json()["error"]["message"]


def test_the_cli_serves_the_fastest_faithful_precision_by_default():
    """`postemb serve` defaults to precision auto (README "Serving"); the library stays exact."""
    from postemb_rt.cli import build_parser
    from postemb_rt.serving.config import ServeConfig

    assert build_parser(environ={}).parse_args(["serve"]).precision == "auto"
    assert build_parser(environ={"POSTEMB_PRECISION": "fp32"}).parse_args(["serve"]).precision == "fp32"
    assert ServeConfig().precision == "fp32"


def test_info_and_answers_report_the_vector_version(client, server_encoder):
    """Vectors of two precisions or long-post modes never share a version string."""
    info = client.get("/info").json()
    assert info["vector_version"] == server_encoder.vector_version == info["runtime"]["vector_version"]
    truncate = client.post("/embed_full", json={"inputs": ["a post"]}).json()["vector_version"]
    chunk = client.post("/embed_full", json={"inputs": ["a post"], "long_posts": "chunk"}).json()["vector_version"]
    assert truncate == server_encoder.vector_version and chunk.endswith("+chunk") and chunk != truncate


def test_every_embedding_answer_names_its_vector_version(main_server, client, server_encoder):
    """Each embedding answer says which vector version it carries, so a store filled from the server and
    from the backfill never mixes versions unseen: ``vector_version`` in /v1/embeddings' body (the openai
    client keeps it in ``model_extra``) and the ``X-Vector-Version`` header on every embedding route."""
    from postemb_rt import Encoder

    version = server_encoder.vector_version
    oa = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    raw = oa.embeddings.with_raw_response.create(model="base", input=TEXTS[:2], encoding_format="float")
    assert raw.parse().model_extra["vector_version"] == raw.headers["X-Vector-Version"] == version
    for path, body in [("/embeddings", {"input": TEXTS[:2]}), ("/embed", {"inputs": TEXTS[:2]}),
                       ("/", {"inputs": TEXTS[:2]}), ("/invocations", {"inputs": TEXTS[:2]}),
                       ("/embed_full", {"inputs": TEXTS[:2], "encoding": "int8"}),
                       ("/similarity", {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:3]}})]:
        r = client.post(path, json=body)
        assert r.status_code == 200 and r.headers["X-Vector-Version"] == version, (path, r.headers, r.text[:200])
    chunk = client.post("/embed_full", json={"inputs": TEXTS[:2], "long_posts": "chunk"})
    chunked = Encoder.from_pretrained("base", backend="onnxruntime", device="cpu", long_posts="chunk")
    assert chunk.headers["X-Vector-Version"] == chunk.json()["vector_version"] == chunked.vector_version != version


def test_openapi_operation_ids_are_unique_and_built_without_warnings(main_server, client):
    """GET and HEAD on one route shared an operationId (six of them: /health, /ping, /, /ready, /info,
    /metrics), which code generators refuse, and building /openapi.json logged FastAPI's "Duplicate
    Operation ID" warning for each; the HEAD routes are left out of the spec (they still answer)."""
    import warnings

    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.routes import create_app

    ops = [op["operationId"] for item in client.get("/openapi.json").json()["paths"].values() for op in item.values()]
    assert len(ops) == len(set(ops)), sorted(o for o in ops if ops.count(o) > 1)
    for path in ("/health", "/ping", "/", "/ready", "/info", "/metrics", "/v1/models", "/models",
                 "/v1/models/base", "/models/base"):  # HEAD wherever GET answers (axum's get does, TEI's)
        assert client.head(path).status_code == 200, path
    assert client.head("/v1/models/nope").status_code == 404
    time.sleep(0.5)  # the server's stderr (a warning goes there) is read by a thread
    assert not [line for line in main_server.lines if "Duplicate Operation ID" in line]
    with warnings.catch_warnings(record=True) as caught:  # in process too: FastAPI warns once per process
        warnings.simplefilter("always")
        create_app(ServeConfig(api_key="k")).openapi()
    assert [str(w.message) for w in caught if "Duplicate Operation ID" in str(w.message)] == []


def test_answers_write_float32_in_its_shortest_round_trip_form():
    """errors.dumps (every JSON answer): a float32 vector is written as float32's shortest decimal, which
    reads back (cast to float32) as the same bits, in about half float64's bytes; a strided prefix and an
    integer past 64 bits (a request's value echoed in an error) are written too."""
    import json

    from postemb_rt.serving.errors import dumps

    vecs = np.random.default_rng(0).standard_normal((64, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    body = dumps({"embeddings": vecs, "rows": list(vecs[:2])})
    back = json.loads(body)
    assert np.array_equal(np.array(back["embeddings"], np.float64).astype(np.float32), vecs)
    assert np.array_equal(np.array(back["rows"], np.float32), vecs[:2])
    assert len(body) < 0.65 * len(json.dumps({"embeddings": vecs.tolist(), "rows": vecs[:2].tolist()}))
    assert np.array_equal(np.array(json.loads(dumps(vecs[:, :16])), np.float32), vecs[:, :16])  # not contiguous
    assert json.loads(dumps({"given": 2**70, "q": np.array([[-128, 127]], np.int8)})) == {"given": 2**70,
                                                                                          "q": [[-128, 127]]}
