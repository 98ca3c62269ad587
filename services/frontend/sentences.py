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

Splitting is linear in the length of the text. `split_settled` serves text that arrives in
fragments (the gateway's text streams): it splits the part of a text that no later text can
change, so a caller re-splits only what follows.
"""

from __future__ import annotations

import re

from services.frontend.normalize import ABBREVIATION_WORDS

__all__ = ["split_sentences", "split_settled"]

# Lower-cased abbreviations (without their final period) after which "." does not end a
# sentence. Most are expanded by `normalize`; the splitter also sees raw text. The list lives
# with the expansions in normalize.py, stated once.
_ABBREVIATIONS = ABBREVIATION_WORDS

# A run of terminators, then any closing quotes/brackets, then whitespace or the end. The
# lookbehind starts a match only at the start of a run, and the possessive quantifiers do not
# give characters back: without them a run followed by a non-space ("....x") was rescanned from
# each of its characters (quadratic). Neither changes what matches: a start inside a run, or a
# shorter run, is never followed by whitespace when the whole run is not.
_BOUNDARY_RE = re.compile(r"(?<![.!?;])[.!?;]++[\"')\]}]*+(?=\s|$)")
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
            pieces.extend(_speakable(_wrap(sentence, max_chars)))
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
    # Offsets into `sentence` rather than re-slicing the rest after each cut, which would copy
    # the remainder once per piece (quadratic in a long run-on sentence).
    start, end = _skip_space(sentence, 0), len(sentence.rstrip())
    while end - start > max_chars:
        cut = start + _wrap_cut(sentence[start : start + max_chars + 1], max_chars)
        piece = sentence[start:cut].strip()
        if piece:
            pieces.append(piece)
        start = _skip_space(sentence, cut)
    if start < end:
        pieces.append(sentence[start:end])
    return pieces


def _wrap_cut(window: str, max_chars: int) -> int:
    """Where to cut a sentence that is longer than `max_chars`, given its first
    `max_chars + 1` characters (a break char may sit exactly at `max_chars - 1`)."""
    cut = -1
    # Prefer the last comma-like break, unless it would leave a tiny first piece (a comma near
    # the start of a long clause is a worse cut than a late space).
    for bm in _SOFT_BREAK_RE.finditer(window):
        if bm.end() <= max_chars:
            cut = bm.end()
    if cut < max_chars // 3:
        space = window.rfind(" ")
        cut = space if space > 0 else max_chars
    return cut


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _speakable(pieces: list[str]) -> list[str]:
    return [piece for piece in pieces if _ALNUM_RE.search(piece)]


# ---------------------------------------------------------------------------------------------
# Text that arrives in fragments
# ---------------------------------------------------------------------------------------------

# `_is_boundary` reads this many characters past a period; a decision with that many
# characters after it cannot change when text is appended.
_DECISION_WINDOW = 16
_LINE_BREAK_RE = re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")  # as str.splitlines
_ALNUM_RE = re.compile(r"[^\W_]")  # str.isalnum, in C
_WORD_RE = re.compile(r"\S+")  # str.split's words: the same whitespace as str.isspace
_TERMINATORS = ".!?;"
# Punctuation the boundary rules look at (terminators, closing and leading quotes/brackets). A
# hard cut between two other non-alphanumeric characters does not change how the text after
# it splits: no boundary match, abbreviation, initial or leading quote can straddle the cut.
_QUOTES_BRACKETS = frozenset("\"')]}([{")
_RULE_PUNCT = frozenset(_TERMINATORS) | _QUOTES_BRACKETS


def split_settled(text: str, max_chars: int = 400) -> tuple[list[str], int]:
    """Split the settled part of `text`: the part no appended text can split differently.

    Returns ``(pieces, cut)`` such that, for every string ``more``,
    ``split_sentences(text + more, max_chars) == pieces + split_sentences(text[cut:] + more,
    max_chars)``. Settled are: every line but the last; in the last line, every sentence whose
    end is decided (the boundary has `_DECISION_WINDOW` characters after it); then the wrap
    pieces of the current sentence once it is long enough that they are decided. A caller that
    keeps ``text[cut:]`` and re-splits only that does work proportional to the current
    sentence, not to everything received.

    Raises `ValueError` if `max_chars` < 1.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    # Lines are split independently, so complete lines are settled whatever follows.
    line_start = 0
    for line_break in _LINE_BREAK_RE.finditer(text):
        line_start = line_break.end()
    pieces = split_sentences(text[:line_start], max_chars) if line_start else []
    line_pieces, line_cut = _settle_line(text[line_start:], max_chars)
    return pieces + line_pieces, line_start + line_cut


def _settle_line(raw: str, max_chars: int) -> tuple[list[str], int]:
    """`split_settled` for one line (no line break in `raw`); the cut is an offset in `raw`."""
    words = [m.span() for m in _WORD_RE.finditer(raw)]
    line = " ".join(raw[a:b] for a, b in words)  # as `split_sentences` collapses it
    decided = len(line) - _DECISION_WINDOW  # matches ending here or before are decided
    pieces: list[str] = []
    start = 0  # in `line`: where the current (undecided) sentence begins
    for m in _BOUNDARY_RE.finditer(line):
        if m.end() > decided:
            break
        if _is_boundary(line, m):
            sentence = line[start : m.end()].strip()
            pieces.extend(_speakable(_wrap(sentence, max_chars)))
            start = m.end()
    cut = start
    # The current sentence's first wrap piece is decided once its whole window lies before
    # any undecided boundary: the window and "longer than max_chars" then hold whatever follows.
    rest = _skip_space(line, start)
    while rest + max_chars + 1 <= decided:
        window = line[rest : rest + max_chars + 1]
        piece_end = rest + _wrap_cut(window, max_chars)
        if " " not in window and not _hard_cut_is_neutral(line, piece_end):
            break
        pieces.extend(_speakable([line[rest:piece_end].strip()]))
        cut = piece_end
        rest = _skip_space(line, piece_end)
    return pieces, _raw_offset(words, cut)


def _hard_cut_is_neutral(line: str, cut: int) -> bool:
    """Whether `line[cut:]` (a cut inside a run with no space) splits like the rest of `line`.

    The splitter's context reaches back over a cut in three ways: a terminator run (with its
    closing quotes) matched across it, the word before a period (abbreviation, initial), and a
    word's leading quotes/brackets. The cut is neutral when none of these can see it.
    """
    before, after = line[cut - 1], line[cut]
    if before.isalnum() or after.isalnum():
        return False  # a word straddles the cut
    if before in _TERMINATORS and after in _TERMINATORS:
        # A terminator run straddles the cut: its part after the cut decides alike when the
        # part before holds only periods (the rules ask "any of !?;" and "more than one"), or
        # when the part after already holds one of "!?;".
        run_start = cut - 1
        while run_start > 0 and line[run_start - 1] in _TERMINATORS:
            run_start -= 1
        if set(line[run_start:cut]) == {"."}:
            return True
        run_end = cut
        while run_end < len(line) and line[run_end] in _TERMINATORS:
            if line[run_end] in "!?;":
                return True
            run_end += 1
        return False
    if before in _QUOTES_BRACKETS and after in _QUOTES_BRACKETS:
        # Quotes/brackets after a terminator belong to its boundary match.
        run_start = cut - 1
        while run_start > 0 and line[run_start - 1] in _QUOTES_BRACKETS:
            run_start -= 1
        if run_start > 0 and line[run_start - 1] in _TERMINATORS:
            return False
        # A word's leading quotes/brackets are stripped before the abbreviation and initial
        # tests: the tail's word must strip to the same thing as the whole word.
        word_start = line.rfind(" ", 0, cut) + 1
        return after not in _LEADING_PUNCT or not line[word_start:cut].strip(_LEADING_PUNCT)
    return before not in _RULE_PUNCT and after not in _RULE_PUNCT


def _raw_offset(words: list[tuple[int, int]], pos: int) -> int:
    """Offset in the raw line of offset `pos` in its collapsed form (words joined by one
    space); a position on a joining space maps to the end of the word before it."""
    collapsed = 0
    for a, b in words:
        if pos <= collapsed + (b - a):
            return a + (pos - collapsed)
        collapsed += b - a + 1
    return words[-1][1] if words else 0
