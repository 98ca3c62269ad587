"""Automatic intelligibility scoring: pocketsphinx transcription + word error rate.

pocketsphinx ships an English acoustic model, dictionary and language model in its wheel, so
it runs offline. It expects 16 kHz 16-bit mono audio. WER is computed here without any
library: the word-level Levenshtein distance over normalised words, divided by the number of
reference words.

Normalisation (applied to reference and hypothesis alike): lower case, hyphens become spaces
("twenty-five" -> "twenty five", as the recogniser's dictionary spells numbers), apostrophes
are kept inside words, every other non-letter is dropped, and the few abbreviations the
recogniser's dictionary spells short ("dr", "mr") are written out as our normaliser says them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["ASR_RATE", "Recognizer", "edit_distance", "normalize_words", "to_asr_rate", "wer"]

ASR_RATE = 16000
_NON_WORD = re.compile(r"[^a-z' ]+")
# pocketsphinx's dictionary has these words in abbreviated spelling; `normalize` spells out.
_SPELLED_OUT = {"dr": "doctor", "mr": "mister", "mrs": "missus", "ms": "miz"}


def normalize_words(text: str) -> list[str]:
    """Text -> comparable words (see the module docstring)."""
    text = text.lower().replace("-", " ")
    words = _NON_WORD.sub(" ", text).split()
    words = [w.strip("'") for w in words if w.strip("'")]
    return [_SPELLED_OUT.get(w, w) for w in words]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Minimum substitutions + insertions + deletions turning `ref` into `hyp`."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference` (can exceed 1)."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)


def to_asr_rate(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    """int16 (or float in [-1, 1]) mono audio at `sample_rate` -> int16 at 16 kHz."""
    if pcm.dtype != np.int16:
        pcm = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)
    if sample_rate == ASR_RATE:
        return pcm
    import soxr

    return soxr.resample(pcm, sample_rate, ASR_RATE, quality="HQ")


class Recognizer:
    """pocketsphinx with its bundled US English models; one utterance at a time."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")
        # The decoder's cepstral mean adapts to every utterance it hears and carries over to
        # the next, so a transcript would depend on what was transcribed before (measured:
        # noise transcribed first moved a 16-sentence WER from 0.167 to 0.184). Every
        # utterance starts from the initial mean instead.
        self._initial_cmn = self._decoder.get_cmn()

    def transcribe(self, pcm: np.ndarray, sample_rate: int = ASR_RATE) -> str:
        """Best hypothesis for one utterance of mono audio (int16 or float), independent of
        the utterances transcribed before it."""
        audio = to_asr_rate(pcm, sample_rate)
        d = self._decoder
        d.reinit_feat()
        d.set_cmn(self._initial_cmn)
        d.start_utt()
        d.process_raw(np.ascontiguousarray(audio, dtype="<i2").tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr if hyp is not None else ""
