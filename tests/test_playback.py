"""The listener model behind the stall metric."""

from __future__ import annotations

import pytest

from services.gateway.playback import ListenerClock


def test_a_stream_that_keeps_ahead_never_stalls() -> None:
    clock = ListenerClock(1000)
    for t in (10.0, 10.5, 11.0, 11.9):  # 1 s of audio every 0.5-0.9 s
        clock.on_send(1000, now=t)
    assert clock.stall_s == 0.0 and clock.sent_s == 4.0


def test_gaps_after_the_buffer_runs_out_add_up() -> None:
    clock = ListenerClock(1000)
    clock.on_send(500, now=0.0)  # plays until 0.5
    clock.on_send(500, now=0.8)  # 0.3 s of silence; now plays until 1.3
    clock.on_send(500, now=1.3)  # just in time
    clock.on_send(0, now=9.0)  # an empty chunk is not audio
    clock.on_send(500, now=2.0)  # 0.2 s of silence
    assert clock.stall_s == pytest.approx(0.5)


def test_time_to_first_audio_is_not_a_stall() -> None:
    clock = ListenerClock(1000)
    clock.on_send(100, now=5.0)
    assert clock.first_audio == 5.0 and clock.stall_s == 0.0
