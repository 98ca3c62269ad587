"""Server-side time limits on public calls: no caller can hold a gateway thread or slot forever.

A sync gRPC server thread waits, without a timeout, wherever the caller sets the pace: for a
request message (unary bodies, a text stream's config and fragments) and for the caller to
read a response (flow control blocks `send`). Each wait gets its own limit here:

- `MessageReader` moves a request stream's messages onto a queue from a thread of its own,
  so the handler waits for the next one with a timeout and ends the call DEADLINE_EXCEEDED
  with a message naming the limit (the reader thread ends with the call).
- `ReadDeadlineInterceptor` serves the public unary-request methods as request streams, so
  their one message is read through a `MessageReader` too (gRPC otherwise reads it before any
  handler code runs, with no limit).
- `Watchdog` is the backstop for waits inside gRPC itself (a caller that stops reading its
  stream): it cancels calls past their deadline, or stuck in one send, from its own thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.runtime.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    VoxlineError,
    grpc_status_for,
)

log = logging.getLogger("voxline.gateway.deadlines")


@dataclass(frozen=True)
class CallLimits:
    """The gateway's waits on its callers (flags `--request-read-timeout-s`,
    `--text-gap-timeout-s`, `--send-timeout-s`, generated from these fields' metadata by
    services/runtime/config.py); the total is `--request-timeout-s`."""

    #: A unary request's message, or a text stream's config, must arrive within this (it is
    #: sent with the call's headers by every client we know).
    request_read_s: float = field(
        default=5.0,
        metadata={
            "help": "a request message (or a text stream's config) must arrive within this",
            "flag": "request-read-timeout-s",
        },
    )
    #: A text stream may go this long without a fragment (a flush or a message counts). The
    #: stream holds its admission slot while it waits: a language model's tokens come far
    #: more often than this.
    text_gap_s: float = field(
        default=10.0,
        metadata={
            "help": "longest wait for a text stream's next fragment",
            "flag": "text-gap-timeout-s",
        },
    )
    #: A caller that reads none of a response for this long loses the call (and its slot); a
    #: player reading in real time never leaves a send waiting more than a second or two.
    send_s: float = field(
        default=10.0,
        metadata={
            "help": "a caller that reads none of its stream for this long loses the call",
            "flag": "send-timeout-s",
        },
    )


_END = object()  # the request stream's end, on a MessageReader's queue


class MessageReader:
    """A request stream read on its own thread, so waiting for a message can time out."""

    def __init__(self, messages: Iterator[Any]) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ended = False
        self._first = threading.Event()  # set once anything (a message, the end) arrived
        threading.Thread(
            target=self._read, args=(messages,), name="request-reader", daemon=True
        ).start()

    def _read(self, messages: Iterator[Any]) -> None:
        try:
            for message in messages:
                self._put(message)
            self._put(_END)
        except VoxlineError as exc:  # a message that did not decode: the caller's error
            self._put(exc)
        except Exception:  # gRPC's: the call ended (cancelled, or finished with a status)
            self._put(_END)

    def _put(self, item: Any) -> None:
        self._queue.put(item)
        self._first.set()

    def arrived(self, timeout_s: float) -> bool:
        """Whether the stream's first message (or its end) is here, waiting up to `timeout_s`."""
        return self._first.wait(timeout_s)

    def next(self, timeout_s: float, waiting_for: str, limit_s: float | None = None) -> Any | None:
        """The next message; None at the end of the stream. DeadlineExceeded, naming
        `waiting_for` and the limit (`limit_s`, if the wait began earlier), when none comes
        within `timeout_s`."""
        if self._ended:
            return None
        try:
            message = self._queue.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            raise DeadlineExceeded(
                f"no {waiting_for} within {limit_s or timeout_s:g} s; the call was ended"
            ) from None
        if message is _END or isinstance(message, VoxlineError):
            self._ended = True
            if message is not _END:
                raise message
            return None
        return message

    def messages(self, gap_s: float, waiting_for: str) -> Iterator[Any]:
        """The remaining messages, each due within `gap_s` of the previous one."""
        while (message := self.next(gap_s, waiting_for)) is not None:
            yield message


#: Clients send a request message with the call's headers: one that is not there after this
#: long is late, and its call takes one of FirstMessage's waiting places.
PROMPT_S = 0.2


