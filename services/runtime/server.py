"""The one stage-server runtime shared by every Voxline service.

`serve()` gives a service: a gRPC server with bounded concurrency, `grpc.health.v1` health
(NOT_SERVING until the model is loaded and warmed, SERVING after), server reflection,
structured logging, the `StageInfo` model-metadata service, and a graceful SIGTERM drain
(health flips to NOT_SERVING, new calls are refused, in-flight calls finish, then exit).

The rest of the runtime, a module per job: `rpc.py` (`rpc_method`: statuses, the
per-call context), `stage_runtime.py` (`StageRuntime`: readiness, inference through the
scheduler, phases), `phases.py` (where phase records go), `scheduler.py` (batching and
order), `decoding.py` (undecodable requests), `config.py`, `tls.py`, `errors.py`.
"""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from voxline.v1 import stage_pb2, stage_pb2_grpc

from services.runtime.config import MAX_MESSAGE_BYTES, ServiceConfig
from services.runtime.cpus import torch_threads
from services.runtime.decoding import TolerantServer
from services.runtime.health import BoundedHealthServicer
from services.runtime.rpc import rpc_method
from services.runtime.stage import Stage
from services.runtime.stage_runtime import StageRuntime
from services.runtime.tls import TLSConfigError
from telemetry import (
    init_telemetry,
)
from telemetry.logging import configure_logging

log = logging.getLogger("voxline.runtime")

#: Connection liveness. The server pings each connection every 60 s and closes it when no
#: answer comes within 20 s, so the calls of a caller that vanished (no FIN: a dead node, a
#: dropped NAT entry) end and free their slots within ~80 s instead of never. A connection
#: with no call for 10 minutes is closed. Callers may ping every 10 s at the most (more often,
#: even with no call open, earns a GOAWAY: pings cost the server).
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.max_connection_idle_ms", 600_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


class _StageInfoServicer(stage_pb2_grpc.StageInfoServicer):
    def __init__(self, runtime: StageRuntime) -> None:
        self.runtime = runtime

    @rpc_method
    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> stage_pb2.ModelInfo:
        self.runtime.require_ready()
        assert self.runtime.stage is not None
        d = self.runtime.stage.describe()
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
            voice_models=[
                stage_pb2.VoiceModel(
                    voice=v.voices[0],
                    architecture=v.architecture,
                    model_name=v.model_name,
                    model_version=v.model_version,
                    trained=v.trained,
                    sample_rate_hz=v.sample_rate_hz,
                    hop_length=v.hop_length,
                    feature_channels=v.feature_channels,
                    language_code=v.language_code,
                    speakers=list(v.speakers),
                    weights_source=v.weights_source,
                    weights_sha256=v.weights_sha256,
                )
                for v in d.voice_models()
            ],
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
    configure_logging(config.service, config.log_level)
    threads = _set_torch_threads(config, stage)
    telemetry = init_telemetry(
        config.service,
        service_version=_version(),
        run_dir=config.run_dir,
        prometheus_port=config.prometheus_port or None,
    )
    runtime = StageRuntime(config, stage, telemetry)
    server = _grpc_server(config, telemetry, extra_interceptors)
    service_names = _register(server, runtime, register)
    health_servicer = _health(server, config, service_names)
    if not _bind(server, config, telemetry, health_servicer, stage is None):
        return 2
    server.start()
    stop, failed = threading.Event(), threading.Event()
    loader = _Loader(runtime, health_servicer, service_names, threads, stop, failed)
    threading.Thread(target=loader.run, name=f"{config.service}-load", daemon=True).start()
    _wait_for_signal(stop)
    _drain(server, runtime, health_servicer, config.drain_seconds)
    telemetry.shutdown()
    return 1 if failed.is_set() else 0


def _set_torch_threads(config: ServiceConfig, stage: Stage | None) -> int:
    """torch's intra-op threads for a model stage (the gateway never imports torch)."""
    threads = torch_threads(config.torch_threads)
    if stage is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


def _grpc_server(
    config: ServiceConfig, telemetry: Any, extra_interceptors: Sequence[grpc.ServerInterceptor]
) -> grpc.Server:
    """The gRPC server: bounded handler threads and calls, message limits, connection
    ageing and liveness; telemetry's interceptors outermost."""
    return grpc.server(
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
            *KEEPALIVE_OPTIONS,
        ],
    )


def _register(
    server: grpc.Server,
    runtime: StageRuntime,
    register: Callable[[grpc.Server, StageRuntime], list[str]],
) -> list[str]:
    """The service's servicers (and a model stage's StageInfo); their full names."""
    # Requests that do not decode become INVALID_ARGUMENT (services/runtime/decoding.py).
    tolerant = TolerantServer(server)
    service_names = register(tolerant, runtime)  # type: ignore[arg-type]
    if runtime.stage is not None:
        stage_pb2_grpc.add_StageInfoServicer_to_server(_StageInfoServicer(runtime), tolerant)
        service_names.append(stage_pb2.DESCRIPTOR.services_by_name["StageInfo"].full_name)
    return service_names


def _health(
    server: grpc.Server, config: ServiceConfig, service_names: list[str]
) -> BoundedHealthServicer:
    """grpc.health.v1 (NOT_SERVING until the model is ready) and, unless turned off,
    server reflection."""
    health_servicer = BoundedHealthServicer()
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
    return health_servicer


