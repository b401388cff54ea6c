"""text-embeddings-inference's API (POST /embed and /, /similarity, /tokenize, /decode, /info), tested with
the real clients: ``huggingface_hub.InferenceClient`` (``feature_extraction``, ``sentence_similarity``)
and ``openai``; token-id ``inputs`` (TEI's) with raw HTTP, as no client helper sends them."""
import time

import numpy as np
import pytest

from tests.conftest import assert_exact
from tests.server.conftest import API_KEY, LIMITS, require_serve_extra

httpx = require_serve_extra()
huggingface_hub = pytest.importorskip("huggingface_hub", reason="the [test] extra installs huggingface_hub")
openai = pytest.importorskip("openai", reason="the [test] extra installs openai")

TEXTS = ["Thrilled to announce our seed round!", "Five lessons from a failed product launch."]
LONG = " ".join(["a"] * 300 + ["b"] * 300)  # 600 tokens, 1,199 characters: right keeps the a's, left the b's


@pytest.fixture(scope="module", autouse=True)
def _hub_may_reach_loopback():
    """The session runs with HF_HUB_OFFLINE=1 (no model hub, ever), which also blocks the client
    from our own server on 127.0.0.1: allowed here, for this module only."""
    with pytest.MonkeyPatch.context() as mp:
        from huggingface_hub import constants

        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        yield


@pytest.fixture(scope="module")
def hub(main_server):
    assert main_server.url.startswith("http://127.0.0.1:")
    return huggingface_hub.InferenceClient(base_url=main_server.url, api_key=API_KEY)  # posts to "/"


def test_huggingface_hub_feature_extraction_equals_encode(main_server, hub, server_encoder):
    assert_exact(hub.feature_extraction(TEXTS[0]), server_encoder.encode(TEXTS[:1]))
    for path in ("/embed", "/invocations"):  # /invocations: SageMaker's route, as TEI serves it
        on_path = huggingface_hub.InferenceClient(base_url=main_server.url + path, api_key=API_KEY)
        assert_exact(on_path.feature_extraction(TEXTS), server_encoder.encode(TEXTS))


def test_huggingface_hub_passes_tei_fields(hub, server_encoder):
    raw = hub.feature_extraction(TEXTS[:1], normalize=False, truncate=True, truncation_direction="right",
                                 prompt_name="query", dimensions=server_encoder.dim)
    assert abs(np.linalg.norm(raw) - 1) > 1e-3  # not normalised
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert_exact(unit, server_encoder.encode(TEXTS[:1]))  # the "query" prompt of this model is ""


def test_truncation_direction_left_keeps_the_end(client, server_encoder):
    right = client.post("/embed", json={"inputs": [LONG]})
    left = client.post("/embed", json={"inputs": [LONG], "truncation_direction": "left"})
    assert right.headers["X-Truncated-Inputs"] == left.headers["X-Truncated-Inputs"] == "1"
    n = server_encoder.max_length - 2
    assert_exact(np.array(right.json(), np.float32), server_encoder.encode([" ".join(["a"] * n)]))
    assert_exact(np.array(left.json(), np.float32), server_encoder.encode([" ".join(["b"] * n)]))
    # the other cut of one model never shares its version: the left one names its side
    assert left.headers["X-Vector-Version"] == right.headers["X-Vector-Version"] + "+left"
    full = client.post("/embed_full", json={"inputs": [LONG], "truncation_direction": "left"})
    assert full.json()["vector_version"] == left.headers["X-Vector-Version"], full.text[:300]


