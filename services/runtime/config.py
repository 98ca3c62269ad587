"""Service configuration: command-line flags with `VOXLINE_*` environment fallbacks.

Every flag `--some-option` can also be set as `VOXLINE_SOME_OPTION`; the flag wins, and
`--help` shows each flag's default and variable (`add_flag`). Flags are generated from typed
dataclasses (`add_dataclass_flags`, read back by `from_namespace`): each field states its
type, default and help once. Every service gets the server flags (ServiceConfig); the stages,
which run models, also get the model flags (device, precision, batching: SchedulerConfig);
each service's own options are a dataclass of its own (`parse_service`). Defaults suit the
local stack on loopback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

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


def flag_field(
    default: Any,
    help_: str,
    *,
    flag: str | None = None,
    scale: float | None = None,
    parse: Callable[[str], Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field that is a flag (`add_dataclass_flags`): its default and its help,
    stated once. Shorthand for `field(default=..., metadata={"help": ..., ...})`; `flag`,
    `scale` and `parse` are the metadata keys of the same names; `kwargs` go to `field`."""
    metadata = {"help": help_, "flag": flag, "scale": scale, "parse": parse}
    return field(
        default=default, metadata={k: v for k, v in metadata.items() if v is not None}, **kwargs
    )


@dataclass(frozen=True)
class SchedulerConfig:
    """A stage's batching settings, stated once: the scheduler's (services/runtime/scheduler.py)
    and its flags' (`add_model_flags`). Times are seconds here; their flags take milliseconds."""

    max_queue: int = flag_field(16, "requests waiting for the model before RESOURCE_EXHAUSTED")
    max_batch_size: int = flag_field(8, "most requests one model execution serves")
    #: On a CPU a batch costs the sum of its pieces, so a long utterance's windows batched
    #: together would hold the model for seconds while a short request waits (head-of-line
    #: blocking); one piece per request keeps every batch bounded and lets others in between.
    #: On a GPU, raise it.
    max_batch_per_request: int = flag_field(
        1, "most pieces of one request in a batch (bounds a batch's time on a CPU)"
    )
    max_queue_delay_s: float = flag_field(
        0.0,
        "how long a request may wait for others to batch with (0: batch what is queued)",
        flag="max-queue-delay-ms",
        scale=1000.0,
    )
    #: On a CPU a batch mate costs the urgent job about its own compute time, so work whose
    #: listener has seconds of audio in hand must not ride along. On a GPU, where a mate is
    #: nearly free, raise it.
    batch_window_s: float = flag_field(
        1.0,
        "only work due within this long after the most urgent joins its batch",
        flag="batch-window-ms",
        scale=1000.0,
    )
    instances: int = flag_field(1, "model instances (worker threads) running batches")
    #: The stages share a machine's cores: work due seconds from now (a stream's next
    #: sentence) that starts at once competes with another stage's work for the audio a
    #: listener is waiting for. Such work waits this long after it is queued (CPU); on a GPU,
    #: where stages do not share cores, set 0.
    defer_early_s: float = flag_field(
        0.1,
        "work due more than 0.5 s ahead waits this long first, leaving the cores to urgent work",
        flag="defer-early-ms",
        scale=1000.0,
    )


#: The scheduler defaults (the flags and ServiceConfig take them from SchedulerConfig).
SCHEDULER_DEFAULTS = SchedulerConfig()


