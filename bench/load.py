"""Closed-loop streaming load against a gateway, and the same stages composed in one process.

A *listener* model measures what a user hears: time to first audio (TTFA), and stalls
(how long a listener playing in real time from the first audio would be left without audio;
`services.gateway.playback.ListenerClock`, the same model the gateway's stall metric uses).
"""

from __future__ import annotations

import functools
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from services.gateway.admission import RETRY_PUSHBACK_KEY
from services.gateway.playback import ListenerClock
from services.runtime.voice import SAMPLE_RATE_HZ

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."
PARAGRAPH = (
    "Voxline turns text into speech in three stages, each its own service. "
    "The frontend reads the text aloud in phonemes; the acoustic model paints a spectrogram. "
    "The vocoder turns it into sound, window by window, while the next sentence is prepared. "
    "On March 3rd, 2026, the invoice came to $1,234.56, which Dr. Smith paid at once."
)
LONG = " ".join([PARAGRAPH] * 5)[:2000]
#: A voice assistant's typical reply (the fast-vocoder issue's TTFA target is for 12 words).
TWELVE_WORDS = "Set a timer for ten minutes and remind me to call home."
#: The texts by name; the concurrency sweep uses SWEEP_LENGTHS ("short / paragraph / ~2,000
#: characters"; the paragraph is about 20 s of audio).
TEXTS = {"sentence": SENTENCE, "paragraph": PARAGRAPH, "long": LONG, "twelve_words": TWELVE_WORDS}
SWEEP_LENGTHS = ("sentence", "paragraph", "long")
#: A long text's stream is followed for this much audio, then cancelled: TTFA and stalls are
#: what it measures (its whole ~2 minutes of audio would dominate the run's time).
AUDIO_CAP_S = 20.0


@functools.cache
def channel_to(address: str) -> grpc.Channel:
    """One channel per address for the whole run: a client keeps its connection, so no
    request pays for a new one (the in-process baseline has none to make)."""
    return grpc.insecure_channel(address)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float] | None:
    """Median, p95, p99 (and n, min, max) of `values`; None when empty."""
    if not values:
        return None
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": pct(values, 0.95),
        "p99": pct(values, 0.99),
        "min": min(values),
        "max": max(values),
    }


@dataclass
class StreamResult:
    """One streamed request as its listener experienced it."""

    length: str
    ttfa_s: float | None
    stall_s: float
    audio_s: float
    elapsed_s: float
    completed: bool  # False when cut at AUDIO_CAP_S
    error: str | None = None
    #: A refusal's retry hint (grpc-retry-pushback-ms), seconds.
    retry_after_s: float | None = None


def stream_once(
    address: str, length: str, timeout: float = 300.0, cap_s: float = AUDIO_CAP_S
) -> StreamResult:
    """Stream TEXTS[length] and follow it as a listener would (up to ``cap_s`` of audio)."""
    request = synthesizer_pb2.SynthesizeRequest(text=TEXTS[length])
    clock = ListenerClock(SAMPLE_RATE_HZ)
    t0 = time.monotonic()
    ttfa = None
    completed = True
    try:
        # One channel per stack, as a client keeps it (no connection per request).
        call = synthesizer_pb2_grpc.SynthesizerStub(channel_to(address)).SynthesizeStream(
            request, timeout=timeout
        )
        for message in call:
            samples = len(message.audio) // 2
            if samples and ttfa is None:
                ttfa = time.monotonic() - t0
            clock.on_send(samples)
            if clock.sent_s >= cap_s:
                completed = False
                call.cancel()
                break
    except grpc.RpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
        pushback = trailers.get(RETRY_PUSHBACK_KEY)
        return StreamResult(
            length, ttfa, clock.stall_s, clock.sent_s, time.monotonic() - t0, False,
            exc.code().name, int(pushback) / 1000.0 if pushback else None,
        )  # fmt: skip
    return StreamResult(length, ttfa, clock.stall_s, clock.sent_s, time.monotonic() - t0, completed)


#: A language model's pace: ~4 characters every 30 ms (~130 characters a second).
AGENT_CHARS, AGENT_EVERY_S = 4, 0.03


@dataclass
class AgentResult:
    """One voice-agent turn: text written as an LLM would, audio streamed back."""

    first_sentence_to_audio_s: float | None
    stall_s: float
    audio_s: float
    error: str | None = None


def voice_agent_once(address: str, text: str, timeout: float = 300.0) -> AgentResult:
    """SynthesizeTextStream fed `text` AGENT_CHARS at a time every AGENT_EVERY_S; latency
    from the moment the first sentence is complete (by the gateway's own segmenting rule)
    to its first audio, and the listener's stalls after that."""
    from services.gateway.segmenter import TextSegmenter

    sentence_done = threading.Event()
    completed_at: list[float] = []

    def messages() -> Iterator[synthesizer_pb2.SynthesizeTextStreamRequest]:
        segmenter = TextSegmenter()
        yield synthesizer_pb2.SynthesizeTextStreamRequest(
            config=synthesizer_pb2.SynthesizeRequest()
        )
        for i in range(0, len(text), AGENT_CHARS):
            fragment = text[i : i + AGENT_CHARS]
            yield synthesizer_pb2.SynthesizeTextStreamRequest(text=fragment)
            if not sentence_done.is_set() and segmenter.feed(fragment):
                completed_at.append(time.monotonic())
                sentence_done.set()
            time.sleep(AGENT_EVERY_S)
        if not sentence_done.is_set():
            completed_at.append(time.monotonic())
            sentence_done.set()

    clock = ListenerClock(SAMPLE_RATE_HZ)
    latency = None
    try:
        # One channel per stack, as a client keeps it.
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel_to(address))
        for message in stub.SynthesizeTextStream(messages(), timeout=timeout):
            samples = len(message.audio) // 2
            if samples and latency is None:
                sentence_done.wait()
                latency = time.monotonic() - completed_at[0]
            clock.on_send(samples)
    except grpc.RpcError as exc:
        return AgentResult(latency, clock.stall_s, clock.sent_s, exc.code().name)
    return AgentResult(latency, clock.stall_s, clock.sent_s)


