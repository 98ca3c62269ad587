"""Orchestration of one synthesis across the three stages.

Unary: frontend -> (per sentence) acoustic -> vocoder, audio concatenated.
Streaming: frontend, then per sentence the acoustic stage streams mel chunks straight into
a bidirectional vocoder stream, so the vocoder starts on the first mel chunk of the first
sentence and audio reaches the client while later chunks are still being made.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from voxline.v1 import acoustic_pb2, frontend_pb2, vocoder_pb2

from services.gateway.stages import StageClients, UpstreamStream
from services.runtime.errors import DeadlineExceeded, VoxlineError
from services.runtime.tensors import from_proto


class CancelScope:
    """The upstream streams of one request, cancelled together when the request ends.

    gRPC runs `cancel_all` (registered with `context.add_callback`) as soon as the caller
    cancels or the deadline passes, even while the handler is blocked waiting on a stage,
    so no stage keeps working for a caller that is gone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: list[UpstreamStream] = []
        self._cancelled = False

    def add(self, stream: UpstreamStream) -> UpstreamStream:
        with self._lock:
            self._streams.append(stream)
            cancelled = self._cancelled
        if cancelled:
            stream.cancel()
        return stream

    def cancel_all(self) -> None:
        with self._lock:
            self._cancelled = True
            streams, self._streams = self._streams, []
        for stream in streams:
            stream.cancel()


@dataclass
class Job:
    """A validated synthesis request (the text is only ever sent on to the frontend)."""

    text: str
    voice: str
    speaking_rate: float
    request_id: str
    deadline: float  # time.monotonic() by which everything must be done
    scope: CancelScope = field(default_factory=CancelScope)


@dataclass
class AudioPiece:
    """Native-rate int16 PCM belonging to one sentence."""

    sentence_index: int
    pcm: np.ndarray


class Pipeline:
    """Runs jobs against the stage clients."""

    def __init__(self, clients: StageClients, stream_chunk_frames: int = 48) -> None:
        self._clients = clients
        self._chunk_frames = stream_chunk_frames

    @staticmethod
    def _remaining(job: Job) -> float:
        left = job.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline exceeded before the synthesis finished")
        return left

    def _analyze(self, job: Job) -> frontend_pb2.AnalyzeResponse:
        request = frontend_pb2.AnalyzeRequest(
            text=job.text,
            voice=job.voice,
            speaking_rate=job.speaking_rate,
            request_id=job.request_id,
        )
        return self._clients.analyze(request, self._remaining(job))

    def _generate_request(
        self, job: Job, sentence: frontend_pb2.Sentence
    ) -> acoustic_pb2.GenerateRequest:
        return acoustic_pb2.GenerateRequest(
            features=sentence.features,
            durations=sentence.durations,
            voice=job.voice,
            chunk_frames=self._chunk_frames,
            request_id=job.request_id,
        )

    def synthesize(self, job: Job) -> Iterator[AudioPiece]:
        """Unary path: one whole mel and one vocoder call per sentence."""
        for sentence in self._analyze(job).sentences:
            mel = self._clients.generate(
                self._generate_request(job, sentence), self._remaining(job)
            ).mel
            audio = self._clients.vocode(
                vocoder_pb2.VocodeRequest(mel=mel, voice=job.voice, request_id=job.request_id),
                self._remaining(job),
            ).audio
            yield AudioPiece(sentence.index, _pcm(audio))

    def synthesize_stream(self, job: Job) -> Iterator[AudioPiece]:
        """Streaming path: mel chunks flow into the vocoder as the acoustic stage makes them."""
        for sentence in self._analyze(job).sentences:
            yield from self._stream_sentence(job, sentence)

    def _stream_sentence(self, job: Job, sentence: frontend_pb2.Sentence) -> Iterator[AudioPiece]:
        mel_chunks = job.scope.add(
            self._clients.generate_stream(
                self._generate_request(job, sentence), self._remaining(job)
            )
        )
        feeder = _Feeder(mel_chunks, job)
        audio_chunks = job.scope.add(
            self._clients.vocode_stream(iter(feeder), self._remaining(job))
        )
        try:
            for chunk in audio_chunks:
                yield AudioPiece(sentence.index, _pcm(chunk.audio))
        except VoxlineError:
            # If the acoustic stream broke, the vocoder only saw its request stream cancelled:
            # report the acoustic stage's error, which is the real cause.
            feeder.raise_if_failed()
            raise
        finally:
            # No-ops when both calls completed; otherwise stop the upstream work now.
            audio_chunks.cancel()
            mel_chunks.cancel()
        feeder.raise_if_failed()


class _Feeder:
    """Turns acoustic mel chunks into vocoder requests, remembering an upstream failure.

    gRPC consumes a request iterator on its own thread and swallows its exceptions (the call
    is just cancelled), so the error is kept here for the gateway to report.
    """

    def __init__(self, mel_chunks: UpstreamStream, job: Job) -> None:
        self._mel_chunks = mel_chunks
        self._job = job
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[vocoder_pb2.VocodeRequest]:
        try:
            for chunk in self._mel_chunks:
                yield vocoder_pb2.VocodeRequest(
                    mel=chunk.mel, voice=self._job.voice, request_id=self._job.request_id
                )
        except BaseException as exc:
            with self._lock:
                self._error = exc
            raise

    def raise_if_failed(self) -> None:
        with self._lock:
            error = self._error
        if isinstance(error, VoxlineError):
            raise error


def _pcm(tensor_message: object) -> np.ndarray:
    audio = from_proto(tensor_message, name="audio", ndim=1, dtypes=(torch.int16,))  # type: ignore[arg-type]
    return audio.numpy()
