"""Access to the app: ``Gate``, the one ASGI middleware in front of every route (API key, the
request count and latency by route), and ``Admission``, which embedding routes go through
(the body read within bounds, then a compute slot)."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager

from .errors import CLIENT_CLOSED, ApiError, error_response, retry_after

log = logging.getLogger("postemb_rt.server")

OPEN_PATHS = frozenset({"/health", "/ready", "/ping"})  # no API key needed (probes)
OPEN_GET_PATHS = frozenset({"/"})  # probes only when read (GET, HEAD): POST / embeds, behind the key
ROUTES = ("/v1/embeddings", "/embeddings", "/v1/models", "/models", "/embed", "/embed_full", "/", "/invocations",
          "/similarity", "/tokenize", "/decode", "/rerank", "/predict", "/embed_sparse", "/embed_all", "/health",
          "/ready", "/ping", "/info", "/metrics", "/openapi.json", "/docs")
BODY_FIX = " Fix: split the request (client), or start the server with a higher --max-body-bytes (operator)."
REQUEST_ID_HEADER = "X-Request-ID"  # echoed on every answer (a new one when the client sent none or a malformed one)
REQUEST_ID = REQUEST_ID_HEADER.lower().encode()


CLOSE = {"Connection": "close"}  # answers sent before the body was read: the connection cannot be reused
DRAIN_MAX_BYTES = 64 << 20  # a refused body is read and dropped up to this much before the close (see _dropping_body)


class Admission:
    """An embedding request's way in: its body is read first, bounded in size
    (``max_body_bytes``: 413), time (``body_timeout_s`` once the headers came: 408) and, over all
    requests reading at once, bytes (``max_concurrent_requests * max_body_bytes``: 429); only
    then does it take one of ``max_concurrent_requests`` compute slots (429 when none is free).
    A client still sending its body holds no slot; a 429 for want of one says when the requests holding
    them will be done (``retry_after_s``: the batchers' queued and in-flight work at their measured
    rates). One event loop: no lock needed."""

    def __init__(self, cfg, metrics, retry_after_s=lambda: 1.0):
        self.cfg, self.metrics = cfg, metrics
        self.retry_after_s = retry_after_s  # () -> seconds until the requests computing now are done
        self.active = 0  # requests holding a compute slot
        self.buffered = 0  # body bytes held by requests (being read, or read and not yet answered)
        self.buffer_limit = cfg.max_concurrent_requests * cfg.max_body_bytes

    @asynccontextmanager
    async def __call__(self, request):
        """``async with admission(request) as body``: the body's bytes, inside a compute slot."""
        body = await self._read(request)
        try:
            limit = self.cfg.max_concurrent_requests
            if self.active >= limit:
                raise ApiError(429, f"Too many embedding requests in progress (max_concurrent_requests is {limit}); "
                                    "retry shortly.", type="overloaded", code="max_concurrent_requests", limit=limit,
                               given=self.active + 1, headers=retry_after(self.retry_after_s()))
            self.active += 1
            self.metrics.in_flight.set(self.active)
            try:
                async with _cancelled_on_disconnect(request.receive):
                    yield body
            finally:
                self.active -= 1
                self.metrics.in_flight.set(self.active)
        finally:
            self.buffered -= len(body)

    @asynccontextmanager
    async def parsed(self, request, schema, started: float | None, field: str = "inputs", counted: bool = True,
                     method=None):
        """``async with admission.parsed(request, Schema, started) as (t, req)``: the admitted body (``__call__``) as
        ``schema`` (``schemas.parse``), counted in text-embeddings-inference's series (``metrics.TeiRequest``, as
        ``t``) from the moment it is a JSON object, by the ``method`` of its ``field`` (``metrics.tei_method``, or
        ``method(obj)``); ``counted`` False: its failures only."""
        from .metrics import tei_method
        from .schemas import json_object, parse

        with self.metrics.tei_request(started, counted) as t:
            async with self(request) as body:
                obj = json_object(body)
                t.received(method(obj) if method else tei_method(obj.get(field)))
                yield t, parse(schema, obj, self.cfg)

    async def _read(self, request) -> bytes:
        try:
            _check_json(request.headers)
        except ApiError as exc:
            raise await self._dropping_body(request, exc) from None
        limit = self.cfg.max_body_bytes
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > limit:
            raise await self._dropping_body(request, ApiError(
                413, f"The request body is {int(cl)} bytes, more than max_body_bytes ({limit}).{BODY_FIX}",
                param="body", code="max_body_bytes", limit=limit, given=int(cl), headers=CLOSE)) from None
        chunks, size, seen = [], 0, {"started": False, "complete": False}  # seen: the body's messages so far

        async def pull():
            nonlocal size
            from starlette.requests import ClientDisconnect

            while not seen["complete"]:  # ASGI's messages, not request.stream(): a refusal must know if more comes
                message = await request.receive()
                seen["started"] = True
                if message["type"] != "http.request":
                    raise ClientDisconnect()  # as request.stream() does
                chunk, seen["complete"] = message.get("body", b""), not message.get("more_body", False)
                if size + len(chunk) > limit:
                    raise ApiError(413, f"The request body is more than max_body_bytes ({limit}) bytes.{BODY_FIX}",
                                   param="body", code="max_body_bytes", limit=limit, given=f">{limit}", headers=CLOSE)
                if self.buffered + len(chunk) > self.buffer_limit:
                    raise ApiError(429, f"The server holds {self.buffered} bytes of request bodies, its bound "
                                        f"(max_concurrent_requests * max_body_bytes = {self.buffer_limit}); retry "
                                        "shortly.", type="overloaded", code="body_buffer_full",
                                   limit=self.buffer_limit, given=self.buffered + len(chunk),
                                   headers={**retry_after(1), **CLOSE})
                self.buffered += len(chunk)
                size += len(chunk)
                chunks.append(chunk)

        try:
            await asyncio.wait_for(pull(), self.cfg.body_timeout_s)
        except asyncio.TimeoutError:
            self.buffered -= size
            raise ApiError(408, f"The request body did not arrive within body_timeout_s ({self.cfg.body_timeout_s:g} "
                                f"s); {size} bytes came.", param="body", code="body_timeout",
                           limit=self.cfg.body_timeout_s, given=size, headers=CLOSE) from None
        except ApiError as exc:  # 413 or 429 in the middle of the body
            self.buffered -= size
            raise await self._dropping_body(request, exc, **seen) from None
        except BaseException:
            self.buffered -= size
            raise
        return b"".join(chunks)

    async def _dropping_body(self, request, error: ApiError, started: bool = False, complete: bool = False):
        """``error``, an answer before the body was read whole (so the connection closes), once the rest of the body
        has been read and dropped: within body_timeout_s and DRAIN_MAX_BYTES, and not for a client that waits for
        ``100 Continue`` before sending it (none asked for yet: not ``started``). Closed while the client still
        sends, its kernel gets a reset and loses the answer: the async openai and huggingface_hub clients raised a
        connection error for a 413, and AsyncOpenAI sent the whole body twice more (nginx reads such a body for the
        same reason). ``complete``: its last message came already (another receive would wait for a disconnect)."""
        declared = request.headers.get("content-length", "")
        if complete or (not started and request.headers.get("expect", "").lower() == "100-continue") or \
                (declared.isdigit() and int(declared) > DRAIN_MAX_BYTES):
            return error

        async def drop() -> None:
            left = DRAIN_MAX_BYTES
            while left > 0:
                message = await request.receive()
                if message["type"] != "http.request":
                    return
                left -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

        try:
            await asyncio.wait_for(drop(), self.cfg.body_timeout_s)
        except asyncio.TimeoutError:
            pass
        return error


