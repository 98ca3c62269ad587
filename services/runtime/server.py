"""The one stage-server runtime shared by every Voxline service.

`serve()` gives a service: a gRPC server with bounded concurrency, `grpc.health.v1` health
(NOT_SERVING until the model is loaded and warmed, SERVING after), server reflection,
structured logging, the `StageInfo` model-metadata service, and a graceful SIGTERM drain
(health flips to NOT_SERVING, new calls are refused, in-flight calls finish, then exit).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import importlib.metadata
import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from voxline.v1 import stage_pb2, stage_pb2_grpc

from services.runtime.config import MAX_MESSAGE_BYTES, ServiceConfig
from services.runtime.cpus import torch_threads
from services.runtime.decoding import TolerantServer, checked
from services.runtime.errors import Unavailable, VoxlineError, grpc_status_for
from services.runtime.scheduler import BatchScheduler, Job, read_hints
from services.runtime.stage import Stage
from services.runtime.tls import TLSConfigError
from telemetry import (
    PhaseTimeline,
    StageMetrics,
    Telemetry,
    init_telemetry,
    names,
    phase_span,
)
from telemetry.grpc import mark_span_error
from telemetry.logging import configure_logging

log = logging.getLogger("voxline.runtime")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


# The RPC method being served on this thread (for phase metrics' rpc.method attribute).
_current_method: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "voxline_rpc_method", default=None
)
# The server span of the RPC being served (phase spans become current inside it).
_server_span: contextvars.ContextVar[trace.Span] = contextvars.ContextVar(
    "voxline_server_span", default=trace.INVALID_SPAN
)
# End (time.time_ns) of the RPC's previous phase: stage phases tile the handler's time.
_phase_cursor: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "voxline_phase_cursor", default=None
)
# Where a streaming RPC's phases go instead of child spans (None: one span per phase).
_timeline: contextvars.ContextVar[PhaseTimeline | None] = contextvars.ContextVar(
    "voxline_phase_timeline", default=None
)
_runtime: StageRuntime | None = None


@contextmanager
def phase_timeline(span: trace.Span, stage: str) -> Iterator[None]:
    """Inside this block, phases are recorded as intervals written onto ``span`` at its end
    (:class:`telemetry.PhaseTimeline`) rather than as one child span each: streams repeat
    their phases per chunk, and their span count must grow with sentences, not chunks."""
    timeline = PhaseTimeline(stage)
    token = _timeline.set(timeline)
    try:
        yield
    finally:
        _timeline.reset(token)
        timeline.write_to(span)


def rpc_method(fn: F) -> F:
    """Wrap a servicer method: errors become precise statuses, and it is measured.

    Exceptions become a gRPC status with the exception's own message (written for humans,
    never containing request text); unexpected ones become INTERNAL and are logged with their
    traceback. Every call is counted by outcome and status code, counted as active while it
    runs, and a non-OK outcome marks the server span ERROR with the status code (the gRPC
    instrumentation leaves several codes UNSET). Works for unary and streaming methods.
    """
    method = fn.__name__

    def _fail(context: grpc.ServicerContext, exc: BaseException, tracker: Any) -> None:
        code, message = grpc_status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("unhandled error in %s", fn.__qualname__)
        else:
            log.info("%s -> %s: %s", method, code.name, message)
        tracker.set_code(code)
        mark_span_error(_server_span.get(), code, message)
        if isinstance(exc, VoxlineError) and exc.trailers:
            context.set_trailing_metadata(exc.trailers)
        context.abort(code, message)

    streaming = inspect.isgeneratorfunction(fn)

    @contextmanager
    def _measured() -> Iterator[Any]:
        token = _current_method.set(method)
        span = trace.get_current_span()
        span_token = _server_span.set(span)
        # The first phase starts where the server span started (SDK spans expose it).
        cursor_token = _phase_cursor.set(getattr(span, "start_time", None))
        stage = _runtime.config.service if _runtime is not None else "unknown"
        try:
            with phase_timeline(span, stage) if streaming else contextlib.nullcontext():
                if _runtime is None or _runtime.metrics is None:
                    yield _NullTracker()
                else:
                    with _runtime.metrics.track_request(method) as tracker:
                        yield tracker
        finally:
            _phase_cursor.reset(cursor_token)
            _server_span.reset(span_token)
            _current_method.reset(token)

    if streaming:

        @functools.wraps(fn)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with _measured() as tracker:
                try:
                    yield from fn(self, checked(request), context)
                except GeneratorExit:
                    tracker.set_code(grpc.StatusCode.CANCELLED)
                    raise
                except Exception as exc:
                    _fail(context, exc, tracker)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _measured() as tracker:
            try:
                return fn(self, checked(request), context)
            except Exception as exc:
                _fail(context, exc, tracker)

    return unary_wrapper  # type: ignore[return-value]


class _NullTracker:
    def set_code(self, code: Any) -> None:
        pass


class StageRuntime:
    """What a servicer needs from the runtime: readiness, the model scheduler, phases, telemetry."""

    def __init__(self, config: ServiceConfig, stage: Stage | None, telemetry: Telemetry) -> None:
        self.config = config
        self.stage = stage
        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self.metrics = StageMetrics(telemetry.meter, config.service)
        self.scheduler: BatchScheduler[Any, Any] | None = None
        if stage is not None:
            self.scheduler = BatchScheduler(
                config.service,
                stage.execute,
                config.scheduler,
                metrics=self.metrics,
                tracer=self.tracer,
                key_of=stage.batch_key,
                size_of=stage.batch_length,
            )
        self.ready = threading.Event()
        self._model_attributes: dict[str, Any] | None = None
        self._tile_phases = stage is not None

    @property
    def device(self) -> Any:
        return getattr(self.stage, "device", None)

    def require_ready(self) -> None:
        """Refuse calls while the model is still loading (clients should retry)."""
        if not self.ready.is_set():
            raise Unavailable(f"{self.config.service} is still loading its model; retry shortly")

    def playback_start(self, context: grpc.ServicerContext) -> float:
        """When this call's listener would run out of the audio already sent to them
        (`time.monotonic()`): now plus the playback buffer the gateway's hint reports (0
        when absent: the listener is waiting). Add the audio this call has produced so far
        to get a job's urgency (playback-aware earliest deadline first)."""
        return time.monotonic() + read_hints(context.invocation_metadata()).playback_buffer_s

    def infer(
        self, context: grpc.ServicerContext, payload: Any, *, urgency: float | None = None
    ) -> Any:
        """Run one input through the stage's model via the scheduler (batched with others).

        The wait until its batch starts is the `queue` phase; the batch's execution is the
        `inference` phase. The caller's deadline and cancellation reach the queued job.
        `urgency` (a `time.monotonic()` instant by which the output is needed) orders the
        queue; default: now.
        """
        return self.infer_many(context, [payload], [urgency])[0]

    def infer_many(
        self,
        context: grpc.ServicerContext,
        payloads: list[Any],
        urgencies: list[float | None] | None = None,
    ) -> list[Any]:
        """`infer` for several inputs of one request, submitted together (they may share a
        batch with each other and with other requests); outputs in input order."""
        assert self.scheduler is not None, "infer() needs a model stage"
        deadline = _deadline(context)
        urgencies = urgencies or [None] * len(payloads)
        jobs: list[Job[Any, Any]] = []
        try:
            with self.phase(names.PHASE_QUEUE, waiting=self.scheduler.waiting):
                jobs = self.scheduler.submit_many(
                    payloads,
                    urgencies,
                    priority=read_hints(context.invocation_metadata()).priority,
                    deadline=deadline,
                    is_active=context.is_active,
                )
                self.scheduler.wait_started(jobs[0])
            # The jobs may run in several batches, interleaved with other requests' work:
            # each wait for the next job to start is `queue`, each stretch of running is
            # `inference`, so the phases keep telling waiting from computing.
            outputs: list[Any] = []
            while len(outputs) < len(jobs):
                job = jobs[len(outputs)]
                if not job.started.is_set():
                    with self.phase(names.PHASE_QUEUE, waiting=self.scheduler.waiting):
                        self.scheduler.wait_started(job)
                with self.phase(names.PHASE_INFERENCE):
                    outputs.append(self.scheduler.wait_result(job))
                    while len(outputs) < len(jobs) and jobs[len(outputs)].started.is_set():
                        outputs.append(self.scheduler.wait_result(jobs[len(outputs)]))
            return outputs
        except BaseException:
            for job in jobs:  # nothing left queued for a request that failed
                self.scheduler.abandon(job)
            raise

    @contextmanager
    def phase(self, name: str, **attributes: Any) -> Iterator[None]:
        """Run a block as one phase of this stage's work: a child span plus the phase's
        duration histogram (recorded inside the span, so its exemplar names this trace).

        In a model stage the phases of one RPC tile its handler: each phase starts where the
        previous one ended (the first where the server span started), so the few
        microseconds of bookkeeping between phases count towards the next phase and the
        phases add up to the stage's time. The gateway's phases are not contiguous (stage
        calls run between them), so there each phase starts when its block starts.
        Inference on CUDA is synchronised before the span ends, so it measures GPU time.
        `attributes` are sizes and counts only (keys from telemetry.names or short names
        prefixed `voxline.`), never text.
        """
        attrs = {k if "." in k else f"voxline.{k}": v for k, v in attributes.items()}
        device = self.device if name == names.PHASE_INFERENCE else None
        span: Any = None
        try:
            with phase_span(
                self.tracer,
                self.metrics,
                name,
                method=_current_method.get(),
                device=device,
                attributes=attrs or None,
                start_time_ns=_phase_cursor.get() if self._tile_phases else None,
                timeline=_timeline.get(),
            ) as span:
                yield
        finally:
            if self._tile_phases:
                _phase_cursor.set(getattr(span, "end_time", None) or time.time_ns())

    def annotate(self, attributes: Mapping[str, Any]) -> None:
        """Add bounded attributes (sizes, counts, model facts) to the RPC's server span."""
        _server_span.get().set_attributes(dict(attributes))

    def receive(self, iterator: Iterator[T]) -> Iterator[T]:
        """Iterate a request stream, timing each wait for the next message as `transfer`."""
        it = iter(iterator)
        while True:
            with self.phase(names.PHASE_TRANSFER):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def send(self, message: T) -> Iterator[T]:
        """Yield one streamed response, timing flow-control back-pressure as `transfer`.

        Use as `yield from runtime.send(message)`.
        """
        with self.phase(names.PHASE_TRANSFER):
            yield message

    def model_attributes(self) -> dict[str, Any]:
        """Model facts for the server span, once the stage is loaded."""
        if self.stage is None or not self.ready.is_set():
            return {names.ATTR_STAGE: self.config.service}
        if self._model_attributes is None:
            self._model_attributes = self._describe()
        return self._model_attributes

    def _describe(self) -> dict[str, Any]:
        assert self.stage is not None
        d = self.stage.describe()
        return {
            names.ATTR_STAGE: d.stage,
            names.ATTR_MODEL_NAME: d.model_name,
            names.ATTR_MODEL_VERSION: d.model_version,
            names.ATTR_DEVICE: d.device,
            names.ATTR_DTYPE: d.dtype,
        }


