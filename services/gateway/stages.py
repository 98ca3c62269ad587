"""The gateway's clients for the three stages, with one translation of their failures.

Every call carries the caller's remaining deadline (capped by a per-call default), and
every failure becomes a Voxline error that names the stage, so a client of the gateway
learns *which* stage was unavailable, slow or unhappy with the input.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from voxline.v1 import (
    acoustic_pb2,
    acoustic_pb2_grpc,
    frontend_pb2,
    frontend_pb2_grpc,
    stage_pb2,
    stage_pb2_grpc,
    vocoder_pb2,
    vocoder_pb2_grpc,
)

from services.runtime.config import MAX_MESSAGE_BYTES
from services.runtime.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    VoxlineError,
)
from services.runtime.scheduler import Hints, hints_metadata
from services.runtime.tls import (
    PLAINTEXT,
    ClientTLS,
    TLSConfigError,
    secure_or_insecure_channel,
)

log = logging.getLogger("voxline.gateway")

T = TypeVar("T")

# A stage restarting (a crashed pod, a rollout) refuses connections for a moment: a unary
# call that got UNAVAILABLE is retried by the channel itself. Only unary methods: a stream
# may already have delivered audio, and replaying it would duplicate or reorder it.
RETRIED_METHODS = (
    ("voxline.v1.TextFrontend", "Analyze"),
    ("voxline.v1.AcousticModel", "Generate"),
    ("voxline.v1.Vocoder", "Vocode"),
    ("voxline.v1.StageInfo", "GetModelInfo"),
)
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# A call is retryable only while its request fits the retry buffer (gRPC default 256 KiB,
# ~9 s of float32 mel): 4 MiB covers a sentence's mel for a Vocode retry.
RETRY_BUFFER_BYTES = 4 * 1024 * 1024
#: Reconnection backoff to a stage, first and longest (milliseconds).
RECONNECT_BACKOFF_MS = (100, 1000)


def channel_options() -> list[tuple[str, Any]]:
    """Round-robin over every address a `dns:///` target resolves to (headless Services);
    unary calls retried on UNAVAILABLE (RETRY_POLICY). The same options serve `unix:`
    targets (co-located stages): one address, retried and reconnected alike."""
    service_config = {
        "methodConfig": [
            {
                "name": [{"service": s, "method": m} for s, m in RETRIED_METHODS],
                "retryPolicy": RETRY_POLICY,
            }
        ]
    }
    return [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        # A stage that is starting or restarting is reconnected to within a second, not after
        # gRPC's default backoff (which grows to 2 minutes while a process is still importing).
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
    ]


#: Codes whose details a stage writes for the caller (its own validation and overload
#: messages); every other code's details stay in the gateway's log.
_CALLER_FACING = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


def translate(stage: str, target: str, exc: grpc.RpcError) -> VoxlineError:
    """A stage's RPC failure as the error the gateway reports to its caller.

    Transport failures and unexpected codes reach the caller generically (their details name
    pod addresses and internals); the details go to the gateway's log. A stage's own
    messages (bad input, overload) are written for callers and pass through."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    details = exc.details() if hasattr(exc, "details") else str(exc)  # type: ignore[attr-defined]
    if code not in _CALLER_FACING:
        log.warning(
            "stage call failed",
            extra={"stage": stage, "target": target, "code": code.name, "details": details},
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"{stage} stage unavailable; retry shortly")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{stage} stage did not finish within the deadline")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"{stage}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"{stage} stage is overloaded: {details}")
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(f"{stage} call cancelled")
    return VoxlineError(f"{stage} stage failed ({code.name})")


@dataclass
class StageClient:
    """A channel to one stage plus the name/target used in error messages."""

    stage: str
    target: str
    channel: grpc.Channel

    def info(self, timeout: float) -> stage_pb2.ModelInfo:
        stub = stage_pb2_grpc.StageInfoStub(self.channel)
        return self.call(
            lambda: stub.GetModelInfo(stage_pb2.GetModelInfoRequest(), timeout=timeout)
        )

    def call(self, fn: Callable[[], T]) -> T:
        """Run one unary call, translating its failure."""
        try:
            return fn()
        except grpc.RpcError as exc:
            raise translate(self.stage, self.target, exc) from None

    def unary(self, future: grpc.Future, scope: CancelScope) -> Any:
        """Wait for a unary call started with ``.future()``, cancellable through ``scope``."""
        scope.add(future)
        try:
            return future.result()
        except grpc.FutureCancelledError:
            raise Cancelled(f"{self.stage} call cancelled: the caller went away") from None
        except grpc.RpcError as exc:
            raise translate(self.stage, self.target, exc) from None

    def stream(self, call: Any) -> UpstreamStream:
        """Wrap a streaming call so iteration translates failures and it can be cancelled."""
        return UpstreamStream(self, call)


class UpstreamStream:
    """A streaming call to a stage: iterate it for messages, `cancel()` to stop it.

    Cancelling (from any thread) is how the gateway stops upstream work when its own
    caller goes away or another stage fails; a generator could not be closed from a thread
    other than the one iterating it.
    """

    def __init__(self, client: StageClient, call: Any) -> None:
        self._client = client
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            raise translate(self._client.stage, self._client.target, exc) from None

    def cancel(self) -> None:
        self._call.cancel()


