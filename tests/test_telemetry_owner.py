"""One owner for a served RPC's outcome (docs/telemetry.md, "Who records what").

A real in-process gRPC server with the real interceptors (``telemetry.grpc.server_interceptors``)
and servicer methods wrapped by the real ``rpc_method``; spans in an ``InMemorySpanExporter``,
metrics in an ``InMemoryMetricReader``. Every call -- failing, succeeding, or refused by an
interceptor before it reaches the servicer -- is counted exactly once (``voxline.stage.requests``,
``rpc.server.call.duration``), leaves ``voxline.stage.active_requests`` at 0, and a failing one
sets its server span's ERROR status and ``error.type`` exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.runtime.errors import InvalidArgument, ResourceExhausted
from services.runtime.rpc import rpc_method
from services.runtime.tls import CallGuard, guarded
from telemetry import names
from telemetry.grpc import server_interceptors

SERVICE = "voxline.test.Owner"
Request = health_pb2.HealthCheckRequest
Response = health_pb2.HealthCheckResponse


class OwnerServicer:
    """Servicer methods as the services write them: ``rpc_method`` and exceptions."""

    def __init__(self) -> None:
        self.runtime = SimpleNamespace(config=SimpleNamespace(service=names.STAGE_VOCODER))

    @rpc_method
    def Ok(self, request: Any, context: grpc.ServicerContext) -> Any:
        return Response(status=Response.SERVING)

    @rpc_method
    def Invalid(self, request: Any, context: grpc.ServicerContext) -> Any:
        raise InvalidArgument("text must not be empty")

    @rpc_method
    def Crash(self, request: Any, context: grpc.ServicerContext) -> Any:
        raise RuntimeError("secret user text")

    @rpc_method
    def Busy(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield Response(status=Response.SERVING)
        raise ResourceExhausted("queue full; retry")


class RefuseAll(CallGuard):
    """An interceptor below the telemetry ones that refuses every call (like a bad token)."""

    def guard(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> Any:
        def check(context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")

        return guarded(handler, check)


@dataclass
class Pipeline:
    """What ``server_interceptors`` reads from a ``Telemetry``, with in-memory exporters."""

    service_name: str
    spans: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def __post_init__(self) -> None:
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def meter(self) -> otel_metrics.Meter:
        return self.meter_provider.get_meter(names.INSTRUMENTATION_SCOPE)

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            point
            for rm in (data.resource_metrics if data else [])
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def server_spans(self) -> list[Any]:
        return [s for s in self.spans.get_finished_spans() if s.kind == SpanKind.SERVER]


@dataclass
class Marks:
    """Every ERROR status and ``error.type`` set on any SDK span, per span id."""

    errors: Counter[int] = field(default_factory=Counter)
    error_types: Counter[int] = field(default_factory=Counter)


@pytest.fixture
def marks(monkeypatch: pytest.MonkeyPatch) -> Marks:
    seen = Marks()
    set_status = sdk_trace.Span.set_status
    set_attribute = sdk_trace.Span.set_attribute

    def spy_status(span: sdk_trace.Span, status: Any, description: str | None = None) -> None:
        code = getattr(status, "status_code", status)
        if code == StatusCode.ERROR:
            seen.errors[span.context.span_id] += 1
        set_status(span, status, description)

    def spy_attribute(span: sdk_trace.Span, key: str, value: Any) -> None:
        if key == names.ATTR_ERROR_TYPE:
            seen.error_types[span.context.span_id] += 1
        set_attribute(span, key, value)

    monkeypatch.setattr(sdk_trace.Span, "set_status", spy_status)
    monkeypatch.setattr(sdk_trace.Span, "set_attribute", spy_attribute)
    return seen


@contextmanager
def serving(pipeline: Pipeline, *extra: grpc.ServerInterceptor) -> Iterator[grpc.Channel]:
    servicer = OwnerServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[*server_interceptors(pipeline), *extra],  # type: ignore[arg-type]
    )
    unary = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), Request.FromString, Response.SerializeToString
        )
        for name in ("Ok", "Invalid", "Crash")
    }
    stream = grpc.unary_stream_rpc_method_handler(
        servicer.Busy, Request.FromString, Response.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {**unary, "Busy": stream}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(grace=None)
        pipeline.tracer_provider.shutdown()


def call(channel: grpc.Channel, method: str) -> grpc.RpcError | None:
    """Call ``method``; the error it ended with (None: OK)."""
    path = f"/{SERVICE}/{method}"
    try:
        if method == "Busy":
            stub = channel.unary_stream(path, Request.SerializeToString, Response.FromString)
            list(stub(Request(), timeout=10))
        else:
            stub = channel.unary_unary(path, Request.SerializeToString, Response.FromString)
            stub(Request(), timeout=10)
    except grpc.RpcError as exc:
        return exc
    return None


def check_counted_once(pipeline: Pipeline, method: str, code: grpc.StatusCode) -> None:
    status = code.value[0]
    (request,) = pipeline.points(names.METRIC_STAGE_REQUESTS)
    assert request.value == 1
    assert dict(request.attributes) == {
        names.ATTR_STAGE: names.STAGE_VOCODER,
        names.ATTR_RPC_METHOD: method,
        names.ATTR_OUTCOME: names.OUTCOME_OK if status == 0 else names.OUTCOME_ERROR,
        names.ATTR_RPC_GRPC_STATUS_CODE: status,
    }
    (active,) = pipeline.points(names.METRIC_STAGE_ACTIVE_REQUESTS)
    assert active.value == 0
    assert dict(active.attributes) == {
        names.ATTR_STAGE: names.STAGE_VOCODER,
        names.ATTR_RPC_METHOD: method,
    }
    (duration,) = pipeline.points(names.METRIC_RPC_SERVER_DURATION)
    assert duration.count == 1
    assert dict(duration.attributes) == {
        names.ATTR_RPC_SYSTEM: names.RPC_SYSTEM_GRPC,
        names.ATTR_RPC_SERVICE: SERVICE,
        names.ATTR_RPC_METHOD: method,
        names.ATTR_RPC_GRPC_STATUS_CODE: status,
    }


@pytest.mark.parametrize(
    ("method", "code", "description"),
    [
        ("Invalid", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT: text must not be empty"),
        ("Crash", grpc.StatusCode.INTERNAL, None),
        ("Busy", grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED: queue full; retry"),
    ],
)
def test_a_failing_call_is_counted_once_and_marked_once(
    marks: Marks, method: str, code: grpc.StatusCode, description: str | None
) -> None:
    pipeline = Pipeline(names.STAGE_VOCODER)
    with serving(pipeline) as channel:
        error = call(channel, method)
    assert error is not None and error.code() == code
    assert "secret" not in (error.details() or "")  # rpc_method still maps errors

    check_counted_once(pipeline, method, code)
    (span,) = pipeline.server_spans()
    assert span.status.status_code == StatusCode.ERROR
    if description is not None:
        assert span.status.description == description
    assert span.attributes[names.ATTR_ERROR_TYPE] == code.name
    assert span.attributes[names.ATTR_RPC_GRPC_STATUS_CODE] == code.value[0]
    assert marks.errors[span.context.span_id] == 1, "span ERROR set more than once"
    assert marks.error_types[span.context.span_id] == 1, "error.type set more than once"
    assert "secret" not in str(span.attributes) + str(span.status.description)


def test_a_successful_call_is_counted_once_and_not_marked(marks: Marks) -> None:
    pipeline = Pipeline(names.STAGE_VOCODER)
    with serving(pipeline) as channel:
        assert call(channel, "Ok") is None
    check_counted_once(pipeline, "Ok", grpc.StatusCode.OK)
    (span,) = pipeline.server_spans()
    assert span.status.status_code == StatusCode.UNSET
    assert names.ATTR_ERROR_TYPE not in span.attributes
    assert not marks.errors and not marks.error_types


def test_a_call_refused_before_the_servicer_is_counted_once(marks: Marks) -> None:
    pipeline = Pipeline(names.STAGE_VOCODER)
    with serving(pipeline, RefuseAll()) as channel:
        error = call(channel, "Ok")
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    check_counted_once(pipeline, "Ok", grpc.StatusCode.UNAUTHENTICATED)
    (span,) = pipeline.server_spans()
    assert span.status.description == "UNAUTHENTICATED: missing token"
    assert marks.errors[span.context.span_id] == 1
    assert marks.error_types[span.context.span_id] == 1


def test_a_pipeline_that_serves_no_stage_counts_no_stage_requests() -> None:
    pipeline = Pipeline("names-probe")
    with serving(pipeline) as channel:
        assert call(channel, "Ok") is None
    assert pipeline.points(names.METRIC_STAGE_REQUESTS) == []
    assert pipeline.points(names.METRIC_STAGE_ACTIVE_REQUESTS) == []
    (duration,) = pipeline.points(names.METRIC_RPC_SERVER_DURATION)
    assert duration.count == 1


def test_rpc_method_records_no_telemetry_of_its_own() -> None:
    """The servicer wrapper maps errors; status and counts are the interceptor's alone."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    class Context:
        code: grpc.StatusCode | None = None

        def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.code = code
            raise Exception()  # what grpc's abort raises

    context = Context()
    with provider.get_tracer("t").start_as_current_span("server") as span:
        assert otel_trace.get_current_span() is span
        with pytest.raises(Exception):  # noqa: B017 - grpc's abort
            OwnerServicer().Invalid(Request(), context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code == StatusCode.UNSET
    assert names.ATTR_ERROR_TYPE not in (finished.attributes or {})