class FirstMessage:
    """Reads a call's first request message (a unary body, a text stream's config) within
    `timeout_s`. Calls whose message is late (not there after PROMPT_S) wait in one of
    `max_late` places, or are refused at once: each holds a handler thread while it waits, and
    the server's other threads must stay free for prompt callers, refusals and health."""

    def __init__(self, timeout_s: float, max_late: int) -> None:
        self._timeout_s = timeout_s
        self._late = threading.BoundedSemaphore(max_late)

    def read(self, reader: MessageReader, waiting_for: str) -> Any | None:
        """The message (None: the stream ended first); DeadlineExceeded or
        ResourceExhausted (too many callers are slow to send) otherwise."""
        if reader.arrived(PROMPT_S):
            return reader.next(self._timeout_s, waiting_for)
        if not self._late.acquire(blocking=False):
            raise ResourceExhausted(
                "too many calls are slow to send their request message; retry with backoff"
            )
        try:
            return reader.next(self._timeout_s - PROMPT_S, waiting_for, self._timeout_s)
        finally:
            self._late.release()


#: Public methods whose request message is read with a limit (ReadDeadlineInterceptor).
_SYNTHESIZER_PREFIX = "/voxline.v1.Synthesizer/"


class ReadDeadlineInterceptor(grpc.ServerInterceptor):
    """Serve the Synthesizer's unary-request methods as request streams whose one message is
    read through `first` (DEADLINE_EXCEEDED when it is late). On the wire a unary request is
    a stream of one message, so callers see no difference."""

    def __init__(self, first: FirstMessage) -> None:
        self._first = first

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if (
            handler is None
            or handler.request_streaming
            or not details.method.startswith(_SYNTHESIZER_PREFIX)
        ):
            return handler
        read = self._read_one
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                yield from inner_stream(read(requests, context), context)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        inner_unary = handler.unary_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return inner_unary(read(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )

    def _read_one(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        try:
            message = self._first.read(MessageReader(requests), "request message")
            if message is None:
                raise InvalidArgument("the call ended without its request message")
        except VoxlineError as exc:
            context.abort(*grpc_status_for(exc))
        return message


#: How long past its deadline a call may run before the watchdog cancels it: the handler
#: ends it DEADLINE_EXCEEDED itself unless it is stuck inside gRPC.
WATCHDOG_GRACE_S = 2.0
#: How often the watchdog looks at the calls it watches.
WATCHDOG_TICK_S = 0.5


class CallWatch:
    """One call as the watchdog sees it: its deadline and whether a send is under way."""

    def __init__(self, cancel: Callable[[], Any], deadline: float, send_s: float) -> None:
        self._cancel = cancel
        self.deadline = deadline
        self._send_s = send_s
        self._send_started: float | None = None

    @contextmanager
    def sending(self) -> Iterator[None]:
        """Around handing one response to gRPC (which waits for the caller to read it)."""
        self._send_started = time.monotonic()
        try:
            yield
        finally:
            self._send_started = None

    def overdue(self, now: float) -> str | None:
        """Why the call must be cancelled now, or None."""
        if now > self.deadline + WATCHDOG_GRACE_S:
            return "past its deadline"
        started = self._send_started
        if started is not None and now - started > self._send_s:
            return "its caller stopped reading"
        return None

    def cancel(self) -> None:
        self._cancel()


class Watchdog:
    """Cancels watched calls that are overdue (one thread for every call of a server)."""

    def __init__(self, send_s: float) -> None:
        self._send_s = send_s
        self._calls: set[CallWatch] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, context: grpc.ServicerContext, deadline: float) -> Iterator[CallWatch]:
        """Watch the call of `context` (time.monotonic() `deadline`) while in the block."""
        call = CallWatch(context.cancel, deadline, self._send_s)
        with self._lock:
            self._calls.add(call)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
        try:
            yield call
        finally:
            with self._lock:
                self._calls.discard(call)

    def _run(self) -> None:
        while True:
            time.sleep(WATCHDOG_TICK_S)
            now = time.monotonic()
            with self._lock:
                overdue = [(c, why) for c in self._calls if (why := c.overdue(now))]
                for call, _ in overdue:
                    self._calls.discard(call)
            for call, why in overdue:
                log.warning("cancelled a call: %s", why)
                call.cancel()
