"""The per-stage scheduler: a bounded queue in front of the model, and a dynamic batcher.

Every model stage runs its model only through here. A handler *submits* work (pieces of one
request's input, already validated) and waits for it; worker threads, one per model instance,
take the most urgent work, gather others that can run with it, and call the stage's batch-shaped
`execute(inputs) -> outputs` once for all of them (in the spirit of Triton's dynamic batcher:
`max_batch_size`, `max_queue_delay`).

The choice of the next batch is the pure function `pick_batch` (pending work, now, config) ->
`BatchDecision`; the workers carry decisions out (locks, spans, memory hygiene stay there).

Order: interactive work before bulk work, then earliest *urgency* first. Urgency is the
instant by which the work's output is needed: for a stream, the moment its listener would run
out of audio (playback-aware earliest deadline first); for everything else, its arrival time
(FIFO). A stream that already has seconds of audio buffered therefore waits behind a stream
waiting for its first audio. Only items with the same batch *key* (a shape bucket) and the same
priority class, due within `batch_window` of the most urgent one, share a batch.

Admission: a full queue refuses at once (RESOURCE_EXHAUSTED). Work whose deadline has passed
or whose caller went away are dropped before they cost compute.
"""

from __future__ import annotations

import enum
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context

from services.runtime.config import SchedulerConfig
from services.runtime.errors import (
    Cancelled,
    DeadlineExceeded,
    ResourceExhausted,
    is_out_of_memory,
)
from services.runtime.memory import release_freed_memory
from telemetry import StageMetrics, names
from telemetry.context import capture_context, span_links

In = TypeVar("In")
Out = TypeVar("Out")


class Priority(enum.IntEnum):
    """Scheduling class of a request; lower values are served first."""

    INTERACTIVE = 0
    BULK = 1

    @property
    def label(self) -> str:
        """The class as a bounded telemetry value (telemetry.names.PRIORITIES)."""
        return names.PRIORITY_BULK if self is Priority.BULK else names.PRIORITY_INTERACTIVE


# Scheduling hints the gateway sends with every stage call (gRPC request metadata).
#: "interactive" | "bulk".
PRIORITY_METADATA = "voxline-priority"
#: Audio (ms) the request's listener has buffered when the call is made: how long its
#: output can wait before the listener runs dry.
PLAYBACK_BUFFER_METADATA = "voxline-playback-buffer-ms"
# A hint beyond this is not believable (and must not push work to the back forever).
MAX_PLAYBACK_BUFFER_MS = 600_000.0
#: Under sustained load a worker returns freed memory to the OS at least this often.
TRIM_INTERVAL_S = 1.0
#: ...and otherwise once it has had no work for this long.
TRIM_IDLE_S = 0.2
#: Work due further ahead than this is early (SchedulerConfig.defer_early_s).
EARLY_S = 0.5


@dataclass(frozen=True)
class Hints:
    """A call's scheduling hints (see :func:`hints_metadata`, :func:`read_hints`)."""

    priority: Priority = Priority.INTERACTIVE
    playback_buffer_s: float = 0.0


def hints_metadata(hints: Hints) -> tuple[tuple[str, str], ...]:
    """Request metadata carrying `hints` to a stage."""
    return (
        (PRIORITY_METADATA, hints.priority.label),
        (PLAYBACK_BUFFER_METADATA, f"{max(0.0, hints.playback_buffer_s) * 1000.0:.0f}"),
    )


def read_hints(metadata: Sequence[tuple[str, Any]] | None) -> Hints:
    """The hints of a call's metadata; anything missing or malformed takes the default
    (interactive, nothing buffered), so a bad hint costs only the call's place in line."""
    values = dict(metadata or ())
    priority = (
        Priority.BULK
        if values.get(PRIORITY_METADATA) == names.PRIORITY_BULK
        else Priority.INTERACTIVE
    )
    try:
        buffered_ms = float(values.get(PLAYBACK_BUFFER_METADATA, 0.0))
    except (TypeError, ValueError):
        buffered_ms = 0.0
    if not math.isfinite(buffered_ms):
        buffered_ms = 0.0
    buffered_ms = min(max(buffered_ms, 0.0), MAX_PLAYBACK_BUFFER_MS)
    return Hints(priority, buffered_ms / 1000.0)