# A request still running this long starts watching its connection. Most one-post requests are answered
# sooner and never pay for the watch (a task per request cost 11-18% of the server's own throughput at 16
# clients: benchmarks/RESULTS.md, "Clients that leave"); a client that leaves
# is noticed at most this late.
WATCH_AFTER_S = 0.05


@asynccontextmanager
async def _cancelled_on_disconnect(receive, after_s: float = WATCH_AFTER_S):
    """The block (a request being computed, its body read) is cancelled when its client disconnects: a
    client that gave up (its timeout, Ctrl-C, the `openai` client's retry after a timeout) costs no more
    model time, its posts leave the batcher's queue (``DynamicBatcher.submit``'s cancel hook) and free
    room for others, and the block raises ``ClientDisconnect`` (answered 499). Once the body is read,
    ``receive`` returns only when the connection is lost (ASGI's ``http.disconnect``); it is awaited only
    by a block still running after ``after_s``."""
    from starlette.requests import ClientDisconnect

    task, left, watcher = asyncio.current_task(), False, None

    async def watch():
        nonlocal left
        if (await receive())["type"] == "http.disconnect":
            left = True
            task.cancel()

    def start() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(after_s, start)
    try:
        yield
    except asyncio.CancelledError:
        if not left:  # the server's own cancellation (shutdown): not ours to turn into an answer
            raise
        if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled
            task.uncancel()
        raise ClientDisconnect() from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


