"""HTTP embedding server (``postemb serve``): FastAPI on uvicorn, every request on one
shared dynamic batcher.

Routes:
    POST /v1/embeddings  OpenAI-compatible: ``input`` (str | list[str]), ``model`` (any
                         string; the answer names the served model), ``encoding_format``
                         (float | base64), ``dimensions`` (only the model's own dim), ``user``
                         (ignored). Unknown fields are ignored, as OpenAI clients send extras.
    GET  /v1/models      the served model (OpenAI-compatible listing).
    POST /embed          native: ``inputs``, ``truncate`` (true), ``normalize`` (true),
                         ``encoding`` (float32 | int8 | binary), ``long_posts`` (truncate |
                         chunk; default ``--long-posts``; the answer counts ``chunked`` posts
                         and their ``windows``). Unknown fields are a 422.
    GET  /health         live (200 as soon as the process serves HTTP).
    GET  /ready          200 once the model is loaded and warmed up through the batcher, 503
                         while loading or after a backend failure (re-probed on each call);
                         the body gives a reason code only (details: the log, /info).
    GET  /info           model version, dim, backend, precision, limits, batcher options.
    GET  /metrics        Prometheus text: requests by route and status, request latency,
                         batcher queue depth (posts, tokens), batch size / padding ratio /
                         queue time / inference time histograms, batcher counters.

Errors are OpenAI-shaped JSON, ``{"error": {"message", "type", "param", "code", ...}}``;
limit errors add ``limit`` and ``given``. Client mistakes are 413 (a size limit) or 422
(malformed JSON, wrong type, empty list, naming the field and index), 401 (API key),
429 + ``Retry-After`` (batcher queue full, counted in tokens; or ``max_concurrent_requests``
embedding requests already in progress, answered before the body is read), 503 (model not
ready, backend failure for the requests in that batch only, queue deadline passed, shutting
down). A client that disconnects before its answer is counted and logged as 499 (nginx's
"client closed request"), never as a server error. Every status is in the OpenAPI spec.

int8 / binary (``/embed``): fixed calibration that depends only on the model's dim, never
on the request. int8: ``q = clip(rint(x / scale), -127, 127)`` with
``scale = min(1, 16 / sqrt(dim)) / 127`` (x ~= q * scale). A unit vector's components have
standard deviation about 1 / sqrt(dim); with the 384-d base model the largest component seen
is 5.9 / sqrt(dim) on 4000 short posts and 14.5 / sqrt(dim) on degenerate inputs ("" gives
8.0, "[CLS]" 14.5), so 16 / sqrt(dim) clips nothing seen; measured min cosine to float32 on
1000 short posts: 0.9992 (a 50-d model gets scale 1/127: no clipping possible at all).
binary: bit = (x > 0), packed 8 per byte, first component in the high bit
(``numpy.packbits``), ceil(dim / 8) bytes per row. Both need ``normalize: true``.

``dimensions``: neither the base encoder nor the fine-tuned model was trained for shortened
(Matryoshka) embeddings, so a prefix of the vector is not a meaningful embedding; only the
model's own dim is accepted.
"""

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from .errors import BatcherClosedError, DeadlineExceededError, OverloadedError, ValidationError

log = logging.getLogger("postemb_rt.server")

INT8_CLIP_SIGMAS = 16.0  # int8 clips at this many (1/sqrt(dim)) standard deviations
TOKENIZE_INLINE_CHARS = 16_384  # requests with more characters are tokenized off the event loop
RENDER_INLINE_VALUES = 16_384  # answers with more numbers are JSON-encoded off the event loop
PROBE_TIMEOUT_S = 10.0
OPEN_PATHS = frozenset({"/health", "/ready"})  # no API key needed (probes)
ADMITTED_PATHS = frozenset({"/v1/embeddings", "/embed"})  # bounded by max_concurrent_requests
CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before its answer
ROUTES = ("/v1/embeddings", "/v1/models", "/embed", "/health", "/ready", "/info", "/metrics", "/openapi.json", "/docs")
V1_ENCODINGS = ("float", "base64")
NATIVE_ENCODINGS = ("float32", "int8", "binary")
NATIVE_FIELDS = ("inputs", "truncate", "normalize", "encoding", "long_posts")


