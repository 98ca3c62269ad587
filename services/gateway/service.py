"""The gateway: Voxline's public Synthesizer API, composed from the three stages."""

from __future__ import annotations

import logging
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Span
from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from services.gateway.admission import Admission, AdmissionConfig
from services.gateway.audio import StreamResampler, resample
from services.gateway.auth import BearerTokenInterceptor, load_token
from services.gateway.catalog import VoiceCatalog
from services.gateway.deadlines import (
    CallLimits,
    CallWatch,
    FirstMessage,
    MessageReader,
    ReadDeadlineInterceptor,
    Watchdog,
)
from services.gateway.pipeline import AudioPiece, Job, Pipeline
from services.gateway.playback import ListenerClock
from services.gateway.stages import StageClients
from services.gateway.text_stream import TextStreamInput, read_config
from services.gateway.unary import DEFAULT_MAX_UNARY_BYTES, UnaryAnswer, on_delivery
from services.gateway.validation import Options, max_request_bytes, validate, validate_options
from services.runtime.config import (
    DEFAULT_PORTS,
    MAX_MESSAGE_BYTES,
    add_dataclass_flags,
    build_parser,
    flag_field,
    from_namespace,
    service_config,
)
from services.runtime.phases import phase_timeline
from services.runtime.rpc import rpc_method
from services.runtime.server import serve
from services.runtime.stage_runtime import StageRuntime
from services.runtime.voice import MAX_TEXT_CHARS, STREAM_WINDOW_FRAMES
from services.runtime.wav import wav_bytes
from telemetry import SynthesisMetrics, names

log = logging.getLogger("voxline.gateway")

T = TypeVar("T")

LINEAR16 = synthesizer_pb2.AUDIO_ENCODING_LINEAR16


