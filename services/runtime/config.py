"""Service configuration: command-line flags with `VOXLINE_*` environment fallbacks.

Every flag `--some-option` can also be set as `VOXLINE_SOME_OPTION`; the flag wins, and
`--help` shows each flag's default and variable (`add_flag`). Every service gets the server
flags; the stages, which run models, also get the model flags (device, precision, batching).
Defaults suit the local stack on loopback.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from services.runtime.tls import ClientTLS, ServerTLS, TLSConfigError

#: Largest gRPC message a service sends or receives: stages exchange whole mels and audio of
#: long texts. The public gateway receives far less (see services/gateway/validation.py).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Default loopback ports of the local stack.
DEFAULT_PORTS = {"gateway": 50051, "frontend": 50052, "acoustic": 50053, "vocoder": 50054}


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(value: str | bool) -> bool:
    """A boolean flag or env value: true/false, 1/0, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, 1/0 or yes/no, not {value!r}")


@dataclass(frozen=True)
class SchedulerConfig:
    """A stage's batching settings (flags `--max-batch-size`, `--max-batch-per-request`,
    `--max-queue-delay-ms`, `--batch-window-ms`, `--max-queue`, `--instances`)."""

    max_batch_size: int = 8
    #: Most pieces of one request (one call's windows) in a batch. On a CPU a batch costs
    #: the sum of its pieces, so a long utterance's windows batched together would hold the
    #: model for seconds while a short request waits (head-of-line blocking); one piece per
    #: request keeps every batch bounded and lets others in between. On a GPU, raise it.
    max_batch_per_request: int = 1
    max_queue_delay_s: float = 0.0
    #: Only work due within this long after the most urgent job joins its batch: on a CPU a
    #: batch mate costs the urgent job about its own compute time, so work whose listener has
    #: seconds of audio in hand must not ride along. On a GPU, where a mate is nearly free,
    #: raise it.
    batch_window_s: float = 1.0
    max_queue: int = 16
    instances: int = 1


#: The scheduler defaults, stated once (ServiceConfig and the flags take them from here).
SCHEDULER_DEFAULTS = SchedulerConfig()


@dataclass
class ServiceConfig:
    """What every Voxline service understands (stage-specific extras live in `extra`)."""

    service: str
    host: str = "127.0.0.1"
    port: int = 0
    device: str = "auto"
    dtype: str = "auto"
    torch_threads: int = 0
    workers: int = 8
    max_concurrent_rpcs: int = 32
    max_queue: int = SCHEDULER_DEFAULTS.max_queue
    max_batch_size: int = SCHEDULER_DEFAULTS.max_batch_size
    max_batch_per_request: int = SCHEDULER_DEFAULTS.max_batch_per_request
    max_queue_delay_ms: float = SCHEDULER_DEFAULTS.max_queue_delay_s * 1000.0
    batch_window_ms: float = SCHEDULER_DEFAULTS.batch_window_s * 1000.0
    instances: int = SCHEDULER_DEFAULTS.instances
    drain_seconds: float = 20.0
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 600.0
    # TLS (services/runtime/tls.py, docs/security.md); empty = plaintext.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_allowed_client_cn: str = ""
    tls_ca: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_server_name: str = ""
    health_port: int = 0
    reflection: bool = True
    log_level: str = "INFO"
    prometheus_port: int = 0
    #: Largest request message accepted (a service's API may need far less than the default).
    max_receive_bytes: int = MAX_MESSAGE_BYTES
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def server_tls(self) -> ServerTLS:
        """This server's TLS settings (`enabled` False: plaintext)."""
        names = tuple(n.strip() for n in self.tls_allowed_client_cn.split(",") if n.strip())
        return ServerTLS(self.tls_cert, self.tls_key, self.tls_client_ca, names)

    @property
    def client_tls(self) -> ClientTLS:
        """TLS settings of this service's channels to others (the gateway's to the stages)."""
        return ClientTLS(
            self.tls_ca, self.tls_client_cert, self.tls_client_key, self.tls_server_name
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def scheduler(self) -> SchedulerConfig:
        """The model scheduler's settings (services/runtime/scheduler.py)."""
        return SchedulerConfig(
            max_batch_size=self.max_batch_size,
            max_batch_per_request=self.max_batch_per_request,
            max_queue_delay_s=self.max_queue_delay_ms / 1000.0,
            batch_window_s=self.batch_window_ms / 1000.0,
            max_queue=self.max_queue,
            instances=self.instances,
        )


#: ServiceConfig fields that are not common flags.
_NOT_FLAGS = frozenset({"service", "extra", "max_receive_bytes"})
_FIELD = object()  # "the default is ServiceConfig's"
_DEFAULTS = ServiceConfig(service="")

#: The services that run a model: only they get the model flags (`add_model_flags`).
MODEL_SERVICES = ("frontend", "acoustic", "vocoder")


def env_name(flag: str) -> str:
    """The environment variable a flag falls back to: `--some-option` -> VOXLINE_SOME_OPTION."""
    return "VOXLINE_" + flag.upper().replace("-", "_")


def _env(name: str, default: Any) -> Any:
    return os.environ.get(env_name(name), default)


def _shown(default: Any) -> str:
    """A default as `--help` shows it."""
    if isinstance(default, bool):
        return str(default).lower()
    if default is None or default == "":
        return "empty"
    return str(default)


def add_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    type_: Callable[[str], Any],
    default: Any,
    help_: str,
) -> None:
    """Add `--flag`, falling back to its `VOXLINE_*` environment variable (the flag wins).

    The one help format of every service: the help ends with the flag's built-in default and
    its environment variable's name, `[default: 8; env: VOXLINE_MAX_BATCH_SIZE]` (`, set` when
    the environment sets it now; its value is not shown: it may be a secret).
    """
    env = env_name(flag)
    note = f"default: {_shown(default)}; env: {env}" + (", set" if env in os.environ else "")
    text = f"{help_} [{note}]".replace("%", "%%")  # argparse %-formats help strings
    parser.add_argument(f"--{flag}", type=type_, default=_env(flag, default), help=text)