class Cancellable(Protocol):
    """An upstream call that can be cancelled from any thread."""

    def cancel(self) -> Any: ...


C = TypeVar("C", bound=Cancellable)


class CancelScope:
    """The upstream calls of one request, cancelled together when the request ends.

    gRPC runs `cancel_all` (registered with `context.add_callback`) as soon as the caller
    cancels or the deadline passes, even while the handler is blocked waiting on a stage,
    so no stage keeps working for a caller that is gone -- unary calls included.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Cancellable] = []
        self._cancelled = False

    def add(self, call: C) -> C:
        """Track ``call`` (cancelled at once if the scope already was)."""
        with self._lock:
            self._calls.append(call)
            cancelled = self._cancelled
        if cancelled:
            call.cancel()
        return call

    def cancel_all(self) -> None:
        """Cancel every tracked call, and any added later."""
        with self._lock:
            self._cancelled = True
            calls, self._calls = self._calls, []
        for call in calls:
            call.cancel()


def check_unix_tls(stage: str, target: str, tls: ClientTLS) -> None:
    """Refuse TLS to a `unix:` target unless the name to verify is given.

    Stages co-located with the gateway (one host, one pod) listen on Unix sockets
    (`--listen unix:...`) and need no TLS: only processes that can open the socket file reach
    them (docs/deploy.md, "Co-located stages"). TLS over a socket does work, but a socket path
    is no host name a certificate can hold, so the name to verify must be `--tls-server-name`
    (one of the stage certificate's names); without it every handshake would fail."""
    if tls.enabled and target.startswith("unix") and not tls.server_name:
        raise TLSConfigError(
            f"--{stage}-address {target} is a Unix socket and TLS to the stages is on: "
            "co-located stages need no TLS (drop --tls-ca/--tls-client-cert), or give "
            "--tls-server-name, a name in the stage certificate to verify"
        )


class StageClients:
    """Stubs for frontend, acoustic and vocoder."""

    def __init__(
        self,
        frontend: str,
        acoustic: str,
        vocoder: str,
        wrap: Callable[[grpc.Channel], grpc.Channel] = lambda c: c,
        tls: ClientTLS = PLAINTEXT,
    ) -> None:
        def client(stage: str, target: str) -> StageClient:
            check_unix_tls(stage, target, tls)
            channel = secure_or_insecure_channel(target, channel_options(), tls)
            return StageClient(stage, target, wrap(channel))

        self.frontend = client("frontend", frontend)
        self.acoustic = client("acoustic", acoustic)
        self.vocoder = client("vocoder", vocoder)
        self.frontend_stub = frontend_pb2_grpc.TextFrontendStub(self.frontend.channel)
        self.acoustic_stub = acoustic_pb2_grpc.AcousticModelStub(self.acoustic.channel)
        self.vocoder_stub = vocoder_pb2_grpc.VocoderStub(self.vocoder.channel)

    def all(self) -> tuple[StageClient, StageClient, StageClient]:
        return (self.frontend, self.acoustic, self.vocoder)

    # Every call carries the request's scheduling hints (priority, playback buffer) as
    # metadata: the stages' schedulers order their queues by them.

    def analyze(
        self, request: frontend_pb2.AnalyzeRequest, timeout: float, hints: Hints, scope: CancelScope
    ) -> frontend_pb2.AnalyzeResponse:
        future = self.frontend_stub.Analyze.future(
            request, timeout=timeout, metadata=hints_metadata(hints)
        )
        return self.frontend.unary(future, scope)  # type: ignore[no-any-return]

    def analyze_stream(
        self, request: frontend_pb2.AnalyzeRequest, timeout: float, hints: Hints
    ) -> UpstreamStream:
        return self.frontend.stream(
            self.frontend_stub.AnalyzeStream(
                request, timeout=timeout, metadata=hints_metadata(hints)
            )
        )

    def generate(
        self,
        request: acoustic_pb2.GenerateRequest,
        timeout: float,
        hints: Hints,
        scope: CancelScope,
    ) -> acoustic_pb2.GenerateResponse:
        future = self.acoustic_stub.Generate.future(
            request, timeout=timeout, metadata=hints_metadata(hints)
        )
        return self.acoustic.unary(future, scope)  # type: ignore[no-any-return]

    def generate_stream(
        self, request: acoustic_pb2.GenerateRequest, timeout: float, hints: Hints
    ) -> UpstreamStream:
        return self.acoustic.stream(
            self.acoustic_stub.GenerateStream(
                request, timeout=timeout, metadata=hints_metadata(hints)
            )
        )

    def vocode(
        self, request: vocoder_pb2.VocodeRequest, timeout: float, hints: Hints, scope: CancelScope
    ) -> vocoder_pb2.VocodeResponse:
        future = self.vocoder_stub.Vocode.future(
            request, timeout=timeout, metadata=hints_metadata(hints)
        )
        return self.vocoder.unary(future, scope)  # type: ignore[no-any-return]

    def vocode_stream(
        self, requests: Iterator[vocoder_pb2.VocodeRequest], timeout: float, hints: Hints
    ) -> UpstreamStream:
        return self.vocoder.stream(
            self.vocoder_stub.VocodeStream(
                requests, timeout=timeout, metadata=hints_metadata(hints)
            )
        )

    def close(self) -> None:
        for c in self.all():
            c.channel.close()
