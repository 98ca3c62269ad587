"""Flags generated from typed dataclasses (services/runtime/config.py `add_dataclass_flags`,
`from_namespace`): one flag per field, typed by its annotation, defaulting to the field's
default, with its help, its `VOXLINE_*` fallback, and the services' options built on them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.runtime.config import (
    SCHEDULER_DEFAULTS,
    STAGE_SCHEDULER_DEFAULTS,
    SchedulerConfig,
    ServiceConfig,
    add_dataclass_flags,
    build_parser,
    flag_field,
    from_namespace,
    parse_config,
    parse_service,
)


@pytest.fixture(autouse=True)
def _no_voxline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults under test, not the environment's."""
    for name in [n for n in os.environ if n.startswith("VOXLINE_")]:
        monkeypatch.delenv(name)


@dataclass(frozen=True)
class Inner:
    depth: int = flag_field(3, "how deep")


@dataclass(frozen=True)
class Example:
    count: int = flag_field(8, "how many")
    ratio: float = flag_field(0.5, "how much")
    name: str = flag_field("auto", "what it is called")
    enabled: bool = flag_field(True, "whether it runs")
    folder: Path | None = field(default=None, metadata={"help": "where it goes (empty: none)"})
    wait_s: float = flag_field(0.25, "how long it waits", flag="wait-ms", scale=1000.0)
    internal: int = field(default=7, metadata={"flag": False})
    inner: Inner = field(default_factory=lambda: Inner(depth=5))