@dataclass(eq=False)
class Work(Generic[In, Out]):
    """One piece of one request's model work (a sentence, a window), from submission to
    result. (The gateway's `Job` is a whole request.)"""

    payload: In
    key: Hashable
    priority: Priority
    urgency: float
    deadline: float | None
    is_active: Callable[[], bool]
    size: int
    context: Context
    seq: int
    ticket: int  # the submission (one request's call) this work belongs to
    enqueued: float = field(default_factory=time.monotonic)
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: Out | None = None
    error: BaseException | None = None
    abandoned: bool = False

    def order(self) -> tuple[int, float, int]:
        return (int(self.priority), self.urgency, self.seq)

    def finish(self, result: Out | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.started.set()
        self.done.set()


class BatchScheduler(Generic[In, Out]):
    """Queue + dynamic batcher + model-instance workers for one stage.

    `execute` receives a non-empty list of payloads and returns one output per payload, in
    order. Only payloads with equal `key_of` share a batch (a shape bucket); `size_of` gives
    a payload's length along the padded axis (for the padding-waste attribute of batch
    spans).
    """

    def __init__(
        self,
        stage: str,
        execute: Callable[[list[In]], Sequence[Out]],
        config: SchedulerConfig,
        *,
        metrics: StageMetrics | None = None,
        tracer: trace.Tracer | None = None,
        key_of: Callable[[In], Hashable] = lambda _: None,
        size_of: Callable[[In], int] = lambda _: 1,
    ) -> None:
        if config.max_batch_size < 1 or config.instances < 1 or config.max_queue < 1:
            raise ValueError(f"invalid scheduler settings: {config}")
        self.stage = stage
        self.config = config
        self._execute = execute
        self._metrics = metrics
        self._tracer = tracer or trace.get_tracer("voxline.runtime")
        self._key_of = key_of
        self._size_of = size_of
        self._cond = threading.Condition()
        self._pending: list[Work[In, Out]] = []
        self._seq = itertools.count()
        self._running = False
        self._busy = 0  # workers executing a batch
        self._begun: set[int] = set()  # tickets with a started work and items still queued
        self._workers: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        for i in range(self.config.instances):
            worker = threading.Thread(
                target=self._work, name=f"{self.stage}-model-{i}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        """Stop the workers after their current batch; queued items fail with CANCELLED."""
        with self._cond:
            self._running = False
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for work in pending:
            work.finish(error=Cancelled(f"{self.stage} is shutting down"))
        for worker in self._workers:
            worker.join(timeout=30)
        self._workers.clear()

    @property
    def waiting(self) -> int:
        """Requests waiting for the model: work queued, none of it started yet (a request
        whose first pieces are running is being served, not waiting)."""
        with self._cond:  # reentrant: also called with the lock held
            queued = {work.ticket for work in self._pending}
            self._begun &= queued  # forget requests with nothing left in the queue
            return len(queued - self._begun)

    # -- the caller's side -------------------------------------------------------------------

    def submit(
        self,
        payload: In,
        *,
        priority: Priority = Priority.INTERACTIVE,
        urgency: float | None = None,
        deadline: float | None = None,
        is_active: Callable[[], bool] = lambda: True,
    ) -> Work[In, Out]:
        """Queue one payload (see :meth:`submit_many`)."""
        return self.submit_many(
            [payload], [urgency], priority=priority, deadline=deadline, is_active=is_active
        )[0]

    def submit_many(
        self,
        payloads: Sequence[In],
        urgencies: Sequence[float | None],
        *,
        priority: Priority = Priority.INTERACTIVE,
        deadline: float | None = None,
        is_active: Callable[[], bool] = lambda: True,
    ) -> list[Work[In, Out]]:
        """Queue one request's payloads, admitted together: the queue bound counts requests
        (`max_queue` requests with work waiting), not their pieces. Raises ResourceExhausted
        at once when the queue is full.

        `urgencies` (one per payload, None = now) and `deadline` are `time.monotonic()`
        instants.
        """
        now = time.monotonic()
        ticket = next(self._seq)
        context = capture_context()
        items: list[Work[In, Out]] = [
            Work(
                payload=payload,
                key=self._key_of(payload),
                priority=priority,
                urgency=now if urgency is None else urgency,
                deadline=deadline,
                is_active=is_active,
                size=self._size_of(payload),
                context=context,
                seq=next(self._seq),
                ticket=ticket,
                enqueued=now,
            )
            for payload, urgency in zip(payloads, urgencies, strict=True)
        ]
        with self._cond:
            if not self._running:
                raise Cancelled(f"{self.stage} is not accepting work")
            # Work an idle model instance is about to take is not waiting in the queue.
            idle = self.config.instances - self._busy
            if self.waiting >= self.config.max_queue + idle:
                raise ResourceExhausted(
                    f"{self.stage} queue is full ({self.config.max_queue} waiting); retry later"
                )
            self._pending.extend(items)
            self._cond.notify_all()
        return items

    def wait_started(self, work: Work[In, Out]) -> None:
        """Block until a worker starts `work` (or it fails); the caller's queue phase."""
        if not work.started.wait(_timeout(work.deadline)):
            self.abandon(work)
            raise DeadlineExceeded(f"deadline passed while queued for the {self.stage} model")

    def wait_result(self, work: Work[In, Out]) -> Out:
        """Block until `work` is done and return its output (or raise its error)."""
        if not work.done.wait(_timeout(work.deadline)):
            self.abandon(work)
            raise DeadlineExceeded(f"deadline passed while the {self.stage} model was running")
        if work.error is not None:
            raise work.error
        return work.result  # type: ignore[return-value]

    def run(self, payload: In, **kwargs: Any) -> Out:
        """Submit and wait: the whole round trip for one payload."""
        work = self.submit(payload, **kwargs)
        self.wait_started(work)
        return self.wait_result(work)

    def abandon(self, work: Work[In, Out]) -> None:
        """The caller no longer wants `work`: unqueue it (a running batch still finishes)."""
        with self._cond:
            work.abandoned = True
            if work in self._pending:
                self._pending.remove(work)

    # -- the workers' side -------------------------------------------------------------------

    def _take_batch(self, idle_s: float | None = None) -> list[Work[In, Out]] | None:
        """The next batch `pick_batch` decides on; None when stopping; [] when no work came
        for `idle_s` seconds (None: wait as long as it takes)."""
        idle_until = None if idle_s is None else time.monotonic() + idle_s
        with self._cond:
            while True:
                if not self._running:
                    return None
                self._drop_dead()
                now = time.monotonic()
                decision = pick_batch(self._pending, now, self.config)
                if decision.batch:
                    break
                wait = decision.wait_s
                if not self._pending and idle_until is not None:
                    if now >= idle_until:
                        return []
                    wait = idle_until - now
                self._cond.wait(wait)  # None: until work is submitted
            for work in decision.batch:
                self._pending.remove(work)
                self._begun.add(work.ticket)
                work.started.set()
            self._busy += 1
            return decision.batch

    def _drop_dead(self) -> None:
        """Fail queued items whose deadline passed or whose caller left (lock held)."""
        now = time.monotonic()
        alive = []
        for work in self._pending:
            if work.abandoned:
                continue
            if work.deadline is not None and now >= work.deadline:
                work.finish(error=DeadlineExceeded(f"deadline passed queued for {self.stage}"))
            elif not _active(work):
                work.finish(error=Cancelled("the caller cancelled the request"))
            else:
                alive.append(work)
        self._pending = alive

    def _work(self) -> None:
        # Varied input lengths leave freed pages stranded in malloc's heaps: RSS would grow
        # with every new shape (services/runtime/memory.py). Memory is trimmed once the
        # worker has been idle TRIM_IDLE_S after some work, off any request's path (a stream
        # sends its next window within milliseconds: trimming between windows made each wait
        # for the trim), and at least every TRIM_INTERVAL_S under sustained load.
        last_trim, owed = time.monotonic(), False
        while (batch := self._take_batch(TRIM_IDLE_S if owed else None)) is not None:
            if batch:
                try:
                    self._run_batch(batch)
                finally:
                    with self._cond:
                        self._busy -= 1
                owed = True
            if not batch or time.monotonic() - last_trim >= TRIM_INTERVAL_S:
                release_freed_memory()
                last_trim, owed = time.monotonic(), False

    def _run_batch(self, batch: list[Work[In, Out]]) -> None:
        sizes = [work.size for work in batch]
        padded = max(sizes) * len(batch)
        attributes = {
            names.ATTR_STAGE: self.stage,
            names.ATTR_BATCH_SIZE: len(batch),
            names.ATTR_BATCH_PADDING: round(1.0 - sum(sizes) / padded, 4) if padded else 0.0,
            names.ATTR_PRIORITY: batch[0].priority.label,
        }
        with self._tracer.start_as_current_span(
            names.batch_span_name(self.stage),
            context=Context(),  # a root of its own: it serves several traces
            links=span_links(work.context for work in batch),
            attributes=attributes,
            record_exception=False,
        ) as span:
            if self._metrics is not None:
                self._metrics.record_batch_size(len(batch))
            out_of_memory, failure = False, None
            try:
                outputs = list(self._execute([work.payload for work in batch]))
                if len(outputs) != len(batch):
                    raise RuntimeError(
                        f"{self.stage}.execute returned {len(outputs)} outputs "
                        f"for {len(batch)} inputs"
                    )
            except BaseException as exc:  # every waiter must hear about it
                span.set_attribute(names.ATTR_ERROR_TYPE, type(exc).__qualname__)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__qualname__))
                out_of_memory, failure = is_out_of_memory(exc), exc
        if out_of_memory:  # here, `exc` and with it the failed batch's tensors are gone
            error = self._out_of_memory(len(batch))
            for work in batch:
                work.finish(error=error)
        elif failure is not None:
            self._isolate(batch, failure)
        else:
            for work, output in zip(batch, outputs, strict=True):
                # An exception in place of an output is that request's own error.
                if isinstance(output, BaseException):
                    work.finish(error=output)
                else:
                    work.finish(result=output)

    def _isolate(self, batch: list[Work[In, Out]], failure: BaseException) -> None:
        """A batch whose execution raised: one request's input must not fail the others
        (an error belongs to its request), so each runs again alone and gets its own outcome.
        A batch of one, or a failure that is not an ordinary exception (interrupts), ends
        there."""
        if len(batch) == 1 or not isinstance(failure, Exception):
            for work in batch:
                work.finish(error=failure)
            return
        for work in batch:
            self._run_batch([work])

    def _out_of_memory(self, batch_size: int) -> ResourceExhausted:
        """A batch ran out of GPU memory: return the allocator's cached blocks (the failed
        batch's tensors are freed by now) so the next batch starts from a clean pool, and
        tell the batch's callers to retry (transient: the next batch may be smaller)."""
        torch = sys.modules["torch"]  # it raised the error, so it is imported
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return ResourceExhausted(
            f"{self.stage} ran out of GPU memory for a batch of {batch_size}; retry"
        )


