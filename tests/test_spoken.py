"""Tests for relaylab.core.spoken: how a TTS voice says text, and comparing words."""

import doctest

import pytest

from relaylab.core import spoken
from relaylab.core.spoken import (
    Word,
    comparable_words,
    digit_words,
    edit_distance,
    number_words,
    ordinal_words,
    speak,
    split_words,
    spoken_variants,
    year_words,
)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (42, "forty-two"),
        (99, "ninety-nine"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (342, "three hundred forty-two"),
        (1000, "one thousand"),
        (1200, "one thousand two hundred"),
        (10_001, "ten thousand one"),
        (999_999, "nine hundred ninety-nine thousand nine hundred ninety-nine"),
        (1_000_000, "one million"),
        (2_500_000_000, "two billion five hundred million"),
        (
            1_234_567_890,
            "one billion two hundred thirty-four million five hundred sixty-seven "
            "thousand eight hundred ninety",
        ),
        (3 * 10**12, "three trillion"),
        (10**15, "one zero zero zero zero zero zero zero zero zero zero zero zero zero zero zero"),
        (-5, "minus five"),
    ],
)
def test_number_words(n, words):
    assert number_words(n) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (105, "one hundred and five"),
        (1005, "one thousand and five"),
        (1234, "one thousand two hundred and thirty-four"),
        (100, "one hundred"),
    ],
)
def test_number_words_with_and(n, words):
    assert number_words(n, with_and=True) == words


@pytest.mark.parametrize(
    ("year", "words"),
    [
        (1999, "nineteen ninety-nine"),
        (1066, "ten sixty-six"),
        (1900, "nineteen hundred"),
        (1905, "nineteen oh five"),
        (2000, "two thousand"),
        (2005, "two thousand five"),
        (2010, "twenty ten"),
        (2024, "twenty twenty-four"),
        (999, "nine hundred ninety-nine"),
    ],
)
def test_year_words(year, words):
    assert year_words(year) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (1, "first"),
        (2, "second"),
        (3, "third"),
        (4, "fourth"),
        (5, "fifth"),
        (8, "eighth"),
        (9, "ninth"),
        (11, "eleventh"),
        (12, "twelfth"),
        (20, "twentieth"),
        (21, "twenty-first"),
        (100, "one hundredth"),
        (1000, "one thousandth"),
    ],
)
def test_ordinal_words(n, words):
    assert ordinal_words(n) == words


def test_digit_words():
    assert digit_words("007") == "zero zero seven"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("In 1999, the euro launched.", "In nineteen ninety-nine, the euro launched."),
        ("2005", "two thousand five"),
        ("2010", "twenty ten"),
        ("in 2100", "in two thousand one hundred"),
        ("1,200 people", "one thousand two hundred people"),
        ("1,234,567", "one million two hundred thirty-four thousand five hundred sixty-seven"),
        ("5000000000", "five billion"),
        ("42", "forty-two"),
        ("3.5", "three point five"),
        ("pi is 3.14.", "pi is three point one four."),
        ("0.25", "zero point two five"),
        ("the 1st and 21st", "the first and twenty-first"),
        ("2nd, 3rd, 4th", "second, third, fourth"),
        ("$5", "five dollars"),
        ("$1", "one dollar"),
        ("$1.50", "one dollar fifty"),
        ("$0.99", "ninety-nine cents"),
        ("$5.00", "five dollars"),
        ("$1,000,000", "one million dollars"),
        ("$2.5 million", "two point five million dollars"),
        ("€3", "three euros"),
        ("£3.20", "three pounds twenty"),
        ("10%", "ten percent"),
        ("3.5%", "three point five percent"),
        ("salt & pepper", "salt and pepper"),
        ("AT&T", "AT and T"),
        ("2+2=4", "two plus two equals four"),
        ("C++", "C plus plus"),
        ("#1 fan", "number one fan"),
        ("email me @ home", "email me at home"),
        ("at 3:30", "at three thirty"),
        ("at 3:05", "at three oh five"),
        ("at 10:00", "at ten o'clock"),
        ("-5 degrees", "minus five degrees"),
        ("COVID-19", "COVID-nineteen"),
        ("5kg", "five kg"),
        ("agent 007", "agent zero zero seven"),
    ],
)
def test_speak(text, said):
    assert speak(text) == said


