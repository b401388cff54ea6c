"""text-embeddings-inference's Prometheus series on /metrics (``te_*``, beside ours): TEI's names, types, labels
and units, so that a TEI dashboard reads this server unchanged, moved by exactly what the real clients
(``huggingface_hub.InferenceClient``, ``openai``) sent. conftest's server, and the collector on fakes for the
one-model / several-models label rule; with --workers 2: tests/server/test_server_limits.py."""
import threading
import time
from types import SimpleNamespace

import pytest

from tests.server.conftest import API_KEY, LIMITS, ServerProc, fault_argv, ready_until_done, require_serve_extra

httpx = require_serve_extra()
huggingface_hub = pytest.importorskip("huggingface_hub", reason="the [test] extra installs huggingface_hub")
openai = pytest.importorskip("openai", reason="the [test] extra installs openai")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402  (the [serve] extra)

# TEI's types (router/src/http/server.rs, core/src/infer.rs, core/src/queue.rs)
EXPORTED = {"te_request_count": "counter", "te_request_success": "counter", "te_request_failure": "counter",
            "te_embed_count": "counter", "te_embed_success": "counter", "te_request_duration": "histogram",
            "te_queue_size": "gauge", "te_batch_next_size": "histogram", "te_embed_queue_duration": "histogram"}
# measured nowhere here (README): left out, never exported as zeros
NOT_EXPORTED = ("te_request_tokenization_duration", "te_request_queue_duration", "te_request_inference_duration",
                "te_request_input_length", "te_batch_next_tokens", "te_embed_duration",
                "te_embed_tokenization_duration", "te_embed_inference_duration")
POSTS = ["Thrilled to announce our seed round!", "Five lessons from a failed product launch.", "Hiring now."]


@pytest.fixture(scope="module", autouse=True)
def _hub_may_reach_loopback():
    """The session runs with HF_HUB_OFFLINE=1, which also blocks the client from our server on 127.0.0.1."""
    with pytest.MonkeyPatch.context() as mp:
        from huggingface_hub import constants

        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        yield


def scrape(client) -> tuple[str, dict]:
    """(the text of GET /metrics, its families by name, as prometheus-client's parser reads them)."""
    text = client.get("/metrics").text
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, suffix: str = "", **labels) -> float:
    """A series' value (a counter's as the parser names it, ``_total``); 0 when it is not there yet."""
    fam = fams.get(name)
    if fam is None:
        return 0.0
    sample = name + (suffix or ("_total" if fam.type == "counter" else ""))
    return sum(s.value for s in fam.samples if s.name == sample and s.labels == labels)


def test_tei_series_have_teis_names_types_labels_and_buckets(client):
    client.post("/embed", json={"inputs": []})  # a failure, so that te_request_failure has a series
    client.post("/embed", json={"inputs": "one post"})
    text, fams = scrape(client)
    for name, typ in EXPORTED.items():
        assert fams[name].type == typ, name
    lines = text.splitlines()
    for name in ("te_request_count", "te_request_success", "te_request_failure", "te_embed_count",
                 "te_embed_success"):  # as TEI's exporter writes them: no `_total` (a TEI query would miss it)
        assert f"# TYPE {name} counter" in lines
        assert any(line.startswith((f"{name} ", f"{name}{{")) for line in lines), name
        assert f"{name}_total" not in text
    assert {s.labels["method"] for s in fams["te_request_count"].samples} == {"single", "batch"}
    assert {s.labels["err"] for s in fams["te_request_failure"].samples} >= {"validation"}
    assert all(s.labels == {} for s in fams["te_queue_size"].samples)  # one model: no `model` label
    bounds = [float(s.labels["le"]) for s in fams["te_request_duration"].samples if s.name.endswith("_bucket")]
    assert bounds[:-1] == pytest.approx([1e-5 * 1.5 ** k for k in range(1, 36)]) and bounds[-1] == float("inf")
    for name in NOT_EXPORTED:
        assert name not in fams and f"{name}_" not in text, f"{name} is not measured: it must not be exported"