def int8_scale(dim: int) -> float:
    """The fixed int8 scale for a model of this dim: x ~= q * scale (see the module docstring)."""
    return min(1.0, INT8_CLIP_SIGMAS / math.sqrt(dim)) / 127.0


def quantize_int8(x: np.ndarray, scale: float) -> np.ndarray:
    """x: float32 (n, dim) unit rows -> int8 (n, dim)."""
    return np.clip(np.rint(x / scale), -127, 127).astype(np.int8)


def pack_binary(x: np.ndarray) -> np.ndarray:
    """x: float32 (n, dim) -> uint8 (n, ceil(dim / 8)): sign bits, first component in the high bit."""
    return np.packbits(x > 0, axis=1)


@dataclass
class ServeConfig:
    """What ``postemb serve`` runs; every limit is reported by ``GET /info``."""

    model: str = "default"
    backend: str = "auto"
    precision: str = "fp32"  # CPU: bf16 / int8 gated by measured fidelity (README "Fast precisions")
    api_key: str | None = None
    max_inputs: int = 256  # posts per request
    max_input_chars: int = 16_384  # characters per post (the model reads max_length tokens of it)
    max_body_bytes: int = 4 * 1024 * 1024
    # embedding requests (/v1/embeddings, /embed) in progress at once, body reading included;
    # past it a request gets 429 before its body is read. Bounds request memory at about
    # max_concurrent_requests * max_body_bytes (128 * 4 MiB = 512 MiB) whatever the number of
    # open connections; probes and /metrics are never refused.
    max_concurrent_requests: int = 128
    max_queued_tokens: int = 65_536  # batcher backpressure: past it, 429
    max_batch_size: int = 64
    max_wait_us: int = 500
    batch_overhead_tokens: int = 64  # a model call's fixed cost in padded tokens (batch grouping)
    request_timeout_s: float = 30.0  # a request still queued after this is a 503
    drain_timeout_s: float = 30.0  # SIGTERM: in-flight requests get this long to finish
    long_posts: str = "truncate"  # /embed's default: "truncate" or "chunk" (postemb_rt.long_posts)

    def public(self) -> dict:
        d = asdict(self)
        d["api_key"] = self.api_key is not None  # whether one is required, never the key
        return d


