"""Optional Prometheus pull endpoint (``GET /metrics``, text format 0.0.4).

Why not ``opentelemetry-exporter-prometheus``: in production Voxline's metrics reach
Prometheus through the Collector's ``prometheus`` exporter, and the recording rules, alerts,
dashboards and HPA rules are written against *its* naming. The Python exporter names some
series differently (no ``_ratio`` suffix on unit-``1`` gauges such as
``hw_gpu_utilization_ratio``, extra ``otel_scope_*`` labels), so the same PromQL would not
work on both paths. This small renderer follows the Collector's translation instead, and the
tests check configs against it (tried and reverted; see the issue notes).

Implemented on the SDK's public ``MetricReader`` API instead of adding
``opentelemetry-exporter-prometheus`` + ``prometheus_client``: the project needs only the
plain text exposition of a handful of instruments. Naming follows the OpenTelemetry ->
Prometheus compatibility spec: dots become underscores, the unit is appended (``_seconds``,
``_bytes``, ...), monotonic sums get ``_total``, resource attributes are exposed once in
``target_info``. Exemplars are not exposed (use OTLP for those). Cumulative temporality only.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricReader,
    MetricsData,
    Sum,
)

_logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


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


def _labels(attrs: dict[str, Any], extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [(_label_name(k), _escape(v)) for k, v in sorted(attrs.items())]
    pairs.extend(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"


def render_text(data: MetricsData | None) -> str:
    """Render collected metrics in Prometheus text exposition format 0.0.4."""
    if data is None:
        return ""
    lines: list[str] = []
    seen: set[str] = set()

    def family(name: str, kind: str, description: str) -> bool:
        """Open metric family `name` (HELP and TYPE lines); False if already rendered."""
        if name in seen:
            return False
        seen.add(name)
        lines.append(f"# HELP {name} {_escape(description)}")
        lines.append(f"# TYPE {name} {kind}")
        return True

    for rm in data.resource_metrics:
        res = {k: v for k, v in rm.resource.attributes.items() if not k.startswith("telemetry.")}
        if res and family("target_info", "gauge", "Target metadata"):
            lines.append(f"target_info{_labels(res)} 1")
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                d = metric.data
                if isinstance(d, Sum):
                    counter = d.is_monotonic
                    name = prometheus_name(metric.name, metric.unit, counter=counter, gauge=False)
                    full = name + "_total" if counter else name
                    if family(full, "counter" if counter else "gauge", metric.description):
                        for p in d.data_points:
                            attrs = dict(p.attributes or {})
                            lines.append(f"{full}{_labels(attrs)} {_fmt(p.value)}")
                elif isinstance(d, Gauge):
                    name = prometheus_name(metric.name, metric.unit, counter=False, gauge=True)
                    if family(name, "gauge", metric.description):
                        for p in d.data_points:
                            attrs = dict(p.attributes or {})
                            lines.append(f"{name}{_labels(attrs)} {_fmt(p.value)}")
                elif isinstance(d, Histogram):
                    name = prometheus_name(metric.name, metric.unit, counter=False, gauge=False)
                    if family(name, "histogram", metric.description):
                        for p in d.data_points:
                            lines.extend(_histogram_lines(name, p))
                # Exponential histograms are not produced by Voxline's instruments.
    return "\n".join(lines) + "\n"


def _histogram_lines(name: str, point: Any) -> list[str]:
    """One histogram data point: cumulative ``_bucket`` lines, ``_sum`` and ``_count``."""
    attrs = dict(point.attributes or {})
    lines = []
    cumulative = 0
    bounds = [*list(point.explicit_bounds), math.inf]
    for bound, count in zip(bounds, point.bucket_counts, strict=False):
        cumulative += count
        le = _labels(attrs, [("le", _fmt(float(bound)))])
        lines.append(f"{name}_bucket{le} {cumulative}")
    lines.append(f"{name}_sum{_labels(attrs)} {_fmt(point.sum)}")
    lines.append(f"{name}_count{_labels(attrs)} {point.count}")
    return lines


class PrometheusPullReader(MetricReader):
    """A pull ``MetricReader``: collects on demand (one scrape = one collection)."""

    def __init__(self) -> None:
        # Cumulative temporality is the MetricReader default for every instrument kind.
        super().__init__()
        self._lock = threading.Lock()
        self._latest: MetricsData | None = None

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._latest = metrics_data

    def scrape(self) -> str:
        """Collect now and return the text exposition."""
        with self._lock:
            self.collect()
            return render_text(self._latest)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class PrometheusServer:
    """Serves ``reader.scrape()`` on ``http://host:port/metrics`` from a daemon thread."""

    def __init__(self, reader: PrometheusPullReader, host: str, port: int) -> None:
        self.reader = reader

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                try:
                    body = reader.scrape().encode("utf-8")
                except Exception:
                    _logger.exception("prometheus scrape failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # Scrapes every few seconds would otherwise flood stderr.
                pass

        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self.address: tuple[str, int] = self._httpd.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},  # shutdown() waits up to one poll interval
            name="voxline-prometheus",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
