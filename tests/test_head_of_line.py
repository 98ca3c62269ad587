"""No head-of-line blocking: a long request is worked in bounded pieces that interleave with
others (unary included), so a short request sent while a long one runs waits at most about
its own time again."""

from __future__ import annotations

import statistics
import time

from voxline.v1 import synthesizer_pb2 as pb

from bench.load import PARAGRAPH

SHORT = "A short request of about a dozen words, sent while a long one runs."
# About 3.5 minutes of audio: ~10 s of work for the local stack with the fast CPU vocoder
# (~20x real time), over a minute with HiFi-GAN; either way still running while the short ones
# go. At 8 kHz its unary answer (~3.5 MB) stays under the gateway's 4 MiB unary limit.
LONG = " ".join([PARAGRAPH] * 12)[:3000]
LONG_RATE_HZ = 8000


def _latency(synthesizer, text: str) -> float:
    t0 = time.monotonic()
    synthesizer.Synthesize(pb.SynthesizeRequest(text=text), timeout=300)
    return time.monotonic() - t0


def test_short_request_is_not_blocked_by_a_long_one(synthesizer) -> None:
    _latency(synthesizer, SHORT)  # warm
    unloaded = statistics.median(_latency(synthesizer, SHORT) for _ in range(5))
    request = pb.SynthesizeRequest(text=LONG, sample_rate_hz=LONG_RATE_HZ)
    long = synthesizer.Synthesize.future(request, timeout=300)
    try:
        time.sleep(0.5)  # the long one is under way in every stage
        loaded = [_latency(synthesizer, SHORT) for _ in range(3)]
        assert not long.done(), "the long request ended before the short ones were measured"
    finally:
        long.cancel()
    ratio = statistics.median(loaded) / unloaded
    print(f"short alone {unloaded * 1000:.0f} ms; beside a long one {loaded} s; ratio {ratio:.2f}")
    assert ratio <= 2.0, (unloaded, loaded)
