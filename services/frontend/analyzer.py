"""The frontend's text half, shared by every voice: normalise, split, G2P, map to ids (CPU).

A voice differs only in its espeak-ng language and its phoneme-id map (Piper voices carry
their own); the text rules and sentence splitting are Voxline's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from services.frontend.g2p import DEFAULT_LANGUAGE, PhonemeIdMapper, get_phonemizer
from services.frontend.normalize import is_speakable, normalize
from services.frontend.sentences import split_sentences
from services.runtime.errors import InvalidArgument
from services.runtime.voice import MAX_EXPANSION, MAX_SENTENCES, MAX_TEXT_CHARS

#: Longest sentence handed to G2P before it is split at clause boundaries (characters).
MAX_SENTENCE_CHARS = 400


@dataclass
class PreparedSentence:
    """One sentence after the text half: ids only (the text itself is not kept)."""

    index: int
    phoneme_ids: torch.Tensor  # [T] int64
    num_chars: int


class TextAnalyzer:
    """Text -> sentences of phoneme ids for one voice's language and id map.

    Args:
        mapper: The voice's phoneme-id map (None: the bundled Piper en-us map).
        language: espeak-ng voice (None: the map's own, else en-us).
        max_sentence_chars: Longer sentences are spoken clause by clause.
    """

    def __init__(
        self,
        mapper: PhonemeIdMapper | None = None,
        language: str | None = None,
        max_sentence_chars: int = MAX_SENTENCE_CHARS,
    ) -> None:
        self._mapper = mapper or PhonemeIdMapper()
        self._language = language or self._mapper.espeak_voice or DEFAULT_LANGUAGE
        self._max_sentence_chars = max_sentence_chars
        # The espeak backend is process-wide per language (espeak-ng has global state).
        self._phonemizer = get_phonemizer(self._language)

    def prepare(self, text: str) -> list[PreparedSentence]:
        """:meth:`prepare_iter` for a whole text."""
        return list(self.prepare_iter(text))

    def prepare_iter(
        self, text: str, max_text_chars: int = MAX_TEXT_CHARS
    ) -> Iterator[PreparedSentence]:
        """One sentence at a time: G2P (the costly part) runs only as sentences are asked
        for. Raises InvalidArgument before the first sentence when the text has nothing
        speakable or passes a limit (normalised length: MAX_EXPANSION x `max_text_chars`;
        MAX_SENTENCES), or after the last when no sentence had phonemes."""
        if not is_speakable(text):
            raise InvalidArgument("text has nothing speakable (empty, whitespace or control chars)")
        sentences = split_sentences(_normalized(text, max_text_chars), self._max_sentence_chars)
        if len(sentences) > MAX_SENTENCES:
            raise InvalidArgument(
                f"text has {len(sentences)} sentences; the limit per request is {MAX_SENTENCES}"
            )
        count = 0
        for sentence in sentences:
            ids = self._mapper.ids(self._phonemizer.phonemes(sentence))
            if len(ids) <= 3:  # BOS, pad, EOS only: nothing to say (e.g. lone punctuation)
                continue
            yield PreparedSentence(count, torch.tensor(ids, dtype=torch.int64), len(sentence))
            count += 1
        if not count:
            raise InvalidArgument("text produced no pronounceable phonemes")


def _normalized(text: str, max_text_chars: int) -> str:
    """`normalize(text)`, refused when spelling numbers and symbols out made it too long."""
    normalized = normalize(text)
    limit = MAX_EXPANSION * max_text_chars
    if len(normalized) > limit:
        raise InvalidArgument(
            f"text is {len(normalized)} characters once numbers and symbols are spelled out; "
            f"the limit is {limit} ({MAX_EXPANSION} x the {max_text_chars}-character text limit)"
        )
    return normalized