@dataclass(frozen=True)
class BatchDecision:
    """What a free model instance does next: run `batch`, or (empty batch) wait up to
    `wait_s` seconds for more work (None: until some is submitted)."""

    batch: list[Work[Any, Any]]
    wait_s: float | None = None


def pick_batch(
    pending: Sequence[Work[Any, Any]], now: float, config: SchedulerConfig
) -> BatchDecision:
    """The scheduling policy, as data: the most urgent work first (priority class, then
    urgency), with the queued work of the same shape bucket and class that is due within
    `batch_window_s` of it, at most `max_batch_size` in all and `max_batch_per_request` from
    any one request. A batch short of full waits for mates up to `max_queue_delay_s` after
    its head was queued; a head due more than EARLY_S from now waits `defer_early_s` after it
    was queued (the cores it would take serve another stage's urgent work meanwhile). Pure:
    no locks, threads or clocks."""
    if not pending:
        return BatchDecision([])
    head = min(pending, key=Work.order)
    due_by = head.urgency + config.batch_window_s
    candidates = sorted(
        (
            w
            for w in pending
            if w.key == head.key and w.priority == head.priority and w.urgency <= due_by
        ),
        key=Work.order,
    )
    batch = _bounded(candidates, config)
    wait = head.enqueued + config.max_queue_delay_s - now
    if len(batch) < config.max_batch_size and wait > 0:
        return BatchDecision([], wait)
    deferred = head.enqueued + config.defer_early_s - now
    if head.urgency - now > EARLY_S and deferred > 0:
        return BatchDecision([], deferred)
    return BatchDecision(batch)


def _bounded(candidates: list[Work[Any, Any]], config: SchedulerConfig) -> list[Work[Any, Any]]:
    """The first candidates that fit one batch: `max_batch_size` in all, at most
    `max_batch_per_request` from any one request (so no request's pieces fill a batch and
    hold the model while others wait)."""
    taken: list[Work[Any, Any]] = []
    per_request: dict[int, int] = {}
    for work in candidates:
        if per_request.get(work.ticket, 0) >= config.max_batch_per_request:
            continue
        per_request[work.ticket] = per_request.get(work.ticket, 0) + 1
        taken.append(work)
        if len(taken) == config.max_batch_size:
            break
    return taken


def _active(work: Work[Any, Any]) -> bool:
    try:
        return bool(work.is_active())
    except Exception:  # a finished RPC context may raise: treat it as gone
        return False


def _timeout(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (a `time.monotonic()` instant), as Event.wait takes it."""
    if deadline is None:
        return None
    return min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
