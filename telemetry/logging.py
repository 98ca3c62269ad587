"""Structured JSON logging with trace correlation, and privacy helpers.

``configure_logging("acoustic", "INFO")`` makes the root logger write one JSON object per line
to stderr::

    {"time": "2026-01-01T12:00:00.123Z", "level": "INFO", "logger": "services.acoustic",
     "message": "batch done", "service.name": "acoustic",
     "trace_id": "4bf9...", "span_id": "00f0...", "batch_size": 4}

``trace_id``/``span_id`` are those of the span current when the record was made (absent
outside a span), so a log line can be joined to its trace. Fields passed with ``extra=`` are
included; values of keys that usually carry user input (:data:`SENSITIVE_KEYS`) are replaced
by ``"<redacted N chars>"``. Whether a *message* contains user text is the caller's
responsibility: log lengths and ids, never text (use :func:`redact_text` when in doubt).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from opentelemetry import trace

#: ``extra=`` keys whose values are redacted by :class:`PrivacyFilter`.
SENSITIVE_KEYS: frozenset[str] = frozenset(
    {"text", "input_text", "ssml", "normalized_text", "phonemes", "transcript", "prompt"}
)

# Attributes every LogRecord has; anything else came from ``extra=``.
_RESERVED = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "trace_id", "span_id", "trace_sampled", "taskName"}
)


def redact_text(text: str | None) -> str:
    """A loggable stand-in for user text: its length only, e.g. ``"<redacted 42 chars>"``."""
    return f"<redacted {len(text) if text else 0} chars>"


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` (hex) of the current span to each record, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
            record.trace_sampled = ctx.trace_flags.sampled
        return True


class PrivacyFilter(logging.Filter):
    """Redacts ``extra=`` fields whose key is in ``keys`` (default :data:`SENSITIVE_KEYS`)."""

    def __init__(self, keys: frozenset[str] = SENSITIVE_KEYS) -> None:
        super().__init__()
        self._keys = keys

    def filter(self, record: logging.LogRecord) -> bool:
        for key in self._keys:
            value = record.__dict__.get(key)
            if value is not None:
                record.__dict__[key] = redact_text(value if isinstance(value, str) else str(value))
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one compact JSON object (see module docstring for the fields)."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service.name": self._service_name,
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            out["trace_id"] = trace_id
            out["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


class _VoxlineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker type so configure_logging can replace its own handler idempotently."""


def configure_logging(
    service_name: str, level: int | str = "INFO", *, stream: IO[str] | None = None
) -> logging.Handler:
    """Send all logging (root logger) as JSON lines to ``stream`` (default stderr).

    Idempotent: calling again replaces the handler it installed before; other handlers are
    left alone. Returns the handler.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _VoxlineHandler):
            root.removeHandler(existing)
    handler = _VoxlineHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service_name))
    # Filters on the handler (not the logger) so records from every logger get them.
    handler.addFilter(TraceContextFilter())
    handler.addFilter(PrivacyFilter())
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    return handler
