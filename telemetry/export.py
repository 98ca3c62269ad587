"""Exporters and processors that keep telemetry off the request path.

- :class:`OtlpJsonLinesSpanExporter` / :class:`OtlpJsonLinesMetricExporter`: the local default,
  one OTLP/JSON line per export batch (format: :mod:`telemetry.otlp_json`).
- :class:`GuardedSpanExporter` / :class:`GuardedMetricExporter`: wrap any exporter so a failing
  export is *counted* (``voxline.telemetry.dropped``), never raises into the SDK, and can be
  aborted at shutdown (a dead collector must not hold the process for retry back-offs).
- :class:`DropCountingBatchSpanProcessor`: ``BatchSpanProcessor`` (bounded queue, export on its
  own thread) that counts and reports the spans it drops when its queue is full.
- :class:`DropReporter`: the counter + "log once" policy shared by all of the above.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import (
    OTLPMetricExporterMixin,
)
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.metrics import Counter
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from telemetry import names
from telemetry.otlp_encode import otlp_json_line

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Drop accounting
# ---------------------------------------------------------------------------------------------


class DropReporter:
    """Counts dropped telemetry items and logs the first drop of each kind once.

    Counting goes to ``voxline.telemetry.dropped{signal, reason}`` once :meth:`bind` gave it a
    counter (the counter lives on the meter provider, which is built after the exporters);
    until then drops are only tallied in :attr:`totals`.
    """

    def __init__(self, service_name: str) -> None:
        self._service_name = service_name
        self._counter: Counter | None = None
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        #: ``{(signal, reason): count}`` since start, for the shutdown summary and tests.
        self.totals: dict[tuple[str, str], int] = {}

    def bind(self, counter: Counter) -> None:
        """Start recording drops into ``counter``."""
        self._counter = counter

    def dropped(self, signal: str, reason: str, count: int) -> None:
        """Record ``count`` items of ``signal`` dropped for ``reason``. Never raises."""
        if count <= 0:
            return
        try:
            with self._lock:
                key = (signal, reason)
                self.totals[key] = self.totals.get(key, 0) + count
                first = key not in self._logged
                self._logged.add(key)
            counter = self._counter
            if counter is not None:
                counter.add(count, {names.ATTR_SIGNAL: signal, names.ATTR_DROP_REASON: reason})
            if first:
                # Once per (signal, reason) and process lifetime of this Telemetry: a stuck
                # collector must not turn into one log line per batch.
                _logger.warning(
                    "telemetry %s: dropping %s (%s); further drops are only counted in %s",
                    self._service_name,
                    signal,
                    reason,
                    names.METRIC_TELEMETRY_DROPPED,
                )
        except Exception:  # pragma: no cover - accounting must never break the caller
            _logger.debug("drop accounting failed", exc_info=True)


# ---------------------------------------------------------------------------------------------
# Guarded exporters
# ---------------------------------------------------------------------------------------------


class _AbortableMixin:
    """Shared shutdown/abort logic: the inner exporter is shut down exactly once."""

    _inner: Any

    def _init_abortable(self) -> None:
        self._inner_shutdown_lock = threading.Lock()
        self._inner_is_shut = False
        self._aborted = False
        #: ``None`` before the first export, then whether the last export succeeded.
        self.last_export_ok: bool | None = None

    def _shutdown_inner(self, **kwargs: Any) -> None:
        with self._inner_shutdown_lock:
            if self._inner_is_shut:
                return
            self._inner_is_shut = True
        try:
            self._inner.shutdown(**kwargs)
        except Exception:
            _logger.debug("exporter shutdown failed", exc_info=True)

    def abort(self) -> None:
        """Stop exporting now: later batches are dropped (counted), retries stop.

        Calls the inner exporter's public ``shutdown()``, which for the OTLP exporters wakes
        their retry back-off and closes the channel, so an export stuck on a dead collector
        returns promptly.
        """
        self._aborted = True
        self._shutdown_inner()


class GuardedSpanExporter(_AbortableMixin, SpanExporter):
    """Wrap a span exporter: count failed batches as dropped, never raise, support abort."""

    def __init__(self, inner: SpanExporter, reporter: DropReporter) -> None:
        self._inner = inner
        self._reporter = reporter
        self._init_abortable()

    @property
    def inner(self) -> SpanExporter:
        """The wrapped exporter."""
        return self._inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._aborted:
            self._reporter.dropped(names.SIGNAL_TRACES, names.DROP_REASON_SHUTDOWN, len(spans))
            return SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans)
        except Exception:
            _logger.debug("span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        ok = result is SpanExportResult.SUCCESS
        self.last_export_ok = ok
        if not ok:
            self._reporter.dropped(names.SIGNAL_TRACES, names.DROP_REASON_EXPORT_FAILED, len(spans))
        return result

    def shutdown(self) -> None:
        self._shutdown_inner()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return bool(self._inner.force_flush(timeout_millis))
        except Exception:
            return False


def _count_data_points(data: MetricsData) -> int:
    return sum(
        len(metric.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    )


class GuardedMetricExporter(_AbortableMixin, MetricExporter):
    """Wrap a metric exporter: count failed exports (data points) as dropped, support abort."""

    def __init__(self, inner: MetricExporter, reporter: DropReporter) -> None:
        # The reader asks the exporter for temporality/aggregation: mirror the inner one's.
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self._inner = inner
        self._reporter = reporter
        self._init_abortable()

    @property
    def inner(self) -> MetricExporter:
        """The wrapped exporter."""
        return self._inner

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._aborted:
            self._reporter.dropped(
                names.SIGNAL_METRICS, names.DROP_REASON_SHUTDOWN, _count_data_points(metrics_data)
            )
            return MetricExportResult.FAILURE
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            _logger.debug("metric export raised", exc_info=True)
            result = MetricExportResult.FAILURE
        ok = result is MetricExportResult.SUCCESS
        self.last_export_ok = ok
        if not ok:
            self._reporter.dropped(
                names.SIGNAL_METRICS,
                names.DROP_REASON_EXPORT_FAILED,
                _count_data_points(metrics_data),
            )
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._shutdown_inner()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        try:
            return bool(self._inner.force_flush(timeout_millis=timeout_millis))
        except Exception:
            return False


# ---------------------------------------------------------------------------------------------
# Drop-counting batch span processor
# ---------------------------------------------------------------------------------------------


class _DropTee:
    """Stands in for the SDK's processor-metrics object and forwards drops to a callback.

    In SDK 1.45 ``BatchProcessor.emit`` signals a full queue by calling
    ``self._metrics.drop_items(1)`` (and ``drop_items(1, "already_shutdown")`` after shutdown)
    right before the deque silently discards its oldest item; that call is the one exact,
    per-item drop signal the SDK has, so we hook it rather than guessing from queue length.
    """

    def __init__(self, inner: Any, on_drop: Callable[[int, str], None]) -> None:
        self._inner = inner
        self._on_drop = on_drop

    def register_queue_size(self, get_queue_size: Callable[[], int]) -> None:
        self._inner.register_queue_size(get_queue_size)

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self._inner.drop_items(count, error_type)
        self._on_drop(count, error_type)

    def finish_items(self, count: int) -> None:
        self._inner.finish_items(count)


class _SuppressSdkQueueFullWarning(logging.Filter):
    """Drop the SDK's own "Queue full, dropping Span." warning: we log once and count instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Queue full, dropping")


