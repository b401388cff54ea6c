"""The error answer: ``ApiError`` (status, OpenAI-shaped body, headers) and JSON responses."""
from __future__ import annotations

import json
from typing import Any

CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before its answer


class ApiError(Exception):
    """An HTTP error answer: status, OpenAI-shaped body, optional headers."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, limit: Any = None, given: Any = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}
        self.body = {"message": message, "type": type, "param": param, "code": code}
        if limit is not None:
            self.body.update(limit=limit, given=given)


def json_response(status: int, obj, headers: dict | None = None):
    """A compact JSON answer (``Response``, not ``JSONResponse``: no re-validation, no indent)."""
    from fastapi import Response

    return Response(json.dumps(obj, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(err: ApiError):
    return json_response(err.status, {"error": err.body}, err.headers)
