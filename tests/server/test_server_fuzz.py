"""Property-based fuzzing of request bodies (hypothesis, bounded and derandomised): whatever
the body, the server answers 200 or a 4xx JSON error, never a 5xx, and stays up."""
import json

import pytest

from tests.server.conftest import LIMITS, require_serve_extra

require_serve_extra()

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = 60  # per test; each is one request to the server
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
OK = {200, 400, 413, 422}  # 400: OpenAI's route, where the others answer 422

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(st.text(max_size=10), inner, max_size=5)),
                           max_leaves=20)
# texts include lone surrogates, control characters and astral-plane emoji
texts = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60)
posts = texts.filter(bool)  # an empty string is refused (as TEI and OpenAI do): no valid input
inputs = st.one_of(texts, st.lists(texts, max_size=LIMITS["max_inputs"] + 2), json_values,
                   st.lists(st.one_of(texts, json_values), min_size=1, max_size=4))


def _fields(required: str, names_values: dict):
    """Bodies that mostly have valid values (so most reach the model) and sometimes any JSON."""
    mostly = {k: st.one_of(v, v, v, json_values) for k, v in names_values.items()}
    return st.fixed_dictionaries({required: mostly.pop(required)}, optional=mostly)


valid_inputs = st.one_of(posts, st.lists(posts, min_size=1, max_size=8))
v1_bodies = _fields("input", {"input": st.one_of(valid_inputs, inputs), "model": st.text(max_size=20),
                     "encoding_format": st.sampled_from(["float", "base64", "int8", ""]),
                     "dimensions": st.one_of(st.just(384), st.integers(-5, 2000)), "user": st.text(max_size=10)})
native_bodies = _fields("inputs", {"inputs": st.one_of(valid_inputs, inputs), "truncate": st.booleans(),
                                   "normalize": st.booleans(),
                                   "encoding": st.sampled_from(["float32", "int8", "binary", "bf16"])})


def _check(client, route, data: bytes):
    r = client.post(route, content=data, headers={"Content-Type": "application/json"})
    assert r.status_code in OK, (r.status_code, r.text[:500], data[:300])
    body = r.json()
    assert ("error" in body) == (r.status_code != 200)


def _dumps(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")  # lone surrogates as raw bytes too


@SETTINGS
@given(body=v1_bodies)
def test_fuzz_v1_embeddings_never_5xx(client, body):
    _check(client, "/v1/embeddings", _dumps(body))


@SETTINGS
@given(body=native_bodies)
def test_fuzz_embed_never_5xx(client, body):
    _check(client, "/embed_full", _dumps(body))


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200), json_values.map(_dumps)), route=st.sampled_from(
    ["/embed_full", "/v1/embeddings", "/embed", "/tokenize", "/decode"]))
def test_fuzz_arbitrary_bytes_never_5xx(client, data, route):
    _check(client, route, data)


def test_fuzzing_left_the_server_up(main_server, client):
    assert main_server.proc.poll() is None
    assert client.get("/ready").status_code == 200
    assert client.post("/embed_full", json={"inputs": ["after fuzzing"]}).status_code == 200
    counted = [line for line in client.get("/metrics").text.splitlines()
               if line.startswith("postemb_http_requests_total") and "embed" in line]
    assert counted and not [line for line in counted if 'status="5' in line], counted
    served = sum(float(line.split()[1]) for line in counted if 'status="200"' in line)
    assert served >= EXAMPLES // 2, counted  # the fuzzing reached the model, not only the parser