class ApiError(Exception):
    """An HTTP error answer: status, OpenAI-shaped body, optional headers."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, limit: Any = None, given: Any = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}
        self.body = {"message": message, "type": type, "param": param, "code": code}
        if limit is not None:
            self.body.update(limit=limit, given=given)


def _json_response(status: int, obj, headers: dict | None = None):
    from fastapi import Response

    return Response(json.dumps(obj, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


async def _render(obj, values: int):
    """A 200 JSON answer; a big one (rows x dim numbers, ~20 bytes each) is encoded on a worker
    thread so that the event loop keeps accepting and answering meanwhile."""
    if values <= RENDER_INLINE_VALUES:
        return _json_response(200, obj)
    from fastapi import Response

    body = await asyncio.to_thread(json.dumps, obj, separators=(",", ":"))
    return Response(body, media_type="application/json")


def _type_name(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _given(v) -> str:
    s = json.dumps(v, ensure_ascii=True)
    return s if len(s) <= 60 else s[:57] + "..."


# ---------------------------------------------------------------------------------------
# Request parsing: hand-written so that every error names the field, the index and the value.
# ---------------------------------------------------------------------------------------
async def _read_json(request, limit: int) -> dict:
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise ApiError(413, f"The request body is {int(cl)} bytes, more than max_body_bytes ({limit}).",
                       param="body", code="max_body_bytes", limit=limit, given=int(cl))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request body is more than max_body_bytes ({limit}) bytes.",
                           param="body", code="max_body_bytes", limit=limit, given=f">{limit}")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        obj = json.loads(body)
    except RecursionError:
        raise ApiError(422, "The request body nests JSON too deeply.", param="body", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise ApiError(422, f"The request body is not valid JSON: {exc}.", param="body",
                       code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(422, f"The request body must be a JSON object. Given: {_type_name(obj)}.", param="body",
                       code="invalid_type")
    return obj


def _texts(obj: dict, field: str, cfg: ServeConfig) -> list[str]:
    """obj[field] as a non-empty list of str within the limits."""
    if field not in obj:
        raise ApiError(422, f"`{field}` is required: a string or a list of strings.", param=field,
                       code="missing_field")
    value = obj[field]
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise ApiError(422, f"`{field}` must be a string or a list of strings. Given: {_type_name(value)} "
                            f"{_given(value)}.", param=field, code="invalid_type")
    if not value:
        raise ApiError(422, f"`{field}` must hold at least one string. Given: an empty list.", param=field,
                       code="empty_input")
    if len(value) > cfg.max_inputs:
        raise ApiError(413, f"`{field}` holds {len(value)} strings, more than max_inputs ({cfg.max_inputs}). "
                            "Fix: split the request.", param=field, code="max_inputs", limit=cfg.max_inputs,
                       given=len(value))
    for i, t in enumerate(value):
        if not isinstance(t, str):
            hint = (" Token-id arrays are not supported: send text." if isinstance(t, (int, list)) and
                    not isinstance(t, bool) else "")
            raise ApiError(422, f"`{field}[{i}]` must be a string. Given: {_type_name(t)} {_given(t)}.{hint}",
                           param=f"{field}[{i}]", code="invalid_type")
        if len(t) > cfg.max_input_chars:
            raise ApiError(413, f"`{field}[{i}]` is {len(t)} characters, more than max_input_chars "
                                f"({cfg.max_input_chars}).", param=f"{field}[{i}]", code="max_input_chars",
                           limit=cfg.max_input_chars, given=len(t))
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800" from JSON escapes
                raise ApiError(422, f"`{field}[{i}]` is not valid Unicode text: {exc.reason} at character "
                                    f"{exc.start}.", param=f"{field}[{i}]", code="invalid_text") from None
    return value


def _choice(obj: dict, field: str, allowed: tuple, default: str) -> str:
    v = obj.get(field, default)
    if v is None:
        return default
    if v not in allowed or not isinstance(v, str):
        raise ApiError(422, f"`{field}` must be one of {list(allowed)}. Given: {_given(v)}.", param=field,
                       code="invalid_value")
    return v


def _flag(obj: dict, field: str, default: bool) -> bool:
    v = obj.get(field, default)
    if not isinstance(v, bool):
        raise ApiError(422, f"`{field}` must be true or false. Given: {_type_name(v)} {_given(v)}.", param=field,
                       code="invalid_type")
    return v


# ---------------------------------------------------------------------------------------
# The runtime behind the routes: model, batcher, health, metrics.
# ---------------------------------------------------------------------------------------
class Runtime:
    """Loads the model (on a thread, so /health answers meanwhile), owns the batcher, tracks
    readiness and backend health. ``load_encoder``: () -> Encoder (tests inject faults here)."""

    def __init__(self, cfg: ServeConfig, load_encoder: Callable | None = None):
        self.cfg = cfg
        self._load_encoder = load_encoder or functools.partial(_default_encoder, cfg)
        self.encoder = None
        self.batcher = None
        self.ready = False
        self.load_error: str | None = None
        self.backend_error: str | None = None  # last backend failure; cleared by the next success
        self.on_fatal: Callable[[], None] = lambda: None  # set by `postemb serve`: stop the server
        self.started = time.time()
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    def load(self) -> None:
        from .batching import DynamicBatcher

        try:
            enc = self._load_encoder()
            # normalize=False on the batcher so /embed can serve raw vectors; rows are
            # normalised per request below (one pass over (n, dim) float32).
            batcher = DynamicBatcher(
                functools.partial(enc.backend.embed, normalize=False), pad_id=enc.tokenizer.pad_id,
                max_batch_tokens=enc.max_batch_tokens, max_batch_size=self.cfg.max_batch_size,
                max_wait_us=self.cfg.max_wait_us, max_queued_tokens=self.cfg.max_queued_tokens,
                batch_overhead_tokens=self.cfg.batch_overhead_tokens)
            with self._lock:
                if self._closed:  # shut down while loading
                    batcher.close()
                    enc.close()
                    return
                self.encoder, self.batcher = enc, batcher
            # warm-up through the whole path (tokenizer, batcher, backend)
            batcher.submit(enc.tokenizer(["warm-up post"]).ids).result(timeout=120)
            self.ready = True
            log.info("ready: %s", enc.describe())
        except Exception as exc:  # noqa: BLE001 - reported by /ready and the exit code
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("postemb serve: the model failed to load: %s", self.load_error)
            self.on_fatal()

    def close(self) -> None:
        """Drain the batcher (every queued request is computed), then release the model."""
        with self._lock:
            self._closed = True
            batcher, enc = self.batcher, self.encoder
        self.ready = False
        if batcher is not None:
            batcher.close(drain=True)
        if enc is not None:
            enc.close()

    def require_encoder(self):
        if not self.ready:
            if self.load_error:
                raise ApiError(503, f"The model failed to load: {self.load_error}", type="server_error",
                               code="model_load_failed")
            raise ApiError(503, "The model is still loading; retry shortly.", type="server_error",
                           code="loading", headers={"Retry-After": "1"})
        return self.encoder

    # -- one embedding request ---------------------------------------------------------
    async def embed(self, texts: list[str], field: str, truncate: bool, normalize: bool,
                    long_posts: str = "truncate", chunk_stats: dict | None = None):
        """Returns (float32 (n, dim) vectors in input order, tokens computed, truncated indices).
        long_posts="chunk": windows of long posts share the batcher, combined here
        (postemb_rt.long_posts); ``chunk_stats`` gets {"chunked", "windows"}."""
        enc = self.require_encoder()
        if long_posts == "chunk":
            return await self._embed_chunked(enc, texts, field, truncate, normalize, chunk_stats)
        if sum(map(len, texts)) > TOKENIZE_INLINE_CHARS:
            tok = await asyncio.to_thread(enc.tokenizer, texts, True)
        else:
            tok = enc.tokenizer(texts, True)
        if tok.truncated and not truncate:
            i = tok.truncated[0]
            raise ApiError(422, f"`{field}[{i}]` is longer than max_length ({enc.max_length} tokens) and truncate "
                                f"is false; {len(tok.truncated)} input(s) are too long. Fix: shorten them or send "
                                "truncate: true.", param=f"{field}[{i}]", code="max_length",
                           limit=enc.max_length, given=f">{enc.max_length}")
        vecs, tokens = await self._compute(tok.ids, field)
        if normalize:
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs, tokens, tok.truncated

    async def _embed_chunked(self, enc, texts, field, truncate, normalize, chunk_stats):
        from . import long_posts as lp

        try:
            chunks = lp.split(await asyncio.to_thread(enc.tokenizer.windows, texts, enc.chunk_overlap),
                              enc.max_chunks, truncate)
        except ValidationError as exc:
            raise ApiError(422, f"{exc}".replace("`texts[", f"`{field}["), param=field, code="max_chunks",
                           limit=enc.max_chunks) from None
        n = len(chunks.single_ids)
        vecs, tokens = await self._compute(chunks.single_ids + chunks.windows, field)
        out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
        single = vecs[:n]
        if normalize:
            single = single / np.maximum(np.linalg.norm(single, axis=1, keepdims=True), 1e-12)
        out[chunks.singles] = single
        if chunks.windows:
            posts, combined = lp.combine(vecs[n:], chunks, normalize)
            out[posts] = combined
        if chunk_stats is not None:
            chunk_stats.update(chunked=chunks.chunked, windows=len(chunks.windows))
        return out, tokens, chunks.truncated

    async def _compute(self, ids: list[list[int]], field: str):
        """Token-id lists through the batcher: (raw float32 (n, dim), tokens); errors as ApiError."""
        tokens = sum(map(len, ids))
        limit = self.cfg.max_queued_tokens
        if tokens > limit:
            raise ApiError(413, f"`{field}` is {tokens} tokens, more than max_queued_tokens ({limit}), so it can "
                                "never be queued. Fix: split the request.", param=field, code="max_queued_tokens",
                           limit=limit, given=tokens)
        try:
            fut = self.batcher.submit(ids, timeout=self.cfg.request_timeout_s)
        except OverloadedError as exc:
            retry = self.retry_after_s()
            raise ApiError(429, f"Overloaded: {exc}", type="overloaded", code="queue_full",
                           headers={"Retry-After": str(retry)}) from None
        except BatcherClosedError:
            raise ApiError(503, "The server is shutting down.", type="server_error", code="shutting_down") from None
        except ValidationError as exc:  # the batcher's own checks; the ones above should catch everything first
            raise ApiError(422, f"`{field}`: {exc}", param=field, code="invalid_value") from None
        try:
            vecs = await asyncio.wrap_future(fut)
        except DeadlineExceededError as exc:
            raise ApiError(503, f"Timed out in the queue: {exc}", type="server_error", code="timeout",
                           headers={"Retry-After": str(self.retry_after_s())}) from None
        except BatcherClosedError:
            raise ApiError(503, "The server is shutting down.", type="server_error", code="shutting_down") from None
        except Exception as exc:  # noqa: BLE001 - the backend failed this request's batch
            self.backend_error = f"{type(exc).__name__}: {exc}"
            log.error("backend failure (answered 503): %s", self.backend_error)
            raise ApiError(503, f"The model failed on the batch holding this request: {self.backend_error}",
                           type="server_error", code="backend_error") from None
        self.backend_error = None
        return vecs, tokens

    def retry_after_s(self) -> int:
        """Whole seconds until the queued tokens are computed at the rate measured so far (1..60)."""
        s = self.batcher.stats()
        busy = s["inference_seconds"]["sum"]
        rate = s["tokens_computed"] / busy if busy > 0 else 0.0
        return max(1, min(60, math.ceil(s["queued_tokens"] / rate))) if rate > 0 else 1

    async def probe(self) -> bool:
        """After a backend failure: one tiny request through the batcher; True if it worked."""
        try:
            fut = self.batcher.submit(self.encoder.tokenizer(["readiness probe"]).ids, timeout=PROBE_TIMEOUT_S)
            await asyncio.wrap_future(fut)
        except Exception as exc:  # noqa: BLE001
            self.backend_error = f"{type(exc).__name__}: {exc}"
            return False
        self.backend_error = None
        return True

    def info(self) -> dict:
        enc = self.encoder
        d = {"ready": self.ready, "limits": self.cfg.public(), "uptime_s": round(time.time() - self.started, 3)}
        if enc is not None:
            desc = enc.describe()
            if self.batcher is not None:
                desc["batcher"] = self.batcher.implementation
                d["batcher_options"] = self.batcher.options
            d.update(model=enc.model_version, dim=enc.dim, max_length=enc.max_length,
                     backend=desc.get("backend"), precision=desc.get("precision"), runtime=desc,
                     encodings={"float32": {}, "int8": {"scale": int8_scale(enc.dim)},
                                "binary": {"bytes_per_row": (enc.dim + 7) // 8, "bit_order": "big"}},
                     dimensions=[enc.dim])
        if self.load_error:
            d["load_error"] = self.load_error
        return d


def _default_encoder(cfg: ServeConfig):
    from .encoder import Encoder

    return Encoder.from_pretrained(cfg.model, backend=cfg.backend, precision=cfg.precision)


# ---------------------------------------------------------------------------------------
# Metrics: request counters from the gate below, batcher stats read at scrape time.
# ---------------------------------------------------------------------------------------
_BATCHER_GAUGES = ("queued_posts", "queued_tokens", "pending_requests", "in_flight_posts")
_BATCHER_COUNTERS = ("requests_submitted", "requests_ok", "requests_failed", "requests_expired",
                     "requests_rejected", "requests_cancelled", "requests_closed", "batches", "batches_failed",
                     "posts_computed", "tokens_computed", "padded_tokens_computed")
_BATCHER_HISTOGRAMS = {"batch_size": "posts per batch", "batch_padding_ratio": "padded share of a batch's slots",
                       "queue_seconds": "seconds a post waited in the batcher queue",
                       "inference_seconds": "seconds per model call"}


class _BatcherCollector:
    """prometheus-client custom collector over ``DynamicBatcher.stats()``."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        rt = self.runtime
        yield GaugeMetricFamily("postemb_ready", "1 when the model is loaded, warmed up and healthy",
                                value=float(rt.ready and rt.backend_error is None))
        if rt.batcher is None:
            return
        s = rt.batcher.stats()
        for k in _BATCHER_GAUGES:
            yield GaugeMetricFamily(f"postemb_batcher_{k}", f"batcher {k.replace('_', ' ')} now", value=s[k])
        for k in _BATCHER_COUNTERS:
            yield CounterMetricFamily(f"postemb_batcher_{k}", f"batcher {k.replace('_', ' ')}", value=s[k])
        for k, doc in _BATCHER_HISTOGRAMS.items():
            h = s[k]
            cum, buckets = 0, []
            for bound, n in zip(h["bounds"] + [math.inf], h["counts"]):
                cum += n
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cum))
            yield HistogramMetricFamily(f"postemb_batcher_{k}", doc, buckets=buckets, sum_value=h["sum"])


