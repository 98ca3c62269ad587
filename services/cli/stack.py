"""The local stack: gateway + three stages as separate processes on loopback.

Used by `voxline serve`, `make run` and the tests, so all three exercise the same real
processes. Each service logs to `<run_dir>/<service>.log`.

With `supervise=True` (what `voxline serve` and `make run` use) a background thread restarts
a service whose process exits, on the same port, after an exponential backoff: what a
Kubernetes Deployment does for a crashed pod. The others keep running; the gateway's
channels reconnect to the restarted stage by themselves.

With `http=True` (what `voxline serve` uses) a fifth process serves the OpenAI-compatible
HTTP API (services/http) in front of the gateway, supervised like the others.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.http import DEFAULT_PORT as DEFAULT_HTTP_PORT
from services.http import READY_PATH
from services.runtime.config import DEFAULT_PORTS
from services.runtime.tls import PLAINTEXT, ClientTLS, secure_or_insecure_channel

STAGES = ("frontend", "acoustic", "vocoder")
SERVICES = (*STAGES, "gateway")
# Two cores are shared by four processes: give the vocoder (the heaviest) the most threads.
DEFAULT_TORCH_THREADS = {"frontend": 1, "acoustic": 1, "vocoder": 2, "gateway": 1}
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

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A service of the local stack failed to start."""


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
    with secure_or_insecure_channel(address, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise StackError(f"process for {address} exited with code {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{address} not SERVING after {timeout:.0f} s")
            time.sleep(0.2)


def wait_http_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{url} not ready after {timeout:.0f} s")
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
    ) -> None:
        self.run_dir = Path(run_dir)
        self.host = host
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
        self._supervisor: threading.Thread | None = None

    @classmethod
    def on_default_ports(cls, run_dir: Path, **kwargs: object) -> LocalStack:
        return cls(run_dir, ports=DEFAULT_PORTS, **kwargs)  # type: ignore[arg-type]

    def address(self, service: str) -> str:
        return f"{self.host}:{self.ports[service]}"

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
        cmd += ["--torch-threads", str(DEFAULT_TORCH_THREADS[service])]
        if service == "gateway":
            for stage in STAGES:
                cmd += [f"--{stage}-address", self.address(stage)]
        return cmd + self._extra_args.get(service, [])

    def start_service(self, service: str) -> subprocess.Popen:
        """Spawn one service (not waiting for it)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.run_dir / f"{service}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, **LOCAL_ENV, **self._env}
        proc = subprocess.Popen(
            self._command(service), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        self.procs[service] = proc
        self._spawned[service] = time.monotonic()
        return proc

    def start(self, timeout: float = 180.0, services: tuple[str, ...] = SERVICES) -> LocalStack:
        """Start `services` (and the HTTP service if `http`) and wait until each is ready."""
        if self.http and "http" not in services:
            services = (*services, "http")
        try:
            for service in services:
                self.start_service(service)
            for service in services:
                if service == "http":
                    url = f"{self.http_url}{READY_PATH}"
                    wait_http_ready(url, timeout, self.procs[service])
                else:
                    wait_serving(self.address(service), timeout, self.procs[service], self.tls)
        except BaseException as exc:
            tails = "\n".join(f"--- {s}.log ---\n{self.log_tail(s)}" for s in services)
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

    def _supervise(self, services: tuple[str, ...]) -> None:
        """Restart any of `services` whose process exited, with backoff, until stop()."""
        backoff = dict.fromkeys(services, RESTART_BACKOFF_S)
        due: dict[str, float] = {}  # service -> when to restart it
        while not self._stopping.wait(SUPERVISE_POLL_S):
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
        """SIGTERM every service (front doors first), wait for the drain; SIGKILL stragglers."""
        self._stopping.set()  # first: no restart may race the shutdown
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        order = [s for s in ("http", "gateway", *STAGES) if s in self.procs]
        for service in order:
            if self.procs[service].poll() is None:
                self.procs[service].send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for service in order:
            proc = self.procs[service]
            try:
                codes[service] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[service] = proc.wait()
        self.procs.clear()
        return codes

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