def parser_for(cls: type, **kwargs: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_flags(parser, cls, **kwargs)  # type: ignore[arg-type]
    return parser


def parse(cls: type, argv: list[str], **kwargs: object) -> object:
    return from_namespace(cls, parser_for(cls, **kwargs).parse_args(argv))


def entries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each `--flag` -> its help line, whitespace collapsed."""
    return {
        a.option_strings[0]: " ".join(a.help.split()).replace("%%", "%")
        for a in parser._actions
        if a.option_strings and a.option_strings[0] != "-h"
    }


def test_defaults_are_the_fields() -> None:
    assert parse(Example, []) == Example()
    assert parse(Example, []).inner.depth == 5  # the default instance's, not Inner's


def test_types_come_from_the_annotations() -> None:
    got = parse(
        Example,
        [
            *("--count", "3", "--ratio", "1.5", "--name", "x", "--enabled", "off"),
            *("--folder", "/tmp/out", "--wait-ms", "40", "--depth", "9"),
        ],
    )
    assert got == Example(
        count=3,
        ratio=1.5,
        name="x",
        enabled=False,
        folder=Path("/tmp/out"),
        wait_s=0.04,
        inner=Inner(depth=9),
    )
    assert isinstance(got.count, int) and isinstance(got.ratio, float)  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        parse(Example, ["--count", "many"])


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("Yes", True), ("1", True), ("ON", True), ("No", False), ("0", False)],
)
def test_bool_flags_and_variables(monkeypatch: pytest.MonkeyPatch, text: str, value: bool) -> None:
    assert parse(Example, ["--enabled", text]).enabled is value  # type: ignore[attr-defined]
    monkeypatch.setenv("VOXLINE_ENABLED", text)
    assert parse(Example, []).enabled is value  # type: ignore[attr-defined]


def test_a_bad_bool_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse(Example, ["--enabled", "maybe"])


def test_environment_fallback_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_COUNT", "11")
    monkeypatch.setenv("VOXLINE_WAIT_MS", "500")
    monkeypatch.setenv("VOXLINE_FOLDER", "")
    monkeypatch.setenv("VOXLINE_DEPTH", "2")
    got = parse(Example, [])
    assert (got.count, got.wait_s, got.folder, got.inner.depth) == (11, 0.5, None, 2)  # type: ignore[attr-defined]
    assert parse(Example, ["--count", "4"]).count == 4  # type: ignore[attr-defined]


def test_help_shows_default_in_flag_units_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_NAME", "secret-ish")
    help_ = entries(parser_for(Example))
    assert help_ == {
        "--count": "how many [default: 8; env: VOXLINE_COUNT]",
        "--ratio": "how much [default: 0.5; env: VOXLINE_RATIO]",
        "--name": "what it is called [default: auto; env: VOXLINE_NAME, set]",
        "--enabled": "whether it runs [default: true; env: VOXLINE_ENABLED]",
        "--folder": "where it goes (empty: none) [default: empty; env: VOXLINE_FOLDER]",
        "--wait-ms": "how long it waits [default: 250.0; env: VOXLINE_WAIT_MS]",
        "--depth": "how deep [default: 5; env: VOXLINE_DEPTH]",
    }  # no --internal (flag: False)
    assert "secret-ish" not in parser_for(Example).format_help()


def test_defaults_instance_skip_and_prefix() -> None:
    parser = parser_for(Example, defaults=Example(count=2), skip={"inner"}, prefix="ex-")
    assert "--depth" not in entries(parser) and "--ex-depth" not in entries(parser)
    assert entries(parser)["--ex-count"].endswith("[default: 2; env: VOXLINE_EX_COUNT]")
    args = parser.parse_args(["--ex-ratio", "2"])
    got = from_namespace(Example, args, prefix="ex-")
    assert (got.count, got.ratio, got.inner) == (2, 2.0, Inner(depth=5))


def test_a_flag_the_parser_lacks_keeps_its_default() -> None:
    got = from_namespace(Example, {"count": 1}, internal=9)
    assert got == dataclasses.replace(Example(), count=1, internal=9)


def test_a_flag_needs_help_and_a_default() -> None:
    @dataclass
    class NoHelp:
        count: int = 1

    @dataclass
    class NoDefault:
        count: int = field(metadata={"help": "how many"})

    with pytest.raises(TypeError, match="help"):
        parser_for(NoHelp)
    with pytest.raises(TypeError, match="default"):
        parser_for(NoDefault)


# The services' configs ----------------------------------------------------------------------


def test_batching_flags_come_from_scheduler_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """SchedulerConfig states the batching settings once: seconds in the config, the flags
    (and their VOXLINE_* names) in milliseconds, as before."""
    assert "extra" not in {f.name for f in dataclasses.fields(ServiceConfig)}
    assert not {f.name for f in dataclasses.fields(SchedulerConfig)} & {
        f.name for f in dataclasses.fields(ServiceConfig)
    }
    help_ = entries(build_parser("vocoder", "t"))
    assert help_["--max-queue-delay-ms"].endswith("[default: 0.0; env: VOXLINE_MAX_QUEUE_DELAY_MS]")
    assert help_["--batch-window-ms"].endswith("[default: 1000.0; env: VOXLINE_BATCH_WINDOW_MS]")
    monkeypatch.setenv("VOXLINE_BATCH_WINDOW_MS", "20")
    monkeypatch.setenv("VOXLINE_INSTANCES", "2")
    config = parse_config(
        "vocoder",
        build_parser("vocoder", "t"),
        ["--max-queue-delay-ms", "250", "--max-batch-per-request", "4", "--max-queue", "9"],
    )
    assert config.scheduler == SchedulerConfig(
        max_batch_size=SCHEDULER_DEFAULTS.max_batch_size,
        max_batch_per_request=4,
        max_queue_delay_s=0.25,
        batch_window_s=0.02,
        max_queue=9,
        instances=2,
        defer_early_s=STAGE_SCHEDULER_DEFAULTS["vocoder"].defer_early_s,  # the vocoder's own
    )
    gateway = parse_config("gateway", build_parser("gateway", "t"), [])
    assert gateway.scheduler == SCHEDULER_DEFAULTS
    assert gateway.port == 50051 and gateway.run_dir is None


def test_gateway_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway.admission import AdmissionConfig
    from services.gateway.deadlines import CallLimits
    from services.gateway.service import ApiTokenFlags, GatewayOptions

    monkeypatch.setenv("VOXLINE_MAX_ACTIVE", "6")
    monkeypatch.setenv("VOXLINE_API_TOKEN", "t0ken")
    parser = build_parser("gateway", "t")  # the environment is read here
    add_dataclass_flags(parser, GatewayOptions)
    add_dataclass_flags(parser, ApiTokenFlags)
    help_ = entries(parser)
    assert help_["--max-admission-wait-ms"] == (
        "longest wait for a slot before RESOURCE_EXHAUSTED "
        "[default: 250.0; env: VOXLINE_MAX_ADMISSION_WAIT_MS]"
    )
    assert help_["--api-token"].endswith("[default: empty; env: VOXLINE_API_TOKEN, set]")
    assert help_["--send-timeout-s"].endswith("[default: 10.0; env: VOXLINE_SEND_TIMEOUT_S]")
    assert help_["--frontend-address"].endswith(
        "[default: 127.0.0.1:50052; env: VOXLINE_FRONTEND_ADDRESS]"
    )
    args = ["--max-admission-wait-ms", "500", "--text-gap-timeout-s", "3"]
    config, options = parse_service("gateway", parser, GatewayOptions, args)
    assert options.admission == AdmissionConfig(max_active=6, max_waiting=0, max_wait_s=0.5)
    assert options.limits == CallLimits(text_gap_s=3.0)
    assert "t0ken" not in repr(options) + repr(config)
    flags = from_namespace(ApiTokenFlags, parser.parse_args([]))
    assert flags.api_token == "t0ken" and "t0ken" not in repr(flags)


@pytest.mark.parametrize("service", ["frontend", "acoustic", "vocoder"])
def test_stage_options_default_to_their_dataclass(service: str) -> None:
    """Each stage's options: its flags' defaults are its dataclass's (the seed its stage's)."""
    import importlib

    module = importlib.import_module(f"services.{service}.service")
    options = getattr(module, f"{service.capitalize()}Options")
    parser = build_parser(service, "t")
    add_dataclass_flags(parser, options)
    config, got = parse_service(service, parser, options, [])
    assert got == options() and config.service == service
    help_ = entries(parser)
    assert help_["--seed"].endswith(f"[default: {options().weights.seed}; env: VOXLINE_SEED]")
    _, got = parse_service(service, parser, options, ["--seed", "3", "--voices", "a,b"])
    assert (got.weights.seed, got.voice.voices) == (3, "a,b")
