"""What a stream's listener hears: playback in real time from the first audio, and stalls."""

from __future__ import annotations

import time


class ListenerClock:
    """A listener who starts playing at the first audio chunk and plays in real time.

    Each chunk sent is appended to their buffer; when a chunk arrives after the buffer ran
    out, the gap is a stall (the listener heard silence) and playback resumes from there.
    """

    def __init__(self, sample_rate: int) -> None:
        self._rate = sample_rate
        self.first_audio: float | None = None
        self.sent_s = 0.0
        self.stall_s = 0.0

    def on_send(self, samples: int, now: float | None = None) -> None:
        """Account for `samples` of audio leaving now (`time.monotonic()`)."""
        if not samples:
            return
        now = time.monotonic() if now is None else now
        if self.first_audio is None:
            self.first_audio = now
        else:
            runs_dry = self.first_audio + self.stall_s + self.sent_s
            if now > runs_dry:
                self.stall_s += now - runs_dry
        self.sent_s += samples / self._rate
