"""Voxline's metric instruments and the small API services record them through.

All durations are in seconds with explicit bucket boundaries suited to TTS (1 ms .. 30 s),
given as ``explicit_bucket_boundaries_advisory`` so they apply without Views. Exemplars use the
SDK default filter ``trace_based``: a value recorded while a sampled span is current carries
that span's trace and span id, which is why :func:`phase_span` records *inside* its span.

Usage in a stage service (a servicer behind :func:`telemetry.grpc.server_interceptors`,
which counts every RPC -- ``voxline.stage.requests`` / ``active_requests`` -- and sets the
server span's status; the servicer records phases and business attributes only)::

    stage = StageMetrics(telemetry.meter, names.STAGE_ACOUSTIC)
    stage.record_queue(waited_s, method="Synthesize")
    with phase_span(telemetry.tracer, stage, names.PHASE_INFERENCE,
                    method="Synthesize", device=device):  # span + duration histogram
        mel = model(tokens)

Code serving requests without those interceptors counts them itself with
``with stage.track_request("Synthesize") as req: ...`` (never both).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, Status, StatusCode

from telemetry import names

#: Latency buckets in seconds: 1 ms .. 30 s, dense where TTS stages live (10 ms .. 2 s).
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
)
#: Real-time factor (compute time / audio time) buckets: 0.01 .. 10, dense around 0.1 .. 1.
RTF_BUCKETS: tuple[float, ...] = (
    0.01,
    0.02,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)
#: Model batch size buckets (requests per batch).
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)

_GRPC_OK = 0
_GRPC_UNKNOWN = 2


def _check(value: str, allowed: frozenset[str], what: str) -> str:
    # Attribute values must stay bounded: an unknown stage/phase is a programming error.
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")
    return value


def _status_int(code: Any) -> int:
    """grpc.StatusCode or int -> int, without importing grpc here."""
    if code is None:
        return _GRPC_OK
    value = getattr(code, "value", code)
    if isinstance(value, tuple):
        value = value[0]
    return int(value)


class RequestTracker:
    """Handle yielded by :meth:`StageMetrics.track_request`; set the final status code."""

    __slots__ = ("code",)

    def __init__(self) -> None:
        #: Numeric gRPC status code recorded at the end (default OK; UNKNOWN on exception).
        self.code: int | None = None

    def set_code(self, code: Any) -> None:
        """Set the outcome: a ``grpc.StatusCode`` or its integer value."""
        self.code = _status_int(code)


class StageMetrics:
    """Instruments of one pipeline stage (``voxline.stage.*``), created once per service.

    Attributes recorded: ``voxline.stage`` always; ``voxline.phase`` and ``rpc.method`` on
    durations; ``voxline.outcome`` and ``rpc.grpc.status_code`` on request counts.
    """

    def __init__(self, meter: metrics.Meter, stage: str) -> None:
        self.stage = _check(stage, names.STAGES, "stage")
        self._duration = meter.create_histogram(
            names.METRIC_STAGE_DURATION,
            unit=names.UNIT_SECONDS,
            description="Time spent in one phase (queue, preprocess, inference, postprocess) "
            "of a pipeline stage.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._queue = meter.create_histogram(
            names.METRIC_STAGE_QUEUE_DURATION,
            unit=names.UNIT_SECONDS,
            description="Time a request waited before a stage started working on it.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._active = meter.create_up_down_counter(
            names.METRIC_STAGE_ACTIVE_REQUESTS,
            unit=names.UNIT_REQUESTS,
            description="Requests currently being handled by a stage.",
        )
        self._requests = meter.create_counter(
            names.METRIC_STAGE_REQUESTS,
            unit=names.UNIT_REQUESTS,
            description="Requests handled by a stage, by outcome and gRPC status code.",
        )
        self._batch = meter.create_histogram(
            names.METRIC_STAGE_BATCH_SIZE,
            unit=names.UNIT_REQUESTS,
            description="Number of requests in one model batch.",
            explicit_bucket_boundaries_advisory=BATCH_SIZE_BUCKETS,
        )
        self._stage_attrs = {names.ATTR_STAGE: self.stage}

    def _attrs(self, method: str | None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        attrs: dict[str, Any] = dict(self._stage_attrs)
        if method is not None:
            attrs[names.ATTR_METHOD] = method
        if extra:
            attrs.update(extra)
        return attrs

    def record_phase(self, phase: str, seconds: float, *, method: str | None = None) -> None:
        """Record ``seconds`` spent in ``phase`` (``voxline.stage.duration``).

        ``phase="queue"`` also records ``voxline.stage.queue.duration``, so the phases of
        ``voxline.stage.duration`` always add up to the stage's whole time.
        """
        _check(phase, names.PHASES, "phase")
        attrs = self._attrs(method, {names.ATTR_PHASE: phase})
        self._duration.record(seconds, attrs)
        if phase == names.PHASE_QUEUE:
            self._queue.record(seconds, self._attrs(method))

    def record_queue(self, seconds: float, *, method: str | None = None) -> None:
        """Record queueing time; same as ``record_phase("queue", seconds, method=...)``."""
        self.record_phase(names.PHASE_QUEUE, seconds, method=method)

    def record_batch_size(self, size: int, *, method: str | None = None) -> None:
        """Record the number of requests in one model batch (``voxline.stage.batch.size``)."""
        self._batch.record(size, self._attrs(method))

    def record_request(self, method: str, code: Any = _GRPC_OK) -> None:
        """Count one finished request with its gRPC status (``voxline.stage.requests``)."""
        status = _status_int(code)
        self._requests.add(
            1,
            self._attrs(
                method,
                {
                    names.ATTR_OUTCOME: names.OUTCOME_OK
                    if status == _GRPC_OK
                    else names.OUTCOME_ERROR,
                    names.ATTR_RPC_GRPC_STATUS_CODE: status,
                },
            ),
        )

    def request_started(self, method: str) -> None:
        """Count a request as active (``voxline.stage.active_requests`` +1); pair it with
        exactly one :meth:`request_finished`."""
        self._active.add(1, self._attrs(method))

    def request_finished(self, method: str, code: Any = _GRPC_OK) -> None:
        """The end of a request :meth:`request_started` counted: no longer active, and
        counted once by outcome and status (:meth:`record_request`).

        The gRPC server interceptor (``telemetry.grpc``) calls the pair for every RPC a
        stage serves; a servicer never does (docs/telemetry.md, "Who records what").
        """
        self._active.add(-1, self._attrs(method))
        self.record_request(method, code)

    @contextmanager
    def track_request(self, method: str) -> Iterator[RequestTracker]:
        """:meth:`request_started` / :meth:`request_finished` around a block, for code that
        serves requests *without* :func:`telemetry.grpc.server_interceptors` (which already
        counts every RPC: never both for one request).

        The status is the tracker's :meth:`RequestTracker.set_code` value, else OK, or
        UNKNOWN if the block raised (set the code before ``context.abort()`` to keep it).
        """
        tracker = RequestTracker()
        self.request_started(method)
        try:
            yield tracker
        except BaseException:
            if tracker.code is None or tracker.code == _GRPC_OK:
                tracker.code = _GRPC_UNKNOWN
            raise
        finally:
            self.request_finished(method, tracker.code if tracker.code is not None else _GRPC_OK)


class SynthesisMetrics:
    """Gateway end-to-end instruments (``voxline.synthesis.*``).

    ``voice`` must be a configured voice id (or :data:`telemetry.names.VOICE_OTHER`);
    ``method`` is ``unary`` or ``stream``; ``outcome`` ``ok`` or ``error``; ``priority``
    ``interactive`` (the default) or ``bulk``; ``characters`` (the text's length) is recorded
    only as its bounded class (``short``/``medium``/``long``).
    """

    def __init__(self, meter: metrics.Meter) -> None:
        self._duration = meter.create_histogram(
            names.METRIC_SYNTHESIS_DURATION,
            unit=names.UNIT_SECONDS,
            description="End-to-end time to synthesise one request at the gateway.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._ttfa = meter.create_histogram(
            names.METRIC_SYNTHESIS_TIME_TO_FIRST_AUDIO,
            unit=names.UNIT_SECONDS,
            description="Time from request arrival to the first audio bytes sent.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._rtf = meter.create_histogram(
            names.METRIC_SYNTHESIS_REAL_TIME_FACTOR,
            unit=names.UNIT_RATIO,
            description="Synthesis time divided by the duration of the audio produced.",
            explicit_bucket_boundaries_advisory=RTF_BUCKETS,
        )
        self._stall = meter.create_histogram(
            names.METRIC_SYNTHESIS_STALL_DURATION,
            unit=names.UNIT_SECONDS,
            description="Time a stream's listener, playing in real time from the first "
            "audio, would have been left without audio.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._audio = meter.create_counter(
            names.METRIC_SYNTHESIS_AUDIO_DURATION,
            unit=names.UNIT_SECONDS,
            description="Seconds of audio produced.",
        )
        self._chars = meter.create_counter(
            names.METRIC_SYNTHESIS_CHARACTERS,
            unit=names.UNIT_CHARACTERS,
            description="Input characters synthesised (a count only; text is never recorded).",
        )
        self._undelivered = meter.create_counter(
            names.METRIC_SYNTHESIS_UNDELIVERED,
            unit=names.UNIT_REQUESTS,
            description="Unary answers synthesised but not delivered: the call ended as gRPC "
            "sent them (the caller refused the size, left, or its deadline passed).",
        )

    @staticmethod
    def _attrs(
        voice: str,
        method: str,
        outcome: str | None = None,
        priority: str | None = None,
        characters: int | None = None,
    ) -> dict[str, Any]:
        attrs = {
            names.ATTR_VOICE: voice,
            names.ATTR_SYNTHESIS_METHOD: _check(method, names.SYNTHESIS_METHODS, "method"),
            names.ATTR_PRIORITY: _check(
                priority or names.PRIORITY_INTERACTIVE, names.PRIORITIES, "priority"
            ),
        }
        if characters is not None:
            attrs[names.ATTR_TEXT_LENGTH_CLASS] = names.text_length_class(characters)
        if outcome is not None:
            attrs[names.ATTR_OUTCOME] = _check(outcome, names.OUTCOMES, "outcome")
        return attrs

    def record_time_to_first_audio(
        self,
        seconds: float,
        *,
        voice: str,
        method: str,
        priority: str | None = None,
        characters: int | None = None,
    ) -> None:
        """Record TTFA as soon as the first audio is sent (inside the request's span)."""
        self._ttfa.record(
            seconds, self._attrs(voice, method, priority=priority, characters=characters)
        )

    def record_stall(
        self,
        seconds: float,
        *,
        voice: str,
        priority: str | None = None,
        characters: int | None = None,
        method: str = names.SYNTHESIS_METHOD_STREAM,
    ) -> None:
        """Record how long a finished stream's listener was left without audio."""
        attrs = self._attrs(voice, method, priority=priority, characters=characters)
        self._stall.record(seconds, attrs)

    def record_undelivered(self, *, voice: str, method: str) -> None:
        """Count one answer that was made but never reached its caller."""
        self._undelivered.add(1, self._attrs(voice, method))

    def record_request(
        self,
        *,
        voice: str,
        method: str,
        outcome: str,
        duration_s: float,
        audio_s: float | None = None,
        characters: int | None = None,
        priority: str | None = None,
    ) -> None:
        """Record one finished synthesis: duration, and if audio was produced, RTF, audio
        seconds and characters (counted for ``ok`` and ``error`` alike: work was done)."""
        attrs = self._attrs(voice, method, outcome, priority, characters)
        self._duration.record(duration_s, attrs)
        if audio_s is not None and audio_s > 0:
            self._rtf.record(duration_s / audio_s, attrs)
            self._audio.add(audio_s, attrs)
        if characters:
            self._chars.add(characters, attrs)


def cuda_synchronize_if_needed(device: Any) -> None:
    """Wait for queued CUDA work on ``device`` so a timing or span end includes it.

    No-op for CPU devices, ``None``, or when torch is not imported / CUDA not initialised
    (never imports torch nor initialises CUDA just to find out). Accepts ``torch.device``,
    ``"cuda"``, ``"cuda:1"``, ``"cpu"``.
    """
    if device is None:
        return
    device_type = getattr(device, "type", None) or str(device).split(":", 1)[0]
    if device_type != "cuda":
        return
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize(device)
    except Exception:  # timing helper: never fail the inference path
        return


@dataclass
class PhaseInterval:
    """One run of a phase kept in a :class:`PhaseTimeline` (``time.time_ns()`` instants; the
    same ``start_time``/``end_time`` names as an SDK span)."""

    phase: str
    start_time: int
    end_time: int | None = None


class PhaseTimeline:
    """The phases of one streaming RPC, kept as intervals and written onto one span at its end.

    A stream repeats its phases per chunk (queue, inference, transfer for every window);
    one child span each would make a long text export thousands of spans. The timeline keeps
    them as ``[start_offset_us, duration_us]`` pairs per phase (attribute
    :func:`telemetry.names.phase_intervals_attribute`), at most
    :data:`telemetry.names.MAX_PHASE_INTERVALS` per phase, so trace readers (``voxline
    trace``) can rebuild every phase from a single span. Thread-safe.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._intervals: dict[str, list[int]] = {}
        self._dropped = 0
        self._lock = threading.Lock()

    def add(self, phase: str, start_ns: int, end_ns: int) -> None:
        """Record one run of ``phase`` (``time.time_ns()`` instants)."""
        with self._lock:
            pairs = self._intervals.setdefault(phase, [])
            if len(pairs) >= 2 * names.MAX_PHASE_INTERVALS:
                self._dropped += 1
                return
            pairs.append(start_ns)
            pairs.append(max(end_ns - start_ns, 0))

    def write_to(self, span: Span) -> None:
        """Set the timeline's attributes on ``span`` (still recording), offsets from its start."""
        origin = getattr(span, "start_time", None)
        with self._lock:
            if not self._intervals:
                return
            if origin is None:
                origin = min(pairs[0] for pairs in self._intervals.values())
            attributes: dict[str, Any] = {names.ATTR_STAGE: self.stage}
            for phase, pairs in self._intervals.items():
                attributes[names.phase_intervals_attribute(phase)] = [
                    (value - origin if i % 2 == 0 else value) // 1000
                    for i, value in enumerate(pairs)
                ]
            if self._dropped:
                attributes[names.ATTR_PHASE_INTERVALS_DROPPED] = self._dropped
        span.set_attributes(attributes)


@contextmanager
def phase_span(
    tracer: trace.Tracer,
    stage: StageMetrics,
    phase: str,
    *,
    method: str | None = None,
    device: Any = None,
    attributes: Mapping[str, Any] | None = None,
    start_time_ns: int | None = None,
    timeline: PhaseTimeline | None = None,
) -> Iterator[Span | PhaseInterval]:
    """Run a block as phase ``phase`` of ``stage``: child span ``"<stage>.<phase>"`` plus a
    ``voxline.stage.duration`` sample recorded *inside* the span (exemplar -> this trace).

    ``device``: for a CUDA device the block's queued GPU work is awaited
    (:func:`cuda_synchronize_if_needed`) before the clock stops and the span ends, so the
    measured time is GPU time, not kernel-launch time. ``attributes``: extra span attributes
    — bounded, non-text values only (counts, sizes, device), never input text.
    ``start_time_ns``: start the phase at this earlier ``time.time_ns()`` instant instead of
    now (callers that tile a handler into back-to-back phases pass the previous phase's end,
    so the bookkeeping between phases is attributed to the next phase). An exception
    marks the span ERROR (type only, not its message) and is re-raised; the duration is
    recorded either way.

    ``timeline``: record the phase's interval there instead of starting a span (streaming
    RPCs, whose phases repeat per chunk); the block then gets a :class:`PhaseInterval`.
    """
    _check(phase, names.PHASES, "phase")
    if timeline is not None:
        interval = PhaseInterval(phase, time.time_ns() if start_time_ns is None else start_time_ns)
        try:
            yield interval
            cuda_synchronize_if_needed(device)
        finally:
            interval.end_time = time.time_ns()
            stage.record_phase(
                phase, (interval.end_time - interval.start_time) / 1e9, method=method
            )
            timeline.add(phase, interval.start_time, interval.end_time)
        return
    span_attrs: dict[str, Any] = {names.ATTR_STAGE: stage.stage, names.ATTR_PHASE: phase}
    if method is not None:
        span_attrs[names.ATTR_METHOD] = method
    if device is not None:
        span_attrs[names.ATTR_DEVICE] = str(device)
    if attributes:
        span_attrs.update(attributes)
    start_ns = time.time_ns() if start_time_ns is None else start_time_ns
    span = tracer.start_span(
        names.phase_span_name(stage.stage, phase),
        attributes=span_attrs,
        start_time=start_ns,
        record_exception=False,  # the message may quote user text
        set_status_on_exception=False,
    )
    with trace.use_span(span, end_on_exit=False):
        try:
            yield span
            cuda_synchronize_if_needed(device)
        except BaseException as exc:
            span.set_attribute(names.ATTR_ERROR_TYPE, type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            raise
        finally:
            end_ns = time.time_ns()
            # Recorded while the span is still current, so the exemplar carries its trace.
            stage.record_phase(phase, (end_ns - start_ns) / 1e9, method=method)
            span.end(end_time=end_ns)
