"""One-call OpenTelemetry SDK set-up for a Voxline service: :func:`init_telemetry`.

Where telemetry goes, per signal (traces and metrics decided independently):

1. ``OTEL_{TRACES,METRICS}_EXPORTER=none`` -> dropped; ``console`` -> stdout (debugging).
2. ``OTEL_EXPORTER_OTLP_{TRACES_,METRICS_,}ENDPOINT`` set -> OTLP, protocol from
   ``OTEL_EXPORTER_OTLP_{SIGNAL_,}PROTOCOL`` (``grpc`` default, ``http/protobuf``); the OTLP
   exporters themselves read the remaining ``OTEL_EXPORTER_OTLP_*`` variables (headers,
   compression, certificates, timeout).
3. else ``run_dir`` given -> OTLP/JSON lines ``<run_dir>/<service>.{traces,metrics}.jsonl``.
4. else dropped (providers still exist, so spans have ids for logs and exemplars).

Exporting never blocks a request: spans go through a bounded ``BatchSpanProcessor`` queue to
a background thread, metrics are collected by the periodic reader's thread, and a dead
collector only costs that thread time (drops are counted in ``voxline.telemetry.dropped``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter

from telemetry import names
from telemetry.certificates import CertificateExpiry
from telemetry.export import (
    DropCountingBatchSpanProcessor,
    DropReporter,
    GuardedMetricExporter,
    GuardedSpanExporter,
    OtlpJsonLinesMetricExporter,
    OtlpJsonLinesSpanExporter,
    install_exporter_log_rate_limit,
)
from telemetry.prometheus import PrometheusPullReader, PrometheusServer

if TYPE_CHECKING:
    import grpc

_logger = logging.getLogger(__name__)

#: Per-request OTLP export timeout when no ``OTEL_EXPORTER_OTLP_*TIMEOUT`` is set. The SDK
#: default is 10 s; 5 s lets the worker give up on a dead collector sooner (the queue keeps
#: buffering meanwhile). Seconds, as opentelemetry-python interprets these variables.
DEFAULT_OTLP_TIMEOUT_S = 5.0
#: Metric export interval when ``OTEL_METRIC_EXPORT_INTERVAL`` is unset (SDK default 60 s is
#: too coarse for short local runs; 15 s matches a typical Prometheus scrape interval).
DEFAULT_METRIC_EXPORT_INTERVAL_MS = 15_000
#: Default bound of :meth:`Telemetry.shutdown`.
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
#: Default bind address of the Prometheus endpoint: loopback only, never exposed by accident.
DEFAULT_PROMETHEUS_HOST = "127.0.0.1"

_SIGNAL_ENV = {names.SIGNAL_TRACES: "TRACES", names.SIGNAL_METRICS: "METRICS"}


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _env_true(name: str) -> bool:
    return (_env(name) or "").lower() == "true"


# ---------------------------------------------------------------------------------------------
# Resource
# ---------------------------------------------------------------------------------------------


def build_resource(
    service_name: str,
    service_version: str,
    extra_attributes: Mapping[str, Any] | None = None,
) -> Resource:
    """Build the service's resource.

    Precedence, lowest to highest: SDK defaults (``telemetry.sdk.*``) < Voxline defaults
    (``service.name``/``version``/``namespace``, ``service.instance.id``,
    ``deployment.environment.name`` from ``VOXLINE_ENVIRONMENT`` or ``local``) <
    ``extra_attributes`` < ``OTEL_RESOURCE_ATTRIBUTES`` < ``OTEL_SERVICE_NAME``. The operator's
    environment wins over code defaults so a deployment can relabel a service without a
    rebuild; ``OTEL_SERVICE_NAME`` beats ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` as the
    spec requires.

    ``service.instance.id`` is the pod name when ``k8s.pod.name`` (from
    ``OTEL_RESOURCE_ATTRIBUTES``) or ``K8S_POD_NAME`` is set, else a random UUID v4.
    """
    env_resource = OTELResourceDetector().detect()
    env_attrs = dict(env_resource.attributes)
    pod = env_attrs.get(names.RESOURCE_K8S_POD_NAME) or _env(names.ENV_K8S_POD_NAME)
    defaults: dict[str, Any] = {
        names.RESOURCE_SERVICE_NAME: service_name,
        names.RESOURCE_SERVICE_VERSION: service_version,
        names.RESOURCE_SERVICE_NAMESPACE: names.SERVICE_NAMESPACE,
        names.RESOURCE_SERVICE_INSTANCE_ID: str(pod) if pod else str(uuid.uuid4()),
        names.RESOURCE_DEPLOYMENT_ENVIRONMENT: _env(names.ENV_ENVIRONMENT)
        or names.DEFAULT_ENVIRONMENT,
    }
    if pod:
        defaults[names.RESOURCE_K8S_POD_NAME] = str(pod)
    defaults.update(extra_attributes or {})
    return Resource.create(defaults).merge(env_resource)


# ---------------------------------------------------------------------------------------------
# Exporter selection
# ---------------------------------------------------------------------------------------------


def _exporter_choice(signal: str) -> str:
    raw = _env(f"OTEL_{_SIGNAL_ENV[signal]}_EXPORTER") or "otlp"
    choice = raw.split(",")[0].strip().lower()
    allowed = {"otlp", "none", "console"} | ({"prometheus"} if signal == "metrics" else set())
    if choice not in allowed:
        _logger.warning("unsupported OTEL_%s_EXPORTER=%r, using otlp", _SIGNAL_ENV[signal], raw)
        return "otlp"
    return choice


def otlp_endpoint(signal: str) -> str | None:
    """The OTLP endpoint configured for ``signal`` (``traces``/``metrics``), or ``None``."""
    return _env(f"OTEL_EXPORTER_OTLP_{_SIGNAL_ENV[signal]}_ENDPOINT") or _env(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def otlp_protocol(signal: str) -> str:
    """``grpc`` or ``http/protobuf`` for ``signal`` (``http/json`` falls back to protobuf)."""
    raw = (
        _env(f"OTEL_EXPORTER_OTLP_{_SIGNAL_ENV[signal]}_PROTOCOL")
        or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).lower()
    if raw in ("grpc", "http/protobuf"):
        return raw
    _logger.warning("unsupported OTLP protocol %r for %s, using http/protobuf", raw, signal)
    return "http/protobuf"


def _timeout_override(signal: str) -> float | None:
    # Only pass our default when the operator set nothing: an explicit timeout argument
    # would shadow the environment inside the exporters.
    if _env("OTEL_EXPORTER_OTLP_TIMEOUT") or _env(
        f"OTEL_EXPORTER_OTLP_{_SIGNAL_ENV[signal]}_TIMEOUT"
    ):
        return None
    return DEFAULT_OTLP_TIMEOUT_S


def _make_span_exporter(
    service_name: str, run_dir: Path | None, meter_provider: MeterProvider
) -> tuple[SpanExporter | None, str]:
    choice = _exporter_choice(names.SIGNAL_TRACES)
    if choice == "none":
        return None, "none"
    if choice == "console":
        return ConsoleSpanExporter(service_name=service_name), "console"
    endpoint = otlp_endpoint(names.SIGNAL_TRACES)
    if endpoint:
        protocol = otlp_protocol(names.SIGNAL_TRACES)
        timeout = _timeout_override(names.SIGNAL_TRACES)
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )

            return (
                GrpcSpanExporter(timeout=timeout, meter_provider=meter_provider),
                f"otlp/grpc {endpoint}",
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return (
            HttpSpanExporter(timeout=timeout, meter_provider=meter_provider),
            f"otlp/http {endpoint}",
        )
    if run_dir is not None:
        path = Path(run_dir) / f"{service_name}.traces.jsonl"
        return OtlpJsonLinesSpanExporter(path), f"file {path}"
    return None, "none"


def _make_metric_exporter(
    service_name: str, run_dir: Path | None
) -> tuple[MetricExporter | None, str]:
    choice = _exporter_choice(names.SIGNAL_METRICS)
    if choice in ("none", "prometheus"):
        # "prometheus" means pull only: the endpoint itself is enabled by the port setting.
        return None, choice
    if choice == "console":
        return ConsoleMetricExporter(), "console"
    endpoint = otlp_endpoint(names.SIGNAL_METRICS)
    if endpoint:
        protocol = otlp_protocol(names.SIGNAL_METRICS)
        timeout = _timeout_override(names.SIGNAL_METRICS)
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetricExporter,
            )

            return GrpcMetricExporter(timeout=timeout), f"otlp/grpc {endpoint}"
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter(timeout=timeout), f"otlp/http {endpoint}"
    if run_dir is not None:
        path = Path(run_dir) / f"{service_name}.metrics.jsonl"
        return OtlpJsonLinesMetricExporter(path), f"file {path}"
    return None, "none"


def _prometheus_setting(port: int | None) -> tuple[str, int] | None:
    if port is None:
        raw = _env(names.ENV_PROMETHEUS_PORT)
        if raw is None:
            return None
        try:
            port = int(raw)
        except ValueError:
            _logger.warning("ignoring %s=%r: not a port number", names.ENV_PROMETHEUS_PORT, raw)
            return None
    host = _env(names.ENV_PROMETHEUS_HOST) or DEFAULT_PROMETHEUS_HOST
    return host, port


# ---------------------------------------------------------------------------------------------
# Telemetry handle
# ---------------------------------------------------------------------------------------------


@dataclass
class Telemetry:
    """Handle on one service's telemetry pipeline, returned by :func:`init_telemetry`.

    Use :attr:`tracer` and :attr:`meter` (or the providers) rather than the OTel globals so
    code also works with ``set_global=False`` (tests, several pipelines in one process).
    """

    service_name: str
    resource: Resource
    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    tracer: trace.Tracer
    meter: metrics.Meter
    #: False when ``OTEL_SDK_DISABLED=true`` (no-op providers).
    enabled: bool
    #: Human-readable destination per signal, e.g. ``{"traces": "file /runs/x.traces.jsonl"}``.
    destinations: dict[str, str] = field(default_factory=dict)
    #: ``(host, port)`` the Prometheus endpoint listens on, if enabled.
    prometheus_address: tuple[str, int] | None = None
    #: Drop accounting (``None`` when disabled).
    drops: DropReporter | None = None
    #: True when NVML GPU instruments were registered.
    gpu_metrics: bool = False
    _certificates: CertificateExpiry | None = None
    _guarded: list[GuardedSpanExporter | GuardedMetricExporter] = field(default_factory=list)
    _prometheus: PrometheusServer | None = None
    _shutdown_lock: threading.Lock = field(default_factory=threading.Lock)
    _is_shutdown: bool = False

    # -- gRPC convenience -----------------------------------------------------------------

    def server_interceptors(self) -> list[grpc.ServerInterceptor]:
        """Shortcut for :func:`telemetry.grpc.server_interceptors` bound to this pipeline."""
        from telemetry.grpc import server_interceptors

        return server_interceptors(self)

    def instrument_channel(self, channel: grpc.Channel) -> grpc.Channel:
        """Shortcut for :func:`telemetry.grpc.instrument_channel` bound to this pipeline."""
        from telemetry.grpc import instrument_channel

        return instrument_channel(channel, self)

    # -- TLS ----------------------------------------------------------------------------------

    def watch_certificate(self, role: str, not_after: Callable[[], float | None]) -> None:
        """Export ``not_after()`` (Unix seconds; None: nothing) as
        ``voxline.tls.certificate.expiry{voxline.tls.role=role}``, role ``server``|``client``.
        Called at each metric collection (see :mod:`telemetry.certificates`)."""
        if self._certificates is not None:
            self._certificates.watch(role, not_after)

    # -- lifecycle ----------------------------------------------------------------------------

    def force_flush(self, timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> bool:
        """Export what is buffered now (blocking up to about ``timeout_s``). For tests/tools."""
        if not self.enabled or self._is_shutdown:
            return False
        ok = [False]

        def _flush() -> None:
            a = self.tracer_provider.force_flush(int(timeout_s * 1000))  # type: ignore[attr-defined]
            b = self.meter_provider.force_flush(int(timeout_s * 1000))  # type: ignore[attr-defined]
            ok[0] = bool(a) and bool(b)

        t = threading.Thread(target=_flush, name="voxline-telemetry-flush", daemon=True)
        t.start()
        t.join(timeout_s)
        return ok[0] and not t.is_alive()

    def shutdown(self, timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Flush and shut everything down, returning within about ``timeout_s`` seconds.

        The final flush gets ~60 % of the budget; if it has not finished by then (collector
        slow or down), exporters are aborted: their retry back-offs wake up, in-flight calls
        are cancelled, and whatever is left is dropped (and counted). An exporter whose last
        export already failed is aborted at once, since the collector is presumed down.
        Idempotent; safe from ``atexit``.
        """
        with self._shutdown_lock:
            if self._is_shutdown:
                return
            self._is_shutdown = True
        if not self.enabled:
            return
        deadline = time.monotonic() + timeout_s
        if self._prometheus is not None:
            try:
                self._prometheus.close()
            except Exception:
                _logger.debug("closing the prometheus endpoint failed", exc_info=True)
        for exporter in self._guarded:
            if exporter.last_export_ok is False:
                exporter.abort()

        def _shutdown_providers() -> None:
            try:
                self.tracer_provider.shutdown()  # type: ignore[attr-defined]
            except Exception:
                _logger.debug("tracer provider shutdown failed", exc_info=True)
            try:
                remaining_ms = max(0.0, deadline - time.monotonic()) * 1000
                self.meter_provider.shutdown(timeout_millis=remaining_ms)  # type: ignore[attr-defined]
            except Exception:
                _logger.debug("meter provider shutdown failed", exc_info=True)

        worker = threading.Thread(
            target=_shutdown_providers, name="voxline-telemetry-shutdown", daemon=True
        )
        worker.start()
        worker.join(timeout_s * 0.6)
        if worker.is_alive():
            for exporter in self._guarded:
                exporter.abort()
            worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            _logger.warning(
                "telemetry %s: shutdown did not finish within %.1f s; abandoning exports",
                self.service_name,
                timeout_s,
            )
        if self.drops is not None and self.drops.totals:
            _logger.info("telemetry %s: dropped items %s", self.service_name, self.drops.totals)

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _disabled(service_name: str, service_version: str, set_global: bool) -> Telemetry:
    tracer_provider = trace.NoOpTracerProvider()
    meter_provider = metrics.NoOpMeterProvider()
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    return Telemetry(
        service_name=service_name,
        resource=Resource.get_empty(),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        tracer=tracer_provider.get_tracer(names.INSTRUMENTATION_SCOPE, service_version),
        meter=meter_provider.get_meter(names.INSTRUMENTATION_SCOPE, service_version),
        enabled=False,
        destinations={names.SIGNAL_TRACES: "disabled", names.SIGNAL_METRICS: "disabled"},
    )


def init_telemetry(
    service_name: str,
    *,
    service_version: str,
    run_dir: Path | None = None,
    prometheus_port: int | None = None,
    set_global: bool = True,
    gpu_metrics: bool = True,
    resource_attributes: Mapping[str, Any] | None = None,
) -> Telemetry:
    """Set up tracing and metrics for one service and return the :class:`Telemetry` handle.

    Args:
        service_name: ``service.name`` (``OTEL_SERVICE_NAME`` overrides) and file name stem.
        service_version: ``service.version``.
        run_dir: directory for OTLP/JSON lines files when no OTLP endpoint is configured.
        prometheus_port: serve ``/metrics`` on this port (0 = ephemeral); ``None`` reads
            ``VOXLINE_PROMETHEUS_PORT``; unset = off. Host: ``VOXLINE_PROMETHEUS_HOST``
            (default 127.0.0.1).
        set_global: install the providers as the OTel globals (services: yes; tests: no —
            globals can be set only once per process).
        gpu_metrics: register NVML GPU instruments (absent without NVML).
        resource_attributes: extra resource attributes (below the environment in priority).

    ``OTEL_SDK_DISABLED=true`` returns a handle with no-op providers and writes nothing.
    """
    if _env_true("OTEL_SDK_DISABLED"):
        _logger.info("telemetry %s: disabled by OTEL_SDK_DISABLED", service_name)
        return _disabled(service_name, service_version, set_global)

    install_exporter_log_rate_limit()
    resource = build_resource(service_name, service_version, resource_attributes)
    reporter = DropReporter(service_name)
    run_dir = Path(run_dir) if run_dir is not None else None
    guarded: list[GuardedSpanExporter | GuardedMetricExporter] = []

    # Metrics first: the dropped-items counter and the exporters' own metrics live there.
    readers: list[MetricReader] = []
    metric_exporter, metrics_dest = _make_metric_exporter(service_name, run_dir)
    if metric_exporter is not None:
        guarded_metrics = GuardedMetricExporter(metric_exporter, reporter)
        guarded.append(guarded_metrics)
        interval = (
            None if _env("OTEL_METRIC_EXPORT_INTERVAL") else DEFAULT_METRIC_EXPORT_INTERVAL_MS
        )
        readers.append(
            PeriodicExportingMetricReader(guarded_metrics, export_interval_millis=interval)
        )
    prometheus_reader: PrometheusPullReader | None = None
    prom_setting = _prometheus_setting(prometheus_port)
    if prom_setting is not None:
        prometheus_reader = PrometheusPullReader()
        readers.append(prometheus_reader)
    # Exemplar filter: OTEL_METRICS_EXEMPLAR_FILTER, default trace_based (SDK reads it).
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, shutdown_on_exit=False
    )
    meter = meter_provider.get_meter(names.INSTRUMENTATION_SCOPE, service_version)
    reporter.bind(
        meter.create_counter(
            names.METRIC_TELEMETRY_DROPPED,
            unit=names.UNIT_ITEMS,
            description="Telemetry items (spans, metric data points) dropped before export.",
        )
    )

    # Sampler: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, default parentbased_always_on.
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    span_exporter, traces_dest = _make_span_exporter(service_name, run_dir, meter_provider)
    if span_exporter is not None:
        guarded_spans = GuardedSpanExporter(span_exporter, reporter)
        guarded.append(guarded_spans)
        tracer_provider.add_span_processor(DropCountingBatchSpanProcessor(guarded_spans, reporter))
    tracer = tracer_provider.get_tracer(names.INSTRUMENTATION_SCOPE, service_version)

    prometheus_server: PrometheusServer | None = None
    if prometheus_reader is not None and prom_setting is not None:
        try:
            prometheus_server = PrometheusServer(prometheus_reader, *prom_setting)
        except OSError as exc:
            # A taken port must not take the service down: metrics still go via OTLP/file.
            _logger.warning("prometheus endpoint %s:%s not started: %s", *prom_setting, exc)

    gpu_registered = False
    if gpu_metrics:
        from telemetry.gpu import register_gpu_metrics

        gpu_registered = register_gpu_metrics(meter)

    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)

    telemetry = Telemetry(
        service_name=service_name,
        resource=resource,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        tracer=tracer,
        meter=meter,
        enabled=True,
        destinations={names.SIGNAL_TRACES: traces_dest, names.SIGNAL_METRICS: metrics_dest},
        prometheus_address=prometheus_server.address if prometheus_server else None,
        drops=reporter,
        gpu_metrics=gpu_registered,
        _certificates=CertificateExpiry(meter),
        _guarded=guarded,
        _prometheus=prometheus_server,
    )
    if set_global:
        # Safety net for services that forget: bounded, and a no-op after an explicit shutdown.
        atexit.register(telemetry.shutdown)
    _logger.info(
        "telemetry %s: traces -> %s; metrics -> %s; prometheus -> %s; instance %s",
        service_name,
        traces_dest,
        metrics_dest,
        "{}:{}".format(*telemetry.prometheus_address) if telemetry.prometheus_address else "off",
        resource.attributes.get(names.RESOURCE_SERVICE_INSTANCE_ID),
    )
    return telemetry