def test_counts_move_by_exactly_what_the_clients_sent(main_server, client):
    hub = huggingface_hub.InferenceClient(base_url=main_server.url, api_key=API_KEY)  # posts to "/" (TEI's)
    oa = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    wait_until(lambda: all(value(scrape(client)[1], f"postemb_batcher_{k}") == 0 for k in  # earlier tests' work
                           ("pending_requests", "in_flight_posts")), 60, "the batcher to be idle")
    _, before = scrape(client)
    t0 = time.monotonic()
    assert hub.feature_extraction(POSTS[0]).shape[0] == 1  # single
    assert hub.feature_extraction(POSTS).shape[0] == 3  # batch
    assert len(oa.embeddings.create(input=POSTS[1], model="any").data) == 1  # single
    assert len(oa.embeddings.create(input=POSTS[:2], model="any").data) == 2  # batch
    similarity = huggingface_hub.InferenceClient(base_url=main_server.url + "/similarity", api_key=API_KEY)
    assert len(similarity.sentence_similarity(POSTS[0], other_sentences=POSTS[1:])) == 2  # 3 posts: a batch
    wall_s = time.monotonic() - t0
    with pytest.raises(openai.BadRequestError):  # an empty string: TEI's tokenizer refuses it ("tokenization")
        oa.embeddings.create(input=[POSTS[0], ""], model="any")
    with pytest.raises(openai.BadRequestError):  # more than max_inputs: TEI's "batch_size"
        oa.embeddings.create(input=["x"] * (LIMITS["max_inputs"] + 1), model="any")
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):  # an empty list: TEI's Empty, counted "validation"
        hub.feature_extraction([])
    _, after = scrape(client)

    def moved(name, suffix="", **labels):
        return value(after, name, suffix, **labels) - value(before, name, suffix, **labels)

    assert moved("te_request_count", method="single") == 2
    assert moved("te_request_count", method="batch") == 6
    assert moved("te_request_success", method="single") == 2
    assert moved("te_request_success", method="batch") == 3
    assert moved("te_request_failure", err="tokenization") == 1
    assert moved("te_request_failure", err="batch_size") == 1
    assert moved("te_request_failure", err="validation") == 1
    assert moved("te_embed_count") == moved("te_embed_success") == 10  # the inputs of the requests answered
    assert moved("te_request_duration", "_count") == 5  # answered requests only, as TEI
    assert 0 < moved("te_request_duration", "_sum") <= wall_s  # seconds (TEI's unit), not milliseconds
    assert moved("te_embed_queue_duration", "_count") == 10  # one per post computed
    assert moved("te_batch_next_size", "_sum") == 10  # the batches held those 10 posts
    assert value(after, "te_queue_size") == 0  # nothing left waiting


def test_tokenize_counts_failures_only_and_rerank_counts_model_type(client):
    """/tokenize and /decode are not in te_request_count (TEI's are not) but their failures are; /rerank and
    /predict answer TEI's model-type error, counted as TEI counts it."""
    _, before = scrape(client)
    assert client.post("/tokenize", json={"inputs": []}).status_code == 400  # Empty
    assert client.post("/tokenize", json={"inputs": "fine"}).status_code == 200
    assert client.post("/rerank", json={"query": "q", "texts": ["a"]}).status_code == 424
    _, after = scrape(client)
    for method in ("single", "batch"):
        assert value(after, "te_request_count", method=method) == value(before, "te_request_count", method=method)
    assert value(after, "te_request_failure", err="validation") - value(before, "te_request_failure",
                                                                        err="validation") == 1
    assert value(after, "te_request_failure", err="model_type") - value(before, "te_request_failure",
                                                                        err="model_type") == 1


def test_failure_labels_are_teis():
    from postemb_rt.serving.errors import ApiError
    from postemb_rt.serving.metrics import tei_failure, tei_method

    cases = {(429, "max_concurrent_requests"): "overloaded", (429, "queue_full"): "overloaded",
             (413, "max_inputs"): "batch_size", (422, "empty_input"): "validation",
             (422, "max_length"): "tokenization", (422, "empty_string"): "tokenization",
             (503, "backend_error"): "inference", (503, "loading"): "unhealthy", (404, "model_not_found"): "validation"}
    for (status, code), err in cases.items():
        assert tei_failure(ApiError(status, "m", code=code)) == err, code
    assert [tei_method(x) for x in ("a", [1, 2], ["a"], [[1]], [], {"a": 1}, None)] == \
        ["single", "single", "batch", "batch", "batch", None, None]


