"""gRPC tracing and RPC metrics for sync ``grpc.server`` and sync channels.

Server: ``grpc.server(pool, interceptors=server_interceptors(telemetry))``
    1. the OpenTelemetry server interceptor: opens the server span (context extracted from
       metadata; ``rpc.*`` and ``net.peer.*`` attributes) and ends it;
    2. :class:`RpcMetricsServerInterceptor`, running *inside* that span, the **one owner of a
       served RPC's outcome** (docs/telemetry.md, "Who records what"). For every traced RPC,
       refusals by later interceptors included, it and nothing else:

       - sets the server span's status and ``error.type`` (:func:`mark_span_error`), ERROR for
         every non-OK code -- the instrumentation alone leaves INVALID_ARGUMENT,
         RESOURCE_EXHAUSTED, CANCELLED, ... UNSET (the semconv rule that only server faults
         are errors; Voxline wants every failed RPC visible). The handlers below it get
         grpc's own servicer context, not the instrumentation's wrapper, so the
         instrumentation's ``abort()``/``set_code()`` hooks never touch the status either;
       - records ``rpc.server.call.duration`` (inside the span, so exemplars carry the trace);
       - counts the request for its stage (``voxline.stage.active_requests`` while it runs,
         then ``voxline.stage.requests`` by ``rpc.method``, ``voxline.outcome`` and
         ``rpc.grpc.status_code``) when the pipeline serves a stage (:data:`names.STAGES`);
       - sends the call's trace id as initial metadata before the handler runs
         (``voxline-trace-id`` and the W3C ``traceresponse``: :func:`send_trace_response`).

    Servicer code (``services.runtime.rpc.rpc_method``) maps exceptions to precise statuses
    (``context.abort(code, human message)``) and adds business attributes to the span; the
    interceptor reads the resulting code and details from the context.

Client: ``channel = instrument_channel(grpc.insecure_channel(addr), telemetry)``
    The OpenTelemetry client interceptor (outer) traces unary-unary, stream-unary and
    stream-stream calls; :class:`RpcClientInterceptor` (inner) records
    ``rpc.client.call.duration`` and *itself* traces unary-stream calls: the instrumentation
    turns those into a plain generator without ``cancel()``/``code()`` (contrib #2014), and the
    gateway must be able to cancel an upstream stream. For unary-stream we start the client
    span, inject its context into the metadata and return grpc's own call object untouched;
    the span ends from the call's termination callback (completion, error or cancel).

Health checks and reflection (:data:`telemetry.names.UNTRACED_GRPC_SERVICE_PREFIXES`) are
neither traced nor measured, on both sides, through one mechanism: the ``filter_`` argument
of the OTel interceptors plus the same predicate in ours. ``OTEL_PYTHON_GRPC_EXCLUDED_SERVICES``
is not used (it only applies to the instrumentor classes, and ORs with ``filter_``).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.grpc import client_interceptor, server_interceptor
from opentelemetry.instrumentation.grpc.grpcext import (
    StreamClientInterceptor,
    UnaryClientInterceptor,
    intercept_channel,
)
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.propagate import inject
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from telemetry import names
from telemetry.context import trace_response_headers
from telemetry.instruments import DURATION_BUCKETS_S, StageMetrics

_logger = logging.getLogger(__name__)

_SCOPE = "voxline.telemetry.grpc"
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class Providers(Protocol):
    """The providers of one telemetry pipeline, e.g. :class:`telemetry.sdk.Telemetry`.

    Typed structurally so this module (the interceptors) does not import the setup module
    (:mod:`telemetry.sdk`) that builds on it.
    """

    @property
    def tracer_provider(self) -> trace.TracerProvider: ...

    @property
    def meter_provider(self) -> metrics.MeterProvider: ...


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _full_method(details: Any) -> str:
    # Server side: HandlerCallDetails.method; client side (grpcext): client_info.full_method.
    return getattr(details, "method", None) or getattr(details, "full_method", None) or ""


def split_full_method(full_method: str) -> tuple[str, str]:
    """``"/pkg.Svc/Method"`` -> ``("pkg.Svc", "Method")``."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def is_untraced(details: Any) -> bool:
    """True for RPCs that are never traced nor measured (health checks, reflection)."""
    service, _ = split_full_method(_full_method(details))
    return service.startswith(names.UNTRACED_GRPC_SERVICE_PREFIXES)