def _check_json(headers) -> None:
    """415 unless the body is declared JSON, uncompressed: as text-embeddings-inference answers, and
    so a web page on another origin cannot make the server compute with a "simple" request
    (``text/plain``, a form), which a browser sends without a CORS preflight."""
    ctype = headers.get("content-type", "")
    media = ctype.partition(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, f"The request body must be JSON, declared by `Content-Type: application/json`. Given: "
                            f"{ctype or 'no Content-Type'}. Fix: send that header (curl: -H 'Content-Type: "
                            "application/json').", param="Content-Type", code="unsupported_media_type",
                       given=ctype or None, limit="application/json", headers=CLOSE)
    coding = headers.get("content-encoding", "identity").strip().lower()
    if coding != "identity":
        raise ApiError(415, f"Compressed request bodies are not accepted. Given: Content-Encoding {coding}. Fix: "
                            "send the JSON uncompressed (the body limit is max_body_bytes).",
                       param="Content-Encoding", code="unsupported_content_encoding", headers=CLOSE)


class Gate:
    """Pure ASGI middleware: API key (constant time), request count and latency by route. A
    client that disconnects before its answer is counted (and logged) as 499, nginx's "client
    closed request", never as a 500."""

    def __init__(self, app, runtime, metrics):
        self.app, self.runtime, self.metrics = app, runtime, metrics
        key = runtime.cfg.api_key
        self._key_digest = hashlib.sha256(key.encode()).digest() if key else None

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
        probe = path in OPEN_GET_PATHS and scope["method"] in ("GET", "HEAD")
        route = "GET /" if probe else path if path in ROUTES else "other"  # probes of / apart from POST / (embeds)
        if route == "other" and path.startswith(("/v1/models/", "/models/")):
            route = path[:path.index("/models/")] + "/models/{model}"
        start = time.perf_counter()
        status, gone = 500, False
        request_id = _request_id(scope)

        async def send_status(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), (REQUEST_ID, request_id)]}
            await send(msg)

        async def receive_watch():
            nonlocal gone
            msg = await receive()
            gone = gone or msg["type"] == "http.disconnect"
            return msg

        try:
            if self._key_digest is not None and not (probe or path in OPEN_PATHS) and not self._authorized(scope):
                err = ApiError(401, "Missing or wrong API key. Send `Authorization: Bearer <key>`.",
                               type="authentication_error", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
                await error_response(err)(scope, receive, send_status)
                return
            await self.app(scope, receive_watch, send_status)
        finally:
            if gone and status in (500, CLIENT_CLOSED):
                status = CLIENT_CLOSED
                log.info("client disconnected before the answer to %s %s (499)", scope.get("method"), path)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _request_id(scope) -> bytes:
    """The client's X-Request-ID when it is 1-128 visible ASCII characters, else a new random one:
    echoed on the answer, so a client or proxy can match the two in its logs."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID and 0 < len(value) <= 128 and all(33 <= c <= 126 for c in value):
            return value
    return uuid.uuid4().hex.encode()
