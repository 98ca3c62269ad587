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

    def prepare_iter(self, text: str) -> Iterator[PreparedSentence]:
        """One sentence at a time: G2P (the costly part) runs only as sentences are asked
        for. Raises InvalidArgument before the first sentence when the text has nothing
        speakable, or after the last when no sentence had phonemes."""
        if not is_speakable(text):
            raise InvalidArgument("text has nothing speakable (empty, whitespace or control chars)")
        count = 0
        for sentence in split_sentences(normalize(text), self._max_sentence_chars):
            ids = self._mapper.ids(self._phonemizer.phonemes(sentence))
            if len(ids) <= 3:  # BOS, pad, EOS only: nothing to say (e.g. lone punctuation)
                continue
            yield PreparedSentence(count, torch.tensor(ids, dtype=torch.int64), len(sentence))
            count += 1
        if not count:
            raise InvalidArgument("text produced no pronounceable phonemes")
