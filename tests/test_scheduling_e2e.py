"""The scheduler through a real vocoder process: who goes first under contention.

Ordering, not timing, is asserted (which of two concurrent calls finishes first), so the
tests hold on a loaded 2-core machine. Speed claims live in `make bench`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import torch
from conftest import SLOW_VOCODER, running_service
from voxline.v1 import vocoder_pb2, vocoder_pb2_grpc

from services.runtime.scheduler import Hints, Priority, hints_metadata, read_hints
from services.runtime.tensors import to_proto


@pytest.fixture(scope="module")
def vocoder() -> Iterator[str]:
    with running_service("vocoder", "--torch-threads", "1", *SLOW_VOCODER) as address:
        yield address


def _vocode_at(address: str, frames: int, hints: Hints, done: dict[str, float], name: str) -> None:
    request = vocoder_pb2.VocodeRequest(mel=to_proto(torch.full((80, frames), -5.0)))
    with grpc.insecure_channel(address) as channel:
        vocoder_pb2_grpc.VocoderStub(channel).Vocode(
            request, timeout=120, metadata=hints_metadata(hints)
        )
    done[name] = time.monotonic()


def _race(address: str, first: tuple[str, int, Hints], second: tuple[str, int, Hints],
          delay_s: float) -> dict[str, float]:  # fmt: skip
    done: dict[str, float] = {}
    threads = []
    for i, (name, frames, hints) in enumerate((first, second)):
        if i:
            time.sleep(delay_s)
        t = threading.Thread(target=_vocode_at, args=(address, frames, hints, done, name))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(180)
    assert set(done) == {first[0], second[0]}, done
    return done


def test_a_short_request_is_not_stuck_behind_a_long_one(vocoder: str) -> None:
    """Unary audio is vocoded in windows due when they would play: a short request that
    arrives while a long one runs interleaves instead of waiting for all of it."""
    done = _race(vocoder, ("long", 1200, Hints()), ("short", 40, Hints()), delay_s=0.5)
    assert done["short"] < done["long"], done


def test_bulk_yields_to_interactive(vocoder: str) -> None:
    """Arriving first and even due first, bulk work still waits for interactive work."""
    bulk = ("bulk", 600, Hints(Priority.BULK))
    interactive = ("interactive", 600, Hints(Priority.INTERACTIVE, playback_buffer_s=5.0))
    done = _race(vocoder, bulk, interactive, delay_s=0.3)
    assert done["interactive"] < done["bulk"], done


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), Hints()),
        ((("voxline-priority", "bulk"), ("voxline-playback-buffer-ms", "1500")),
         Hints(Priority.BULK, 1.5)),
        ((("voxline-priority", "urgent!"), ("voxline-playback-buffer-ms", "nan")), Hints()),
        ((("voxline-playback-buffer-ms", "-5"),), Hints()),
        ((("voxline-playback-buffer-ms", "1e12"),), Hints(playback_buffer_s=600.0)),
    ],
)  # fmt: skip
def test_hints_round_trip_and_bad_hints_fall_back(
    metadata: tuple[tuple[str, str], ...], expected: Hints
) -> None:
    assert read_hints(metadata) == expected
    assert read_hints(hints_metadata(expected)) == expected
