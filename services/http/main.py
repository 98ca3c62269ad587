"""`python -m services.http`: the OpenAI-compatible HTTP service (FastAPI on uvicorn).

Flags follow the other services' convention: every `--some-flag` falls back to
`VOXLINE_SOME_FLAG`, and the flag wins.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from services.gateway.auth import load_token
from services.http import DEFAULT_PORT
from services.http.app import Gateway, Settings, create_app
from services.http.tracing import ServerSpanMiddleware
from services.runtime.config import DEFAULT_PORTS, add_flag, parse_bool
from services.runtime.tls import ClientTLS, TLSConfigError, secure_or_insecure_channel
from telemetry import init_telemetry
from telemetry.logging import configure_logging

log = logging.getLogger("voxline.http")


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
        f"127.0.0.1:{DEFAULT_PORTS['gateway']}",
        "the gateway's gRPC target (e.g. dns:///gateway.voxline.svc:50051)",
    )
    add_flag(p, "request-timeout-s", float, 120.0, "deadline of one gateway call")
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
    settings = Settings(args.gateway_address, args.request_timeout_s, token)
    # Instrumented after telemetry is up, so gateway calls are client spans of the request.
    # round_robin over every address the target resolves to (a headless Service in k8s):
    # with the default pick_first, each HTTP pod would send all its calls to one gateway.
    channel = telemetry.instrument_channel(
        secure_or_insecure_channel(args.gateway_address, GATEWAY_CHANNEL_OPTIONS, tls=tls)
    )
    app = ServerSpanMiddleware(create_app(settings, Gateway(channel, settings)), telemetry.tracer)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
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
    try:
        server.run()
    finally:
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
