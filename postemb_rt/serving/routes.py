"""The FastAPI app: one function per route, thin. Bodies are parsed by ``schemas``, the work is
done by ``runtime``, access by ``auth``, counting by ``metrics``."""

import asyncio
import base64
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Callable

from ..encode_options import truncate as truncate_rows
from . import encodings, tei
from .auth import REQUEST_ID_HEADER, Admission, Gate
from .config import ServeConfig
from .docs import add_docs
from .errors import CLIENT_CLOSED, ApiError, dumps, error_response, json_response
from .metrics import Metrics
from .registry import ModelRegistry
from .schemas import EmbedRequest, ErrorResponse, V1EmbeddingsRequest, body_doc
from .tei import (COMPUTE_HEADERS, TRUNCATED_HEADER, VERSION_HEADER, check_dimensions, compute_headers,
                  version_header)

log = logging.getLogger("postemb_rt.server")

RENDER_INLINE_VALUES = 16_384  # answers with more numbers are JSON-encoded off the event loop
_ERRORS = {
    400: "OpenAI's invalid_request_error (openai.BadRequestError): what the other routes answer 422, or 413 for "
         "a limit other than the body's bytes",
    401: "missing or wrong API key (`Authorization: Bearer <key>`)",
    404: "model_not_found: the request's `model` is none of the served models (a server with several; on "
         "/v1/models/{model}, any server)",
    408: "the request body did not arrive within body_timeout_s (the connection is closed)",
    413: "a size limit: body bytes, inputs per request, max_queued_tokens, or characters per post "
         "(max_input_chars) with truncate false or long_posts chunk",
    415: "the body is not declared JSON (Content-Type: application/json) or is compressed (Content-Encoding)",
    422: "malformed JSON, a wrong type, an empty list or string, an unknown field, or too long with truncate: "
         "false",
    429: "overloaded (batcher queue full or too slow to meet the request timeout, max_concurrent_requests in "
         "progress, or the bound on request bodies held); see Retry-After",
    503: "the model is loading or failed to load, a backend failure, a queue deadline, or shutting down",
}
_JSON_ANY = {"application/json": {"schema": {"type": "object"}}}


def base64_rows(vecs) -> list[str]:
    """float32 (n, dim) -> n base64 strings of little-endian float32 (OpenAI's ``base64``)."""
    return [base64.b64encode(r.tobytes()).decode("ascii") for r in vecs.astype("<f4", copy=False)]


async def _render(obj, values: int):
    """A 200 JSON answer (vectors as numpy arrays: ``errors.dumps``); a big one (rows x dim numbers)
    is encoded on a worker thread so that the event loop keeps accepting and answering meanwhile."""
    if values <= RENDER_INLINE_VALUES:
        return json_response(200, obj)
    from fastapi import Response

    return Response(await asyncio.to_thread(dumps, obj), media_type="application/json")


def _openai_status(err: ApiError) -> ApiError:
    """OpenAI's status for a refused request: 400 (``openai.BadRequestError``) for what the other
    routes answer 422, and for every size limit but the body's bytes (413 there, as a proxy's)."""
    if err.status == 422 or (err.status == 413 and err.body.get("code") != "max_body_bytes"):
        err.status = 400
    return err


def _responses(*codes: int, ok: dict | None = None) -> dict:
    """OpenAPI ``responses`` of a route: its 200 body, then each error status it can answer
    (all ``schemas.ErrorResponse``)."""
    out = {200: {"description": "OK", "content": ok or _JSON_ANY}}
    for c in codes:
        out[c] = {"description": _ERRORS[c], "model": ErrorResponse}
    return out


def _get_and_head(app, path: str, endpoint, responses: dict, name: str | None = None) -> None:
    """``GET path`` in the OpenAPI spec, and ``HEAD path`` (probes) beside it but left out of the spec: one
    route with both methods gives both operations one operationId (FastAPI's "Duplicate Operation ID"),
    which breaks OpenAPI code generators; FastAPI's own GET routes do not list HEAD either."""
    from fastapi import Response

    app.add_api_route(path, endpoint, methods=["GET"], response_class=Response, responses=responses, name=name)
    app.add_api_route(path, endpoint, methods=["HEAD"], response_class=Response, name=name, include_in_schema=False)