@pytest.mark.parametrize("body, status, error_type, words", [
    ({"inputs": [LONG], "truncate": False}, 413, "Validation", "max_length"),
    ({"inputs": ["a"] * (LIMITS["max_inputs"] + 1)}, 413, "Validation", "max_inputs"),
    ({"inputs": []}, 400, "Empty", "at least one"),
    ({"inputs": "a", "prompt_name": "no-such-prompt"}, 413, "Validation",  # TEI's status for a Validation error
     "prompts ['document', 'query']. Given: 'no-such-prompt'."),
    ({"inputs": "a", "dimensions": 7}, 413, "Validation", "dimensions"),
    ({"inputs": ["a", ""]}, 413, "Validation", "`inputs[1]` is an empty string"),  # TEI: "cannot be empty"
    ({"inputs": "b" * (LIMITS["max_input_chars"] + 1), "truncate": False}, 413, "Validation", "max_input_chars"),
    ({"inputs": "a", "normalize": "yes"}, 422, "Validation", "normalize"),
    ({"inputs": "a", "encoding": "int8"}, 422, "Validation", "/embed_full"),
])
def test_errors_are_tei_shaped_with_tei_status(client, body, status, error_type, words):
    r = client.post("/embed", json=body)
    assert r.status_code == status and r.json()["error_type"] == error_type, r.text[:300]
    assert words in r.json()["error"]


def test_an_unknown_prompt_name_is_not_told_to_use_prompt_which_no_route_takes(client):
    for path, body, status in (("/embed", {"inputs": "a"}, 413), ("/v1/embeddings", {"input": "a"}, 400)):
        r = client.post(path, json={**body, "prompt_name": "no-such-prompt"})
        assert r.status_code == status and "`prompt`" not in r.text and "no-such-prompt" in r.text, r.text


def test_unknown_fields_are_ignored_as_tei_does(client):
    assert client.post("/embed", json={"inputs": "a", "some_future_field": 1}).status_code == 200


def test_huggingface_hub_sees_the_error(hub):
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as info:
        hub.feature_extraction(LONG, truncate=False)
    assert info.value.response.status_code == 413


def test_tokenize_and_decode(client, server_encoder):
    toks = client.post("/tokenize", json={"inputs": "Hello world"}).json()
    assert [t["id"] for t in toks[0]] == server_encoder.tokenizer(["Hello world"]).ids[0]
    assert toks[0][0]["special"] and toks[0][-1]["special"] and toks[0][0]["start"] is None
    assert [t["text"] for t in toks[0] if not t["special"]] == ["Hello", "world"]  # offsets into the input
    assert [(t["start"], t["stop"]) for t in toks[0][1:-1]] == [(0, 5), (6, 11)]
    text = "café 😀 東京 naïve"  # offsets count UTF-8 bytes, as TEI's (tokenizers' own)
    pieces = client.post("/tokenize", json={"inputs": text, "add_special_tokens": False}).json()[0]
    raw = text.encode()
    assert [raw[t["start"]:t["stop"]].decode() for t in pieces] == [t["text"] for t in pieces]
    assert (pieces[0]["start"], pieces[0]["stop"]) == (0, 5) and pieces[-1]["stop"] == len(raw)
    no_special = client.post("/tokenize", json={"inputs": ["Hello world"], "add_special_tokens": False}).json()
    assert [t["id"] for t in no_special[0]] == [t["id"] for t in toks[0][1:-1]]
    ids = [t["id"] for t in toks[0]]
    assert client.post("/decode", json={"ids": ids}).json() == ["hello world"]
    assert client.post("/decode", json={"ids": [ids, ids[1:2]], "skip_special_tokens": False}).json() == [
        "[CLS] hello world [SEP]", "hello"]
    bad = client.post("/decode", json={"ids": [10**9]})
    assert bad.status_code == 422 and bad.json()["error_type"] == "Validation" and "ids[0]" in bad.json()["error"]
    many = client.post("/decode", json={"ids": [ids] * (LIMITS["max_inputs"] + 1)})  # as TEI: a batch limit
    assert many.status_code == 413 and many.json()["error_type"] == "Validation"
    assert f"more than max_inputs ({LIMITS['max_inputs']})" in many.json()["error"]


def test_tokenize_gives_every_token_of_a_long_text_as_tei(client, server_encoder):
    """TEI's /tokenize does not truncate: a client counts the tokens to learn whether a post will be cut."""
    toks = client.post("/tokenize", json={"inputs": [LONG, "short"]}).json()
    assert len(toks[0]) == 602 > server_encoder.max_length  # [CLS], 300 a's, 300 b's, [SEP]
    assert [t["text"] for t in toks[0][1:-1]] == LONG.split() and toks[0][-1]["special"]
    assert toks[0][-2]["stop"] == len(LONG) and len(toks[1]) == 3
    bare = client.post("/tokenize", json={"inputs": LONG, "add_special_tokens": False}).json()[0]
    assert [t["id"] for t in bare] == [t["id"] for t in toks[0][1:-1]]


