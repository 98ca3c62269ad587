"""Trace attribution: which stage made this request slow?

Reads one trace (or many) from Tempo, Jaeger (v1 and api/v3), saved API responses or Voxline's
local OTLP/JSON-lines files, and attributes the end-to-end time to stages: a waterfall, the
critical path, self time per span, and a per-stage table (wall, busy, queue, inference,
pre/post-processing, waits, network, critical path, blame, unattributed). ``voxline trace``
(:mod:`services.cli.trace`) is the command line on top of this package.

Typical use::

    from traceattr import analyze, load_run_dir, render_attribution, select_trace

    trace = select_trace(load_run_dir("runs/20261122-232004"), last=True)
    attribution = analyze(trace)
    print(render_attribution(attribution))
    attribution.to_dict()  # everything, machine-readable

Modules: :mod:`.model` (Span/Trace and errors), :mod:`.parse` (formats and files),
:mod:`.fetch` (HTTP), :mod:`.analysis` (tree, critical path, attribution -- its docstring
explains the streaming accounting), :mod:`.report` (many traces), :mod:`.render` (text).
"""

from traceattr.analysis import (
    Attribution,
    Segment,
    SpanTree,
    StageStats,
    analyze,
    critical_path,
    is_synthesis_root,
    pending_stages,
)
from traceattr.fetch import BACKENDS, fetch_trace, search_traces
from traceattr.model import (
    AttributionError,
    FetchError,
    NotATraceError,
    Span,
    SpanEvent,
    Trace,
    TraceFormatError,
    TraceNotFoundError,
    TraceSet,
)
from traceattr.parse import (
    FORMATS,
    NON_TRACE_FORMATS,
    detect_format,
    latest_logged_trace_id,
    latest_trace,
    load_file,
    load_files,
    load_run_dir,
    parse_document,
    parse_text,
    resolve_run_dir,
    select_trace,
    traces_with_request_id,
)
from traceattr.render import render_attribution, render_waterfall
from traceattr.report import Report, build_report, percentile, render_report, request_status

__all__ = [
    "BACKENDS",
    "FORMATS",
    "NON_TRACE_FORMATS",
    "Attribution",
    "AttributionError",
    "FetchError",
    "NotATraceError",
    "Report",
    "Segment",
    "Span",
    "SpanEvent",
    "SpanTree",
    "StageStats",
    "Trace",
    "TraceFormatError",
    "TraceNotFoundError",
    "TraceSet",
    "analyze",
    "build_report",
    "critical_path",
    "detect_format",
    "fetch_trace",
    "is_synthesis_root",
    "latest_logged_trace_id",
    "latest_trace",
    "load_file",
    "load_files",
    "load_run_dir",
    "parse_document",
    "parse_text",
    "pending_stages",
    "percentile",
    "render_attribution",
    "render_report",
    "render_waterfall",
    "request_status",
    "resolve_run_dir",
    "search_traces",
    "select_trace",
    "traces_with_request_id",
]
