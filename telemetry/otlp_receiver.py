"""A real, in-process OTLP receiver (no collector binary needed), for tests and make bench.

It serves the ``opentelemetry.proto.collector.{trace,metrics}.v1`` gRPC services on
``127.0.0.1:<ephemeral>`` and, optionally, OTLP/HTTP (protobuf) ``POST /v1/traces`` and
``/v1/metrics`` on a second port, stores every request, and offers flattened views::

    with OtlpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        ...
        spans = rx.wait_for(lambda r: [s for s in r.spans() if s["name"] == "x"] or None)

Why it lives in :mod:`telemetry` rather than in tests/ or :mod:`traceattr`: the tests and
``bench/run.py`` both need it, so it belongs to an importable package (tests/ is none, and a
tool should not put it on ``sys.path``); and it speaks the emitting side's protocol -- a gRPC
server on the OTLP protobuf services, turning what arrives into OTLP/JSON with
:mod:`telemetry.otlp_encode` -- so it sits beside the exporters it checks, while the trace
analyser stays free of grpc and protobuf. The pytest fixture ``otlp_receiver`` is in
tests/otlp_receiver.py (pytest is a test dependency only).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from telemetry.otlp_encode import message_to_otlp_json
from telemetry.otlp_json import flatten_metrics, flatten_spans

T = TypeVar("T")

__all__ = ["OtlpReceiver"]


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._store("traces", request, dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._store("metrics", request, dict(context.invocation_metadata()))
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """In-process OTLP/gRPC (+ OTLP/HTTP protobuf) receiver that records what it gets.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>`` of the gRPC receiver (for
            ``OTEL_EXPORTER_OTLP_ENDPOINT``).
        http_endpoint: ``http://127.0.0.1:<port>`` of the HTTP receiver (``None`` if off).
    """

    def __init__(self, *, http: bool = True, delay_s: float = 0.0) -> None:
        """Args:
        http: also serve OTLP/HTTP on a second port.
        delay_s: hold every gRPC export this long before answering (a slow or hung
            collector); released early by :meth:`stop`.
        """
        self._delay_s = delay_s
        self._release = threading.Event()
        self._lock = threading.Condition()
        self._requests: dict[str, list[Any]] = {"traces": [], "metrics": []}
        #: Request metadata/headers of each export, in arrival order (for header tests).
        self.headers: list[dict[str, str]] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsService(self), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._httpd: ThreadingHTTPServer | None = None
        self.http_endpoint: str | None = None
        if http:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._http_handler())
            self._httpd.daemon_threads = True
            self.http_endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        """Start serving (idempotent)."""
        if not self._started:
            self._server.start()
            if self._httpd is not None:
                threading.Thread(
                    target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
                ).start()
            self._started = True
        return self

    def stop(self) -> None:
        """Stop serving and free the ports."""
        self._release.set()
        self._server.stop(grace=None)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- storage ----------------------------------------------------------------------------

    def _store(self, signal: str, request: Any, headers: dict[str, str]) -> None:
        if self._delay_s:
            self._release.wait(self._delay_s)
        with self._lock:
            self._requests[signal].append(request)
            self.headers.append(headers)
            self._lock.notify_all()

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path == "/v1/traces":
                    req: Any = trace_service_pb2.ExportTraceServiceRequest()
                    resp: Any = trace_service_pb2.ExportTraceServiceResponse()
                    signal = "traces"
                elif self.path == "/v1/metrics":
                    req = metrics_service_pb2.ExportMetricsServiceRequest()
                    resp = metrics_service_pb2.ExportMetricsServiceResponse()
                    signal = "metrics"
                else:
                    self.send_error(404)
                    return
                req.ParseFromString(body)
                receiver._store(signal, req, {k.lower(): v for k, v in self.headers.items()})
                payload = resp.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    # -- views ------------------------------------------------------------------------------

    def trace_requests(self) -> list[dict[str, Any]]:
        """Received trace export requests as OTLP/JSON dicts (hex ids)."""
        with self._lock:
            raw = list(self._requests["traces"])
        return [message_to_otlp_json(r) for r in raw]

    def metric_requests(self) -> list[dict[str, Any]]:
        """Received metric export requests as OTLP/JSON dicts (hex ids)."""
        with self._lock:
            raw = list(self._requests["metrics"])
        return [message_to_otlp_json(r) for r in raw]

    def spans(self) -> list[dict[str, Any]]:
        """All received spans, flattened (see ``telemetry.otlp_json.flatten_spans``)."""
        return flatten_spans(self.trace_requests())

    def metrics(self) -> list[dict[str, Any]]:
        """All received metrics, flattened, one entry per metric per export."""
        return flatten_metrics(self.metric_requests())

    def metric(self, name: str) -> dict[str, Any] | None:
        """The most recent export of metric ``name`` (cumulative: the latest totals)."""
        found = [m for m in self.metrics() if m["name"] == name]
        return found[-1] if found else None

    def clear(self) -> None:
        """Forget everything received so far."""
        with self._lock:
            for v in self._requests.values():
                v.clear()
            self.headers.clear()

    def wait_for(self, predicate: Callable[[OtlpReceiver], T], timeout: float = 10.0) -> T:
        """Poll ``predicate(self)`` until it returns something truthy; return that value.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"OTLP receiver: condition not met within {timeout} s")
            with self._lock:
                self._lock.wait(min(remaining, 0.1))
