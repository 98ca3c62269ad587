"""Voxline telemetry: OpenTelemetry traces and metrics for the pipeline's gRPC services.

Entry points (see docs/telemetry.md for every name, unit and attribute):

- :func:`init_telemetry` -> :class:`Telemetry` (``.tracer``, ``.meter``, ``.shutdown()``)
- :mod:`telemetry.grpc`: ``server_interceptors``, ``instrument_channel``, ``mark_span_error``
- :mod:`telemetry.instruments`: ``StageMetrics``, ``SynthesisMetrics``, ``phase_span``,
  ``PhaseTimeline``, ``cuda_synchronize_if_needed``
- :mod:`telemetry.context`: ``submit_with_context``, ``wrap_with_context``
- :mod:`telemetry.logging`: ``configure_logging``
- :mod:`telemetry.names`: every span/metric/attribute name
- :func:`read_otlp_json_lines`: parse the local ``*.jsonl`` telemetry files
- :mod:`telemetry.otlp_receiver`: ``OtlpReceiver``, an in-process OTLP receiver (tests, bench)

The names above are imported on first use (PEP 562), not when the package is: the pure
modules (:mod:`telemetry.names`, :mod:`telemetry.otlp_json`) are shared with the trace
analyser (:mod:`traceattr`), which must not pull in the OpenTelemetry SDK or its exporters
just by importing them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from telemetry.context import submit_with_context, wrap_with_context
    from telemetry.instruments import (
        PhaseTimeline,
        StageMetrics,
        SynthesisMetrics,
        cuda_synchronize_if_needed,
        phase_span,
    )
    from telemetry.otlp_json import flatten_metrics, flatten_spans, read_otlp_json_lines
    from telemetry.sdk import Telemetry, init_telemetry

#: Public name -> the submodule defining it.
_LAZY: dict[str, str] = {
    "submit_with_context": "telemetry.context",
    "wrap_with_context": "telemetry.context",
    "PhaseTimeline": "telemetry.instruments",
    "StageMetrics": "telemetry.instruments",
    "SynthesisMetrics": "telemetry.instruments",
    "cuda_synchronize_if_needed": "telemetry.instruments",
    "phase_span": "telemetry.instruments",
    "flatten_metrics": "telemetry.otlp_json",
    "flatten_spans": "telemetry.otlp_json",
    "read_otlp_json_lines": "telemetry.otlp_json",
    "Telemetry": "telemetry.sdk",
    "init_telemetry": "telemetry.sdk",
}

__all__ = [
    "PhaseTimeline",
    "StageMetrics",
    "SynthesisMetrics",
    "Telemetry",
    "cuda_synchronize_if_needed",
    "flatten_metrics",
    "flatten_spans",
    "init_telemetry",
    "phase_span",
    "read_otlp_json_lines",
    "submit_with_context",
    "wrap_with_context",
]


def __getattr__(name: str) -> Any:
    """Import the submodule defining public ``name`` on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
