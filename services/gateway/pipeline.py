"""Orchestration of one synthesis across the three stages.

Unary: frontend -> (per sentence) acoustic -> vocoder, audio concatenated. The frontend's
plan fixes the answer's size: one that would pass `--max-unary-bytes` is refused before the
acoustic stage runs (services/gateway/unary.py).
Streaming: frontend, then per sentence the acoustic stage streams mel chunks straight into
a bidirectional vocoder stream, so the vocoder starts on the first mel chunk of the first
sentence and audio reaches the client while later chunks are still being made. The next
sentence's calls start while the current one is still streaming (a lookahead of
`LOOKAHEAD_SENTENCES`): its mel is made and its first windows vocoded before the listener
needs them. gRPC flow control bounds how far ahead it runs.

Every stage call carries the request's scheduling hints: its priority class, and how much
audio its listener will have buffered when the call's output is first needed, so the stages
serve first the work whose listener would run dry first.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from voxline.v1 import acoustic_pb2, frontend_pb2, vocoder_pb2

from services.gateway.playback import ListenerClock
from services.gateway.stages import CancelScope, StageClients, UpstreamStream
from services.gateway.unary import DEFAULT_MAX_UNARY_BYTES, UnaryAnswer
from services.runtime.errors import DeadlineExceeded, InvalidArgument, VoxlineError
from services.runtime.scheduler import Hints, Priority
from services.runtime.voice import MAX_AUDIO_SECONDS, MAX_SENTENCES, STREAM_WINDOW_FRAMES
from services.runtime.wire import pcm_from_proto
from telemetry.context import wrap_with_context

#: Sentences whose stage calls run ahead of the one being streamed to the caller.
LOOKAHEAD_SENTENCES = 1
#: Seeds are 63-bit; a text stream's segment k uses seed + k * stride (an odd constant, so
#: segments get distinct seeds).
_SEED_RANGE = 1 << 63
_SEED_STRIDE = 0x9E3779B97F4A7C15


@dataclass
class Job:
    """A validated synthesis request (the text is only ever sent on to the frontend)."""

    text: str
    voice: str
    speaking_rate: float
    request_id: str
    deadline: float  # time.monotonic() by which everything must be done
    priority: Priority = Priority.INTERACTIVE
    #: Audio seconds per frame of the voice's frame-rate features (hop / sample rate).
    seconds_per_frame: float = 256 / 22050
    speaker_id: int = 0
    #: Seed of the voice's sampling noise (VITS voices; see SynthesizeRequest.seed).
    seed: int = 0
    scope: CancelScope = field(default_factory=CancelScope)
    #: The stream's listener (set by the gateway for streams): when playback started.
    listener: ListenerClock | None = None

    def hints(self, audio_before_s: float = 0.0) -> Hints:
        """Hints for a stage call whose output starts `audio_before_s` seconds into this
        request's audio: the listener's playback buffer at that point (before any audio
        went out, playback is taken to start now: the listener is waiting)."""
        now = time.monotonic()
        clock = self.listener
        if clock is None or clock.first_audio is None:
            start = now
        else:  # playback began then, and paused for every stall since
            start = clock.first_audio + clock.stall_s
        return Hints(self.priority, max(0.0, start + audio_before_s - now))


@dataclass
class AudioPiece:
    """Native-rate int16 PCM belonging to one sentence."""

    sentence_index: int
    pcm: np.ndarray


class Pipeline:
    """Runs jobs against the stage clients."""

    def __init__(
        self,
        clients: StageClients,
        stream_chunk_frames: int = STREAM_WINDOW_FRAMES,
        max_unary_bytes: int = DEFAULT_MAX_UNARY_BYTES,
    ) -> None:
        self._clients = clients
        self._chunk_frames = stream_chunk_frames
        #: The largest unary answer (a serialized SynthesizeResponse) made (`--max-unary-bytes`).
        self.max_unary_bytes = max_unary_bytes

    @staticmethod
    def _remaining(job: Job) -> float:
        left = job.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline exceeded before the synthesis finished")
        return left

    @staticmethod
    def _analyze_request(
        job: Job, text: str | None = None, segment: int = 0
    ) -> frontend_pb2.AnalyzeRequest:
        """The frontend call for the job's text (or segment number `segment` of a text
        stream: each segment's sentences get their own seeds)."""
        return frontend_pb2.AnalyzeRequest(
            text=job.text if text is None else text,
            voice=job.voice,
            speaking_rate=job.speaking_rate,
            request_id=job.request_id,
            speaker_id=job.speaker_id,
            seed=(job.seed + segment * _SEED_STRIDE) % _SEED_RANGE,
        )

    def _generate_request(
        self, job: Job, sentence: frontend_pb2.Sentence
    ) -> acoustic_pb2.GenerateRequest:
        return acoustic_pb2.GenerateRequest(
            features=sentence.features,
            durations=sentence.durations,
            voice=job.voice,
            chunk_frames=self._chunk_frames,
            request_id=job.request_id,
            speaker_id=job.speaker_id,
            seed=sentence.seed,
        )

    @staticmethod
    def _vocode_request(job: Job, mel: Any = None) -> vocoder_pb2.VocodeRequest:
        return vocoder_pb2.VocodeRequest(
            mel=mel, voice=job.voice, request_id=job.request_id, speaker_id=job.speaker_id
        )

    def synthesize(self, job: Job, answer: UnaryAnswer | None = None) -> Iterator[AudioPiece]:
        """Unary path: one whole mel and one vocoder call per sentence.

        `answer`: the response the audio goes into; one that the frontend's plan makes larger
        than `max_unary_bytes` is refused (InvalidArgument) before any acoustic or vocoder
        call."""
        request = self._analyze_request(job)
        sentences = self._clients.analyze(
            request, self._remaining(job), job.hints(), job.scope
        ).sentences
        budget = RequestBudget(job.seconds_per_frame)
        for sentence in sentences:
            budget.charge(sentence)
        if answer is not None:
            answer.check(sum(s.num_frames for s in sentences), self.max_unary_bytes)
        for sentence, before in zip(sentences, _audio_before(job, sentences), strict=True):
            hints = job.hints(before)
            mel = self._clients.generate(
                self._generate_request(job, sentence), self._remaining(job), hints, job.scope
            ).mel
            audio = self._clients.vocode(
                self._vocode_request(job, mel),
                self._remaining(job),
                hints,
                job.scope,
            ).audio
            yield AudioPiece(sentence.index, _pcm(audio))

    def synthesize_stream(
        self, job: Job, segments: Iterator[str] | None = None
    ) -> Iterator[AudioPiece]:
        """Streaming path: sentences arrive from the frontend one by one (the first before
        the rest are analysed); each one's mel chunks flow into the vocoder as the acoustic
        stage makes them; the next sentence's calls run ahead while the current one streams.

        `segments`: the text arrives in pieces (SynthesizeTextStream) instead of as
        `job.text`; each piece is analysed as soon as it comes.
        """
        if segments is None:
            request = self._analyze_request(job)
            source: Sentences = job.scope.add(
                self._clients.analyze_stream(request, self._remaining(job), job.hints())
            )
        else:
            source = _SegmentedSentences(self, job, segments)
        feed = _SentenceFeed(source, job.deadline)
        budget = RequestBudget(job.seconds_per_frame)
        # The sentence being streamed to the caller first, then up to LOOKAHEAD_SENTENCES
        # whose stage calls already run.
        started: list[_SentenceRun] = []
        audio_before = 0.0

        def top_up(block: bool) -> None:
            # Start the next sentences' calls, up to the lookahead; without `block`, only
            # those the frontend has already sent (audio forwarding must not wait on it).
            nonlocal audio_before
            while len(started) <= LOOKAHEAD_SENTENCES:
                sentence = feed.next(block=block and not started)
                if sentence is None:
                    return
                budget.charge(sentence)
                started.append(self._start_sentence(job, sentence, audio_before))
                audio_before += sentence.num_frames * job.seconds_per_frame

        try:
            top_up(block=True)
            while started:
                for piece in started[0].audio():
                    top_up(block=False)
                    yield piece
                started.pop(0)
                top_up(block=True)
        finally:
            for run in started:  # the caller left or a sentence failed: stop the rest
                run.cancel()
            feed.cancel()

    def _start_sentence(
        self, job: Job, sentence: frontend_pb2.Sentence, audio_before_s: float
    ) -> _SentenceRun:
        hints = job.hints(audio_before_s)
        mel_chunks = job.scope.add(
            self._clients.generate_stream(
                self._generate_request(job, sentence), self._remaining(job), hints
            )
        )
        feeder = _Feeder(mel_chunks, job)
        audio_chunks = job.scope.add(
            self._clients.vocode_stream(iter(feeder), self._remaining(job), hints)
        )
        return _SentenceRun(sentence.index, mel_chunks, feeder, audio_chunks)


