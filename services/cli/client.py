"""A small client of the public Synthesizer API (what `voxline say` uses)."""

from __future__ import annotations

import io
import time
import wave
from dataclasses import dataclass

from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from services.runtime.tls import PLAINTEXT, ClientTLS, secure_or_insecure_channel
from services.runtime.wav import wav_bytes


def auth_metadata(api_token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that authenticates a call to a gateway run with `--api-token`."""
    return (("authorization", f"Bearer {api_token}"),) if api_token else ()


@dataclass
class SynthesisResult:
    """Audio plus the timings a user cares about."""

    pcm: bytes  # s16le mono
    sample_rate: int
    elapsed_s: float
    first_audio_s: float | None  # streaming only
    chunks: int

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
) -> SynthesisResult:
    """Call Synthesize or SynthesizeStream and collect the audio (over TLS if `tls` is set;
    `api_token` for a gateway that requires one). `seed` makes a VITS voice's output
    reproducible; `speaker` picks a multi-speaker voice's speaker."""
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
            reply = stub.Synthesize(request, timeout=timeout, metadata=metadata)
            elapsed = time.perf_counter() - t0
            with wave.open(io.BytesIO(reply.audio)) as w:
                pcm = w.readframes(w.getnframes())
            return SynthesisResult(pcm, reply.sample_rate_hz, elapsed, None, 1)
        parts: list[bytes] = []
        first: float | None = None
        rate = 0
        for message in stub.SynthesizeStream(request, timeout=timeout, metadata=metadata):
            if first is None:
                first = time.perf_counter() - t0
            rate = rate or message.sample_rate_hz
            parts.append(message.audio)
        elapsed = time.perf_counter() - t0
        return SynthesisResult(b"".join(parts), rate, elapsed, first, len(parts))


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
