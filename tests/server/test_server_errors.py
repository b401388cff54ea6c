"""Every error path of `postemb serve`: limits (413), bad input (422), API key (401, in
test_server.py), overload (429 + Retry-After, at once), backend failure and queue deadline
(503, server stays up, /ready follows health), and SIGTERM draining requests in flight."""
import json
import signal
import threading
import time

import pytest

import numpy as np

from tests.conftest import assert_exact
from tests.server.conftest import API_KEY, LIMITS, ServerProc, fault_argv, require_serve_extra

httpx = require_serve_extra()

MAX_QUEUED_TOKENS = 600
REQUEST_TIMEOUT_S = 1.0
LONG = "word " * 300  # > 256 tokens, < max_input_chars

# (route, body: bytes or a JSON value, status, param, code); OpenAI's route answers 400 (openai.BadRequestError)
# where the others answer 422, and for every limit but the body's bytes
BAD_BODIES = [
    ("/v1/embeddings", b'{"input": ["a"', 400, "body", "invalid_json"),
    ("/v1/embeddings", b"\xff\xfe not utf-8", 400, "body", "invalid_json"),
    ("/v1/embeddings", b"[" * 5000 + b"]" * 5000, 400, "body", "invalid_json"),
    ("/v1/embeddings", b"", 400, "body", "invalid_json"),
    ("/v1/embeddings", b'{"input": "a", "dimensions": NaN}', 400, "body", "invalid_json"),  # Python reads it
    ("/v1/embeddings", b'{"input": "a", "dimensions": -Infinity}', 400, "body", "invalid_json"),
    ("/v1/embeddings", ["a"], 400, "body", "invalid_type"),
    ("/v1/embeddings", {"model": "base"}, 400, "input", "missing_field"),
    ("/v1/embeddings", {"input": None}, 400, "input", "invalid_type"),
    ("/v1/embeddings", {"input": {"text": "a"}}, 400, "input", "invalid_type"),
    ("/v1/embeddings", {"input": []}, 400, "input", "empty_input"),
    ("/v1/embeddings", {"input": ["a", "b", 3]}, 400, "input[2]", "invalid_type"),
    ("/v1/embeddings", {"input": [[101, 2023]]}, 400, "input[0]", "invalid_type"),
    ("/v1/embeddings", {"input": ["a", "\ud800"]}, 400, "input[1]", "invalid_text"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400, "encoding_format", "invalid_value"),
    ("/v1/embeddings", {"input": "a", "dimensions": 64}, 400, "dimensions", "dimensions_unsupported"),
    ("/v1/embeddings", {"input": "a", "dimensions": True}, 400, "dimensions", "dimensions_unsupported"),
    ("/v1/embeddings", {"input": "a", "model": 7}, 400, "model", "invalid_type"),
    ("/v1/embeddings", {"input": ["a"] * (LIMITS["max_inputs"] + 1)}, 400, "input", "max_inputs"),
    ("/v1/embeddings", {"input": ["a", "b" * (LIMITS["max_input_chars"] + 1)]}, 400, "input[1]", "max_input_chars"),
    ("/v1/embeddings", {"input": ["x" * 1000] * 30, "pad": "y" * LIMITS["max_body_bytes"]}, 413, "body",
     "max_body_bytes"),
    ("/embed_full", {"inputs": ["a"], "normalise": False}, 422, "normalise", "unknown_field"),
    ("/embed_full", {"input": ["a"]}, 422, "input", "unknown_field"),
    ("/embed_full", {"inputs": "a", "truncate": "no"}, 422, "truncate", "invalid_type"),
    ("/embed_full", {"inputs": "a", "normalize": 1}, 422, "normalize", "invalid_type"),
    ("/embed_full", {"inputs": "a", "encoding": "float16"}, 422, "encoding", "invalid_value"),
    ("/embed_full", {"inputs": "a", "encoding": "int8", "normalize": False}, 422, "normalize", "invalid_value"),
    ("/embed_full", {"inputs": ["ok", LONG], "truncate": False}, 422, "inputs[1]", "max_length"),
    ("/embed_full", {"inputs": ["ok", 1.5]}, 422, "inputs[1]", "invalid_type"),
    ("/embed_full", {"inputs": ["ok", ""]}, 422, "inputs[1]", "empty_string"),
    ("/v1/embeddings", {"input": ""}, 400, "input[0]", "empty_string"),
    ("/embed_full", {"inputs": "b" * (LIMITS["max_input_chars"] + 1), "truncate": False}, 413, "inputs[0]",
     "max_input_chars"),
]


