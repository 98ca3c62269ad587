"""SynthesizeTextStream: text streamed in as a language model writes it, audio streamed out.

Fragment boundaries change nothing (the same audio as the whole text, whatever the split);
a sentence is spoken once complete, a flush speaks what is pending; the usual validation
applies, the limit on the total as soon as it is passed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from voxline.v1 import synthesizer_pb2 as pb

from services.gateway.segmenter import RUN_CHARS, TextSegmenter

TEXT = "Dr. Smith paid $1,234.56 on March 3rd. The rest, e.g. the tip, came later."
# Where a split could go wrong, by class (the split goes before the marked character).
SPLITS = {
    "mid-word": TEXT.index("mith"),
    "mid-number": TEXT.index("34.56"),
    "mid-abbreviation": TEXT.index("r. Smith"),
    "after a period that is not a sentence end": TEXT.index(" Smith"),
    "after e.g.": TEXT.index(" the tip"),
    "after the sentence end": TEXT.index(" The rest"),
}


def _messages(
    fragments: list[str], config: pb.SynthesizeRequest | None = None, flush_at_end: bool = False
) -> Iterator[pb.SynthesizeTextStreamRequest]:
    yield pb.SynthesizeTextStreamRequest(config=config or pb.SynthesizeRequest())
    for fragment in fragments:
        yield pb.SynthesizeTextStreamRequest(text=fragment)
    if flush_at_end:
        yield pb.SynthesizeTextStreamRequest(flush=pb.Flush())


def _pcm(responses: Iterator[pb.SynthesizeStreamResponse]) -> np.ndarray:
    return np.frombuffer(b"".join(r.audio for r in responses), dtype="<i2").astype(np.float64)


def _same_audio(a: np.ndarray, b: np.ndarray) -> None:
    assert len(a) == len(b), (len(a), len(b))
    # Batching with other work can change float rounding: equal within a small error.
    error = np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(a**2)), 1.0)
    assert error < 0.02, error


@pytest.fixture(scope="module")
def whole(synthesizer) -> np.ndarray:
    return _pcm(synthesizer.SynthesizeStream(pb.SynthesizeRequest(text=TEXT), timeout=120))


@pytest.mark.parametrize("where", list(SPLITS), ids=list(SPLITS))
def test_split_anywhere_gives_the_whole_text_audio(synthesizer, whole, where: str) -> None:
    cut = SPLITS[where]
    fragments = [TEXT[:cut], TEXT[cut:]]
    _same_audio(_pcm(synthesizer.SynthesizeTextStream(_messages(fragments), timeout=120)), whole)


def test_llm_like_fragments_give_the_whole_text_audio(synthesizer, whole) -> None:
    fragments = [TEXT[i : i + 4] for i in range(0, len(TEXT), 4)]
    responses = list(synthesizer.SynthesizeTextStream(_messages(fragments), timeout=120))
    _same_audio(_pcm(iter(responses)), whole)
    indices = [r.sentence_index for r in responses]
    assert indices == sorted(indices) and set(indices) == {0, 1}  # text order, no repeats


def test_segmenter_hands_back_each_sentence_once_in_order() -> None:
    for cut in range(len(TEXT) + 1):
        segmenter = TextSegmenter()
        pieces = segmenter.feed(TEXT[:cut]) + segmenter.feed(TEXT[cut:]) + segmenter.flush()
        assert pieces == [
            "Dr. Smith paid $1,234.56 on March 3rd.",
            "The rest, e.g. the tip, came later.",
        ], cut


def test_a_sentence_is_spoken_before_the_text_ends_and_flush_speaks_the_rest(
    synthesizer,
) -> None:
    """Audio for a complete sentence (and for a flushed fragment) arrives while the client
    is still holding the stream open."""
    heard = threading.Event()

    def messages() -> Iterator[pb.SynthesizeTextStreamRequest]:
        yield pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest())
        yield pb.SynthesizeTextStreamRequest(text="The first sentence is complete. And the")
        assert heard.wait(60), "no audio for a complete sentence while the stream was open"
        heard.clear()
        yield pb.SynthesizeTextStreamRequest(text=" second has no end yet")
        yield pb.SynthesizeTextStreamRequest(flush=pb.Flush())
        assert heard.wait(60), "a flush did not speak the pending text"

    seen: set[int] = set()
    for response in synthesizer.SynthesizeTextStream(messages(), timeout=120):
        if response.sentence_index not in seen:
            seen.add(response.sentence_index)
            heard.set()
    assert seen == {0, 1}


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([pb.SynthesizeTextStreamRequest(text="No config first.")], "must be a config"),
        ([pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest(voice="nope"))], "voice"),
        (
            [
                pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest()),
                pb.SynthesizeTextStreamRequest(text="..."),
            ],
            "nothing speakable",
        ),
        (
            [
                pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest()),
                pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest()),
            ],
            "one config",
        ),
    ],
    ids=["no config", "unknown voice", "nothing speakable", "two configs"],
)
def test_invalid_streams(synthesizer, messages, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(synthesizer.SynthesizeTextStream(iter(messages), timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert needle in info.value.details()


def test_limit_on_the_total_is_enforced_as_soon_as_it_is_passed(synthesizer) -> None:
    """A client that never stops sending is refused once the total passes the limit."""
    sent = 0

    def endless() -> Iterator[pb.SynthesizeTextStreamRequest]:
        nonlocal sent
        yield pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest())
        while True:
            sent += 100
            yield pb.SynthesizeTextStreamRequest(text="word " * 20)

    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        for _ in synthesizer.SynthesizeTextStream(endless(), timeout=120):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "limit is 5000" in info.value.details()
    assert time.monotonic() - t0 < 60


def test_time_to_first_audio_counts_from_the_completing_fragment(stack, synthesizer) -> None:
    """A client that takes 1.75 s to finish its first sentence: the gateway's TTFA is
    counted from the fragment that completed it, not from the start of the stream."""
    request_id = "ttfa-from-completion"

    def slow() -> Iterator[pb.SynthesizeTextStreamRequest]:
        yield pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest(request_id=request_id))
        for word in ["Slowly", "written", "words", "arrive", "one", "by", "one."]:
            time.sleep(0.25)
            yield pb.SynthesizeTextStreamRequest(text=word + " ")
        yield pb.SynthesizeTextStreamRequest(text="Next")

    t0 = time.monotonic()
    first_audio = None
    for response in synthesizer.SynthesizeTextStream(slow(), timeout=120):
        if first_audio is None and response.audio:
            first_audio = time.monotonic() - t0
    assert first_audio is not None and first_audio > 1.75
    records = [
        json.loads(line)
        for line in (stack.run_dir / "gateway.log").read_text().splitlines()
        if request_id in line
    ]
    (record,) = [r for r in records if r.get("method") == "text_stream"]
    assert 0 < record["ttfa_s"] < first_audio - 1.5, (record, first_audio)


def test_a_run_nothing_can_settle_is_spoken_and_pending_stays_bounded() -> None:
    """A sentence of quotes with no space never settles: the segmenter speaks it once it
    passes RUN_CHARS, so no fragment re-reads more than that (tests/test_text_linear.py)."""
    segmenter = TextSegmenter()
    pieces: list[str] = []
    for ch in "a" + '"' * 2000 + " The end.":
        pieces += segmenter.feed(ch)
        assert len(segmenter.pending) <= RUN_CHARS + 1
    pieces += segmenter.flush()
    assert pieces[0].startswith('a"') and pieces[-1].endswith("The end.")
    assert "".join(pieces).count("a") == 1
