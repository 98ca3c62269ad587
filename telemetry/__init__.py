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
"""

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
