"""Grapheme-to-phoneme conversion and phoneme-id mapping, matching Piper's conventions.

`Phonemizer` turns one normalised sentence into an espeak-ng IPA string the way Piper does
(en-us voice, stress marks kept, clause punctuation ``, : ; . ! ?`` kept, language-switch flags
such as "(fr)" removed). It uses phonemizer's espeak backend bound to the libespeak-ng and data
shipped in the espeakng-loader wheel, so no system espeak-ng is needed.

`PhonemeIdMapper` turns that IPA string into model input ids with Piper's layout::

    [BOS, PAD, id(p1), PAD, id(p2), PAD, ..., id(pn), PAD, EOS]   # e.g. [1, 0, ..., 0, 2]

Like Piper (piper-phonemize decomposes espeak's output with NFD before looking symbols up), the
phoneme string is NFD-normalised and mapped one Unicode code point at a time, so a precomposed
"ç" becomes "c" + U+0327 (both in the map) and combining diacritics map on their own.
"""

from __future__ import annotations

import json
import logging
import threading
import unicodedata
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phonemizer.backend import EspeakBackend

__all__ = [
    "DEFAULT_LANGUAGE",
    "PHONEME_ID_MAP_PATH",
    "PhonemeIdMapper",
    "Phonemizer",
    "get_id_mapper",
    "get_phonemizer",
    "text_to_ids",
]

_LOG = logging.getLogger(__name__)
# phonemizer logs a WARNING on many calls (e.g. "words count mismatch"); keep its chatter on a
# child logger that only lets errors through, so it neither floods logs nor leaks text.
_BACKEND_LOG = logging.getLogger(__name__ + ".espeak")
_BACKEND_LOG.setLevel(logging.ERROR)

DEFAULT_LANGUAGE = "en-us"
PHONEME_ID_MAP_PATH = Path(__file__).with_name("phoneme_id_map.json")

# The clause punctuation Piper keeps (it appends these from espeak's clause terminators); any
# other punctuation (quotes, brackets, dashes) is passed to espeak, which ignores it, as in Piper.
_PIPER_PUNCTUATION = ";:,.!?"

# espeak-ng keeps global state and phonemizer's wrapper is not thread-safe: one lock guards
# backend creation and every call into espeak, process-wide.
_ESPEAK_LOCK = threading.Lock()
_BACKENDS: dict[str, EspeakBackend] = {}


def _create_backend(language: str) -> EspeakBackend:
    """Create an espeak backend bound to the espeakng-loader library. Call with the lock held."""
    # Imported here, not at module level: phonemizer pulls in joblib & co. (~50 ms), and
    # processes that only import this module for types or the mapper should not pay for it.
    import espeakng_loader
    from phonemizer.backend import EspeakBackend
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    # Class-level settings, read when the backend loads the library: always use the bundled
    # libespeak-ng and its data, never whatever espeak a host may (not) have installed.
    EspeakWrapper.set_library(espeakng_loader.get_library_path())
    EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
    return EspeakBackend(
        language,
        punctuation_marks=_PIPER_PUNCTUATION,
        preserve_punctuation=True,
        with_stress=True,
        language_switch="remove-flags",
        logger=_BACKEND_LOG,
    )


def _backend(language: str) -> EspeakBackend:
    with _ESPEAK_LOCK:
        backend = _BACKENDS.get(language)
        if backend is None:
            # Slow (~0.1-0.2 s: loads the library and voice data), so done once per process.
            backend = _create_backend(language)
            _BACKENDS[language] = backend
        return backend


def _sanitize(sentence: str) -> str:
    """Make text safe to hand to espeak: no control/format characters or lone surrogates
    (which cannot be encoded to UTF-8), and single spaces (phonemizer treats lines separately).
    """
    if not (sentence.isascii() and sentence.isprintable()):
        sentence = "".join(
            ch if not unicodedata.category(ch).startswith("C") else " " for ch in sentence
        )
    return " ".join(sentence.split())


class Phonemizer:
    """espeak-ng IPA phonemizer (Piper-compatible) for one language.

    The underlying espeak backend is slow to create (~0.2 s), so the first instance for a
    language creates it and every later instance in the process shares it; later instances
    are cheap. Calls are serialised with a lock, so
    an instance may be used from several threads (but they will not phonemize in parallel).
    """

    def __init__(self, language: str = DEFAULT_LANGUAGE) -> None:
        """Bind to (creating if needed) the process-wide espeak backend for `language`."""
        self._language = language
        self._backend = _backend(language)
        from phonemizer.separator import Separator

        # No separator between phones, a space between words: Piper's phoneme string format.
        self._separator = Separator(phone="", syllable="", word=" ")

    @property
    def language(self) -> str:
        """The espeak-ng voice, e.g. "en-us"."""
        return self._language

    def phonemes(self, sentence: str) -> str:
        """IPA phonemes for one sentence, e.g. "Hello world." -> "həlˈoʊ wˈɜːld.".

        Stress marks (ˈ ˌ) and clause punctuation are kept, words are separated by one space.
        Returns "" when the sentence has no letter or digit. Expects normalised text (numbers
        are read by espeak itself otherwise); never logs the text.
        """
        text = _sanitize(sentence)
        if not any(ch.isalnum() for ch in text):
            return ""
        with _ESPEAK_LOCK:
            out = self._backend.phonemize([text], separator=self._separator, strip=True, njobs=1)
        return " ".join(out[0].split()) if out else ""