def create_app(cfg: ServeConfig | None = None, load_encoder: Callable | None = None):
    """The FastAPI app. The models load on a thread when the app starts (lifespan); their
    batchers are drained when it stops. ``app.state.models`` is the
    :class:`~postemb_rt.serving.registry.ModelRegistry`, ``app.state.runtime`` the default model's
    :class:`~postemb_rt.serving.runtime.Runtime` (the only one, unless ``cfg.model`` lists several)."""
    from fastapi import FastAPI, Request, Response
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    cfg = cfg or ServeConfig()
    models = ModelRegistry(cfg, load_encoder)
    rt = models.default  # the default model: TEI's routes, and requests without a `model` field
    multi = models.multi
    KEYED = (401,) if cfg.api_key else ()  # a route behind the API key can answer 401
    EMBED_ERRORS = (*KEYED, *((404,) if multi else ()), 408, 413, 415, 422, 429, 503)
    V1_ERRORS = (*KEYED, 400, *((404,) if multi else ()), 408, 413, 415, 429, 503)
    metrics = Metrics(models)
    admission = Admission(cfg, metrics, models.retry_after_s)

    @asynccontextmanager
    async def lifespan(app):
        def load():
            models.load()
            metrics.batchers.wake.set()  # with --workers N: the others' /ready and /metrics see it at once

        loader = threading.Thread(target=load, name="postemb-load", daemon=True)
        loader.start()
        stop_publishing = metrics.start_publishing()  # with --workers N: this worker's numbers for the others
        yield
        await asyncio.to_thread(loader.join)
        await asyncio.to_thread(models.close)
        if stop_publishing:
            await asyncio.to_thread(stop_publishing)

    app = FastAPI(title="postemb_rt embedding server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False)  # /embed/ is a 404, as TEI's (a 307 to http:// broke behind TLS)
    add_docs(app, app.title)  # Swagger UI from a PyPI package: works offline
    app.state.runtime, app.state.models = rt, models

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return json_response(exc.status_code, {"error": {"message": str(exc.detail), "type": "invalid_request_error",
                                                         "param": None, "code": str(exc.status_code)}},
                             getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request, exc):  # not a server error: nobody reads this answer
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def _bug(request, exc):  # a server bug, never a client mistake: logged, answered as JSON
        log.exception("unhandled error on %s", request.url.path)
        return json_response(500, {"error": {"message": f"Internal error: {type(exc).__name__}.",
                                             "type": "server_error", "param": None, "code": "internal"}})

    async def v1_embeddings(request: Request):
        started = time.monotonic()
        try:
            # in text-embeddings-inference's series too: TEI counts this route
            async with admission.parsed(request, V1EmbeddingsRequest, started, "input") as (t, req):
                t.embedding(len(req.input))
                return await _v1_embeddings(req, started)
        except ApiError as err:
            raise _openai_status(err) from None

    for path in ("/v1/embeddings", "/embeddings"):  # the second: an OpenAI client whose base_url lacks /v1 (TEI too)
        app.add_api_route(path, v1_embeddings, methods=["POST"], openapi_extra=body_doc(V1EmbeddingsRequest),
                          response_class=Response, responses=_responses(*V1_ERRORS),
                          name="v1_embeddings" if path.startswith("/v1") else "embeddings")

    async def _v1_embeddings(req, started: float):
        m = models.resolve(req.model)  # one model: `model` is ignored, as it always was
        enc = m.require_encoder()
        dim = check_dimensions(enc, req.dimensions)
        vecs, tokens, truncated = await m.embed(req.input, "input", truncate=True, normalize=True,
                                                prompt_name=req.prompt_name)
        if dim < enc.dim:  # a declared prefix (the model's truncate_dim when none is asked): re-normalised
            vecs = truncate_rows(vecs, dim, True)
        if req.embedding_type != "float":  # as /embed_full's `encoding`: the model's calibrated ranges, packed bits
            ranges = await m.ranges_at(dim) if req.embedding_type in ("int8", "uint8") else None
            q = await m.off_loop(encodings.quantize, vecs, req.embedding_type, ranges)
            rows = list(q)  # encoding_format float: base64 (float32's) is refused with them (schemas)
        else:
            rows = list(vecs) if req.encoding_format == "float" else base64_rows(vecs)
        data = [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)]
        # `truncated`: indices of inputs cut to max_length; `vector_version`: the version of these vectors, the
        # precision and the `dimensions` prefix included (OpenAI clients keep unknown fields, in model_extra)
        version = m.vector_version(dim)
        resp = await _render({"object": "list", "data": data, "model": m.name, "vector_version": version,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "truncated": truncated},
                             vecs.size if req.encoding_format == "float" else 0)
        resp.headers[TRUNCATED_HEADER] = str(len(truncated))
        version_header(resp, version)
        compute_headers(resp, started, req.input, tokens)
        return resp

    @app.post("/embed_full", openapi_extra=body_doc(EmbedRequest), response_class=Response,
              responses=_responses(*EMBED_ERRORS))
    async def embed_full(request: Request):
        started = time.monotonic()
        async with admission.parsed(request, EmbedRequest, started) as (t, req):  # in TEI's series too
            t.embedding(len(req.inputs))
            return await _embed(req, started)

    async def _embed(req, started: float):
        long_posts = req.long_posts or cfg.long_posts
        m = models.resolve(req.model)
        enc = m.require_encoder()
        dim = check_dimensions(enc, req.dimensions)
        chunk_stats = {"chunked": 0, "windows": 0}
        vecs, tokens, truncated = await m.embed(req.inputs, "inputs", truncate=req.truncate, normalize=req.normalize,
                                                long_posts=long_posts, chunk_stats=chunk_stats,
                                                prompt_name=req.prompt_name,
                                                truncation_direction=req.truncation_direction)
        if dim < enc.dim:  # a declared prefix (the model's truncate_dim by default), as on /v1/embeddings
            vecs = truncate_rows(vecs, dim, req.normalize)
        version = m.vector_version(dim, long_posts, req.truncation_direction)
        out = {"model": m.name, "vector_version": version, "dim": dim, "encoding": req.encoding,
               "normalized": req.normalize}
        if req.encoding in ("binary", "ubinary"):
            out.update(bytes_per_row=(dim + 7) // 8, bit_order="big")
        if req.encoding == "float32":
            out["embeddings"] = vecs
        else:  # as Encoder.encode(precision=...), the model's ranges (GET /info); off the loop: the first
            # call imports sentence-transformers (and torch), which a float32-only server never loads
            ranges = await m.ranges_at(dim) if req.encoding in ("int8", "uint8") else None
            out["embeddings"] = await m.off_loop(encodings.quantize, vecs, req.encoding, ranges)
        out.update(truncated=truncated, long_posts=long_posts, **chunk_stats,
                   usage={"prompt_tokens": tokens, "total_tokens": tokens})
        resp = await _render(out, vecs.size)
        version_header(resp, version)
        compute_headers(resp, started, req.inputs, tokens)
        return resp

    async def v1_models():  # OpenAI clients and tools list models before using one
        for m in models.runtimes:  # 503 until every model is loaded (an unnamed one's name is its version)
            m.require_encoder()
        return json_response(200, {"object": "list", "data": [_model_card(m, models) for m in models.runtimes]})

    async def v1_model(model: str):  # OpenAI's models.retrieve: a served name or an alias (registry)
        for m in models.runtimes:  # 503 until every model is loaded, as /v1/models
            m.require_encoder()
        return json_response(200, _model_card(models.resolve(model, exact=True), models))

    for prefix in ("/v1", ""):  # "": a client whose base_url lacks /v1, as /embeddings
        _get_and_head(app, f"{prefix}/models", v1_models, _responses(*KEYED, 503), f"{prefix[1:]}_models".lstrip("_"))
        _get_and_head(app, f"{prefix}/models/{{model:path}}", v1_model, _responses(*KEYED, 404, 503),
                      f"{prefix[1:]}_model".lstrip("_"))

    async def health():
        return json_response(200, {"status": "ok"})

    for path in ("/health", "/ping", "/"):  # liveness; /ping and GET / are TEI's (SageMaker's, load balancers')
        _get_and_head(app, path, health, responses=_responses(), name=f"health{path.replace('/', '_')}")

    async def ready():
        # Unauthenticated: a reason code only; the details are in the log (and /info, with the key).
        # 200 only when every model is loaded, warmed up and healthy.
        if models.load_error:
            return json_response(503, {"status": "failed", "reason": "model_load_failed"})
        if not models.loaded:
            return json_response(503, {"status": "loading", "reason": "loading"}, {"Retry-After": "1"})
        for m in models.runtimes:
            if m.backend_error is not None and not await m.probe():
                log.warning("/ready: backend of model %r still failing: %s", m.name, m.backend_error)
                return json_response(503, {"status": "unhealthy", "reason": "backend_error",
                                           **({"model": m.name} if multi else {})})
        if metrics.shared_dir:  # --workers N: a worker still loading would answer 503 to the requests it accepts
            ready_workers, workers = metrics.batchers.workers_ready()
            if ready_workers < workers:
                return json_response(503, {"status": "loading", "reason": "workers_loading",
                                           "workers_ready": ready_workers, "workers": workers}, {"Retry-After": "1"})
        return json_response(200, {"status": "ready", "model": rt.name, "models": models.names()})

    _get_and_head(app, "/ready", ready, responses=_responses(503))

    async def info():  # ours and text-embeddings-inference's fields, of the default model; then every model
        out = {**rt.info(), **tei.info_fields(rt), "ready": models.loaded, "limits": cfg.public(),
               "models": models.describe()}
        if multi and models.load_error:  # which model failed, or a clash of served names
            out["load_error"] = models.load_error
        return json_response(200, out)

    _get_and_head(app, "/info", info, responses=_responses(*KEYED))

    async def prometheus_metrics():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    _get_and_head(app, "/metrics", prometheus_metrics,
                  responses=_responses(*KEYED, ok={CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}))

    tei.add_routes(app, cfg, rt, admission, _render, KEYED)
    app.add_middleware(Gate, runtime=rt, metrics=metrics)
    if cfg.cors_origins:  # outside the Gate (added last): a browser's preflight carries no API key
        from starlette.middleware.cors import CORSMiddleware

        # any request header: the origins are the gate, and SDKs add their own on every request (the openai
        # JS client's x-stainless-*), which a fixed list refuses in the preflight, so the browser never sends it
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST", "HEAD"],
                           allow_headers=["*"], expose_headers=[TRUNCATED_HEADER, VERSION_HEADER, *COMPUTE_HEADERS,
                                                                "Retry-After", "retry-after-ms", REQUEST_ID_HEADER])
    return app


