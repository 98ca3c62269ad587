"""Text arriving in fragments -> the pieces that can be spoken now.

A language model writes a reply a few characters at a time; a listener should hear the first
sentence as soon as it is complete, not when the reply ends. The policy:

* A sentence is complete once the *next* one has begun: the frontend's own splitter
  (`services.frontend.sentences.split_sentences`) finds a boundary, and text follows it. Its
  rules decide ("Dr. Smith", "3.14", "e.g. this", "U.S. Army" do not end a sentence), so the
  pieces spoken are the ones a whole-text request would speak, and fragment boundaries --
  mid-word, mid-number, mid-abbreviation -- change nothing: only the accumulated text counts.
* A sentence that runs on past `CLAUSE_CHARS` without ending is spoken up to its last clause
  break (``,`` ``:`` ``-``) once the text after that break is under way, so a long run-on
  sentence does not hold the audio back (the voice pauses at a comma anyway). This can phrase
  differently from the whole-text request, which only cuts sentences past 400 characters.
* A sentence whose unsettled part runs past `RUN_CHARS` (no sentence end and no clause
  break for that long: in practice only a run of quotes or brackets with no space) is spoken
  up to its last space before its final `RUN_KEEP` characters, or cut there. This bounds what
  each fragment re-reads; ordinary text never reaches it (a sentence is wrapped at 400).
* `flush()` (the client's explicit flush, or the end of its stream) speaks whatever is left.

Cost: a fragment costs time proportional to itself and the current sentence, not to all the
text held back. The segmenter remembers the part of its pending text that no later fragment
can split differently (`split_settled`) with its pieces, and re-splits only the rest; a
fragment with nothing to say (no letter or digit, only whitespace) skips the split altogether.
The pieces handed back are exactly those of re-splitting the whole pending text each time.
"""

from __future__ import annotations

import re

from services.frontend.sentences import split_sentences, split_settled

#: A sentence longer than this without an end is spoken clause by clause.
CLAUSE_CHARS = 200
#: Unsettled text longer than this is spoken, but for its last RUN_KEEP characters.
RUN_CHARS = 450
RUN_KEEP = 100
# Clause breaks: comma-like punctuation followed by whitespace (the splitter's soft breaks).
_CLAUSE_BREAK = re.compile(r"[,:\-–]\s")


_ALNUM = re.compile(r"[^\W_]")  # str.isalnum, in C


class TextSegmenter:
    """Accumulates fragments; hands back the complete pieces, in order, exactly once."""

    def __init__(self) -> None:
        self._pending = ""  # text received but not yet handed back
        self._reset_cache()

    @property
    def pending(self) -> str:
        """Text held back until its sentence completes."""
        return self._pending

    def feed(self, fragment: str) -> list[str]:
        """Add a fragment; return the pieces it completed (possibly none)."""
        self._append(fragment)
        pieces = self._split_pending()
        if len(pieces) < 2:  # the last sentence may still grow
            return self._clauses() + self._overlong()
        complete = pieces[:-1]
        self._trim(_end_of(complete, self._pending))
        return complete + self._clauses() + self._overlong()

    def flush(self) -> list[str]:
        """Everything pending, as pieces (an explicit flush or the end of the text)."""
        pieces = split_sentences(self._pending)
        self._pending = ""
        self._reset_cache()
        return pieces

    # -- state kept between fragments ---------------------------------------------------------

    def _reset_cache(self) -> None:
        """Forget what is known about `_pending` (after it is cut at its start) and rebuild
        the clause-break index; each character is re-read here at most once per cut."""
        # split_sentences(pending) == _settled_pieces + split_sentences(pending[_settled:]),
        # whatever is appended.
        self._settled = 0
        self._settled_pieces: list[str] = []
        # Whether pending[_settled:] holds a letter or digit: without one it has no piece.
        self._tail_speakable = _ALNUM.search(self._pending) is not None
        # split_sentences(pending) as of the last split, while only whitespace was appended
        # since (whitespace never changes the pieces); None when unknown.
        self._known: list[str] | None = None
        # The ends of the last two clause breaks, and whether text follows the last one.
        self._breaks: list[int] = []
        self._text_after_break = False
        self._index_breaks(0)

    def _append(self, fragment: str) -> None:
        old_length = len(self._pending)
        self._pending += fragment
        if not fragment.isspace():
            self._known = None
        if _ALNUM.search(fragment):
            self._tail_speakable = True
        # A break may straddle the join: its punctuation ends the old text.
        self._index_breaks(max(0, old_length - 1))

    def _index_breaks(self, start: int) -> None:
        """Index the clause breaks in `_pending[start:]` (text appended since the last call).

        A break is punctuation then whitespace, so breaks never overlap and new text cannot
        change the old ones: only the last two matter to `_last_clause_break`.
        """
        for m in _CLAUSE_BREAK.finditer(self._pending, start):
            self._breaks = [*self._breaks[-1:], m.end()]
            self._text_after_break = False
        if self._breaks and not self._text_after_break:
            # Only whitespace followed the last break before `start`: read from there on.
            self._text_after_break = bool(self._pending[max(self._breaks[-1], start) :].strip())

    def _last_clause_break(self) -> int | None:
        """The last clause break with text after it (the next clause has begun)."""
        if self._breaks and self._text_after_break:
            return self._breaks[-1]
        # The break before the last has text after it: the last break's punctuation.
        return self._breaks[-2] if len(self._breaks) == 2 else None

    def _split_pending(self) -> list[str]:
        """`split_sentences(self._pending)`, re-splitting only what is not settled."""
        if self._known is not None:
            return self._known
        if self._tail_speakable:
            tail = self._pending[self._settled :]
            pieces, cut = split_settled(tail)
            self._settled_pieces += pieces
            self._settled += cut
            self._tail_speakable = _ALNUM.search(tail, cut) is not None
        rest = split_sentences(self._pending[self._settled :]) if self._tail_speakable else []
        self._known = self._settled_pieces + rest
        return self._known

    def _trim(self, cut: int) -> None:
        """Drop `_pending[:cut]`, which has been handed back."""
        self._pending = self._pending[cut:]
        self._reset_cache()

    def _clauses(self) -> list[str]:
        if len(self._pending) <= CLAUSE_CHARS:
            return []
        cut = self._last_clause_break()
        if cut is None:
            return []
        head = self._pending[:cut]
        self._trim(cut)
        return split_sentences(head)

    def _overlong(self) -> list[str]:
        if len(self._pending) - self._settled <= RUN_CHARS:
            return []
        cut = len(self._pending) - RUN_KEEP
        space = self._pending.rfind(" ", self._settled, cut)
        if space > self._settled:
            cut = space
        head = self._pending[:cut]
        self._trim(cut)
        return split_sentences(head)


def _end_of(pieces: list[str], text: str) -> int:
    """Offset in `text` just after the last of `pieces` (pieces come from
    `split_sentences(text)`, which collapses whitespace: match them word by word)."""
    position = 0
    for piece in pieces:
        pattern = r"\s+".join(re.escape(word) for word in piece.split())
        match = re.compile(pattern).search(text, position)
        if match is None:  # cannot happen for pieces of `text`; keep everything to be safe
            return position
        position = match.end()
    return position
