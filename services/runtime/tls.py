"""TLS and mTLS for every Voxline server and client, built in one place.

Servers: `ServerTLS` (flags `--tls-cert`, `--tls-key`, `--tls-client-ca`,
`--tls-allowed-client-cn`). Without a certificate a port is plaintext (the local default);
with a client CA every caller must present a certificate that CA signed (mTLS), and with
allowed common names only those certificates are accepted (a stage accepts the gateway).

Clients: `ClientTLS` (flags `--tls-ca`, `--tls-client-cert`, `--tls-client-key`,
`--tls-server-name`) and `secure_or_insecure_channel`, which every channel in the project
uses. See docs/security.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("voxline.tls")


class TLSConfigError(ValueError):
    """The TLS flags are incomplete or name unreadable files."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class ServerTLS:
    """How a server authenticates itself and its callers (empty fields: off)."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""
    allowed_client_cn: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise TLSConfigError("--tls-cert and --tls-key go together: give both or neither")
        if (self.client_ca or self.allowed_client_cn) and not self.cert:
            raise TLSConfigError("--tls-client-ca needs --tls-cert/--tls-key (a TLS port)")
        if self.allowed_client_cn and not self.client_ca:
            raise TLSConfigError("--tls-allowed-client-cn needs --tls-client-ca (mTLS)")

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials: our certificate, plus required client certificates (mTLS)."""
        pair = (_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))
        roots = _read(self.client_ca, "client CA") if self.client_ca else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=roots, require_client_auth=roots is not None
        )

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        """The peer-name check, when allowed common names are configured."""
        if not self.allowed_client_cn:
            return []
        return [ClientNameInterceptor(self.allowed_client_cn)]


@dataclass(frozen=True)
class ClientTLS:
    """How a client verifies servers and authenticates itself (empty fields: plaintext)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise TLSConfigError(
                "--tls-client-cert and --tls-client-key go together: give both or neither"
            )

    @property
    def enabled(self) -> bool:
        # A client certificate alone means TLS with the system's trusted roots.
        return bool(self.ca or self.cert)

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials: the CA to trust (system roots if none), our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "TLS CA") if self.ca else None,
            private_key=_read(self.key, "TLS client key") if self.key else None,
            certificate_chain=_read(self.cert, "TLS client certificate") if self.cert else None,
        )

    def options(self) -> list[tuple[str, Any]]:
        """Channel options TLS adds (the name to verify, when it is not the target's host)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


PLAINTEXT = ClientTLS()


def secure_or_insecure_channel(
    target: str, options: Sequence[tuple[str, Any]] = (), tls: ClientTLS = PLAINTEXT
) -> grpc.Channel:
    """A channel to `target`: TLS when `tls` is configured, plaintext otherwise."""
    if not tls.enabled:
        return grpc.insecure_channel(target, list(options))
    return grpc.secure_channel(target, tls.credentials(), [*options, *tls.options()])


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The common name of the caller's verified client certificate (None: no certificate)."""
    values = context.auth_context().get("x509_common_name") or []
    return values[0].decode("utf-8", "replace") if values else None


#: The grpc.health.v1 methods' prefix: probes and load balancers call them unauthenticated.
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class CallGuard(grpc.ServerInterceptor):
    """A server interceptor that may refuse a call before it reaches the servicer.

    Subclasses implement :meth:`guard`. Health checks are never guarded: kubelet probes and
    load balancers carry no token or client certificate.
    """

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        return self.guard(handler, details)

    def guard(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> Any:
        """`handler` itself (allowed), or `guarded(handler, check)` with a refusing check."""
        raise NotImplementedError


class ClientNameInterceptor(CallGuard):
    """Refuse callers whose client certificate's common name is not allowed (PERMISSION_DENIED).

    The certificate's CA is already verified by the TLS handshake; this narrows which holder
    of a certificate from that CA may call (the gateway, not another stage sharing the CA).
    """

    def __init__(self, allowed: Sequence[str]) -> None:
        self._allowed = frozenset(allowed)

    def guard(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> Any:
        def check(context: grpc.ServicerContext) -> None:
            name = peer_common_name(context)
            if name not in self._allowed:
                log.info("refused a caller", extra={"peer_cn": name, "method": details.method})
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"client certificate {name!r} may not call this service",
                )

        return guarded(handler, check)


def guarded(handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]) -> Any:
    """`handler` with `check(context)` run first (it aborts the call to refuse it)."""
    if handler.request_streaming and handler.response_streaming:
        inner = handler.stream_stream

        def stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            yield from inner(requests, context)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.request_streaming:
        inner = handler.stream_unary

        def stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.response_streaming:
        inner = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            yield from inner(request, context)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    inner = handler.unary_unary

    def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        return inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        unary_unary, handler.request_deserializer, handler.response_serializer
    )