def _traced(details: Any) -> bool:
    return not is_untraced(details)


def _otel_client_filter(client_info: Any) -> bool:
    # Unary-stream calls are traced by RpcClientInterceptor (cancellable call object).
    if getattr(client_info, "is_server_stream", False) and not getattr(
        client_info, "is_client_stream", False
    ):
        return False
    return _traced(client_info)


def _as_status_code(code: grpc.StatusCode | int | None) -> grpc.StatusCode | None:
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    return _CODES_BY_VALUE.get(int(code), grpc.StatusCode.UNKNOWN)


def mark_span_error(
    span: Span,
    code: grpc.StatusCode | int,
    error: BaseException | str | None = None,
) -> None:
    """Mark ``span`` as failed with gRPC status ``code`` (no-op for OK or a non-recording span).

    Sets status ERROR with description ``"<CODE NAME>"`` or ``"<CODE NAME>: <message>"``,
    ``rpc.grpc.status_code`` and ``error.type`` (the code name). A string ``error`` is used as
    the message: pass developer-written text only (abort details), never user input. For an
    exception only its *type* is recorded (an ``exception`` event with ``exception.type``),
    never its message, which may echo user text (e.g. a phonemizer quoting its input).
    """
    status_code = _as_status_code(code)
    if status_code is None or status_code == grpc.StatusCode.OK or not span.is_recording():
        return
    span.set_attribute(names.ATTR_RPC_GRPC_STATUS_CODE, status_code.value[0])
    span.set_attribute(names.ATTR_ERROR_TYPE, status_code.name)
    description = status_code.name
    if isinstance(error, BaseException):
        # A bare Exception() is how grpc's context.abort() unwinds: nothing to record.
        if type(error) is not Exception:
            type_name = type(error).__qualname__
            span.add_event("exception", {"exception.type": type_name})
            description = f"{status_code.name}: {type_name}"
    elif error:
        description = f"{status_code.name}: {error}"
    span.set_status(Status(StatusCode.ERROR, description))


def send_trace_response(context: grpc.ServicerContext, span: Span) -> None:
    """Send ``span``'s trace id to the caller as initial metadata (response headers):
    ``voxline-trace-id`` and ``traceresponse`` (:func:`telemetry.context.trace_response_headers`).

    Initial metadata goes out once, before the first response message (for a stream) or
    with the response or status (unary), so this runs before the handler. Never fails the RPC.
    """
    headers = trace_response_headers(span)
    if not headers:
        return
    try:
        context.send_initial_metadata(headers)
    except Exception:  # already sent, or the call is over: telemetry must never fail an RPC
        _logger.debug("sending the trace id failed", exc_info=True)


def _decode(details: Any) -> str:
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return str(details) if details else ""


def _context_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:  # older grpcio or a wrapped context without code()
        return None
    return _as_status_code(code)


def _context_details(context: grpc.ServicerContext) -> str:
    try:
        return _decode(context.details())
    except Exception:
        return ""


def _terminated_code(
    context: grpc.ServicerContext, *, assume_inactive: bool = False
) -> grpc.StatusCode | None:
    """CANCELLED / DEADLINE_EXCEEDED if the RPC already ended without the handler's say-so
    (client went away, deadline passed), else None."""
    try:
        if not assume_inactive and context.is_active():
            return None
        if context.time_remaining() <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
    except Exception:
        return None
    return grpc.StatusCode.CANCELLED


