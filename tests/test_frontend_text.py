"""Tests for the text front end: normaliser, sentence splitter, G2P and phoneme ids."""

from __future__ import annotations

import json
import logging
import random
import threading
import unicodedata
from pathlib import Path

import pytest

from services.frontend import g2p
from services.frontend.normalize import is_speakable, normalize
from services.frontend.sentences import split_sentences

# ---------------------------------------------------------------------------------------------
# normalize
# ---------------------------------------------------------------------------------------------

NORMALIZE_CASES: list[tuple[str, str]] = [
    # cardinals, decimals, thousands separators, negatives
    ("3.14", "three point one four"),
    ("1,234", "one thousand two hundred thirty-four"),
    ("I have 123 apples.", "I have one hundred twenty-three apples."),
    ("It is -3.5 outside.", "It is minus three point five outside."),
    ("0.5", "zero point five"),
    (".5", "point five"),
    ("007", "zero zero seven"),
    (
        "1234567890123456789",
        "one two three four five six seven eight nine zero one two three "
        "four five six seven eight nine",
    ),
    ("COVID-19", "COVID-nineteen"),
    ("mp3", "mp three"),
    # ordinals
    ("1st 22nd 103rd", "first twenty-second one hundred third"),
    ("the 3rd of May.", "the third of May."),
    # currency
    ("$3.50", "three dollars and fifty cents"),
    ("$1", "one dollar"),
    ("€20", "twenty euros"),
    ("£5", "five pounds"),
    ("$1.2 million", "one point two million dollars"),
    ("$5M deal", "five million dollars deal"),
    ("$0.99", "ninety-nine cents"),
    ("£1.01", "one pound and one penny"),
    ("¥500", "five hundred yen"),
    ("It costs $1,000.50!", "It costs one thousand dollars and fifty cents!"),
    ("-$5", "minus five dollars"),
    ("50¢", "fifty cents"),
    # percentages
    ("50%", "fifty percent"),
    ("-3.5%", "minus three point five percent"),
    # years and decades
    ("in 1999", "in nineteen ninety-nine"),
    ("2024", "twenty twenty-four"),
    ("2005", "two thousand five"),
    ("In 1066 and 1905.", "In one thousand sixty-six and nineteen oh-five."),
    ("the 1990s and the '80s", "the nineteen nineties and the eighties"),
    # dates
    ("2024-03-15", "March fifteenth, twenty twenty-four"),
    ("March 15, 2024", "March fifteenth, twenty twenty-four"),
    ("3/4/2024", "March fourth, twenty twenty-four"),  # US month/day
    ("15/03/2024", "March fifteenth, twenty twenty-four"),  # day/month only when month > 12
    ("Mar. 5th", "March fifth"),
    ("on 15 March 2024 we", "on the fifteenth of March, twenty twenty-four we"),
    # times
    ("3:30 pm", "three thirty PM"),
    ("14:05", "fourteen oh five"),
    ("3:00", "three o'clock"),
    ("14:00", "fourteen hundred"),
    ("at 9am sharp", "at nine AM sharp"),
    ("at 3 p.m. Then we left.", "at three PM. Then we left."),
    ("3:30-4:30 pm", "three thirty to four thirty PM"),
    # abbreviations
    (
        "Dr. Smith lives on Main St. in St. Louis.",
        "Doctor Smith lives on Main Street in Saint Louis.",
    ),
    ("Mr. and Mrs. Smith met Ms. Jones.", "Mister and Missus Smith met Miz Jones."),
    ("Mulholland Dr.", "Mulholland Drive."),
    ("apples vs. oranges", "apples versus oranges"),
    ("apples, pears, etc. Then more.", "apples, pears, et cetera. Then more."),
    ("e.g. this, i.e. that", "for example this, that is that"),
    ("approx. 5 km", "approximately five kilometers"),
    ("No. 5", "number five"),
    ("#1 hit", "number one hit"),
    ("Gen. Grant", "General Grant"),
    ("I live in the U.S.", "I live in the US."),
    ("the U.S. Army", "the US Army"),
    # units
    ("5 km", "five kilometers"),
    ("1 km", "one kilometer"),
    ("2.5 kg", "two point five kilograms"),
    ("30°C", "thirty degrees Celsius"),
    ("100 mph", "one hundred miles per hour"),
    ("5 km²", "five kilometers squared"),
    # symbols, ranges, fractions, phone numbers
    ("R&D", "R and D"),
    ("10-20 people", "ten to twenty people"),
    ("pages 10–20", "pages ten to twenty"),
    ("1/2 cup", "one half cup"),
    ("½", "one half"),
    ("call 555-123-4567", "call five five five, one two three, four five six seven"),
    ("version 1.2.3", "version one dot two dot three"),
    ("1920x1080", "one thousand nine hundred twenty by one thousand eighty"),
    ("Hello — world", "Hello, world"),
    # characters and whitespace
    ("a\x00b\tc\u200bd", "a b cd"),
    ("  lots   of\n\n\n  space  ", "lots of\n\nspace"),
    ("😀 hello 👍🏽", "hello"),
    ("ﬁne", "fine"),  # NFKC
    ("Ｈｅｌｌｏ １２", "Hello twelve"),  # NFKC full-width
    ("x\ud800y", "xy"),  # lone surrogate
    # sentence punctuation survives
    ("Hello, world! How are you? Fine; thanks.", "Hello, world! How are you? Fine; thanks."),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZE_CASES)
