"""Admission control: the gateway takes on only the syntheses its stages can serve.

Past capacity, queueing does not help anyone: every admitted stream's first audio and every
running stream's next window get later, and callers whose deadline passes in the queue are
lost after costing compute. So at most ``max_active`` syntheses run at once; up to
``max_waiting`` more may wait for a slot, each at most ``max_wait_s`` (and never past its
deadline); everything else is refused at once with ``RESOURCE_EXHAUSTED`` and a retry hint
(``grpc-retry-pushback-ms`` trailing metadata, which gRPC's retry policies honour). The wait
is the gateway's ``queue`` phase, so it shows in traces and in
``voxline.stage.queue.duration{voxline.stage="gateway"}`` -- the signal the autoscaler reads.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from services.runtime.errors import ResourceExhausted

#: Trailing-metadata key of the retry hint (milliseconds), as gRPC's retry design names it.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
# A waiting caller re-checks that it is still connected this often.
_POLL_S = 0.05


@dataclass(frozen=True)
class AdmissionConfig:
    """Flags `--max-active`, `--max-waiting`, `--max-admission-wait-ms` (generated from these
    fields by services/runtime/config.py: `help`, flag name and unit in their metadata)."""

    #: Syntheses running at once. On the 2-core local stack two concurrent streams already
    #: double a stream's time to first audio (make bench); a GPU deployment raises it.
    max_active: int = field(default=2, metadata={"help": "syntheses running at once (admission)"})
    #: Callers that may wait for a slot; beyond them, refusal is immediate. None by default:
    #: a refused caller retries after the hint rather than waiting unseen.
    max_waiting: int = field(default=0, metadata={"help": "callers that may wait for a slot"})
    #: Longest wait for a slot when waiting is allowed: about one unloaded time to first
    #: audio, so an admitted caller's TTFA stays within ~2x of the unloaded one.
    max_wait_s: float = field(
        default=0.25,
        metadata={
            "help": "longest wait for a slot before RESOURCE_EXHAUSTED",
            "flag": "max-admission-wait-ms",
            "scale": 1000.0,  # the flag takes milliseconds
        },
    )


class Overloaded(ResourceExhausted):
    """The gateway is at capacity; ``retry_after_s`` is when a retry may succeed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def trailers(self) -> tuple[tuple[str, str], ...]:
        """The retry hint as trailing metadata."""
        return ((RETRY_PUSHBACK_KEY, str(max(1, round(self.retry_after_s * 1000)))),)


class Admission:
    """Slots for concurrent syntheses, with a short bounded FIFO wait (thread-safe)."""

    def __init__(
        self, config: AdmissionConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if config.max_active < 1 or config.max_waiting < 0 or config.max_wait_s < 0:
            raise ValueError(f"invalid admission settings: {config}")
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: collections.deque[threading.Event] = collections.deque()
        # Recent synthesis durations: how soon a slot frees, for the retry hint.
        self._mean_hold_s = 1.0

    @property
    def active(self) -> int:
        """Syntheses holding a slot now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiters)

    @contextmanager
    def slot(
        self, deadline: float | None = None, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[None]:
        """Hold a slot for the block; raises :class:`Overloaded` (at once, or after at most
        ``max_wait_s``) when none frees in time. ``deadline``: ``time.monotonic()`` instant
        after which waiting is pointless; ``is_active``: False once the caller went away."""
        self._acquire(deadline, is_active)
        start = self._clock()
        try:
            yield
        finally:
            self._release(self._clock() - start)

    def _acquire(self, deadline: float | None, is_active: Callable[[], bool]) -> None:
        with self._lock:
            if self._active < self.config.max_active and not self._waiters:
                self._active += 1
                return
            if len(self._waiters) >= self.config.max_waiting or self.config.max_wait_s == 0:
                raise self._refusal()
            turn = threading.Event()
            self._waiters.append(turn)
        give_up = self._clock() + self.config.max_wait_s
        if deadline is not None:
            give_up = min(give_up, deadline)
        while not turn.is_set():
            remaining = give_up - self._clock()
            if remaining <= 0 or not is_active():
                break
            turn.wait(min(remaining, _POLL_S))
        with self._lock:
            if turn.is_set():  # _release handed its slot to this caller
                return
            self._waiters.remove(turn)
            raise self._refusal()

    def _release(self, held_s: float) -> None:
        with self._lock:
            self._mean_hold_s += 0.2 * (held_s - self._mean_hold_s)
            if self._waiters:
                self._waiters.popleft().set()  # the slot passes straight to the next caller
            else:
                self._active -= 1

    def _refusal(self) -> Overloaded:
        # A slot frees on average every mean_hold / max_active seconds; the waiters ahead
        # take the first ones.
        every = self._mean_hold_s / self.config.max_active
        retry_after = min(max(every * (len(self._waiters) + 1), 0.05), 30.0)
        return Overloaded(
            f"the gateway is at capacity ({self._active} syntheses running, "
            f"{len(self._waiters)} waiting); retry in about {retry_after * 1000:.0f} ms",
            retry_after,
        )
