"""Access to the app: ``Gate``, the one ASGI middleware in front of every route: API key,
admission (``max_concurrent_requests``), and the request count and latency by route."""
from __future__ import annotations

import hashlib
import hmac
import logging
import time

from .errors import CLIENT_CLOSED, ApiError, error_response

log = logging.getLogger("postemb_rt.server")

OPEN_PATHS = frozenset({"/health", "/ready"})  # no API key needed (probes)
ADMITTED_PATHS = frozenset({"/v1/embeddings", "/embed"})  # bounded by max_concurrent_requests
ROUTES = ("/v1/embeddings", "/v1/models", "/embed", "/health", "/ready", "/info", "/metrics", "/openapi.json", "/docs")


class Gate:
    """Pure ASGI middleware: API key (constant time), admission (at most
    ``max_concurrent_requests`` embedding requests at once, refused before their body is
    read), request count and latency by route. A client that disconnects before its answer
    is counted (and logged) as 499, nginx's "client closed request", never as a 500."""

    def __init__(self, app, runtime, metrics):
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
                await error_response(err)(scope, receive, send_status)
                return
            if path in ADMITTED_PATHS:
                limit = self.runtime.cfg.max_concurrent_requests
                if self.active >= limit:
                    err = ApiError(429, f"Too many embedding requests in progress (max_concurrent_requests is "
                                        f"{limit}); retry shortly.", type="overloaded", code="max_concurrent_requests",
                                   limit=limit, given=self.active + 1, headers={"Retry-After": "1"})
                    await error_response(err)(scope, receive, send_status)
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
