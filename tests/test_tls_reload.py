"""Certificate rotation without a restart, and the certificate-expiry gauge (docs/security.md,
"Certificate rotation"; services/runtime/tls.py).

Real TLS everywhere: certificates made here (the helpers of tests/test_security.py), real gRPC
servers and channels, and the server's certificate read off the wire with Python's `ssl`.
Rotations are done as cert-manager's renewals reach a pod (kubelet swaps the Secret volume's
`..data` symlink to a new directory) or by overwriting the files in place. Nothing waits on a
clock: a server looks at its files before every handshake, and the channels' look interval is
set to 0 here.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_security import Pair, _ca, _leaf, _write

from services.cli.stack import free_port
from services.runtime import tls as tls_module
from services.runtime.tls import (
    ClientTLS,
    ServerTLS,
    TLSConfigError,
    certificate_not_after,
    peer_common_name,
    secure_or_insecure_channel,
)
from telemetry import init_telemetry, names

CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]
REPO = Path(__file__).resolve().parents[1]
METRIC = "voxline_tls_certificate_expiry_seconds"


# ---------------------------------------------------------------------------------------------
# Certificates, files, a server
# ---------------------------------------------------------------------------------------------


def _leaf_until(directory: Path, name: str, cn: str, ca: CA, not_after: dt.datetime) -> Pair:
    """A serving certificate (SAN localhost, 127.0.0.1) valid until `not_after`."""
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        .not_valid_after(not_after)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write(directory, name, cert, key)


def _certificate(pair: Pair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(pair.cert).read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class SecretVolume:
    """A folder laid out as kubelet writes a Secret volume: `<file> -> ..data/<file>`,
    `..data -> ..<version>/`. `publish` swaps `..data` atomically, as a renewal does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        root.mkdir()

    def path(self, name: str) -> str:
        return str(self.root / name)

    def publish(self, **files: bytes) -> None:
        self.versions += 1
        version = self.root / f"..v{self.versions}"
        version.mkdir()
        for name, data in files.items():
            (version / name.replace("_", ".")).write_bytes(data)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")
        for name in files:
            visible = self.root / name.replace("_", ".")
            if not visible.is_symlink():
                visible.symlink_to(f"..data/{visible.name}")


def _pem(pair: Pair) -> dict[str, bytes]:
    return {"tls_crt": Path(pair.cert).read_bytes(), "tls_key": Path(pair.key).read_bytes()}


def presented(port: int, client: Pair | None = None) -> x509.Certificate:
    """The certificate the server on `port` presents to a new connection (no verification)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


class Echo:
    """A gRPC server with `Peer` (the caller's certificate CN) and `Hold` (a stream that sends
    one message, then a second once `release` is set)."""

    def __init__(self, tls: ServerTLS) -> None:
        self.release = threading.Event()

        def peer(_request: bytes, context: grpc.ServicerContext) -> bytes:
            return (peer_common_name(context) or "").encode()

        def hold(_request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            yield b"1"
            self.release.wait(30)
            yield b"2"

        handlers = {
            "Peer": grpc.unary_unary_rpc_method_handler(peer),
            "Hold": grpc.unary_stream_rpc_method_handler(hold),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", tls.credentials())
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.release.set()
        self.server.stop(None)


def _call_peer(channel: grpc.Channel) -> str:
    return bytes(channel.unary_unary("/test.Echo/Peer")(b"", timeout=10)).decode()


@pytest.fixture
def look_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels look at their files before every call (default: at most once a second)."""
    monkeypatch.setattr(tls_module, "RELOAD_CHECK_INTERVAL_S", 0.0)


# ---------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------