def test_embedding_answers_carry_teis_metadata_headers(main_server, client, server_encoder):
    """TEI's X-Compute-Tokens, X-Compute-Characters, X-Compute-Time and X-Total-Time on every embedding
    route (TEI sends them on its OpenAI route too): tokens computed, characters of the inputs (a token-id
    input counts one per id, as TEI's), milliseconds."""
    tokens, chars = sum(server_encoder.tokenizer(TEXTS).lengths), sum(map(len, TEXTS))
    oa = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    answers = [oa.embeddings.with_raw_response.create(model="any", input=TEXTS, encoding_format="float").headers]
    for path, body in [("/embed", {"inputs": TEXTS}), ("/", {"inputs": TEXTS}), ("/embeddings", {"input": TEXTS}),
                       ("/embed_full", {"inputs": TEXTS}), ("/invocations", {"inputs": TEXTS}),
                       ("/similarity", {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}})]:
        r = client.post(path, json=body)
        assert r.status_code == 200, (path, r.text[:200])
        answers.append(r.headers)
    ids = server_encoder.tokenizer(TEXTS[:1]).ids[0]
    by_ids = client.post("/embed", json={"inputs": [ids, TEXTS[1]]}).headers
    assert int(by_ids["X-Compute-Characters"]) == len(ids) + len(TEXTS[1])
    for h in answers:
        assert int(h["X-Compute-Tokens"]) == tokens and int(h["X-Compute-Characters"]) == chars, h
        assert int(h["X-Total-Time"]) >= int(h["X-Compute-Time"]) >= 0, h


def test_info_has_tei_fields_and_ours(client, server_encoder):
    info = client.get("/info").json()
    assert info["model_id"] == server_encoder.model_version and info["max_input_length"] == server_encoder.max_length
    assert info["max_client_batch_size"] == LIMITS["max_inputs"] and info["auto_truncate"] is True
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["model_dtype"] == "float32"
    assert info["dim"] == server_encoder.dim and info["vector_version"] == server_encoder.vector_version


def test_openai_client_reads_how_many_inputs_were_truncated(main_server):
    oa = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY)
    raw = oa.embeddings.with_raw_response.create(model="any", input=["short", LONG], encoding_format="float")
    resp = raw.parse()
    assert len(resp.data) == 2 and raw.headers["X-Truncated-Inputs"] == "1"
    assert resp.model_extra["truncated"] == [1]


def test_huggingface_hub_sentence_similarity_is_the_cosine(main_server, server_encoder):
    hub = huggingface_hub.InferenceClient(base_url=main_server.url + "/similarity", api_key=API_KEY)
    others = [TEXTS[1], TEXTS[0], LONG]
    scores = hub.sentence_similarity(TEXTS[0], other_sentences=others)
    vecs = server_encoder.encode([TEXTS[0], *others])  # unit rows; LONG cut to max_length, as the server does
    want = vecs[1:] @ vecs[0]
    assert len(scores) == 3 and np.abs(np.array(scores) - want).max() <= 1e-5, (scores, want)
    assert abs(scores[1] - 1) <= 1e-5 and scores[0] < 0.99  # itself, and another post


def test_sentence_similarity_sent_to_the_bare_url_is_told_the_similarity_route(hub):
    """`InferenceClient(base_url=URL).sentence_similarity` posts its {source_sentence, sentences} to `/`, which
    is /embed (as TEI, for an embedding model): still TEI's 422, but the message names the route that answers
    it and how to point the client there, instead of only "`inputs` must be a string ... Given: object"."""
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as refused:
        hub.sentence_similarity(TEXTS[0], other_sentences=[TEXTS[1]])
    assert refused.value.response.status_code == 422
    body = refused.value.response.json()
    assert body["error_type"] == "Validation" and "`inputs`" in body["error"], body
    assert "POST /similarity" in body["error"] and 'base_url=URL + "/similarity"' in body["error"], body


