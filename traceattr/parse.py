"""Read traces from any query API or file format into :class:`~traceattr.model.Trace`.

Formats (auto-detected from content, never from a file name):

=================  ==============================================================================
``otlp-json``      one OTLP/JSON ``ExportTraceServiceRequest``/``TracesData``: ``resourceSpans``
``otlp-json-lines`` several of those, one per line (the Collector ``otlpjsonfile`` format and
                   Voxline's local ``<run_dir>/<service>.traces.jsonl``) or concatenated
``tempo-v1``       Tempo ``GET /api/traces/<id>``: ``{"batches": [ResourceSpans...]}``
``tempo-v2``       Tempo ``GET /api/v2/traces/<id>``: ``{"trace": {"resourceSpans": [...]}}``
``jaeger-v3``      Jaeger ``GET /api/v3/traces[/<id>]``: ``{"result": {"resourceSpans": [...]}}``
``jaeger-v1``      Jaeger ``GET /api/traces/<id>`` and ``GET /api/traces?service=...``:
                   ``{"data": [{"traceID", "spans", "processes"}, ...]}``
``jaeger-ui``      one Jaeger UI trace object ``{"traceID", "spans", "processes"}`` (no ``data``)
``jaeger-model``   Jaeger's internal ``model.Trace`` JSON: ``{"spans": [...]}`` with base64 ids,
                   RFC 3339 start times, ``"5000ns"`` durations, inline ``process``, ``vStr`` tags
=================  ==============================================================================

Everything OTLP-shaped is parsed by one reader that accepts both protobuf-JSON conventions
(base64 ids, enum *names* such as ``SPAN_KIND_SERVER``, as Tempo serves them) and OTLP/JSON ones
(hex ids, integer enums), ``scopeSpans`` and the pre-1.0 ``instrumentationLibrarySpans``,
camelCase and snake_case keys, numbers as JSON numbers or decimal strings. The Jaeger reader
likewise accepts ``traceID``/``traceId``, microseconds as numbers or strings, and RFC 3339 times.

Recognised responses that hold no trace -- Tempo search results, Jaeger service/operation
lists, api/v3 trace summaries, error bodies, OTLP metrics or logs -- raise
:class:`~traceattr.model.NotATraceError` saying what they are (with the trace ids of
a search result), rather than parsing as an empty trace.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from telemetry.otlp_json import attributes_dict, iter_spans, read_otlp_json_lines
from traceattr.analysis import is_synthesis_root
from traceattr.model import (
    KIND_CLIENT,
    KIND_CONSUMER,
    KIND_INTERNAL,
    KIND_PRODUCER,
    KIND_SERVER,
    KINDS,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    AttributionError,
    NotATraceError,
    Span,
    SpanEvent,
    Trace,
    TraceFormatError,
    TraceNotFoundError,
    TraceSet,
)
from traceattr.timeline import expand_timelines

#: Trace formats this module parses, with a one-line description each.
FORMATS: dict[str, str] = {
    "otlp-json": "OTLP/JSON trace request (top-level resourceSpans)",
    "otlp-json-lines": "OTLP/JSON lines (Collector otlpjsonfile / Voxline *.traces.jsonl)",
    "tempo-v1": "Tempo GET /api/traces/<id> (top-level batches)",
    "tempo-v2": "Tempo GET /api/v2/traces/<id> (trace.resourceSpans)",
    "jaeger-v3": "Jaeger GET /api/v3/traces/<id> (result.resourceSpans)",
    "jaeger-v1": "Jaeger GET /api/traces/<id> (data[].spans)",
    "jaeger-ui": "a single Jaeger UI trace object (traceID, spans, processes)",
    "jaeger-model": "Jaeger internal model JSON (spans with inline process)",
}

#: Recognised documents that are not traces, with what to tell the user.
NON_TRACE_FORMATS: dict[str, str] = {
    "tempo-search": "a Tempo search result (GET /api/search)",
    "jaeger-v3-summaries": "a Jaeger api/v3 trace-summary search result",
    "jaeger-services": "a Jaeger service list (GET /api/services)",
    "jaeger-operations": "a Jaeger operation list (GET /api/operations)",
    "jaeger-error": "a Jaeger error response",
    "jaeger-v3-error": "a Jaeger api/v3 error response",
    "otlp-metrics": "OTLP metrics, not traces (use the *.traces.jsonl file)",
    "otlp-logs": "OTLP logs, not traces",
}

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8

_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_RFC3339_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d)(?:[.,](\d+))?([Zz]|[+-]\d\d:?\d\d)?$"
)
_DURATION_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ns|us|µs|μs|ms|s|m|h)\s*$")
_DURATION_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_KIND_BY_INT = {
    0: KIND_INTERNAL,
    1: KIND_INTERNAL,
    2: KIND_SERVER,
    3: KIND_CLIENT,
    4: KIND_PRODUCER,
    5: KIND_CONSUMER,
}


# ---------------------------------------------------------------------------------------------
# Small tolerant converters
# ---------------------------------------------------------------------------------------------


def _first(d: dict[str, Any], *keys: str) -> Any:
    """The value of the first of ``keys`` present in ``d`` (APIs disagree on spelling)."""
    for key in keys:
        if key in d and d[key] is not None:
            return d[key]
    return None


def _to_int(value: Any) -> int:
    """int from an int, a float or a decimal string (64-bit ints are strings in proto JSON)."""
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        try:
            return int(float(str(value).strip()))
        except ValueError:
            return 0


def normalize_id(value: Any, nbytes: int) -> str | None:
    """Lowercase hex, zero-padded to ``2 * nbytes`` digits, from a hex or base64 id.

    Hex is recognised first: a base64 trace/span id always carries ``=`` padding (16 and 8 bytes
    are not multiples of 3), so a string of hex digits no longer than the hex width is hex.
    Tempo's own test data has upper-case hex where base64 would be expected; that works too.
    Returns ``None`` for an empty or all-zero id (Jaeger's "no parent").
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = format(value, "x")
    else:
        text = str(value).strip()
        if text.lower().startswith("0x"):
            text = text[2:]
    if not text:
        return None
    width = 2 * nbytes
    if _HEX_RE.fullmatch(text) and len(text) <= width:
        hexid = text.lower().rjust(width, "0")
    else:
        raw = _b64decode(text)
        if raw is None:
            # Not an id we understand; keep it verbatim so it still groups and links.
            return text.lower()
        hexid = raw.hex().rjust(width, "0")
    return None if set(hexid) == {"0"} else hexid


def _b64decode(text: str) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def normalize_kind(value: Any) -> str:
    """One of :data:`~traceattr.model.KINDS` from an int, a digit string, an OTLP
    enum name (``SPAN_KIND_SERVER``) or a Jaeger ``span.kind`` tag (``server``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _KIND_BY_INT.get(value, KIND_INTERNAL)
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return _KIND_BY_INT.get(int(text), KIND_INTERNAL)
        text = text.removeprefix("span_kind_")
        if text in KINDS:
            return text
    return KIND_INTERNAL


def _otlp_status(status: Any) -> tuple[str, str]:
    if not isinstance(status, dict):
        return STATUS_UNSET, ""
    code = status.get("code")
    message = str(status.get("message") or "")
    if isinstance(code, str) and not code.strip().isdigit():
        upper = code.upper()
        if "ERROR" in upper:
            return STATUS_ERROR, message
        if upper.endswith("OK"):
            return STATUS_OK, message
        return STATUS_UNSET, message
    number = _to_int(code)
    return {1: STATUS_OK, 2: STATUS_ERROR}.get(number, STATUS_UNSET), message


def parse_rfc3339_ns(text: str) -> int | None:
    """Nanoseconds since the epoch from an RFC 3339 time with up to 9 fractional digits
    (``datetime`` alone keeps only microseconds). ``None`` if ``text`` is not one."""
    m = _RFC3339_RE.match(text.strip())
    if not m:
        return None
    base, frac, tz = m.groups()
    if not tz or tz in ("Z", "z"):
        tz = "+00:00"
    elif ":" not in tz:
        tz = f"{tz[:3]}:{tz[3:]}"
    try:
        dt = datetime.fromisoformat(base.replace(" ", "T").replace("t", "T") + tz)
    except ValueError:
        return None
    seconds = calendar.timegm(dt.utctimetuple())
    nanos = int((frac or "0")[:9].ljust(9, "0"))
    return seconds * 10**9 + nanos


def parse_duration_ns(value: Any, *, number_unit_ns: int) -> int:
    """Nanoseconds from a number (in units of ``number_unit_ns``) or a string such as
    ``"5000ns"``, ``"0.000005s"``, ``"12ms"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * number_unit_ns)
    if isinstance(value, str):
        text = value.strip()
        m = _DURATION_RE.match(text)
        if m:
            return int(float(m.group(1)) * _DURATION_NS[m.group(2)])
        try:
            return int(float(text) * number_unit_ns)
        except ValueError:
            return 0
    return 0


