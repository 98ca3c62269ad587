"""TLS and mTLS for every Voxline server and client, built in one place.

Servers: `ServerTLS` (flags `--tls-cert`, `--tls-key`, `--tls-client-ca`,
`--tls-allowed-client-cn`). Without a certificate a port is plaintext (the local default);
with a client CA every caller must present a certificate that CA signed (mTLS), and with
allowed common names only those certificates are accepted (a stage accepts the gateway).

Clients: `ClientTLS` (flags `--tls-ca`, `--tls-client-cert`, `--tls-client-key`,
`--tls-server-name`) and `secure_or_insecure_channel`, which every channel in the project
uses. See docs/security.md.

Certificate rotation, without a restart (docs/security.md, "Certificate rotation"): every
certificate, key and CA file is watched (`_TLSFiles`: a stat per check, a re-read only when
that changed, a new set used only once it validates). Servers use gRPC's dynamic
credentials, so each new handshake gets the files in effect; gRPC's channel credentials are
fixed, so a TLS channel (`ReloadingChannel`) builds a new inner channel when its files change.
`export_certificate_expiry` exports the certificates' not-after times
(`voxline.tls.certificate.expiry`).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import re
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from telemetry.names import TLS_ROLE_CLIENT, TLS_ROLE_SERVER

if TYPE_CHECKING:
    from telemetry.sdk import Telemetry

log = logging.getLogger("voxline.tls")

#: How often at most a TLS channel looks whether its files changed (at a call; a few stats).
RELOAD_CHECK_INTERVAL_S = 1.0


class TLSConfigError(ValueError):
    """The TLS flags are incomplete or name unreadable files."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


# ---------------------------------------------------------------------------------------------
# Certificate files, watched
# ---------------------------------------------------------------------------------------------


