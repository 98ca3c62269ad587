"""How `normalize` reads URLs, e-mail addresses, file names, abbreviations, multipliers and
similar tokens: each expected string is what a person would say (docs/models.md, "Reading
rules"). Spelled-out letters are joined by hyphens ("P-D-F"), which espeak reads as letter
names."""

from __future__ import annotations

import pytest

from services.frontend import sentences
from services.frontend.normalize import ABBREVIATION_WORDS, normalize
from services.frontend.sentences import split_sentences

READING_CASES: list[tuple[str, str]] = [
    # URLs: no scheme, symbols by name, short numbers as cardinals, long ones digit by digit
    (
        "https://example.com/pay?id=42",
        "example dot com slash pay question mark id equals forty-two",
    ),
    ("http://example.org/", "example dot org"),
    ("www.voxline.io", "W-W-W dot voxline dot I-O"),
    ("example.com", "example dot com"),
    ("voxline.ai/docs/getting-started", "voxline dot A-I slash docs slash getting dash started"),
    (
        "https://my-site.example.com:8443",
        "my dash site dot example dot com colon eight four four three",
    ),
    ("http://localhost:8080/", "localhost colon eight zero eight zero"),
    (
        "https://example.com/search?q=tts&page=2#results",
        "example dot com slash search question mark Q equals T-T-S and page equals two "
        "hash results",
    ),
    (
        "https://example.com/~anna/cv_2024",
        "example dot com slash tilde anna slash C-V underscore two zero two four",
    ),
    ("ftp://files.example.org", "F-T-P colon slash slash files dot example dot org"),
    ("bbc.co.uk", "B-B-C dot co dot U-K"),
    ("WWW.EXAMPLE.COM", "W-W-W dot example dot com"),
    # e-mail addresses
    ("billing@example.co.uk", "billing at example dot co dot U-K"),
    ("first.last+tts@mail.example.com", "first dot last plus T-T-S at mail dot example dot com"),
    ("j_doe@voxline.io", "J underscore doe at voxline dot I-O"),
    ("mailto:sales@voxline.io", "sales at voxline dot I-O"),
    # file names: a known extension; unpronounceable ones spelled, a few with a spoken name
    ("report_final.pdf", "report underscore final dot P-D-F"),
    ("config.yaml", "config dot yaml"),
    ("notes.txt", "notes dot text"),
    ("package.json", "package dot jason"),
    ("data.csv", "data dot C-S-V"),
    ("photo.jpg", "photo dot J-peg"),
    ("main.py", "main dot P-Y"),
    ("archive.tar.gz", "archive dot tar dot G-Z"),
    ("song.mp3", "song dot M-P three"),
    ("docs/models.md", "docs slash models dot M-D"),
    ("REPORT.PDF", "REPORT dot P-D-F"),
    # abbreviations
    ("ext. 123", "extension one two three"),
    ("Ext 4501", "extension four five zero one"),
    ("approx. 5 km", "approximately five kilometers"),
    ("the dept. of health", "the department of health"),
    ("tel. 555-123-4567", "telephone five five five, one two three, four five six seven"),
    ("no. 5", "number five"),
    ("cats vs. dogs", "cats versus dogs"),
    ("e.g. this, i.e. that", "for example this, that is that"),
    ("apples, pears, etc.", "apples, pears, et cetera."),
    ("Smith et al. found", "Smith et al found"),
    ("ca. 1850", "circa eighteen fifty"),
    # multipliers, dimensions, hex
    ("2x", "two times"),
    ("10x faster", "ten times faster"),
    ("1.5x", "one point five times"),
    ("3X as loud", "three times as loud"),
    ("a 4x4 truck", "a four by four truck"),
    ("1920x1080", "one thousand nine hundred twenty by one thousand eighty"),
    ("0x1F", "zero x one F"),
    # handles, hashtags, names with symbols, fractions
    ("@voxline", "at voxline"),
    ("@voxline_tts", "at voxline underscore T-T-S"),
    ("#tts", "hashtag T-T-S"),
    ("#MondayMotivation", "hashtag Monday Motivation"),
    ("#1 hit", "number one hit"),
    ("C++", "C plus plus"),
    ("C# and F#", "C sharp and F sharp"),
    ("24/7", "twenty-four seven"),
    ("1/2", "one half"),
    ("R&D", "R and D"),
    # in sentences: the sentence's own punctuation stays outside the address
    (
        "Mail billing@example.co.uk or call ext. 42.",
        "Mail billing at example dot co dot U-K or call extension four two.",
    ),
    ("Visit example.com. Then sign in.", "Visit example dot com. Then sign in."),
    (
        'He said "see https://voxline.io/docs."',
        'He said "see voxline dot I-O slash docs."',
    ),
    ("(See www.example.com's FAQ.)", "(See W-W-W dot example dot com's FAQ.)"),
    (
        "Open report_final.pdf, then config.yaml.",
        "Open report underscore final dot P-D-F, then config dot yaml.",
    ),
    (
        "Our C++ build is 2x faster, 24/7.",
        "Our C plus plus build is two times faster, twenty-four seven.",
    ),
    (
        "Follow @voxline and use #tts, e.g. on 1/2 of posts.",
        "Follow at voxline and use hashtag T-T-S, for example on one half of posts.",
    ),
    # not addresses: decimals, versions, acronyms, a missing space after a period
    ("Pi is 3.14.", "Pi is three point one four."),
    ("version 1.2.3", "version one dot two dot three"),
    ("the U.S. Army", "the US Army"),
    ("I agree.It works", "I agree.It works"),
    ("and/or", "and/or"),
    ("meet me @ 5", "meet me at five"),
]


@pytest.mark.parametrize(("raw", "expected"), READING_CASES)
def test_reading(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_spelled_letters_end_a_sentence() -> None:
    # "P-D-F." is not an initial ("J. R. R. Tolkien"): the sentence ends there.
    assert split_sentences(normalize("Download report.pdf. Then open voxline.io. Done.")) == [
        "Download report dot P-D-F.",
        "Then open voxline dot I-O.",
        "Done.",
    ]


@pytest.mark.parametrize("abbreviation", ["ext.", "Tel.", "dept.", "No.", "vs.", "approx."])
def test_splitter_does_not_split_after_abbreviations(abbreviation: str) -> None:
    # Raw text (before `normalize`) splits sanely too: "Call ext. Two" is one sentence.
    assert split_sentences(f"Call {abbreviation} Two is busy.") == [
        f"Call {abbreviation} Two is busy."
    ]


def test_one_abbreviation_list() -> None:
    # The splitter uses the normaliser's list; every expanded abbreviation is in it.
    assert sentences._ABBREVIATIONS is ABBREVIATION_WORDS
    for word in ("ext", "tel", "dept", "approx", "no", "vs", "e.g", "i.e", "etc", "dr", "sept"):
        assert word in ABBREVIATION_WORDS
