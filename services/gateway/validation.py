"""Checks on public requests: every rejection is INVALID_ARGUMENT with a human message."""

from __future__ import annotations

import math
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from voxline.v1 import synthesizer_pb2

from services.frontend.normalize import is_speakable
from services.gateway.audio import SUPPORTED_SAMPLE_RATES
from services.gateway.catalog import VoiceFacts
from services.runtime.errors import InvalidArgument
from services.runtime.scheduler import Priority
from services.runtime.voice import check_voice

MIN_RATE, MAX_RATE = 0.25, 4.0
#: A caller's request id: echoed in responses and logs, so short and of a plain charset.
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")
#: Bytes a request may take beyond its text (voice, request id, numbers, framing).
REQUEST_OVERHEAD_BYTES = 16 * 1024
SUPPORTED_ENCODINGS = (
    synthesizer_pb2.AUDIO_ENCODING_UNSPECIFIED,
    synthesizer_pb2.AUDIO_ENCODING_LINEAR16,
)


PRIORITIES = {
    synthesizer_pb2.PRIORITY_UNSPECIFIED: Priority.INTERACTIVE,
    synthesizer_pb2.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
    synthesizer_pb2.PRIORITY_BULK: Priority.BULK,
}


@dataclass(frozen=True)
class Options:
    """A request's validated settings (everything but its text)."""

    voice: VoiceFacts
    speaking_rate: float
    sample_rate: int
    priority: Priority
    speaker_id: int
    seed: int


def validate(
    request: synthesizer_pb2.SynthesizeRequest,
    max_text_chars: int,
    voices: Mapping[str, VoiceFacts],
) -> Options:
    """The request's settings, or InvalidArgument.

    `voices` are the voices the deployment serves, the default first; an empty request
    voice means the default.
    """
    text = request.text
    if not text or not text.strip():
        raise InvalidArgument("text is empty")
    check_text_length(len(text), max_text_chars)
    if not looks_speakable(text):
        raise InvalidArgument("text contains nothing speakable (only control or punctuation)")
    return validate_options(request, voices)


def looks_speakable(text: str) -> bool:
    """`is_speakable`, normalising only a text without a letter or digit: this runs before
    admission, and the frontend's normalisation (after it) is what spells the rest out."""
    return any(ch.isalnum() for ch in text) or is_speakable(text)


def check_text_length(characters: int, max_text_chars: int) -> None:
    """The text limit (for a text stream: on the text received so far)."""
    if characters > max_text_chars:
        raise InvalidArgument(f"text is {characters} characters; the limit is {max_text_chars}")


def validate_options(
    request: synthesizer_pb2.SynthesizeRequest, voices: Mapping[str, VoiceFacts]
) -> Options:
    """Everything but the text."""
    check_voice(request.voice, set(voices))
    if not voices:
        raise InvalidArgument("no voice is served")
    voice = voices[request.voice or next(iter(voices))]
    rate = request.speaking_rate if request.HasField("speaking_rate") else 1.0
    if not math.isfinite(rate) or rate <= 0:
        raise InvalidArgument(f"speaking_rate must be a positive number, got {float32_text(rate)}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidArgument(
            f"speaking_rate must be between {MIN_RATE:g} and {MAX_RATE:g}, got {float32_text(rate)}"
        )
    sample_rate = request.sample_rate_hz or voice.sample_rate_hz
    if sample_rate not in SUPPORTED_SAMPLE_RATES:
        raise InvalidArgument(
            f"sample_rate_hz {request.sample_rate_hz} is not supported; use one of "
            f"{', '.join(map(str, SUPPORTED_SAMPLE_RATES))} (or 0 for the voice's native "
            f"{voice.sample_rate_hz})"
        )
    if request.encoding not in SUPPORTED_ENCODINGS:
        raise InvalidArgument(
            f"encoding {request.encoding} is not supported; use AUDIO_ENCODING_LINEAR16"
        )
    if request.request_id and (
        len(request.request_id) > MAX_REQUEST_ID_CHARS
        or not _REQUEST_ID.fullmatch(request.request_id)
    ):
        raise InvalidArgument(
            f"request_id must be 1 to {MAX_REQUEST_ID_CHARS} characters of A-Z a-z 0-9 . _ : -"
        )
    if request.priority not in PRIORITIES:
        raise InvalidArgument(
            f"priority {request.priority} is unknown; use PRIORITY_INTERACTIVE or PRIORITY_BULK"
        )
    return Options(
        voice,
        float(rate),
        sample_rate,
        PRIORITIES[request.priority],
        voice.speaker_id(request.speaker),
        # A request without a seed gets a fresh one (SynthesizeRequest.seed).
        request.seed if request.HasField("seed") else secrets.randbits(63),
    )


def float32_text(value: float) -> str:
    """A float32 request field as a caller wrote it: the shortest decimal that reads back as
    the same float32 (0.1 arrives as 0.10000000149011612 and prints "0.1")."""
    if not math.isfinite(value):
        return str(value)
    single = _float32(value)
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        shortest = float(f"{value:.{digits}g}")
        if _float32(shortest) == single:
            return repr(shortest)
    return repr(value)


def _float32(value: float) -> float:
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # beyond float32's range: not a float32 value at all
        return value


def max_request_bytes(max_text_chars: int) -> int:
    """The largest public request worth receiving: the text limit in UTF-8's worst case
    (4 bytes a character) plus the other fields. Bigger messages are refused by grpc
    (RESOURCE_EXHAUSTED) before they are read into memory."""
    return 4 * max_text_chars + REQUEST_OVERHEAD_BYTES