def certificate_not_after(pem: bytes) -> float:
    """The not-after time (Unix seconds) of the first certificate in `pem`.

    A small DER walk (Certificate -> tbsCertificate -> validity), so the runtime needs no
    crypto library; ValueError when `pem` holds no well-formed certificate.
    """
    found = re.search(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if found is None:
        raise ValueError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except ValueError as exc:
        raise ValueError(f"bad PEM base64: {exc}") from None
    _, start, _ = _der(der, 0, 0x30)  # Certificate
    _, pos, _ = _der(der, start, 0x30)  # tbsCertificate
    tag, _, after = _der(der, pos)
    if tag == 0xA0:  # [0] version (absent in v1 certificates)
        tag, _, after = _der(der, after)
    for expected in (0x30, 0x30):  # signature algorithm, issuer
        _, _, after = _der(der, after, expected)
    _, validity, _ = _der(der, after, 0x30)
    _, _, after = _der(der, validity)  # notBefore
    tag, start, end = _der(der, after)  # notAfter
    text = der[start:end].decode("ascii", "replace")
    if tag == 0x17 and re.fullmatch(r"\d{12}Z", text):  # UTCTime: YYMMDDHHMMSSZ
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"  # RFC 5280 4.1.2.5.1
    elif not (tag == 0x18 and re.fullmatch(r"\d{14}Z", text)):  # GeneralizedTime
        raise ValueError(f"bad notAfter time {text!r}")
    moment = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _der(data: bytes, offset: int, expected: int | None = None) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `offset`."""
    if offset + 2 > len(data):
        raise ValueError("truncated certificate")
    tag, length, start = data[offset], data[offset + 1], offset + 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4 or start + size > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + size], "big")
        start += size
    if start + length > len(data):
        raise ValueError("truncated certificate")
    if expected is not None and tag != expected:
        raise ValueError(f"unexpected DER tag {tag:#x} (wanted {expected:#x})")
    return tag, start, start + length


@dataclass(frozen=True)
class _Material:
    """One validated reading of a TLS identity's files (None: that file is not configured)."""

    version: int
    cert: bytes | None
    key: bytes | None
    ca: bytes | None
    #: Of `cert` (None: no certificate, or one this parser could not read).
    not_after: float | None


def _no_password() -> bytes:
    # Never prompt on a terminal for an encrypted key (gRPC cannot use one anyway).
    return b""


class _TLSFiles:
    """One TLS identity's PEM files (certificate, key, CA), re-read when they change.

    `current()` stats the files, following symlinks (a Kubernetes Secret volume, where
    cert-manager's renewals land, swaps a symlink to a new directory: new inodes), and
    re-reads them only when a stat changed. A new set replaces the one in use only when it is
    complete and consistent: the certificate and key load as a matching pair and the CA as
    PEM certificates (Python's `ssl`, nothing written anywhere), and no stat moved while it
    was read. A bad or half-written set keeps the previous one, with one WARNING per bad
    state; a set still being written is looked at again at the next check, silently.
    """

    def __init__(self, role: str, cert: str, key: str, ca: str) -> None:
        self.role = role
        self._cert, self._key, self._ca = cert, key, ca
        self._lock = threading.Lock()
        ca_what = "client CA" if role == TLS_ROLE_SERVER else "TLS CA"
        prefix = "TLS " if role == TLS_ROLE_SERVER else "TLS client "
        self._what = {cert: f"{prefix}certificate", key: f"{prefix}key", ca: ca_what}
        self._seen = self._signature()
        self._material = self._load(1)  # at start-up a bad file is an error (TLSConfigError)

    def _paths(self) -> list[str]:
        return [p for p in (self._cert, self._key, self._ca) if p]

    def _signature(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for path in self._paths():
            try:
                st = os.stat(path)  # follows the symlinks
                out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError as exc:
                out.append(("unreadable", exc.errno))
        return tuple(out)

    def _load(self, version: int) -> _Material:
        """Read and validate the files (TLSConfigError naming the file when unusable)."""
        cert = _read(self._cert, self._what[self._cert]) if self._cert else None
        key = _read(self._key, self._what[self._key]) if self._key else None
        ca = _read(self._ca, self._what[self._ca]) if self._ca else None
        context = ssl.SSLContext(
            ssl.PROTOCOL_TLS_SERVER if self.role == TLS_ROLE_SERVER else ssl.PROTOCOL_TLS_CLIENT
        )
        if self._cert:
            try:
                context.load_cert_chain(self._cert, self._key, password=_no_password)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise TLSConfigError(
                    f"the {self._what[self._cert]} {self._cert} and {self._what[self._key]} "
                    f"{self._key} are not a matching PEM certificate and key: {exc}"
                ) from None
        if ca is not None:
            try:
                context.load_verify_locations(cadata=ca.decode("ascii"))
            except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                raise TLSConfigError(
                    f"the {self._what[self._ca]} {self._ca} holds no usable PEM certificate: {exc}"
                ) from None
        not_after = None
        if cert is not None:
            try:
                not_after = certificate_not_after(cert)
            except ValueError as exc:
                log.warning("cannot read the expiry of %s: %s", self._cert, exc)
        return _Material(version, cert, key, ca, not_after)

    def current(self) -> _Material:
        """The files in effect: re-read (and validated) when they changed since the last look."""
        with self._lock:
            signature = self._signature()
            if signature == self._seen:
                return self._material
            try:
                material = self._load(self._material.version + 1)
            except TLSConfigError as exc:
                if self._signature() == signature:  # settled, not being written right now
                    self._seen = signature
                    log.warning(
                        "TLS %s files changed but cannot be used, keeping the previous ones: %s",
                        self.role,
                        exc,
                    )
                return self._material
            if self._signature() != signature:  # moved while read: look again next time
                return self._material
            self._seen = signature
            old = self._material
            if (material.cert, material.key, material.ca) == (old.cert, old.key, old.ca):
                return old  # touched or re-linked, same contents
            self._material = material
            log.info(
                "TLS %s files reloaded",
                self.role,
                extra={"certificate": self._cert or None, "not_after": material.not_after},
            )
            return material


_shared_lock = threading.Lock()
_shared: dict[tuple[str, str, str, str], _TLSFiles] = {}


def _tls_files(role: str, cert: str, key: str, ca: str) -> _TLSFiles:
    """The process's one watcher of these files (one validation and one warning per change,
    however many servers, channels and gauges use them). TLSConfigError if unusable now."""
    with _shared_lock:
        files = _shared.get((role, cert, key, ca))
        if files is None:
            files = _shared[(role, cert, key, ca)] = _TLSFiles(role, cert, key, ca)
        return files


def _watch_expiry(telemetry: Telemetry, role: str, cert: str, key: str, ca: str) -> None:
    try:
        files = _tls_files(role, cert, key, ca)
    except TLSConfigError as exc:  # telemetry never stops a service; serving reports it
        log.warning("not exporting the TLS %s certificate's expiry: %s", role, exc)
        return
    telemetry.watch_certificate(role, lambda: files.current().not_after)


class _CertificateFetcher:
    """gRPC's certificate-configuration fetcher: called before every new handshake; returns
    a new configuration when the files changed, None to keep the one in use."""

    def __init__(self, files: _TLSFiles, version: int) -> None:
        self._files = files
        self._version = version
        self._lock = threading.Lock()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            material = self._files.current()
            with self._lock:
                if material.version == self._version:
                    return None
                self._version = material.version
            return _server_configuration(material)
        except Exception:  # never fail a handshake over a reload check
            log.exception("TLS reload check failed; keeping the certificate in use")
            return None


def _server_configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
    assert material.cert is not None and material.key is not None
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert)], root_certificates=material.ca
    )


