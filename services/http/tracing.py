"""The HTTP request's SERVER span, as pure ASGI middleware.

OpenTelemetry's ASGI instrumentation is not installable at the version matching this
project's instrumentation (0.66b2), so this middleware does the part we need: continue an
incoming W3C `traceparent` (or start a trace), keep the span current for the whole request
-- streamed body included -- so the gateway call made while handling it is its child, and
record the outcome with the stable HTTP semantic-convention attributes. It also writes one
log line per request (method, route, status, duration; never the body).

Every traced response names its trace: the W3C Trace Context Level 2 ``traceresponse``
header (``00-<trace id>-<this server span's id>-<flags>``,
https://www.w3.org/TR/trace-context-2/#traceresponse-header) and ``voxline-trace-id`` (the
trace id alone), errors included -- the same pair the gRPC services send as initial metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.http import HEALTH_PATH, READY_PATH
from telemetry.context import trace_response_headers

log = logging.getLogger("voxline.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths that are neither traced nor logged: kubelet probes every few seconds.
UNTRACED_PATHS = frozenset({HEALTH_PATH, READY_PATH})


class _HeaderGetter:
    """Reads ASGI's raw header list for the propagator."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier.get("headers", ()) if k == wanted]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier.get("headers", ())]


_GETTER = _HeaderGetter()


class ServerSpanMiddleware:
    """Wraps an ASGI app: one SERVER span per HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, tracer: trace.Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        status: list[int] = []
        trace_headers: list[tuple[bytes, bytes]] = []

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
                headers = [*message.get("headers", ()), *trace_headers]
                message = {**message, "headers": headers}
            await send(message)

        start = time.perf_counter()
        attributes = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", ""),
        }
        with self.tracer.start_as_current_span(
            method,
            context=propagate.extract(scope, getter=_GETTER),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            trace_headers.extend(
                (key.encode("latin-1"), value.encode("latin-1"))
                for key, value in trace_response_headers(span)
            )
            try:
                await self.app(scope, receive, send_recording)
            except BaseException as exc:
                # Only the type: an exception's message may quote the caller's input.
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
                code = status[0] if status else 500
                span.set_attribute("http.response.status_code", code)
                # Like the gRPC services, every failed request is visibly an error (HTTP
                # semconv would mark only 5xx on a server span).
                if code >= 400:
                    span.set_attribute("error.type", str(code))
                    span.set_status(Status(StatusCode.ERROR, str(code)))
                log.info(
                    "request",
                    extra={
                        "method": method,
                        "route": route or scope.get("path", ""),
                        "status": code,
                        "elapsed_s": round(time.perf_counter() - start, 3),
                    },
                )
