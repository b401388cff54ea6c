"""The error answer: ``ApiError`` (status, OpenAI-shaped body, headers) and JSON responses."""
from __future__ import annotations

import json
import math
import random
from typing import Any

CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before its answer
RETRY_AFTER_S = (1, 60)  # the bounds of a Retry-After (the openai clients give up past 120 s)
# a failure no retry cures (a model that failed to load): the openai clients retry a 503 unless told so
NO_RETRY = {"x-should-retry": "false"}
RETRY_JITTER = 1.0  # a Retry-After is spread over the wait estimated to (1 + this) times it


def retry_after(seconds: float) -> dict:
    """The headers that ask a refused client to come back in about ``seconds`` (bounded by RETRY_AFTER_S):
    ``Retry-After`` (whole seconds) and ``retry-after-ms``, which the openai clients read first. Both are
    drawn at random from that wait to (1 + RETRY_JITTER) times it, one draw for both: clients refused together
    then come back apart, not in one burst that the server refuses again (an openai client adds no jitter of
    its own to a Retry-After)."""
    low, high = RETRY_AFTER_S
    s = min(high, max(low, seconds) * (1 + RETRY_JITTER * random.random()))
    return {"Retry-After": str(math.ceil(s)), "retry-after-ms": str(math.ceil(s * 1000))}


class ApiError(Exception):
    """An HTTP error answer: status, OpenAI-shaped body, optional headers."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, limit: Any = None, given: Any = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}
        self.body = {"message": message, "type": type, "param": param, "code": code}
        if limit is not None:
            self.body.update(limit=limit, given=given)


def dumps(obj) -> bytes:
    """``obj`` as compact JSON bytes. numpy arrays are written as nested lists (C-contiguous ones natively), float32
    in its shortest round-trip form (``0.12573022``, as text-embeddings-inference writes it; parsed
    back and cast to float32 it is the same number), about half the bytes of float64's repr, by
    orjson, in C. What orjson refuses (an integer past 64 bits echoed from a request as ``given``) is
    written by the standard library."""
    import orjson

    try:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=_as_list)
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(",", ":"), default=_as_list).encode()


def _as_list(obj):
    """orjson's fallback for what it does not write natively (a numpy array that is not C-contiguous, as
    a prefix ``vecs[:, :k]``): a nested list."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def json_response(status: int, obj, headers: dict | None = None):
    """A compact JSON answer (``Response``, not ``JSONResponse``: no re-validation, no indent)."""
    from fastapi import Response

    return Response(dumps(obj), status_code=status, headers=headers, media_type="application/json")


def error_response(err: ApiError):
    return json_response(err.status, {"error": err.body}, err.headers)
