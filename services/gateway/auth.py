"""Optional bearer-token check on the public gateway (`--api-token` / `--api-token-file`).

Every call except grpc.health.v1 (kubelet probes and load balancers carry no token) must send
metadata `authorization: Bearer <token>`; otherwise it ends UNAUTHENTICATED before reaching
the servicer. The token is compared in constant time and never logged, put in spans or in an
error message.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

import grpc

from services.runtime.tls import CallGuard, guarded

log = logging.getLogger("voxline.gateway.auth")

_SCHEME = "bearer "


def load_token(token: str, token_file: str, *, production: bool = False) -> str:
    """The configured token: the file's content (stripped) if a file is given, else `token`
    ("" = no token check). A file is what a Kubernetes Secret mounts; flags show in `ps`.
    With `production` (`--production`), no token is a configuration error: a public port
    open to any caller must be a deliberate choice of a development setup, never a default."""
    if production and not (token or token_file):
        raise ValueError(
            "--production requires an API token: set --api-token-file (a mounted Secret) "
            "or --api-token"
        )
    if token and token_file:
        raise ValueError("give --api-token or --api-token-file, not both")
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read --api-token-file {token_file}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"--api-token-file {token_file} is empty")
    return token


class BearerTokenInterceptor(CallGuard):
    """Refuse calls without `authorization: Bearer <token>` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty API token would accept every caller")
        self._expected = token.encode("utf-8")

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key != "authorization" or not isinstance(value, str):
                continue
            if value[: len(_SCHEME)].lower() != _SCHEME:
                return False
            supplied = value[len(_SCHEME) :].strip().encode("utf-8")
            return hmac.compare_digest(supplied, self._expected)
        return False

    def guard(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> Any:
        if self._authorized(details.invocation_metadata):
            return handler
        # The method only: the metadata holds the (wrong) token.
        log.info("refused an unauthenticated call", extra={"method": details.method})
        return _refusal(handler)


_MESSAGE = "missing or invalid API token: send metadata 'authorization: Bearer <token>'"


def _refusal(handler: grpc.RpcMethodHandler) -> Any:
    """`handler` ending the call UNAUTHENTICATED before it runs."""

    def refuse(context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

    return guarded(handler, refuse)
