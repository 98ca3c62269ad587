"""Serialised access to a model, with a bounded wait queue and deadline-aware waiting.

One model instance runs one inference at a time (torch intra-op threads do the parallel
work). Requests beyond `max_queue` waiting are refused with RESOURCE_EXHAUSTED instead of
piling up; a waiter whose deadline passes gets DEADLINE_EXCEEDED. The time spent waiting is
the stage's queue time. (A dynamic batcher would replace this class behind the same use.)
"""

from __future__ import annotations

import threading

from services.runtime.errors import DeadlineExceeded, ResourceExhausted


class InferenceLane:
    """A lock with a bounded number of waiters."""

    def __init__(self, stage: str, max_queue: int) -> None:
        self._stage = stage
        self._lock = threading.Lock()
        self._max_queue = max_queue
        self._waiting = 0
        self._count_lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Requests currently waiting for the model."""
        return self._waiting

    def acquire(self, timeout: float | None) -> None:
        """Wait for the model within `timeout` seconds (the caller's remaining deadline)."""
        if self._lock.acquire(blocking=False):  # idle model: no queueing at all
            return
        with self._count_lock:
            if self._waiting >= self._max_queue:
                raise ResourceExhausted(
                    f"{self._stage} queue is full ({self._max_queue} waiting); retry later"
                )
            self._waiting += 1
        try:
            # grpc reports "no deadline" as a huge number: cap it to what locks accept.
            wait = -1 if timeout is None else min(max(timeout, 0.0), threading.TIMEOUT_MAX)
            got = self._lock.acquire(timeout=wait)
        finally:
            with self._count_lock:
                self._waiting -= 1
        if not got:
            raise DeadlineExceeded(f"deadline passed while waiting for the {self._stage} model")

    def release(self) -> None:
        self._lock.release()
