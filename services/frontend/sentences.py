"""Sentence splitting for normalised TTS text.

`split_sentences` cuts text (normally the output of `normalize`) into pieces that are phonemised
and synthesised one at a time. Each piece keeps its closing punctuation, which shapes prosody.

Rules:

* Line breaks always end a piece (paragraphs and list items are separate utterances).
* ``!``, ``?`` and ``;`` followed by whitespace (or the end) end a sentence; closing quotes and
  brackets after them stay with the sentence.
* ``.`` followed by whitespace ends a sentence unless the word before it is a known abbreviation
  ("Dr.", "etc.", "U.S.") or a single letter (an initial, "J. R. R. Tolkien"), or the next word
  starts with a lower-case letter (likely an abbreviation we do not know). A period followed by
  a non-space ("3.14", "example.com") never splits.
* A sentence longer than `max_chars` is cut at the last comma-like break (``,`` ``:`` ``-``) that
  leaves a reasonably long first part, else at the last space, else hard at `max_chars`.
* Pieces with no letter or digit (stray punctuation) are dropped: there is nothing to say.
"""

from __future__ import annotations

import re

__all__ = ["split_sentences"]

# Lower-cased abbreviations (without their final period) after which "." does not end a
# sentence. Most are expanded by `normalize`; they are listed so raw text splits sanely too.
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "jr",
        "sr",
        "rev",
        "hon",
        "gen",
        "capt",
        "lt",
        "sgt",
        "col",
        "gov",
        "sen",
        "rep",
        "pres",
        "mt",
        "ft",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "a.k.a",
        "approx",
        "incl",
        "cf",
        "viz",
        "al",
        "ca",
        "fig",
        "no",
        "nos",
        "inc",
        "ltd",
        "corp",
        "co",
        "dept",
        "ave",
        "blvd",
        "rd",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    }
)

# A run of terminators, then any closing quotes/brackets, then whitespace or the end.
_BOUNDARY_RE = re.compile(r"[.!?;]+[\"')\]}]*(?=\s|$)")
_ACRONYM_RE = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")
_LEADING_PUNCT = "\"'([{"
# Soft break points for over-long sentences: clause punctuation followed by a space, where the
# voice pauses anyway.
_SOFT_BREAK_RE = re.compile(r"[,:\-–](?= )")


def split_sentences(text: str, max_chars: int = 400) -> list[str]:
    """Split normalised text into sentences of at most `max_chars` characters.

    Splits on line breaks and on ``. ! ? ;`` (not on abbreviations, initials or decimal points),
    then cuts sentences longer than `max_chars` at commas or spaces. Pieces are stripped, keep
    their punctuation, never empty, and always contain a letter or digit.

    Raises `ValueError` if `max_chars` < 1.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    pieces: list[str] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line:
            continue
        for sentence in _split_line(line):
            for piece in _wrap(sentence, max_chars):
                if any(ch.isalnum() for ch in piece):
                    pieces.append(piece)
    return pieces


def _split_line(line: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY_RE.finditer(line):
        if not _is_boundary(line, m):
            continue
        sentence = line[start : m.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = m.end()
    rest = line[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _is_boundary(line: str, m: re.Match[str]) -> bool:
    punct = m.group(0)
    if any(c in punct for c in "!?;"):
        return True
    if m.end() >= len(line):
        return True
    # Only periods from here on.
    # Lines are whitespace-collapsed, so a short window holds the next word's first letter.
    nxt = line[m.end() : m.end() + 16].lstrip()
    if nxt and nxt.lstrip(_LEADING_PUNCT)[:1].islower():
        return False  # "... approx. three" -- a lower-case continuation
    if len(punct.rstrip("\"')]}")) > 1:
        return True  # an ellipsis before a capital: a new sentence
    word = line[line.rfind(" ", 0, m.start()) + 1 : m.start()].lstrip(_LEADING_PUNCT)
    if word.lower() in _ABBREVIATIONS:
        return False
    # Initials and dotted acronyms: "J.", "U.S" (the final period is the match itself). The
    # pronoun "I" is far more often sentence-final than an initial.
    return not (word and word != "I" and _ACRONYM_RE.fullmatch(word))


def _wrap(sentence: str, max_chars: int) -> list[str]:
    """Cut a sentence into pieces of at most `max_chars`, preferring clause breaks."""
    pieces: list[str] = []
    rest = sentence
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]  # a break char may sit exactly at max_chars - 1
        cut = -1
        # Prefer the last comma-like break, unless it would leave a tiny first piece (a
        # comma near the start of a long clause is a worse cut than a late space).
        for bm in _SOFT_BREAK_RE.finditer(window):
            if bm.end() <= max_chars:
                cut = bm.end()
        if cut < max_chars // 3:
            space = window.rfind(" ")
            cut = space if space > 0 else max_chars
        piece = rest[:cut].strip()
        if piece:
            pieces.append(piece)
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return pieces