class PhonemeIdMapper:
    """Maps IPA phoneme strings to Piper model input ids using a `phoneme_id_map.json`."""

    def __init__(self, path: str | Path = PHONEME_ID_MAP_PATH, config: dict | None = None) -> None:
        """Load the map (a Piper voice config subset: "phoneme_id_map", "num_symbols", ...)
        from `path`, or take it from `config` (a voice's own map) when given.

        Raises `ValueError` if the map lacks the pad "_", BOS "^" or EOS "$" symbols.
        """
        if config is None:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        raw: dict[str, list[int]] = config["phoneme_id_map"]
        self._map: dict[str, tuple[int, ...]] = {
            k: tuple(int(i) for i in v) for k, v in raw.items()
        }
        self._pad_id = self._single_id("_")
        self._bos_id = self._single_id("^")
        self._eos_id = self._single_id("$")
        max_id = max(i for ids in self._map.values() for i in ids)
        # num_symbols is the model's embedding size; fall back to the ids actually used.
        self._symbol_count = int(config.get("num_symbols", max_id + 1))
        self._espeak_voice = str(config.get("espeak_voice", DEFAULT_LANGUAGE))
        self._dropped_lock = threading.Lock()
        self._dropped_total = 0

    def _single_id(self, symbol: str) -> int:
        ids = self._map.get(symbol)
        if not ids or len(ids) != 1:
            raise ValueError(f"phoneme_id_map needs exactly one id for {symbol!r}")
        return ids[0]

    @property
    def symbol_count(self) -> int:
        """Number of symbols the model knows (its embedding size); every id is below this."""
        return self._symbol_count

    @property
    def pad_id(self) -> int:
        """Id of the pad symbol "_" interleaved after every phoneme (0 for Piper voices)."""
        return self._pad_id

    @property
    def bos_id(self) -> int:
        """Id of the beginning-of-sentence symbol "^" (1 for Piper voices)."""
        return self._bos_id

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sentence symbol "$" (2 for Piper voices)."""
        return self._eos_id

    @property
    def espeak_voice(self) -> str:
        """The espeak-ng voice the map was built for (from the JSON, default "en-us")."""
        return self._espeak_voice

    @property
    def dropped_total(self) -> int:
        """How many unmapped symbols `ids` has dropped since this mapper was created."""
        return self._dropped_total

    def ids(self, phonemes: str) -> list[int]:
        """Model input ids for an IPA string: [BOS, PAD] + [id, PAD] per symbol + [EOS].

        The string is NFD-normalised and mapped per code point, as Piper does. Symbols missing
        from the map are dropped (counted in `dropped_total`, logged at DEBUG as code points).
        """
        return self.ids_with_dropped(phonemes)[0]

    def ids_with_dropped(self, phonemes: str) -> tuple[list[int], int]:
        """Like `ids`, also returning how many symbols of this string were dropped."""
        pad = self._pad_id
        ids = [self._bos_id, pad]
        unknown: list[str] = []
        for symbol in unicodedata.normalize("NFD", phonemes):
            mapped = self._map.get(symbol)
            if mapped is None:
                unknown.append(symbol)
                continue
            for i in mapped:
                ids.append(i)
                ids.append(pad)
        ids.append(self._eos_id)
        if unknown:
            with self._dropped_lock:
                self._dropped_total += len(unknown)
            if _LOG.isEnabledFor(logging.DEBUG):
                # Code points only: enough to extend the map, no user text in logs.
                codes = sorted({f"U+{ord(s):04X}" for s in unknown})
                _LOG.debug("dropped %d unmapped phoneme symbol(s): %s", len(unknown), codes)
        return ids, len(unknown)


@cache
def get_phonemizer(language: str = DEFAULT_LANGUAGE) -> Phonemizer:
    """The process-wide `Phonemizer` for `language` (created on first call)."""
    return Phonemizer(language)


@cache
def get_id_mapper() -> PhonemeIdMapper:
    """The process-wide `PhonemeIdMapper` for the bundled `phoneme_id_map.json`."""
    return PhonemeIdMapper()


def text_to_ids(sentence: str) -> list[int]:
    """Phoneme ids for one normalised sentence, using the process-wide phonemizer and map.

    Does not normalise: pass a piece from `split_sentences(normalize(text))`.
    """
    mapper = get_id_mapper()
    return mapper.ids(get_phonemizer(mapper.espeak_voice).phonemes(sentence))
