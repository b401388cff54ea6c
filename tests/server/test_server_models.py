"""Several models in one server (``postemb serve --model base --model small=default``): the request's
``model`` picks one (OpenAI's semantics, with the real ``openai`` client), ``/v1/models`` lists
them, ``/ready`` waits for every one, two models under one served name are refused, and
``$POSTEMB_MODEL`` takes a comma-separated list for ``serve`` only."""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import assert_exact
from tests.server.conftest import (API_KEY, TEXTS as SERVER_TEXTS, ServerProc, ready_until_done, require_serve_extra,
                                   serve_argv)

httpx = require_serve_extra()
openai = pytest.importorskip("openai", reason="the [test] extra installs openai")

from postemb_rt import cli  # noqa: E402
from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.serving.config import ServeConfig  # noqa: E402
from postemb_rt.serving.errors import ApiError  # noqa: E402
from postemb_rt.serving.registry import ModelRegistry  # noqa: E402
from postemb_rt.serving.routes import create_app  # noqa: E402
from postemb_rt.serving.runtime import Runtime  # noqa: E402

TEXTS = SERVER_TEXTS[:6]

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def two_models():
    """base (unnamed: served as its model_version; the default) and small=default (50-d)."""
    yield from ready_until_done(ServerProc(serve_argv("--model", "small=default"), env={"POSTEMB_API_KEY": API_KEY}))


@pytest.fixture(scope="module")
def encoders(two_models):
    from postemb_rt import Encoder

    return {"base": Encoder.from_pretrained("base", backend="onnxruntime", device="cpu"),
            "small": Encoder.from_pretrained("default", backend="onnxruntime", device="cpu")}


@pytest.fixture(scope="module")
def oai(two_models):
    return openai.OpenAI(base_url=two_models.url + "/v1", api_key=API_KEY, max_retries=0)


def test_openai_client_gets_the_model_it_names(oai, encoders):
    base_version, small_version = encoders["base"].model_version, encoders["small"].model_version
    assert encoders["base"].dim != encoders["small"].dim  # 384 and 50: a wrong pick cannot pass
    for asked, key, answered in ((base_version, "base", base_version), ("small", "small", "small"),
                                 (small_version, "small", "small")):  # a served name, or a model_version
        r = oai.embeddings.create(model=asked, input=TEXTS, encoding_format="float")
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        assert got.shape == (len(TEXTS), encoders[key].dim), asked
        assert_exact(got, encoders[key].encode(TEXTS))
        assert r.model == answered


def test_the_model_an_operator_typed_is_an_alias(two_models, oai, encoders):
    """`--model base --model small=default`: requests naming "base" (what the operator typed; the model is
    served as its model_version) were a 404; now it is an alias, for /v1/embeddings and models.retrieve.
    /v1/models lists each model once (``id``: its served name) with its ``aliases``; "default" stays
    unknown here (that model was given the NAME small)."""
    base_version, small_version = encoders["base"].model_version, encoders["small"].model_version
    r = oai.embeddings.create(model="base", input=TEXTS, encoding_format="float")
    assert r.model == base_version
    assert_exact(np.array([d.embedding for d in r.data], dtype=np.float32), encoders["base"].encode(TEXTS))
    assert oai.models.retrieve("base").id == base_version and oai.models.retrieve(small_version).id == "small"
    assert [(m.id, m.model_extra["aliases"]) for m in oai.models.list()] == [
        (base_version, ["base"]), ("small", [small_version])]
    info = httpx.get(two_models.url + "/info", headers=AUTH).json()
    assert [m["aliases"] for m in info["models"]] == [["base"], [small_version]]
    with pytest.raises(openai.NotFoundError, match=r"'default' does not exist on this server"):
        oai.embeddings.create(model="default", input="a post")


def test_no_model_field_gets_the_default_model_as_do_tei_routes(two_models, encoders):
    with httpx.Client(base_url=two_models.url, headers=AUTH, timeout=60) as c:
        r = c.post("/v1/embeddings", json={"input": TEXTS})
        assert r.status_code == 200 and r.json()["model"] == encoders["base"].model_version
        assert_exact(np.array([d["embedding"] for d in r.json()["data"]], np.float32), encoders["base"].encode(TEXTS))
        assert_exact(np.array(c.post("/embed", json={"inputs": TEXTS}).json(), np.float32),
                     encoders["base"].encode(TEXTS))
        full = c.post("/embed_full", json={"inputs": TEXTS, "model": "small"}).json()
        assert full["model"] == "small" and full["dim"] == encoders["small"].dim
        assert full["vector_version"] == encoders["small"].vector_version
        assert_exact(np.array(full["embeddings"], np.float32), encoders["small"].encode(TEXTS))


