"""The library's serving configuration and answers, in process (no socket): the API key rules,
503 bodies without exception text, the queue shed by its measured rate."""
import asyncio
import time

import pytest

from tests.server.conftest import require_serve_extra

require_serve_extra()

from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.serving.config import ServeConfig  # noqa: E402
from postemb_rt.serving.errors import ApiError  # noqa: E402
from postemb_rt.serving.routes import create_app  # noqa: E402
from postemb_rt.serving.runtime import Runtime  # noqa: E402


@pytest.mark.parametrize("key", ["", "   ", "\n"])
def test_an_empty_api_key_is_refused_by_the_library_too(key):
    with pytest.raises(ValidationError, match=r"`api_key` must be a non-empty string.*Given: .*Fix: set a key"):
        ServeConfig(api_key=key)


def test_an_api_key_with_surrounding_whitespace_is_stripped_and_authenticates():
    from starlette.testclient import TestClient

    cfg = ServeConfig(api_key="secret\n")
    assert cfg.api_key == "secret"
    c = TestClient(create_app(cfg))  # no lifespan: the model is not loaded, /info answers anyway
    assert c.get("/info", headers={"Authorization": "Bearer secret"}).status_code == 200
    assert c.get("/info", headers={"Authorization": "Bearer secret2"}).status_code == 401
    assert c.get("/info").status_code == 401


def test_503_bodies_carry_no_exception_text():
    """A model that fails to load with a local path and `Permission denied`: authenticated
    callers get a generic message and a code; the detail is in the log."""
    from starlette.testclient import TestClient

    def load():
        raise PermissionError(13, "Permission denied", "/home/someone/private/model")

    app = create_app(ServeConfig(api_key="k"), load_encoder=load)
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while app.state.runtime.load_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/embed_full", {"inputs": ["x"]})):
            r = c.post(path, json=body, headers={"Authorization": "Bearer k"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
            assert r.headers["x-should-retry"] == "false"  # the openai clients retry a 503 unless told not to
            assert "Permission denied" not in r.text and "/home/someone" not in r.text, r.text


class _QueueBatcher:
    """Every request passes its queue deadline; ``batch_done`` runs while it waits."""

    def __init__(self, batch_done):
        self.batch_done = batch_done

    def stats(self):
        return {"queued_tokens": 10_000, "in_flight_posts": 0, "posts_computed": 10, "tokens_computed": 1_000,
                "inference_seconds": {"sum": 1.0}}

    def submit(self, ids, timeout=None):
        from concurrent.futures import Future

        from postemb_rt.errors import DeadlineExceededError

        self.batch_done()
        fut = Future()
        fut.set_exception(DeadlineExceededError("the request's deadline passed in the batcher queue"))
        return fut


@pytest.mark.parametrize("model_progressing, status, code", [(True, 429, "queue_timeout"), (False, 503, "timeout")])
def test_a_queue_deadline_under_load_is_429_and_503_only_when_the_model_is_stuck(model_progressing, status, code):
    """A storm fills the queue faster than the model empties it: a request that waits out its
    deadline while batches keep finishing is an overload (429, Retry-After), not a server error;
    it used to be a 503, counted as a 5xx. Only a deadline during which no batch finished (a
    stuck model) is a 503."""
    rt = Runtime(ServeConfig(request_timeout_s=5.0))
    rt.last_batch_end = time.monotonic() - 100  # the last batch finished before the request came
    def batch_done():
        if model_progressing:
            rt.last_batch_end, rt.batches_done = time.monotonic(), rt.batches_done + 1

    rt.batcher = _QueueBatcher(batch_done)
    with pytest.raises(ApiError) as info:
        asyncio.run(rt._compute([[101, 2000, 102]], "input"))
    assert info.value.status == status and info.value.body["code"] == code
    headers = info.value.headers  # 10,000 tokens queued at 1,000 tokens/s: 10 s, spread over up to 20 s
    assert 10_000 <= int(headers["retry-after-ms"]) <= 20_000
    assert int(headers["Retry-After"]) == -(-int(headers["retry-after-ms"]) // 1000)


def test_a_retry_after_is_bounded_and_spread_so_refused_clients_come_back_apart():
    """The openai clients wait exactly what retry-after-ms (else Retry-After) says, with no jitter of their own:
    clients refused together came back together, in one burst the server refused again."""
    from postemb_rt.serving.errors import retry_after

    draws = [retry_after(2.0) for _ in range(200)]
    ms = [int(h["retry-after-ms"]) for h in draws]
    assert min(ms) >= 2000 and max(ms) <= 4000 and len(set(ms)) > 100, (min(ms), max(ms), len(set(ms)))
    assert all(int(h["Retry-After"]) == -(-int(h["retry-after-ms"]) // 1000) for h in draws)  # one draw for both
    assert {retry_after(0.0)["Retry-After"], retry_after(1e-9)["Retry-After"]} <= {"1", "2"}  # 1 s at least
    assert retry_after(1e6) == {"Retry-After": "60", "retry-after-ms": "60000"}  # at most 60 s


def test_tokenization_waits_are_bounded_by_the_request_timeout():
    """A storm of big requests: at most TOKENIZE_THREADS tokenize at once; one that waits for a
    turn longer than request_timeout_s gets 429 tokenizer_busy instead of waiting minutes."""
    from postemb_rt.serving.runtime import TOKENIZE_THREADS

    rt = Runtime(ServeConfig(request_timeout_s=0.3))

    async def run():
        busy = [asyncio.ensure_future(rt.off_loop(time.sleep, 1.5)) for _ in range(TOKENIZE_THREADS)]
        await asyncio.sleep(0.05)
        try:
            with pytest.raises(ApiError) as info:
                await rt.off_loop(len, "waits")
        finally:
            await asyncio.gather(*busy)
        assert await rt.off_loop(len, "its turn") == 8
        return info.value

    err = asyncio.run(run())
    assert err.status == 429 and err.body["code"] == "tokenizer_busy"