def _jaeger_time_ns(value: Any) -> int:
    """Jaeger times: microseconds (number or string) or RFC 3339 (internal model JSON)."""
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        parsed = parse_rfc3339_ns(value)
        return parsed if parsed is not None else 0
    return _to_int(value) * 1_000


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------


def detect_format(doc: Any) -> str:
    """Name the format of one decoded JSON document.

    Returns a key of :data:`FORMATS`, a key of :data:`NON_TRACE_FORMATS`, or ``"unknown"``.
    """
    if isinstance(doc, list):
        if doc and all(isinstance(d, dict) and "resourceSpans" in d for d in doc):
            return "otlp-json-lines"
        if doc and all(isinstance(d, dict) and "spans" in d for d in doc):
            return "jaeger-v1"  # a bare `data` array
        return "unknown"
    if not isinstance(doc, dict):
        return "unknown"
    if "resourceSpans" in doc or "resource_spans" in doc:
        return "otlp-json"
    if "batches" in doc:
        return "tempo-v1"
    if isinstance(doc.get("trace"), dict):
        return "tempo-v2"
    if isinstance(doc.get("result"), dict):
        return "jaeger-v3"
    if "data" in doc:
        data = doc["data"]
        if isinstance(data, list):
            if data and all(isinstance(d, str) for d in data):
                return "jaeger-services"
            if data and all(isinstance(d, dict) and "spans" not in d for d in data):
                return "jaeger-operations" if "name" in data[0] else "unknown"
            return "jaeger-v1"
        if data is None and doc.get("errors"):
            return "jaeger-error"
    if doc.get("errors") and not doc.get("spans"):
        return "jaeger-error"
    if isinstance(doc.get("spans"), list):
        if _first(doc, "traceID", "traceId") is not None or "processes" in doc:
            return "jaeger-ui"
        return "jaeger-model"
    if isinstance(doc.get("traces"), list):
        return "tempo-search"
    if isinstance(doc.get("summaries"), list):
        return "jaeger-v3-summaries"
    if isinstance(doc.get("services"), list):
        return "jaeger-services"
    if isinstance(doc.get("operations"), list):
        return "jaeger-operations"
    if isinstance(doc.get("error"), dict):
        return "jaeger-v3-error"
    if "resourceMetrics" in doc:
        return "otlp-metrics"
    if "resourceLogs" in doc:
        return "otlp-logs"
    return "unknown"


