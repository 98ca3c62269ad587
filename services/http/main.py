"""`python -m services.http`: the OpenAI-compatible HTTP service (FastAPI on uvicorn).

Flags follow the other services' convention: every `--some-flag` falls back to
`VOXLINE_SOME_FLAG`, and the flag wins.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

import uvicorn

from services.gateway.auth import load_token
from services.http import DEFAULT_PORT
from services.http.app import Gateway, Settings, create_app
from services.http.limits import RequestLimits, guarded_h11
from services.http.readiness import Readiness
from services.http.tracing import ServerSpanMiddleware
from services.runtime.config import add_flag, parse_bool
from services.runtime.tls import ClientTLS, TLSConfigError, secure_or_insecure_channel
from telemetry import init_telemetry
from telemetry.logging import configure_logging

log = logging.getLogger("voxline.http")

#: The defaults of the flags that fill Settings (stated once, in Settings).
DEFAULTS = Settings()


def _positive(type_: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type accepting only values above 0 (a zero limit would refuse all)."""

    def parse(text: str) -> float:
        value = type_(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text!r}")
        return value

    parse.__name__ = type_.__name__  # argparse names the type in its error messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The service's flags, each with its `VOXLINE_*` environment fallback."""
    p = argparse.ArgumentParser(
        prog="voxline-http", description="Voxline's OpenAI-compatible speech API over HTTP"
    )
    add_flag(p, "host", str, "127.0.0.1", "bind address (0.0.0.0 in containers)")
    add_flag(p, "port", int, DEFAULT_PORT, "HTTP port")
    add_flag(
        p,
        "gateway-address",
        str,
        DEFAULTS.gateway_address,
        "the gateway's gRPC target (e.g. dns:///gateway.voxline.svc:50051)",
    )
    _add_limit_flags(p)
    add_flag(
        p,
        "api-token",
        str,
        "",
        "require 'Authorization: Bearer <token>' (empty: off); also sent to the gateway",
    )
    add_flag(p, "api-token-file", str, "", "read the API token from this file (a Secret)")
    add_flag(p, "production", parse_bool, False, "refuse to start without an API token")
    # The channel to the gateway (services/runtime/tls.py, docs/security.md).
    add_flag(p, "tls-ca", str, "", "connect to the gateway over TLS, trusting this PEM CA")
    add_flag(p, "tls-client-cert", str, "", "PEM client certificate to present (mTLS)")
    add_flag(p, "tls-client-key", str, "", "PEM private key of --tls-client-cert")
    add_flag(p, "tls-server-name", str, "", "name to verify in the gateway's certificate")
    add_flag(p, "drain-seconds", float, 20.0, "on SIGTERM, time allowed for requests to finish")
    add_flag(p, "log-level", str, "INFO", "DEBUG | INFO | WARNING | ERROR")
    add_flag(p, "prometheus-port", int, 0, "serve Prometheus /metrics on this port (0 = off)")
    add_flag(p, "run-dir", str, "", "where local telemetry files go (empty: none)")
    return p


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """The limits of services/http/limits.py (docs/reliability.md, "HTTP front")."""
    seconds, count = _positive(float), _positive(int)
    add_flag(
        p,
        "request-timeout-s",
        seconds,
        DEFAULTS.request_timeout_s,
        "total deadline of one request: body, gateway call and response (then 504 or a cut "
        "stream); the gateway call carries what is left",
    )
    add_flag(p, "body-timeout-s", seconds, DEFAULTS.body_timeout_s, "deadline for a body (408)")
    add_flag(
        p,
        "header-timeout-s",
        seconds,
        DEFAULTS.header_timeout_s,
        "close a connection whose request head has not arrived within this",
    )
    add_flag(
        p,
        "limit-concurrency",
        count,
        DEFAULTS.limit_concurrency,
        "requests in flight at once; beyond it 503 at once (probes exempt)",
    )
    add_flag(
        p,
        "ready-interval-s",
        seconds,
        DEFAULTS.ready_interval_s,
        "how often /readyz's cached gateway health is refreshed",
    )


def _settings(args: argparse.Namespace, token: str) -> Settings:
    """Settings from the parsed flags (each field has its flag) and the loaded token."""
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if f.name != "api_token"}
    return Settings(**given, api_token=token)


#: Channel options of the HTTP front's channel to the gateway.
GATEWAY_CHANNEL_OPTIONS = (("grpc.lb_policy_name", "round_robin"),)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn drains in-flight requests first)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # the token stays out of `args` from here on
        token = load_token(args.api_token, args.api_token_file, production=args.production)
        tls = ClientTLS(
            args.tls_ca, args.tls_client_cert, args.tls_client_key, args.tls_server_name
        )
    except (ValueError, TLSConfigError) as exc:
        parser.error(str(exc))
    args.api_token = args.api_token_file = ""
    configure_logging("http", args.log_level)
    telemetry = init_telemetry(
        "http",
        service_version=_version(),
        run_dir=Path(args.run_dir) if args.run_dir else None,
        prometheus_port=args.prometheus_port or None,
        gpu_metrics=False,
    )
    tls.export_certificate_expiry(telemetry)  # its client certificate's expiry, if it has one
    settings = _settings(args, token)
    # Instrumented after telemetry is up, so gateway calls are client spans of the request.
    # round_robin over every address the target resolves to (a headless Service in k8s):
    # with the default pick_first, each HTTP pod would send all its calls to one gateway.
    channel = telemetry.instrument_channel(
        secure_or_insecure_channel(args.gateway_address, GATEWAY_CHANNEL_OPTIONS, tls=tls)
    )
    readiness = Readiness(channel, settings.ready_interval_s)
    api = create_app(settings, Gateway(channel, settings), readiness)
    limited = RequestLimits(
        api, limit_concurrency=settings.limit_concurrency, timeout_s=settings.request_timeout_s
    )
    # Outermost, so refusals and deadlines are in the request's span and log line too.
    app = ServerSpanMiddleware(limited, telemetry.tracer)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            http=guarded_h11(settings.header_timeout_s),  # h11 plus a request-head deadline
            ws="none",  # no WebSocket routes: an upgrade request is served as plain HTTP
            log_config=None,  # uvicorn's loggers go to the JSON handler above
            access_log=False,  # ServerSpanMiddleware logs each request, without its body
            lifespan="off",
            timeout_graceful_shutdown=args.drain_seconds,
        )
    )
    log.info(
        "listening",
        extra={
            "address": f"{args.host}:{args.port}",
            "gateway": args.gateway_address,
            "tls": "on" if tls.enabled else "off",
            "auth": "bearer" if token else "off",
        },
    )
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal against the handlers it
    # found: with these no-ops there, the process goes on to flush its telemetry below
    # instead of dying with the last spans unexported.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    readiness.start()
    try:
        server.run()
    finally:
        readiness.stop()
        channel.close()
        telemetry.shutdown()
    return 0 if server.started else 1


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("voxline")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+local"


if __name__ == "__main__":
    sys.exit(main())