def _rpc_duration_histogram(meter: metrics.Meter, name: str, side: str) -> metrics.Histogram:
    return meter.create_histogram(
        name,
        unit=names.UNIT_SECONDS,
        description=f"Duration of gRPC calls measured on the {side} side.",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
    )


class RedactedError(Exception):
    """Replaces an uncaught handler exception so its message (which may quote user text)
    reaches neither the span nor the client's status details. The original is not chained
    (span exception events would include the chain); its type and stack frames are logged."""


# ---------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------


def _servicer_context(context: grpc.ServicerContext) -> grpc.ServicerContext:
    """grpc's own servicer context under the instrumentation's wrapper.

    The instrumentation hands handlers a wrapper whose ``abort()``/``set_code()`` also set
    the span's status (its own rules, overwritten by ours anyway). Handlers below
    :class:`RpcMetricsServerInterceptor` get grpc's context instead: the status is set in one
    place, and every ``context`` call skips a proxy. Without the private attribute (another
    instrumentation version) the wrapper is used as it is: still correct, ours runs last.
    """
    return getattr(context, "_servicer_context", context)


class RpcMetricsServerInterceptor(grpc.ServerInterceptor):
    """The one owner of a served RPC's outcome: server span status and ``error.type``,
    ``rpc.server.call.duration``, and the stage's request counts (module docstring).

    Must run inside the OpenTelemetry server interceptor (list it after that one), so the
    server span is current while the handler runs; it sends that span's trace id first
    (:func:`send_trace_response`). Status codes: ``context.abort()`` /
    ``context.set_code()`` -> that code; uncaught exception -> UNKNOWN; the client cancelled or
    the deadline passed before the handler finished -> CANCELLED / DEADLINE_EXCEEDED.

    Args:
        meter: meter of ``rpc.server.call.duration``.
        redact_exceptions: see :func:`server_interceptors`.
        stage_metrics: the served stage's instruments; when given, every traced RPC is counted
            there (``voxline.stage.active_requests``, ``voxline.stage.requests``).
    """

    def __init__(
        self,
        meter: metrics.Meter,
        *,
        redact_exceptions: bool = True,
        stage_metrics: StageMetrics | None = None,
    ) -> None:
        self._histogram = _rpc_duration_histogram(meter, names.METRIC_RPC_SERVER_DURATION, "server")
        self._redact = redact_exceptions
        self._stage = stage_metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or is_untraced(handler_call_details):
            return handler
        service, method = split_full_method(_full_method(handler_call_details))
        attrs = {
            names.ATTR_RPC_SYSTEM: names.RPC_SYSTEM_GRPC,
            names.ATTR_RPC_SERVICE: service,
            names.ATTR_RPC_METHOD: method,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, attrs),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, attrs),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, attrs),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._wrap_unary(handler.unary_unary, attrs),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _start(self, attrs: dict[str, Any]) -> None:
        """The RPC reached its handler chain: count it as active. Paired with one _record."""
        if self._stage is None:
            return
        try:
            self._stage.request_started(attrs[names.ATTR_RPC_METHOD])
        except Exception:  # telemetry must never fail an RPC
            _logger.debug("counting an active request failed", exc_info=True)

    def _record(
        self,
        start: float,
        attrs: dict[str, Any],
        code: grpc.StatusCode,
        span: Span,
        error: BaseException | str | None,
    ) -> None:
        """The RPC's outcome, once: span status, duration, request count."""
        try:
            if code != grpc.StatusCode.OK:
                mark_span_error(span, code, error)
            self._histogram.record(
                time.perf_counter() - start,
                {**attrs, names.ATTR_RPC_GRPC_STATUS_CODE: code.value[0]},
            )
            if self._stage is not None:
                self._stage.request_finished(attrs[names.ATTR_RPC_METHOD], code)
        except Exception:  # telemetry must never fail an RPC
            _logger.debug("recording rpc metrics failed", exc_info=True)

    def _failure(
        self, exc: Exception, context: grpc.ServicerContext
    ) -> tuple[grpc.StatusCode, BaseException | str, bool]:
        """Classify a handler exception -> (code, error for the span, is it an abort)."""
        code = _context_code(context)
        if type(exc) is Exception and code is not None:
            # context.abort(): grpc already holds the code and developer-written details.
            return code, _context_details(context), True
        return (code or grpc.StatusCode.UNKNOWN), exc, False

    def _reraise(self, exc: Exception, aborted: bool, method: str) -> None:
        if aborted or not self._redact:
            raise exc
        # Log where it happened (type + stack frames) but not the message; then replace the
        # exception *without* chaining: OTel's record_exception formats the whole chain.
        frames = "".join(traceback.format_tb(exc.__traceback__))
        _logger.error(
            "uncaught %s in %s (message redacted)\n%s", type(exc).__qualname__, method, frames
        )
        raise RedactedError(f"{type(exc).__qualname__} (message redacted)") from None

    def _wrap_unary(
        self, behavior: Callable[..., Any], attrs: dict[str, Any]
    ) -> Callable[..., Any]:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            span = trace.get_current_span()
            context = _servicer_context(context)
            send_trace_response(context, span)
            self._start(attrs)
            try:
                response = behavior(request, context)
            except Exception as exc:
                code, error, aborted = self._failure(exc, context)
                self._record(start, attrs, code, span, error)
                self._reraise(exc, aborted, attrs[names.ATTR_RPC_METHOD])
                raise  # unreachable; keeps type checkers happy
            code = _context_code(context) or _terminated_code(context) or grpc.StatusCode.OK
            details = _context_details(context) if code != grpc.StatusCode.OK else None
            self._record(start, attrs, code, span, details)
            return response

        return wrapper

    def _wrap_stream(
        self, behavior: Callable[..., Iterator[Any]], attrs: dict[str, Any]
    ) -> Callable[..., Iterator[Any]]:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # Generator body: runs on the first next(), inside the OTel server span.
            start = time.perf_counter()
            span = trace.get_current_span()
            span_ctx = otel_context.get_current()
            context = _servicer_context(context)
            send_trace_response(context, span)
            done = threading.Lock()
            finished = [False]

            def finish(code: grpc.StatusCode, error: BaseException | str | None) -> None:
                with done:
                    if finished[0]:
                        return
                    finished[0] = True
                token = otel_context.attach(span_ctx)  # exemplars from grpc's thread too
                try:
                    self._record(start, attrs, code, span, error)
                finally:
                    otel_context.detach(token)

            def on_terminate() -> None:
                # Fires when the RPC ends for any reason; only matters if the response
                # generator did not finish by itself (client cancelled, deadline passed).
                finish(
                    _terminated_code(context, assume_inactive=True) or grpc.StatusCode.CANCELLED,
                    "terminated before the response stream finished",
                )

            self._start(attrs)
            try:
                if context.add_callback(on_terminate) is False:
                    on_terminate()  # the RPC is already over
            except Exception:
                _logger.debug("add_callback unavailable", exc_info=True)
            try:
                yield from behavior(request, context)
            except GeneratorExit:
                finish(grpc.StatusCode.CANCELLED, "response stream closed early")
                raise
            except Exception as exc:
                code, error, aborted = self._failure(exc, context)
                finish(code, error)
                self._reraise(exc, aborted, attrs[names.ATTR_RPC_METHOD])
                raise
            # A handler that stops because context.is_active() went false ends "normally".
            code = _context_code(context) or _terminated_code(context) or grpc.StatusCode.OK
            finish(code, _context_details(context) if code != grpc.StatusCode.OK else None)

        return wrapper


