"""Where a request's phase records go: the per-RPC context the runtime keeps.

`rpc_method` opens it for every call (the method name, the server span, the tiling cursor,
and for streams a timeline); `StageRuntime.phase` reads it. Context variables, not globals:
each RPC runs on its own thread (or generator) with its own values.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace

from telemetry import PhaseTimeline

# The RPC method being served on this thread (for phase metrics' rpc.method attribute).
current_method: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "voxline_rpc_method", default=None
)
# The server span of the RPC being served (phase spans become current inside it).
server_span: contextvars.ContextVar[trace.Span] = contextvars.ContextVar(
    "voxline_server_span", default=trace.INVALID_SPAN
)
# End (time.time_ns) of the RPC's previous phase: stage phases tile the handler's time.
phase_cursor: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "voxline_phase_cursor", default=None
)
# Where a streaming RPC's phases go instead of child spans (None: one span per phase).
current_timeline: contextvars.ContextVar[PhaseTimeline | None] = contextvars.ContextVar(
    "voxline_phase_timeline", default=None
)


@contextmanager
def phase_timeline(span: trace.Span, stage: str) -> Iterator[None]:
    """Inside this block, phases are recorded as intervals written onto ``span`` at its end
    (:class:`telemetry.PhaseTimeline`) rather than as one child span each: streams repeat
    their phases per chunk, and their span count must grow with sentences, not chunks."""
    timeline = PhaseTimeline(stage)
    token = current_timeline.set(timeline)
    try:
        yield
    finally:
        current_timeline.reset(token)
        timeline.write_to(span)


@contextmanager
def rpc_context(method: str, stage: str, *, streaming: bool) -> Iterator[trace.Span]:
    """The phase context of one RPC being served; yields its server span."""
    token = current_method.set(method)
    span = trace.get_current_span()
    span_token = server_span.set(span)
    # The first phase starts where the server span started (SDK spans expose it).
    cursor_token = phase_cursor.set(getattr(span, "start_time", None))
    try:
        with phase_timeline(span, stage) if streaming else contextlib.nullcontext():
            yield span
    finally:
        phase_cursor.reset(cursor_token)
        server_span.reset(span_token)
        current_method.reset(token)