def _not_a_trace(doc: Any, fmt: str, source: str) -> NotATraceError:
    """Explain a non-trace document, with the trace ids a search result lists."""
    where = f"{source}: " if source else ""
    what = NON_TRACE_FORMATS[fmt]
    ids: list[str] = []
    detail = ""
    if fmt == "tempo-search":
        ids = [str(_first(t, "traceID", "traceId")) for t in doc["traces"] if isinstance(t, dict)]
    elif fmt == "jaeger-v3-summaries":
        ids = [str(_first(t, "traceId", "traceID")) for t in doc["summaries"]]
    elif fmt == "jaeger-services":
        services = doc.get("services") if "services" in doc else doc.get("data")
        detail = f": {', '.join(map(str, services or []))}"
    elif fmt == "jaeger-operations":
        ops = doc.get("operations") if "operations" in doc else doc.get("data")
        detail = f": {', '.join(str(o.get('name')) for o in ops or [] if isinstance(o, dict))}"
    elif fmt == "jaeger-error":
        errors = doc.get("errors") or []
        detail = ": " + "; ".join(
            f"{e.get('code', '')} {e.get('msg', '')}".strip() for e in errors if isinstance(e, dict)
        )
    elif fmt == "jaeger-v3-error":
        err = doc["error"]
        detail = f": {err.get('httpCode', '')} {err.get('message', '')}".rstrip()
    if ids:
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        detail = f" listing {len(ids)} trace(s) ({shown}); fetch one by id, or use `trace report`"
    return NotATraceError(f"{where}this is {what}, not a trace{detail}", kind=fmt, trace_ids=ids)