class _Metrics:
    def __init__(self, runtime: Runtime):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("postemb_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("postemb_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.in_flight = Gauge("postemb_http_requests_in_flight", "embedding requests in progress (admitted)",
                               registry=self.registry)
        self.registry.register(_BatcherCollector(runtime))


class _Gate:
    """Pure ASGI middleware: API key (constant time), admission (at most
    ``max_concurrent_requests`` embedding requests at once, refused before their body is
    read), request count and latency by route. A client that disconnects before its answer
    is counted (and logged) as 499, nginx's "client closed request", never as a 500."""

    def __init__(self, app, runtime: Runtime, metrics: _Metrics):
        self.app, self.runtime, self.metrics = app, runtime, metrics
        key = runtime.cfg.api_key
        self._key_digest = hashlib.sha256(key.encode()).digest() if key else None
        self.active = 0  # admitted embedding requests (one event loop: no lock needed)

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                # hashing first makes the comparison independent of the key's length too
                return hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self._key_digest)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "other"
        start = time.perf_counter()
        status, gone, admitted = 500, False, False

        async def send_status(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        async def receive_watch():
            nonlocal gone
            msg = await receive()
            gone = gone or msg["type"] == "http.disconnect"
            return msg

        try:
            if self._key_digest is not None and path not in OPEN_PATHS and not self._authorized(scope):
                err = ApiError(401, "Missing or wrong API key. Send `Authorization: Bearer <key>`.",
                               type="authentication_error", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
                await _error_response(err)(scope, receive, send_status)
                return
            if path in ADMITTED_PATHS:
                limit = self.runtime.cfg.max_concurrent_requests
                if self.active >= limit:
                    err = ApiError(429, f"Too many embedding requests in progress (max_concurrent_requests is "
                                        f"{limit}); retry shortly.", type="overloaded", code="max_concurrent_requests",
                                   limit=limit, given=self.active + 1, headers={"Retry-After": "1"})
                    await _error_response(err)(scope, receive, send_status)
                    return
                self.active += 1
                admitted = True
                self.metrics.in_flight.set(self.active)
            await self.app(scope, receive_watch, send_status)
        finally:
            if admitted:
                self.active -= 1
                self.metrics.in_flight.set(self.active)
            if gone and status in (500, CLIENT_CLOSED):
                status = CLIENT_CLOSED
                log.info("client disconnected before the answer to %s %s (499)", scope.get("method"), path)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _error_response(err: ApiError):
    return _json_response(err.status, {"error": err.body}, err.headers)


# ---------------------------------------------------------------------------------------
# OpenAPI documentation of the bodies (validation itself is the hand-written code above).
# ---------------------------------------------------------------------------------------
_STR_OR_LIST = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
_V1_SCHEMA = {"type": "object", "required": ["input"], "properties": {
    "input": _STR_OR_LIST, "model": {"type": "string"},
    "encoding_format": {"type": "string", "enum": list(V1_ENCODINGS), "default": "float"},
    "dimensions": {"type": "integer"}, "user": {"type": "string"}}}
_NATIVE_SCHEMA = {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
    "inputs": _STR_OR_LIST, "truncate": {"type": "boolean", "default": True},
    "normalize": {"type": "boolean", "default": True},
    "encoding": {"type": "string", "enum": list(NATIVE_ENCODINGS), "default": "float32"},
    "long_posts": {"type": "string", "enum": ["truncate", "chunk"]}}}


def _body_doc(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
        "limit": {}, "given": {}}}}}
