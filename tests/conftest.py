"""Shared fixtures: the real local stack on ephemeral loopback ports."""

from __future__ import annotations

import os

# Before anything imports torch: idle OpenMP threads sleep instead of spinning. On a loaded
# 2-core machine a spinning 2-thread torch waits on its descheduled peer and runs 10-20x
# slower (measured: the VITS parity tests 190 s vs ~60 s); the services get the same setting
# from services/cli/stack.py and the image.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import io
import subprocess
import sys
import wave
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import LocalStack, free_port, wait_serving

#: The voices every stack a test starts serves, unless the test says otherwise: the student
#: voice, which the service-level tests (scheduling, faults, telemetry, vocoder choice) were
#: written against and which keeps each stack's start-up short. The VITS voices' tests
#: (tests/test_vits_*.py) set VOXLINE_VOICES themselves.
LEGACY_VOICES = "voxline-en-us"
os.environ.setdefault("VOXLINE_VOICES", LEGACY_VOICES)

#: Vocoder flags for tests that must observe a model call or a warm-up *in progress* (a
#: queue filling, NOT_SERVING while loading, two calls racing): HiFi-GAN's calls and warm-up
#: take seconds on a CPU, the fast vocoder's a few milliseconds. What such a test checks
#: (the runtime's health, queue and scheduler) is the same for either model.
SLOW_VOCODER = ("--vocoder", "hifigan")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Gateway + frontend + acoustic + vocoder, each a real process, shared by the session."""
    with LocalStack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="session")
def synthesizer(stack: LocalStack) -> Iterator[synthesizer_pb2_grpc.SynthesizerStub]:
    with grpc.insecure_channel(stack.gateway) as channel:
        yield synthesizer_pb2_grpc.SynthesizerStub(channel)


def read_wav(data: bytes) -> tuple[int, int, int, bytes]:
    """(channels, sample width, rate, frames) of a WAV file."""
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.readframes(w.getnframes())


def log_text(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(run_dir.glob("*.log")))


@contextmanager
def running_service(
    service: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> Iterator[str]:
    """`python -m services.<service>` on a free loopback port, SERVING; yields its address
    and stops it (SIGTERM) afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"services.{service}", "--port", str(port), *args],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{port}", timeout, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(60)
