"""The local stack: gateway + three stages as separate processes on loopback.

Used by `voxline serve`, `make run` and the tests, so all three exercise the same real
processes. Each service logs to `<run_dir>/<service>.log`.

With `supervise=True` (what `voxline serve` and `make run` use) a background thread restarts
a service whose process exits, on the same port, after an exponential backoff: what a
Kubernetes Deployment does for a crashed pod. The others keep running; the gateway's
channels reconnect to the restarted stage by themselves.

With `http=True` (what `voxline serve` uses) a fifth process serves the OpenAI-compatible
HTTP API (services/http) in front of the gateway, supervised like the others.

With `transport="unix"` (`voxline serve --transport unix`) the three stages listen on Unix
domain sockets instead of loopback TCP ports (`--listen unix:<dir>/<stage>.sock`, the
directory `<run_dir>/sock`, or a short temporary one when that path would be too long for
AF_UNIX) and the gateway dials them there; the gateway (and the HTTP front) keep their TCP
ports for clients. The co-located topology of docs/deploy.md, on one host.

Stopping (`stop()`, Ctrl-C on `voxline serve`) goes from the front door inwards, one tier at
a time: the HTTP front, then the gateway, then the three stages. Each tier gets SIGTERM and
drains (health NOT_SERVING, new calls refused, calls in flight finish within its
`--drain-seconds`) and has exited before the next tier is signalled, so a stream in flight
keeps every stage it needs until its last sentence. The supervisor never restarts anything
once stopping began. Each service runs in its own session (process group): a terminal's
Ctrl-C, which signals the whole foreground process group, reaches only the launcher, which
then stops the services in that order; they never see it themselves. The launcher must
therefore turn every way it is asked to stop into `stop()` (`voxline serve` handles SIGINT,
SIGTERM and SIGHUP; a second one SIGKILLs the services at once). A launcher killed with
SIGKILL leaves its services running, each in its own session (`ps -ef | grep services.`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.http import DEFAULT_PORT as DEFAULT_HTTP_PORT
from services.http import READY_PATH
from services.runtime.config import DEFAULT_PORTS
from services.runtime.tls import PLAINTEXT, ClientTLS, secure_or_insecure_channel

STAGES = ("frontend", "acoustic", "vocoder")
SERVICES = (*STAGES, "gateway")
#: How the gateway reaches the stages: loopback TCP ports, or Unix domain sockets.
TRANSPORTS = ("tcp", "unix")
Transport = Literal["tcp", "unix"]
#: Longest AF_UNIX socket path (sun_path is 108 bytes on Linux, with the final NUL); the
#: services check it too (services/runtime/server.py).
MAX_UNIX_PATH_BYTES = 107
# Two cores are shared by four processes: give the vocoder (the heaviest) the most threads.
# (The gateway and the HTTP front run no model.)
DEFAULT_TORCH_THREADS = {"frontend": 1, "acoustic": 1, "vocoder": 2}
#: The order `stop()` drains the services in: each tier exits before the next is signalled
#: (the HTTP front calls the gateway, the gateway calls the stages).
STOP_TIERS = (("http",), ("gateway",), STAGES)
# The four processes oversubscribe the cores whenever stages overlap (streaming pipelines
# acoustic and vocoder). Spinning OpenMP workers then wait on descheduled peers: measured
# here, a 64-frame HiFi-GAN pass went from 0.8 s to 3.4 s with another busy process.
# Passive waiting makes idle OpenMP threads sleep instead.
LOCAL_ENV = {"PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}

# Restart backoff of a supervised service (like kubelet's CrashLoopBackOff, shorter): the
# first restart waits RESTART_BACKOFF_S, each further crash doubles it up to
# MAX_RESTART_BACKOFF_S; a service that stayed up STABLE_AFTER_S starts again from the first.
RESTART_BACKOFF_S = 0.5
MAX_RESTART_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0
# How often the supervisor looks at its processes: the delay before a crash is noticed.
SUPERVISE_POLL_S = 0.1
#: How often `start()` reports the services it still waits for (to its `progress` callback).
PROGRESS_EVERY_S = 5.0
#: The health checks' channels redial at least every second: gRPC's default backoff grows
#: to minutes, which would delay noticing a service that came up, and keep reporting a
#: stale error (connection refused) for one that now listens but refuses the handshake.
PROBE_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A service of the local stack failed to start."""

    def __init__(self, message: str, services: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: The services at fault (their logs are the ones to read), when known.
        self.services = tuple(services)


def socket_dir(run_dir: Path) -> tuple[Path, bool]:
    """Where a unix-transport stack's stage sockets go: `<run_dir>/sock` when every socket
    path there fits AF_UNIX's limit, else a new short directory (`/tmp/vxXXXXXXXX`); and
    whether that directory is a temporary one (removed when the stack stops)."""
    wanted = Path(run_dir).absolute() / "sock"
    longest = max(len(os.fsencode(wanted / f"{stage}.sock")) for stage in STAGES)
    if longest <= MAX_UNIX_PATH_BYTES:
        return wanted, False
    return Path(tempfile.mkdtemp(prefix="vx")), True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_serving(
    address: str,
    timeout: float,
    proc: subprocess.Popen | None = None,
    tls: ClientTLS = PLAINTEXT,
) -> None:
    """Poll grpc.health.v1 until SERVING (over TLS if `tls` is set); fail early if `proc`
    exits."""
    deadline = time.monotonic() + timeout
    with secure_or_insecure_channel(address, PROBE_CHANNEL_OPTIONS, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise StackError(f"process for {address} exited with code {proc.returncode}")
            serving, state = health_state(stub)
            if serving:
                return
            if time.monotonic() > deadline:
                raise StackError(f"{address} not SERVING after {timeout:.0f} s (last: {state})")
            time.sleep(0.2)


def health_state(stub: health_pb2_grpc.HealthStub) -> tuple[bool, str]:
    """One grpc.health.v1 check: (SERVING?, what was seen, in a few words)."""
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    except grpc.RpcError as exc:
        return False, _rpc_error(exc)
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return serving, status if serving else f"{status} (loading)"


def _rpc_error(exc: grpc.RpcError) -> str:
    """`CODE: the last error` of a failed call (gRPC's connect errors are long)."""
    code = exc.code().name  # type: ignore[attr-defined]
    details = str(exc.details() or "")  # type: ignore[attr-defined]
    if "Connection refused" in details:
        return "not listening yet"
    refused = "failed to connect" in details and details.endswith("Socket closed")
    details = details.rsplit("last error: ", 1)[-1]
    if code == "UNAVAILABLE" and refused:
        details += " (TLS: a plaintext client, or no client certificate on an mTLS port?)"
    return f"{code}: {details}"


def http_state(url: str) -> tuple[bool, str]:
    """One GET of a readiness URL: (200?, what was seen)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return reply.status == 200, f"HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (OSError, urllib.error.URLError) as exc:
        return False, str(getattr(exc, "reason", exc))


def wait_http_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"process for {url} exited with code {proc.returncode}")
        ready, state = http_state(url)
        if ready:
            return
        if time.monotonic() > deadline:
            raise StackError(f"{url} not ready after {timeout:.0f} s (last: {state})")
        time.sleep(0.2)


class LocalStack:
    """Start/stop the four services (restarting crashed ones if `supervise`). Use as a
    context manager."""

    def __init__(
        self,
        run_dir: Path,
        *,
        ports: Mapping[str, int] | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        extra_args: Mapping[str, list[str]] | None = None,
        tls: ClientTLS = PLAINTEXT,
        supervise: bool = False,
        http: bool = False,
        transport: Transport = "tcp",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.host = host
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        #: How the gateway reaches the stages ("unix": the stages listen on sockets only).
        self.transport = transport
        #: The stages' socket directory (transport "unix"), chosen when first needed.
        self.socket_dir: Path | None = None
        self._temporary_socket_dir = False
        self.ports = dict(ports) if ports is not None else {s: free_port(host) for s in SERVICES}
        #: Also run the HTTP service (services/http); it is ready once the gateway is SERVING.
        self.http = http
        if http and "http" not in self.ports:
            self.ports["http"] = free_port(host) if ports is None else DEFAULT_HTTP_PORT
        self._env = dict(env or {})
        self._extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        #: How the health wait connects: set it when `extra_args` turn TLS on.
        self.tls = tls
        self.procs: dict[str, subprocess.Popen] = {}
        self._spawned: dict[str, float] = {}  # service -> time.monotonic() of its spawn
        self.supervise = supervise
        #: Restarts per service since start() (supervised stacks only).
        self.restarts: dict[str, int] = {}
        self._stopping = threading.Event()
        # Held by the supervisor while it looks and restarts, and by stop() to begin: once
        # stop() has it, no restart can follow.
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    @classmethod
    def on_default_ports(cls, run_dir: Path, **kwargs: object) -> LocalStack:
        return cls(run_dir, ports=DEFAULT_PORTS, **kwargs)  # type: ignore[arg-type]

    def address(self, service: str) -> str:
        """The gRPC target of `service`: `host:port`, or `unix:<path>` for a stage of a
        unix-transport stack."""
        if self.transport == "unix" and service in STAGES:
            return f"unix:{self._socket(service)}"
        return f"{self.host}:{self.ports[service]}"

    def _socket(self, stage: str) -> Path:
        if self.socket_dir is None:
            self.socket_dir, self._temporary_socket_dir = socket_dir(self.run_dir)
        return self.socket_dir / f"{stage}.sock"

    @property
    def gateway(self) -> str:
        return self.address("gateway")

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP service (with `http=True`)."""
        return f"http://{self.address('http')}"

    def _command(self, service: str) -> list[str]:
        cmd = [sys.executable, "-m", f"services.{service}", "--host", self.host]
        cmd += ["--port", str(self.ports[service]), "--run-dir", str(self.run_dir)]
        if service == "http":  # no model: no torch threads
            return [*cmd, "--gateway-address", self.gateway, *self._extra_args.get(service, [])]
        if service in DEFAULT_TORCH_THREADS:
            cmd += ["--torch-threads", str(DEFAULT_TORCH_THREADS[service])]
        if self.transport == "unix" and service in STAGES:
            cmd += ["--listen", self.address(service)]  # instead of --host:--port
        if service == "gateway":
            for stage in STAGES:
                cmd += [f"--{stage}-address", self.address(stage)]
        return cmd + self._extra_args.get(service, [])

    def start_service(self, service: str) -> subprocess.Popen:
        """Spawn one service (not waiting for it)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.run_dir / f"{service}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, **LOCAL_ENV, **self._env}
        # Its own session: a terminal's Ctrl-C (SIGINT to the whole foreground process group)
        # reaches the launcher only, which stops the services in order (stop()).
        proc = subprocess.Popen(
            self._command(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.procs[service] = proc
        self._spawned[service] = time.monotonic()
        return proc

    def start(
        self,
        timeout: float = 180.0,
        services: tuple[str, ...] = SERVICES,
        progress: Callable[[str], None] | None = None,
    ) -> LocalStack:
        """Start `services` (and the HTTP service if `http`) and wait until each is ready.

        `progress` is told, every PROGRESS_EVERY_S, which services are not ready yet and
        what their last health check saw. A service that exits or is not ready within
        `timeout` stops the stack with a StackError carrying the log tails.
        """
        if self.http and "http" not in services:
            services = (*services, "http")
        try:
            for service in services:
                self.start_service(service)
            self._wait_ready(services, timeout, progress)
        except BaseException as exc:
            # The logs to read: those of the services at fault, when known.
            culprits = exc.services if isinstance(exc, StackError) and exc.services else services
            tails = "\n".join(
                f"--- {s}.log ({self.run_dir / f'{s}.log'}) ---\n{self.log_tail(s, 25)}"
                for s in culprits
            )
            self.stop()
            if isinstance(exc, StackError):
                raise StackError(f"{exc}\n{tails}") from None
            raise
        if self.supervise:
            self._stopping.clear()
            self.restarts = {s: 0 for s in services}
            self._supervisor = threading.Thread(
                target=self._supervise, args=(services,), name="stack-supervisor", daemon=True
            )
            self._supervisor.start()
        return self

    def _wait_ready(
        self,
        services: tuple[str, ...],
        timeout: float,
        progress: Callable[[str], None] | None,
    ) -> None:
        """Poll every service's readiness (gRPC health over `self.tls`, or the HTTP front's
        ready URL) until all are ready; StackError (with `.services`, the culprits) if one
        exits or `timeout` passes."""
        t0 = time.monotonic()
        next_report = t0 + PROGRESS_EVERY_S
        pending = list(services)
        states = dict.fromkeys(services, "starting")
        channels = {
            s: secure_or_insecure_channel(self.address(s), PROBE_CHANNEL_OPTIONS, tls=self.tls)
            for s in services
            if s != "http"
        }
        try:
            while True:
                for service in list(pending):
                    code = self.procs[service].poll()
                    if code is not None:
                        raise StackError(
                            f"{service} exited with code {code} while starting", [service]
                        )
                    if service == "http":
                        ready, states[service] = http_state(f"{self.http_url}{READY_PATH}")
                    else:
                        stub = health_pb2_grpc.HealthStub(channels[service])
                        ready, states[service] = health_state(stub)
                    if ready:
                        pending.remove(service)
                if not pending:
                    return
                now = time.monotonic()
                waiting = "; ".join(f"{s} {self.address(s)}: {states[s]}" for s in pending)
                if now - t0 > timeout:
                    raise StackError(f"not ready after {timeout:.0f} s: {waiting}", pending)
                if progress is not None and now >= next_report:
                    progress(f"  ... {now - t0:.0f} s, waiting for {waiting}")
                    next_report = now + PROGRESS_EVERY_S
                time.sleep(0.2)
        finally:
            for channel in channels.values():
                channel.close()

    def _supervise(self, services: tuple[str, ...]) -> None:
        """Restart any of `services` whose process exited, with backoff, until stop()."""
        backoff = dict.fromkeys(services, RESTART_BACKOFF_S)
        due: dict[str, float] = {}  # service -> when to restart it
        while not self._stopping.wait(SUPERVISE_POLL_S):
            with self._lock:
                if self._stopping.is_set():  # stop() began: its exits are not crashes
                    return
                self._look(services, backoff, due)

    def _look(
        self, services: tuple[str, ...], backoff: dict[str, float], due: dict[str, float]
    ) -> None:
        """One supervisor pass: restart what is due, schedule the restart of what exited."""
        now = time.monotonic()
        for service in services:
            if service in due:
                if now >= due[service]:
                    del due[service]
                    self.start_service(service)
                    self.restarts[service] += 1
                    log.warning("%s restarted (pid %d)", service, self.procs[service].pid)
                continue
            code = self.procs[service].poll()
            if code is None:
                continue
            uptime = now - self._spawned[service]
            if uptime >= STABLE_AFTER_S:
                backoff[service] = RESTART_BACKOFF_S
            delay = backoff[service]
            backoff[service] = min(2 * delay, MAX_RESTART_BACKOFF_S)
            due[service] = now + delay
            message = (
                f"{service} exited with code {code} after {uptime:.1f} s; "
                f"restarting in {delay:.1f} s"
            )
            log.warning("%s", message)
            with open(self.run_dir / f"{service}.log", "a") as f:  # where its logs are
                f.write(f"--- supervisor: {message} ---\n")

    def log_tail(self, service: str, lines: int = 15) -> str:
        path = self.run_dir / f"{service}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """Stop the services tier by tier (STOP_TIERS: HTTP front, gateway, stages).

        Each tier gets SIGTERM, drains (its calls in flight finish within its
        `--drain-seconds`) and has exited before the next is signalled; one still running
        `timeout` seconds after its SIGTERM gets SIGKILL. No restart happens once this began.
        Interrupted (a second Ctrl-C: KeyboardInterrupt), it SIGKILLs what is left and
        re-raises. Returns each service's exit code.
        """
        with self._lock:  # after this, the supervisor restarts nothing
            self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        codes: dict[str, int | None] = {}
        try:
            for tier in STOP_TIERS:
                procs = {s: self.procs[s] for s in tier if s in self.procs}
                for proc in procs.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + timeout
                for service, proc in procs.items():
                    try:
                        codes[service] = proc.wait(max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        log.warning(
                            "%s still running %.0f s after SIGTERM: killed", service, timeout
                        )
                        proc.kill()
                        codes[service] = proc.wait()
        except BaseException:
            self.kill()
            raise
        self.procs.clear()
        self._remove_socket_dir()
        return codes

    def _remove_socket_dir(self) -> None:
        """Remove a temporary socket directory (the stages unlink their sockets on exit)."""
        if self._temporary_socket_dir and self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir, self._temporary_socket_dir = None, False

    def kill(self) -> None:
        """SIGKILL every service still running (no drain) and reap it."""
        with self._lock:
            self._stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()
        self._remove_socket_dir()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