def test_speak_keeps_words_spacing_and_punctuation():
    text = "Hello,  world!  How are you? (Fine.) Don't worry — it's fine..."
    assert speak(text) == text


def test_speak_empty():
    assert speak("") == ""


def test_spoken_variants_start_with_what_speak_says():
    for text in ["1999", "$1.50", "10%", "2010", "hello", "3:00", "-4"]:
        assert spoken_variants(text)[0] == speak(text)


@pytest.mark.parametrize(
    ("text", "alternative"),
    [
        ("2010", "two thousand ten"),
        ("2005", "two thousand and five"),
        ("1999", "one thousand nine hundred ninety-nine"),
        ("1,200", "twelve hundred"),
        ("105", "one hundred and five"),
        ("$1.50", "one dollar and fifty cents"),
        ("$1.50", "one fifty"),
        ("10%", "ten per cent"),
        ("0.5", "point five"),
        ("10:00", "ten"),
        ("-3", "negative three"),
    ],
)
def test_spoken_variants_include_other_readings(text, alternative):
    assert alternative in spoken_variants(text)


def test_spoken_variants_of_plain_word():
    assert spoken_variants("hello,") == ["hello,"]


def test_spoken_variants_respects_limit():
    assert len(spoken_variants("1999 2010 1,200", limit=3)) == 3


def test_split_words_keeps_positions():
    text = "  Sure!  In 1999,"
    words = split_words(text)
    assert words == [Word("Sure!", 2, 7), Word("In", 9, 11), Word("1999,", 12, 17)]
    assert all(text[w.start : w.end] == w.text for w in words)


def test_split_words_empty():
    assert split_words("   ") == []


@pytest.mark.parametrize(
    ("word", "said_part"),
    [
        ("1999,", "1999"),
        ("help.", "help"),
        ("Sure!", "Sure"),
        ("I", "I"),
        ("$5", "$5"),
        ("10%", "10%"),
        ("(really?)", "(really"),
        ("U.S.", "U.S."),
        ("e.g.,", "e.g."),
        ("Mr.", "Mr"),
        ("dogs'", "dogs"),
        ("—", ""),
    ],
)
def test_spoken_end_leaves_out_trailing_punctuation(word, said_part):
    text = "x " + word
    assert text[2 : split_words(text)[1].spoken_end] == said_part


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Sure! In 1999,", ["sure", "in", "1999"]),
        ("Ninety-nine", ["ninety", "nine"]),
        ("Don't STOP", ["dont", "stop"]),
        ("it’s", ["its"]),
        ("and/or", ["and", "or"]),
        ("...   —  !", []),
        ("café déjà-vu", ["café", "déjà", "vu"]),
        ("snake_case", ["snake", "case"]),
    ],
)
def test_comparable_words(text, words):
    assert comparable_words(text) == words


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "abc", 3),
        ("colour", "color", 1),
        ("kitten", "sitting", 3),
        ("same", "same", 0),
        ("launched", "launc", 3),
    ],
)
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance


def test_split_words_with_a_limit_stops_early():
    assert split_words("one two three four", limit=2) == [Word("one", 0, 3), Word("two", 4, 7)]
    assert split_words("one two", limit=5) == split_words("one two")
    assert split_words("one two", limit=0) == []


@pytest.mark.parametrize(
    "text",
    [
        "1" * 5_000,  # Python refuses int() of more than 4,300 digits
        "$" + "9" * 5_000,
        "$" + "9" * 5_000 + ".99",
        "0." + "5" * 5_000,
        "1" * 5_000 + ".5",
        "1" * 5_000 + "th",
        "-" + "1" * 5_000 + "%",
        "1" * 20 + "st",
    ],
)
def test_numbers_too_long_to_say_are_read_digit_by_digit(text):
    said = comparable_words(speak(text))
    digits = sum(c.isdigit() for c in text)
    assert said.count("one") + said.count("nine") + said.count("five") >= digits - 2
    assert spoken_variants(text)[0] == speak(text)


def test_module_examples_run():
    failures, tried = doctest.testmod(spoken)
    assert tried >= 4
    assert failures == 0