def test_an_unknown_model_is_openais_404_model_not_found(two_models, oai, encoders):
    with pytest.raises(openai.NotFoundError) as info:
        oai.embeddings.create(model="text-embedding-3-small", input="a post")
    err = info.value
    assert err.status_code == 404 and err.code == "model_not_found" and err.param == "model"
    assert "text-embedding-3-small" in err.message and "small" in err.message
    assert encoders["base"].model_version in err.message  # the served names
    r = httpx.post(two_models.url + "/embed_full", json={"inputs": ["a post"], "model": "nope"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_v1_models_ready_info_and_metrics_name_every_model(two_models, oai, encoders):
    names = [encoders["base"].model_version, "small"]
    assert [m.id for m in oai.models.list()] == names
    assert [oai.models.retrieve(n).id for n in names] == names  # OpenAI's models.retrieve
    with pytest.raises(openai.NotFoundError, match=r"'default' does not exist on this server"):
        oai.models.retrieve("default")
    ready = httpx.get(two_models.url + "/ready").json()
    assert ready == {"status": "ready", "model": names[0], "models": names}
    info = httpx.get(two_models.url + "/info", headers=AUTH).json()
    assert info["model_id"] == info["model"] == names[0] and info["dim"] == encoders["base"].dim  # the default's
    assert [(m["name"], m["dim"], m["default"], m["ready"]) for m in info["models"]] == [
        (names[0], encoders["base"].dim, True, True), ("small", encoders["small"].dim, False, True)]
    assert info["limits"]["model"] == ["base", "small=default"]
    spec = httpx.get(two_models.url + "/openapi.json", headers=AUTH).json()["paths"]
    assert "404" in spec["/v1/embeddings"]["post"]["responses"] and "404" in spec["/embed_full"]["post"]["responses"]
    assert "model" in spec["/embed_full"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    oai.embeddings.create(model="small", input="counted")
    text = httpx.get(two_models.url + "/metrics", headers=AUTH).text
    assert 'postemb_ready{model="small"} 1.0' in text and f'postemb_ready{{model="{names[0]}"}} 1.0' in text
    computed = [line for line in text.splitlines()
                if line.startswith('postemb_batcher_posts_computed_total{model="small"}')]
    assert computed and float(computed[0].split()[1]) >= 1


# -- in process: names, readiness, failures ------------------------------------------------


def test_two_models_under_one_name_are_refused_at_start():
    with pytest.raises(ValidationError, match=r"`--model` serves two models as 'a': 'a=default' and 'a=base'.*Fix: "):
        ServeConfig(model=["a=default", "a=base"])
    with pytest.raises(ValidationError, match=r"`--model` names 'base' twice without a NAME.*Fix: .*NAME=MODEL"):
        ServeConfig(model=["base", "base"])
    with pytest.raises(ValidationError, match=r"empty NAME"):
        ServeConfig(model=["=default"])
    argv = [sys.executable, "-m", "postemb_rt.cli", "serve", "--model", "a=default", "--model", "a=base", "--port", "0"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "serves two models as 'a'" in out.stderr, out


def test_name_model_entries_split_at_the_first_equals_sign_before_any_slash():
    assert ServeConfig(model=["default", "v4=/runs/v4", "./runs/lr=2e-5", "x=a=b"]).model_specs() == [
        (None, "default"), ("v4", "/runs/v4"), (None, "./runs/lr=2e-5"), ("x", "a=b")]
    assert ServeConfig().model_specs() == [(None, "default")]


class _Enc:
    """What ModelRegistry reads of a loaded encoder."""

    def __init__(self, version):
        self.model_version = version

    def close(self):
        pass


@pytest.fixture
def fake_loads(monkeypatch):
    """Runtime.load replaced: model "slow" waits for ``release``, "broken" fails, ``versions`` maps a
    model to its model_version (default: "<model>-v1")."""
    release, versions = threading.Event(), {}

    def load(self):  # Runtime.load's contract: encoder, name and ready, or load_error
        if self.cfg.model == "slow":
            release.wait(10)
        if self.cfg.model == "broken":
            self.load_error = "OSError: no such model"
            return
        self.encoder = _Enc(versions.get(self.cfg.model, f"{self.cfg.model}-v1"))
        self.name = self.name or self.encoder.model_version
        self.ready = True

    monkeypatch.setattr(Runtime, "load", load)
    return release, versions


def _wait(cond, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_ready_is_200_only_once_every_model_is_loaded(fake_loads):
    from starlette.testclient import TestClient

    release, _ = fake_loads
    app = create_app(ServeConfig(model=["first", "two=slow"]))
    with TestClient(app) as c:
        _wait(lambda: app.state.runtime.ready, "the first model to load")
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["reason"] == "loading"
        r = c.post("/v1/embeddings", json={"input": "x", "model": "first-v1"})  # a version: known once loaded
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        release.set()
        _wait(lambda: c.get("/ready").status_code == 200, "/ready to turn 200")
        assert c.get("/ready").json()["models"] == ["first-v1", "two"]


def test_lookup_by_served_name_or_version_and_one_model_ignores_the_field(fake_loads):
    models = ModelRegistry(ServeConfig(model=["first", "two=second"]))
    assert models.resolve(None) is models.default and models.resolve("two") is models.runtimes[1]
    with pytest.raises(ApiError) as info:
        models.resolve("first-v1")  # not loaded yet: it might be the first model's version
    assert info.value.status == 503
    models.load()
    assert models.resolve("first-v1") is models.default and models.resolve("second-v1") is models.runtimes[1]
    with pytest.raises(ApiError) as info:
        models.resolve("third")
    assert info.value.status == 404 and info.value.body["code"] == "model_not_found"
    assert "'third'" in info.value.body["message"] and "['first-v1', 'two']" in info.value.body["message"]
    one = ModelRegistry(ServeConfig(model="first"))
    assert one.resolve("anything") is one.default  # as before: clients that hard-code a name keep working


def test_aliases_name_one_model_only_and_served_names_win(fake_loads):
    """An alias (the MODEL typed without a NAME, a model_version) answers only when it names one model: a
    served name wins over another model's alias, and a model_version two named models share is a 404
    naming both. With one model any name embeds, but /v1/models/{id} (``exact``) takes only its names."""
    _, versions = fake_loads
    models = ModelRegistry(ServeConfig(model=["first", "default=second", "default"]))
    models.load()
    first, named, typed = models.runtimes
    assert models.resolve("first") is first and models.resolve("default") is named  # the NAME, not the alias
    assert models.resolve("default-v1") is typed and models.aliases(typed) == []
    assert [models.aliases(m) for m in models.runtimes] == [["first"], ["second-v1"], []]
    versions.update({"x": "v", "y": "v"})
    shared = ModelRegistry(ServeConfig(model=["a=x", "b=y"]))
    shared.load()
    with pytest.raises(ApiError) as info:
        shared.resolve("v")
    assert info.value.status == 404 and info.value.body["code"] == "model_not_found"
    assert "'v' names 2 served models: ['a', 'b']" in info.value.body["message"]
    assert "Fix: send one of their served names" in info.value.body["message"]
    assert shared.aliases(shared.runtimes[0]) == []
    one = ModelRegistry(ServeConfig(model="first"))
    one.load()
    assert one.resolve("text-embedding-3-small") is one.default  # OpenAI clients' default model name
    assert one.resolve("first", exact=True) is one.resolve("first-v1", exact=True) is one.default
    with pytest.raises(ApiError) as info:
        one.resolve("text-embedding-3-small", exact=True)
    assert info.value.status == 404


@pytest.mark.parametrize("model, versions, error", [
    (["a", "broken"], {}, "the model 'broken' failed to load: OSError: no such model"),
    (["a", "./copy-of-a"], {"./copy-of-a": "a-v1"}, "two models are served as 'a-v1': --model 'a' and --model "
                                                    "'./copy-of-a'"),
])
def test_a_model_that_fails_or_clashes_fails_the_server(fake_loads, model, versions, error):
    from starlette.testclient import TestClient

    fake_loads[1].update(versions)
    app = create_app(ServeConfig(model=model))
    fatal = []
    app.state.models.on_fatal = lambda: fatal.append(app.state.models.load_error)
    with TestClient(app) as c:
        _wait(lambda: fatal, "the server to fail")
        assert c.get("/ready").json() == {"status": "failed", "reason": "model_load_failed"}
    assert error in fatal[0], fatal
    if "two models" in error:
        assert "Fix: name them, --model NAME=MODEL" in fatal[0]


# -- $POSTEMB_MODEL ----------------------------------------------------------------------------


def test_postemb_model_is_a_list_for_serve_and_refused_as_one_by_one_model_commands(capsys):
    from postemb_rt.commands.serve import config_from_args

    env = {"POSTEMB_MODEL": "default, small=base", "POSTEMB_INPUT": "in/", "POSTEMB_OUTPUT": "out/"}
    parser = cli.build_parser(environ=env)
    assert config_from_args(parser.parse_args(["serve"])).model == ["default", "small=base"]
    assert config_from_args(parser.parse_args(["serve", "--model", "base"])).model == "base"  # the command line wins
    assert config_from_args(parser.parse_args(["serve", "--model", "a=base", "--model", "default"])).model == [
        "a=base", "default"]
    assert parser.parse_args(["backfill", "--model", "base"]).model == "base"
    for command in (["backfill"], ["nearline"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(command)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert (f"$POSTEMB_MODEL holds 2 values, a list for `postemb serve`; `postemb {command[0]}` takes one. "
                "Given: 'default, small=base'. Fix: set POSTEMB_MODEL to one value") in err, err
    one = cli.build_parser(environ={"POSTEMB_MODEL": "base"})
    assert one.parse_args(["nearline"]).model == one.parse_args(["serve"]).model == "base"


@pytest.mark.parametrize("k", [32, 16, 8])
def test_dimensions_serves_the_nested_prefixes_a_model_declares(two_models, oai, encoders, k):
    """``default`` (v4) declares matryoshka_dims [32, 16, 8]: ``dimensions`` from the openai client
    answers Encoder.encode(truncate_dim=k) (the prefix re-normalised), and /info lists the allowed
    dims; base, trained for none, still refuses them. The TEI route: the next test."""
    small = encoders["small"]
    want = small.encode(TEXTS, truncate_dim=k)
    r = oai.embeddings.create(model="small", input=TEXTS, dimensions=k, encoding_format="float")
    assert_exact(np.array([d.embedding for d in r.data], dtype=np.float32), want)
    b64 = oai.embeddings.create(model="small", input=TEXTS, dimensions=k)  # the client's default: base64
    assert_exact(np.array([d.embedding for d in b64.data], dtype=np.float32), want)
    with httpx.Client(base_url=two_models.url, headers=AUTH, timeout=60) as c:
        bits = c.post("/v1/embeddings", json={"model": "small", "input": TEXTS, "dimensions": k,
                                              "embedding_type": "ubinary"}).json()["data"]
        assert [len(d["embedding"]) for d in bits] == [(k + 7) // 8] * len(TEXTS)
        for kind in ("int8", "uint8"):  # the prefix's own calibrated ranges (a 500 once), as encode(precision=)
            q = c.post("/v1/embeddings", json={"model": "small", "input": TEXTS, "dimensions": k,
                                               "embedding_type": kind, "encoding_format": "float"})
            assert q.status_code == 200, q.text[:300]
            assert np.array_equal(np.array([d["embedding"] for d in q.json()["data"]]),
                                  small.encode(TEXTS, truncate_dim=k, precision=kind).astype(np.int64))
        listed = {m["name"]: m["dimensions"] for m in c.get("/info").json()["models"]}
        assert listed["small"] == [8, 16, 32, 50] and listed[encoders["base"].model_version] == [384]
        refused = c.post("/v1/embeddings", json={"model": "small", "input": TEXTS, "dimensions": 12})
        assert refused.status_code == 400 and "[8, 16, 32, 50]" in refused.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match=r"must be one of \[384\]"):
        oai.embeddings.create(model=encoders["base"].model_version, input=TEXTS, dimensions=k)


def test_tei_dimensions_serves_a_declared_prefix(encoders):
    """TEI's ``/embed`` serves the server's default model: with ``default`` (v4) there, ``dimensions``
    16 answers encode(truncate_dim=16), normalised or not as asked; an undeclared dim is TEI's 413 Validation."""
    from starlette.testclient import TestClient

    app = create_app(ServeConfig(model="default", backend="onnxruntime", precision="fp32"))
    with TestClient(app) as c:
        _wait(lambda: app.state.runtime.ready, "the default model to load", timeout=120)
        small = encoders["small"]
        got = c.post("/embed", json={"inputs": TEXTS, "dimensions": 16})
        assert_exact(np.array(got.json(), np.float32), small.encode(TEXTS, truncate_dim=16))
        raw = c.post("/embed", json={"inputs": TEXTS, "dimensions": 16, "normalize": False})
        assert_exact(np.array(raw.json(), np.float32), small.encode(TEXTS, truncate_dim=16, normalize=False))
        refused = c.post("/embed", json={"inputs": TEXTS, "dimensions": 12})
        assert refused.status_code == 413 and refused.json()["error_type"] == "Validation"
        assert "[8, 16, 32, 50]" in refused.json()["error"]


def test_cors_is_off_by_default_and_answers_preflights_before_the_key_when_on(fake_loads):
    """--cors-origin: a browser app on that origin may call the API (its preflight carries no key, so
    it is answered before the API key check); another origin gets no CORS headers; without the flag,
    none at all (browsers refuse cross-origin calls)."""
    from starlette.testclient import TestClient

    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    with TestClient(create_app(ServeConfig(model="m", api_key=API_KEY))) as c:
        assert "access-control-allow-origin" not in c.options("/v1/embeddings", headers=pre).headers
    app = create_app(ServeConfig(model="m", api_key=API_KEY, cors_origins=["https://app.example"]))
    with TestClient(app) as c:
        _wait(lambda: app.state.runtime.ready, "the model to load")
        r = c.options("/v1/embeddings", headers=pre)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        ok = c.get("/v1/models", headers={"Origin": "https://app.example", **AUTH})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-truncated-inputs" in ok.headers["access-control-expose-headers"].lower()
        assert c.get("/v1/models", headers={"Origin": "https://app.example"}).status_code == 401  # still keyed
        other = c.options("/v1/embeddings", headers={**pre, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


# what the `openai` JavaScript client (openai-node, in a browser) sends beside the key: a preflight must allow them
OPENAI_NODE_HEADERS = ("authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
                       "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
                       "x-stainless-runtime-version,x-stainless-timeout,x-request-id")


def test_cors_preflights_of_browser_sdks_pass_and_the_request_id_is_readable(fake_loads):
    """A browser app using the `openai` JS client sends its x-stainless-* headers on every request (and a
    client may send X-Request-ID): the preflight must allow them or the browser never sends the request
    ("Request header field x-stainless-os is not allowed by Access-Control-Allow-Headers"). The answer's
    X-Request-ID is readable by the page, as the other headers we add."""
    from starlette.testclient import TestClient

    app = create_app(ServeConfig(model="m", api_key=API_KEY, cors_origins=["https://app.example"]))
    with TestClient(app) as c:
        _wait(lambda: app.state.runtime.ready, "the model to load")
        pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": OPENAI_NODE_HEADERS}
        r = c.options("/v1/embeddings", headers=pre)
        assert r.status_code == 200, r.text
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert set(OPENAI_NODE_HEADERS.split(",")) <= allowed, allowed
        ok = c.get("/v1/models", headers={"Origin": "https://app.example", **AUTH})
        assert "x-request-id" in ok.headers["access-control-expose-headers"].lower()
        other = c.options("/v1/embeddings", headers={**pre, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_answers_name_a_bf16_and_nested_vector_version_as_the_encoder_does(monkeypatch):
    """With bf16 (`--precision auto` on a bf16-capable CPU) the vectors are ``<model>+bf16``, and with
    ``dimensions`` 16 ``<model>@16+bf16``: each answer says so exactly as the server's Encoder reports it
    (``vector_version_at``), in /v1/embeddings' body (the openai client's ``model_extra``) and header, and
    on TEI's /embed; /info agrees. The body said only ``"model": "postemb-mt50-v4"``."""
    from starlette.testclient import TestClient

    from postemb_rt.cpu import native_bf16

    if not native_bf16():
        pytest.skip("bf16 on OpenVINO needs a CPU with native bf16 (AVX512-BF16 or AMX)")
    monkeypatch.setenv("POSTEMB_FIDELITY_POSTS", "120")  # the bf16 gate on 120 posts, not 1,200: not checked here
    app = create_app(ServeConfig(model="default", backend="openvino", precision="bf16"))
    with TestClient(app) as c:
        _wait(lambda: app.state.runtime.ready, "the default model to load", timeout=180)
        enc = app.state.runtime.encoder
        assert enc.vector_version.endswith("+bf16")
        oa = openai.OpenAI(base_url=str(c.base_url) + "/v1", api_key="none", http_client=c, max_retries=0)
        for dims, want in ((None, enc.vector_version), (16, enc.vector_version_at(16))):
            kwargs = {} if dims is None else {"dimensions": dims}
            raw = oa.embeddings.with_raw_response.create(model="default", input=TEXTS, **kwargs)
            assert raw.parse().model_extra["vector_version"] == raw.headers["X-Vector-Version"] == want
            assert raw.parse().model == enc.model_version  # the served name: the version is the body's other field
            tei = c.post("/embed", json={"inputs": TEXTS, **kwargs})
            assert tei.headers["X-Vector-Version"] == want, tei.headers
        assert enc.vector_version_at(16) == f"{enc.model_version}@16+bf16"
        assert c.get("/info").json()["vector_version"] == enc.vector_version