def test_server_presents_a_rotated_certificate_without_restart(tmp_path: Path) -> None:
    ca_one, ca_two = _ca(tmp_path, "ca-one"), _ca(tmp_path, "ca-two")
    one = _leaf(tmp_path, "one", "service-one", ca_one, server=True)
    two = _leaf(tmp_path, "two", "service-two", ca_two, server=True)
    volume = SecretVolume(tmp_path / "tls")
    volume.publish(**_pem(one))
    echo = Echo(ServerTLS(volume.path("tls.crt"), volume.path("tls.key")))
    try:
        assert presented(echo.port).serial_number == _certificate(one).serial_number
        before = secure_or_insecure_channel(echo.address, tls=ClientTLS(ca=ca_one[2]))
        assert _call_peer(before) == ""  # no client certificate: plain TLS

        volume.publish(**_pem(two))  # the renewal: a new key, CA and name

        assert presented(echo.port).serial_number == _certificate(two).serial_number
        with secure_or_insecure_channel(echo.address, tls=ClientTLS(ca=ca_two[2])) as after:
            assert _call_peer(after) == ""
        # A new connection trusting only the old CA now fails its handshake...
        with (
            pytest.raises(grpc.RpcError) as err,
            secure_or_insecure_channel(echo.address, tls=ClientTLS(ca=ca_one[2])) as stale,
        ):
            _call_peer(stale)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # ...while the connection made before the rotation goes on (no new handshake).
        assert _call_peer(before) == ""
        before.close()
    finally:
        echo.stop()


