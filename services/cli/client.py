"""A small client of the public Synthesizer API (what `voxline say` uses)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from services.runtime.tls import PLAINTEXT, ClientTLS, secure_or_insecure_channel
from services.runtime.wav import wav_bytes
from telemetry import names

#: Called with each piece of audio as it arrives: (s16le mono PCM, sample rate in Hz).
AudioCallback = Callable[[bytes, int], None]
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
#: A float printed with more digits than it has (a float32 rate shown as 4.099999904632568).
_LONG_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d{7,}(?![\w.])")


def auth_metadata(api_token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that authenticates a call to a gateway run with `--api-token`."""
    return (("authorization", f"Bearer {api_token}"),) if api_token else ()


def trace_id_of(metadata: Sequence[Any] | None) -> str:
    """The trace id a Voxline service sent in its response metadata (`voxline-trace-id`, else
    the W3C `traceresponse`), or "" if there is none."""
    found = {}
    for item in metadata or ():
        key, value = item
        if isinstance(value, str):
            found[key] = value
    trace_id = found.get(names.TRACE_ID_RESPONSE_KEY, "")
    if not trace_id:  # traceresponse: 00-<trace id>-<span id>-<flags>
        parts = found.get(names.TRACE_RESPONSE_KEY, "").split("-")
        trace_id = parts[1] if len(parts) == 4 else ""
    return trace_id if _TRACE_ID.fullmatch(trace_id) else ""


def error_trace_id(exc: grpc.RpcError) -> str:
    """The trace id of a failed call (the services send it before the status), or ""."""
    initial_metadata = getattr(exc, "initial_metadata", None)
    if initial_metadata is None:
        return ""
    try:
        return trace_id_of(initial_metadata())
    except Exception:  # a call that never got as far as response headers
        return ""


def readable_details(details: str | None) -> str:
    """A server's error message with float artifacts shortened: a float32 speaking rate of
    4.1 reaches the server as 4.099999904632568, and its message quotes that."""
    return _LONG_FLOAT.sub(lambda m: f"{float(m.group()):g}", details or "")


@dataclass
class SynthesisResult:
    """Audio plus the timings a user cares about."""

    pcm: bytes  # s16le mono
    sample_rate: int
    elapsed_s: float
    first_audio_s: float | None  # streaming only
    chunks: int
    #: The trace that served the request (response metadata `voxline-trace-id`; "" if none).
    trace_id: str = ""
    #: The request id the gateway answered with (the caller's, or one it made up).
    request_id: str = ""

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate if self.sample_rate else 0.0

    @property
    def rtf(self) -> float:
        """Real-time factor: seconds of compute per second of audio (lower is faster)."""
        return self.elapsed_s / self.duration_s if self.duration_s else float("inf")

    def wav(self) -> bytes:
        """The audio as a WAV file."""
        return wav_bytes(self.pcm, self.sample_rate)


def synthesize(
    address: str,
    text: str,
    *,
    stream: bool = False,
    voice: str = "",
    speaker: str = "",
    seed: int | None = None,
    speaking_rate: float | None = None,
    sample_rate: int = 0,
    timeout: float = 120.0,
    metadata: tuple[tuple[str, str], ...] = (),
    tls: ClientTLS = PLAINTEXT,
    api_token: str = "",
    on_audio: AudioCallback | None = None,
) -> SynthesisResult:
    """Call Synthesize or SynthesizeStream and collect the audio (over TLS if `tls` is set;
    `api_token` for a gateway that requires one). `seed` makes a VITS voice's output
    reproducible; `speaker` picks a multi-speaker voice's speaker. `on_audio` is called with
    each piece of audio as it arrives (once, for a unary call). A failed call raises
    `grpc.RpcError`; `error_trace_id(exc)` names its trace."""
    request = synthesizer_pb2.SynthesizeRequest(
        text=text, voice=voice, speaker=speaker, sample_rate_hz=sample_rate
    )
    if speaking_rate is not None:
        request.speaking_rate = speaking_rate
    if seed is not None:
        request.seed = seed
    metadata = (*metadata, *auth_metadata(api_token))
    with secure_or_insecure_channel(address, tls=tls) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        t0 = time.perf_counter()
        if not stream:
            reply, call = stub.Synthesize.with_call(request, timeout=timeout, metadata=metadata)
            elapsed = time.perf_counter() - t0
            with wave.open(io.BytesIO(reply.audio)) as w:
                pcm = w.readframes(w.getnframes())
            if on_audio is not None:
                on_audio(pcm, reply.sample_rate_hz)
            trace_id = trace_id_of(call.initial_metadata())
            return SynthesisResult(
                pcm, reply.sample_rate_hz, elapsed, None, 1, trace_id, reply.request_id
            )
        parts: list[bytes] = []
        first: float | None = None
        rate = 0
        request_id = ""
        responses = stub.SynthesizeStream(request, timeout=timeout, metadata=metadata)
        for message in responses:
            if first is None:
                first = time.perf_counter() - t0
            rate = rate or message.sample_rate_hz
            request_id = request_id or message.request_id
            parts.append(message.audio)
            if on_audio is not None:
                on_audio(message.audio, rate)
        elapsed = time.perf_counter() - t0
        trace_id = trace_id_of(responses.initial_metadata())
        return SynthesisResult(
            b"".join(parts), rate, elapsed, first, len(parts), trace_id, request_id
        )


class WavFile:
    """A WAV file written while the audio arrives.

    The audio goes to `<path>.partial` next to `path`; after every piece the header's sizes
    are patched in place (seek back, rewrite, seek forward: stdlib `wave` does this on a
    seekable file), so what is on disk is a valid WAV at every moment. `commit()` renames it
    over `path`; `discard()` removes it, so a failed synthesis never leaves a short file that
    looks whole (nor clobbers an earlier one).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._writer: wave.Wave_write | None = None
        # A device or a pipe (/dev/null, a FIFO) is written once, whole, never replaced.
        self._buffer = io.BytesIO() if path.exists() and not path.is_file() else None

    def write(self, pcm: bytes, sample_rate: int) -> None:
        """Append a piece of s16le mono audio (an `AudioCallback`)."""
        if self._writer is None:
            if self._buffer is not None:
                self._writer = wave.open(self._buffer, "wb")  # noqa: SIM115 - closed by commit
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = wave.open(str(self.partial), "wb")  # noqa: SIM115 - closed by commit/discard
            self._writer.setnchannels(1)
            self._writer.setsampwidth(2)
            self._writer.setframerate(sample_rate)
        self._writer.writeframes(pcm)

    def commit(self, sample_rate: int) -> None:
        """Finish the file (sizes final) and move it to `path`."""
        if self._writer is None:  # no audio at all: still a valid (empty) WAV
            self.write(b"", sample_rate)
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        if self._buffer is not None:
            self.path.write_bytes(self._buffer.getvalue())
        else:
            os.replace(self.partial, self.path)

    def discard(self) -> None:
        """Drop what was written."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._buffer is None:
            self.partial.unlink(missing_ok=True)


def list_voices(
    address: str, timeout: float = 10.0, *, tls: ClientTLS = PLAINTEXT, api_token: str = ""
) -> synthesizer_pb2.ListVoicesResponse:
    """The gateway's voices."""
    with secure_or_insecure_channel(address, tls=tls) as channel:
        return synthesizer_pb2_grpc.SynthesizerStub(channel).ListVoices(
            synthesizer_pb2.ListVoicesRequest(),
            timeout=timeout,
            metadata=auth_metadata(api_token),
        )