def test_normalize_cases(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("text", "speakable"),
    [
        ("", False),
        ("   \n\t ", False),
        ("\x00\x01\x7f", False),
        ("...", False),
        ("?!;,", False),
        ("😀", False),
        ("\u200b\ufeff", False),
        ("a", True),
        ("&", True),  # "and"
        ("42", True),
        ("Hello.", True),
    ],
)
def test_is_speakable(text: str, speakable: bool) -> None:
    assert is_speakable(text) is speakable


def test_normalize_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        normalize(None)  # type: ignore[arg-type]


_FUZZ_TOKENS = [
    "1", "12", "1999", "0", "3.5", "1,000", "$", "€", "£", "%", "¢", "°C", " ", ".", ",", "-",
    "–", ":", "/", "st", "th", "km", "Dr.", "St.", "p.m.", "a.m.", "March", "Mar.", "e.g.",
    "etc.", "&", "x", "½", "\u0301", "😀", "\x00", "\n", "'", "s", "No.", "#", "U.S.", "M",
    "bn", "the", "of", "\ud800", "\u202e", "\U0010ffff",
]  # fmt: skip


def _fuzz_strings(n: int) -> list[str]:
    rng = random.Random(20240315)
    out: list[str] = []
    for i in range(n):
        length = rng.randint(0, 50)
        if i % 3 == 0:
            out.append("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(length)))
        elif i % 3 == 1:
            out.append("".join(chr(rng.randint(0, 0x2FFF)) for _ in range(length)))
        else:
            out.append("".join(rng.choice(_FUZZ_TOKENS) for _ in range(length)))
    return out


def test_normalize_huge_numbers() -> None:
    # Longer than Python's 4300-digit int() limit: read digit by digit, not a fallback.
    assert normalize("1" * 5000).startswith("one one one")
    assert normalize("$" + "9" * 5000).endswith("nine dollars")


def test_normalize_fuzz_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="services.frontend.normalize")
    for s in _fuzz_strings(3000):
        out = normalize(s)
        assert isinstance(out, str)
        out.encode("utf-8")  # no lone surrogates left
        assert out == out.strip()
        assert "  " not in out
        assert not any(unicodedata.category(c) == "Cc" and c != "\n" for c in out)
        assert isinstance(is_speakable(s), bool)
        for piece in split_sentences(out, max_chars=40):
            assert piece and len(piece) <= 40
    # The defensive fallback exists, but no rule should actually need it.
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


