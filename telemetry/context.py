"""Carry the trace context into worker threads.

``ThreadPoolExecutor.submit`` does not copy ``contextvars`` (where OpenTelemetry keeps the
current span), so spans made in the worker would start new traces. These helpers snapshot the
caller's context with :func:`contextvars.copy_context` and run the function inside it.

For a batching worker that serves many requests at once, capture each request's context when
it is enqueued (:func:`capture_context`) and make the batch span *link* to the requests' spans
(:func:`span_links`) — one batch cannot be the child of several parents.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context, get_current
from opentelemetry.trace import Link

from telemetry import names

P = ParamSpec("P")
R = TypeVar("R")


def wrap_with_context(fn: Callable[P, R]) -> Callable[P, R]:
    """Bind ``fn`` to a copy of the *current* context (taken now, not at call time).

    The wrapper may be called from any thread, and more than once (each call runs in its own
    copy, so context changes inside one call do not leak into the next).
    """
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.copy().run(fn, *args, **kwargs)

    return wrapper


def submit_with_context(
    executor: Executor, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> Future[R]:
    """``executor.submit(fn, *args, **kwargs)`` with the caller's trace context."""
    ctx = contextvars.copy_context()
    return executor.submit(ctx.run, fn, *args, **kwargs)


def capture_context() -> Context:
    """The current OpenTelemetry context, to store next to a queued request."""
    return get_current()


def span_links(contexts: Iterable[Context]) -> list[Link]:
    """Links to the spans current in ``contexts`` (skipping invalid ones), for a batch span."""
    links: list[Link] = []
    for ctx in contexts:
        span_context = trace.get_current_span(ctx).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return links


def trace_response_headers(span: trace.Span) -> list[tuple[str, str]]:
    """The headers (or gRPC metadata) that tell a caller which trace served it.

    ``voxline-trace-id: <32 hex>`` and the W3C Trace Context Level 2 ``traceresponse:
    00-<trace id>-<span id>-<flags>`` of ``span`` (the server span); the flags say whether the
    trace was sampled, i.e. whether it will be found in a backend. Empty when ``span`` has no
    valid context (telemetry disabled).
    """
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return []
    trace_id = format(ctx.trace_id, "032x")
    value = f"00-{trace_id}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    return [(names.TRACE_ID_RESPONSE_KEY, trace_id), (names.TRACE_RESPONSE_KEY, value)]