def _add_field_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    type_: Callable[[str], Any],
    help_: str,
    default: Any = _FIELD,
) -> None:
    """A flag filling a ServiceConfig field; its default is the field's (stated once, there)."""
    if default is _FIELD:
        default = getattr(_DEFAULTS, flag.replace("-", "_"))
    add_flag(parser, flag, type_, default, help_)


def build_parser(
    service: str, description: str, *, model: bool | None = None
) -> argparse.ArgumentParser:
    """The common flags; services add their own before calling `parse_config`.

    Every service gets the server flags (`add_server_flags`); a service that runs a model
    (`model`; default: `service` is one of MODEL_SERVICES, the stages) also gets the model
    flags (`add_model_flags`). The gateway runs no model and has none of them.
    """
    p = argparse.ArgumentParser(prog=f"voxline-{service}", description=description)
    add_server_flags(p, service)
    if model if model is not None else service in MODEL_SERVICES:
        add_model_flags(p)
    return p


def add_server_flags(p: argparse.ArgumentParser, service: str) -> None:
    """What every gRPC service understands: address, threads, drain, telemetry, TLS."""
    add = functools.partial(_add_field_flag, p)
    add("host", str, "bind address (0.0.0.0 in containers)")
    add("port", int, "gRPC port (0 = pick a free one)", DEFAULT_PORTS.get(service, 0))
    add("workers", int, "gRPC handler threads")
    add("max-concurrent-rpcs", int, "beyond this, calls get RESOURCE_EXHAUSTED")
    add("drain-seconds", float, "on SIGTERM, time allowed for in-flight calls to finish")
    add(
        "max-connection-age-s",
        float,
        "close client connections after this long so they re-resolve (scaling)",
    )
    add(
        "max-connection-age-grace-s",
        float,
        "calls in flight on an aged-out connection may finish within this (> longest call)",
    )
    add("log-level", str, "DEBUG | INFO | WARNING | ERROR")
    add("prometheus-port", int, "serve Prometheus /metrics on this port (0 = off)")
    add("run-dir", str, "where local telemetry files go (empty: none)", "")
    # Security (docs/security.md). Server side: serve TLS, optionally require client certs.
    add("tls-cert", str, "PEM certificate to serve TLS with (with --tls-key; empty: plaintext)")
    add("tls-key", str, "PEM private key of --tls-cert")
    add("tls-client-ca", str, "require client certificates signed by this PEM CA (mTLS)")
    add(
        "tls-allowed-client-cn",
        str,
        "comma-separated client certificate common names allowed to call (needs mTLS)",
    )
    # Client side: the gateway's channels to the stages.
    add("tls-ca", str, "connect to other services over TLS, trusting this PEM CA")
    add("tls-client-cert", str, "PEM client certificate to present (mTLS)")
    add("tls-client-key", str, "PEM private key of --tls-client-cert")
    add("tls-server-name", str, "name to verify in server certificates (empty: the target's host)")
    add(
        "health-port",
        int,
        "also serve grpc.health.v1 alone, plaintext, on this port (kubelet probes; 0 = off)",
    )
    add("reflection", parse_bool, "serve gRPC server reflection (true/false)")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """What a service running a model understands: device, precision, threads, batching."""
    add = functools.partial(_add_field_flag, p)
    add("device", str, "torch device: auto | cpu | cuda | cuda:N")
    add("dtype", str, "inference precision: auto (fp16 on CUDA) | fp32 | fp16 | bf16")
    add(
        "torch-threads",
        int,
        "torch intra-op threads; 0 = the CPUs the container's limit grants (cgroup quota)",
    )
    add("max-queue", int, "requests waiting for the model before RESOURCE_EXHAUSTED")
    add("max-batch-size", int, "most requests one model execution serves")
    add(
        "max-batch-per-request",
        int,
        "most pieces of one request in a batch (bounds a batch's time on a CPU)",
    )
    add(
        "max-queue-delay-ms",
        float,
        "how long a request may wait for others to batch with (0: batch what is queued)",
    )
    add(
        "batch-window-ms",
        float,
        "only work due within this long after the most urgent joins its batch",
    )
    add("instances", int, "model instances (worker threads) running batches")


def parse_config(
    service: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> ServiceConfig:
    """Parse flags into a ServiceConfig; unknown-to-the-runtime flags land in `extra`."""
    ns = vars(parser.parse_args(argv))
    # A flag the parser lacks (the gateway's missing model flags) keeps ServiceConfig's default.
    common = ({f.name for f in fields(ServiceConfig)} - _NOT_FLAGS) & ns.keys()
    cfg = ServiceConfig(service=service, **{k: ns[k] for k in common - {"run_dir"}})
    cfg.run_dir = Path(ns["run_dir"]) if ns["run_dir"] else None
    cfg.extra = {k: v for k, v in ns.items() if k not in common}
    try:  # inconsistent TLS flags are usage errors, reported like any other bad flag
        cfg.server_tls  # noqa: B018 - validated on construction
        cfg.client_tls  # noqa: B018
    except TLSConfigError as exc:
        parser.error(str(exc))
    return cfg