# ---------------------------------------------------------------------------------------------
# OTLP-shaped documents
# ---------------------------------------------------------------------------------------------


def _resource_spans_of(doc: Any, fmt: str) -> list[Any]:
    if fmt == "otlp-json":
        return list(_first(doc, "resourceSpans", "resource_spans") or [])
    if fmt == "tempo-v1":
        return list(doc.get("batches") or [])
    if fmt == "tempo-v2":
        inner = doc["trace"]
        return list(_first(inner, "resourceSpans", "resource_spans", "batches") or [])
    if fmt == "jaeger-v3":
        inner = doc["result"]
        return list(_first(inner, "resourceSpans", "resource_spans") or [])
    raise AssertionError(fmt)  # pragma: no cover - callers pass OTLP formats only


def _otlp_spans(resource_spans: Iterable[Any]) -> Iterator[Span]:
    for resource, _scope, s in iter_spans(resource_spans):
        yield _otlp_span(s, str(resource.get("service.name") or ""))


def _otlp_span(s: dict[str, Any], service: str) -> Span:
    status, message = _otlp_status(s.get("status"))
    events = [
        SpanEvent(
            name=str(e.get("name") or ""),
            time_ns=_to_int(_first(e, "timeUnixNano", "time_unix_nano")),
            attributes=attributes_dict(e.get("attributes")),
        )
        for e in s.get("events") or []
        if isinstance(e, dict)
    ]
    return Span(
        trace_id=normalize_id(_first(s, "traceId", "traceID", "trace_id"), TRACE_ID_BYTES) or "",
        span_id=normalize_id(_first(s, "spanId", "spanID", "span_id"), SPAN_ID_BYTES) or "",
        parent_id=normalize_id(
            _first(s, "parentSpanId", "parentSpanID", "parent_span_id"), SPAN_ID_BYTES
        ),
        name=str(s.get("name") or ""),
        kind=normalize_kind(s.get("kind")),
        start_ns=_to_int(_first(s, "startTimeUnixNano", "start_time_unix_nano")),
        end_ns=_to_int(_first(s, "endTimeUnixNano", "end_time_unix_nano")),
        service=service,
        attributes=attributes_dict(s.get("attributes")),
        status=status,
        events=events,
        status_message=message,
    )


# ---------------------------------------------------------------------------------------------
# Jaeger documents
# ---------------------------------------------------------------------------------------------

_JAEGER_TAG_VALUE_KEYS = ("vStr", "vInt64", "vBool", "vFloat64", "vBinary")


def _jaeger_tag_value(tag: dict[str, Any]) -> Any:
    typ = str(tag.get("type") or tag.get("vType") or "").lower()
    if "value" in tag:
        value = tag["value"]
    else:
        value = next((tag[k] for k in _JAEGER_TAG_VALUE_KEYS if k in tag), None)
    if isinstance(value, str):
        # The UI model sends int64 beyond 2^53 as strings; bools sometimes as strings too.
        if typ in ("int64", "int"):
            try:
                return int(value)
            except ValueError:
                return value
        if typ in ("float64", "float"):
            try:
                return float(value)
            except ValueError:
                return value
        if typ == "bool":
            return value.lower() == "true"
    return value


def _jaeger_tags(tags: Any) -> dict[str, Any]:
    if isinstance(tags, dict):
        return dict(tags)
    return {
        str(t["key"]): _jaeger_tag_value(t)
        for t in tags or []
        if isinstance(t, dict) and "key" in t
    }


def _jaeger_processes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    processes = doc.get("processes")
    if isinstance(processes, dict):
        return {str(k): v for k, v in processes.items() if isinstance(v, dict)}
    out: dict[str, dict[str, Any]] = {}
    for entry in doc.get("processMap") or []:  # internal model: [{processID, process}]
        if isinstance(entry, dict) and isinstance(entry.get("process"), dict):
            out[str(entry.get("processID") or entry.get("processId") or "")] = entry["process"]
    return out


