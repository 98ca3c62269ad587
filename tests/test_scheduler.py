"""The per-stage scheduler: batching, order, admission, deadlines, cancellation, telemetry.

The worker is held on a gate (a first job whose execution blocks) so that what is queued
behind it, and the order it then runs in, is deterministic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.runtime.config import SchedulerConfig
from services.runtime.errors import Cancelled, DeadlineExceeded, ResourceExhausted
from services.runtime.scheduler import BatchScheduler, Priority
from telemetry import names


class Model:
    """Records every batch; the payload "gate" blocks until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def execute(self, payloads: list[str]) -> list[str]:
        if payloads == ["gate"]:
            self.entered.set()
            assert self.release.wait(10)
            return ["GATE"]
        if "boom" in payloads:
            raise RuntimeError("model failed")
        self.batches.append(list(payloads))
        return [p.upper() for p in payloads]


@pytest.fixture
def model() -> Model:
    return Model()


def _scheduler(model: Model, **settings: float) -> BatchScheduler[str, str]:
    config = SchedulerConfig(**{"max_batch_size": 4, "max_queue": 8, **settings})  # type: ignore[arg-type]
    scheduler: BatchScheduler[str, str] = BatchScheduler(
        "vocoder",
        model.execute,
        config,
        key_of=lambda p: p[0] if p != "gate" else "gate",
        size_of=len,
    )
    scheduler.start()
    return scheduler


@pytest.fixture
def gated(model: Model) -> Iterator[BatchScheduler[str, str]]:
    """A scheduler whose only worker is busy with the "gate" job until released."""
    scheduler = _scheduler(model)
    gate = scheduler.submit("gate")
    assert model.entered.wait(5)
    yield scheduler
    model.release.set()
    scheduler.wait_result(gate)
    scheduler.stop()


def test_batch_of_one_is_the_trivial_case(model: Model) -> None:
    scheduler = _scheduler(model)
    try:
        assert scheduler.run("abc") == "ABC"
        assert model.batches == [["abc"]]
    finally:
        scheduler.stop()


def test_queued_jobs_with_one_key_share_a_batch(
    gated: BatchScheduler[str, str], model: Model
) -> None:
    jobs = [gated.submit(p) for p in ["a1", "b1", "a2", "a3", "a4", "a5"]]
    model.release.set()
    assert [gated.wait_result(j) for j in jobs] == ["A1", "B1", "A2", "A3", "A4", "A5"]
    # max_batch_size 4, only equal keys together, in arrival order.
    assert model.batches == [["a1", "a2", "a3", "a4"], ["b1"], ["a5"]]


def test_one_request_never_fills_a_batch(model: Model) -> None:
    """A long request's pieces run at most `max_batch_per_request` per batch, so a short
    request arriving behind them joins the next batch instead of waiting for all of them."""
    scheduler = _scheduler(model, max_batch_per_request=1)
    gate = scheduler.submit("gate")
    assert model.entered.wait(5)
    try:
        now = time.monotonic()
        long = scheduler.submit_many(["a1", "a2", "a3", "a4"], [now] * 4)
        short = scheduler.submit("a9", urgency=now + 0.1)
        model.release.set()
        assert [scheduler.wait_result(j) for j in long] == ["A1", "A2", "A3", "A4"]
        scheduler.wait_result(short)
        # Each batch: one piece of the long request, plus the short one in the first.
        assert model.batches == [["a1", "a9"], ["a2"], ["a3"], ["a4"]]
    finally:
        model.release.set()
        scheduler.wait_result(gate)
        scheduler.stop()


def test_earliest_urgency_first_and_bulk_last(
    gated: BatchScheduler[str, str], model: Model
) -> None:
    now = time.monotonic()
    late = gated.submit("x-late", urgency=now + 5.0)
    bulk = gated.submit("y-bulk", urgency=now - 5.0, priority=Priority.BULK)
    soon = gated.submit("z-soon", urgency=now + 1.0)
    model.release.set()
    for job in (late, bulk, soon):
        gated.wait_result(job)
    assert model.batches == [["z-soon"], ["x-late"], ["y-bulk"]]


def test_full_queue_is_refused_at_once(model: Model) -> None:
    scheduler = _scheduler(model, max_queue=2)
    gate = scheduler.submit("gate")
    assert model.entered.wait(5)
    try:
        scheduler.submit("a")
        scheduler.submit_many(["b", "b"], [None, None])  # one request: one place in the queue
        t0 = time.monotonic()
        with pytest.raises(ResourceExhausted, match="queue is full"):
            scheduler.submit("c")
        assert time.monotonic() - t0 < 0.05
    finally:
        model.release.set()
        scheduler.wait_result(gate)
        scheduler.stop()


def test_expired_and_cancelled_jobs_cost_no_compute(
    gated: BatchScheduler[str, str], model: Model
) -> None:
    expired = gated.submit("e", deadline=time.monotonic() + 0.05)
    cancelled = gated.submit("c", is_active=lambda: False)
    kept = gated.submit("k")
    time.sleep(0.1)
    model.release.set()
    assert gated.wait_result(kept) == "K"
    with pytest.raises(DeadlineExceeded):
        gated.wait_result(expired)
    with pytest.raises(Cancelled):
        gated.wait_result(cancelled)
    assert model.batches == [["k"]]


def test_a_waiter_whose_deadline_passes_leaves_the_queue(
    gated: BatchScheduler[str, str], model: Model
) -> None:
    job = gated.submit("w", deadline=time.monotonic() + 0.1)
    with pytest.raises(DeadlineExceeded, match="queued"):
        gated.wait_started(job)
    assert gated.waiting == 0
    model.release.set()