def _stats(queued: int) -> dict:
    from postemb_rt.batching import COUNTERS, GAUGES

    h = {"bounds": [1.0, 2.0], "counts": [1, 2, 0], "sum": 5.0}
    return {**dict.fromkeys((*GAUGES, *COUNTERS), 0), "queued_posts": queued, "batch_size": h, "queue_seconds": h}


@pytest.mark.parametrize("names", [["m"], ["m", "small"]])
def test_batcher_series_get_a_model_label_only_with_several_models(names):
    """README's rule for postemb_batcher_*, kept by their TEI twins: a `model` label with several models."""
    from postemb_rt.serving.metrics import BatcherCollector

    rts = [SimpleNamespace(ready=True, backend_error=None, batcher=SimpleNamespace(stats=lambda i=i: _stats(i + 2)))
           for i in range(len(names))]
    fams = {f.name: f for f in BatcherCollector(SimpleNamespace(runtimes=rts, names=lambda: names,
                                                                multi=len(names) > 1)).collect()}
    want = [{"model": n} for n in names] if len(names) > 1 else [{}]
    assert [s.labels for s in fams["te_queue_size"].samples] == want
    assert [s.value for s in fams["te_queue_size"].samples] == [i + 2 for i in range(len(names))]
    for name in ("te_batch_next_size", "te_embed_queue_duration"):
        counts = [s for s in fams[name].samples if s.name == name + "_count"]
        assert [{k: v for k, v in s.labels.items()} for s in counts] == want and {s.value for s in counts} == {3}


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def fault(tmp_path_factory):
    """(fault_dir, httpx.Client) of a server whose backend fails or holds on demand (fault_server.py), one
    request computed at a time."""
    fault_dir = tmp_path_factory.mktemp("faults")
    for srv in ready_until_done(ServerProc(fault_argv(fault_dir, "--max-concurrent-requests=1"))):
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            yield fault_dir, c


def test_backend_failure_overload_and_a_client_that_left_are_teis_failures(fault):
    """A batch the model fails: `inference` (TEI's 424); a request refused for want of a compute slot (429, before
    its body is parsed, so not in te_request_count): `overloaded`; a client that leaves before its answer:
    `dropped`. The model is held by a file (no timing), never by a sleep."""
    fault_dir, c = fault
    url = str(c.base_url)

    def failures(err):
        return value(scrape(c)[1], "te_request_failure", err=err)

    counted_before = value(scrape(c)[1], "te_request_count", method="batch")
    (fault_dir / "fail").write_text("boom")
    try:
        r = c.post("/embed", json={"inputs": ["boom goes the model"]})
    finally:
        (fault_dir / "fail").unlink()
    assert r.status_code == 424 and failures("inference") == 1

    (fault_dir / "hold").touch()
    answers = []
    holder = threading.Thread(target=lambda: answers.append(httpx.post(url + "/embed", json={"inputs": ["held"]},
                                                                       timeout=120)))
    try:
        holder.start()
        wait_until(lambda: (fault_dir / "held").exists(), 60, "the first request's batch to reach the model")
        assert c.post("/embed", json={"inputs": ["refused"]}).status_code == 429  # the one slot is taken
        assert failures("overloaded") == 1
    finally:
        (fault_dir / "hold").unlink()
    holder.join(120)
    assert answers[0].status_code == 200

    (fault_dir / "hold").touch()
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its batch is held
            httpx.post(url + "/embed", json={"inputs": ["abandoned"]}, timeout=1)
        wait_until(lambda: failures("dropped") == 1, 30, "the server to count the request its client left")
    finally:
        (fault_dir / "hold").unlink()
    assert value(scrape(c)[1], "te_request_count", method="batch") == counted_before + 3  # not the 429
    assert value(scrape(c)[1], "te_request_success", method="batch") >= 1
