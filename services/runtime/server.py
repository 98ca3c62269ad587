"""The one stage-server runtime shared by every Voxline service.

`serve()` gives a service: a gRPC server with bounded concurrency, `grpc.health.v1` health
(NOT_SERVING until the model is loaded and warmed, SERVING after), server reflection,
structured logging, the `StageInfo` model-metadata service, and a graceful SIGTERM drain
(health flips to NOT_SERVING, new calls are refused, in-flight calls finish, then exit).
"""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from voxline.v1 import stage_pb2, stage_pb2_grpc

from services.runtime.config import ServiceConfig
from services.runtime.errors import Unavailable, grpc_status_for
from services.runtime.lane import InferenceLane
from services.runtime.logs import configure_logging
from services.runtime.stage import Stage

log = logging.getLogger("voxline.runtime")

F = TypeVar("F", bound=Callable[..., Any])

# Messages carry whole mels/audio for long texts: allow up to 64 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def rpc_method(fn: F) -> F:
    """Turn exceptions raised by a servicer method into a precise gRPC status.

    Works for unary methods and for server-streaming generator methods. The message sent
    to the caller is the exception's own (written for humans); unexpected exceptions become
    INTERNAL and are logged with their traceback (never with request text).
    """

    def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
        code, message = grpc_status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("unhandled error in %s", fn.__qualname__)
        else:
            log.info("%s -> %s: %s", fn.__qualname__, code.name, message)
        context.abort(code, message)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from fn(self, request, context)
            except Exception as exc:
                _abort(context, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            _abort(context, exc)

    return unary_wrapper  # type: ignore[return-value]


class StageRuntime:
    """What a servicer needs from the runtime: readiness, the model lane and phases."""

    def __init__(self, config: ServiceConfig, stage: Stage | None) -> None:
        self.config = config
        self.stage = stage
        self.lane = InferenceLane(config.service, config.max_queue)
        self.ready = threading.Event()

    def require_ready(self) -> None:
        """Refuse calls while the model is still loading (clients should retry)."""
        if not self.ready.is_set():
            raise Unavailable(f"{self.config.service} is still loading its model; retry shortly")

    @contextmanager
    def model(self, context: grpc.ServicerContext) -> Iterator[float]:
        """Wait for exclusive use of the model within the caller's deadline."""
        with self.lane.acquire(context.time_remaining()) as queued:
            yield queued

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a phase of the stage's work (the telemetry issue hangs spans/metrics here)."""
        yield


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
        )


def serve(
    config: ServiceConfig,
    stage: Stage | None,
    register: Callable[[grpc.Server, StageRuntime], list[str]],
) -> int:
    """Run a service until SIGTERM/SIGINT; returns the process exit code.

    `register` adds the service's servicers to the server and returns their full service
    names (for health and reflection).
    """
    configure_logging(config.service, config.log_level)
    torch.set_num_threads(max(1, config.torch_threads))
    runtime = StageRuntime(config, stage)

    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix=f"{config.service}-rpc"
        ),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Clients re-resolve DNS when a connection ages out, so new replicas get traffic.
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.drain_seconds * 1000)),
            ("grpc.so_reuseport", 0),
        ],
    )
    names = register(server, runtime)
    if stage is not None:
        stage_pb2_grpc.add_StageInfoServicer_to_server(_StageInfoServicer(runtime), server)
        names.append(stage_pb2.DESCRIPTOR.services_by_name["StageInfo"].full_name)

    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )

    try:
        port = server.add_insecure_port(config.address)
    except RuntimeError as exc:
        log.error("cannot bind %s: %s", config.address, exc)
        return 2
    server.start()
    log.info("listening", extra={"address": f"{config.host}:{port}", "services": names})

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
            runtime.ready.set()
            for name in ["", *names]:
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
    if stage is not None and runtime.ready.is_set():
        stage.finalize()
    return 1 if failed.is_set() else 0
