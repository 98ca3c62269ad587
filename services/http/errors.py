"""OpenAI-style error bodies, and how the gateway's gRPC status codes map onto HTTP.

Every error answer is ``{"error": {"message", "type", "param", "code"}}``, the shape OpenAI's
clients parse (the `openai` package raises `BadRequestError` for 400, `AuthenticationError`
for 401, `RateLimitError` for 429, ...). Messages never echo the caller's input text.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from starlette.responses import JSONResponse

#: The gateway's retry hint on RESOURCE_EXHAUSTED (services/gateway/admission.py), passed on
#: as `Retry-After` (whole seconds, RFC 9110) and `retry-after-ms` (which the `openai`
#: package prefers when it retries).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    """An error answer: HTTP `status` with an OpenAI-style body and extra `headers`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients expect."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, extra_headers: dict[str, str] | None = None) -> JSONResponse:
        """This error as a response."""
        return JSONResponse(
            self.body(), status_code=self.status, headers={**self.headers, **(extra_headers or {})}
        )


def _retry_headers(error: grpc.RpcError) -> dict[str, str]:
    trailers = getattr(error, "trailing_metadata", lambda: None)() or ()
    for key, value in trailers:
        if key == RETRY_PUSHBACK_KEY:
            try:
                ms = max(0, int(value))
            except ValueError:
                return {}
            return {"retry-after-ms": str(ms), "retry-after": str(math.ceil(ms / 1000))}
    return {}


# grpc core's wording when a request exceeds the server's receive limit; the gateway's limit
# follows its --max-text-chars, so this is bad input (too long), not an overload.
_TOO_LARGE = "received message larger than max"


def from_grpc(error: grpc.RpcError) -> ApiError:
    """The HTTP answer for a failed gateway call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    details = (error.details() if hasattr(error, "details") else "") or ""  # type: ignore[attr-defined]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ApiError(400, details or "invalid request")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if details.lower().startswith(_TOO_LARGE):
            return ApiError(400, "input is too long for this deployment", param="input")
        return ApiError(
            429,
            details or "the service is at capacity; retry later",
            type_="requests",
            code="rate_limit_exceeded",
            headers=_retry_headers(error),
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return ApiError(503, details or "the service is unavailable", type_=SERVER_ERROR)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(504, "the synthesis did not finish in time", type_=SERVER_ERROR)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        # The HTTP service's own credentials were refused: a deployment fault, not the caller's.
        return ApiError(500, "the HTTP service may not call the gateway", type_=SERVER_ERROR)
    return ApiError(500, f"synthesis failed ({code.name})", type_=SERVER_ERROR)
