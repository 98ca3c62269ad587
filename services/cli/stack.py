"""The local stack: gateway + three stages as separate processes on loopback.

Used by `voxline serve`, `make run` and the tests, so all three exercise the same real
processes. Each service logs to `<run_dir>/<service>.log`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.config import DEFAULT_PORTS

STAGES = ("frontend", "acoustic", "vocoder")
SERVICES = (*STAGES, "gateway")
# Two cores are shared by four processes: give the vocoder (the heaviest) the most threads.
DEFAULT_TORCH_THREADS = {"frontend": 1, "acoustic": 1, "vocoder": 2, "gateway": 1}
# The four processes oversubscribe the cores whenever stages overlap (streaming pipelines
# acoustic and vocoder). Spinning OpenMP workers then wait on descheduled peers: measured
# here, a 64-frame HiFi-GAN pass went from 0.8 s to 3.4 s with another busy process.
# Passive waiting makes idle OpenMP threads sleep instead.
LOCAL_ENV = {"PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}


class StackError(RuntimeError):
    """A service of the local stack failed to start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_serving(address: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll grpc.health.v1 until SERVING; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
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


class LocalStack:
    """Start/stop the four services. Use as a context manager."""

    def __init__(
        self,
        run_dir: Path,
        *,
        ports: Mapping[str, int] | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        extra_args: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.host = host
        self.ports = dict(ports) if ports is not None else {s: free_port(host) for s in SERVICES}
        self._env = dict(env or {})
        self._extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        self.procs: dict[str, subprocess.Popen] = {}

    @classmethod
    def on_default_ports(cls, run_dir: Path, **kwargs: object) -> LocalStack:
        return cls(run_dir, ports=DEFAULT_PORTS, **kwargs)  # type: ignore[arg-type]

    def address(self, service: str) -> str:
        return f"{self.host}:{self.ports[service]}"

    @property
    def gateway(self) -> str:
        return self.address("gateway")

    def _command(self, service: str) -> list[str]:
        cmd = [sys.executable, "-m", f"services.{service}", "--host", self.host]
        cmd += ["--port", str(self.ports[service]), "--run-dir", str(self.run_dir)]
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
        return proc

    def start(self, timeout: float = 180.0, services: tuple[str, ...] = SERVICES) -> LocalStack:
        """Start `services` and wait until each reports SERVING."""
        try:
            for service in services:
                self.start_service(service)
            for service in services:
                wait_serving(self.address(service), timeout, self.procs[service])
        except BaseException as exc:
            tails = "\n".join(f"--- {s}.log ---\n{self.log_tail(s)}" for s in services)
            self.stop()
            if isinstance(exc, StackError):
                raise StackError(f"{exc}\n{tails}") from None
            raise
        return self

    def log_tail(self, service: str, lines: int = 15) -> str:
        path = self.run_dir / f"{service}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every service (gateway first), wait for the drain; SIGKILL stragglers."""
        order = [s for s in ("gateway", *STAGES) if s in self.procs]
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
