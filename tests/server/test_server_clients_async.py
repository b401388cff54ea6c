"""The asynchronous clients, which the other server tests do not run: ``huggingface_hub.AsyncInferenceClient``
on text-embeddings-inference's routes and ``openai.AsyncOpenAI`` on ``/v1/embeddings``, each against the real
server (``main_server``): the values, the fields they send, and the error classes they raise."""
import asyncio

import numpy as np
import pytest

from tests.conftest import assert_exact
from tests.server.conftest import API_KEY, LIMITS, require_serve_extra

require_serve_extra()
huggingface_hub = pytest.importorskip("huggingface_hub", reason="the [test] extra installs huggingface_hub")
openai = pytest.importorskip("openai", reason="the [test] extra installs openai")

TEXTS = ["Thrilled to announce our seed round!", "Five lessons from a failed product launch."]
LONG = " ".join(["a"] * 300 + ["b"] * 300)  # 600 tokens: right keeps the a's, left the b's


@pytest.fixture(scope="module", autouse=True)
def _hub_may_reach_loopback():
    """HF_HUB_OFFLINE=1 (no model hub, ever) also blocks the client from our server on 127.0.0.1: allowed here."""
    with pytest.MonkeyPatch.context() as mp:
        from huggingface_hub import constants

        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        yield


def test_async_hub_feature_extraction_sends_tei_fields_and_equals_encode(main_server, server_encoder):
    async def run():
        hub = huggingface_hub.AsyncInferenceClient(base_url=main_server.url, api_key=API_KEY)
        sim = huggingface_hub.AsyncInferenceClient(base_url=main_server.url + "/similarity", api_key=API_KEY)
        return await asyncio.gather(
            hub.feature_extraction(TEXTS),
            hub.feature_extraction(TEXTS, normalize=False, truncate=True, prompt_name="query"),
            hub.feature_extraction(LONG, truncation_direction="left"),
            sim.sentence_similarity(TEXTS[0], [TEXTS[1], TEXTS[0]]))

    unit, raw, left, scores = asyncio.run(run())
    want = server_encoder.encode(TEXTS)
    assert_exact(unit, want)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).min() > 1e-3  # normalize=False reached the server
    assert_exact(raw / np.linalg.norm(raw, axis=1, keepdims=True), want)  # the "query" prompt of this model is ""
    assert_exact(left, server_encoder.encode([" ".join(["b"] * (server_encoder.max_length - 2))]))
    assert np.abs(np.array(scores) - [want[1] @ want[0], 1.0]).max() <= 1e-5, scores


def test_async_hub_raises_the_hubs_error_classes_with_teis_message(main_server):
    async def refused(text, **kw):
        hub = huggingface_hub.AsyncInferenceClient(base_url=main_server.url, api_key=API_KEY)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as info:
            await hub.feature_extraction(text, **kw)
        return info.value

    too_long = asyncio.run(refused(LONG, truncate=False))
    assert too_long.response.status_code == 413 and "longer than max_length" in too_long.server_message
    empty = asyncio.run(refused([]))  # TEI's Empty: the hub's BadRequestError
    assert isinstance(empty, huggingface_hub.errors.BadRequestError) and empty.response.status_code == 400
    assert "at least one" in empty.server_message


def test_async_openai_decodes_its_default_base64_as_the_floats_and_sees_openai_errors(main_server, server_encoder):
    async def run():
        oa = openai.AsyncOpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
        default = await oa.embeddings.create(model="any", input=TEXTS, user="u-1")  # base64 asked, decoded
        floats = await oa.embeddings.create(model="any", input=TEXTS, encoding_format="float",
                                            dimensions=server_encoder.dim)
        errors = []
        for kw in ({"dimensions": 7}, {"input": [[101, 2023, 102]]}, {"input": ""}):
            try:
                await oa.embeddings.create(model="any", **{"input": TEXTS, **kw})
            except openai.APIStatusError as exc:
                errors.append(exc)
        return default, floats, errors

    default, floats, errors = asyncio.run(run())
    want = server_encoder.encode(TEXTS)
    assert_exact(np.array([d.embedding for d in default.data], np.float32), want)
    assert_exact(np.array([d.embedding for d in floats.data], np.float32), want)
    assert [type(e) for e in errors] == [openai.BadRequestError] * 3, errors
    assert [(e.code, e.param) for e in errors] == [("dimensions_unsupported", "dimensions"),
                                                   ("invalid_type", "input[0]"), ("empty_string", "input[0]")]


def test_async_clients_read_the_413_of_a_body_over_max_body_bytes(main_server):
    """The 413 went out before the body was read, and the close reset the connection under a client still sending:
    AsyncOpenAI raised APIConnectionError (after sending the body twice more, with its retries) and
    AsyncInferenceClient httpx's ReadError. The server now reads and drops the rest of the body first."""
    big = ["x " * 1000] * (8_000_000 // 2000)  # 8 MB, far past max_body_bytes and the sockets' buffers
    assert 2000 * len(big) > LIMITS["max_body_bytes"]

    async def run():
        oa = openai.AsyncOpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
        hub = huggingface_hub.AsyncInferenceClient(base_url=main_server.url, api_key=API_KEY)
        got = []
        for call in (oa.embeddings.create(model="any", input=big), hub.feature_extraction(big)):
            try:
                await call
            except (openai.APIStatusError, huggingface_hub.errors.HfHubHTTPError) as exc:
                got.append(getattr(exc, "status_code", None) or exc.response.status_code)
            except Exception as exc:  # noqa: BLE001 - a transport error: what this test is about
                got.append(type(exc).__name__)
        return got

    assert asyncio.run(run()) == [413, 413]