def overload(
    address: str, callers: int, seconds: float, length: str = "sentence"
) -> dict[str, Any]:
    """`callers` clients streaming TEXTS[length] back to back for `seconds`; a refused one
    waits its retry hint before trying again. What admission control promises: refusals
    fast, admitted requests' TTFA close to unloaded, no admitted request lost."""
    results: list[StreamResult] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def caller() -> None:
        while time.monotonic() < stop_at:
            r = stream_once(address, length)
            with lock:
                results.append(r)
            if r.retry_after_s:
                time.sleep(r.retry_after_s)

    t0 = time.monotonic()
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    admitted = [r for r in results if r.error is None]
    refused = [r for r in results if r.error == "RESOURCE_EXHAUSTED"]
    return {
        "callers": callers,
        "requests": len(results),
        "admitted": len(admitted),
        "refused": len(refused),
        "lost": sorted(r.error for r in results if r.error and r.error != "RESOURCE_EXHAUSTED"),
        "refusal_s": summary([r.elapsed_s for r in refused]),
        "retry_after_s": summary([r.retry_after_s for r in refused if r.retry_after_s]),
        "admitted_ttfa_s": summary([r.ttfa_s for r in admitted if r.ttfa_s is not None]),
        "admitted_rtfx": sum(r.audio_s for r in admitted) / wall if wall else 0.0,
    }


def closed_loop(address: str, streams: int, rounds: int, lengths: list[str]) -> dict[str, Any]:
    """`streams` callers, each sending `rounds` requests back to back (lengths round-robin,
    each caller starting at a different one); per-length and overall summaries."""
    results: list[StreamResult] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        for r in range(rounds):
            result = stream_once(address, lengths[(i + r) % len(lengths)])
            with lock:
                results.append(result)

    t0 = time.monotonic()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return describe(results, wall)


def describe(results: list[StreamResult], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    out: dict[str, Any] = {
        "requests": len(results),
        "errors": sorted(r.error for r in results if r.error),
        "wall_s": wall_s,
        "audio_s": sum(r.audio_s for r in ok),
        "rtfx": sum(r.audio_s for r in ok) / wall_s if wall_s else 0.0,
        "ttfa_s": summary([r.ttfa_s for r in ok if r.ttfa_s is not None]),
        "stall_s": summary([r.stall_s for r in ok]),
        "e2e_s": summary([r.elapsed_s for r in ok if r.completed]),
        "by_length": {},
    }
    for length in sorted({r.length for r in results}):
        mine = [r for r in ok if r.length == length]
        out["by_length"][length] = {
            "ttfa_s": summary([r.ttfa_s for r in mine if r.ttfa_s is not None]),
            "stall_s": summary([r.stall_s for r in mine]),
            "e2e_s": summary([r.elapsed_s for r in mine if r.completed]),
        }
    return out


class InProcess:
    """The three stages composed in one process, no gRPC (the microservice-tax baseline):
    `services/reference.py`'s path, the same models, streaming windows and sentence order.

    `voice`: a catalogue voice (services/voices; None: the default voice a local stack
    started with this environment serves); `vocoder` applies to the student voice.
    `whole_sentences`: vocode each sentence in one pass, as Piper does, instead of in
    streaming windows (less compute, later first audio)."""

    def __init__(
        self,
        threads: int,
        vocoder: str = "auto",
        voice: str | None = None,
        whole_sentences: bool = False,
    ) -> None:
        from services.reference import load_stages
        from services.voices.catalog import default_voice, select

        torch.set_num_threads(threads)
        if voice is None:
            served = select(os.environ.get("VOXLINE_VOICES", ""))
            voice = default_voice(served, os.environ.get("VOXLINE_DEFAULT_VOICE", ""))
        (entry,) = select(voice)
        self.whole_sentences = whole_sentences
        self.stages = load_stages(entry, vocoder)
        self.frontend = self.stages.frontend
        self.acoustic = self.stages.acoustic
        self.vocoder = self.stages.vocoder
        self.sample_rate = self.vocoder.sample_rate

    def audio(self, text: str, seed: int = 0) -> Iterator[torch.Tensor]:
        """PCM pieces in playback order, each as soon as it is vocoded."""
        from services.reference import synthesize

        return synthesize(self.stages, text, seed, self.whole_sentences)

    def stream_once(self, length: str, cap_s: float = AUDIO_CAP_S) -> StreamResult:
        """Follow TEXTS[length] as a listener would, for up to ``cap_s`` seconds of audio."""
        clock = ListenerClock(self.sample_rate)
        t0 = time.monotonic()
        ttfa = None
        for pcm in self.audio(TEXTS[length]):
            if ttfa is None and pcm.numel():
                ttfa = time.monotonic() - t0
            clock.on_send(pcm.numel())
            if clock.sent_s >= cap_s:
                return StreamResult(length, ttfa, clock.stall_s, clock.sent_s, 0.0, False)
        return StreamResult(length, ttfa, clock.stall_s, clock.sent_s, time.monotonic() - t0, True)
