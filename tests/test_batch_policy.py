"""The scheduler's choice of the next batch, as a pure function: no threads, no clocks."""

from __future__ import annotations

from contextvars import Context
from itertools import count

from services.runtime.config import SchedulerConfig
from services.runtime.scheduler import EARLY_S, Priority, Work, pick_batch

_seq = count()


def _work(
    name: str,
    *,
    urgency: float = 0.0,
    key: str = "k",
    priority: Priority = Priority.INTERACTIVE,
    ticket: int | None = None,
    enqueued: float = 0.0,
) -> Work[str, str]:
    seq = next(_seq)
    return Work(
        payload=name,
        key=key,
        priority=priority,
        urgency=urgency,
        deadline=None,
        is_active=lambda: True,
        size=1,
        context=Context(),
        seq=seq,
        ticket=seq if ticket is None else ticket,
        enqueued=enqueued,
    )


def _names(works: list[Work[str, str]]) -> list[str]:
    return [w.payload for w in works]


def test_nothing_pending_waits_for_work() -> None:
    decision = pick_batch([], 0.0, SchedulerConfig())
    assert decision.batch == [] and decision.wait_s is None


def test_most_urgent_first_with_its_same_shape_same_class_mates_due_in_the_window() -> None:
    config = SchedulerConfig(max_batch_size=8, batch_window_s=1.0, defer_early_s=0.0)
    pending = [
        _work("later", urgency=5.0),
        _work("head", urgency=1.0),
        _work("other-shape", urgency=1.1, key="other"),
        _work("bulk", urgency=1.2, priority=Priority.BULK),
        _work("mate", urgency=1.9),
        _work("outside-window", urgency=2.1),
    ]
    assert _names(pick_batch(pending, 0.0, config).batch) == ["head", "mate"]


def test_interactive_before_bulk_whatever_the_urgency() -> None:
    pending = [_work("bulk", urgency=0.0, priority=Priority.BULK), _work("interactive", urgency=9)]
    config = SchedulerConfig(defer_early_s=0.0)
    assert _names(pick_batch(pending, 0.0, config).batch) == ["interactive"]


def test_batch_size_and_pieces_per_request_are_bounded() -> None:
    config = SchedulerConfig(max_batch_size=3, max_batch_per_request=2)
    pending = [_work(f"a{i}", urgency=i * 0.01, ticket=1) for i in range(4)]
    pending += [_work(f"b{i}", urgency=0.5 + i * 0.01, ticket=2) for i in range(4)]
    assert _names(pick_batch(pending, 0.0, config).batch) == ["a0", "a1", "b0"]


def test_a_short_batch_waits_for_mates_up_to_the_queue_delay() -> None:
    config = SchedulerConfig(max_batch_size=4, max_queue_delay_s=0.010)
    pending = [_work("head", enqueued=100.0)]
    waiting = pick_batch(pending, 100.004, config)
    assert waiting.batch == [] and abs(waiting.wait_s - 0.006) < 1e-9  # type: ignore[operator]
    assert _names(pick_batch(pending, 100.011, config).batch) == ["head"]
    full = [_work(f"w{i}", enqueued=100.0) for i in range(4)]
    assert len(pick_batch(full, 100.0, config).batch) == 4  # a full batch never waits


def test_early_work_waits_so_urgent_work_elsewhere_gets_the_cores() -> None:
    """Work due more than EARLY_S ahead (a stream's next sentence) waits defer_early_s after
    it was queued; work due now never does, and 0 turns the wait off (the vocoder, GPUs)."""
    config = SchedulerConfig(defer_early_s=0.1)
    early = _work("next-sentence", urgency=100.0 + EARLY_S + 1.0, enqueued=100.0)
    waiting = pick_batch([early], 100.05, config)
    assert waiting.batch == [] and abs(waiting.wait_s - 0.05) < 1e-9  # type: ignore[operator]
    assert _names(pick_batch([early], 100.1, config).batch) == ["next-sentence"]
    now = _work("first-sentence", urgency=100.0, enqueued=100.0)
    assert _names(pick_batch([now], 100.0, config).batch) == ["first-sentence"]
    off = SchedulerConfig(defer_early_s=0.0)
    assert _names(pick_batch([early], 100.0, off).batch) == ["next-sentence"]
