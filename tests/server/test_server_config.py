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
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/embed", {"inputs": ["x"]})):
            r = c.post(path, json=body, headers={"Authorization": "Bearer k"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
            assert "Permission denied" not in r.text and "/home/someone" not in r.text, r.text


class _BusyBatcher:
    """10,000 tokens queued, 1,000 tokens/s measured: a new request would wait ~10 s."""

    def stats(self):
        return {"queued_tokens": 10_000, "tokens_computed": 1_000, "inference_seconds": {"sum": 1.0}}

    def submit(self, ids, timeout=None):
        raise AssertionError("submitted a request that cannot meet its deadline")


def test_a_request_that_cannot_meet_its_deadline_is_429_at_once_not_a_late_503():
    """Under a storm the queue can hold more work than request_timeout_s allows; such a request
    used to wait out its deadline and end as a 503 (a 5xx in the metrics). It is refused at
    once with 429 and a Retry-After instead."""
    rt = Runtime(ServeConfig(request_timeout_s=5.0))
    rt.batcher = _BusyBatcher()
    with pytest.raises(ApiError) as info:
        asyncio.run(rt._compute([[101, 2000, 102]], "input"))
    assert info.value.status == 429 and info.value.body["code"] == "queue_too_slow"
    assert int(info.value.headers["Retry-After"]) == 10