def _jaeger_parent(s: dict[str, Any], trace_id: str) -> str | None:
    explicit = normalize_id(_first(s, "parentSpanID", "parentSpanId"), SPAN_ID_BYTES)
    if explicit:
        return explicit
    refs = [r for r in s.get("references") or [] if isinstance(r, dict)]

    def same_trace(ref: dict[str, Any]) -> bool:
        ref_trace = normalize_id(_first(ref, "traceID", "traceId"), TRACE_ID_BYTES)
        return ref_trace is None or ref_trace == trace_id

    def ref_type(ref: dict[str, Any]) -> str:
        # Protobuf JSON omits the default enum value, which is CHILD_OF (0).
        value = ref.get("refType", ref.get("ref_type", "CHILD_OF"))
        return "FOLLOWS_FROM" if str(value).upper() in ("FOLLOWS_FROM", "1") else "CHILD_OF"

    # Jaeger's own rule (model.Span.ParentSpanID): the first CHILD_OF reference into the same
    # trace; we fall back to a same-trace FOLLOWS_FROM, which the UI also draws as the parent.
    for wanted in ("CHILD_OF", "FOLLOWS_FROM"):
        for ref in refs:
            if ref_type(ref) == wanted and same_trace(ref):
                parent = normalize_id(_first(ref, "spanID", "spanId"), SPAN_ID_BYTES)
                if parent:
                    return parent
    return None


def _jaeger_span(
    s: dict[str, Any], processes: dict[str, dict[str, Any]], default_trace_id: str | None
) -> Span:
    trace_id = (
        normalize_id(_first(s, "traceID", "traceId"), TRACE_ID_BYTES) or default_trace_id or ""
    )
    process = s.get("process")
    if not isinstance(process, dict):
        process = processes.get(str(_first(s, "processID", "processId") or ""), {})
    tags = _jaeger_tags(s.get("tags"))
    start_ns = _jaeger_time_ns(s.get("startTime"))
    duration_ns = parse_duration_ns(s.get("duration"), number_unit_ns=1_000)
    status = STATUS_UNSET
    otel_status = str(tags.get("otel.status_code", "")).upper()
    if tags.get("error") in (True, "true", "True") or otel_status == "ERROR":
        status = STATUS_ERROR
    elif otel_status == "OK":
        status = STATUS_OK
    events = []
    for log in s.get("logs") or []:
        if not isinstance(log, dict):
            continue
        fields = _jaeger_tags(log.get("fields"))
        name = fields.get("event", "log")
        events.append(SpanEvent(str(name), _jaeger_time_ns(log.get("timestamp")), fields))
    return Span(
        trace_id=trace_id,
        span_id=normalize_id(_first(s, "spanID", "spanId"), SPAN_ID_BYTES) or "",
        parent_id=_jaeger_parent(s, trace_id),
        name=str(_first(s, "operationName", "name") or ""),
        kind=normalize_kind(tags.get("span.kind")),
        start_ns=start_ns,
        end_ns=start_ns + max(duration_ns, 0),
        service=str(process.get("serviceName") or ""),
        attributes=tags,
        status=status,
        events=events,
        status_message=str(tags.get("otel.status_description") or ""),
    )


def _jaeger_trace_spans(trace_doc: dict[str, Any]) -> Iterator[Span]:
    processes = _jaeger_processes(trace_doc)
    default_trace_id = normalize_id(_first(trace_doc, "traceID", "traceId"), TRACE_ID_BYTES)
    for s in trace_doc.get("spans") or []:
        if isinstance(s, dict):
            yield _jaeger_span(s, processes, default_trace_id)


# ---------------------------------------------------------------------------------------------
# Assembling traces
# ---------------------------------------------------------------------------------------------


def _spans_of(doc: Any, fmt: str) -> list[Span]:
    if fmt in ("otlp-json", "tempo-v1", "tempo-v2", "jaeger-v3"):
        return list(_otlp_spans(_resource_spans_of(doc, fmt)))
    if fmt == "otlp-json-lines":
        return [s for d in doc for s in _otlp_spans(_resource_spans_of(d, "otlp-json"))]
    if fmt == "jaeger-v1":
        data = doc if isinstance(doc, list) else doc.get("data") or []
        return [s for t in data if isinstance(t, dict) for s in _jaeger_trace_spans(t)]
    if fmt in ("jaeger-ui", "jaeger-model"):
        return list(_jaeger_trace_spans(doc))
    raise AssertionError(fmt)  # pragma: no cover


def _span_key(s: Span) -> tuple[Any, ...]:
    return (s.span_id, s.parent_id, s.name, s.start_ns, s.end_ns, s.service)


