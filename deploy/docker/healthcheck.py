"""Container HEALTHCHECK: grpc.health.v1 Check(service="") against this container's service.

Docker/Compose only; Kubernetes uses native gRPC probes (k8s/). The port is VOXLINE_HEALTH_PORT
(the plaintext health-only port a TLS service needs, docs/security.md), else VOXLINE_PORT, or
`--port N` from PID 1's command line, or the service's default port (services.runtime.config).
Exit 0 when SERVING, 1 otherwise.
"""

from __future__ import annotations

import os
import re
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.config import DEFAULT_PORTS


def _port() -> int:
    # With TLS on the service port, plaintext health is served on the health port alone.
    if os.environ.get("VOXLINE_HEALTH_PORT", "0") != "0":
        return int(os.environ["VOXLINE_HEALTH_PORT"])
    if os.environ.get("VOXLINE_PORT"):
        return int(os.environ["VOXLINE_PORT"])
    try:
        with open("/proc/1/cmdline", "rb") as f:
            argv = f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        argv = []
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    for arg in argv:
        m = re.fullmatch(r"services\.(\w+)", arg)
        if m and m.group(1) in DEFAULT_PORTS:
            return DEFAULT_PORTS[m.group(1)]
    return DEFAULT_PORTS["gateway"]


def main() -> int:
    with grpc.insecure_channel(f"127.0.0.1:{_port()}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3
            )
        except grpc.RpcError:
            return 1
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