@dataclass
class _SentenceRun:
    """One sentence's acoustic stream piped into its vocoder stream, already started."""

    index: int
    mel_chunks: UpstreamStream
    feeder: _Feeder
    audio_chunks: UpstreamStream

    def audio(self) -> Iterator[AudioPiece]:
        try:
            for chunk in self.audio_chunks:
                yield AudioPiece(self.index, _pcm(chunk.audio))
        except VoxlineError:
            # If the acoustic stream broke, the vocoder only saw its request stream cancelled:
            # report the acoustic stage's error, which is the real cause.
            self.feeder.raise_if_failed()
            raise
        finally:
            # No-ops when both calls completed; otherwise stop the upstream work now.
            self.cancel()
        self.feeder.raise_if_failed()

    def cancel(self) -> None:
        self.audio_chunks.cancel()
        self.mel_chunks.cancel()


class Sentences(Protocol):
    """Where a stream's sentences come from: iterable, and cancellable from any thread."""

    def __iter__(self) -> Iterator[frontend_pb2.Sentence]: ...

    def cancel(self) -> None: ...


class _SegmentedSentences:
    """The sentences of text that arrives in segments: each segment is analysed by the
    frontend as it comes (one AnalyzeStream call each); sentence indices run on across
    segments."""

    def __init__(self, pipeline: Pipeline, job: Job, segments: Iterator[str]) -> None:
        self._pipeline = pipeline
        self._job = job
        self._segments = segments
        self._cancelled = threading.Event()
        self._upstream: UpstreamStream | None = None

    def __iter__(self) -> Iterator[frontend_pb2.Sentence]:
        job, clients = self._job, self._pipeline._clients
        index = 0
        for number, segment in enumerate(self._segments):
            if self._cancelled.is_set():
                return
            request = self._pipeline._analyze_request(job, segment, number)
            upstream = self._upstream = job.scope.add(
                clients.analyze_stream(request, self._pipeline._remaining(job), job.hints())
            )
            if self._cancelled.is_set():  # cancelled while this call was being made
                upstream.cancel()
            for sentence in upstream:
                sentence.index = index
                index += 1
                yield sentence

    def cancel(self) -> None:
        self._cancelled.set()
        if self._upstream is not None:
            self._upstream.cancel()