_ERRORS = {
    401: "missing or wrong API key (`Authorization: Bearer <key>`)",
    413: "a size limit: body bytes, inputs per request, characters per post, or max_queued_tokens",
    422: "malformed JSON, a wrong type, an empty list, an unknown field, or too long with truncate: false",
    429: "overloaded (batcher queue full, or max_concurrent_requests in progress); see Retry-After",
    503: "the model is loading or failed to load, a backend failure, a queue deadline, or shutting down",
}
_JSON_ANY = {"application/json": {"schema": {"type": "object"}}}


def _responses(*codes: int, ok: dict | None = None) -> dict:
    """OpenAPI ``responses`` of a route: its 200 body, then each error status it can answer
    (all OpenAI-shaped JSON, _ERROR_SCHEMA)."""
    out = {200: {"description": "OK", "content": ok or _JSON_ANY}}
    for c in codes:
        out[c] = {"description": _ERRORS[c], "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    return out


def create_app(cfg: ServeConfig | None = None, load_encoder: Callable | None = None):
    """The FastAPI app. The model loads on a thread when the app starts (lifespan); the
    batcher is drained when it stops. ``app.state.runtime`` is the :class:`Runtime`."""
    from fastapi import FastAPI, Request, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    cfg = cfg or ServeConfig()
    rt = Runtime(cfg, load_encoder)
    KEYED = (401,) if cfg.api_key else ()  # a route behind the API key can answer 401
    EMBED_ERRORS = (*KEYED, 413, 422, 429, 503)
    metrics = _Metrics(rt)

    @asynccontextmanager
    async def lifespan(app):
        loader = threading.Thread(target=rt.load, name="postemb-load", daemon=True)
        loader.start()
        yield
        await asyncio.to_thread(loader.join)
        await asyncio.to_thread(rt.close)

    app = FastAPI(title="postemb_rt embedding server", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.runtime = rt

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return _json_response(exc.status_code, {"error": {"message": str(exc.detail), "type": "invalid_request_error",
                                                          "param": None, "code": str(exc.status_code)}},
                              getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request, exc):  # not a server error: nobody reads this answer
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def _bug(request, exc):  # a server bug, never a client mistake: logged, answered as JSON
        log.exception("unhandled error on %s", request.url.path)
        return _json_response(500, {"error": {"message": f"Internal error: {type(exc).__name__}.",
                                              "type": "server_error", "param": None, "code": "internal"}})

    @app.post("/v1/embeddings", openapi_extra=_body_doc(_V1_SCHEMA), response_class=Response,
              responses=_responses(*EMBED_ERRORS))
    async def v1_embeddings(request: Request):
        obj = await _read_json(request, cfg.max_body_bytes)
        texts = _texts(obj, "input", cfg)
        fmt = _choice(obj, "encoding_format", V1_ENCODINGS, "float")
        if "model" in obj and not isinstance(obj["model"], str):
            raise ApiError(422, f"`model` must be a string. Given: {_type_name(obj['model'])}.", param="model",
                           code="invalid_type")
        enc = rt.require_encoder()
        dims = obj.get("dimensions")
        if dims is not None and (type(dims) is not int or dims != enc.dim):
            raise ApiError(422, f"`dimensions` must be {enc.dim}, this model's dim: it was not trained for shortened "
                                f"(Matryoshka) embeddings. Given: {_given(dims)}.", param="dimensions",
                           code="dimensions_unsupported", limit=enc.dim, given=dims)
        vecs, tokens, _ = await rt.embed(texts, "input", truncate=True, normalize=True)
        if fmt == "float":
            rows = vecs.tolist()
        else:
            le = vecs.astype("<f4", copy=False)
            rows = [base64.b64encode(r.tobytes()).decode("ascii") for r in le]
        data = [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)]
        return await _render({"object": "list", "data": data, "model": enc.model_version,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                             vecs.size if fmt == "float" else 0)

    @app.post("/embed", openapi_extra=_body_doc(_NATIVE_SCHEMA), response_class=Response,
              responses=_responses(*EMBED_ERRORS))
    async def embed(request: Request):
        obj = await _read_json(request, cfg.max_body_bytes)
        unknown = sorted(set(obj) - set(NATIVE_FIELDS))
        if unknown:
            raise ApiError(422, f"Unknown field `{unknown[0]}`. Known fields: {list(NATIVE_FIELDS)}.",
                           param=unknown[0], code="unknown_field")
        texts = _texts(obj, "inputs", cfg)
        truncate, normalize = _flag(obj, "truncate", True), _flag(obj, "normalize", True)
        encoding = _choice(obj, "encoding", NATIVE_ENCODINGS, "float32")
        if encoding != "float32" and not normalize:
            raise ApiError(422, f"`normalize` must be true with encoding {encoding!r}, which is calibrated for unit "
                                "vectors. Given: false.", param="normalize", code="invalid_value")
        long_posts = _choice(obj, "long_posts", ("truncate", "chunk"), cfg.long_posts)
        enc = rt.require_encoder()
        chunk_stats = {"chunked": 0, "windows": 0}
        vecs, tokens, truncated = await rt.embed(texts, "inputs", truncate=truncate, normalize=normalize,
                                                 long_posts=long_posts, chunk_stats=chunk_stats)
        out = {"model": enc.model_version, "dim": enc.dim, "encoding": encoding, "normalized": normalize}
        if encoding == "float32":
            out["embeddings"] = vecs.tolist()
        elif encoding == "int8":
            scale = int8_scale(enc.dim)
            out.update(scale=scale, embeddings=quantize_int8(vecs, scale).tolist())
        else:
            out.update(bytes_per_row=(enc.dim + 7) // 8, bit_order="big", embeddings=pack_binary(vecs).tolist())
        out.update(truncated=truncated, long_posts=long_posts, **chunk_stats,
                   usage={"prompt_tokens": tokens, "total_tokens": tokens})
        return await _render(out, vecs.size)

    @app.get("/v1/models", response_class=Response, responses=_responses(*KEYED, 503))
    async def v1_models():  # OpenAI clients and tools list models before using one
        enc = rt.require_encoder()
        model = {"id": enc.model_version, "object": "model", "created": int(rt.started), "owned_by": "postemb_rt"}
        return _json_response(200, {"object": "list", "data": [model]})

    @app.get("/health", response_class=Response, responses=_responses())
    async def health():
        return _json_response(200, {"status": "ok"})

    @app.get("/ready", response_class=Response, responses=_responses(503))
    async def ready():
        # Unauthenticated: a reason code only; the details are in the log (and /info, with the key).
        if rt.load_error:
            return _json_response(503, {"status": "failed", "reason": "model_load_failed"})
        if not rt.ready:
            return _json_response(503, {"status": "loading", "reason": "loading"}, {"Retry-After": "1"})
        if rt.backend_error is not None and not await rt.probe():
            log.warning("/ready: backend still failing: %s", rt.backend_error)
            return _json_response(503, {"status": "unhealthy", "reason": "backend_error"})
        return _json_response(200, {"status": "ready", "model": rt.encoder.model_version})

    @app.get("/info", response_class=Response, responses=_responses(*KEYED))
    async def info():
        return _json_response(200, rt.info())

    @app.get("/metrics", response_class=Response, responses=_responses(
        *KEYED, ok={CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}))
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Gate, runtime=rt, metrics=metrics)
    return app


def app_from_env():
    """uvicorn factory for ``--workers N`` (each worker process loads its own model): reads
    the config that ``postemb serve`` put in ``POSTEMB_SERVE_CONFIG`` (JSON). A worker whose
    model fails to load writes the error to ``POSTEMB_SERVE_FATAL_FILE`` and stops the
    supervisor (SIGTERM to its parent), which then exits 1, as one worker would."""
    import os
    import signal

    app = create_app(ServeConfig(**json.loads(os.environ["POSTEMB_SERVE_CONFIG"])))
    rt, fatal_file = app.state.runtime, os.environ.get("POSTEMB_SERVE_FATAL_FILE")

    def stop_everything():
        if fatal_file:
            with open(fatal_file, "a", encoding="utf-8") as f:
                f.write(f"{rt.load_error}\n")
        os.kill(os.getppid(), signal.SIGTERM)  # uvicorn's supervisor: stop every worker and exit

    rt.on_fatal = stop_everything
    return app
