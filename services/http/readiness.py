"""`/readyz`'s answer, cached: the gateway's health, refreshed on a thread of its own.

A probe (or a storm of them) answers at once from the cache and costs the gateway nothing:
the gateway is asked once per interval, whatever the probe rate, and the blocking health
call never takes a worker thread from the pool that streams audio.
"""

from __future__ import annotations

import logging
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger("voxline.http")

#: Deadline of one health check; a gateway slower than this is not ready.
CHECK_TIMEOUT_S = 2.0


class Readiness:
    """Whether the gateway reports SERVING, as of its last check (False until the first)."""

    def __init__(self, channel: grpc.Channel, interval_s: float) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)
        self._interval_s = interval_s
        self._ready = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)

    @property
    def ready(self) -> bool:
        """The cached answer (a bool read: safe from any thread)."""
        return self._ready

    def start(self) -> None:
        """Check now, then every interval, until `stop`."""
        self._thread.start()

    def stop(self) -> None:
        """End the checks (waits at most one check for the thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(CHECK_TIMEOUT_S + 1.0)

    def _run(self) -> None:
        while True:
            self._ready = self._check()
            if self._stop.wait(self._interval_s):
                return

    def _check(self) -> bool:
        request = health_pb2.HealthCheckRequest(service="")
        try:
            reply = self._stub.Check(request, timeout=CHECK_TIMEOUT_S)
        except grpc.RpcError:
            return False
        except Exception:  # e.g. the channel closed at shutdown: never let the thread die
            log.exception("readiness check failed")
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
