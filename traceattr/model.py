"""The one internal trace model every input format is parsed into.

Ids are lowercase hex, zero-padded to full width (32 digits for trace ids, 16 for span ids) so
that a 64-bit Jaeger id, a base64 Tempo id and an OTLP/JSON hex id of the same trace compare
equal. Times are integer nanoseconds since the Unix epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from telemetry import names

#: Normalised span kinds (OTLP ``SPAN_KIND_UNSPECIFIED`` becomes ``internal``, as the spec says
#: to treat it).
KIND_INTERNAL = "internal"
KIND_SERVER = "server"
KIND_CLIENT = "client"
KIND_PRODUCER = "producer"
KIND_CONSUMER = "consumer"
KINDS = (KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER)

STATUS_UNSET = "unset"
STATUS_OK = "ok"
STATUS_ERROR = "error"

#: Span attribute holding the request id a Voxline gateway answered with.
REQUEST_ID_ATTRIBUTE = names.ATTR_REQUEST_ID


class AttributionError(Exception):
    """Base class of every error the attribution tool reports to its user."""


class TraceFormatError(AttributionError):
    """The input is not in any trace format this tool understands."""


class NotATraceError(TraceFormatError):
    """The input is a recognised query-API response that holds no trace (a search result, a
    service or operation list, an error body).

    ``kind`` names what it is; ``trace_ids`` lists the trace ids of a search result, so a
    caller can fetch them.
    """

    def __init__(self, message: str, *, kind: str, trace_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.trace_ids = trace_ids or []


class TraceNotFoundError(AttributionError):
    """The requested trace id is not in the input, or the backend answered 404."""


class FetchError(AttributionError):
    """A trace backend could not be reached or answered something unusable."""


@dataclass(frozen=True)
class SpanEvent:
    """A span event (OTLP) or log (Jaeger): a name, a time and attributes."""

    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Span:
    """One span, whatever format it came from."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = STATUS_UNSET
    events: list[SpanEvent] = field(default_factory=list)
    status_message: str = ""

    @property
    def duration_ns(self) -> int:
        """``end_ns - start_ns`` (never negative: parsers clamp inverted spans)."""
        return self.end_ns - self.start_ns


@dataclass
class Trace:
    """All spans of one trace id, plus what the parser had to say about them."""

    trace_id: str
    spans: list[Span]
    #: Format the spans were read from (see :data:`traceattr.parse.FORMATS`).
    source_format: str = ""
    #: Human-readable notes: duplicate span ids, orphans, clamped times, ...
    warnings: list[str] = field(default_factory=list)

    @property
    def start_ns(self) -> int:
        """Earliest span start (0 for an empty trace)."""
        return min((s.start_ns for s in self.spans), default=0)

    @property
    def end_ns(self) -> int:
        """Latest span end (0 for an empty trace)."""
        return max((s.end_ns for s in self.spans), default=0)

    @property
    def services(self) -> list[str]:
        """Service names in order of first appearance."""
        return list(dict.fromkeys(s.service for s in self.spans))

    def span(self, span_id: str) -> Span | None:
        """The first span with ``span_id`` (ids are normalised hex), or ``None``."""
        for s in self.spans:
            if s.span_id == span_id:
                return s
        return None

    @property
    def request_ids(self) -> list[str]:
        """The request ids its spans carry (:data:`REQUEST_ID_ATTRIBUTE`), usually one."""
        ids = (s.attributes.get(REQUEST_ID_ATTRIBUTE) for s in self.spans)
        return list(dict.fromkeys(str(i) for i in ids if i))

    def roots(self) -> list[Span]:
        """Spans whose parent is absent from the trace (true roots and orphans)."""
        ids = {s.span_id for s in self.spans}
        return [s for s in self.spans if s.parent_id is None or s.parent_id not in ids]


@dataclass
class TraceSet:
    """What one input (a file, a directory, an API response) contained."""

    traces: list[Trace]
    #: Detected format, e.g. ``"tempo-v1"``, ``"jaeger-v1"``, ``"otlp-json-lines"``.
    format: str
    #: Where it came from (a path or URL), for messages.
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def trace_ids(self) -> list[str]:
        """Trace ids in input order."""
        return [t.trace_id for t in self.traces]
