"""How a text-to-speech voice says text, and how to compare words said two ways.

ConversationRelay tells us what the caller heard as the voice said it, so the
"In 1999" we sent comes back as "in nineteen ninety-nine". To line the two up we
need to know how a voice reads numbers and symbols, and to compare words without
caring about case or punctuation.

    >>> speak("It costs $5, about 10% of the 1999 price.")
    'It costs five dollars, about ten percent of the nineteen ninety-nine price.'
    >>> comparable_words("Ninety-nine, don't!")
    ['ninety', 'nine', 'dont']

Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple

__all__ = [
    "Word",
    "comparable_words",
    "digit_words",
    "edit_distance",
    "number_words",
    "ordinal_words",
    "speak",
    "split_words",
    "spoken_variants",
    "year_words",
]

# --- Spelling numbers -----------------------------------------------------------------

# fmt: off
_SMALL = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# fmt: on
_SCALES = (
    (10**12, "trillion"),
    (10**9, "billion"),
    (10**6, "million"),
    (10**3, "thousand"),
    (10**2, "hundred"),
)
_ORDINAL_SPECIAL = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def digit_words(digits: str) -> str:
    """Read digits one by one: "007" -> "zero zero seven"."""
    return " ".join(_SMALL[int(d)] for d in digits if d.isdigit())


def number_words(n: int, *, with_and: bool = False) -> str:
    """Spell an integer: 1234 -> "one thousand two hundred thirty-four".

    with_and=True gives the British reading ("one hundred and five").
    From a quadrillion up, numbers are read digit by digit.
    """
    if n < 0:
        return "minus " + number_words(-n, with_and=with_and)
    if n < 20:
        return _SMALL[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_SMALL[ones]}" if ones else "")
    if n >= 10**15:
        return digit_words(str(n))
    scale, scale_name = next((s, name) for s, name in _SCALES if n >= s)
    count, rest = divmod(n, scale)
    words = f"{number_words(count, with_and=with_and)} {scale_name}"
    if rest:
        joiner = " and " if with_and and rest < 100 else " "
        words += joiner + number_words(rest, with_and=with_and)
    return words


def year_words(year: int) -> str:
    """Read a year the way people say it: 1999 -> "nineteen ninety-nine",
    1905 -> "nineteen oh five", 1900 -> "nineteen hundred", 2005 -> "two thousand five",
    2010 -> "twenty ten". Numbers that are not four digits are spelled normally."""
    if not 1000 <= year <= 9999 or year % 1000 < 10:  # 2000-2009 are "two thousand (five)"
        return number_words(year)
    century, rest = divmod(year, 100)
    if rest == 0:
        return f"{number_words(century)} hundred"
    if rest < 10:
        return f"{number_words(century)} oh {_SMALL[rest]}"
    return f"{number_words(century)} {number_words(rest)}"


def ordinal_words(n: int) -> str:
    """Spell an ordinal: 1 -> "first", 21 -> "twenty-first", 100 -> "one hundredth"."""
    words = re.fullmatch(r"(.*?)([a-z]+)", number_words(n))
    assert words is not None  # number_words always ends in a word
    head, last = words.groups()
    if last in _ORDINAL_SPECIAL:
        last = _ORDINAL_SPECIAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + last


# Numbers with more digits than this are read digit by digit.
_LONGEST_NUMBER = 15


def _unique(readings: list[str]) -> list[str]:
    return list(dict.fromkeys(readings))


def _integer_readings(digits: str) -> list[str]:
    """Ways to say an integer written as digits ("1999", "1,200", "007"), most typical first."""
    plain = digits.replace(",", "")
    if len(plain) > _LONGEST_NUMBER:  # read digit by digit (and never int() a huge string)
        return [digit_words(plain)]
    n = int(plain)
    if len(plain) > 1 and plain.startswith("0"):  # a code like "007", not a quantity
        return [digit_words(plain), number_words(n)]
    readings = [number_words(n), number_words(n, with_and=True)]
    if 1000 <= n <= 9999:
        in_pairs = [year_words(n)]
        century, rest = divmod(n, 100)
        if century % 10:  # 1200 -> "twelve hundred", 1234 -> "twelve hundred thirty-four"
            hundreds = f"{number_words(century)} hundred"
            in_pairs.append(f"{hundreds} {number_words(rest)}" if rest else hundreds)
        # A bare four-digit number in this range is most often a year.
        readings = in_pairs + readings if "," not in digits and n < 2100 else readings + in_pairs
    return _unique(readings)


def _decimal_readings(whole: str, fraction: str) -> list[str]:
    """Ways to say "3.14": "three point one four"; "0.5" may also be "point five"."""
    after_point = f"point {digit_words(fraction)}"
    readings = [f"{w} {after_point}" for w in _integer_readings(whole)]
    if set(whole) <= {"0", ","}:
        readings += [after_point, f"oh {after_point}"]
    return _unique(readings)


# --- Money, times and symbols --------------------------------------------------------

# currency symbol: (one, many, one minor unit, many minor units)
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
}
_SYMBOLS = {
    "&": ["and"],
    "+": ["plus"],
    "=": ["equals", "is"],
    "@": ["at"],
    "%": ["percent", "per cent"],
    "°": ["degrees"],
    "#": ["number", "hash"],
}
# Characters a voice says out loud even though they are not letters or digits.
SPOKEN_SYMBOLS = "".join(_SYMBOLS) + "".join(_CURRENCIES)


def _money_readings(currency: str, amount: str, cents: str | None, scale: str | None) -> list[str]:
    """Ways to say "$5", "$1.50", "$0.99" or "$2.5 million"."""
    one, many, minor_one, minor_many = _CURRENCIES[currency]
    too_long = len(amount.replace(",", "")) > _LONGEST_NUMBER
    if scale or (cents and len(cents) > 2) or too_long:  # "$2.5 million", "$1.125"
        number = _decimal_readings(amount, cents) if cents else _integer_readings(amount)
        return [f"{r} {scale} {many}" if scale else f"{r} {many}" for r in number]

    whole = int(amount.replace(",", ""))
    unit = one if whole == 1 else many
    main = [f"{r} {unit}" for r in _integer_readings(amount)]
    minor = int(cents.ljust(2, "0")) if cents else 0  # "$1.5" is a dollar fifty
    if minor == 0:
        return main
    minor_words = number_words(minor)
    minor_part = f"{minor_words} {minor_one if minor == 1 else minor_many}"
    if whole == 0:
        return [minor_part, f"zero {many} and {minor_part}"]
    short = f"{main[0]} {minor_words}" if minor >= 10 else f"{main[0]} and {minor_part}"
    return _unique(
        [
            short,
            f"{main[0]} and {minor_part}",
            f"{main[0]} {minor_part}",
            f"{number_words(whole)} {minor_words if minor >= 10 else 'oh ' + minor_words}",
        ]
    )


def _time_readings(hour: str, minute: str) -> list[str]:
    """Ways to say "3:30" ("three thirty"), "3:05" ("three oh five"), "10:00" ("ten o'clock")."""
    hour_words, m = number_words(int(hour)), int(minute)
    if m == 0:
        return [f"{hour_words} o'clock", hour_words, f"{hour_words} hundred"]
    if m < 10:
        return [f"{hour_words} oh {_SMALL[m]}", f"{hour_words} zero {_SMALL[m]}"]
    return [f"{hour_words} {number_words(m)}"]


_SAID_DIFFERENTLY = re.compile(
    r"""
      (?P<money> (?P<currency>[$€£]) (?P<amount>\d{1,3}(?:,\d{3})+(?!\d)|\d+)
                 (?:\.(?P<cents>\d+))? (?:\ (?P<scale>thousand|million|billion|trillion)\b)? )
    | (?P<time> \b(?P<hour>\d{1,2}):(?P<minute>[0-5]\d)\b )
    | (?P<number> (?P<minus>(?<![\w.])-)? (?P<whole>\d{1,3}(?:,\d{3})+(?!\d)|\d+)
                  (?:\.(?P<fraction>\d+))? (?:(?P<percent>%)|(?P<ordinal>st|nd|rd|th)\b)? )
    | (?P<symbol> [&+=@%°]|\#(?=\d) )
    """,
    re.VERBOSE,
)


def _readings(match: re.Match[str]) -> list[str]:
    """Ways a voice says one match of _SAID_DIFFERENTLY, most typical first."""
    if match["money"]:
        return _money_readings(match["currency"], match["amount"], match["cents"], match["scale"])
    if match["time"]:
        return _time_readings(match["hour"], match["minute"])
    if match["symbol"]:
        return _SYMBOLS[match["symbol"]]

    too_long = len(match["whole"].replace(",", "")) > _LONGEST_NUMBER
    if match["ordinal"] and not match["fraction"] and not too_long:
        readings = [ordinal_words(int(match["whole"].replace(",", "")))]
    elif match["fraction"]:
        readings = _decimal_readings(match["whole"], match["fraction"])
    else:
        readings = _integer_readings(match["whole"])
    if match["minus"]:
        readings = [f"minus {r}" for r in readings] + [f"negative {r}" for r in readings]
    if match["percent"]:
        readings = [f"{r} percent" for r in readings] + [f"{r} per cent" for r in readings]
    return readings


_GAP = "\x00"  # marks a space _spaced() wants; runs of them become one space


def _spaced(reading: str, match: re.Match[str]) -> str:
    """Space a reading off a word or symbol it was glued to: "5kg" -> "five kg"."""
    text = match.string

    def glued(char: str) -> bool:
        return char.isalnum() or char in SPOKEN_SYMBOLS

    before = _GAP if match.start() > 0 and glued(text[match.start() - 1]) else ""
    after = _GAP if match.end() < len(text) and glued(text[match.end()]) else ""
    return before + reading + after


def _close_gaps(text: str) -> str:
    return re.sub(f"{_GAP}+", " ", text)


def speak(text: str) -> str:
    """The text as a typical TTS voice says it: numbers, money, percentages, times and
    symbols spelled out; words, spacing and punctuation kept.

    >>> speak("In 1999, 1,200 paid $1.50 & came 21st.")
    'In nineteen ninety-nine, one thousand two hundred paid one dollar fifty and came twenty-first.'

    A bare four-digit number from 1100 to 2099 is read as a year ("1999" -> "nineteen
    ninety-nine"); with a comma it is a quantity ("1,999" -> "one thousand nine hundred
    ninety-nine").
    """
    return _close_gaps(_SAID_DIFFERENTLY.sub(lambda m: _spaced(_readings(m)[0], m), text))


def spoken_variants(text: str, limit: int = 8) -> list[str]:
    """Ways a voice might say `text`, most typical first (the first is speak(text)).

    >>> spoken_variants("2010")
    ['twenty ten', 'two thousand ten', 'two thousand and ten']
    """
    pieces: list[list[str]] = []
    position = 0
    for match in _SAID_DIFFERENTLY.finditer(text):
        pieces.append([text[position : match.start()]])
        pieces.append([_spaced(reading, match) for reading in _readings(match)])
        position = match.end()
    pieces.append([text[position:]])
    variants = (_close_gaps("".join(choice)) for choice in itertools.product(*pieces))
    return _unique(list(itertools.islice(variants, limit)))


# --- Words and comparing them ----------------------------------------------------------


class Word(NamedTuple):
    """A whitespace-separated word of a text, with where it sits: text[start:end]."""

    text: str
    start: int
    end: int

    @property
    def spoken_end(self) -> int:
        """Where the said part of the word ends: trailing punctuation a voice does not say
        ("1999," or "help.") is left out, but an abbreviation keeps its dot ("U.S.")."""
        end = len(self.text)
        while end > 0 and not (
            self.text[end - 1].isalnum() or self.text[end - 1] in SPOKEN_SYMBOLS
        ):
            end -= 1
        abbreviation = "." in self.text[:end] and self.text[end - 1 : end].isalpha()
        if abbreviation and self.text[end : end + 1] == ".":
            end += 1
        return self.start + end


def split_words(text: str, limit: int | None = None) -> list[Word]:
    """Split text at whitespace, keeping each word's position: "Hi, you" -> Hi, (0-3), you (4-7).

    With `limit`, only the first `limit` words are split off, so a long text costs no more
    than its start.
    """
    matches = itertools.islice(re.finditer(r"\S+", text), limit)
    return [Word(m.group(), m.start(), m.end()) for m in matches]


def comparable_words(text: str) -> list[str]:
    """Lowercase words with punctuation removed, for comparing what was sent with what was
    said. Apostrophes vanish ("don't" -> "dont"); hyphens and other marks separate words
    ("ninety-nine" -> "ninety", "nine"). Digits are kept as they are: speak() first."""
    without_apostrophes = re.sub(r"['’‘`]", "", text.lower())
    return re.findall(r"[^\W_]+", without_apostrophes)


def edit_distance(a: str, b: str) -> int:
    """How many single-letter insertions, deletions or changes turn a into b."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]