def _bind(
    server: grpc.Server,
    config: ServiceConfig,
    telemetry: Any,
    health_servicer: BoundedHealthServicer,
    is_gateway: bool,
) -> bool:
    """Listen (TLS or plaintext) on `config.address` (`--listen`, e.g. a Unix socket, else
    `--host:--port`), plus the plaintext health-only port on `--host`; False (logged) when the
    address or the certificates are unusable."""
    tls = config.server_tls
    try:
        socket_path = unix_socket_path(config.address)
        if socket_path is not None:
            _prepare_unix_socket(socket_path)
        if tls.enabled:
            port = server.add_secure_port(config.address, tls.credentials())
        else:
            port = server.add_insecure_port(config.address)
        tls.export_certificate_expiry(telemetry, config.client_tls if is_gateway else None)
        if config.health_port:
            _health_only_server(f"{config.host}:{config.health_port}", health_servicer)
    except (RuntimeError, TLSConfigError, OSError) as exc:
        log.error("cannot serve %s: %s", config.address, exc)
        return False
    log.info(
        "listening",
        extra={
            "address": config.address if socket_path else f"{config.host}:{port}",
            "tls": ("mtls" if tls.client_ca else "tls") if tls.enabled else "off",
            "health_port": config.health_port or None,
        },
    )
    return True


#: Longest path of an AF_UNIX socket (sun_path is 108 bytes on Linux, with the final NUL).
MAX_UNIX_PATH_BYTES = 107


def unix_socket_path(address: str) -> str | None:
    """The file of a gRPC `unix:` address (`unix:relative`, `unix:/abs`, `unix:///abs`);
    None for any other address (host:port, `unix-abstract:`, which has no file)."""
    if not address.startswith("unix:"):
        return None
    rest = address[len("unix:") :]
    return rest[2:] if rest.startswith("//") else rest


def _prepare_unix_socket(path: str) -> None:
    """Make `path` bindable: its directory exists, and a socket file left by a process that
    died without unlinking it (SIGKILL, OOM) is removed. A socket something still answers on
    is left alone (RuntimeError: two servers on one path would steal each other's callers),
    as is any file that is not a socket."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise RuntimeError(
            f"Unix socket path is {len(os.fsencode(path))} bytes, longer than the "
            f"{MAX_UNIX_PATH_BYTES} AF_UNIX allows: use a shorter directory"
        )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: a stale file
        else:
            raise RuntimeError(f"another process is listening on {path}")
    target.unlink(missing_ok=True)
    log.info("removed a stale socket file", extra={"path": path})


class _Loader:
    """Loads and warms the model in the background, then turns health SERVING; a failure
    stops the process (exit code 1)."""

    def __init__(
        self,
        runtime: StageRuntime,
        health_servicer: BoundedHealthServicer,
        service_names: list[str],
        threads: int,
        stop: threading.Event,
        failed: threading.Event,
    ) -> None:
        self._runtime, self._health = runtime, health_servicer
        self._service_names, self._threads = service_names, threads
        self._stop, self._failed = stop, failed

    def run(self) -> None:
        runtime = self._runtime
        try:
            if runtime.stage is not None:
                self._load(runtime.stage)
            if runtime.scheduler is not None:
                runtime.scheduler.start()
            # Start-up objects never die: keep the garbage collector from rescanning them
            # on every request (cuts traced tail latency, see docs/telemetry.md).
            gc.freeze()
            runtime.ready.set()
            for name in ["", *self._service_names]:
                self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("serving", extra={"services": self._service_names})
        except Exception:
            log.exception("model failed to load; exiting")
            self._failed.set()
            self._stop.set()

    def _load(self, stage: Stage) -> None:
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
                "voices": list(d.voices),
                "trained": d.trained,
                "device": d.device,
                "dtype": d.dtype,
                "torch_threads": self._threads,
                "load_s": round(t1 - t0, 3),
                "warmup_s": round(time.perf_counter() - t1, 3),
            },
        )
        if not d.trained:
            log.warning(
                "%s weights are an UNTRAINED seeded initialisation (%s): audio will have the "
                "right length and format but will not be intelligible speech",
                d.stage,
                d.weights_source,
            )


def _wait_for_signal(stop: threading.Event) -> None:
    """Block until SIGTERM/SIGINT (or `stop` set by a failed load)."""

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s; draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(0.5):
        pass


def _drain(
    server: grpc.Server,
    runtime: StageRuntime,
    health_servicer: BoundedHealthServicer,
    drain_seconds: float,
) -> None:
    """Readiness goes NOT_SERVING first so load balancers stop sending, then the server
    refuses new calls and waits up to `drain_seconds` for in-flight ones."""
    health_servicer.enter_graceful_shutdown()
    t0 = time.perf_counter()
    server.stop(grace=drain_seconds).wait()
    log.info("drained", extra={"drain_s": round(time.perf_counter() - t0, 3)})
    if runtime.scheduler is not None:
        runtime.scheduler.stop()
    if runtime.stage is not None and runtime.ready.is_set():
        runtime.stage.finalize()


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


def _version() -> str:
    try:
        return importlib.metadata.version("voxline")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+local"
