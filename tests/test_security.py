"""TLS/mTLS on every hop, the gateway's bearer token, the reflection switch (docs/security.md).

One real local stack serves every check: all four services with mTLS (certificates made here
by a test CA), stages accepting only the gateway's certificate (common name `gateway`) and
offering plaintext health on a side port, the gateway requiring an API token and serving no
reflection, the stages serving it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.client import synthesize
from services.cli.stack import STAGES, LocalStack, free_port
from services.gateway.auth import BearerTokenInterceptor, load_token
from services.runtime.config import build_parser, parse_bool, parse_config
from services.runtime.tls import ClientTLS, ServerTLS, TLSConfigError, secure_or_insecure_channel

TOKEN = "vx-test-token-3f9c1e7a5b"  # distinctive, so a leak into any file is found
WRONG_TOKEN = "vx-wrong-token-8d2a"
GATEWAY_CN = "gateway"


# ---------------------------------------------------------------------------------------------
# A test PKI: CA signing the server and client certificates, and an unrelated second CA
# ---------------------------------------------------------------------------------------------


@dataclass
class Pair:
    cert: str
    key: str


@dataclass
class Pki:
    ca: str  # signs everything below except `foreign`
    server: Pair  # every service's serving certificate (SAN localhost, 127.0.0.1)
    gateway: Pair  # the gateway's client certificate (CN gateway)
    tester: Pair  # a client certificate from the same CA, but not the gateway's
    foreign: Pair  # a client certificate (CN gateway!) from the unrelated CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Pair:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pair(str(cert_path), str(key_path))


def _ca(directory: Path, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(cn, _name(cn), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key, _write(directory, cn, cert, key).cert


def _leaf(
    directory: Path,
    name: str,
    cn: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str],
    *,
    server: bool,
) -> Pair:
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(cn, ca_cert.subject, key.public_key())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return _write(directory, name, builder.sign(ca_key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _ca(d, "voxline-test-ca")
    other = _ca(d, "unrelated-ca")
    return Pki(
        ca=ca[2],
        server=_leaf(d, "server", "voxline-service", ca, server=True),
        gateway=_leaf(d, "gateway", GATEWAY_CN, ca, server=False),
        tester=_leaf(d, "tester", "tester", ca, server=False),
        foreign=_leaf(d, "foreign", GATEWAY_CN, other, server=False),
    )


# ---------------------------------------------------------------------------------------------
# The secured stack
# ---------------------------------------------------------------------------------------------


@dataclass
class Secured:
    stack: LocalStack
    pki: Pki
    health_ports: dict[str, int]

    def tls(self, pair: Pair | None) -> ClientTLS:
        """Client TLS trusting the test CA, presenting `pair` (None: no certificate)."""
        if pair is None:
            return ClientTLS(ca=self.pki.ca)
        return ClientTLS(ca=self.pki.ca, cert=pair.cert, key=pair.key)


@pytest.fixture(scope="module")
def secured(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    token_file = tmp_path_factory.mktemp("secret") / "api-token"
    token_file.write_text(TOKEN + "\n")
    serving = ["--tls-cert", pki.server.cert, "--tls-key", pki.server.key]
    mtls = [*serving, "--tls-client-ca", pki.ca]
    health_ports = {s: free_port() for s in STAGES}
    extra = {
        stage: [
            *mtls,
            "--tls-allowed-client-cn",
            GATEWAY_CN,
            "--health-port",
            str(health_ports[stage]),
            "--reflection",  # the flag wins over VOXLINE_REFLECTION below
            "yes",
        ]
        for stage in STAGES
    }
    extra["gateway"] = [
        *mtls,
        "--tls-ca",
        pki.ca,
        "--tls-client-cert",
        pki.gateway.cert,
        "--tls-client-key",
        pki.gateway.key,
        "--api-token-file",
        str(token_file),
    ]
    run_dir = tmp_path_factory.mktemp("secured-run")
    # Reflection by env, as the deployments set it (and a non-canonical spelling).
    stack = LocalStack(
        run_dir,
        extra_args=extra,
        env={"VOXLINE_REFLECTION": "No"},
        tls=ClientTLS(ca=pki.ca, cert=pki.tester.cert, key=pki.tester.key),
    )
    with stack:
        yield Secured(stack, pki, health_ports)


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _list_voices(address: str, tls: ClientTLS, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    with secure_or_insecure_channel(address, tls=tls) as channel:
        synthesizer_pb2_grpc.SynthesizerStub(channel).ListVoices(
            pb.ListVoicesRequest(), timeout=10, metadata=metadata
        )


def _reflected_services(
    address: str, tls: ClientTLS, metadata: tuple[tuple[str, str], ...] = ()
) -> list[str]:
    with secure_or_insecure_channel(address, tls=tls) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=metadata)
        return [s.name for s in reply.list_services_response.service]


def test_synthesis_end_to_end_over_mtls(secured: Secured) -> None:
    for stream in (False, True):
        result = synthesize(
            secured.stack.gateway,
            "Secured hello.",
            stream=stream,
            timeout=120,
            tls=secured.tls(secured.pki.tester),
            api_token=TOKEN,
        )
        assert result.duration_s > 0.3


def test_plaintext_client_is_refused(secured: Secured) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _list_voices(secured.stack.gateway, ClientTLS(), _auth(TOKEN))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("who", ["no certificate", "other CA"])
def test_client_without_a_trusted_certificate_is_refused(secured: Secured, who: str) -> None:
    pair = None if who == "no certificate" else secured.pki.foreign
    for address in (secured.stack.gateway, secured.stack.address("vocoder")):
        with pytest.raises(grpc.RpcError) as err:
            _list_voices(address, secured.tls(pair), _auth(TOKEN))
        # The TLS handshake fails: the call never reaches a handler.
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (address, who)


def test_stage_accepts_only_the_gateways_certificate(secured: Secured) -> None:
    from voxline.v1 import stage_pb2, stage_pb2_grpc

    address = secured.stack.address("acoustic")
    with secure_or_insecure_channel(address, tls=secured.tls(secured.pki.tester)) as channel:
        stub = stage_pb2_grpc.StageInfoStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelInfo(stage_pb2.GetModelInfoRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "tester" in err.value.details()
        # Health stays open to any certificate of the CA (the stack's own wait used it).
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with secure_or_insecure_channel(address, tls=secured.tls(secured.pki.gateway)) as channel:
        info = stage_pb2_grpc.StageInfoStub(channel).GetModelInfo(
            stage_pb2.GetModelInfoRequest(), timeout=10
        )
    assert info.stage == "acoustic"


def test_plaintext_health_port_serves_health_only(secured: Secured) -> None:
    address = f"127.0.0.1:{secured.health_ports['frontend']}"
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="voxline.v1.TextFrontend"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        _reflected_services(address, ClientTLS())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    "metadata",
    [(), _auth(WRONG_TOKEN), (("authorization", TOKEN),), (("authorization", "Bearer "),)],
    ids=["none", "wrong", "no-scheme", "empty"],
)
def test_api_token_is_required(secured: Secured, metadata: tuple[tuple[str, str], ...]) -> None:
    tls = secured.tls(secured.pki.tester)
    with pytest.raises(grpc.RpcError) as err:
        _list_voices(secured.stack.gateway, tls, metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "API token" in err.value.details()
    assert TOKEN not in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        synthesize(secured.stack.gateway, "No entry.", stream=True, tls=tls, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _list_voices(secured.stack.gateway, tls, _auth(TOKEN))


def test_health_needs_no_token(secured: Secured) -> None:
    tls = secured.tls(secured.pki.tester)
    with secure_or_insecure_channel(secured.stack.gateway, tls=tls) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="voxline.v1.Synthesizer"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_switch(secured: Secured) -> None:
    # Off on the gateway (VOXLINE_REFLECTION=No): the service does not exist.
    with pytest.raises(grpc.RpcError) as err:
        _reflected_services(secured.stack.gateway, secured.tls(secured.pki.tester), _auth(TOKEN))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # On for the stages (--reflection yes).
    names = _reflected_services(secured.stack.address("vocoder"), secured.tls(secured.pki.gateway))
    assert "voxline.v1.Vocoder" in names
    assert "grpc.health.v1.Health" in names


def test_clean_stop_and_no_secret_in_the_run_dir(secured: Secured) -> None:
    """Last: stops the stack, so every log and telemetry file is complete."""
    codes = secured.stack.stop()
    assert codes == dict.fromkeys(codes, 0), codes
    files = [p for p in secured.stack.run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "gateway.log" for p in files)
    assert any("refused an unauthenticated call" in p.read_text(errors="replace") for p in files)
    for path in files:
        text = path.read_text(errors="replace")
        assert TOKEN not in text, path
        assert WRONG_TOKEN not in text, path


# ---------------------------------------------------------------------------------------------
# Flags (no processes)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("FALSE", False), ("1", True), ("0", False), ("Yes", True), (" no ", False)],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_parse_bool_rejects_other_words() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")


def test_reflection_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_REFLECTION", "false")
    assert parse_config("gateway", build_parser("gateway", "t"), []).reflection is False
    monkeypatch.delenv("VOXLINE_REFLECTION")
    assert parse_config("gateway", build_parser("gateway", "t"), []).reflection is True


def test_tls_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_TLS_CERT", "/tls/tls.crt")
    monkeypatch.setenv("VOXLINE_TLS_KEY", "/tls/tls.key")
    monkeypatch.setenv("VOXLINE_TLS_CLIENT_CA", "/tls/ca.crt")
    monkeypatch.setenv("VOXLINE_TLS_ALLOWED_CLIENT_CN", "gateway, admin")
    tls = parse_config("vocoder", build_parser("vocoder", "t"), []).server_tls
    assert tls == ServerTLS("/tls/tls.crt", "/tls/tls.key", "/tls/ca.crt", ("gateway", "admin"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--tls-cert", "a.crt"],
        ["--tls-key", "a.key"],
        ["--tls-client-ca", "ca.crt"],
        ["--tls-cert", "a", "--tls-key", "b", "--tls-allowed-client-cn", "gateway"],
        ["--tls-client-cert", "c.crt"],
    ],
)
def test_incomplete_tls_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_config("frontend", build_parser("frontend", "t"), argv)
    assert exit_.value.code == 2


def test_unreadable_certificate_names_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.crt")
    with pytest.raises(TLSConfigError, match=r"missing\.crt"):
        ServerTLS(missing, missing).credentials()


def test_token_loading(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret\n")
    assert load_token("", str(path)) == "s3cret"
    assert load_token("inline", "") == "inline"
    assert load_token("", "") == ""
    with pytest.raises(ValueError, match="not both"):
        load_token("inline", str(path))
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_token("", str(path))
    with pytest.raises(ValueError, match="empty API token"):
        BearerTokenInterceptor("")


@pytest.mark.parametrize("module", ["services.gateway", "services.http"])
def test_production_refuses_to_start_without_a_token(module: str) -> None:
    """`--production` (VOXLINE_PRODUCTION, set by the k8s overlays) makes no token a usage
    error: the public services never come up open to any caller by accident."""
    env = {**os.environ, "VOXLINE_PRODUCTION": "true"}
    env.pop("VOXLINE_API_TOKEN", None)
    env.pop("VOXLINE_API_TOKEN_FILE", None)
    done = subprocess.run(
        [sys.executable, "-m", module, "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--production requires an API token" in done.stderr
    assert load_token("t", "", production=True) == "t"