@dataclass
class ServiceConfig:
    """What every Voxline service understands: its flags are generated from these fields
    (`build_parser`); a service's own options are a dataclass of its own (`parse_service`).

    The model fields (`MODEL_FIELDS`: device, precision, threads, batching) are flags of the
    stages only; the gateway's config keeps their defaults.
    """

    service: str = field(metadata={"flag": False})
    host: str = flag_field("127.0.0.1", "bind address (0.0.0.0 in containers)")
    port: int = flag_field(0, "gRPC port (0 = pick a free one)")
    #: A Unix domain socket instead of host:port for co-located services (docs/deploy.md,
    #: "Co-located stages"); the health and metrics ports stay on --host.
    listen: str = flag_field(
        "",
        "serve gRPC on this address instead of --host:--port, e.g. "
        "unix:/run/voxline/vocoder.sock (empty: --host:--port)",
    )
    workers: int = flag_field(8, "gRPC handler threads")
    max_concurrent_rpcs: int = flag_field(32, "beyond this, calls get RESOURCE_EXHAUSTED")
    drain_seconds: float = flag_field(
        20.0, "on SIGTERM, time allowed for in-flight calls to finish"
    )
    max_connection_age_s: float = flag_field(
        300.0, "close client connections after this long so they re-resolve (scaling)"
    )
    max_connection_age_grace_s: float = flag_field(
        600.0,
        "calls in flight on an aged-out connection may finish within this (> longest call)",
    )
    log_level: str = flag_field("INFO", "DEBUG | INFO | WARNING | ERROR")
    prometheus_port: int = flag_field(0, "serve Prometheus /metrics on this port (0 = off)")
    run_dir: Path | None = field(
        default=None, metadata={"help": "where local telemetry files go (empty: none)"}
    )
    # TLS (services/runtime/tls.py, docs/security.md); empty = plaintext. Server side: serve
    # TLS, optionally require client certificates.
    tls_cert: str = flag_field(
        "", "PEM certificate to serve TLS with (with --tls-key; empty: plaintext)"
    )
    tls_key: str = flag_field("", "PEM private key of --tls-cert")
    tls_client_ca: str = flag_field("", "require client certificates signed by this PEM CA (mTLS)")
    tls_allowed_client_cn: str = flag_field(
        "", "comma-separated client certificate common names allowed to call (needs mTLS)"
    )
    # Client side: the gateway's channels to the stages.
    tls_ca: str = flag_field("", "connect to other services over TLS, trusting this PEM CA")
    tls_client_cert: str = flag_field("", "PEM client certificate to present (mTLS)")
    tls_client_key: str = flag_field("", "PEM private key of --tls-client-cert")
    tls_server_name: str = flag_field(
        "", "name to verify in server certificates (empty: the target's host)"
    )
    health_port: int = flag_field(
        0, "also serve grpc.health.v1 alone, plaintext, on this port (kubelet probes; 0 = off)"
    )
    reflection: bool = flag_field(True, "serve gRPC server reflection (true/false)")
    #: Largest request message accepted (a service's API may need far less than the default).
    max_receive_bytes: int = field(default=MAX_MESSAGE_BYTES, metadata={"flag": False})
    # The model fields (MODEL_FIELDS): flags of the stages only.
    device: str = flag_field("auto", "torch device: auto | cpu | cuda | cuda:N")
    dtype: str = flag_field("auto", "inference precision: auto (fp16 on CUDA) | fp32 | fp16 | bf16")
    torch_threads: int = flag_field(
        0, "torch intra-op threads; 0 = the CPUs the container's limit grants (cgroup quota)"
    )
    #: The model scheduler's settings (services/runtime/scheduler.py).
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

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
        """Where the gRPC port listens: `--listen` when set, else `--host:--port`."""
        return self.listen or f"{self.host}:{self.port}"


#: ServiceConfig fields whose flags only services that run a model get (`add_model_flags`).
MODEL_FIELDS = frozenset({"device", "dtype", "torch_threads", "scheduler"})

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


# ---------------------------------------------------------------------------------------------
# Flags generated from dataclasses
# ---------------------------------------------------------------------------------------------

T = TypeVar("T")


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """The parser of an `X | None` field: empty is None."""

    def parse_optional(text: str) -> Any:
        return None if text == "" else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")  # argparse's error messages
    return parse_optional


def _parser_for(hint: Any) -> Callable[[str], Any]:
    """How a flag of a field annotated `hint` parses its text."""
    if hint is bool:
        return parse_bool
    if hint in (int, float, str, Path):
        return hint  # type: ignore[no-any-return]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _optional(_parser_for(inner))
    raise TypeError(f"no flag type for {hint!r}: give the field metadata 'parse'")


def _field_default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _flag_fields(cls: type[Any], skip: Collection[str] = ()) -> Iterator[tuple[Field[Any], Any]]:
    """The fields of dataclass `cls` that are flags (or hold a dataclass of flags), with their
    resolved annotations; metadata `{"flag": False}` marks a field that is no flag."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.init and f.name not in skip and f.metadata.get("flag", True) is not False:
            yield f, hints[f.name]


def _flag_name(f: Field[Any], prefix: str) -> str:
    return prefix + (f.metadata.get("flag") or f.name.replace("_", "-"))


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type[Any],
    defaults: Any = None,
    *,
    prefix: str = "",
    skip: Collection[str] = (),
) -> None:
    """Add one `--flag` (with its `VOXLINE_*` fallback, `add_flag`) per field of dataclass
    `cls`; `from_namespace` reads them back into a `cls`.

    A field's flag is `--prefix` + its name with dashes; its type is the field's annotation
    (int, float, str, Path, bool via `parse_bool`; `X | None`: empty is None); its default
    is the field's (or `defaults`'s, an instance of `cls`); its help is the field's metadata
    (`flag_field`):

    - `help` (required): what the flag does; `--help` appends the default and env name;
    - `flag`: the flag's name instead of the field's (`max-admission-wait-ms`);
    - `scale`: the flag's unit per the field's (1000.0: a seconds field, a milliseconds flag);
    - `parse`: the flag's parser instead of the annotation's;
    - `flag: False`: the field is no flag (it keeps its default).

    A field annotated with a dataclass adds that dataclass's flags (its default instance
    gives their defaults). `skip`: field names left out (they keep their defaults).
    """
    for f, hint in _flag_fields(cls, skip):
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        if dataclasses.is_dataclass(hint):
            nested = None if default is MISSING else default
            add_dataclass_flags(parser, hint, nested, prefix=prefix)  # type: ignore[arg-type]
            continue
        flag = _flag_name(f, prefix)
        if default is MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: the flag --{flag} needs a default")
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: the flag --{flag} needs metadata 'help'")
        scale = f.metadata.get("scale")
        parse = f.metadata.get("parse") or _parser_for(hint)
        shown = default * scale if scale and default is not None else default
        add_flag(parser, flag, parse, shown, f.metadata["help"])


def _given(cls: type[Any], values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The fields of `cls` whose flags `values` holds (a parsed namespace), as the field
    values (a scaled flag converted back); a nested dataclass is its default instance with
    the values given replaced."""
    given: dict[str, Any] = {}
    for f, hint in _flag_fields(cls):
        if dataclasses.is_dataclass(hint):
            nested = _given(hint, values, prefix)  # type: ignore[arg-type]
            if nested:
                base = _field_default(f)
                given[f.name] = hint(**nested) if base is MISSING else replace(base, **nested)
            continue
        dest = _flag_name(f, prefix).replace("-", "_")
        if dest in values:
            value = values[dest]
            scale = f.metadata.get("scale")
            given[f.name] = value / scale if scale and value is not None else value
    return given