def test_a_poisoned_job_fails_alone_and_its_batch_mates_succeed(
    gated: BatchScheduler[str, str], model: Model
) -> None:
    """One request's bad input fails that request only: the batch that raised runs again,
    one job at a time (Triton's rule: an error belongs to its request, not its batch)."""
    jobs = [gated.submit(p) for p in ["before", "boom", "bystander", "b2"]]
    model.release.set()
    with pytest.raises(RuntimeError, match="model failed"):
        gated.wait_result(jobs[1])
    assert [gated.wait_result(jobs[i]) for i in (0, 2, 3)] == ["BEFORE", "BYSTANDER", "B2"]
    assert model.batches == [["before"], ["bystander"], ["b2"]]  # the batch of 4 raised
    assert gated.run("bx") == "BX"  # and it keeps serving


class ReportingModel(Model):
    """Returns an exception in place of the output of a "bad" payload (Triton-style)."""

    def execute(self, payloads: list[str]) -> list[str | Exception]:  # type: ignore[override]
        if payloads == ["gate"]:
            return super().execute(payloads)
        self.batches.append(list(payloads))
        return [ValueError("bad input") if p == "bad" else p.upper() for p in payloads]


def test_an_error_returned_in_place_of_an_output_belongs_to_its_request() -> None:
    model = ReportingModel()
    scheduler = _scheduler(model)
    try:
        gate = scheduler.submit("gate")
        assert model.entered.wait(5)
        jobs = [scheduler.submit(p) for p in ["bok", "bad", "bfine"]]
        model.release.set()
        with pytest.raises(ValueError, match="bad input"):
            scheduler.wait_result(jobs[1])
        assert [scheduler.wait_result(jobs[i]) for i in (0, 2)] == ["BOK", "BFINE"]
        assert model.batches == [["bok", "bad", "bfine"]]  # one batch, three outcomes
        scheduler.wait_result(gate)
    finally:
        scheduler.stop()


def test_max_queue_delay_waits_for_batch_mates(model: Model) -> None:
    scheduler = _scheduler(model, max_queue_delay_s=0.3)
    try:
        first = scheduler.submit("a1")
        time.sleep(0.05)
        second = scheduler.submit("a2")
        assert [scheduler.wait_result(j) for j in (first, second)] == ["A1", "A2"]
        assert model.batches == [["a1", "a2"]]
    finally:
        scheduler.stop()


def test_batch_span_links_every_request() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    model = Model()
    scheduler: BatchScheduler[str, str] = BatchScheduler(
        "vocoder", model.execute, SchedulerConfig(max_batch_size=4), tracer=tracer, size_of=len
    )
    scheduler.start()
    try:
        gate = scheduler.submit("gate")
        assert model.entered.wait(5)
        jobs, parents = [], []
        for payload in ("aa", "a"):
            with tracer.start_as_current_span("request") as span:
                parents.append(span.get_span_context().span_id)
                jobs.append(scheduler.submit(payload))
        model.release.set()
        for job in (gate, *jobs):
            scheduler.wait_result(job)
    finally:
        scheduler.stop()
    batches = [s for s in exporter.get_finished_spans() if s.name == "vocoder.batch"]
    shared = next(s for s in batches if s.attributes[names.ATTR_BATCH_SIZE] == 2)
    assert sorted(link.context.span_id for link in shared.links) == sorted(parents)
    assert shared.attributes[names.ATTR_BATCH_PADDING] == pytest.approx(0.25)
    assert shared.parent is None or not shared.parent.is_valid
    assert trace.get_current_span().get_span_context().is_valid is False


def test_work_not_due_soon_does_not_ride_along(
    gated: BatchScheduler[str, str], model: Model
) -> None:
    """A batch mate costs the urgent job compute time on a CPU: only work due within the
    batch window (1 s by default) of the most urgent job joins its batch."""
    now = time.monotonic()
    jobs = [
        gated.submit("a-now", urgency=now),
        gated.submit("a-later", urgency=now + 5.0),
        gated.submit("a-soon", urgency=now + 0.5),
    ]
    model.release.set()
    for job in jobs:
        gated.wait_result(job)
    assert model.batches == [["a-now", "a-soon"], ["a-later"]]


def test_memory_is_trimmed_when_idle_not_between_a_streams_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream sends its next window within milliseconds of the last: the worker must not
    make it wait for a malloc_trim (1-30 ms) in between; it trims once idle."""
    import services.runtime.scheduler as scheduler_module

    trims: list[float] = []
    monkeypatch.setattr(scheduler_module, "release_freed_memory", lambda: trims.append(1.0))
    # Margins for a loaded machine: back-to-back calls are far closer than 2 s, and the
    # once-a-second trim under sustained load is out of the way.
    monkeypatch.setattr(scheduler_module, "TRIM_IDLE_S", 2.0)
    monkeypatch.setattr(scheduler_module, "TRIM_INTERVAL_S", 600.0)
    model = Model()
    scheduler = BatchScheduler("vocoder", model.execute, SchedulerConfig())
    scheduler.start()
    try:
        for i in range(5):  # back to back, as a stream's windows
            scheduler.run(f"window-{i}")
        assert trims == []
        deadline = time.monotonic() + 10
        while not trims and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(trims) == 1  # idle after work: trimmed once, not again while idle
        time.sleep(scheduler_module.TRIM_IDLE_S + 0.5)
        assert len(trims) == 1
    finally:
        scheduler.stop()