class SynthesizerServicer(synthesizer_pb2_grpc.SynthesizerServicer):
    def __init__(
        self,
        runtime: StageRuntime,
        pipeline: Pipeline,
        catalog: VoiceCatalog,
        max_text_chars: int,
        timeout_s: float,
        admission: Admission,
        limits: CallLimits,
        first_message: FirstMessage,
    ) -> None:
        self.runtime = runtime
        self._limits = limits
        self._first_message = first_message
        self._watchdog = Watchdog(limits.send_s)
        self._admission = admission
        self._pipeline = pipeline
        self._catalog = catalog
        self._max_text_chars = max_text_chars
        self._timeout_s = timeout_s
        self._metrics = SynthesisMetrics(runtime.telemetry.meter)

    def _job(
        self,
        request: synthesizer_pb2.SynthesizeRequest,
        context: grpc.ServicerContext,
        state: RequestState,
        *,
        text_follows: bool = False,
    ) -> tuple[Job, Options]:
        """Validate the request, then admit it (a slot held until the synthesis ends).
        `text_follows`: the text arrives later (a text stream checks it as it comes)."""
        with self.runtime.phase(names.PHASE_PREPROCESS):
            voices = self._catalog.facts()
            if text_follows:
                options = validate_options(request, voices)
            else:
                options = validate(request, self._max_text_chars, voices)
        remaining = context.time_remaining()
        budget = self._timeout_s if remaining is None else min(remaining, self._timeout_s)
        deadline = time.monotonic() + budget
        state.watch = state.hold(self._watchdog.watch(context, deadline))
        with self.runtime.phase(names.PHASE_QUEUE):
            state.hold(self._admission.slot(deadline, context.is_active))
        job = Job(
            text=request.text,
            voice=options.voice.name,
            speaking_rate=options.speaking_rate,
            request_id=request.request_id or uuid.uuid4().hex,
            deadline=deadline,
            priority=options.priority,
            seconds_per_frame=options.voice.seconds_per_frame,
            speaker_id=options.speaker_id,
            seed=options.seed,
        )
        return job, options

    def _voice_label(self, request: synthesizer_pb2.SynthesizeRequest) -> str:
        """The voice as a metric label: a served voice name, else "other" (bounded)."""
        if not request.voice:  # never waits: this runs when the request ends, failed or not
            return self._catalog.cached_default_voice() or names.VOICE_OTHER
        known = self._catalog.cached_names()
        return request.voice if request.voice in known else names.VOICE_OTHER

    @contextmanager
    def _synthesis(
        self,
        request: synthesizer_pb2.SynthesizeRequest,
        method: str,
        text: TextProgress | None = None,
    ) -> Iterator[RequestState]:
        """The `voxline.synthesis` span around one request, and its end-to-end metrics.
        `text`: how the text arrives (None: whole, in `request`)."""
        state = RequestState(time.perf_counter(), text or WholeText(len(request.text)))
        state.root = trace.get_current_span()
        attributes = {
            names.ATTR_SYNTHESIS_METHOD: method,
            names.ATTR_STAGE: names.STAGE_GATEWAY,
        }
        with (
            self.runtime.tracer.start_as_current_span(
                names.SPAN_SYNTHESIS, attributes=attributes, record_exception=False
            ) as span,
            # A stream's per-chunk phases go onto this span, not one child span each.
            phase_timeline(span, names.STAGE_GATEWAY)
            if method != names.SYNTHESIS_METHOD_UNARY
            else nullcontext(),
            ExitStack() as resources,
        ):
            state.span, state.resources = span, resources
            ok = False
            try:
                yield state
                ok = True
            finally:
                voice = self._voice_label(request)
                span.set_attribute(names.ATTR_VOICE, voice)
                span.set_attribute(names.ATTR_PRIORITY, state.priority)
                if state.audio_s is not None:
                    span.set_attribute(names.ATTR_AUDIO_DURATION, state.audio_s)
                characters = state.text.characters
                span.set_attribute(names.ATTR_TEXT_LENGTH, characters)
                self._metrics.record_request(
                    voice=voice,
                    method=method,
                    outcome=names.OUTCOME_OK if ok else names.OUTCOME_ERROR,
                    duration_s=time.perf_counter() - state.start,
                    audio_s=state.audio_s,
                    characters=characters,
                    priority=state.priority,
                )

    @rpc_method
    def Synthesize(
        self, request: synthesizer_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> synthesizer_pb2.SynthesizeResponse:
        with self._synthesis(request, names.SYNTHESIS_METHOD_UNARY) as state:
            job, options = self._job(request, context, state)
            sample_rate = options.sample_rate
            state.priority = job.priority.label
            # A caller that goes away (or whose deadline passes) cancels the stage calls.
            context.add_callback(job.scope.cancel_all)
            state.span.set_attribute(names.ATTR_SAMPLE_RATE, sample_rate)
            native = options.voice.sample_rate_hz
            # An answer over --max-unary-bytes is refused once the frontend has planned it.
            answer = UnaryAnswer(native, options.voice.hop_length, sample_rate, job.request_id)
            pieces = [p.pcm for p in self._pipeline.synthesize(job, answer)]
            with self.runtime.phase(names.PHASE_POSTPROCESS):
                pcm = resample(np.concatenate(pieces), native, sample_rate)
                audio = wav_bytes(pcm, sample_rate)
            state.audio_s = len(pcm) / sample_rate
        response = synthesizer_pb2.SynthesizeResponse(
            audio=audio,
            sample_rate_hz=sample_rate,
            duration_seconds=state.audio_s,
            encoding=LINEAR16,
            request_id=job.request_id,
        )

        # gRPC sends the answer after this returns: "synthesized" only once it went out.
        def ended(delivered: bool) -> None:
            if delivered:
                self._log(job, names.SYNTHESIS_METHOD_UNARY, state)
            else:
                self._undelivered(request, state, job.request_id, response.ByteSize())

        on_delivery(context, ended)
        return response

    @rpc_method
    def SynthesizeStream(
        self, request: synthesizer_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> Iterator[synthesizer_pb2.SynthesizeStreamResponse]:
        method = names.SYNTHESIS_METHOD_STREAM
        with self._synthesis(request, method) as state:
            job, options = self._job(request, context, state)
            pieces = self._pipeline.synthesize_stream(job)
            yield from self._stream(request, context, job, options, state, method, pieces)
        self._log(job, method, state)

    @rpc_method
    def SynthesizeTextStream(
        self,
        messages: Iterator[synthesizer_pb2.SynthesizeTextStreamRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[synthesizer_pb2.SynthesizeStreamResponse]:
        reader = MessageReader(messages)
        config = read_config(reader, self._first_message)
        fragments = reader.messages(self._limits.text_gap_s, "text fragment, flush or end")
        text = TextStreamInput(config.text, fragments, self._max_text_chars)
        method = names.SYNTHESIS_METHOD_TEXT_STREAM
        with self._synthesis(config, method, text) as state:
            job, options = self._job(config, context, state, text_follows=True)
            pieces = self._pipeline.synthesize_stream(job, iter(text))
            yield from self._stream(
                config, context, job, options, state, method, pieces, text.raise_if_failed
            )
        self._log(job, method, state)

    def _stream(
        self,
        request: synthesizer_pb2.SynthesizeRequest,
        context: grpc.ServicerContext,
        job: Job,
        options: Options,
        state: RequestState,
        method: str,
        pieces: Iterator[AudioPiece],
        check: Callable[[], None] = lambda: None,
    ) -> Iterator[synthesizer_pb2.SynthesizeStreamResponse]:
        """Send a stream's audio as it comes: resampled, timed (first audio, stalls).
        `check` runs before each piece is sent (a text stream's input errors end it at once)."""
        sample_rate = options.sample_rate
        state.priority = job.priority.label
        context.add_callback(job.scope.cancel_all)
        state.span.set_attribute(names.ATTR_SAMPLE_RATE, sample_rate)
        resampler = StreamResampler(options.voice.sample_rate_hz, sample_rate)
        listener = job.listener = ListenerClock(sample_rate)
        samples = 0
        last_index = 0
        for piece in pieces:
            check()
            with self.runtime.phase(names.PHASE_POSTPROCESS):
                pcm = resampler.process(piece.pcm)
                message = self._chunk(pcm, sample_rate, piece.sentence_index, job.request_id)
            last_index = piece.sentence_index
            if not len(pcm):
                continue
            if state.first_audio_s is None:
                start = state.text.first_complete or state.start
                state.first_audio_s = time.perf_counter() - start
                event = {"voxline.time_to_first_audio": state.first_audio_s}
                state.root.add_event(names.EVENT_FIRST_AUDIO, event)
                state.span.add_event(names.EVENT_FIRST_AUDIO, event)
                self._metrics.record_time_to_first_audio(
                    state.first_audio_s,
                    voice=self._voice_label(request),
                    method=method,
                    priority=state.priority,
                    characters=state.text.characters,
                )
            samples += len(pcm)
            listener.on_send(len(pcm))
            with state.watch.sending():
                yield from self.runtime.send(message)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            tail = resampler.process(np.zeros(0, dtype=np.int16), last=True)
        if len(tail):
            samples += len(tail)
            listener.on_send(len(tail))
            with state.watch.sending():
                yield from self.runtime.send(
                    self._chunk(tail, sample_rate, last_index, job.request_id)
                )
        state.audio_s = samples / sample_rate
        state.span.set_attribute(names.ATTR_STALL_DURATION, listener.stall_s)
        self._metrics.record_stall(
            listener.stall_s,
            voice=self._voice_label(request),
            priority=state.priority,
            characters=state.text.characters,
            method=method,
        )

    def _undelivered(
        self,
        request: synthesizer_pb2.SynthesizeRequest,
        state: RequestState,
        request_id: str,
        size: int,
    ) -> None:
        """A unary answer that gRPC could not deliver: an error in the log, in metrics and as
        an ERROR span in the request's trace (its other spans ended when the handler
        returned, before gRPC sent the answer)."""
        log.error(
            "unary answer not delivered: the call ended cancelled (the caller refused it, e.g. "
            "over its receive limit, left, or its deadline passed)",
            extra={"request_id": request_id, "answer_bytes": size},
        )
        method = names.SYNTHESIS_METHOD_UNARY
        self._metrics.record_undelivered(voice=self._voice_label(request), method=method)
        parent = trace.set_span_in_context(state.root)
        with self.runtime.tracer.start_as_current_span(
            names.SPAN_UNDELIVERED, context=parent, record_exception=False
        ) as span:
            span.set_attribute(names.ATTR_SYNTHESIS_METHOD, method)
            span.set_status(trace.Status(trace.StatusCode.ERROR, "answer not delivered"))

    @staticmethod
    def _log(job: Job, method: str, state: RequestState) -> None:
        elapsed = time.perf_counter() - state.start
        seconds = state.audio_s or 0.0
        log.info(
            "synthesized",
            extra={
                "request_id": job.request_id,
                "method": method,
                "chars": state.text.characters,
                "audio_s": round(seconds, 3),
                "ttfa_s": None if state.first_audio_s is None else round(state.first_audio_s, 3),
                "elapsed_s": round(elapsed, 3),
                "rtf": round(elapsed / seconds, 3) if seconds else None,
            },
        )

    @staticmethod
    def _chunk(
        pcm: np.ndarray, sample_rate: int, sentence_index: int, request_id: str
    ) -> synthesizer_pb2.SynthesizeStreamResponse:
        return synthesizer_pb2.SynthesizeStreamResponse(
            audio=pcm.astype("<i2", copy=False).tobytes(),
            sample_rate_hz=sample_rate,
            encoding=LINEAR16,
            sentence_index=sentence_index,
            request_id=request_id,
        )

    @rpc_method
    def ListVoices(
        self, request: synthesizer_pb2.ListVoicesRequest, context: grpc.ServicerContext
    ) -> synthesizer_pb2.ListVoicesResponse:
        return synthesizer_pb2.ListVoicesResponse(
            voices=self._catalog.voices(), default_voice=self._catalog.default_voice()
        )


class TextProgress(Protocol):
    """How much of a request's text has arrived (a text stream's grows as it comes)."""

    @property
    def characters(self) -> int: ...

    @property
    def first_complete(self) -> float | None:
        """`time.perf_counter()` when the first speakable text was complete (None: at the
        request's start): time to first audio counts from there."""
        ...


@dataclass(frozen=True)
class WholeText:
    """The text of a unary or streamed request: all of it there from the start."""

    characters: int
    first_complete: float | None = None


@dataclass
class RequestState:
    """What one request's span, metrics and log need at its end, filled in as it runs."""

    start: float
    text: TextProgress
    #: The `voxline.synthesis` span, and the gateway's server span (the trace's root).
    span: Span = trace.INVALID_SPAN
    root: Span = trace.INVALID_SPAN
    priority: str = names.PRIORITY_INTERACTIVE
    first_audio_s: float | None = None
    audio_s: float | None = None
    #: The watchdog's view of the call (a no-op until the request is admitted).
    watch: CallWatch = field(default_factory=lambda: CallWatch(lambda: None, math.inf, math.inf))
    #: Held until the request ends: its admission slot and its watch (set by `_synthesis`).
    resources: ExitStack | None = None

    def hold(self, resource: AbstractContextManager[T]) -> T:
        """Enter `resource` until the request ends."""
        assert self.resources is not None, "inside _synthesis only"
        return self.resources.enter_context(resource)


#: The longest one synthesis may run (`--request-timeout-s`); deployments drain at least this
#: long (k8s/base, tests/test_k8s_manifests.py).
REQUEST_TIMEOUT_S = 120.0

#: Handler threads beyond the admitted and waiting callers: they answer refusals, ListVoices
#: and health at once even when every slot is taken.
REFUSAL_THREADS = 16
#: Callers slow to send their request message that may wait for it at once (each holds a
#: handler thread; more are refused, so they never take the threads above).
LATE_CALLERS = 8


def _stage_address(stage: str) -> Any:
    """The `--<stage>-address` field of GatewayOptions."""
    return flag_field(
        f"127.0.0.1:{DEFAULT_PORTS[stage]}",
        f"{stage} stage target (e.g. dns:///{stage}.voxline.svc:50051)",
    )


@dataclass(frozen=True)
class GatewayOptions:
    """The gateway's own flags (generated by services/runtime/config.py, after the common
    ones); the API token's are ApiTokenFlags."""

    frontend_address: str = _stage_address("frontend")
    acoustic_address: str = _stage_address("acoustic")
    vocoder_address: str = _stage_address("vocoder")
    max_text_chars: int = flag_field(MAX_TEXT_CHARS, "longest accepted text")
    request_timeout_s: float = flag_field(REQUEST_TIMEOUT_S, "upper bound on one synthesis")
    max_unary_bytes: int = flag_field(
        DEFAULT_MAX_UNARY_BYTES,
        "largest Synthesize answer in bytes (default: a gRPC client's default receive "
        "limit); a larger one is refused with INVALID_ARGUMENT before the work",
    )
    stream_chunk_frames: int = flag_field(
        STREAM_WINDOW_FRAMES, "mel frames per acoustic->vocoder chunk"
    )
    #: `--max-active`, `--max-waiting`, `--max-admission-wait-ms`.
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    #: `--request-read-timeout-s`, `--text-gap-timeout-s`, `--send-timeout-s`.
    limits: CallLimits = field(default_factory=CallLimits)


@dataclass(frozen=True)
class ApiTokenFlags:
    """The API token's flags: read once by `main` (services/gateway/auth.py `load_token`),
    never kept in a config or options object (and never in a repr)."""

    api_token: str = flag_field(
        "", "require 'authorization: Bearer <token>' (empty: off)", repr=False
    )
    api_token_file: str = flag_field("", "read the API token from this file (a Secret)")
    production: bool = flag_field(False, "refuse to start without an API token")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("gateway", "Voxline gateway: the public Synthesizer API")
    add_dataclass_flags(parser, GatewayOptions)
    add_dataclass_flags(parser, ApiTokenFlags)
    args = parser.parse_args(argv)
    config = service_config("gateway", parser, args)
    options = from_namespace(GatewayOptions, args)
    config.max_receive_bytes = max_request_bytes(options.max_text_chars)
    if not 0 < options.max_unary_bytes <= MAX_MESSAGE_BYTES:
        parser.error(f"--max-unary-bytes must be 1 to {MAX_MESSAGE_BYTES} (the send limit)")
    admission = options.admission
    # Refusing past capacity must be immediate: enough handler threads (and gRPC's own
    # concurrency limit, the last resort) for the admitted, the waiting and the refused.
    needed = admission.max_active + admission.max_waiting + LATE_CALLERS + REFUSAL_THREADS
    config.workers = max(config.workers, needed)
    config.max_concurrent_rpcs = max(config.max_concurrent_rpcs, 2 * needed)
    limits = options.limits
    first_message = FirstMessage(limits.request_read_s, LATE_CALLERS)
    try:  # the token stays out of the config and options objects (and leaves with `args`)
        flags = from_namespace(ApiTokenFlags, args)
        token = load_token(flags.api_token, flags.api_token_file, production=flags.production)
    except ValueError as exc:
        parser.error(str(exc))
    del args, flags
    clients: list[StageClients] = []
    catalogs: list[VoiceCatalog] = []

    def register(server: grpc.Server, runtime: StageRuntime) -> list[str]:
        # Channels are made here, after telemetry is up, so stage calls are traced.
        stage_clients = StageClients(
            options.frontend_address,
            options.acoustic_address,
            options.vocoder_address,
            wrap=runtime.telemetry.instrument_channel,
            tls=config.client_tls,
        )
        clients.append(stage_clients)
        # Loaded now and refreshed in the background: requests never wait on the stages.
        catalog = VoiceCatalog(stage_clients).start()
        catalogs.append(catalog)
        servicer = SynthesizerServicer(
            runtime,
            Pipeline(stage_clients, options.stream_chunk_frames, options.max_unary_bytes),
            catalog,
            options.max_text_chars,
            options.request_timeout_s,
            Admission(admission),
            limits,
            first_message,
        )
        synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(servicer, server)
        return [synthesizer_pb2.DESCRIPTOR.services_by_name["Synthesizer"].full_name]

    try:
        # The token is checked first: a caller without one never gets to hold a reader.
        auth = [BearerTokenInterceptor(token)] if token else []
        interceptors = [*auth, ReadDeadlineInterceptor(first_message)]
        return serve(config, None, register, extra_interceptors=interceptors)
    finally:
        for catalog in catalogs:
            catalog.stop()
        for c in clients:
            c.close()


if __name__ == "__main__":
    sys.exit(main())