def assemble_traces(spans: Iterable[Span], source_format: str) -> list[Trace]:
    """Group spans by trace id (in order of first appearance) and sanitise them.

    - exact duplicates (same id, parent, name, times, service: a span exported twice, or the
      same file read twice) are dropped, with a warning;
    - different spans sharing one id are all kept, with a warning (children then hang under
      the first of them);
    - a span ending before it starts is clamped to zero length;
    - spans whose parent is not in the trace are noted (they are shown as extra roots);
    - a stream's phases recorded as a timeline on its span become phase spans again
      (:mod:`traceattr.timeline`).
    """
    by_trace: dict[str, list[Span]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    traces: list[Trace] = []
    for trace_id, members in by_trace.items():
        warnings: list[str] = []
        if not trace_id:
            warnings.append("spans without a trace id were grouped together")
        seen: dict[tuple[Any, ...], Span] = {}
        kept: list[Span] = []
        dropped = 0
        for s in members:
            key = _span_key(s)
            if key in seen:
                dropped += 1
                continue
            seen[key] = s
            kept.append(s)
        if dropped:
            warnings.append(f"dropped {dropped} exact duplicate span(s)")
        counts: dict[str, int] = {}
        for s in kept:
            counts[s.span_id] = counts.get(s.span_id, 0) + 1
        clashing = sorted(i for i, n in counts.items() if n > 1)
        if clashing:
            warnings.append(
                f"{len(clashing)} span id(s) used by different spans: {', '.join(clashing[:3])}"
            )
        inverted = 0
        untimed = 0
        for s in kept:
            if s.end_ns < s.start_ns:
                s.end_ns = s.start_ns
                inverted += 1
            if s.start_ns == 0:
                untimed += 1
        if inverted:
            warnings.append(f"{inverted} span(s) ended before they started (clamped to 0 ms)")
        if untimed:
            warnings.append(f"{untimed} span(s) carry no start time")
        ids = set(counts)
        orphans = [s for s in kept if s.parent_id is not None and s.parent_id not in ids]
        if orphans:
            warnings.append(
                f"{len(orphans)} span(s) have a parent that is not in the trace "
                "(incomplete trace?); shown as extra roots"
            )
        kept = expand_timelines(kept)
        traces.append(Trace(trace_id, kept, source_format=source_format, warnings=warnings))
    return traces


def parse_document(doc: Any, source: str = "") -> TraceSet:
    """Parse one decoded JSON document of any supported format.

    Raises :class:`NotATraceError` for recognised non-trace responses and
    :class:`TraceFormatError` for anything else that is not a trace.
    """
    fmt = detect_format(doc)
    if fmt in NON_TRACE_FORMATS:
        raise _not_a_trace(doc, fmt, source)
    if fmt not in FORMATS:
        where = f"{source}: " if source else ""
        if isinstance(doc, dict):
            keys = ", ".join(list(doc)[:6]) or "an empty object"
        else:
            keys = "a JSON " + {list: "array", str: "string", type(None): "null"}.get(
                type(doc), type(doc).__name__
            )
        raise TraceFormatError(
            f"{where}not a trace format this tool knows (top-level: {keys}); expected one of "
            + ", ".join(FORMATS)
        )
    return TraceSet(assemble_traces(_spans_of(doc, fmt), fmt), fmt, source)


def parse_documents(docs: Iterable[Any], source: str = "") -> TraceSet:
    """Parse several documents (JSON lines, files, API pages) into one set of traces.

    Spans of one trace spread over several documents (one line per export batch, one file per
    service) are merged. Non-trace documents among trace documents are skipped with a warning;
    if *every* document is a non-trace one, the first one's :class:`NotATraceError` is raised.
    """
    spans: list[Span] = []
    formats: list[str] = []
    warnings: list[str] = []
    first_error: TraceFormatError | None = None
    for index, doc in enumerate(docs):
        fmt = detect_format(doc)
        if fmt in NON_TRACE_FORMATS or fmt not in FORMATS:
            try:
                parse_document(doc, source)
            except TraceFormatError as exc:
                first_error = first_error or exc
                warnings.append(f"document {index + 1}: {exc}")
            continue
        formats.append(fmt)
        spans.extend(_spans_of(doc, fmt))
    if not formats:
        if first_error is not None:
            raise first_error
        raise TraceFormatError(f"{source or 'input'}: no JSON documents")
    distinct = list(dict.fromkeys(formats))
    if distinct == ["otlp-json"] and len(formats) > 1:
        fmt = "otlp-json-lines"
    elif len(distinct) == 1:
        fmt = distinct[0]
    else:
        fmt = "mixed(" + ",".join(distinct) + ")"
    return TraceSet(assemble_traces(spans, fmt), fmt, source, warnings)


def iter_json_values(text: str) -> Iterator[Any]:
    """Decode consecutive JSON values (JSON lines, or pretty-printed objects one after another,
    as a streaming API returns them). A truncated tail -- the last line of a file whose writer
    was killed -- ends the iteration with a :class:`TraceFormatError` only if nothing decoded
    before it."""
    decoder = json.JSONDecoder()
    pos = 0
    count = 0
    length = len(text)
    while True:
        while pos < length and text[pos] in " \t\r\n":
            pos += 1
        if pos >= length:
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if count == 0:
                raise TraceFormatError(f"not JSON: {exc}") from exc
            return  # a torn last record: keep what decoded
        count += 1
        yield value


def parse_text(text: str, source: str = "") -> TraceSet:
    """Parse the text of a saved API response, an OTLP/JSON file or a JSON-lines file."""
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise TraceFormatError(f"{source or 'input'}: empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        docs = list(iter_json_values(text))
        return parse_documents(docs, source)
    if detect_format(doc) == "otlp-json-lines":  # a JSON array of requests
        return parse_documents(doc, source)
    return parse_document(doc, source)


def load_file(path: str | Path) -> TraceSet:
    """Read one file of any supported format (a directory is read as a run directory)."""
    p = Path(path)
    if p.is_dir():
        return load_run_dir(p)
    if not p.exists():
        raise AttributionError(f"{p}: no such file")
    if p.name.endswith(".jsonl"):
        # Voxline's own files: reuse the reader that tolerates a torn last line.
        docs = read_otlp_json_lines(p)
        if not docs:
            raise TraceFormatError(f"{p}: no JSON lines")
        return parse_documents(docs, str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TraceFormatError(f"{p}: not a text file ({exc})") from exc
    return parse_text(text, str(p))


def load_files(paths: Iterable[str | Path]) -> TraceSet:
    """Read several files into one set of traces (spans of a trace may span files)."""
    sets = [load_file(p) for p in paths]
    if not sets:
        raise AttributionError("no files given")
    if len(sets) == 1:
        return sets[0]
    spans = [s for ts in sets for t in ts.traces for s in t.spans]
    formats = list(dict.fromkeys(ts.format for ts in sets))
    fmt = formats[0] if len(formats) == 1 else "mixed(" + ",".join(formats) + ")"
    warnings = [w for ts in sets for w in ts.warnings]
    return TraceSet(assemble_traces(spans, fmt), fmt, f"{len(sets)} files", warnings)


def _trace_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.traces.jsonl"))


def resolve_run_dir(path: str | Path) -> Path:
    """The run directory to read: ``path`` itself if it holds ``*.traces.jsonl`` files, else
    its most recently written subdirectory that does (``voxline demo``/``serve`` put each run
    in ``runs/<timestamp>/``, so ``--run-dir runs`` means "the latest run")."""
    p = Path(path)
    if not p.is_dir():
        raise AttributionError(f"{p}: not a directory")
    if _trace_files(p):
        return p
    candidates = [d for d in p.iterdir() if d.is_dir() and _trace_files(d)]
    if not candidates:
        # Not found (yet): a service writes its file with its first export, ~5 s after start.
        raise TraceNotFoundError(
            f"{p}: no *.traces.jsonl files here or in its subdirectories "
            "(is this a Voxline run directory, and did the services run with --run-dir?)"
        )
    return max(candidates, key=lambda d: max(f.stat().st_mtime for f in _trace_files(d)))


#: The gateway's JSON log in a local run directory (services/cli/stack.py writes
#: ``<run_dir>/<service>.log``; docs/telemetry.md, "Logging", has the fields).
GATEWAY_LOG = "gateway.log"
_LOG_TAIL_BYTES = 1 << 20


def _is_synthesis_record(record: dict[str, Any]) -> bool:
    if record.get("message") == "synthesized":  # the gateway, once a request succeeded
        return True
    # services/runtime/rpc.py, once a request was refused or failed.
    return str(record.get("rpc.method", "")).startswith("Synthesize")


def latest_logged_trace_id(directory: str | Path) -> str | None:
    """The trace id of the newest synthesis request the gateway of the run directory
    ``directory`` logged (its ``gateway.log``), or ``None``.

    The gateway logs a request as it ends, its spans are exported up to ~5 s later: this is
    how ``voxline trace`` knows that the newest exported request is not the newest one.
    """
    try:
        with (Path(directory) / GATEWAY_LOG).open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:  # a supervisor note, a torn first line
            continue
        if not isinstance(record, dict) or not _is_synthesis_record(record):
            continue
        trace_id = record.get("trace_id")
        if isinstance(trace_id, str) and _HEX_RE.fullmatch(trace_id):
            return trace_id.lower()
    return None


def load_run_dir(path: str | Path) -> TraceSet:
    """Read every ``*.traces.jsonl`` of a Voxline run directory (see :func:`resolve_run_dir`)."""
    directory = resolve_run_dir(path)
    docs: list[Any] = []
    for f in _trace_files(directory):
        docs.extend(read_otlp_json_lines(f))
    if not docs:
        raise TraceNotFoundError(f"{directory}: the *.traces.jsonl files are empty")
    ts = parse_documents(docs, str(directory))
    ts.format = "otlp-json-lines"
    return ts


# ---------------------------------------------------------------------------------------------
# Choosing one trace
# ---------------------------------------------------------------------------------------------


def latest_trace(traces: list[Trace]) -> Trace:
    """The trace whose root span started last, preferring Voxline synthesis requests (so a
    later ``ListVoices`` call does not hide the request one wants to look at)."""
    if not traces:
        raise TraceNotFoundError("no traces")

    def root_start(t: Trace, only_synthesis: bool) -> int | None:
        roots = [s for s in t.roots() if not only_synthesis or is_synthesis_root(s)]
        if only_synthesis and not roots:
            roots = [s for s in t.spans if is_synthesis_root(s)]
        return max((s.start_ns for s in roots), default=None)

    synthesis = [(root_start(t, True), t) for t in traces]
    ranked = [(start, t) for start, t in synthesis if start is not None]
    if not ranked:
        ranked = [(root_start(t, False) or t.start_ns, t) for t in traces]
    return max(ranked, key=lambda pair: pair[0])[1]


def traces_with_request_id(traces: Iterable[Trace], request_id: str) -> list[Trace]:
    """The traces whose spans carry request id ``request_id`` (exact), oldest first."""
    found = [t for t in traces if request_id in t.request_ids]
    return sorted(found, key=lambda t: t.start_ns)


def select_trace(ts: TraceSet, trace_id: str | None = None, *, last: bool = False) -> Trace:
    """Pick one trace of ``ts``.

    ``trace_id`` selects a trace: a trace id (hex, any case, leading zeros optional), else a
    request id (what a Voxline gateway answered with; exact, the latest trace if several
    carry it), else a unique prefix of a trace id. Without it, a single trace is returned as
    is; with several, ``last`` or not, the most recent one (see :func:`latest_trace`).
    """
    where = ts.source or "input"
    if not ts.traces:
        raise TraceNotFoundError(f"{where}: contains no traces")
    if trace_id:
        wanted = trace_id.strip().lower().replace("-", "")
        full = normalize_id(wanted, TRACE_ID_BYTES) if _HEX_RE.fullmatch(wanted) else wanted
        exact = [t for t in ts.traces if t.trace_id == full]
        if exact:
            return exact[0]
        by_request = traces_with_request_id(ts.traces, trace_id.strip())
        if by_request:
            return by_request[-1]
        short = wanted.lstrip("0")
        matches = [t for t in ts.traces if short and t.trace_id.lstrip("0").startswith(short)] or [
            t for t in ts.traces if t.trace_id.startswith(wanted)
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(t.trace_id for t in matches[:5])
            raise TraceNotFoundError(f"trace id prefix {trace_id!r} is ambiguous in {where}: {ids}")
        known = ", ".join(t.trace_id for t in ts.traces[:5])
        more = f" (and {len(ts.traces) - 5} more)" if len(ts.traces) > 5 else ""
        raise TraceNotFoundError(
            f"trace or request id {trace_id} not found in {where}; it has {known}{more}"
        )
    if len(ts.traces) == 1 and not last:
        return ts.traces[0]
    return latest_trace(ts.traces)