# ---------------------------------------------------------------------------------------------
# split_sentences
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world. How are you? I'm fine!", ["Hello world.", "How are you?", "I'm fine!"]),
        ("Pi is 3.14 today. Next.", ["Pi is 3.14 today.", "Next."]),
        (
            "Dr. Smith met J. R. R. Tolkien. He was nice.",
            ["Dr. Smith met J. R. R. Tolkien.", "He was nice."],
        ),
        (
            "Apples etc. and pears. The U.S. Army is big.",
            ["Apples etc. and pears.", "The U.S. Army is big."],
        ),
        ("One; two; three", ["One;", "two;", "three"]),
        ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
        ("line one\nline two\n\npara", ["line one", "line two", "para"]),
        ("Visit example.com. Now.", ["Visit example.com.", "Now."]),
        ("Neither do I. Then what?", ["Neither do I.", "Then what?"]),
        ("Wait... What?", ["Wait...", "What?"]),
        ("no terminal punctuation", ["no terminal punctuation"]),
        ("", []),
        ("  . ! ?  \n\n ;", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_long_sentence_prefers_commas() -> None:
    text = ", ".join(["wordwordword"] * 60) + "."
    pieces = split_sentences(text, max_chars=100)
    assert len(pieces) > 1
    assert all(0 < len(p) <= 100 for p in pieces)
    assert all(p.endswith((",", ".")) for p in pieces)
    # Nothing is lost but the whitespace at the cuts.
    assert " ".join(pieces) == text


def test_split_long_sentence_spaces_and_hard_cuts() -> None:
    words = " ".join(["abc"] * 200)
    pieces = split_sentences(words, max_chars=50)
    assert all(0 < len(p) <= 50 for p in pieces)
    assert " ".join(pieces) == words
    blob = "x" * 1000
    pieces = split_sentences(blob, max_chars=300)
    assert [len(p) for p in pieces] == [300, 300, 300, 100]


@pytest.mark.parametrize("max_chars", [1, 2, 3, 5, 8, 13, 400])
def test_split_respects_max_chars(max_chars: int) -> None:
    text = "Hello there, my friend; a bb ccc dddd, eeeee. Another one: yes!"
    pieces = split_sentences(text, max_chars=max_chars)
    assert pieces
    assert all(0 < len(p) <= max_chars and p == p.strip() for p in pieces)


def test_split_rejects_bad_max_chars() -> None:
    with pytest.raises(ValueError):
        split_sentences("Hello.", max_chars=0)


def test_normalize_then_split() -> None:
    text = "Dr. Smith paid $3.50 at 3:30 p.m. on Main St. Then he left, e.g. quickly."
    assert split_sentences(normalize(text)) == [
        "Doctor Smith paid three dollars and fifty cents at three thirty PM on Main Street.",
        "Then he left, for example quickly.",
    ]


# ---------------------------------------------------------------------------------------------
# G2P and phoneme ids
# ---------------------------------------------------------------------------------------------

HELLO_WORLD_IDS = [
    1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 3, 0,
    35, 0, 120, 0, 62, 0, 122, 0, 24, 0, 17, 0, 10, 0, 2,
]  # fmt: skip


@pytest.fixture(scope="module")
def phonemizer() -> g2p.Phonemizer:
    return g2p.get_phonemizer()


@pytest.fixture(scope="module")
def mapper() -> g2p.PhonemeIdMapper:
    return g2p.get_id_mapper()


def test_hello_world_phonemes(phonemizer: g2p.Phonemizer) -> None:
    ph = phonemizer.phonemes("Hello world.")
    assert "h" in ph and "ˈ" in ph and "w" in ph
    assert ph.endswith(".")
    assert ph == "həlˈoʊ wˈɜːld."  # what Piper's espeak-ng en-us produces


def test_phonemes_keep_clause_punctuation(phonemizer: g2p.Phonemizer) -> None:
    ph = phonemizer.phonemes("Hello, world! How are you; fine: yes?")
    for mark in ",!;:?":
        assert mark in ph
    assert "ˌ" in phonemizer.phonemes("Okay.") or "ˈ" in phonemizer.phonemes("Okay.")


def test_phonemes_odd_input(phonemizer: g2p.Phonemizer) -> None:
    assert phonemizer.phonemes("") == ""
    assert phonemizer.phonemes("?!") == ""
    assert phonemizer.phonemes("x\ud800y\x00z\n") == phonemizer.phonemes("x y z")
    assert "(" not in phonemizer.phonemes("Bonjour Monsieur.")  # language flags removed


def test_ids_layout(phonemizer: g2p.Phonemizer, mapper: g2p.PhonemeIdMapper) -> None:
    ids = mapper.ids(phonemizer.phonemes("The quick brown fox, it jumps!"))
    assert ids[:2] == [1, 0] and ids[-2:] == [0, 2]
    assert ids[1::2] == [0] * (len(ids) // 2)  # a pad after BOS and after every symbol
    assert all(0 <= i < 256 and i < mapper.symbol_count for i in ids)
    assert (mapper.pad_id, mapper.bos_id, mapper.eos_id) == (0, 1, 2)
    assert mapper.symbol_count == 256


def test_known_word_ids_are_stable() -> None:
    assert g2p.text_to_ids("Hello world.") == HELLO_WORLD_IDS


def test_empty_phonemes_ids(mapper: g2p.PhonemeIdMapper) -> None:
    assert mapper.ids("") == [1, 0, 2]


def test_ids_nfd_and_dropped(mapper: g2p.PhonemeIdMapper) -> None:
    # Piper decomposes with NFD: precomposed "ç" is "c" + U+0327 (cedilla), both mapped.
    assert mapper.ids("ç") == [1, 0, 16, 0, 140, 0, 2]
    before = mapper.dropped_total
    ids, dropped = mapper.ids_with_dropped("a☃b")
    assert ids == [1, 0, 14, 0, 15, 0, 2]
    assert dropped == 1 and mapper.dropped_total == before + 1


def test_mapper_custom_file(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(
        json.dumps({"phoneme_id_map": {"_": [0], "^": [1], "$": [2], "a": [5], "b": [6, 7]}}),
        encoding="utf-8",
    )
    m = g2p.PhonemeIdMapper(path)
    assert m.symbol_count == 8  # no num_symbols: max id + 1
    assert m.ids("ab") == [1, 0, 5, 0, 6, 0, 7, 0, 2]
    path.write_text(json.dumps({"phoneme_id_map": {"a": [5]}}), encoding="utf-8")
    with pytest.raises(ValueError):
        g2p.PhonemeIdMapper(path)


def test_phonemizer_shared_and_thread_safe(phonemizer: g2p.Phonemizer) -> None:
    assert g2p.get_phonemizer() is phonemizer
    sentences = ["Hello world.", "The quick brown fox.", "How are you today?"]
    expected = {s: phonemizer.phonemes(s) for s in sentences}
    errors: list[str] = []

    def worker(k: int) -> None:
        p = g2p.Phonemizer()  # a new instance shares the backend
        for i in range(30):
            s = sentences[(i + k) % len(sentences)]
            if p.phonemes(s) != expected[s]:
                errors.append(s)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