def test_a_bad_replacement_keeps_the_certificate_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = _ca(tmp_path, "ca")
    one = _leaf(tmp_path, "one", "service-one", ca, server=True)
    two = _leaf(tmp_path, "two", "service-two", ca, server=True)
    # Plain files overwritten in place (a `cp` over them), not a symlink swap.
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(Path(one.cert).read_bytes())
    key.write_bytes(Path(one.key).read_bytes())
    echo = Echo(ServerTLS(str(cert), str(key)))
    serving_one = _certificate(one).serial_number
    try:
        assert presented(echo.port).serial_number == serving_one
        with caplog.at_level(logging.WARNING, logger="voxline.tls"):
            # Half a certificate (a write cut short).
            new_cert = Path(two.cert).read_bytes()
            cert.write_bytes(new_cert[: len(new_cert) // 2])
            key.write_bytes(Path(two.key).read_bytes())
            for _ in range(3):
                assert presented(echo.port).serial_number == serving_one
            warnings = [r for r in caplog.records if "cannot be used" in r.getMessage()]
            assert len(warnings) == 1, "one warning per bad state, not one per handshake"
            assert str(cert) in warnings[0].getMessage()
            # A whole certificate, but with the previous certificate's key.
            cert.write_bytes(new_cert)
            key.write_bytes(Path(one.key).read_bytes())
            assert presented(echo.port).serial_number == serving_one
            # Not a PEM at all.
            cert.write_bytes(b"not a certificate\n")
            assert presented(echo.port).serial_number == serving_one
        with secure_or_insecure_channel(echo.address, tls=ClientTLS(ca=ca[2])) as channel:
            assert _call_peer(channel) == ""  # still serving, with the old certificate
        # Fixed: the next handshake gets the new certificate.
        cert.write_bytes(new_cert)
        key.write_bytes(Path(two.key).read_bytes())
        assert presented(echo.port).serial_number == _certificate(two).serial_number
    finally:
        echo.stop()


def test_mtls_client_ca_rotates_too(tmp_path: Path) -> None:
    ca_one, ca_two = _ca(tmp_path, "ca-one"), _ca(tmp_path, "ca-two")
    server = _leaf(tmp_path, "server", "service", ca_one, server=True)
    client_one = _leaf(tmp_path, "client-one", "gateway", ca_one, server=False)
    client_two = _leaf(tmp_path, "client-two", "gateway", ca_two, server=False)
    volume = SecretVolume(tmp_path / "tls")
    volume.publish(**_pem(server), ca_crt=Path(ca_one[2]).read_bytes())
    tls = ServerTLS(volume.path("tls.crt"), volume.path("tls.key"), volume.path("ca.crt"))
    echo = Echo(tls)

    def caller(pair: Pair) -> ClientTLS:
        return ClientTLS(ca=ca_one[2], cert=pair.cert, key=pair.key)

    try:
        with secure_or_insecure_channel(echo.address, tls=caller(client_one)) as channel:
            assert _call_peer(channel) == "gateway"
        # The client CA becomes both CAs' certificates (a CA rotation's overlap).
        both = Path(ca_one[2]).read_bytes() + Path(ca_two[2]).read_bytes()
        volume.publish(**_pem(server), ca_crt=both)
        with secure_or_insecure_channel(echo.address, tls=caller(client_two)) as channel:
            assert _call_peer(channel) == "gateway"
        # Then the old CA goes: its certificates are refused at the handshake.
        volume.publish(**_pem(server), ca_crt=Path(ca_two[2]).read_bytes())
        with (
            pytest.raises(grpc.RpcError) as err,
            secure_or_insecure_channel(echo.address, tls=caller(client_one)) as channel,
        ):
            _call_peer(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        echo.stop()


def test_unusable_files_at_start_are_errors_naming_them(tmp_path: Path) -> None:
    ca = _ca(tmp_path, "ca")
    one = _leaf(tmp_path, "one", "one", ca, server=True)
    two = _leaf(tmp_path, "two", "two", ca, server=True)
    with pytest.raises(TLSConfigError, match=r"two\.key.*not a matching"):
        ServerTLS(one.cert, two.key).credentials()
    junk = tmp_path / "junk.crt"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n")
    with pytest.raises(TLSConfigError, match=r"junk\.crt holds no usable"):
        ClientTLS(ca=str(junk)).credentials()
    with pytest.raises(TLSConfigError, match=r"junk\.crt"):
        ServerTLS(str(junk), one.key).credentials()


# ---------------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------------


def test_channel_follows_its_client_certificate_files(
    tmp_path: Path, look_at_every_call: None
) -> None:
    ca = _ca(tmp_path, "ca")
    server = _leaf(tmp_path, "server", "service", ca, server=True)
    client_one = _leaf(tmp_path, "client-one", "gateway-one", ca, server=False)
    client_two = _leaf(tmp_path, "client-two", "gateway-two", ca, server=False)
    echo = Echo(ServerTLS(server.cert, server.key, ca[2]))
    volume = SecretVolume(tmp_path / "client-tls")
    volume.publish(**_pem(client_one), ca_crt=Path(ca[2]).read_bytes())
    tls = ClientTLS(volume.path("ca.crt"), volume.path("tls.crt"), volume.path("tls.key"))
    try:
        with secure_or_insecure_channel(echo.address, tls=tls) as channel:
            peer = channel.unary_unary("/test.Echo/Peer")  # made once, as a stub does
            hold = channel.unary_stream("/test.Echo/Hold")
            assert peer(b"", timeout=10) == b"gateway-one"
            stream = hold(b"", timeout=30)
            assert next(stream) == b"1"

            volume.publish(**_pem(client_two), ca_crt=Path(ca[2]).read_bytes())

            assert peer(b"", timeout=10) == b"gateway-two"  # the same callable, new cert
            echo.release.set()
            assert next(stream) == b"2"  # the call in flight before finished on its channel
            # A corrupt replacement: the channel keeps the certificate it has.
            volume.publish(tls_crt=b"-----BEGIN CERTIFICATE-----\n", tls_key=b"")
            assert peer(b"", timeout=10) == b"gateway-two"
    finally:
        echo.stop()


# ---------------------------------------------------------------------------------------------
# The expiry gauge
# ---------------------------------------------------------------------------------------------


def _scrape(address: tuple[str, int]) -> dict[str, float]:
    """role -> value of the expiry gauge on a /metrics endpoint."""
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(METRIC + "{"):
            labels, value = line.rsplit(" ", 1)
            role = labels.split('voxline_tls_role="', 1)[1].split('"', 1)[0]
            out[role] = float(value)
    return out


@pytest.fixture
def quiet_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.delenv("VOXLINE_PROMETHEUS_HOST", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)


def test_expiry_gauge_reports_the_certificates_in_effect(
    tmp_path: Path, quiet_telemetry: None
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca = _ca(tmp_path, "ca")
    thirty = _leaf_until(tmp_path, "thirty", "service", ca, now + dt.timedelta(days=30))
    sixty = _leaf_until(tmp_path, "sixty", "service", ca, now + dt.timedelta(days=60))
    client = _leaf_until(tmp_path, "client", "gateway", ca, now + dt.timedelta(days=20))
    volume = SecretVolume(tmp_path / "tls")
    volume.publish(**_pem(thirty))
    telemetry = init_telemetry(
        "tls-probe", service_version="test", prometheus_port=0, set_global=False, gpu_metrics=False
    )
    try:
        assert telemetry.prometheus_address is not None
        ServerTLS().export_certificate_expiry(telemetry, ClientTLS(ca=ca[2]))
        assert _scrape(telemetry.prometheus_address) == {}, "no certificate presented, no series"

        server = ServerTLS(volume.path("tls.crt"), volume.path("tls.key"))
        server.export_certificate_expiry(telemetry, ClientTLS(ca[2], client.cert, client.key))
        assert _scrape(telemetry.prometheus_address) == {
            names.TLS_ROLE_SERVER: (now + dt.timedelta(days=30)).timestamp(),
            names.TLS_ROLE_CLIENT: (now + dt.timedelta(days=20)).timestamp(),
        }
        volume.publish(**_pem(sixty))
        expected_server = (now + dt.timedelta(days=60)).timestamp()
        assert _scrape(telemetry.prometheus_address)[names.TLS_ROLE_SERVER] == expected_server
        # A corrupt replacement is not in effect: the gauge keeps the certificate served.
        volume.publish(tls_crt=b"garbage", tls_key=b"garbage")
        assert _scrape(telemetry.prometheus_address)[names.TLS_ROLE_SERVER] == expected_server
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize("years", [1, 30])  # UTCTime before 2050, GeneralizedTime from 2050
def test_certificate_not_after_matches_cryptography(tmp_path: Path, years: int) -> None:
    ca = _ca(tmp_path, "ca")
    until = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=365 * years)
    pair = _leaf_until(tmp_path, "leaf", "leaf", ca, until)
    pem = Path(pair.cert).read_bytes()
    assert certificate_not_after(pem) == _certificate(pair).not_valid_after_utc.timestamp()
    assert certificate_not_after(pem) == until.timestamp()
    for bad in (b"", pem[: len(pem) // 2], pem.replace(b"MII", b"AII", 1)):
        with pytest.raises(ValueError):
            certificate_not_after(bad)


def test_a_tls_gateway_exports_its_certificates_and_reloads(tmp_path: Path) -> None:
    """The real service: `serve()` exports both of the gateway's certificates (serving and
    client), and a rotation of its serving files shows on the wire and in the gauge."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca = _ca(tmp_path, "ca")
    first = _leaf_until(tmp_path, "first", "gateway-serving", ca, now + dt.timedelta(days=10))
    second = _leaf_until(tmp_path, "second", "gateway-serving", ca, now + dt.timedelta(days=90))
    client = _leaf_until(tmp_path, "client", "gateway", ca, now + dt.timedelta(days=40))
    volume = SecretVolume(tmp_path / "tls")
    volume.publish(**_pem(first))
    port, metrics_port = free_port(), free_port()
    env: dict[str, Any] = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    for name in ("VOXLINE_PROMETHEUS_HOST", "OTEL_SDK_DISABLED", "VOXLINE_PRODUCTION"):
        env.pop(name, None)
    argv = [
        sys.executable,
        "-m",
        "services.gateway",
        "--port",
        str(port),
        "--prometheus-port",
        str(metrics_port),
        "--tls-cert",
        volume.path("tls.crt"),
        "--tls-key",
        volume.path("tls.key"),
        "--tls-ca",
        ca[2],
        "--tls-client-cert",
        client.cert,
        "--tls-client-key",
        client.key,
    ]
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        address = ("127.0.0.1", metrics_port)
        deadline = time.monotonic() + 120
        seen: dict[str, float] = {}
        while time.monotonic() < deadline and len(seen) < 2:
            assert process.poll() is None, log_path.read_text()
            try:
                seen = _scrape(address)
            except OSError:
                time.sleep(0.5)
        assert seen == {
            names.TLS_ROLE_SERVER: (now + dt.timedelta(days=10)).timestamp(),
            names.TLS_ROLE_CLIENT: (now + dt.timedelta(days=40)).timestamp(),
        }, log_path.read_text()
        assert presented(port).serial_number == _certificate(first).serial_number

        volume.publish(**_pem(second))

        assert presented(port).serial_number == _certificate(second).serial_number
        expected = (now + dt.timedelta(days=90)).timestamp()
        assert _scrape(address)[names.TLS_ROLE_SERVER] == expected
        assert process.poll() is None  # the same process throughout
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
