"""grpc.health.v1 with bounded state: Watch on an open port cannot grow memory or hold calls.

grpcio's `HealthServicer` keeps a set of watchers per service name it is asked about, known
or not, and never drops a name once seen; every open Watch also counts against the server's
concurrent-call limit. Health needs no token (probes carry none), so both were open to any
caller. Here a Watch of an unknown name is answered SERVICE_UNKNOWN and ended at once (a
server's services are fixed at start), and at most `max_watchers` watches stay open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

#: Watches that may stay open at once (client-side health checking opens one per channel).
MAX_WATCHERS = 64


class BoundedHealthServicer(health.HealthServicer):
    """`HealthServicer` whose Watch keeps no state for unknown names and is capped."""

    def __init__(self, max_watchers: int = MAX_WATCHERS) -> None:
        super().__init__(experimental_non_blocking=True)
        self._max_watchers = max_watchers
        self._watchers = 0
        self._count_lock = threading.Lock()

    def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[Any], None] | None = None,
    ) -> Any:
        if send_response_callback is None:  # only servers without non-blocking handlers
            raise RuntimeError("BoundedHealthServicer needs grpcio's non-blocking Watch")
        if not self._known(request.service):
            # Unknown: one answer, and the call ends (nothing kept for the name).
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            send_response_callback(health_pb2.HealthCheckResponse(status=status))
            send_response_callback(None)
            return None
        with self._count_lock:
            if self._watchers >= self._max_watchers:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many open health watches (limit {self._max_watchers}); use Check",
                )
            self._watchers += 1
        context.add_callback(self._watch_ended)
        return super().Watch(request, context, send_response_callback)

    def _known(self, service: str) -> bool:
        with self._lock:
            return service in self._server_status

    def _watch_ended(self) -> None:
        with self._count_lock:
            self._watchers -= 1

    @property
    def open_watches(self) -> int:
        """Watches open now."""
        with self._count_lock:
            return self._watchers
