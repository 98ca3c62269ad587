"""Rule-based English text normalisation for TTS.

`normalize` turns raw user text into words that espeak-ng can read the way a person would:
numbers, money, percentages, dates, times, units, common abbreviations and a few symbols are
spelled out with num2words; control characters are removed and whitespace is collapsed.

The rules target the en-us teacher voice, so readings are American English. Behaviour choices
a caller may notice:

* Cardinals have no British "and": 123 -> "one hundred twenty-three"; num2words' thousands
  commas are dropped too, because a comma becomes a pause (and a split point) downstream.
* A bare four-digit integer from 1100 to 2099 (no thousands comma, no decimals, no currency,
  unit or percent attached) is read as a year: "in 1999" -> "in nineteen ninety-nine",
  "2005" -> "two thousand five". This is the usual TTS heuristic; a count such as "1500 people"
  becomes "fifteen hundred people", which is still correct English.
* Slash dates are read month/day (US): "3/4/2024" -> "March fourth, twenty twenty-four". When the
  first field cannot be a month (> 12) but the second can, the date is read day/month, so
  "15/03/2024" -> "March fifteenth, twenty twenty-four". Impossible dates are left to the
  number rules.
* A digit-hyphen-digit or digit-en-dash-digit sequence is a range or score: "10-20" -> "ten to
  twenty". US phone numbers ("555-123-4567") are read digit by digit.
* Integers with a leading zero ("007") and integers longer than 15 digits are read digit by
  digit; decimals read their fraction digit by digit ("3.14" -> "three point one four").
* Emoji and other pictographic symbols (Unicode category So, except degree, copyright and
  registered signs) are dropped rather than read out by name.
* An abbreviation that can end a sentence ("etc.", "Inc.", "Jr.", "a.m.") keeps its period when
  it is followed by the end of the line or by a capitalised word; titles ("Dr.", "Mr.") never do.
* Addresses are read the way a person spells them out (docs/models.md, "Reading rules"):
  "https://example.com/pay?id=42" -> "example dot com slash pay question mark id equals
  forty-two" (no "https", symbols by name); "billing@example.co.uk" -> "billing at example dot
  co dot U-K"; "report_final.pdf" -> "report underscore final dot P-D-F". A label with no vowel,
  a single letter and a two-letter top-level domain or extension are spelled, with hyphens
  ("P-D-F", "I-O"); a few labels have a spoken form ("json" -> "jason", "txt" -> "text").
  Numbers in addresses: up to three digits as a cardinal, longer ones digit by digit. A bare
  "name.tld" needs a known top-level domain, a file name a known extension.
* "@voxline" -> "at voxline", "#tts" -> "hashtag T-T-S", "C++" -> "C plus plus"; "2x" -> "two
  times" but "4x4" -> "four by four" and "0x1F" stays hex ("zero x one F"); "ext. 123" ->
  "extension one two three".
* Sentence punctuation (. ! ? ; : ,) and line breaks are kept so sentences can still be split;
  runs of blank lines are collapsed to one blank line ("\\n\\n"), single line breaks stay "\\n".

`normalize` never raises on any `str`: if a rule fails on some odd input, the text is returned
with only the character clean-up applied.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

from num2words import num2words

__all__ = ["ABBREVIATION_WORDS", "is_speakable", "normalize"]

_LOG = logging.getLogger(__name__)

# Longer integers are read digit by digit: names like "one quindecillion" help nobody, and
# num2words gets slow (and eventually raises) on huge values.
_MAX_CARDINAL_DIGITS = 15

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_MONTH_BY_NAME: dict[str, int] = {name: i + 1 for i, name in enumerate(_MONTHS)}
_MONTH_BY_NAME.update(
    {
        "Jan": 1,
        "Feb": 2,
        "Mar": 3,
        "Apr": 4,
        "Jun": 6,
        "Jul": 7,
        "Aug": 8,
        "Sep": 9,
        "Sept": 9,
        "Oct": 10,
        "Nov": 11,
        "Dec": 12,
    }
)

# ---------------------------------------------------------------------------------------------
# Number words
# ---------------------------------------------------------------------------------------------


def _clean_words(words: str) -> str:
    # num2words' English is British-flavoured ("one thousand, two hundred and five"); the voice
    # is en-us, and commas would turn into pauses, so drop both.
    return words.replace(",", "").replace(" and ", " ")


@lru_cache(maxsize=4096)
def _cardinal(n: int) -> str:
    if n < 0:
        return "minus " + _cardinal(-n)
    if len(str(n)) > _MAX_CARDINAL_DIGITS:
        return _digits(str(n))
    return _clean_words(num2words(n))


@lru_cache(maxsize=1024)
def _ordinal(n: int) -> str:
    if n < 0 or len(str(n)) > _MAX_CARDINAL_DIGITS:
        return _cardinal(n)
    return _clean_words(num2words(n, to="ordinal"))


@lru_cache(maxsize=1024)
def _year(n: int) -> str:
    # num2words' year reading ("nineteen oh-five") only makes sense for plausible years.
    if 1000 <= n <= 2999:
        return _clean_words(num2words(n, to="year"))
    return _cardinal(n)


def _digits(s: str) -> str:
    return " ".join(_DIGIT_WORDS[int(c)] for c in s if c.isdigit())


def _int_words(s: str) -> str:
    """Read an unsigned digit string (thousands commas allowed) as a cardinal."""
    s = s.replace(",", "")
    if not s:
        return ""
    if (len(s) > 1 and s[0] == "0") or len(s) > _MAX_CARDINAL_DIGITS:
        # "007", zip-like codes: the zeros matter. Very long strings are checked before int():
        # Python refuses to convert strings of more than 4300 digits.
        return _digits(s)
    return _cardinal(int(s))


def _number_words(s: str) -> str:
    """Read "1,234.56" / "3" / ".5" (unsigned) as words."""
    int_part, _, frac = s.partition(".")
    words = _int_words(int_part) if int_part else ""
    if frac:
        words = (words + " point " + _digits(frac)).strip()
    return words


def _is_one(s: str) -> bool:
    # Singular only for exactly one ("1 km"), not "1.0" or "1.5": English uses the plural there.
    return s.replace(",", "") == "1"


def _plural_year(words: str) -> str:
    # "nineteen ninety" -> "nineteen nineties", "nineteen hundred" -> "nineteen hundreds".
    if words.endswith("y"):
        return words[:-1] + "ies"
    return words + "s"


# Thousands groups in one number, at most. A rule whose suffix fails ("1,234,...,2345%" has no
# "%" after a number) is retried after every comma of the run, and each retry walks the rest of
# the run: unbounded, that is quadratic in the run's length. Bounded, each retry costs at most
# this many groups. Real numbers have at most 5 groups (longer ones are read digit by digit
# anyway); a longer run is read as consecutive numbers, which still reads it digit by digit.
_MAX_GROUPS = 16
_GROUPED = rf"\d{{1,3}}(?:,\d{{3}}){{1,{_MAX_GROUPS}}}"
# Unsigned number: proper thousands groups or plain digits, optional decimals.
_NUM = rf"(?:{_GROUPED}(?!\d)|\d+)(?:\.\d+)?"

# ---------------------------------------------------------------------------------------------
# Character clean-up
# ---------------------------------------------------------------------------------------------

_KEEP_SYMBOLS = frozenset("°©®")
_VERTICAL_SPACE = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_PUNCT_MAP = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201b": "'",
    "\u2032": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u201f": '"',
    "\u2033": '"',
    "\u00ab": '"',
    "\u00bb": '"',
    "\u2212": "-",  # minus sign
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "\u2013",  # figure dash behaves like an en dash
    "\u2014": ", ",  # em dash: a pause
    "\u2015": ", ",
    "\u2044": "/",  # fraction slash (NFKC turns "½" into "1⁄2")
    "\u00d7": " by ",  # multiplication sign in dimensions
}


class _CharTable(dict[int, str | None]):
    """str.translate table that classifies each code point once and memoises the answer.

    Per-character unicodedata lookups in Python would cost microseconds per character; this lets
    str.translate do the loop in C and only calls back for characters it has not seen.
    """

    _MAX_ENTRIES = 65536  # bound the memo: adversarial input can cycle through many code points

    def __missing__(self, cp: int) -> str | None:
        value = _classify(chr(cp))
        if len(self) < self._MAX_ENTRIES:
            self[cp] = value
        return value


def _classify(ch: str) -> str | None:
    if ch in _VERTICAL_SPACE:
        return "\n"
    if ch in _PUNCT_MAP:
        return _PUNCT_MAP[ch]
    cat = unicodedata.category(ch)
    if cat == "Cc" or cat == "Zs":
        return " "  # tabs and other controls separate words; NBSP etc. are spaces
    if cat in ("Cf", "Cs", "Co", "Cn"):
        # Zero-width / bidi marks, soft hyphens, lone surrogates (which cannot even be encoded to
        # UTF-8 for espeak), private use and unassigned code points: nothing to say.
        return None
    if cat == "So" and ch not in _KEEP_SYMBOLS:
        return None  # emoji, dingbats, box drawing...
    if cat == "Sk" and 0x1F3FB <= ord(ch) <= 0x1F3FF:
        return None  # emoji skin-tone modifiers
    if 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF:
        return None  # variation selectors left behind by dropped emoji
    return ch


_CHAR_TABLE = _CharTable()
_CONTROL_ASCII_RE = re.compile(r"[\x00-\x1f\x7f]")
_H_SPACE_RE = re.compile(r"[^\S\n]+")
_NEWLINES_RE = re.compile(r" ?\n[\n ]*")


def _clean_chars(text: str) -> str:
    """NFKC, map/drop control and symbol characters, collapse whitespace (keeping line breaks)."""
    text = text.replace("\r\n", "\n")
    if "²" in text or "³" in text:
        # Before NFKC, which would turn "km²" into "km2".
        text = text.replace("²", " squared").replace("³", " cubed")
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii() or _CONTROL_ASCII_RE.search(text):
        text = text.translate(_CHAR_TABLE)
    return _collapse_space(text)


def _collapse_space(text: str) -> str:
    text = _H_SPACE_RE.sub(" ", text)
    # Any run containing two or more line breaks is a paragraph break.
    text = _NEWLINES_RE.sub(lambda m: "\n\n" if m.group(0).count("\n") > 1 else "\n", text)
    return text.strip()


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _ends_sentence(m: re.Match[str], allow_capital: bool = True) -> bool:
    """Whether an abbreviation's period just consumed by `m` probably also ends the sentence.

    True at the end of the text or line, or (if `allow_capital`) before a capitalised word.
    """
    s, i, n = m.string, m.end(), len(m.string)
    j = i
    while j < n and s[j] == " ":
        j += 1
    if j == n or s[j] == "\n":
        return True
    return allow_capital and j > i and s[j].isupper()


def _keep_period(m: re.Match[str], dot: str | None, allow_capital: bool = True) -> str:
    return "." if dot and _ends_sentence(m, allow_capital) else ""


# --- phone numbers, versions ---------------------------------------------------------------

_PHONE_RE = re.compile(r"(?<![\w.-])(?:\((\d{3})\) ?|(\d{3})[-.])(\d{3})[-.](\d{4})(?![\w-]|\.\d)")


def _phone(m: re.Match[str]) -> str:
    area = m.group(1) or m.group(2)
    return f"{_digits(area)}, {_digits(m.group(3))}, {_digits(m.group(4))}"


_DOTTED_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?![\w]|\.\d)")


def _dotted(m: re.Match[str]) -> str:
    # Version numbers and IP addresses: "1.2.3" -> "one dot two dot three".
    return " dot ".join(_int_words(p) for p in m.group(0).split("."))


# --- dates ---------------------------------------------------------------------------------


def _date_words(month: int, day: int, year: str | None) -> str:
    words = f"{_MONTHS[month - 1]} {_ordinal(day)}"
    if year:
        words += ", " + _year_text(year)
    return words


def _year_text(y: str) -> str:
    if len(y) == 2:
        v = int(y)
        if v == 0:
            return "two thousand"
        return ("oh " + _cardinal(v)) if v < 10 else _cardinal(v)
    return _year(int(y))


_ISO_DATE_RE = re.compile(r"(?<![\w.-])(\d{4})-(\d{1,2})-(\d{1,2})(?![\w]|-\d)")


def _iso_date(m: re.Match[str]) -> str:
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0)
    return _date_words(month, day, m.group(1) if year else None)


_SLASH_DATE_RE = re.compile(r"(?<![\w/.])(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?![\w/]|\.\d)")


def _slash_date(m: re.Match[str]) -> str:
    a, b = int(m.group(1)), int(m.group(2))
    # US reading (month/day) first; fall back to day/month only when that is the only valid one.
    if 1 <= a <= 12 and 1 <= b <= 31:
        month, day = a, b
    elif 1 <= b <= 12 and 13 <= a <= 31:
        month, day = b, a
    else:
        return m.group(0)
    return _date_words(month, day, m.group(3))


# Full month names, or three/four-letter abbreviations with an optional period ("Mar. 15").
_MONTH_ALT = (
    r"(?:"
    + "|".join(_MONTHS)
    + r")\b|(?:"
    + "|".join(sorted((k for k in _MONTH_BY_NAME if k not in _MONTHS), key=len, reverse=True))
    + r")\b\.?"
)
_YEAR_TAIL = r"(?:,? (?P<year>\d{4})\b(?!\.\d|,\d))?"
_MONTH_DAY_RE = re.compile(
    rf"\b(?P<month>{_MONTH_ALT}) (?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b(?![.,]\d){_YEAR_TAIL}"
)
_DAY_MONTH_RE = re.compile(
    rf"(?<![\w.,])(?P<day>\d{{1,2}})(?:st|nd|rd|th)? (?:of )?(?P<month>{_MONTH_ALT}){_YEAR_TAIL}"
)


def _month_day(m: re.Match[str]) -> str:
    day = int(m.group("day"))
    if not 1 <= day <= 31:
        return m.group(0)
    return _date_words(_MONTH_BY_NAME[m.group("month").rstrip(".")], day, m.group("year"))


def _day_month(m: re.Match[str]) -> str:
    day = int(m.group("day"))
    month = m.group("month")
    if not 1 <= day <= 31:
        return m.group(0)
    # British order is read the British way: "15 March 2024" -> "the fifteenth of March, ...".
    words = f"{_ordinal(day)} of {_MONTHS[_MONTH_BY_NAME[month.rstrip('.')] - 1]}"
    if not m.string[max(0, m.start() - 4) : m.start()].lower().endswith("the "):
        words = "the " + words  # but not "the 3rd of May" -> "the the third of May"
    if m.group("year"):
        words += ", " + _year_text(m.group("year"))
    elif month.endswith("."):
        words += _keep_period(m, ".")
    return words


# --- times ---------------------------------------------------------------------------------

# "am", "PM", "a.m.", "p.m" (the acronym rule may already have turned "p.m." into "PM").
_AMPM = r"(?P<ap>[AaPp])(?:\.[Mm](?P<dot>\.)?|[Mm])"
_CLOCK_RE = re.compile(
    rf"(?<![\w.:])(?P<h>\d{{1,2}}):(?P<m>\d{{2}})(?::(?P<s>\d{{2}}))?(?: ?{_AMPM})?"
    rf"(?![\w:]|\.\d)"
)
_HOUR_AMPM_RE = re.compile(rf"(?<![\w.:,])(?P<h>\d{{1,2}}) ?{_AMPM}(?!\w)")


def _ampm_suffix(m: re.Match[str]) -> str:
    ap = m.group("ap")
    if not ap:
        return ""
    # "PM" in capitals: espeak spells it out (p-m), which is how it is said.
    words = " AM" if ap in "Aa" else " PM"
    # "p.m." consumed its period: keep it when it also ended the sentence.
    words += _keep_period(m, m.group("dot"))
    return words


def _clock(m: re.Match[str]) -> str:
    h, mi = int(m.group("h")), int(m.group("m"))
    s = int(m.group("s")) if m.group("s") else 0
    if h > 23 or mi > 59 or s > 59:
        return m.group(0)
    hour = _cardinal(h)
    ampm = m.group("ap")
    if mi == 0 and s == 0:
        if ampm:
            words = hour
        elif 1 <= h <= 12:
            words = f"{hour} o'clock"
        else:
            words = f"{hour} hundred"  # 24-hour clock: "fourteen hundred"
    elif mi < 10:
        words = f"{hour} oh {_cardinal(mi)}"
    else:
        words = f"{hour} {_cardinal(mi)}"
    if s:
        words += f" and {_cardinal(s)} second" + ("" if s == 1 else "s")
    return words + _ampm_suffix(m)


def _hour_ampm(m: re.Match[str]) -> str:
    h = int(m.group("h"))
    if not 1 <= h <= 12:
        return m.group(0)
    return _cardinal(h) + _ampm_suffix(m)


# --- money ---------------------------------------------------------------------------------

# symbol -> (singular, plural, sub-unit singular, sub-unit plural); no sub-unit -> "point".
_CURRENCIES: dict[str, tuple[str, str, str | None, str | None]] = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", None, None),
    "₹": ("rupee", "rupees", "paisa", "paise"),
}
_MAGNITUDES = {
    "thousand": "thousand",
    "million": "million",
    "billion": "billion",
    "trillion": "trillion",
    "k": "thousand",
    "K": "thousand",
    "m": "million",
    "M": "million",
    "mn": "million",
    "b": "billion",
    "B": "billion",
    "bn": "billion",
    "tn": "trillion",
    "T": "trillion",
}
_CUR_SYMS = "".join(re.escape(c) for c in _CURRENCIES)
_MAG = r"(?: (?P<magw>thousand|million|billion|trillion)\b|(?P<maga>[kKmMbBT]|mn|bn|tn)\b)"
_CURRENCY_PRE_RE = re.compile(
    rf"(?<![\w.])(?P<neg>-)?(?P<sym>[{_CUR_SYMS}]) ?(?P<num>{_NUM}|\.\d+){_MAG}?(?![\w]|[.,]\d)"
)
_CURRENCY_POST_RE = re.compile(
    rf"(?<![\w.])(?P<neg>-)?(?P<num>{_NUM}){_MAG}? ?(?P<sym>[{_CUR_SYMS}])(?![\w])"
)
_CENTS_RE = re.compile(rf"(?<![\w.])(?P<num>{_NUM}) ?¢")


def _money(m: re.Match[str]) -> str:
    unit, units, sub, subs = _CURRENCIES[m.group("sym")]
    num = m.group("num")
    neg = "minus " if m.group("neg") else ""
    mag = m.group("magw") or m.group("maga")
    if mag:
        # "$1.2 million" -> "one point two million dollars"
        return f"{neg}{_number_words(num)} {_MAGNITUDES[mag]} {units}"
    int_part, _, frac = num.partition(".")
    if (frac and (sub is None or len(frac) > 2)) or len(int_part) > _MAX_CARDINAL_DIGITS:
        return f"{neg}{_number_words(num)} {units}"
    int_part = int_part or "0"  # "$.50"
    major = int(int_part.replace(",", ""))
    minor = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if major or not minor:
        parts.append(f"{_int_words(int_part)} {unit if major == 1 else units}")
    if minor:
        parts.append(f"{_cardinal(minor)} {sub if minor == 1 else subs}")
    return neg + " and ".join(parts)


def _cents(m: re.Match[str]) -> str:
    num = m.group("num")
    return f"{_number_words(num)} {'cent' if _is_one(num) else 'cents'}"


# --- percentages, ordinals, decades, fractions ----------------------------------------------

_PERCENT_RE = re.compile(rf"(?<![\w.])(?P<neg>-)?(?P<num>{_NUM}|\.\d+) ?(?P<sign>[%‰])")


def _percent(m: re.Match[str]) -> str:
    neg = "minus " if m.group("neg") else ""
    sign = "percent" if m.group("sign") == "%" else "per mille"
    return f"{neg}{_number_words(m.group('num'))} {sign}"


_ORDINAL_RE = re.compile(rf"(?<![\w.])({_GROUPED}|\d+)(?:st|nd|rd|th|ST|ND|RD|TH)\b")


def _ordinal_sub(m: re.Match[str]) -> str:
    digits = m.group(1).replace(",", "")
    return _ordinal(int(digits)) if len(digits) <= _MAX_CARDINAL_DIGITS else _digits(digits)


_DECADE_RE = re.compile(r"(?<![\w.])(?P<apos>')?(?P<d>\d{1,3}0)'?s\b")


def _decade(m: re.Match[str]) -> str:
    d = m.group("d")
    if d in ("100", "1000"):
        return "hundreds" if d == "100" else "thousands"  # "100s of people"
    if len(d) == 4:
        return _plural_year(_year(int(d)))
    if len(d) == 2 and d != "00" and (m.group("apos") or d[0] != "0"):
        return _plural_year(_cardinal(int(d)))  # "'90s" / "90s" -> "nineties"
    return m.group(0)


_FRACTION_RE = re.compile(
    r"(?<![\w./])(?:(?P<whole>\d+) )?(?P<n>\d{1,2})/(?P<d>\d{1,2})(?![\w/]|\.\d)"
)


def _fraction(m: re.Match[str]) -> str:
    n, d = int(m.group("n")), int(m.group("d"))
    if not (0 < n < d <= 16):
        return m.group(0)  # "24/7", "3/0": not a simple fraction; leave to the number rules
    if d == 2:
        denom = "half" if n == 1 else "halves"
    elif d == 4:
        denom = "quarter" if n == 1 else "quarters"
    else:
        denom = _ordinal(d) + ("" if n == 1 else "s")
    words = f"{_cardinal(n)} {denom}"
    if m.group("whole"):
        words = f"{_int_words(m.group('whole'))} and {words}"
    return words


# --- units ---------------------------------------------------------------------------------

# Case-sensitive unit symbol -> (singular, plural). Single letters that are often words or
# initials ("in", "s", "A", "W", "V") are deliberately absent.
_UNITS: dict[str, tuple[str, str]] = {
    "km": ("kilometer", "kilometers"),
    "m": ("meter", "meters"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "μm": ("micrometer", "micrometers"),
    "nm": ("nanometer", "nanometers"),
    "mi": ("mile", "miles"),
    "ft": ("foot", "feet"),
    "yd": ("yard", "yards"),
    "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"),
    "μg": ("microgram", "micrograms"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "l": ("liter", "liters"),
    "L": ("liter", "liters"),
    "ml": ("milliliter", "milliliters"),
    "mL": ("milliliter", "milliliters"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "m/s": ("meter per second", "meters per second"),
    "ms": ("millisecond", "milliseconds"),
    "μs": ("microsecond", "microseconds"),
    "ns": ("nanosecond", "nanoseconds"),
    "sec": ("second", "seconds"),
    "min": ("minute", "minutes"),
    "h": ("hour", "hours"),
    "hr": ("hour", "hours"),
    "hrs": ("hour", "hours"),
    "Hz": ("hertz", "hertz"),
    "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"),
    "kB": ("kilobyte", "kilobytes"),
    "KB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"),
    "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"),
    "mAh": ("milliamp hour", "milliamp hours"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
}
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_UNIT_RE = re.compile(
    rf"(?<![\w.])(?P<neg>-)?(?P<num>{_NUM}|\.\d+) ?(?P<unit>{_UNIT_ALT})(?![\w/]|\.\w)"
)


def _unit(m: re.Match[str]) -> str:
    num = m.group("num")
    singular, plural = _UNITS[m.group("unit")]
    neg = "minus " if m.group("neg") else ""
    return f"{neg}{_number_words(num)} {singular if _is_one(num) else plural}"


# --- abbreviations -------------------------------------------------------------------------

# Abbreviation -> (expansion, may end a sentence). Lower-case entries also match capitalised.
# This table, `_TITLES`, the month abbreviations and "No."/"St."/"Dr." are the one list of
# abbreviations: `ABBREVIATION_WORDS` derives from them what the sentence splitter needs.
_ABBREVIATIONS: dict[str, tuple[str, bool]] = {
    "e.g.": ("for example", False),
    "i.e.": ("that is", False),
    "a.k.a.": ("also known as", False),
    "etc.": ("et cetera", True),
    "et al.": ("et al", True),
    "vs.": ("versus", False),
    "vs": ("versus", False),
    "viz.": ("namely", False),
    "ca.": ("circa", False),
    "approx.": ("approximately", False),
    "incl.": ("including", False),
    "cf.": ("compare", False),
    "fig.": ("figure", False),
    "vol.": ("volume", False),
    "ext.": ("extension", False),  # "ext. 123" is read by `_phone_extension` first
    "tel.": ("telephone", False),
    "dept.": ("department", True),
    "govt.": ("government", True),
    "misc.": ("miscellaneous", True),
    "esp.": ("especially", False),
    "avg.": ("average", False),
    "Mr.": ("Mister", False),
    "Mrs.": ("Missus", False),
    "Ms.": ("Miz", False),
    "Prof.": ("Professor", False),
    "Inc.": ("Incorporated", True),
    "Ltd.": ("Limited", True),
    "Corp.": ("Corporation", True),
    "Co.": ("Company", True),
    "Jr.": ("Junior", True),
    "Sr.": ("Senior", True),
    "Ave.": ("Avenue", True),
    "Blvd.": ("Boulevard", True),
    "Rd.": ("Road", True),
}
for _k, (_v, _e) in list(_ABBREVIATIONS.items()):
    if _k[0].islower():
        _ABBREVIATIONS.setdefault(_k[0].upper() + _k[1:], (_v[0].upper() + _v[1:], _e))
_ABBR_RE = re.compile(
    r"(?<![\w.])(?:"
    + "|".join(re.escape(k) for k in sorted(_ABBREVIATIONS, key=len, reverse=True))
    + r")(?!\w)"
)


def _abbreviation(m: re.Match[str]) -> str:
    key = m.group(0)
    words, may_end = _ABBREVIATIONS[key]
    if may_end and key.endswith("."):
        return words + _keep_period(m, ".")
    return words


# Titles that are only abbreviations when a name follows ("Gen. Grant", "Mr Smith").
_TITLES = {
    "Mr": "Mister",
    "Mrs": "Missus",
    "Ms": "Miz",
    "Prof": "Professor",
    "Rev": "Reverend",
    "Hon": "Honorable",
    "Gen": "General",
    "Capt": "Captain",
    "Lt": "Lieutenant",
    "Sgt": "Sergeant",
    "Col": "Colonel",
    "Gov": "Governor",
    "Sen": "Senator",
    "Rep": "Representative",
    "Pres": "President",
    "Mt": "Mount",
    "Ft": "Fort",
}
# Mr/Mrs/Ms are unambiguous even without a period ("Mr Smith"); the rest need one ("Gen Z").
_TITLE_RE = re.compile(
    r"(?<![\w.])(?:(?P<t>Mrs|Mr|Ms)\.?|(?P<t2>"
    + "|".join(sorted(_TITLES, key=len, reverse=True))
    + r")\.) (?=[A-Z])"
)

# "Dr." is Doctor before a name, Drive after one ("Mulholland Dr."); "St." is Saint before a
# name, Street after a name or house number ("Main St.", "5th St.").
_ST_DR_RE = re.compile(r"(?<![\w.])(?P<w>St|Dr)(?P<dot>\.)?(?![\w])")
_PREV_WORD_RE = re.compile(r"([\w']+)[ ]$")


def _st_dr(m: re.Match[str]) -> str:
    s, w, dot = m.string, m.group("w"), m.group("dot")
    after = s[m.end() : m.end() + 2]
    next_is_name = len(after) == 2 and after[0] == " " and after[1].isupper()
    prev = _PREV_WORD_RE.search(s, max(0, m.start() - 40), m.start())
    prev_is_name = prev is not None and (prev.group(1)[0].isupper() or prev.group(1)[0].isdigit())
    if not dot and not next_is_name and not prev_is_name:
        return m.group(0)  # a bare "St"/"Dr" with no context: leave it to espeak
    # A capitalised sentence-initial word is not evidence of a street name when a name follows
    # ("The St. Louis team", "Hello Dr. Smith"); elsewhere it is ("on Main St. Then ...").
    prev_initial = prev is not None and (
        s[: prev.start(1)].rstrip(" ")[-1:] in ("", "\n", ".", "!", "?", ";", ":", '"', "(")
    )
    if prev_is_name and not (next_is_name and prev_initial):
        # "Main St.", "5th St.", "Mulholland Dr." -- the period may also end the sentence.
        return ("Street" if w == "St" else "Drive") + _keep_period(m, dot)
    return "Saint" if w == "St" else "Doctor"


_NUMBER_SIGN_RE = re.compile(r"(?<![\w.])(?:(?P<no>No|no|NO)\.|(?P<nos>Nos|nos)\.|#) ?(?=\d)")


def _number_sign(m: re.Match[str]) -> str:
    return "numbers " if m.group("nos") else "number "


# Lower-cased abbreviations, without their final period, after which the sentence splitter
# must not end a sentence ("dr", "e.g", "al" for "et al."): derived from the tables above, so
# each abbreviation is stated once. Most are expanded here; the splitter also sees raw text.
ABBREVIATION_WORDS: frozenset[str] = frozenset(
    {k.rstrip(".").rsplit(" ", 1)[-1].lower() for k in _ABBREVIATIONS}
    | {t.lower() for t in _TITLES}
    | {m.lower() for m in _MONTH_BY_NAME if m not in _MONTHS}  # "Jan." ... "Sept."
    | {"st", "dr", "no", "nos"}
)

# "ext. 123", "Ext 4": a phone extension, read digit by digit like the number it extends.
_PHONE_EXTENSION_RE = re.compile(r"(?<![\w.])(?:[Ee]xt|EXT)\.? ?(?P<digits>\d+)(?![\w]|\.\d)")


def _phone_extension(m: re.Match[str]) -> str:
    return "extension " + _digits(m.group("digits"))


_ACRONYM_RE = re.compile(r"(?<![\w.])((?:[A-Za-z]\.){2,})(?!\w)")


def _acronym(m: re.Match[str]) -> str:
    # "U.S." -> "US": espeak (via phonemizer) would treat each dot as a sentence end. The period
    # is kept only at the end of a line: "the U.S. Army" is far more common than a sentence
    # ending in an acronym followed by another sentence.
    letters = m.group(1).replace(".", "")
    if letters.lower() in ("am", "pm"):
        # Left in the form the clock rules expect; like other trailing abbreviations, the
        # period survives before a capitalised word ("at 3 p.m. Then ...").
        return letters.upper() + _keep_period(m, ".")
    return letters.upper() + _keep_period(m, ".", allow_capital=False)


# --- addresses: URLs, e-mail addresses, file names, handles, hashtags ----------------------

# How a person reads an address aloud: the symbols by name, labels as written unless they
# cannot be pronounced (then letter by letter), numbers as short cardinals or digits. Spelled
# letters are joined by hyphens ("P-D-F"): espeak says each letter's name, a lone "A" would be
# the article, and the sentence splitter would take a final "F." for an initial.
_ADDRESS_SYMBOLS = {
    ".": "dot",
    "/": "slash",
    "-": "dash",
    "_": "underscore",
    "?": "question mark",
    "=": "equals",
    "&": "and",
    "#": "hash",
    ":": "colon",
    "@": "at",
    "~": "tilde",
    "%": "percent",
    "+": "plus",
    ",": "comma",
    "!": "bang",
    "*": "star",
    "$": "dollar",
}  # any other symbol in an address is silent

# Labels (lower-cased) said otherwise than as written or spelled: file extensions with a
# spoken name, and a few top-level domains people spell although they could be pronounced.
_SPOKEN_LABELS = {
    "txt": "text",
    "json": "jason",
    "jpg": "J-peg",
    "jpeg": "J-peg",
    "exe": "E-X-E",
    "edu": "E-D-U",
    "xyz": "X-Y-Z",
    "py": "P-Y",  # "y" counts as a vowel ("my", "sky"), so these would be read as words
    "yml": "Y-M-L",
    "co": "co",  # ".co", ".co.uk": said as a word although it is two letters
    "me": "me",
}
_VOWELS = frozenset("aeiouyAEIOUY")

# Top-level domains that make a bare "name.tld" an address (no "https://" or "www." needed).
# Lower-case only, and no English words ("it", "us", "me", "to", "no"...): a missing space
# after a sentence's period ("end.It") must not read as an address.
_BARE_TLDS = frozenset({
    "com", "org", "net", "edu", "gov", "mil", "int", "io", "ai", "co", "uk", "de", "fr", "es",
    "nl", "se", "ch", "eu", "ca", "au", "nz", "jp", "cn", "ru", "br", "mx", "dev", "app", "info",
    "biz", "tv", "ly", "gg", "xyz", "tech", "online", "site", "cloud",
})  # fmt: skip
# File extensions that make "name.ext" a file name (lower-case, or all capitals as written).
_FILE_EXTENSIONS = frozenset({
    "pdf", "txt", "csv", "tsv", "json", "yaml", "yml", "toml", "xml", "html", "htm", "md", "rst",
    "ini", "cfg", "conf", "log", "py", "js", "ts", "sh", "rb", "rs", "java", "cpp", "hpp",
    "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "tiff", "mp3", "mp4", "wav", "flac", "ogg",
    "mov", "avi", "mkv", "zip", "tar", "gz", "tgz", "bz2", "xz", "rar", "7z", "doc", "docx",
    "xls", "xlsx", "ppt", "pptx", "odt", "rtf", "epub", "exe", "dmg", "deb", "rpm", "apk", "iso",
    "bin", "dat", "db", "sql", "bak", "tmp",
})  # fmt: skip

# Whitespace-delimited tokens holding ".", "@" or "/": the candidates for an address. The
# lookbehind lets a match start only at a token's start (a start inside a token fails at
# once), and the possessive quantifiers never give characters back: linear in the text.
_ADDRESS_TOKEN_RE = re.compile(r"(?<!\S)[^\s.@/]*+[.@/]\S*+")
_LEADING_PUNCT = "\"'([{<"
_TRAILING_PUNCT = ".,;:!?\"')]}>"
# A scheme ("https://", "ftp://") at the start of a token.
_SCHEME_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*+)://")
# Where a URL's host (and port) ends and its path, query or fragment begins.
_PATH_START_RE = re.compile(r"[/?#]")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9-]++")
_EMAIL_LOCAL_RE = re.compile(r"[A-Za-z0-9._%+-]++")
_FILE_PATH_RE = re.compile(r"[A-Za-z0-9_./~-]++")
# The pieces of an address: letter runs, digit runs, single other characters.
_ADDRESS_PART_RE = re.compile(r"(?P<letters>[^\W\d_]++)|(?P<digits>\d++)|(?P<symbol>.)", re.S)


def _spell(letters: str) -> str:
    return "-".join(letters.upper())


def _address_letters(run: str, final: bool = False) -> str:
    """A run of letters: as written, unless listed or unpronounceable (a single letter, or no
    vowel: spelled).

    `final` marks the last label of a host or file name, where two letters are always a code
    (".io", ".uk", ".md") and spelled.
    """
    low = run.lower()
    if low in _SPOKEN_LABELS:
        return _SPOKEN_LABELS[low]
    if len(run) == 1 or (final and len(run) == 2) or _VOWELS.isdisjoint(run):
        return _spell(run)
    return run


def _address_number(digits: str) -> str:
    # "id=42" -> "forty-two"; longer numbers (ports, ids, dates in paths) and leading zeros are
    # read digit by digit: "8080" -> "eight zero eight zero".
    if len(digits) <= 3 and (digits == "0" or digits[0] != "0"):
        return _cardinal(int(digits))
    return _digits(digits)


def _address_words(text: str, final: bool = False) -> list[str]:
    """Read a piece of an address: letters, numbers and symbols by name.

    With `final`, the last letter run is read as a final label (see `_address_letters`).
    """
    parts = list(_ADDRESS_PART_RE.finditer(text))
    words = []
    for i, part in enumerate(parts):
        if part.lastgroup == "letters":
            words.append(_address_letters(part.group(), final and i == len(parts) - 1))
        elif part.lastgroup == "digits":
            words.append(_address_number(part.group()))
        elif part.group() in _ADDRESS_SYMBOLS:
            words.append(_ADDRESS_SYMBOLS[part.group()])
    return words


def _is_host(host: str, bare: bool = False, dotted: bool = True) -> bool:
    """Whether `host` is a domain name: `dotted` ones have two labels or more ("localhost"
    only follows a scheme), `bare` ones (no scheme, no "www.") a known top-level domain."""
    labels = host.split(".")
    if (dotted and len(labels) < 2) or (bare and labels[-1] not in _BARE_TLDS):
        return False
    return all(
        _HOST_LABEL_RE.fullmatch(label) and label[0] != "-" and label[-1] != "-" for label in labels
    )


def _host_words(host: str) -> list[str]:
    """ "example.co.uk" -> example dot co dot U-K; "localhost:8080" -> ... colon eight zero..."""
    host, colon, port = host.partition(":")
    labels = host.lower().split(".")  # "WWW.Example.COM" is the same address
    words: list[str] = []
    for i, label in enumerate(labels):
        if i:
            words.append("dot")
        words.extend(_address_words(label, final=i == len(labels) - 1))
    if colon:
        words.append("colon")
        words.extend(_address_words(port))
    return words


def _url_words(url: str, bare: bool = False, dotted: bool = True) -> list[str] | None:
    """A URL without its scheme: host, port, path, query, fragment; None if not a URL."""
    m = _PATH_START_RE.search(url)
    host, path = (url[: m.start()], url[m.start() :]) if m else (url, "")
    if not _is_host(host.partition(":")[0], bare, dotted):
        return None
    if path.endswith("/"):
        path = path[:-1]  # "example.com/" is said "example dot com"
    return _host_words(host) + _address_words(path)


def _email_words(token: str) -> list[str] | None:
    local, _, domain = token.partition("@")
    if not _EMAIL_LOCAL_RE.fullmatch(local) or not _is_host(domain):
        return None
    return [*_address_words(local), "at", *_host_words(domain)]


def _file_words(token: str) -> list[str] | None:
    """ "report_final.pdf", "docs/models.md": a name or path with a known file extension."""
    stem, dot, ext = token.rpartition(".")
    if not dot or not (ext.islower() or ext.isupper()) or ext.lower() not in _FILE_EXTENSIONS:
        return None
    if not _FILE_PATH_RE.fullmatch(stem) or not any(c.isalnum() for c in stem):
        return None
    return [*_address_words(stem), "dot", *_address_words(ext, final=True)]


def _address_token_words(token: str) -> list[str] | None:
    """How to read `token` (trimmed of surrounding punctuation) if it is an address."""
    if token.startswith("mailto:"):
        return _email_words(token[7:]) if token.count("@") == 1 else None
    scheme = _SCHEME_RE.match(token)
    if scheme:
        name = scheme.group("scheme").lower()
        # "https://" and "http://" are never said (a browser adds them); others are.
        prefix = [] if name in ("http", "https") else [*_address_words(name), "colon slash slash"]
        words = _url_words(token[scheme.end() :], dotted=False)
        return None if words is None else prefix + words
    if token[:4].lower() == "www.":
        return _url_words(token)
    if "@" in token:
        return _email_words(token) if token.count("@") == 1 else None
    if "." not in token:
        return None
    return _url_words(token, bare=True) or _file_words(token)


def _address(m: re.Match[str]) -> str:
    token = m.group(0)
    core = token.lstrip(_LEADING_PUNCT)
    lead = token[: len(token) - len(core)]
    trimmed = core.rstrip(_TRAILING_PUNCT)
    if trimmed.endswith("'s"):
        trimmed = trimmed[:-2]  # "example.com's": the possessive stays a word ending
    trail = core[len(trimmed) :]
    if not trimmed:
        return token
    words = _address_token_words(trimmed)
    if not words:
        return token
    return lead + " ".join(words) + trail


# "@voxline": a handle. (An "@" between words is "at" too; see `_AT_RE`.)
_HANDLE_RE = re.compile(r"(?<![\w@])@(?P<name>[A-Za-z0-9_]++)(?![@\w])")
# "#tts", "#MondayMotivation": a hashtag; "#1" is a number sign (`_NUMBER_SIGN_RE`).
_HASHTAG_RE = re.compile(r"(?<![\w#&])#(?P<tag>[A-Za-z][A-Za-z0-9_]*+)(?![#\w])")
# The words of a camel-case tag: "MondayMotivation" -> Monday Motivation, "TTS2024" -> TTS 2024.
_TAG_WORD_RE = re.compile(r"[A-Z]?[a-z]++|[A-Z]+(?![a-z])|\d++")


def _handle(m: re.Match[str]) -> str:
    return "at " + " ".join(_address_words(m.group("name")))


def _hashtag(m: re.Match[str]) -> str:
    words = []
    for part in _TAG_WORD_RE.findall(m.group("tag")):
        words.append(_address_number(part) if part.isdigit() else _address_letters(part))
    return "hashtag " + " ".join(words)


# Names with symbols in them, said as people say them.
_SYMBOL_NAMES = {
    "C++": "C plus plus",
    "g++": "G plus plus",
    "C#": "C sharp",
    "F#": "F sharp",
}
_SYMBOL_NAME_RE = re.compile(
    r"(?<![\w+#])(?:" + "|".join(re.escape(k) for k in _SYMBOL_NAMES) + r")(?![\w+#])"
)

# "2x", "10x faster", "1.5x": a multiplier. Not "4x4" (a dimension, see `_DIMENSION_RE`) and not
# "0x1F" (hex): the "x" must end the word.
_MULTIPLIER_RE = re.compile(r"(?<![\w.,])(?P<num>\d++(?:\.\d++)?)[xX](?!\w)")


def _multiplier(m: re.Match[str]) -> str:
    return _number_words(m.group("num")) + " times"


# --- symbols and plain numbers -------------------------------------------------------------

_WITH_RE = re.compile(r"(?<![\w/])[wW]/(?P<o>[oO])?(?= )")
_AMP_RE = re.compile(r" ?& ?")
_AT_RE = re.compile(r" ?@ ?")
_DIMENSION_RE = re.compile(r"(?<![\w.])(\d+)x(\d+)(?![\w.])")
_TWENTY_FOUR_SEVEN_RE = re.compile(r"(?<![\w/])24/7(?![\w/])")
_RANGE_RE = re.compile(r"(?<=\d) ?[-–] ?(?=\d)")
_DASH_RE = re.compile(r" ?– ?")
_LETTER_DIGIT_RE = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")
_YEAR_RE = re.compile(r"(?<![\w.,-])(1[1-9]\d\d|20\d\d)(?![\w]|[.,]\d)")
_NUMBER_RE = re.compile(rf"(?<![\w.])(?P<neg>-)?(?P<num>{_NUM}|\.\d+)")


def _number(m: re.Match[str]) -> str:
    # The lookbehind sits before the optional sign, so "COVID-19" never takes "-" as a minus.
    return ("minus " if m.group("neg") else "") + _number_words(m.group("num"))


_SPACE_BEFORE_PUNCT_RE = re.compile(r" +([.,!?;:])")
_COMMA_NO_SPACE_RE = re.compile(r"([,;])(?=[^\W\d_])")  # "one,two" (from "1,2") -> "one, two"
_REPEATED_PUNCT_RE = re.compile(r"([,;:!?])\1+")

# Rules that only apply to text containing digits; order matters (specific before generic).
_DIGIT_RULES: tuple[_Rule, ...] = (
    (_PHONE_RE, _phone),
    (_ISO_DATE_RE, _iso_date),
    (_SLASH_DATE_RE, _slash_date),
    (_DOTTED_RE, _dotted),
    # After dates and phone numbers took their hyphens, digit-dash-digit is a range or score.
    (_RANGE_RE, lambda m: " to "),
    (_MONTH_DAY_RE, _month_day),
    (_DAY_MONTH_RE, _day_month),
    (_CLOCK_RE, _clock),
    (_HOUR_AMPM_RE, _hour_ampm),
    (_CURRENCY_PRE_RE, _money),
    (_CURRENCY_POST_RE, _money),
    (_CENTS_RE, _cents),
    (_PERCENT_RE, _percent),
    (_NUMBER_SIGN_RE, _number_sign),
    (_ORDINAL_RE, _ordinal_sub),
    (_DECADE_RE, _decade),
    (_FRACTION_RE, _fraction),
    (_UNIT_RE, _unit),
    # Dimensions are plain cardinals, never years: "1920x1080".
    (_DIMENSION_RE, lambda m: f"{_int_words(m.group(1))} by {_int_words(m.group(2))}"),
    (_MULTIPLIER_RE, _multiplier),
    (_TWENTY_FOUR_SEVEN_RE, lambda m: "twenty-four seven"),
)

# Tokens whose symbols are read by name; before everything else, which would take their
# symbols and numbers apart.
_TOKEN_RULES: tuple[_Rule, ...] = (
    (_ADDRESS_TOKEN_RE, _address),
    (_SYMBOL_NAME_RE, lambda m: _SYMBOL_NAMES[m.group(0)]),
    (_HASHTAG_RE, _hashtag),
    (_HANDLE_RE, _handle),
)

_TEXT_RULES: tuple[_Rule, ...] = (
    (_PHONE_EXTENSION_RE, _phone_extension),  # before "ext." becomes "extension"
    (_ABBR_RE, _abbreviation),
    (_TITLE_RE, lambda m: _TITLES[m.group("t") or m.group("t2")] + " "),
    (_ST_DR_RE, _st_dr),
    (_ACRONYM_RE, _acronym),
    (_WITH_RE, lambda m: "without" if m.group("o") else "with"),
    (_AMP_RE, lambda m: " and "),
    (_AT_RE, lambda m: " at "),
)

_LATE_DIGIT_RULES: tuple[_Rule, ...] = (
    (_LETTER_DIGIT_RE, lambda m: " "),
    (_YEAR_RE, lambda m: _year(int(m.group(1)))),
    (_NUMBER_RE, _number),
)

_HAS_DIGIT_RE = re.compile(r"\d")


def _apply_rules(text: str) -> str:
    for pattern, repl in _TOKEN_RULES:
        text = pattern.sub(repl, text)
    # Abbreviations go next: "St."/"Dr." look at a neighbouring "5th" before it becomes words.
    for pattern, repl in _TEXT_RULES:
        text = pattern.sub(repl, text)
    has_digit = _HAS_DIGIT_RE.search(text) is not None
    if has_digit:
        for pattern, repl in _DIGIT_RULES:
            text = pattern.sub(repl, text)
    text = _DASH_RE.sub(", ", text)  # en dash between words: a pause
    if has_digit:
        for pattern, repl in _LATE_DIGIT_RULES:
            text = pattern.sub(repl, text)
    text = text.replace("%", " percent ")  # a lone sign with no number before it
    text = _collapse_space(text)
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    text = _REPEATED_PUNCT_RE.sub(r"\1", text)
    if has_digit:
        text = _COMMA_NO_SPACE_RE.sub(r"\1 ", text)
    return text


def normalize(text: str) -> str:
    """Normalise raw English text into speakable words for the en-us espeak-ng voice.

    Applies NFKC, removes control/format characters and emoji, collapses whitespace (keeping
    line breaks), and expands numbers, currency, percentages, years, dates, times, units,
    common abbreviations and a few symbols into words. Sentence punctuation is preserved so
    `split_sentences` still works on the result.

    Never raises for any `str` input (a rule that fails on odd input is skipped as a whole and
    the character-cleaned text is returned). Raises `TypeError` if `text` is not a `str`.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize() expects str, got {type(text).__name__}")
    try:
        cleaned = _clean_chars(text)
    except Exception as exc:  # defensive: must never raise on user text
        _LOG.debug("character clean-up failed (%s); dropping non-ASCII", type(exc).__name__)
        ascii_text = text.encode("ascii", "ignore").decode("ascii")
        cleaned = _collapse_space(_CONTROL_ASCII_RE.sub(" ", ascii_text))
    if not cleaned:
        return ""
    try:
        return _apply_rules(cleaned)
    except Exception as exc:  # defensive: a rule bug must not fail the request
        _LOG.debug("normalisation rule failed (%s); returning cleaned text", type(exc).__name__)
        return cleaned


def is_speakable(text: str) -> bool:
    """Whether `text` contains anything to say: at least one letter or digit after `normalize`.

    False for empty, whitespace-only, control-character-only, punctuation-only or emoji-only
    input (the gateway rejects such requests with INVALID_ARGUMENT).
    """
    if not isinstance(text, str):
        return False
    return any(ch.isalnum() for ch in normalize(text))
