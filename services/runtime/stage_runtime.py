"""`StageRuntime`: what a servicer needs from the runtime while serving a call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from services.runtime import phases
from services.runtime.config import ServiceConfig
from services.runtime.errors import Unavailable
from services.runtime.scheduler import BatchScheduler, Work, read_hints
from services.runtime.stage import Stage
from telemetry import StageMetrics, Telemetry, names, phase_span

T = TypeVar("T")


class StageRuntime:
    """What a servicer needs from the runtime: readiness, the model scheduler, phases, telemetry."""

    def __init__(self, config: ServiceConfig, stage: Stage | None, telemetry: Telemetry) -> None:
        self.config = config
        self.stage = stage
        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self.metrics = StageMetrics(telemetry.meter, config.service)
        self.scheduler: BatchScheduler[Any, Any] | None = None
        if stage is not None:
            self.scheduler = BatchScheduler(
                config.service,
                stage.execute,
                config.scheduler,
                metrics=self.metrics,
                tracer=self.tracer,
                key_of=stage.batch_key,
                size_of=stage.batch_length,
            )
        self.ready = threading.Event()
        self._model_attributes: dict[str, Any] | None = None
        self._tile_phases = stage is not None

    @property
    def device(self) -> Any:
        return getattr(self.stage, "device", None)

    def require_ready(self) -> None:
        """Refuse calls while the model is still loading (clients should retry)."""
        if not self.ready.is_set():
            raise Unavailable(f"{self.config.service} is still loading its model; retry shortly")

    def playback_start(self, context: grpc.ServicerContext) -> float:
        """When this call's listener would run out of the audio already sent to them
        (`time.monotonic()`): now plus the playback buffer the gateway's hint reports (0
        when absent: the listener is waiting). Add the audio this call has produced so far
        to get a job's urgency (playback-aware earliest deadline first)."""
        return time.monotonic() + read_hints(context.invocation_metadata()).playback_buffer_s

    def infer(
        self, context: grpc.ServicerContext, payload: Any, *, urgency: float | None = None
    ) -> Any:
        """Run one input through the stage's model via the scheduler (batched with others).

        The wait until its batch starts is the `queue` phase; the batch's execution is the
        `inference` phase. The caller's deadline and cancellation reach the queued job.
        `urgency` (a `time.monotonic()` instant by which the output is needed) orders the
        queue; default: now.
        """
        return self.infer_many(context, [payload], [urgency])[0]

    def infer_many(
        self,
        context: grpc.ServicerContext,
        payloads: list[Any],
        urgencies: list[float | None] | None = None,
    ) -> list[Any]:
        """`infer` for several inputs of one request, submitted together (they may share a
        batch with each other and with other requests); outputs in input order."""
        assert self.scheduler is not None, "infer() needs a model stage"
        deadline = _deadline(context)
        urgencies = urgencies or [None] * len(payloads)
        jobs: list[Work[Any, Any]] = []
        try:
            with self.phase(names.PHASE_QUEUE, waiting=self.scheduler.waiting):
                jobs = self.scheduler.submit_many(
                    payloads,
                    urgencies,
                    priority=read_hints(context.invocation_metadata()).priority,
                    deadline=deadline,
                    is_active=context.is_active,
                )
                self.scheduler.wait_started(jobs[0])
            # The jobs may run in several batches, interleaved with other requests' work:
            # each wait for the next job to start is `queue`, each stretch of running is
            # `inference`, so the phases keep telling waiting from computing.
            outputs: list[Any] = []
            while len(outputs) < len(jobs):
                job = jobs[len(outputs)]
                if not job.started.is_set():
                    with self.phase(names.PHASE_QUEUE, waiting=self.scheduler.waiting):
                        self.scheduler.wait_started(job)
                with self.phase(names.PHASE_INFERENCE):
                    outputs.append(self.scheduler.wait_result(job))
                    while len(outputs) < len(jobs) and jobs[len(outputs)].started.is_set():
                        outputs.append(self.scheduler.wait_result(jobs[len(outputs)]))
            return outputs
        except BaseException:
            for job in jobs:  # nothing left queued for a request that failed
                self.scheduler.abandon(job)
            raise

    @contextmanager
    def phase(self, name: str, **attributes: Any) -> Iterator[None]:
        """Run a block as one phase of this stage's work: a child span plus the phase's
        duration histogram (recorded inside the span, so its exemplar names this trace).

        In a model stage the phases of one RPC tile its handler: each phase starts where the
        previous one ended (the first where the server span started), so the few
        microseconds of bookkeeping between phases count towards the next phase and the
        phases add up to the stage's time. The gateway's phases are not contiguous (stage
        calls run between them), so there each phase starts when its block starts.
        Inference on CUDA is synchronised before the span ends, so it measures GPU time.
        `attributes` are sizes and counts only (keys from telemetry.names or short names
        prefixed `voxline.`), never text.
        """
        attrs = {k if "." in k else f"voxline.{k}": v for k, v in attributes.items()}
        device = self.device if name == names.PHASE_INFERENCE else None
        span: Any = None
        try:
            with phase_span(
                self.tracer,
                self.metrics,
                name,
                method=phases.current_method.get(),
                device=device,
                attributes=attrs or None,
                start_time_ns=phases.phase_cursor.get() if self._tile_phases else None,
                timeline=phases.current_timeline.get(),
            ) as span:
                yield
        finally:
            if self._tile_phases:
                phases.phase_cursor.set(getattr(span, "end_time", None) or time.time_ns())

    def annotate(self, attributes: Mapping[str, Any]) -> None:
        """Add bounded attributes (sizes, counts, model facts) to the RPC's server span."""
        phases.server_span.get().set_attributes(dict(attributes))

    def receive(self, iterator: Iterator[T]) -> Iterator[T]:
        """Iterate a request stream, timing each wait for the next message as `transfer`."""
        it = iter(iterator)
        while True:
            with self.phase(names.PHASE_TRANSFER):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def send(self, message: T) -> Iterator[T]:
        """Yield one streamed response, timing flow-control back-pressure as `transfer`.

        Use as `yield from runtime.send(message)`.
        """
        with self.phase(names.PHASE_TRANSFER):
            yield message

    def model_attributes(self) -> dict[str, Any]:
        """Model facts for the server span, once the stage is loaded."""
        if self.stage is None or not self.ready.is_set():
            return {names.ATTR_STAGE: self.config.service}
        if self._model_attributes is None:
            self._model_attributes = self._describe()
        return self._model_attributes

    def _describe(self) -> dict[str, Any]:
        assert self.stage is not None
        d = self.stage.describe()
        return {
            names.ATTR_STAGE: d.stage,
            names.ATTR_MODEL_NAME: d.model_name,
            names.ATTR_MODEL_VERSION: d.model_version,
            names.ATTR_DEVICE: d.device,
            names.ATTR_DTYPE: d.dtype,
        }


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline as a time.monotonic() instant (None: no deadline)."""
    remaining = context.time_remaining()
    # grpc reports "no deadline" as a huge number.
    if remaining is None or remaining > 10 * 365 * 24 * 3600:
        return None
    return time.monotonic() + max(0.0, remaining)
