"""Every text path costs time linear in the length of its input, on hostile input too.

A regular expression that backtracks, or a loop that re-reads what it has read, turns a few
kilobytes of punctuation into seconds of CPU with the GIL held. These tests time each path at
500 and 5,000 characters and require the ratio to stay near 10x (linear), far below what a
quadratic path shows (100x).

Timing on a shared, loaded machine: no absolute bound is asserted. Time is this thread's CPU
time (`time.thread_time`), so time spent preempted by other processes does not count; each
measurement repeats its call until it lasts at least `_MIN_SECONDS` (so the 500-character one
is not dominated by timer and cache noise); the sizes are measured alternately and the least
of `_REPEATS` measurements of each is kept (noise only ever adds time); the bound is 15x rather
than 10x; and a ratio over it is measured again, up to `_ATTEMPTS` times. See
tests/README.md, "Timing in tests".
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable

import pytest

from services.frontend.normalize import normalize
from services.frontend.sentences import split_sentences
from services.gateway.segmenter import TextSegmenter
from services.gateway.validation import check_text_length, looks_speakable
from services.runtime.errors import InvalidArgument

SMALL, LARGE = 500, 5_000
MAX_RATIO = 15.0  # linear is 10x; quadratic is 100x
_MIN_SECONDS = 0.02
_REPEATS = 5
_ATTEMPTS = 3


def _repeat(unit: str) -> Callable[[int], str]:
    return lambda n: (unit * (n // len(unit) + 1))[:n]


def _grouped_number(n: int) -> str:
    # One comma-grouped number that no rule accepts whole ("%" after a 4-digit group): every
    # rule that reads numbers retries it after each comma.
    return "1" + ",234" * ((n - 6) // 4) + "5%".rjust(n - 1 - 4 * ((n - 6) // 4), "6")


# Hostile inputs by class: n -> a text of exactly n characters.
INPUTS: dict[str, Callable[[int], str]] = {
    "mixed punctuation run": _repeat("!?.!?.."),
    "period run": _repeat("."),
    "period run then a letter": lambda n: "." * (n - 1) + "x",
    "comma run": _repeat(","),
    "letter then comma run": lambda n: "a" + "," * (n - 1),
    # Nothing settles in these until the run ends (a word's leading quotes or brackets).
    "letter then quote run": lambda n: "a" + '"' * (n - 1),
    "letter then bracket run": lambda n: "a" + "(" * (n - 1),
    "spaced periods": _repeat(". "),
    "comma-grouped numbers": _repeat("1,234,567,"),
    "currency": _repeat("$1,234,567,"),
    "one long grouped number": _grouped_number,
    "digit run": _repeat("1234567890"),
    # Characters normalisation expands 6-8x ("%" -> " percent ", "²" -> " squared").
    "expanding symbols": _repeat("7% & @ 3°F ² 5km "),
    "whitespace run": _repeat(" \t \n  \u00a0"),
    "run-on sentence": _repeat("and then it went on "),
    # Address-like runs: one token that every address, handle and hashtag rule looks at. The
    # long addresses are read as addresses at both sizes; the runs are addresses at neither.
    "dotted labels": _repeat("a."),
    "at-sign run": _repeat("a@"),
    "slash run": _repeat("/"),
    "e-mail-like run": _repeat("a.b@c."),
    "one long URL": lambda n: ("https://" + "a.b/c-d?e=1&" * n)[:n],
    "one long host": lambda n: "www." + ("ab-" * n)[: n - 9] + "x.com",
    "one long domain": lambda n: ("ab." * n)[: n - 4] + ".com",
    "one long e-mail address": lambda n: ("a.b_" * n)[: n - 8] + "@x.co.uk",
    "one long file name": lambda n: ("a_b." * n)[: n - 4] + ".pdf",
    "address words": _repeat("x@y.io a.pdf www.z.com "),
    "multipliers and hashtags": _repeat("2x#a@b#"),
}


def _validate(text: str) -> None:
    # The gateway has no text-only validation function: `validate` checks a whole request, and
    # of its text it checks the length and `looks_speakable`. Those are what is timed here (the
    # voice and option checks do not read the text). A rejection is a path too.
    with contextlib.suppress(InvalidArgument):
        check_text_length(len(text), 10 * LARGE)
        if not looks_speakable(text):
            raise InvalidArgument("nothing speakable")


def _stream_in_characters(text: str) -> None:
    segmenter = TextSegmenter()
    for ch in text:
        segmenter.feed(ch)
    segmenter.flush()


PATHS: dict[str, Callable[[str], object]] = {
    "normalize": normalize,
    "normalize+split": lambda text: split_sentences(normalize(text), 400),
    "gateway validation": _validate,
    "text-stream segmenter": _stream_in_characters,
}


def _seconds(fn: Callable[[str], object], text: str, calls: int) -> float:
    gc.disable()  # a collection landing in one measurement is noise, not cost
    try:
        start = time.thread_time()
        for _ in range(calls):
            fn(text)
        return time.thread_time() - start
    finally:
        gc.enable()


def _calls_for(fn: Callable[[str], object], text: str) -> int:
    """How many calls of `fn(text)` take at least `_MIN_SECONDS`."""
    calls = 1
    elapsed = _seconds(fn, text, calls)
    while elapsed < _MIN_SECONDS:
        calls = max(calls * 2, int(calls * _MIN_SECONDS / max(elapsed, 1e-6) * 1.2))
        elapsed = _seconds(fn, text, calls)
    return calls


def _ratio(fn: Callable[[str], object], small: str, large: str) -> float:
    """Seconds per call on `large` over seconds per call on `small`: the least of `_REPEATS`
    measurements each, taken alternately so that both sizes see the same machine load."""
    small_calls, large_calls = _calls_for(fn, small), _calls_for(fn, large)
    best_small = best_large = float("inf")
    for _ in range(_REPEATS):
        best_small = min(best_small, _seconds(fn, small, small_calls) / small_calls)
        best_large = min(best_large, _seconds(fn, large, large_calls) / large_calls)
    return best_large / best_small


def test_inputs_have_the_sizes_asked_for() -> None:
    for make in INPUTS.values():
        assert (len(make(SMALL)), len(make(LARGE))) == (SMALL, LARGE)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", list(INPUTS))
def test_time_is_linear_in_length(path: str, kind: str) -> None:
    fn, make = PATHS[path], INPUTS[kind]
    small, large = make(SMALL), make(LARGE)
    fn(large)  # warm caches (compiled patterns, memoised number words) outside the timing
    # Load on a shared machine only ever inflates a ratio, and a quadratic path is near 100x
    # every time: so the first of a few attempts within the bound passes.
    ratios = []
    for _ in range(_ATTEMPTS):
        ratios.append(_ratio(fn, small, large))
        if ratios[-1] <= MAX_RATIO:
            return
    raise AssertionError(
        f"{path} on {kind}: {LARGE} characters cost "
        f"{', '.join(f'{r:.1f}x' for r in ratios)} {SMALL} (linear is {LARGE // SMALL}x)"
    )
