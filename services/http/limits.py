"""Server-enforced limits of the HTTP front: what one client may hold, and for how long.

- `RequestLimits` (ASGI middleware): at most `limit_concurrency` requests in flight, the rest
  refused at once with 503; and a total deadline per request (body, gateway call, response),
  which the gateway call inherits (`request_deadline`).
- `guarded_h11` (uvicorn protocol): a deadline for each request head (slow headers), and an
  abort for connections whose close cannot complete (a client that stopped reading).

Why not uvicorn's own options (0.54.0, read from its source):
- `timeout_keep_alive` (5 s) is armed only after a response and disarmed by any byte
  received, and never armed on a new connection: a client that connects and sends nothing,
  or one header byte every few seconds, holds its connection forever. uvicorn has no
  header-read timeout, hence `guarded_h11`.
- `h11_max_incomplete_event_size` (h11's 16 KiB default, kept) bounds how much of an
  incomplete head is buffered (400 beyond): memory, not time.
- `limit_concurrency` counts open connections as well as requests, answers plain text, and
  would refuse kubelet's liveness probe under load (a restart that drops every stream);
  `RequestLimits` counts requests, exempts the probes and answers in the API's error shape.
- `timeout_worker_healthcheck` only concerns a multi-process supervisor (one process here).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.http import HEALTH_PATH, READY_PATH
from services.http.errors import SERVER_ERROR, ApiError
from services.http.tracing import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("voxline.http")

#: The scope key holding a request's total deadline (a `time.monotonic()` value).
DEADLINE_KEY = "voxline.deadline"
#: Probes are never refused: a liveness probe refused under load would restart the pod.
PROBE_PATHS = frozenset({HEALTH_PATH, READY_PATH})
#: How long a connection uvicorn is closing may take to flush what it buffered for a client
#: before it is aborted: asyncio's close() waits for the buffer to drain, which a client that
#: stopped reading never lets happen (its socket would stay open for good).
CLOSE_GRACE_S = 5.0
#: Refusals close their connection: the unread body (if any) is dropped with it.
_CLOSE = {"connection": "close"}


def seconds_left(deadline: float) -> float:
    """Time left before `deadline` (`time.monotonic()`), never negative."""
    return max(0.0, deadline - time.monotonic())


def request_deadline(scope: Scope, timeout_s: float) -> float:
    """The request's total deadline set by RequestLimits (or `timeout_s` from now without
    it, e.g. an app mounted alone)."""
    deadline = scope.get(DEADLINE_KEY)
    return float(deadline) if deadline is not None else time.monotonic() + timeout_s


class RequestLimits:
    """ASGI middleware: a concurrency limit and a total deadline for every HTTP request."""

    def __init__(self, app: ASGIApp, *, limit_concurrency: int, timeout_s: float) -> None:
        self.app = app
        self.limit = limit_concurrency
        self.timeout_s = timeout_s
        #: Requests in flight (probes excluded); one event loop, so a plain counter.
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") in PROBE_PATHS:
            await self._run(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await _overloaded(self.limit).response(_CLOSE)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self._run(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app under the total deadline; 504 if it passes before the response starts."""
        scope[DEADLINE_KEY] = time.monotonic() + self.timeout_s
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with anyio.move_on_after(self.timeout_s) as deadline:
            await self.app(scope, receive, tracking_send)
        if not deadline.cancelled_caught:
            return
        if started:
            # The 200 is out: returning without the body's end makes uvicorn close the
            # connection with the chunked body unterminated (the client sees it incomplete).
            log.warning("request deadline passed mid-response", extra={"timeout_s": self.timeout_s})
            return
        error = ApiError(504, "the request did not finish in time", type_=SERVER_ERROR)
        await error.response(_CLOSE)(scope, receive, send)


def _overloaded(limit: int) -> ApiError:
    return ApiError(
        503,
        f"the service is at its limit of {limit} requests in flight; retry shortly",
        type_=SERVER_ERROR,
        code="overloaded",
        headers={"retry-after": "1"},
    )


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline (see the module docstring).

    The timer runs whenever the connection waits for a request head -- from the connection's
    start, and from the end of each response -- and only a complete head stops it: bytes
    trickled in do not (unlike uvicorn's keep-alive timer). When it fires, the connection is
    closed. `head_timeout_s` is set by `guarded_h11`.
    """

    head_timeout_s: float  # set by guarded_h11 (the default is Settings')

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._app = self.app
        self.app = self._run_app  # what uvicorn runs for each request on this connection

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_request() or self.transport.is_closing():
            return
        log.info("closing a connection whose request head did not arrive in time")
        self.transport.close()
        self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)  # no-op once closed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # parses; a complete head starts a request
        if self._in_request():
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        if not self._in_request() and not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    async def _run_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = self.cycle  # this request's (h11 parses no other head until it completes)
        try:
            await self._app(scope, receive, send)
        finally:
            if cycle.response_started and not cycle.response_complete:
                # uvicorn closes a connection whose response was left unfinished (a deadline,
                # a failed stream); if the client stopped reading, only an abort frees it.
                self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)


def guarded_h11(head_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's `http` protocol class with this request-head deadline."""
    return type("GuardedH11", (_GuardedH11,), {"head_timeout_s": head_timeout_s})