def _channel_credentials(material: _Material) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )


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
        """Server credentials: our certificate, plus required client certificates (mTLS).

        Dynamic: before each new handshake gRPC asks whether the certificate, key or client
        CA files changed, and a valid new set serves that handshake and the later ones
        (connections already open keep theirs). TLSConfigError if the files are unusable now.
        """
        files = _tls_files(TLS_ROLE_SERVER, self.cert, self.key, self.client_ca)
        initial = files.current()
        return grpc.dynamic_ssl_server_credentials(
            _server_configuration(initial),
            _CertificateFetcher(files, initial.version),
            require_client_authentication=bool(self.client_ca),
        )

    def export_certificate_expiry(
        self, telemetry: Telemetry, client: ClientTLS | None = None
    ) -> None:
        """Export the serving certificate's not-after (and `client`'s, when it presents one)
        as `voxline.tls.certificate.expiry`, from the files in effect (a rotation shows)."""
        if self.enabled:
            _watch_expiry(telemetry, TLS_ROLE_SERVER, self.cert, self.key, self.client_ca)
        if client is not None:
            client.export_certificate_expiry(telemetry)

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
        """Channel credentials: the CA to trust (system roots if none), our certificate.

        From the files as they are now: gRPC's channel credentials never change, so
        `secure_or_insecure_channel` rebuilds its channel when the files do.
        """
        return _channel_credentials(
            _tls_files(TLS_ROLE_CLIENT, self.cert, self.key, self.ca).current()
        )

    def export_certificate_expiry(self, telemetry: Telemetry) -> None:
        """Export the client certificate's not-after as `voxline.tls.certificate.expiry`
        (role `client`), when this client presents one."""
        if self.cert:
            _watch_expiry(telemetry, TLS_ROLE_CLIENT, self.cert, self.key, self.ca)

    def options(self) -> list[tuple[str, Any]]:
        """Channel options TLS adds (the name to verify, when it is not the target's host)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


PLAINTEXT = ClientTLS()


def secure_or_insecure_channel(
    target: str, options: Sequence[tuple[str, Any]] = (), tls: ClientTLS = PLAINTEXT
) -> grpc.Channel:
    """A channel to `target`: TLS when `tls` is configured (following its files, see
    `ReloadingChannel`), plaintext otherwise."""
    if not tls.enabled:
        return grpc.insecure_channel(target, list(options))
    return ReloadingChannel(target, tls, options)


class ReloadingChannel(grpc.Channel):
    """A TLS channel whose CA, client certificate and key follow their files.

    gRPC Python has no reloadable channel credentials (`ssl_channel_credentials` copies the
    PEM bytes; the C core's certificate providers are not exposed), so on a call, at most
    every `RELOAD_CHECK_INTERVAL_S`, this looks whether the files changed and, after a valid
    change, sends that call and the later ones through a new inner channel with the new
    credentials (new connections, new handshakes). Calls in flight on the previous inner
    channel finish on it: it is dropped, not closed, and gRPC frees it after its last call.
    Stubs made before a change follow it (their callables look up the inner channel per call).
    """

    def __init__(
        self, target: str, tls: ClientTLS, options: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self._target = target
        self._options = [*options, *tls.options()]
        self._files = _tls_files(TLS_ROLE_CLIENT, tls.cert, tls.key, tls.ca)
        self._lock = threading.Lock()
        material = self._files.current()
        self._version = material.version
        self._channel = self._build(material)
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL_S
        self._retired: weakref.WeakSet[grpc.Channel] = weakref.WeakSet()
        self._subscriptions: list[tuple[Callable[[grpc.ChannelConnectivity], None], bool]] = []
        self._closed = False

    def _build(self, material: _Material) -> grpc.Channel:
        return grpc.secure_channel(self._target, _channel_credentials(material), self._options)

    def current(self) -> tuple[int, grpc.Channel]:
        """(version, inner channel) for the next call, after a look at the files when due."""
        with self._lock:
            now = time.monotonic()
            if self._closed or now < self._next_check:
                return self._version, self._channel
            self._next_check = now + RELOAD_CHECK_INTERVAL_S
            material = self._files.current()
            if material.version != self._version:
                old, self._channel = self._channel, self._build(material)
                self._version = material.version
                self._retired.add(old)
                for callback, try_to_connect in self._subscriptions:
                    old.unsubscribe(callback)
                    self._channel.subscribe(callback, try_to_connect=try_to_connect)
                log.info("TLS channel to %s rebuilt with the new certificate files", self._target)
            return self._version, self._channel

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        with self._lock:
            self._subscriptions.append((callback, try_to_connect))
            self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s[0] is not callback]
            self._channel.unsubscribe(callback)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _UnaryUnary(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _UnaryStream(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _StreamUnary(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _StreamStream(self, "stream_stream", method, args, kwargs)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = [self._channel, *self._retired]
        for channel in channels:
            channel.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Following:
    """A multi-callable that makes its inner one on the channel's current inner channel."""

    def __init__(
        self,
        channel: ReloadingChannel,
        kind: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._channel, self._kind, self._method = channel, kind, method
        self._args, self._kwargs = args, kwargs
        self._inner: tuple[int, Any] = (-1, None)

    def _current(self) -> Any:
        version, channel = self._channel.current()
        inner_version, inner = self._inner
        if inner_version != version:
            inner = getattr(channel, self._kind)(self._method, *self._args, **self._kwargs)
            self._inner = (version, inner)
        return inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._current()(*args, **kwargs)


class _SingleResponse(_Following):
    """The extra entry points of a multi-callable with one response message."""

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._current().with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._current().future(*args, **kwargs)


class _UnaryUnary(_SingleResponse, grpc.UnaryUnaryMultiCallable):
    pass


class _UnaryStream(_Following, grpc.UnaryStreamMultiCallable):
    pass


class _StreamUnary(_SingleResponse, grpc.StreamUnaryMultiCallable):
    pass


class _StreamStream(_Following, grpc.StreamStreamMultiCallable):
    pass


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
