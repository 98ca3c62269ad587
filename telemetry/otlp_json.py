"""OTLP/JSON: reading the format of the Collector's ``otlpjsonfile`` receiver.

One line of a ``*.jsonl`` file is the protobuf JSON mapping of one
``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest``, with the deviations the OTLP/JSON
spec requires: ``traceId``/``spanId``/``parentSpanId`` are lowercase hex strings (protobuf JSON
would give base64), enums are integers, keys are lowerCamelCase. 64-bit integers stay decimal
strings (protobuf JSON mapping; the Collector accepts them). Writing it is
:mod:`telemetry.otlp_encode`'s job.

This is the one OTLP/JSON reader: :func:`iter_spans` walks the spans of ``resourceSpans`` and
:func:`attributes_dict` / :func:`any_value` decode attribute values, for the ``flatten_*``
helpers here (simple dicts for tests and tools, e.g. :mod:`telemetry.otlp_receiver`) and for
the trace analyser's parser (:mod:`traceattr.parse`) alike. It imports nothing but the
standard library, so the analyser can use it without the OpenTelemetry SDK or protobuf.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)


def read_otlp_json_lines(path: str | Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """Parse an OTLP/JSON lines file written by Voxline (or the Collector's file exporter).

    Returns one dict per line (one export request each), ids as hex strings. A line that is not
    valid JSON (e.g. the last line of a process killed mid-write) raises ``ValueError`` when
    ``strict`` is true and is skipped with a warning otherwise. A missing file gives ``[]``.
    """
    p = Path(path)
    if not p.exists():
        return []
    out: list[dict[str, Any]] = []
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if strict:
                    raise ValueError(f"{p}:{lineno}: not a JSON line: {exc}") from exc
                _logger.warning("skipping undecodable line %d of %s", lineno, p)
    return out


# ---------------------------------------------------------------------------------------------
# Flattening
# ---------------------------------------------------------------------------------------------


#: snake_case AnyValue keys (some exporters and hand-written files) -> OTLP/JSON camelCase.
_ANY_VALUE_KEYS = {
    "string_value": "stringValue",
    "bool_value": "boolValue",
    "int_value": "intValue",
    "double_value": "doubleValue",
    "array_value": "arrayValue",
    "kvlist_value": "kvlistValue",
    "bytes_value": "bytesValue",
}


def _decode_any_value(value: dict[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return attributes_dict(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    return None


def any_value(value: Any) -> Any:
    """Decode an OTLP/JSON ``AnyValue`` into a Python value.

    Tolerant, since query APIs and hand-written files disagree: snake_case keys are accepted,
    a raw value where an ``AnyValue`` was expected is taken as it is, and one that does not
    decode (say, an ``intValue`` that is no number) gives its undecoded content.
    """
    if not isinstance(value, dict):
        return value
    fixed = {_ANY_VALUE_KEYS.get(k, k): v for k, v in value.items()}
    try:
        return _decode_any_value(fixed)
    except (ValueError, TypeError):  # binascii.Error (bad base64) is a ValueError
        return next(iter(fixed.values()), None)


def attributes_dict(kvs: Any) -> dict[str, Any]:
    """Decode a list of OTLP/JSON ``KeyValue`` into a dict (a mapping, as hand-written files
    have, is taken as it is; entries without a key are skipped)."""
    if isinstance(kvs, dict):
        return dict(kvs)
    return {
        str(kv["key"]): any_value(kv.get("value", {}))
        for kv in kvs or []
        if isinstance(kv, dict) and "key" in kv
    }


#: Keys of the spans' scope groups in a ``ResourceSpans``: OTLP/JSON, snake_case (some
#: exporters) and the pre-1.0 name old Tempo versions and SDKs still send.
_SCOPE_SPANS_KEYS = ("scopeSpans", "scope_spans", "instrumentationLibrarySpans")


def iter_spans(
    resource_spans: Iterable[Any],
) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """Yield ``(resource attributes, scope name, span)`` for every span of ``resourceSpans``.

    ``span`` is the span's OTLP/JSON object as it is; the resource dict is shared by the spans
    of one ``ResourceSpans``. Entries that are not objects are skipped.
    """
    for rs in resource_spans:
        if not isinstance(rs, dict):
            continue
        resource = attributes_dict((rs.get("resource") or {}).get("attributes"))
        for key in _SCOPE_SPANS_KEYS:
            for ss in rs.get(key) or []:
                if not isinstance(ss, dict):
                    continue
                scope = ss.get("scope") or ss.get("instrumentationLibrary") or {}
                scope_name = str(scope.get("name", "")) if isinstance(scope, dict) else ""
                for span in ss.get("spans") or []:
                    if isinstance(span, dict):
                        yield resource, scope_name, span


def _int(value: Any, default: int = 0) -> int:
    return int(value) if value is not None else default


def flatten_spans(requests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten OTLP/JSON trace requests into one dict per span.

    Keys: ``trace_id``, ``span_id``, ``parent_span_id`` (hex, ``""`` for a root), ``name``,
    ``kind`` (int, 1 internal, 2 server, 3 client), ``attributes`` (dict), ``status``
    (``{"code": int, "message": str}``; 0 unset, 1 ok, 2 error), ``events`` (list of
    ``{"name", "attributes", "time_unix_nano"}``), ``links`` (list of ``{"trace_id", "span_id",
    "attributes"}``), ``resource`` (dict), ``scope`` (name), ``start_time_unix_nano``,
    ``end_time_unix_nano`` (int).
    """
    spans: list[dict[str, Any]] = []
    for request in requests:
        for resource, scope, s in iter_spans(request.get("resourceSpans", [])):
            status = s.get("status", {})
            spans.append(
                {
                    "trace_id": s.get("traceId", ""),
                    "span_id": s.get("spanId", ""),
                    "parent_span_id": s.get("parentSpanId", ""),
                    "name": s.get("name", ""),
                    "kind": int(s.get("kind", 0)),
                    "attributes": attributes_dict(s.get("attributes", [])),
                    "status": {
                        "code": int(status.get("code", 0)),
                        "message": status.get("message", ""),
                    },
                    "events": [
                        {
                            "name": e.get("name", ""),
                            "attributes": attributes_dict(e.get("attributes", [])),
                            "time_unix_nano": _int(e.get("timeUnixNano")),
                        }
                        for e in s.get("events", [])
                    ],
                    "links": [
                        {
                            "trace_id": link.get("traceId", ""),
                            "span_id": link.get("spanId", ""),
                            "attributes": attributes_dict(link.get("attributes", [])),
                        }
                        for link in s.get("links", [])
                    ],
                    "resource": resource,
                    "scope": scope,
                    "start_time_unix_nano": _int(s.get("startTimeUnixNano")),
                    "end_time_unix_nano": _int(s.get("endTimeUnixNano")),
                }
            )
    return spans


_METRIC_KINDS = ("sum", "gauge", "histogram", "exponentialHistogram", "summary")


def _flatten_point(kind: str, p: dict[str, Any]) -> dict[str, Any]:
    point: dict[str, Any] = {
        "attributes": attributes_dict(p.get("attributes", [])),
        "start_time_unix_nano": _int(p.get("startTimeUnixNano")),
        "time_unix_nano": _int(p.get("timeUnixNano")),
        "exemplars": [
            {
                "trace_id": e.get("traceId", ""),
                "span_id": e.get("spanId", ""),
                "value": float(e["asDouble"]) if "asDouble" in e else _int(e.get("asInt")),
                "time_unix_nano": _int(e.get("timeUnixNano")),
                "attributes": attributes_dict(e.get("filteredAttributes", [])),
            }
            for e in p.get("exemplars", [])
        ],
    }
    if kind in ("sum", "gauge"):
        point["value"] = float(p["asDouble"]) if "asDouble" in p else _int(p.get("asInt"))
    elif kind == "histogram":
        point["count"] = _int(p.get("count"))
        point["sum"] = float(p.get("sum", 0.0))
        point["bucket_counts"] = [int(c) for c in p.get("bucketCounts", [])]
        point["explicit_bounds"] = [float(b) for b in p.get("explicitBounds", [])]
        if "min" in p:
            point["min"] = float(p["min"])
        if "max" in p:
            point["max"] = float(p["max"])
    else:  # exponential histogram / summary: keep the raw point for whoever needs it
        point["raw"] = p
    return point


def flatten_metrics(requests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten OTLP/JSON metric requests into one dict per exported metric.

    Keys: ``name``, ``unit``, ``description``, ``type`` (``sum``, ``gauge``, ``histogram``, ...),
    ``monotonic`` (sums), ``temporality`` (int, 1 delta, 2 cumulative), ``resource`` (dict),
    ``scope``, ``data_points`` (list of dicts with ``attributes``, ``value`` or
    ``count``/``sum``/``bucket_counts``/``explicit_bounds``/``min``/``max``, and ``exemplars``
    with hex ``trace_id``/``span_id``). A metric exported N times appears N times, in order.
    """
    out: list[dict[str, Any]] = []
    for request in requests:
        for rm in request.get("resourceMetrics", []):
            resource = attributes_dict(rm.get("resource", {}).get("attributes", []))
            for sm in rm.get("scopeMetrics", []):
                scope = sm.get("scope", {}).get("name", "")
                for m in sm.get("metrics", []):
                    kind = next((k for k in _METRIC_KINDS if k in m), "unknown")
                    body = m.get(kind, {})
                    out.append(
                        {
                            "name": m.get("name", ""),
                            "unit": m.get("unit", ""),
                            "description": m.get("description", ""),
                            "type": kind,
                            "monotonic": bool(body.get("isMonotonic", False)),
                            "temporality": int(body.get("aggregationTemporality", 0)),
                            "resource": resource,
                            "scope": scope,
                            "data_points": [
                                _flatten_point(kind, p) for p in body.get("dataPoints", [])
                            ],
                        }
                    )
    return out


def iter_span_ids(spans: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """Yield ``(trace_id, span_id)`` of flattened spans (small convenience for tools)."""
    for s in spans:
        yield s["trace_id"], s["span_id"]
