"""Every service's `--help` shows, for each flag, its default and its `VOXLINE_*` variable,
and only the flags that service uses (the gateway runs no model: no model flags)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from services.runtime.config import (
    SCHEDULER_DEFAULTS,
    ServiceConfig,
    add_flag,
    build_parser,
    env_name,
    parse_config,
)

SERVICES = ("gateway", "frontend", "acoustic", "vocoder", "http")
MODEL_FLAGS = (
    "--device",
    "--dtype",
    "--torch-threads",
    "--max-queue",
    "--max-batch-size",
    "--max-batch-per-request",
    "--max-queue-delay-ms",
    "--batch-window-ms",
    "--instances",
)


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """`python -m services.<service> --help` of every service (run side by side)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXLINE_")}
    procs = {
        s: subprocess.Popen(
            [sys.executable, "-m", f"services.{s}", "--help"],
            env={**env, "COLUMNS": "100"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in SERVICES
    }
    out = {}
    for service, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        out[service] = stdout
    return out


def options(help_text: str) -> dict[str, str]:
    """Each `--flag` of a help text -> its entry, whitespace collapsed (argparse wraps)."""
    entries = re.split(r"\n  (?=-)", help_text.split("options:", 1)[1])
    out = {}
    for entry in entries:
        text = " ".join(entry.split())
        flag = text.split(" ", 1)[0].rstrip(",")
        if flag.startswith("--") and flag != "--help":
            out[flag] = text
    return out


@pytest.mark.parametrize("service", SERVICES)
def test_every_flag_shows_its_default_and_variable(helps: dict[str, str], service: str) -> None:
    flags = options(helps[service])
    assert len(flags) > 10, helps[service]
    for flag, entry in flags.items():
        name = "VOXLINE_" + flag[2:].upper().replace("-", "_")
        assert re.search(rf"\[default: [^;\]]+; env: {name}\]$", entry), entry


def test_defaults_shown_are_the_configs(helps: dict[str, str]) -> None:
    gateway, vocoder, http = (options(helps[s]) for s in ("gateway", "vocoder", "http"))
    assert gateway["--port"].endswith("[default: 50051; env: VOXLINE_PORT]")
    assert gateway["--drain-seconds"].endswith(
        f"[default: {ServiceConfig.drain_seconds}; env: VOXLINE_DRAIN_SECONDS]"
    )
    assert gateway["--tls-cert"].endswith("[default: empty; env: VOXLINE_TLS_CERT]")
    assert gateway["--reflection"].endswith("[default: true; env: VOXLINE_REFLECTION]")
    assert vocoder["--port"].endswith("[default: 50054; env: VOXLINE_PORT]")
    batch = SCHEDULER_DEFAULTS.max_batch_size
    assert vocoder["--max-batch-size"].endswith(f"[default: {batch}; env: VOXLINE_MAX_BATCH_SIZE]")
    assert http["--port"].endswith("[default: 8080; env: VOXLINE_PORT]")


def test_model_flags_only_where_a_model_runs(helps: dict[str, str]) -> None:
    for service in ("gateway", "http"):
        assert not set(MODEL_FLAGS) & set(options(helps[service])), service
    for service in ("frontend", "acoustic", "vocoder"):
        assert set(MODEL_FLAGS) <= set(options(helps[service])), service


def test_gateway_config_keeps_model_defaults() -> None:
    """The gateway's parser has no model flags; its config holds ServiceConfig's defaults
    (stated once), and a model flag is a usage error."""
    config = parse_config("gateway", build_parser("gateway", "t"), [])
    assert config.scheduler == SCHEDULER_DEFAULTS
    assert config.device == ServiceConfig.device
    with pytest.raises(SystemExit):
        parse_config("gateway", build_parser("gateway", "t"), ["--device", "cpu"])
    stage = parse_config("vocoder", build_parser("vocoder", "t"), ["--max-batch-size", "3"])
    assert stage.scheduler.max_batch_size == 3


def test_help_marks_a_set_variable_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_API_TOKEN", "s3cret-value")
    parser = argparse.ArgumentParser()
    add_flag(parser, "api-token", str, "", "bearer token")
    text = " ".join(parser.format_help().split())
    assert "[default: empty; env: VOXLINE_API_TOKEN, set]" in text
    assert "s3cret" not in text
    assert parser.parse_args([]).api_token == "s3cret-value"
    assert env_name("max-batch-size") == "VOXLINE_MAX_BATCH_SIZE"