def _stage_metrics(telemetry: Providers | None, stage: str | None) -> StageMetrics | None:
    """The served stage's instruments, on the pipeline's ``voxline`` meter (the one the
    service's own ``StageMetrics`` uses, so both write the same series); None when the
    pipeline serves no stage (a test server, a tool)."""
    if stage is None and telemetry is not None:
        name = getattr(telemetry, "service_name", None)
        stage = name if name in names.STAGES else None
    if stage is None:
        return None
    meter = getattr(telemetry, "meter", None)
    if meter is None:
        provider = (
            telemetry.meter_provider if telemetry is not None else metrics.get_meter_provider()
        )
        meter = provider.get_meter(names.INSTRUMENTATION_SCOPE)
    return StageMetrics(meter, stage)


def server_interceptors(
    telemetry: Providers | None = None,
    *,
    redact_exceptions: bool = True,
    stage: str | None = None,
) -> list[grpc.ServerInterceptor]:
    """Interceptors for ``grpc.server(..., interceptors=...)``, in this order.

    Args:
        telemetry: the pipeline to use; ``None`` uses the OTel global providers.
        redact_exceptions: replace an uncaught handler exception by :class:`RedactedError`
            (same status UNKNOWN) so its message reaches neither span nor client.
        stage: the stage whose requests the server's RPCs are (``voxline.stage``); default:
            the pipeline's service name when it is one of :data:`names.STAGES`, else none
            (then no ``voxline.stage.*`` request counts, only ``rpc.server.call.duration``).
    """
    tracer_provider = telemetry.tracer_provider if telemetry is not None else None
    meter_provider = (
        telemetry.meter_provider if telemetry is not None else metrics.get_meter_provider()
    )
    return [
        server_interceptor(tracer_provider=tracer_provider, filter_=_traced),
        RpcMetricsServerInterceptor(
            meter_provider.get_meter(_SCOPE),
            redact_exceptions=redact_exceptions,
            stage_metrics=_stage_metrics(telemetry, stage),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


def _future_code(future: Any) -> grpc.StatusCode:
    try:
        return _as_status_code(future.code()) or grpc.StatusCode.UNKNOWN
    except Exception:
        return grpc.StatusCode.UNKNOWN


class RpcClientInterceptor(UnaryClientInterceptor, StreamClientInterceptor):
    """Records ``rpc.client.call.duration``; traces unary-stream calls itself (see module doc).

    A grpcext interceptor: attach with :func:`instrument_channel`, *inside* the OTel client
    interceptor so the OTel client span is current when the duration is recorded.
    """

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        self._tracer = tracer
        self._histogram = _rpc_duration_histogram(meter, names.METRIC_RPC_CLIENT_DURATION, "client")

    @staticmethod
    def _attrs(client_info: Any) -> dict[str, Any]:
        service, method = split_full_method(_full_method(client_info))
        return {
            names.ATTR_RPC_SYSTEM: names.RPC_SYSTEM_GRPC,
            names.ATTR_RPC_SERVICE: service,
            names.ATTR_RPC_METHOD: method,
        }

    def _record(self, start: float, attrs: dict[str, Any], code: grpc.StatusCode) -> None:
        try:
            self._histogram.record(
                time.perf_counter() - start,
                {**attrs, names.ATTR_RPC_GRPC_STATUS_CODE: code.value[0]},
            )
        except Exception:
            _logger.debug("recording rpc client metrics failed", exc_info=True)

    def _record_later(self, result: Any, start: float, attrs: dict[str, Any]) -> None:
        ctx = otel_context.get_current()

        def done(future: Any) -> None:
            token = otel_context.attach(ctx)
            try:
                self._record(start, attrs, _future_code(future))
            finally:
                otel_context.detach(token)

        result.add_done_callback(done)

    def _timed(self, request: Any, metadata: Any, client_info: Any, invoker: Callable) -> Any:
        attrs = self._attrs(client_info)
        start = time.perf_counter()
        try:
            result = invoker(request, metadata)
        except grpc.RpcError as exc:
            self._record(start, attrs, _future_code(exc))
            raise
        except Exception:
            self._record(start, attrs, grpc.StatusCode.UNKNOWN)
            raise
        if isinstance(result, grpc.Future):  # .future() or a streaming call object
            self._record_later(result, start, attrs)
        else:  # blocking call or .with_call(): done, and it succeeded
            self._record(start, attrs, grpc.StatusCode.OK)
        return result

    def intercept_unary(
        self, request: Any, metadata: Any, client_info: Any, invoker: Callable
    ) -> Any:
        if is_untraced(client_info) or not is_instrumentation_enabled():
            return invoker(request, metadata)
        return self._timed(request, metadata, client_info, invoker)

    def intercept_stream(
        self, request_or_iterator: Any, metadata: Any, client_info: Any, invoker: Callable
    ) -> Any:
        if is_untraced(client_info) or not is_instrumentation_enabled():
            return invoker(request_or_iterator, metadata)
        if client_info.is_server_stream and not client_info.is_client_stream:
            return self._traced_server_stream(request_or_iterator, metadata, client_info, invoker)
        return self._timed(request_or_iterator, metadata, client_info, invoker)

    def _traced_server_stream(
        self, request: Any, metadata: Any, client_info: Any, invoker: Callable
    ) -> Any:
        attrs = self._attrs(client_info)
        full_method = _full_method(client_info)
        span = self._tracer.start_span(
            full_method,
            kind=SpanKind.CLIENT,
            attributes={**attrs, names.ATTR_RPC_GRPC_STATUS_CODE: grpc.StatusCode.OK.value[0]},
        )
        span_ctx = trace.set_span_in_context(span)
        carrier: dict[str, str] = dict(metadata or ())
        inject(carrier, context=span_ctx)
        start = time.perf_counter()
        finished = threading.Lock()
        state = {"done": False}

        def finish(code: grpc.StatusCode, details: str | None) -> None:
            with finished:
                if state["done"]:
                    return
                state["done"] = True
            token = otel_context.attach(span_ctx)
            try:
                self._record(start, attrs, code)
                if code != grpc.StatusCode.OK:
                    mark_span_error(span, code, details)
                span.end()
            except Exception:
                _logger.debug("ending client stream span failed", exc_info=True)
            finally:
                otel_context.detach(token)

        try:
            call = invoker(request, tuple(carrier.items()))
        except grpc.RpcError as exc:
            finish(_future_code(exc), _decode(getattr(exc, "details", lambda: "")()))
            raise
        except Exception as exc:
            finish(grpc.StatusCode.UNKNOWN, type(exc).__qualname__)
            raise

        def on_done() -> None:
            code = _future_code(call)
            try:
                details = _decode(call.details()) if code != grpc.StatusCode.OK else None
            except Exception:
                details = None
            finish(code, details)

        # grpc's own call object goes back to the caller: iteration, cancel(), code(),
        # details(), trailing_metadata() all work. The span ends when the RPC terminates.
        if not call.add_callback(on_done):
            on_done()  # already terminated
        return call


def instrument_channel(channel: grpc.Channel, telemetry: Providers | None = None) -> grpc.Channel:
    """Return ``channel`` wrapped with client tracing and ``rpc.client.call.duration``.

    Use the returned channel for stubs. Every call kind keeps grpc's normal return values; a
    unary-stream call returns grpc's call object (iterable, with ``cancel()``). ``telemetry``
    ``None`` uses the OTel global providers.
    """
    tracer_provider = (
        telemetry.tracer_provider if telemetry is not None else trace.get_tracer_provider()
    )
    meter_provider = (
        telemetry.meter_provider if telemetry is not None else metrics.get_meter_provider()
    )
    ours = RpcClientInterceptor(
        tracer_provider.get_tracer(_SCOPE), meter_provider.get_meter(_SCOPE)
    )
    otel = client_interceptor(tracer_provider=tracer_provider, filter_=_otel_client_filter)
    # grpcext wraps in order: the first interceptor is innermost. OTel outermost, so its span
    # is current while ours records durations (exemplars point at the client span).
    return intercept_channel(channel, ours, otel)
