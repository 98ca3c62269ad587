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
* `flush()` (the client's explicit flush, or the end of its stream) speaks whatever is left.
"""

from __future__ import annotations

import re

from services.frontend.sentences import split_sentences

#: A sentence longer than this without an end is spoken clause by clause.
CLAUSE_CHARS = 200
# Clause breaks: comma-like punctuation followed by whitespace (the splitter's soft breaks).
_CLAUSE_BREAK = re.compile(r"[,:\-–]\s")


class TextSegmenter:
    """Accumulates fragments; hands back the complete pieces, in order, exactly once."""

    def __init__(self) -> None:
        self._pending = ""  # text received but not yet handed back

    @property
    def pending(self) -> str:
        """Text held back until its sentence completes."""
        return self._pending

    def feed(self, fragment: str) -> list[str]:
        """Add a fragment; return the pieces it completed (possibly none)."""
        self._pending += fragment
        pieces = split_sentences(self._pending)
        if len(pieces) < 2:  # the last sentence may still grow
            return self._clauses()
        complete = pieces[:-1]
        self._pending = self._pending[_end_of(complete, self._pending) :]
        return complete + self._clauses()

    def flush(self) -> list[str]:
        """Everything pending, as pieces (an explicit flush or the end of the text)."""
        pieces = split_sentences(self._pending)
        self._pending = ""
        return pieces

    def _clauses(self) -> list[str]:
        if len(self._pending) <= CLAUSE_CHARS:
            return []
        breaks = [m.end() for m in _CLAUSE_BREAK.finditer(self._pending)]
        # The last break with text after it (the next clause has begun).
        cut = next((b for b in reversed(breaks) if self._pending[b:].strip()), None)
        if cut is None:
            return []
        head, self._pending = self._pending[:cut], self._pending[cut:]
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
