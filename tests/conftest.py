"""Shared fixtures: the real local stack on ephemeral loopback ports."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import LocalStack


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