def app_from_env():
    """uvicorn factory for ``--workers N`` (each worker process loads its own model): reads
    the config that ``postemb serve`` put in ``POSTEMB_SERVE_CONFIG`` (JSON). A worker whose
    model fails to load writes the error to ``POSTEMB_SERVE_FATAL_FILE`` and stops the
    supervisor (SIGTERM to its parent), which then exits 1, as one worker would."""
    import os
    import signal

    from .connections import configure

    cfg = ServeConfig(**json.loads(os.environ["POSTEMB_SERVE_CONFIG"]))
    configure(cfg)  # this worker's connection limits
    app = create_app(cfg)
    models, fatal_file = app.state.models, os.environ.get("POSTEMB_SERVE_FATAL_FILE")

    def stop_everything():
        if fatal_file:
            with open(fatal_file, "a", encoding="utf-8") as f:
                f.write(f"{models.load_error}\n")
        os.kill(os.getppid(), signal.SIGTERM)  # uvicorn's supervisor: stop every worker and exit

    models.on_fatal = stop_everything
    models.on_loaded = lambda: print(f"postemb serve: worker {os.getpid()} ready: {models.summary()}", flush=True)
    return app


def _model_card(m, models: ModelRegistry) -> dict:
    """One served model as OpenAI's ``/v1/models`` lists it (``id``: its served name; ``aliases``, ours: the
    other names a request may give it by, e.g. the ``--model`` typed; the ``openai`` client keeps it in
    ``model_extra``). Listed once, not once per alias: tools that list models then offer each one once."""
    return {"id": m.name, "object": "model", "created": int(m.started), "owned_by": "postemb_rt",
            "aliases": models.aliases(m)}