class _SentenceFeed:
    """The frontend's sentence stream, read on its own thread so the gateway can look for
    the next sentence without waiting for it."""

    def __init__(self, upstream: Sentences, deadline: float) -> None:
        self._upstream = upstream
        self._deadline = deadline
        self._queue: queue.Queue[frontend_pb2.Sentence | BaseException | None] = queue.Queue()
        self._ended = False
        # In the request's context, so stage calls made while reading (a text stream's
        # AnalyzeStream per segment) are spans of the request's trace.
        reader = wrap_with_context(self._read)
        threading.Thread(target=reader, name="sentence-feed", daemon=True).start()

    def _read(self) -> None:
        try:
            for sentence in self._upstream:
                self._queue.put(sentence)
            self._queue.put(None)
        except BaseException as exc:
            self._queue.put(exc)

    def next(self, block: bool) -> frontend_pb2.Sentence | None:
        """The next sentence; None at the end, or (not blocking) when none is here yet.
        A frontend failure is raised here."""
        if self._ended:
            return None
        try:
            item = self._queue.get(block=block, timeout=self._timeout() if block else None)
        except queue.Empty:
            if block:  # a text stream's caller may be slow to send: the request's deadline
                raise DeadlineExceeded("deadline exceeded while waiting for the text") from None
            return None
        if item is None:
            self._ended = True
        elif isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    def _timeout(self) -> float:
        return max(self._deadline - time.monotonic(), 0.0)

    def cancel(self) -> None:
        self._upstream.cancel()


class RequestBudget:
    """A request's sentences and audio, refused (INVALID_ARGUMENT) past the per-request
    limits as the frontend reports them: a text stream's segments add up here."""

    def __init__(self, seconds_per_frame: float) -> None:
        self._seconds_per_frame = seconds_per_frame
        self._sentences = 0
        self._frames = 0

    def charge(self, sentence: frontend_pb2.Sentence) -> None:
        """Count `sentence`; InvalidArgument when the request passes a limit."""
        self._sentences += 1
        self._frames += sentence.num_frames
        if self._sentences > MAX_SENTENCES:
            raise InvalidArgument(f"the text has more than {MAX_SENTENCES} sentences (the limit)")
        seconds = self._frames * self._seconds_per_frame
        if seconds > MAX_AUDIO_SECONDS:
            raise InvalidArgument(
                f"the audio would be longer than {MAX_AUDIO_SECONDS:g} s (the limit per "
                "request); send less text or a faster speaking rate"
            )


def _audio_before(job: Job, sentences: Sequence[frontend_pb2.Sentence]) -> list[float]:
    """Seconds of audio that precede each sentence (from the frontend's frame counts)."""
    out, total = [], 0
    for sentence in sentences:
        out.append(total * job.seconds_per_frame)
        total += sentence.num_frames
    return out


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
                yield Pipeline._vocode_request(self._job, chunk.mel)
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
    return pcm_from_proto(tensor_message)  # type: ignore[arg-type]