class _StageInfoServicer(stage_pb2_grpc.StageInfoServicer):
    def __init__(self, runtime: StageRuntime) -> None:
        self._runtime = runtime

    @rpc_method
    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> stage_pb2.ModelInfo:
        self._runtime.require_ready()
        assert self._runtime.stage is not None
        d = self._runtime.stage.describe()
        return stage_pb2.ModelInfo(
            stage=d.stage,
            model_name=d.model_name,
            model_version=d.model_version,
            trained=d.trained,
            device=d.device,
            dtype=d.dtype,
            voices=list(d.voices),
            sample_rate_hz=d.sample_rate_hz,
            weights_source=d.weights_source,
            weights_sha256=d.weights_sha256,
        )


def serve(
    config: ServiceConfig,
    stage: Stage | None,
    register: Callable[[grpc.Server, StageRuntime], list[str]],
    extra_interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> int:
    """Run a service until SIGTERM/SIGINT; returns the process exit code.

    `register` adds the service's servicers to the server and returns their full service
    names (for health and reflection). `extra_interceptors` run inside the telemetry ones
    (the gateway's bearer-token check), so refused calls are still traced and counted.
    """
    global _runtime
    configure_logging(config.service, config.log_level)
    threads = torch_threads(config.torch_threads)
    if stage is not None:  # the gateway runs no model and never imports torch
        import torch

        torch.set_num_threads(threads)
    telemetry = init_telemetry(
        config.service,
        service_version=_version(),
        run_dir=config.run_dir,
        prometheus_port=config.prometheus_port or None,
    )
    runtime = _runtime = StageRuntime(config, stage, telemetry)

    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix=f"{config.service}-rpc"
        ),
        interceptors=[
            *telemetry.server_interceptors(),
            *config.server_tls.interceptors(),
            *extra_interceptors,
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", config.max_receive_bytes),
            # Clients re-resolve DNS when a connection ages out, so new replicas get traffic.
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            # ...but a call already in flight (a long stream) must not be cut off by it.
            ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)),
            ("grpc.so_reuseport", 0),
        ],
    )
    # Requests that do not decode become INVALID_ARGUMENT (services/runtime/decoding.py).
    tolerant = TolerantServer(server)
    service_names = register(tolerant, runtime)  # type: ignore[arg-type]
    if stage is not None:
        stage_pb2_grpc.add_StageInfoServicer_to_server(_StageInfoServicer(runtime), tolerant)
        service_names.append(stage_pb2.DESCRIPTOR.services_by_name["StageInfo"].full_name)

    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if config.reflection:  # off where the API's shape should not be discoverable
        reflection.enable_server_reflection(
            [
                *service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )

    tls = config.server_tls
    try:
        if tls.enabled:
            port = server.add_secure_port(config.address, tls.credentials())
        else:
            port = server.add_insecure_port(config.address)
        if config.health_port:
            _health_only_server(f"{config.host}:{config.health_port}", health_servicer)
    except (RuntimeError, TLSConfigError) as exc:
        log.error("cannot serve %s: %s", config.address, exc)
        return 2
    server.start()
    log.info(
        "listening",
        extra={
            "address": f"{config.host}:{port}",
            "services": service_names,
            "tls": ("mtls" if tls.client_ca else "tls") if tls.enabled else "off",
            "health_port": config.health_port or None,
        },
    )

    stop = threading.Event()
    failed = threading.Event()

    def load() -> None:
        try:
            if stage is not None:
                t0 = time.perf_counter()
                stage.load()
                t1 = time.perf_counter()
                stage.warmup()
                d = stage.describe()
                log.info(
                    "model ready",
                    extra={
                        "model": d.model_name,
                        "version": d.model_version,
                        "trained": d.trained,
                        "device": d.device,
                        "dtype": d.dtype,
                        "torch_threads": threads,
                        "load_s": round(t1 - t0, 3),
                        "warmup_s": round(time.perf_counter() - t1, 3),
                    },
                )
                if not d.trained:
                    log.warning(
                        "%s weights are an UNTRAINED seeded initialisation (%s): audio will "
                        "have the right length and format but will not be intelligible speech",
                        config.service,
                        d.weights_source,
                    )
            if runtime.scheduler is not None:
                runtime.scheduler.start()
            # Start-up objects never die: keep the garbage collector from rescanning them
            # on every request (cuts traced tail latency, see docs/telemetry.md).
            gc.freeze()
            runtime.ready.set()
            for name in ["", *service_names]:
                health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("serving")
        except Exception:
            log.exception("model failed to load; exiting")
            failed.set()
            stop.set()

    threading.Thread(target=load, name=f"{config.service}-load", daemon=True).start()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s; draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(0.5):
        pass

    # Drain: readiness goes NOT_SERVING first so load balancers stop sending, then the
    # server refuses new calls and waits up to drain_seconds for in-flight ones.
    health_servicer.enter_graceful_shutdown()
    t0 = time.perf_counter()
    server.stop(grace=config.drain_seconds).wait()
    log.info("drained", extra={"drain_s": round(time.perf_counter() - t0, 3)})
    if runtime.scheduler is not None:
        runtime.scheduler.stop()
    if stage is not None and runtime.ready.is_set():
        stage.finalize()
    telemetry.shutdown()
    return 1 if failed.is_set() else 0


# Keeps health-only servers alive until the process exits (they stop with it).
_health_servers: list[grpc.Server] = []


def _health_only_server(address: str, servicer: health.HealthServicer) -> None:
    """Serve `servicer` (and nothing else) in plaintext on `address`, started now.

    Kubelet's native gRPC probes cannot speak TLS: with TLS on the service port they probe
    here. Only grpc.health.v1 is registered, so the plaintext port exposes readiness and no
    API; it reports what the main port's health reports (the same servicer, so a drain turns
    it NOT_SERVING too).
    """
    health_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-rpc"),
        maximum_concurrent_rpcs=8,
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, health_server)
    health_server.add_insecure_port(address)
    health_server.start()
    _health_servers.append(health_server)


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline as a time.monotonic() instant (None: no deadline)."""
    remaining = context.time_remaining()
    # grpc reports "no deadline" as a huge number.
    if remaining is None or remaining > 10 * 365 * 24 * 3600:
        return None
    return time.monotonic() + max(0.0, remaining)


def _version() -> str:
    try:
        return importlib.metadata.version("voxline")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+local"