def from_namespace(
    cls: type[T], ns: argparse.Namespace | Mapping[str, Any], *, prefix: str = "", **fixed: Any
) -> T:
    """A `cls` from parsed flags (`add_dataclass_flags`): each field from its flag, a field
    whose flag the parser lacks keeps its default, `fixed` fields as given."""
    values = vars(ns) if isinstance(ns, argparse.Namespace) else ns
    given = _given(cls, values, prefix)
    return cls(**{**given, **fixed})


# ---------------------------------------------------------------------------------------------
# The services' parsers
# ---------------------------------------------------------------------------------------------


def build_parser(
    service: str, description: str, *, model: bool | None = None
) -> argparse.ArgumentParser:
    """The common flags; services add their own (`add_dataclass_flags`) before calling
    `parse_service` (or `parse_config`).

    Every service gets the server flags (`add_server_flags`); a service that runs a model
    (`model`; default: `service` is one of MODEL_SERVICES, the stages) also gets the model
    flags (`add_model_flags`). The gateway runs no model and has none of them.
    """
    p = argparse.ArgumentParser(prog=f"voxline-{service}", description=description)
    add_server_flags(p, service)
    if model if model is not None else service in MODEL_SERVICES:
        add_model_flags(p, service)
    return p


def add_server_flags(p: argparse.ArgumentParser, service: str) -> None:
    """What every gRPC service understands: address, threads, drain, telemetry, TLS (the
    ServiceConfig fields but the model ones); `--port` defaults to the service's own."""
    defaults = ServiceConfig(service=service, port=DEFAULT_PORTS.get(service, 0))
    add_dataclass_flags(p, ServiceConfig, defaults, skip=MODEL_FIELDS)


#: Stages whose batching defaults differ from SchedulerConfig's. The vocoder's work is a
#: stream's windows, each due a little later than the last: deferring early work would pace
#: every stream (one window per defer), so only the frontend's and the acoustic model's
#: look-ahead work (the next sentences) waits.
STAGE_SCHEDULER_DEFAULTS = {"vocoder": SchedulerConfig(defer_early_s=0.0)}


def add_model_flags(p: argparse.ArgumentParser, service: str = "") -> None:
    """What a service running a model understands: device, precision, threads, batching (the
    ServiceConfig fields in MODEL_FIELDS, the batching ones from SchedulerConfig, with the
    stage's own defaults where STAGE_SCHEDULER_DEFAULTS has them)."""
    model_only = {f.name for f in fields(ServiceConfig)} - MODEL_FIELDS
    scheduler = STAGE_SCHEDULER_DEFAULTS.get(service, SCHEDULER_DEFAULTS)
    defaults = ServiceConfig(service=service, scheduler=scheduler)
    add_dataclass_flags(p, ServiceConfig, defaults, skip=model_only)


def service_config(
    service: str, parser: argparse.ArgumentParser, args: argparse.Namespace
) -> ServiceConfig:
    """The ServiceConfig of parsed flags (a field whose flag `parser` lacks, as the gateway's
    model flags, keeps its default); inconsistent flags are usage errors (`parser.error`)."""
    cfg = from_namespace(ServiceConfig, args, service=service)
    try:  # inconsistent TLS flags are usage errors, reported like any other bad flag
        cfg.server_tls  # noqa: B018 - validated on construction
        cfg.client_tls  # noqa: B018
    except TLSConfigError as exc:
        parser.error(str(exc))
    return cfg


def parse_config(
    service: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> ServiceConfig:
    """Parse flags into a ServiceConfig (a service's own flags: `parse_service`)."""
    return service_config(service, parser, parser.parse_args(argv))


def parse_service(
    service: str,
    parser: argparse.ArgumentParser,
    options: type[T],
    argv: Sequence[str] | None = None,
) -> tuple[ServiceConfig, T]:
    """Parse flags into the common ServiceConfig and the service's own `options` dataclass
    (whose flags `add_dataclass_flags(parser, options)` added)."""
    args = parser.parse_args(argv)
    return service_config(service, parser, args), from_namespace(options, args)
