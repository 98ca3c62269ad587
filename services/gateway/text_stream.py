"""The request side of SynthesizeTextStream: fragments and flushes in, speakable segments out."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from voxline.v1 import synthesizer_pb2

from services.gateway.deadlines import FirstMessage, MessageReader
from services.gateway.segmenter import TextSegmenter
from services.gateway.validation import check_text_length, looks_speakable
from services.runtime.errors import InvalidArgument

CONFIG_FIRST = (
    "the first SynthesizeTextStream message must be a config (a SynthesizeRequest with the "
    "voice and audio settings)"
)


def read_config(
    reader: MessageReader, first_message: FirstMessage
) -> synthesizer_pb2.SynthesizeRequest:
    """The stream's first message, which must be its config (read within the limit)."""
    first = first_message.read(reader, "config message")
    if first is None or first.WhichOneof("message") != "config":
        raise InvalidArgument(CONFIG_FIRST)
    return first.config


class TextStreamInput:
    """Iterates the segments to speak, as the client's fragments complete them.

    Enforces the text limit on the total received (INVALID_ARGUMENT as soon as it is
    passed), and notes when the first speakable segment was complete: time to first audio is
    measured from there (the client cannot hear a sentence it has not finished sending).
    """

    def __init__(
        self,
        first_fragment: str,
        messages: Iterator[synthesizer_pb2.SynthesizeTextStreamRequest],
        max_text_chars: int,
    ) -> None:
        self._first_fragment = first_fragment
        self._messages = messages
        self._max_text_chars = max_text_chars
        self._segmenter = TextSegmenter()
        self._characters = 0
        self._first_complete: float | None = None
        self._error: InvalidArgument | None = None
        self._lock = threading.Lock()

    @property
    def characters(self) -> int:
        """Characters received so far."""
        with self._lock:
            return self._characters

    @property
    def first_complete(self) -> float | None:
        """`time.perf_counter()` when the first speakable segment was complete."""
        with self._lock:
            return self._first_complete

    def raise_if_failed(self) -> None:
        """Raise the stream's error (e.g. the limit passed) now, even while earlier
        sentences are still being spoken: the caller must hear about it at once."""
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._segments()
        except InvalidArgument as exc:
            with self._lock:
                self._error = exc
            raise

    def _segments(self) -> Iterator[str]:
        yield from self._speakable(self._add(self._first_fragment))
        for message in self._messages:
            kind = message.WhichOneof("message")
            if kind == "text":
                yield from self._speakable(self._add(message.text))
            elif kind == "flush":
                yield from self._speakable(self._segmenter.flush())
            elif kind == "config":
                raise InvalidArgument("a SynthesizeTextStream carries one config, first")
        yield from self._speakable(self._segmenter.flush())
        if self.first_complete is None:
            raise InvalidArgument("the text stream held nothing speakable")

    def _add(self, fragment: str) -> list[str]:
        with self._lock:
            self._characters += len(fragment)
            characters = self._characters
        check_text_length(characters, self._max_text_chars)
        return self._segmenter.feed(fragment)

    def _speakable(self, segments: list[str]) -> Iterator[str]:
        for segment in segments:
            if not looks_speakable(segment):
                continue
            with self._lock:
                if self._first_complete is None:
                    self._first_complete = time.perf_counter()
            yield segment