_SDK_QUEUE_LOGGER = "opentelemetry.sdk._shared_internal"
_sdk_filter_installed = False
_sdk_filter_lock = threading.Lock()


def _install_sdk_queue_filter() -> None:
    global _sdk_filter_installed
    with _sdk_filter_lock:
        if not _sdk_filter_installed:
            logging.getLogger(_SDK_QUEUE_LOGGER).addFilter(_SuppressSdkQueueFullWarning())
            _sdk_filter_installed = True


class DropCountingBatchSpanProcessor(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` that reports every span dropped because its queue is full.

    Queue size, batch size and schedule delay come from ``OTEL_BSP_*`` (SDK defaults 2048, 512,
    5000 ms) unless given. ``on_end`` costs one deque append; export runs on the processor's
    worker thread, so a slow or dead collector never blocks the caller.
    """

    def __init__(
        self,
        span_exporter: SpanExporter,
        reporter: DropReporter,
        *,
        max_queue_size: int | None = None,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            span_exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=max_export_batch_size,
        )
        self._reporter = reporter
        _install_sdk_queue_filter()
        batch = getattr(self, "_batch_processor", None)
        metrics = getattr(batch, "_metrics", None)
        # Guarded: if a future SDK moves this, we lose drop counting but keep working (and the
        # test for drop counting fails loudly).
        if batch is not None and metrics is not None and hasattr(metrics, "drop_items"):
            batch._metrics = _DropTee(metrics, self._on_drop)
            self.drops_hooked = True
        else:  # pragma: no cover - only with an unexpected SDK version
            _logger.warning("BatchSpanProcessor internals changed: span drops are not counted")
            self.drops_hooked = False

    def _on_drop(self, count: int, error_type: str) -> None:
        reason = (
            names.DROP_REASON_SHUTDOWN
            if error_type == "already_shutdown"
            else names.DROP_REASON_QUEUE_FULL
        )
        self._reporter.dropped(names.SIGNAL_TRACES, reason, count)


# ---------------------------------------------------------------------------------------------
# OTLP/JSON lines file exporters
# ---------------------------------------------------------------------------------------------


class _JsonLinesWriter:
    """Appends whole lines to a file with one ``os.write`` each.

    ``O_APPEND`` + a single write per line keeps lines intact even if several processes of
    the same service share a run directory; the lock serialises the processor's worker and a
    concurrent ``force_flush`` in this process.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        data = line.encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self.path} is closed")
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class OtlpJsonLinesSpanExporter(SpanExporter):
    """Write each span batch as one OTLP/JSON ``ExportTraceServiceRequest`` line to ``path``."""

    def __init__(self, path: str | Path) -> None:
        self._writer = _JsonLinesWriter(Path(path))

    @property
    def path(self) -> Path:
        """The file written to."""
        return self._writer.path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            self._writer.write_line(otlp_json_line(encode_spans(spans)))
        except Exception:
            _logger.debug("writing spans to %s failed", self.path, exc_info=True)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._writer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class OtlpJsonLinesMetricExporter(OTLPMetricExporterMixin, MetricExporter):
    """Write each metrics collection as one OTLP/JSON ``ExportMetricsServiceRequest`` line.

    Temporality follows ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` (default
    cumulative) exactly as the OTLP exporters do, so files and the collector agree.
    """

    def __init__(self, path: str | Path) -> None:
        self._common_configuration()
        self._writer = _JsonLinesWriter(Path(path))

    @property
    def path(self) -> Path:
        """The file written to."""
        return self._writer.path

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if not metrics_data.resource_metrics:
            return MetricExportResult.SUCCESS
        try:
            self._writer.write_line(otlp_json_line(encode_metrics(metrics_data)))
        except Exception:
            _logger.debug("writing metrics to %s failed", self.path, exc_info=True)
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._writer.close()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True


# ---------------------------------------------------------------------------------------------
# Rate limiting of exporter log spam
# ---------------------------------------------------------------------------------------------


class RateLimitFilter(logging.Filter):
    """Let each (logger, message template) through at most once per ``interval_s``.

    The OTLP exporters log one warning per retry and one error per failed batch; with the
    collector down that is several lines every few seconds per signal. The SDK's own
    ``DuplicateFilter`` only suppresses *consecutive* identical lines, which alternate here.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            return False
        self._last[key] = now
        return True


_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
)
_rate_limit_installed = False


def install_exporter_log_rate_limit(interval_s: float = 60.0) -> None:
    """Install :class:`RateLimitFilter` on the OTLP exporters' loggers (idempotent)."""
    global _rate_limit_installed
    with _sdk_filter_lock:
        if _rate_limit_installed:
            return
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).addFilter(RateLimitFilter(interval_s))
        _rate_limit_installed = True