@pytest.mark.parametrize("route,body,status,param,code", BAD_BODIES,
                         ids=[f"{r}-{c}-{i}" for i, (r, _, _, _, c) in enumerate(BAD_BODIES)])
def test_bad_requests_get_json_errors_naming_the_field(client, route, body, status, param, code):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(route, content=data, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code, err
    assert f"`{param}`" in err["message"] or param == "body"
    if code.startswith("max_"):
        assert err["limit"] is not None and err["given"] is not None, err
        assert str(err["limit"]) in err["message"]


def test_limit_errors_name_the_limit_and_the_value_given(client):
    n = LIMITS["max_inputs"] + 5
    err = client.post("/embed_full", json={"inputs": ["a"] * n}).json()["error"]
    assert (err["limit"], err["given"]) == (LIMITS["max_inputs"], n)
    assert f"max_inputs ({LIMITS['max_inputs']})" in err["message"] and str(n) in err["message"]
    err = client.post("/embed_full", json={"inputs": ["ok", LONG], "truncate": False}).json()["error"]
    assert err["limit"] == 256 and "max_length (256 tokens)" in err["message"]


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(LIMITS["max_body_bytes"] // 4096 + 2):
            yield b" " * 4096  # whitespace: valid JSON padding, no Content-Length

    r = client.post("/embed_full", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "max_body_bytes"
    # the rest of the body is read and dropped before the answer: the last chunk must end that read, not
    # body_timeout_s (30 s), which a read of the next ASGI message after the last one would wait for
    assert r.elapsed.total_seconds() < 15


def test_unknown_route_and_method_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/embed_full")
    assert r.status_code == 405 and "error" in r.json()


def test_bad_requests_leave_the_server_serving(main_server, client):
    assert client.post("/embed_full", json={"inputs": ["still fine"]}).status_code == 200
    assert main_server.proc.poll() is None


# ---------------------------------------------------------------------------------------
# The fault-injecting server: overload, backend failure, deadline, drain.
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fault(main_server, tmp_path_factory):
    """(server, fault_dir, httpx.Client); the server is stopped by the last test (drain)."""
    fault_dir = tmp_path_factory.mktemp("faults")
    srv = ServerProc(fault_argv(fault_dir, f"--max-queued-tokens={MAX_QUEUED_TOKENS}",
                                f"--request-timeout={REQUEST_TIMEOUT_S}"))
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            yield srv, fault_dir, c
    finally:
        srv.stop()


def _concurrently(fn, args_list):
    """Run fn(*args) on one thread each, started together; returns their results in order."""
    out = [None] * len(args_list)
    gate = threading.Barrier(len(args_list))

    def run(i, args):
        gate.wait()
        out[i] = fn(*args)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def _wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_request_over_the_queue_bound_is_fed_to_it_in_pieces():
    """4 posts of 775 tokens > max_queued_tokens 600: a 413 until now (OpenAI takes up to 300k tokens a
    request); now the request goes to the batcher in pieces as the queue drains (here a post each:
    600 / 4 < 256), and the answer is the whole request's, in order (the openai client, in process; and
    TEI's /embed given the posts' token ids)."""
    from starlette.testclient import TestClient

    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.routes import create_app

    openai = pytest.importorskip("openai")
    app = create_app(ServeConfig(model="base", backend="onnxruntime", precision="fp32",
                                 max_queued_tokens=MAX_QUEUED_TOKENS))
    texts = [LONG, "a short post in between", LONG + "more words", LONG]
    with TestClient(app) as c:
        _wait_for(lambda: app.state.runtime.ready, 180, "the model to load")
        oa = openai.OpenAI(base_url=str(c.base_url) + "/v1", api_key="none", http_client=c, max_retries=0)
        r = oa.embeddings.create(model="base", input=texts, encoding_format="float")
        assert r.usage.prompt_tokens > MAX_QUEUED_TOKENS
        want = app.state.runtime.encoder.encode(texts)  # the server's own model, through Encoder.encode
        assert_exact(np.array([d.embedding for d in r.data], np.float32), want)
        assert app.state.runtime.batcher.stats()["requests_submitted"] == 1 + 4  # the warm-up, then a post each
        full = c.post("/embed_full", json={"inputs": texts})
        assert full.status_code == 200 and full.json()["usage"]["prompt_tokens"] > MAX_QUEUED_TOKENS
        assert_exact(np.array(full.json()["embeddings"], np.float32), want)
        ids = app.state.runtime.encoder.tokenizer(texts).ids  # TEI's token-id inputs take the same path
        by_ids = c.post("/embed", json={"inputs": ids})
        assert by_ids.status_code == 200 and int(by_ids.headers["X-Compute-Tokens"]) > MAX_QUEUED_TOKENS
        assert_exact(np.array(by_ids.json(), np.float32), want)


class _Batcher:
    """A batcher that records each submit's posts and answers row i with [first id, len]; ``fail_at``: the
    submit (0-based) whose future fails with ``DeadlineExceededError``; ``full``: the submit attempts (0-based)
    that find the queue full (``OverloadedError``, recorded in ``refused``), each calling ``on_full()`` first."""

    def __init__(self, fail_at: int | None = None, full=(), on_full=lambda: None):
        self.submits, self.fail_at, self.full, self.on_full, self.refused = [], fail_at, set(full), on_full, []

    def submit(self, posts, timeout=None):
        from concurrent.futures import Future

        from postemb_rt.errors import DeadlineExceededError, OverloadedError

        if len(self.submits) + len(self.refused) in self.full:
            self.refused.append(len(posts))
            self.on_full()
            raise OverloadedError("the batcher queue is full: 90 tokens queued, this request adds 30, "
                                  "max_queued_tokens is 100. Retry later.")
        self.submits.append((len(posts), sum(map(len, posts)), timeout))
        fut = Future()
        if len(self.submits) - 1 == self.fail_at:
            fut.set_exception(DeadlineExceededError("the request's deadline passed in the batcher queue."))
        else:
            fut.set_result(np.array([[p[0], len(p)] for p in posts], np.float32))
        return fut

    def stats(self):
        return {"queued_tokens": 0, "in_flight_posts": 0, "posts_computed": 0, "tokens_computed": 0,
                "inference_seconds": {"sum": 0.0}}


def _runtime(**cfg):
    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.runtime import Runtime

    rt = Runtime(ServeConfig(**cfg))
    rt.batcher = _Batcher()
    return rt


def test_pieces_keep_the_order_fit_a_quarter_of_the_queue_and_share_one_deadline():
    import asyncio

    rt = _runtime(max_queued_tokens=100, request_timeout_s=30.0)
    ids = [[i] * n for i, n in enumerate([10, 20, 5, 25, 1, 1, 30, 12])]  # 104 tokens > 100
    vecs, tokens = asyncio.run(rt._compute(ids, "input"))
    assert tokens == 104 and vecs.tolist() == [[i, len(p)] for i, p in enumerate(ids)]
    # (posts, tokens) per submit: consecutive posts, at most max(100 // 4, the longest post: 30) tokens each
    assert [(n, t) for n, t, _ in rt.batcher.submits] == [(2, 30), (2, 30), (2, 2), (1, 30), (1, 12)]
    timeouts = [t for _, _, t in rt.batcher.submits]
    assert all(0 < t <= 30.0 for t in timeouts) and timeouts == sorted(timeouts, reverse=True)  # one deadline
    rt.batcher = _Batcher()
    asyncio.run(rt._compute(ids[:3], "input"))  # within the queue: one submit, as before
    assert len(rt.batcher.submits) == 1


def test_a_pieced_request_past_its_deadline_says_how_to_avoid_it():
    import asyncio

    from postemb_rt.serving.errors import ApiError

    rt = _runtime(max_queued_tokens=100)
    rt.batcher = _Batcher(fail_at=1)
    with pytest.raises(ApiError) as info:
        asyncio.run(rt._compute([[7] * 30] * 5, "input"))
    msg = info.value.body["message"]
    assert info.value.status == 503 and info.value.body["code"] == "timeout"  # no batch finished (a fake)
    assert "150 tokens were fed to the queue in 5 pieces and 1 of its posts were computed" in msg, msg
    assert "Fix: split the request (client), or raise --request-timeout (operator)" in msg, msg


def test_a_post_longer_than_the_whole_queue_is_413_naming_both_fixes():
    import asyncio

    from postemb_rt.serving.errors import ApiError

    rt = _runtime(max_queued_tokens=100)  # below max_length (256): a full-length post never fits
    with pytest.raises(ApiError) as info:
        asyncio.run(rt._compute([[1] * 10, [1] * 150], "input"))
    err = info.value.body
    assert info.value.status == 413 and err["code"] == "max_queued_tokens"
    assert (err["limit"], err["given"]) == (100, 150)
    assert "Fix: shorten that post (client), or start the server with --max-queued-tokens" in err["message"]
    assert rt.batcher.submits == []


def test_a_later_piece_finding_the_queue_full_waits_for_room_woken_as_a_batch_leaves_it(monkeypatch):
    """5 pieces of 30 tokens (queue 100); the 2nd finds the queue full 3 times. It waits for room (it was a
    429, and the 1st piece's rows were thrown away) and the request is answered whole, in order. What wakes
    it is the batcher's thread as a batch leaves the queue (``Runtime.made_room``; the poll is set to a
    minute here, so nothing else could), and the event loop runs other tasks while it waits."""
    import asyncio

    from postemb_rt.serving import runtime

    monkeypatch.setattr(runtime, "ROOM_POLL_S", 60.0)
    monkeypatch.setattr(runtime, "ROOM_POLL_MAX_S", 60.0)
    rt = _runtime(max_queued_tokens=100, request_timeout_s=30.0)
    ticks, ran_while_waiting = [0], []

    def batch_leaves_the_queue():  # as the batcher's thread would, once the refused piece waits
        def run():
            deadline = time.monotonic() + 10
            while not rt._room_waiters and time.monotonic() < deadline:
                time.sleep(0.001)
            before = ticks[0]
            while ticks[0] < before + 3 and time.monotonic() < deadline:  # the loop is free: it ticks on
                time.sleep(0.001)
            ran_while_waiting.append(ticks[0] >= before + 3)
            rt.made_room()
        threading.Thread(target=run, daemon=True).start()

    async def run():
        task = asyncio.ensure_future(rt._compute([[i] * 30 for i in range(5)], "input"))
        while not task.done():
            ticks[0] += 1
            await asyncio.sleep(0.001)
        return await task

    rt.batcher = _Batcher(full={1, 2, 3}, on_full=batch_leaves_the_queue)
    start = time.monotonic()
    vecs, tokens = asyncio.run(run())
    assert vecs.tolist() == [[i, 30] for i in range(5)] and tokens == 150
    assert rt.batcher.refused == [1, 1, 1] and len(rt.batcher.submits) == 5  # refused 3 times, then queued
    assert ran_while_waiting == [True] * 3 and time.monotonic() - start < 9  # woken by made_room, not the poll
    assert rt._room_waiters == []


def test_the_first_piece_finding_the_queue_full_is_429_at_once():
    """The backpressure clients expect: a request (or the first piece of one bigger than the queue) that
    finds the queue full is refused at once, with Retry-After; nothing of it was computed."""
    import asyncio

    from postemb_rt.serving.errors import ApiError

    for ids in ([[7] * 30], [[7] * 30] * 5):
        rt = _runtime(max_queued_tokens=100)
        rt.batcher = _Batcher(full={0})
        with pytest.raises(ApiError) as info:
            asyncio.run(rt._compute(ids, "input"))
        assert info.value.status == 429 and info.value.body["code"] == "queue_full", info.value.body
        assert int(info.value.headers["Retry-After"]) >= 1
        assert rt.batcher.refused == [1] and rt.batcher.submits == []  # one try (a post: the first piece), no wait


def test_a_waiting_piece_retries_on_its_own_when_no_batch_signals():
    """Room can come without a model call (a queued request expired or was cancelled): a waiting piece
    also retries after a pause doubling from ROOM_POLL_S, so it is served though made_room never runs."""
    import asyncio

    rt = _runtime(max_queued_tokens=100, request_timeout_s=30.0)
    rt.batcher = _Batcher(full={2, 3, 4, 5})
    vecs, _ = asyncio.run(rt._compute([[i] * 30 for i in range(4)], "input"))
    assert vecs[:, 0].tolist() == [0, 1, 2, 3] and rt.batcher.refused == [1] * 4


@pytest.mark.parametrize("batches_ran, status, code", [(True, 429, "queue_timeout"), (False, 503, "timeout")])
def test_a_piece_waiting_past_the_deadline_is_429_while_batches_run_else_503(batches_ran, status, code):
    """The queue stays full until the request's one deadline: 429 when other batches ran meanwhile (an
    overload), 503 when none did (a stuck model), saying how to avoid it. It waited in pauses, not a
    busy loop: a handful of tries in 0.3 s."""
    import asyncio

    from postemb_rt.serving.errors import ApiError

    rt = _runtime(max_queued_tokens=100, request_timeout_s=0.3)

    def other_requests_batch():
        if batches_ran:
            rt.batches_done += 1

    rt.batcher = _Batcher(full=range(1, 1000), on_full=other_requests_batch)
    with pytest.raises(ApiError) as info:
        asyncio.run(rt._compute([[7] * 30] * 5, "input"))
    msg = info.value.body["message"]
    assert info.value.status == status and info.value.body["code"] == code, msg
    assert "the batcher queue stayed full." in msg and "in 5 pieces and 1 of its posts were computed" in msg, msg
    assert len(rt.batcher.submits) == 1 and 2 <= len(rt.batcher.refused) <= 20, rt.batcher.refused

@pytest.mark.parametrize("route, body, flag", [
    ("/v1/embeddings", {"input": ["a"] * (LIMITS["max_inputs"] + 1)}, "--max-inputs"),
    ("/embed", {"inputs": ["a"] * (LIMITS["max_inputs"] + 1)}, "--max-inputs"),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"] * LIMITS["max_inputs"]}}, "--max-inputs"),
    ("/decode", {"ids": [[101]] * (LIMITS["max_inputs"] + 1)}, "--max-inputs"),
    ("/embed_full", {"inputs": ["x" * 1000] * 30, "pad": "y" * LIMITS["max_body_bytes"]}, "--max-body-bytes"),
    ("/embed_full", {"inputs": "b" * (LIMITS["max_input_chars"] + 1), "truncate": False}, "--max-input-chars"),
])
def test_size_limit_errors_name_the_clients_fix_and_the_operators_flag(client, route, body, flag):
    r = client.post(route, json=body)
    assert r.status_code in (400, 413), r.text[:300]
    err = r.json()["error"]
    msg = err if isinstance(err, str) else err["message"]  # TEI's routes: TEI's shape
    assert "Fix: " in msg and "(client" in msg and f"{flag} (operator)" in msg, msg


def test_openai_client_over_max_inputs_is_told_to_split_or_raise_the_flag(main_server):
    """LangChain's OpenAIEmbeddings sends 1,000 inputs a request (chunk_size): the 400 says the chunk size
    that fits and the operator's flag."""
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    n = LIMITS["max_inputs"]
    with pytest.raises(openai.BadRequestError) as info:
        oa.embeddings.create(model="base", input=["a post"] * (n + 1))
    assert info.value.code == "max_inputs" and info.value.param == "input"
    assert f"split the request into requests of at most {n} (client; LangChain's OpenAIEmbeddings: chunk_size={n})" \
           in info.value.message and "a higher --max-inputs (operator)" in info.value.message


def test_overload_is_429_with_retry_after_at_once(fault):
    """The model is held (FAULT_DIR/hold) while 16 requests of ~80 tokens arrive (> 600
    queued): every 429 is answered while the model is still held, i.e. without waiting for it.
    The hold is lifted only once the clients have received as many 429s as the server counts
    as rejected; a 429 that waited for the model would never arrive and the wait times out."""
    srv, fault_dir, c = fault
    def rejected_so_far():
        return _metric(c, "postemb_batcher_requests_rejected_total")

    def seen():
        return _metric(c, "postemb_batcher_requests_submitted_total") + rejected_so_far()

    start, start_rejected = seen(), rejected_so_far()
    (fault_dir / "hold").touch()
    body = {"inputs": ["a post that is about twenty five tokens long, give or take a few words here"] * 4}
    answered_429 = []

    def post():
        r = httpx.post(srv.url + "/embed_full", json=body, timeout=60)
        if r.status_code == 429:
            answered_429.append(r)
        return r

    out = []
    sender = threading.Thread(target=lambda: out.extend(_concurrently(post, [()] * 16)))
    try:
        sender.start()
        _wait_for(lambda: (fault_dir / "held").exists(), 60, "a batch to reach the held model")
        _wait_for(lambda: seen() >= start + 16, 60, "all 16 requests to be queued or refused")
        n_rejected = rejected_so_far() - start_rejected
        assert n_rejected > 0, "600 queued tokens should have refused some of 16 x ~80-token requests"
        _wait_for(lambda: len(answered_429) >= n_rejected, 30,
                  f"the {n_rejected:.0f} refused requests to get their 429 while the model is held")
    finally:
        (fault_dir / "hold").unlink()
    sender.join(120)
    codes = [r.status_code for r in out]
    rejected = [r for r in out if r.status_code == 429]
    # the queued ones are served, or pass their 1 s queue deadline while the model is held
    queued = [r for r in out if r.status_code != 429]
    assert rejected and queued and set(codes) <= {200, 429, 503}, codes
    assert len(rejected) == n_rejected, (codes, n_rejected)
    assert all(r.status_code == 200 or r.json()["error"]["code"] == "timeout" for r in queued)
    for r in rejected:
        assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "queue_full"


def test_queue_deadline_is_503_and_other_requests_still_pass(fault):
    """Post 0 holds the model (FAULT_DIR/hold) past post 1's queue deadline (1 s)."""
    srv, fault_dir, c = fault
    (fault_dir / "hold").touch()
    results = [None, None]

    def send(i):
        results[i] = httpx.post(srv.url + "/embed_full", json={"inputs": [f"post {i}"]}, timeout=60)

    first = threading.Thread(target=send, args=(0,))
    second = threading.Thread(target=send, args=(1,))
    try:
        first.start()
        _wait_for(lambda: (fault_dir / "held").exists(), 60, "post 0 to reach the held model")
        second.start()
        _wait_for(lambda: _metric(c, "postemb_batcher_queued_posts") >= 1, 60, "post 1 to be queued")
        queued_at = time.monotonic()  # post 1 is in the queue: its deadline is at most 1 s from now
        # what is waited for here is post 1's deadline itself
        _wait_for(lambda: time.monotonic() > queued_at + REQUEST_TIMEOUT_S + 0.2, 10, "the deadline")
    finally:
        (fault_dir / "hold").unlink()
    first.join(60)
    second.join(60)
    assert results[0].status_code == 200
    assert results[1].status_code == 503 and results[1].json()["error"]["code"] == "timeout"
    assert "Retry-After" in results[1].headers
    assert c.post("/embed_full", json={"inputs": ["after the deadline"]}).status_code == 200


def test_backend_failure_is_503_for_that_request_only(fault):
    srv, fault_dir, c = fault
    (fault_dir / "fail").write_text("kaboom")
    try:
        r = c.post("/embed_full", json={"inputs": ["kaboom goes the model"]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_error"
        # the detail goes to the log only: an answer never carries exception text (paths, OS errors)
        assert "injected" not in r.text and "the server log says why" in r.json()["error"]["message"]
        _wait_for(lambda: any("injected backend failure" in line for line in srv.lines), 10, "the log line")
        assert c.post("/v1/embeddings", json={"input": ["a healthy post"]}).status_code == 200
        assert srv.proc.poll() is None
    finally:
        (fault_dir / "fail").unlink()


def test_ready_follows_backend_health(fault):
    srv, fault_dir, c = fault
    (fault_dir / "fail").write_text("")  # every batch fails
    try:
        assert c.post("/embed_full", json={"inputs": ["x"]}).status_code == 503
        r = c.get("/ready")
        assert r.status_code == 503 and r.json() == {"status": "unhealthy", "reason": "backend_error"}
        assert "injected" not in r.text  # no exception text for unauthenticated callers
        assert "postemb_ready 0.0" in c.get("/metrics").text
        assert c.get("/health").status_code == 200
    finally:
        (fault_dir / "fail").unlink()
    assert c.get("/ready").status_code == 200  # re-probed: healthy again
    assert c.post("/embed_full", json={"inputs": ["x"]}).status_code == 200


def test_sigterm_drains_requests_in_flight_and_exits_zero(fault):
    """Last test of the module: it stops the fault server."""
    srv, fault_dir, c = fault
    # 0.5 s a batch: the requests that miss the first batch wait in the queue for it, within REQUEST_TIMEOUT_S with
    # room for busy cores (at 0.8 s, 2 of 6 once passed the 1 s deadline, 503, on cores shared with 3 test runs)
    (fault_dir / "slow").write_text("0.5")
    submitted_before = _metric(c, "postemb_batcher_requests_submitted_total")
    results, done_at = [None] * 6, [0.0] * 6

    def send(i):
        results[i] = httpx.post(srv.url + "/embed_full", json={"inputs": [f"drain post {i} {j}" for j in range(8)]},
                                timeout=60)
        done_at[i] = time.monotonic()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while _metric(c, "postemb_batcher_requests_submitted_total") < submitted_before + 6:
        assert time.monotonic() < deadline, "requests never reached the batcher"
        time.sleep(0.05)
    c.close()
    sigterm_at = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)

    def refused():
        try:
            httpx.get(srv.url + "/health", timeout=5)
        except httpx.TransportError:
            return True
        return False

    _wait_for(refused, 30, "the listener to close")  # closed while in-flight work drains
    rc = srv.proc.wait(60)
    for t in threads:
        t.join(60)
    assert rc == 0, "".join(srv.lines)
    assert all(r is not None and r.status_code == 200 for r in results), [r and r.status_code for r in results]
    assert all(len(r.json()["embeddings"]) == 8 for r in results)
    assert max(done_at) > sigterm_at, "no request was in flight at SIGTERM"


def _metric(c, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_model_that_fails_to_load_stops_the_server_with_exit_1(tmp_path):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "postemb_rt.cli", "serve", "--model", str(tmp_path / "no-such-model"),
            "--port", "0"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    assert "failed to load" in out.stderr and "no-such-model" in out.stderr
