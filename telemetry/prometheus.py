"""Optional Prometheus pull endpoint (``GET /metrics``) and the OTel -> Prometheus naming.

Serving uses the official ``opentelemetry-exporter-prometheus`` reader with
``prometheus_client``'s HTTP server, on a registry of our own (one per Telemetry, so several
pipelines can live in one process), plus the process/GC collectors. Naming follows the
OpenTelemetry -> Prometheus compatibility spec as that exporter implements it: dots become
underscores, the unit is appended (``_seconds``, ``_bytes``, ...; ``_ratio`` for unit-``1``
gauges), monotonic sums get ``_total``, resource attributes are exposed once in
``target_info``. :func:`prometheus_name` states those rules so configs (recording rules,
dashboards, HPA rules) can be checked against what is exported without a running service;
``tests/test_telemetry_lib.py`` checks it agrees with the real exporter's output.
Exemplars are not exposed on this endpoint (use OTLP for those). Cumulative temporality.
"""

from __future__ import annotations

import logging
import re
import threading

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, start_http_server

_logger = logging.getLogger(__name__)

_UNIT_SUFFIX = {
    "s": "seconds",
    "ms": "milliseconds",
    "By": "bytes",
    "W": "watts",
    "Cel": "celsius",
    "J": "joules",
    "Hz": "hertz",
}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def _sanitize(name: str) -> str:
    out = _INVALID.sub("_", name)
    out = re.sub(r"__+", "_", out)
    if out and out[0].isdigit():
        out = "_" + out
    return out


def _label_name(key: str) -> str:
    out = _INVALID_LABEL.sub("_", key)
    if out and out[0].isdigit():
        out = "key_" + out
    return out


def prometheus_name(name: str, unit: str, *, counter: bool, gauge: bool) -> str:
    """Map an OTel metric name + unit to a Prometheus metric name (without ``_total``)."""
    base = _sanitize(name)
    suffix = ""
    if unit == "1":
        suffix = "ratio" if gauge else ""
    elif unit and not unit.startswith("{"):
        suffix = _sanitize(_UNIT_SUFFIX.get(unit, unit))
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if counter and base.endswith("_total"):
        base = base[: -len("_total")]
    return base


class PrometheusEndpoint:
    """A metric reader for the MeterProvider plus the HTTP server that exposes it.

    Create it before the MeterProvider (pass :attr:`reader` in ``metric_readers``); the
    server thread is a daemon and :meth:`close` releases the port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.reader = PrometheusMetricReader(registry=self.registry)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop serving and release the port."""
        if not self._closed.is_set():
            self._closed.set()
            self._server.shutdown()
            self._server.server_close()