def test_similarity_passes_tei_parameters(client, server_encoder):
    body = {"inputs": {"source_sentence": LONG, "sentences": [LONG, " ".join(["b"] * 600)]},
            "parameters": {"truncation_direction": "left", "prompt_name": "query"}, "future_field": 1}
    r = client.post("/similarity", json=body)
    assert r.status_code == 200 and r.headers["X-Truncated-Inputs"] == "3", r.text[:300]
    assert r.json()[0] == pytest.approx(1, abs=1e-5) and r.json()[1] == pytest.approx(1, abs=1e-5)  # all end in b's
    assert r.headers["X-Vector-Version"].endswith("+left")  # the vectors compared were cut on the left


@pytest.mark.parametrize("body, status, error_type, words", [
    ({"inputs": {"source_sentence": "a", "sentences": []}}, 400, "Empty", "`inputs.sentences` must hold"),
    ({"inputs": {"source_sentence": ["a"], "sentences": ["b"]}}, 422, "Validation", "`inputs.source_sentence` must"),
    ({"inputs": {"source_sentence": "a"}}, 422, "Validation", "`inputs.sentences` is required"),
    ({"inputs": "a"}, 422, "Validation", "`inputs` must be an object: source_sentence"),
    ({"inputs": {"source_sentence": "a", "sentences": ["b", 3]}}, 422, "Validation", "`inputs.sentences[1]` must"),
    ({"inputs": {"source_sentence": "", "sentences": ["b"]}}, 413, "Validation",  # TEI's status for an empty input
     "`inputs.source_sentence` is an empty string"),  # one string, never a list: no [0]
    ({"inputs": {"source_sentence": "a", "sentences": ["b"] * LIMITS["max_inputs"]}}, 413, "Validation",
     "max_inputs"),
    ({"inputs": {"source_sentence": "a", "sentences": ["b", LONG]}, "parameters": {"truncate": False}}, 413,
     "Validation", "`inputs.sentences[1]` is longer than max_length"),
    ({"inputs": {"source_sentence": LONG, "sentences": ["b"]}, "parameters": {"truncate": False}}, 413,
     "Validation", "`inputs.source_sentence` is longer than max_length"),
    ({"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"truncation_direction": "up"}}, 422,
     "Validation", "`parameters.truncation_direction` must be one of"),
])
def test_similarity_errors_are_tei_shaped(client, body, status, error_type, words):
    r = client.post("/similarity", json=body)
    assert r.status_code == status and r.json()["error_type"] == error_type, r.text[:300]
    assert words in r.json()["error"], r.json()["error"]


def test_openai_client_without_v1_in_base_url(main_server, server_encoder):
    oa = openai.OpenAI(base_url=main_server.url, api_key=API_KEY)  # posts to /embeddings, which TEI answers too
    resp = oa.embeddings.create(model="any", input=TEXTS, encoding_format="float")
    assert_exact(np.array([d.embedding for d in resp.data], np.float32), server_encoder.encode(TEXTS))


def _wait_loaded(app, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not app.state.runtime.ready:
        assert app.state.runtime.load_error is None, app.state.runtime.load_error
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.05)


def test_tokenize_answers_at_most_max_queued_tokens_tokens():
    """/tokenize's answer is every token (not cut to max_length), so, as /decode's, it is bounded by
    max_queued_tokens: past it, a 413 naming the limit, the count and both fixes."""
    from starlette.testclient import TestClient

    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.routes import create_app

    app = create_app(ServeConfig(model="base", backend="onnxruntime", precision="fp32", max_queued_tokens=4096))
    with TestClient(app) as c:
        _wait_loaded(app)
        assert sum(map(len, c.post("/tokenize", json={"inputs": [LONG] * 6}).json())) == 6 * 602
        r = c.post("/tokenize", json={"inputs": [LONG] * 7})
        assert r.status_code == 413 and r.json()["error_type"] == "Validation", r.text
        msg = r.json()["error"]
        assert "`inputs` holds 4214 tokens in all, more than max_queued_tokens (4096)" in msg, msg
        assert "split the request" in msg and "--max-queued-tokens" in msg, msg


def test_chunk_mode_errors_name_the_requests_own_field():
    """With long_posts "chunk", a post needing more than max_chunks windows under truncate false is
    named as its request names it: ``inputs[1]`` on /embed, ``inputs.sentences[0]`` on /similarity."""
    from starlette.testclient import TestClient

    from postemb_rt.long_posts import DEFAULT_MAX_CHUNKS
    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.routes import create_app

    huge = " ".join(["a"] * 300 * DEFAULT_MAX_CHUNKS)  # more windows than max_chunks at any window size
    app = create_app(ServeConfig(model="base", backend="onnxruntime", precision="fp32", long_posts="chunk",
                                 max_input_chars=len(huge), max_queued_tokens=1 << 20))
    with TestClient(app) as c:
        _wait_loaded(app)
        for path, body, name in [
            ("/embed", {"inputs": ["b", huge], "truncate": False}, "inputs[1]"),
            ("/similarity", {"inputs": {"source_sentence": "b", "sentences": [huge]},
                             "parameters": {"truncate": False}}, "inputs.sentences[0]"),
            ("/similarity", {"inputs": {"source_sentence": huge, "sentences": ["b"]},
                             "parameters": {"truncate": False}}, "inputs.source_sentence"),
        ]:
            r = c.post(path, json=body)
            assert r.status_code in (413, 422) and r.json()["error_type"] == "Validation", r.text[:300]
            msg = r.json()["error"]
            assert f"`{name}` needs" in msg and f"max_chunks ({DEFAULT_MAX_CHUNKS})" in msg, msg
        ok = c.post("/similarity", json={"inputs": {"source_sentence": huge, "sentences": [huge, "b"]}})
        assert ok.status_code == 200 and ok.json()[0] == pytest.approx(1, abs=1e-5)
        # token ids beside a chunked post: embedded whole; ids past max_length have no text to cut in windows
        b_ids = app.state.runtime.encoder.tokenizer(["b"]).ids[0]
        mixed = c.post("/embed", json={"inputs": [b_ids, huge]})
        assert_exact(_vectors(mixed), _vectors(c.post("/embed", json={"inputs": ["b", huge]})))
        long = c.post("/embed", json={"inputs": ["b", b_ids * 100]})
        assert long.status_code == 413 and "`inputs[1]` holds 300 token ids" in long.json()["error"], long.text
        assert "--long-posts chunk" in long.json()["error"]


def test_rerank_and_predict_answer_teis_model_type_error(client, main_server):
    """TEI serves /rerank, /predict and /embed_sparse for every model; for an embedding model without
    them it answers 424 Backend "model is not a re-ranker / classifier model" (a TEI client reads why),
    behind the API key. /embed_all (token vectors) is a 424 here too: this server keeps none."""
    for path, body, why in (("/rerank", {"query": "a", "texts": ["b"]}, "not a re-ranker model"),
                            ("/predict", {"inputs": "a"}, "not a classifier model"),
                            ("/embed_sparse", {"inputs": "a"}, "SPLADE"), ("/embed_all", {"inputs": "a"}, "/embed")):
        r = client.post(path, json=body)
        assert r.status_code == 424 and r.json()["error_type"] == "Backend" and why in r.json()["error"], r.text
        assert httpx.post(main_server.url + path, json=body, timeout=10).status_code == 401  # no key


def test_a_long_post_is_cut_to_max_input_chars_when_truncating(client, server_encoder):
    """As TEI: with truncation on, a post over max_input_chars is cut to it (on the side truncation
    keeps), far past the max_length tokens the model reads, so the vector is the whole post's."""
    limit = LIMITS["max_input_chars"]
    long = "word " * (limit // 5 + 100)  # > max_input_chars, and > max_length tokens in its first limit chars
    r = client.post("/embed", json={"inputs": ["short", long]})
    assert r.status_code == 200 and r.headers["X-Truncated-Inputs"] == "1", r.text[:300]
    assert_exact(np.array(r.json(), np.float32), server_encoder.encode(["short", long]))
    tail = "word " * 300  # 1,500 characters, > max_length tokens: left truncation reads only these
    left = client.post("/embed", json={"inputs": ["other " * 400 + tail, tail], "truncation_direction": "left"})
    assert left.status_code == 200 and left.headers["X-Truncated-Inputs"] == "2", left.text[:300]
    assert_exact(*np.array(left.json(), np.float32)[:, None])
    one_word = "b" * (limit + 1)  # one [UNK]: its first max_input_chars hold 1 token, cutting it would change it
    r = client.post("/embed", json={"inputs": one_word})
    assert r.status_code == 413 and "--max-input-chars" in r.json()["error"], r.text


def test_requests_must_be_declared_json_and_uncompressed(client, main_server):
    """415, as TEI's: a body without `Content-Type: application/json` (curl -d alone, text/plain, a form:
    what a browser sends cross-origin without a preflight) or with Content-Encoding is not read."""
    import gzip
    import json

    body = json.dumps({"inputs": "a"}).encode()
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        r = client.post("/embed", content=body, headers=headers)
        assert r.status_code == 415 and r.json()["error_type"] == "Validation", (headers, r.text)
        assert "Content-Type: application/json" in r.json()["error"]
    r = client.post("/v1/embeddings", content=json.dumps({"input": "a"}).encode(),
                    headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    r = client.post("/embed", content=gzip.compress(body),
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding gzip" in r.json()["error"], r.text
    ok = client.post("/embed", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_paths_as_tei_and_openai_clients_spell_them(client, server_encoder):
    assert client.post("/embed/", json={"inputs": "a"}).status_code == 404  # no redirect, as TEI
    for path in ("/models", "/v1/models"):  # an OpenAI client whose base_url lacks /v1 lists models too
        assert [m["id"] for m in client.get(path).json()["data"]] == [server_encoder.model_version]
        assert client.get(f"{path}/{server_encoder.model_version}").status_code == 200
    r = client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": "b"}})
    assert r.status_code == 422 and "`inputs.sentences` must be a list" in r.json()["error"], r.text


def test_huggingface_hub_asking_base64_gets_floats_as_from_tei(hub, server_encoder):
    """huggingface_hub sends its encoding_format to TEI's /embed, which ignores it (base64 is the
    OpenAI route's); an answer in base64 would crash the client."""
    assert_exact(hub.feature_extraction(TEXTS, encoding_format="base64"), server_encoder.encode(TEXTS))


def _vectors(r) -> np.ndarray:
    assert r.status_code == 200, r.text[:300]
    return np.array(r.json(), np.float32)


def test_token_ids_from_tokenize_embed_as_their_text(client, server_encoder):
    """TEI's /embed takes token ids as ``inputs`` (one input's list, a list of lists, or mixed with
    strings): the ids /tokenize gives ([CLS] ... [SEP] included) embed as the text does, on every route
    /embed serves, in the request's order. /tokenize gives a long text's every token (as TEI's): cut to
    max_length with its [SEP] kept, they embed as the text does too."""
    texts = [*TEXTS, LONG]
    ids = [[t["id"] for t in row] for row in client.post("/tokenize", json={"inputs": texts}).json()]
    assert len(ids[2]) == 602 > server_encoder.max_length  # the whole text, not cut
    ids[2] = ids[2][:server_encoder.max_length - 1] + ids[2][-1:]
    assert ids == server_encoder.tokenizer(texts).ids  # as the model reads the text
    want = _vectors(client.post("/embed", json={"inputs": texts}))
    assert_exact(want, server_encoder.encode(texts))
    for path in ("/embed", "/", "/invocations"):
        r = client.post(path, json={"inputs": ids})
        assert_exact(_vectors(r), want)
        assert r.headers["X-Truncated-Inputs"] == "0"  # the ids are within max_length: nothing cut here
    assert_exact(_vectors(client.post("/embed", json={"inputs": ids[1]})), want[1:2])  # a list of ints: one input
    mixed = client.post("/embed", json={"inputs": [ids[0], texts[1], ids[2], texts[2]]})
    assert_exact(_vectors(mixed), want[[0, 1, 2, 2]])
    assert mixed.headers["X-Truncated-Inputs"] == "1"  # the text LONG; ids are cut only when longer than 256


def test_token_ids_get_no_special_tokens_and_a_prompt_reads_their_text_as_tei(client):
    """As TEI: ids without a prompt are the model's input as given (no [CLS]/[SEP] added); with
    ``prompt_name`` their text, special tokens left out, is prompted and tokenized as any text."""
    want = _vectors(client.post("/embed", json={"inputs": TEXTS}))
    bare = [[t["id"] for t in row] for row in
            client.post("/tokenize", json={"inputs": TEXTS, "add_special_tokens": False}).json()]
    as_given = _vectors(client.post("/embed", json={"inputs": bare}))
    assert np.abs(as_given - want).max() > 1e-2  # without [CLS] ... [SEP]: another input, another vector
    # "query" is this model's empty prompt: the ids' text, tokenized with its special tokens
    assert_exact(_vectors(client.post("/embed", json={"inputs": bare, "prompt_name": "query"})), want)


def test_token_ids_longer_than_max_length_are_cut_as_tei_cuts_them_or_refused(client, server_encoder):
    n = server_encoder.max_length
    (cls, a, sep), (_, b, _) = server_encoder.tokenizer(["apple", "banana"]).ids
    long = [cls] + [a] * 300 + [b] * 300 + [sep]  # 602 ids: TEI cuts the ids themselves, [SEP] or [CLS] with them
    right = client.post("/embed", json={"inputs": [long, [cls, a, sep]]})
    assert right.headers["X-Truncated-Inputs"] == "1", right.text[:300]
    assert_exact(_vectors(right)[:1], _vectors(client.post("/embed", json={"inputs": [long[:n]]})))
    left = client.post("/embed", json={"inputs": long, "truncation_direction": "left"})
    assert_exact(_vectors(left), _vectors(client.post("/embed", json={"inputs": long[-n:]})))
    assert np.abs(_vectors(left) - _vectors(right)[:1]).max() > 1e-2  # the b's, not the a's
    refused = client.post("/embed", json={"inputs": ["ok", long], "truncate": False})
    assert refused.status_code == 413 and refused.json()["error_type"] == "Validation", refused.text
    assert f"`inputs[1]` holds 602 token ids, more than max_length ({n})" in refused.json()["error"]


@pytest.mark.parametrize("inputs, status, words", [
    ([[101, 10**6, 102]], 422, "`inputs[0]` holds 1000000, not a token id of this model's tokenizer (0..{last})"),
    (["ok", [101, "VOCAB"]], 422, "`inputs[1]` holds {size}, not a token id"),  # the first id past the vocabulary
    ([101, -1, 102], 422, "`inputs[0][1]` must be a token id (an integer >= 0). Given: integer -1."),
    ([["a"]], 422, "`inputs[0][0]` must be a token id"),
    ([[101, 102], 7], 422, "`inputs[1]` must be a string or a list of token ids. Given: integer 7."),
    ([[101, 1.5]], 422, "`inputs[0][1]` must be a token id"),
    (["ok", []], 413, "`inputs[1]` is an empty list of token ids"),
    ([[101, 102]] * (LIMITS["max_inputs"] + 1), 413, f"33 inputs, more than max_inputs ({LIMITS['max_inputs']})"),
])
def test_bad_token_ids_are_tei_errors_naming_the_input(client, server_encoder, inputs, status, words):
    size = server_encoder.tokenizer.vocab_size
    inputs = [[size if x == "VOCAB" else x for x in row] if isinstance(row, list) else row for row in inputs]
    words = words.format(size=size, last=size - 1)
    r = client.post("/embed", json={"inputs": inputs})
    assert r.status_code == status and r.json()["error_type"] == "Validation", r.text[:300]
    assert words in r.json()["error"], r.json()["error"]


@pytest.mark.parametrize("n", [LIMITS["max_inputs"], LIMITS["max_inputs"] + 1])
def test_similarity_over_max_inputs_is_told_a_split_that_fits(client, n):
    """The source sentence counts toward max_inputs, so a request fits with max_inputs - 1 sentences; more than
    max_inputs sentences were told to split into requests of max_inputs sentences, which are refused again."""
    r = client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b"] * n}})
    assert r.status_code == 413 and r.json()["error_type"] == "Validation", r.text[:300]
    assert f"at most {LIMITS['max_inputs'] - 1} sentences" in r.json()["error"], r.json()["error"]
