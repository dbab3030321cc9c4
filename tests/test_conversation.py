"""Tests for relaylab.core.conversation: heard_prefix() and the Conversation history."""

import doctest
import itertools
import json
import logging
import random
import time

import pytest

from relaylab.core import conversation
from relaylab.core.conversation import (
    HEARD_WORDS_LIMIT,
    SEARCHED_WORDS_LIMIT,
    Conversation,
    heard_prefix,
    locate_heard,
)
from relaylab.core.message_rules import message_problems
from relaylab.core.spoken import comparable_words, number_words, speak, split_words
from relaylab.offline_claude.validation import InvalidRequest, validate

_CALL = {"type": "tool_use", "id": "toolu_1", "name": "hours", "input": {}}
_RESULT_FIRST = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "9 to 5"}

# --- heard_prefix -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "utterance", "heard"),
    [
        # The contract's examples.
        ("Sure! In 1999, the euro launched.", "Sure in nineteen ninety-nine", "Sure! In 1999"),
        ("Yes. Yes, I can help.", "Yes. Yes, I", "Yes. Yes, I"),
        ("Hello there, friend.", "", ""),
        ("It costs $5 today", "It costs five dollars", "It costs $5"),
        # Case, punctuation and spacing differ.
        ("Hello there, friend.", "HELLO THERE", "Hello there"),
        ("Hello there, friend.", "hello   there ,  ", "Hello there"),
        ("Well... maybe; who knows?", "well maybe who", "Well... maybe; who"),
        ("Hello there, friend.", "  ", ""),
        ("Hello there, friend.", "...", ""),
        # The voice reads numbers and symbols its own way.
        ("Growth was 10% last year.", "growth was ten percent", "Growth was 10%"),
        ("Growth was 10% last year.", "growth was ten per cent last", "Growth was 10% last"),
        ("Pi is about 3.14, roughly.", "pi is about three point one four", "Pi is about 3.14"),
        ("She came 21st of 30.", "she came twenty-first of", "She came 21st of"),
        ("It costs $1.50 each.", "it costs one dollar and fifty cents", "It costs $1.50"),
        ("We had 1,200 members.", "we had twelve hundred", "We had 1,200"),
        (
            "We had 1,200 members.",
            "we had one thousand two hundred members",
            "We had 1,200 members.",
        ),
        ("In 2010 it grew.", "in two thousand and ten", "In 2010"),
        ("In 2005 it grew.", "in two thousand five it", "In 2005 it"),
        ("Salt & pepper, please.", "salt and pepper", "Salt & pepper"),
        ("Meet at 3:30 sharp.", "meet at three thirty", "Meet at 3:30"),
        ("A well-known fact.", "a well known", "A well-known"),
        # The utterance may keep digits where the voice said words.
        ("Sure! In 1999, the euro launched.", "Sure! In 1999, the", "Sure! In 1999, the"),
        # A word cut off mid-way was not heard.
        (
            "Sure! In 1999, the euro launched.",
            "Sure in nineteen ninety-nine the euro launc",
            "Sure! In 1999, the euro",
        ),
        ("Sure! In 1999, the euro launched.", "Sure in nineteen ninety", "Sure! In"),
        ("Sure! In 1999, the euro launched.", "Sure in nineteen ninety-ni", "Sure! In"),
        ("Hello there, friend.", "Hel", ""),
        ("I cannot say.", "I can", "I"),
        ("The quick dog ran quickly away.", "the quick dog ran quick", "The quick dog ran"),
        ("The euro launched today.", "the euro launche", "The euro"),
        ("The euro launched today.", "the euro launche today", "The euro launched today."),
        ("It costs $5 today", "It costs five", "It costs"),
        # Repeated words and phrases: align from the start, never search.
        ("Yes. Yes, I can help. Yes.", "yes", "Yes"),
        ("Yes. Yes, I can help. Yes.", "Yes. Yes", "Yes. Yes"),
        ("Yes. Yes, I can help. Yes.", "yes yes i can help", "Yes. Yes, I can help"),
        ("Yes. Yes, I can help. Yes.", "yes yes i can help yes", "Yes. Yes, I can help. Yes."),
        ("I can help. I can help you.", "I can help. I can", "I can help. I can"),
        ("no no no no", "no no", "no no"),
        # Heard it all, or more than it all.
        ("Hello there, friend.  ", "Hello there, friend.", "Hello there, friend."),
        ("Hello there, friend.", "Hello there, friend. Anything else?", "Hello there, friend."),
        ("Well — okay —", "well okay", "Well — okay —"),
        # Small differences are tolerated.
        ("The colour of the sky is blue.", "the color of the sky", "The colour of the sky"),
        ("The quick brown fox jumps over.", "the quick um brown fox", "The quick brown fox"),
        ("The quick brown fox jumps over.", "the quick fox jumps", "The quick brown fox jumps"),
        # ...but when in doubt, cut shorter.
        (
            "I can help you with that today.",
            "I can help you with this today",
            "I can help you with",
        ),
        ("The colour of the sky is blue.", "the color", "The"),
        ("Say yes now.", "say yeah", "Say"),
    ],
)
def test_heard_prefix(sent, utterance, heard):
    assert heard_prefix(sent, utterance) == heard


def test_heard_prefix_of_empty_sent():
    assert heard_prefix("", "anything at all") == ""
    assert heard_prefix("", "") == ""


SENTENCES = [
    "Sure! In 1999, the euro launched.",
    "Yes. Yes, I can help. Yes.",
    "It costs $5 today, or $1.50 per day — about 10% less.",
    "On the 21st of May 2010, 1,200 people met at 3:30 in Room 4.",
    "Dogs (and cats) are great: loyal, warm & funny!",
    "Okay. So, the first thing is this: breathe.  Then relax, okay?",
    "The U.S. population grew by 0.5% in 2005 and 2.25 percent in 1905.",
]


def _cuts(sentence):
    """(text of the first k words, what heard_prefix must return for them) for every k
    whose k-th word is said out loud (not a lone dash)."""
    words = split_words(sentence)
    for k in range(1, len(words) + 1):
        if not comparable_words(speak(words[k - 1].text)):
            continue
        first_k = sentence[: words[k - 1].end]
        rest_is_silent = not comparable_words(speak(sentence[words[k - 1].end :]))
        expected = sentence.rstrip() if rest_is_silent else sentence[: words[k - 1].spoken_end]
        yield first_k, expected


@pytest.mark.parametrize("sentence", SENTENCES)
def test_every_word_boundary_is_found(sentence):
    for first_k, expected in _cuts(sentence):
        assert heard_prefix(sentence, speak(first_k)) == expected
        # Voices and transcripts vary: no punctuation, lower case, odd spacing.
        plain = " ".join(comparable_words(speak(first_k)))
        assert heard_prefix(sentence, plain) == expected
        assert heard_prefix(sentence, "  " + speak(first_k).upper() + "   ") == expected
        # The utterance may also keep the sent spelling.
        assert heard_prefix(sentence, first_k) == expected


@pytest.mark.parametrize("sentence", SENTENCES)
def test_a_word_cut_off_midway_is_not_heard(sentence):
    cuts = list(_cuts(sentence))
    checked = 0
    for (first_k, expected), (first_k_plus_one, _) in itertools.pairwise(cuts):
        said = comparable_words(speak(first_k))
        next_word = comparable_words(speak(first_k_plus_one))[len(said)]
        if len(next_word) >= 3:
            stub = next_word[: len(next_word) // 2]
            assert heard_prefix(sentence, " ".join([*said, stub])) == expected
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize("sentence", SENTENCES)
def test_result_is_a_prefix_of_sent(sentence):
    for utterance in ["", "yes", "nonsense words here", sentence, sentence + " more", "1999"]:
        result = heard_prefix(sentence, utterance)
        assert sentence.startswith(result)
        assert result == result.rstrip()


def test_never_claims_more_than_was_heard():
    sent = "One two three four five six seven eight nine ten."
    for k in range(1, 10):
        heard_words = sent.split()[:k]
        # Whatever noise the transcript adds at the end, nothing beyond word k is claimed.
        for noise in ["", " uh", " sev", " seventeen", " banana"]:
            result = heard_prefix(sent, " ".join(heard_words) + noise)
            assert len(result.split()) <= k, (k, noise, result)


def test_long_reply_cut_early():
    sent = " ".join(f"word{i} is {i}." for i in range(2000))
    assert (
        heard_prefix(sent, "word0 is zero word1 is one word2 i") == "word0 is 0. word1 is 1. word2"
    )


def test_voice_reading_every_number_its_own_way():
    # Each year is said with six words rather than three, so the voice falls further and
    # further behind where the sent text would put it.
    sent = " ".join(f"In {year}." for year in range(1990, 2002))
    said = " ".join(f"in {number_words(year)}" for year in range(1990, 2001))
    assert heard_prefix(sent, said) == sent[: sent.index(" In 2001")].rstrip(".")


def test_unmatched_utterance_is_estimated_and_warned(caplog):
    sent = "The quick brown fox jumps over the lazy dog."
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        result = heard_prefix(sent, "Lorem ipsum dolor")
    assert result == "The quick brown"
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.name == "relaylab.core.conversation"
    assert "estimated" in record.getMessage()
    assert "Lorem ipsum dolor" in record.getMessage()


def test_estimate_counts_spoken_words_not_written_ones(caplog):
    # "$5" takes two words to say, so four heard words cover three sent words.
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        assert heard_prefix("Only $5 today, friend.", "xx yy zz ww") == "Only $5 today"
    assert "estimated" in caplog.text


def test_estimate_never_goes_past_the_end(caplog):
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        assert heard_prefix("Hi there.", "one two three four five six") == "Hi there."


def test_matched_utterance_logs_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        heard_prefix("Sure! In 1999, the euro launched.", "Sure in nineteen ninety-nine")
        heard_prefix("Sure! In 1999, the euro launched.", "")
    assert caplog.records == []


# --- heard_prefix: the utterance as the clause being spoken ------------------------------


@pytest.mark.parametrize(
    ("sent", "utterance", "heard"),
    [
        # PROTOCOL.md section 3, verbatim.
        (
            "Hi there. Dogs were the first animals people tamed.",
            "Dogs were the first",
            "Hi there. Dogs were the first",
        ),
        (
            "It opens at 9. Tickets cost $12 for adults.",
            "Tickets cost twelve dollars for",
            "It opens at 9. Tickets cost $12 for",
        ),
        (
            "Step one is easy, and step two is harder.",
            "and step two",
            "Step one is easy, and step two",
        ),
    ],
)
def test_protocol_examples(sent, utterance, heard):
    assert heard_prefix(sent, utterance) == heard


@pytest.mark.parametrize(
    ("sent", "utterance", "heard"),
    [
        # Case, punctuation, spacing and TTS readings differ, as for a prefix.
        ("Hello. It is 10% off, today only.", "IT IS TEN PERCENT", "Hello. It is 10%"),
        (
            "Hello. We met at 3:30, then left.",
            "we met at three thirty then",
            "Hello. We met at 3:30, then",
        ),
        # A small misspelling inside the clause.
        ("Hi. The colour of the sky is blue.", "the color of the sky", "Hi. The colour of the sky"),
        # A filler word the voice never sent.
        (
            "Hi. The quick brown fox jumps over.",
            "the quick um brown fox",
            "Hi. The quick brown fox",
        ),
        # The last word was cut off mid-way: not heard.
        ("Step one is easy, and step two is harder.", "and step tw", "Step one is easy, and step"),
        # The voice stopped inside a number: "twelve" of "twelve dollars".
        (
            "It opens at 9. Tickets cost $12 for adults.",
            "Tickets cost twelve",
            "It opens at 9. Tickets cost",
        ),
        # The clause is the last sentence, heard to its end.
        (
            "It opens at 9. Tickets cost $12.",
            "tickets cost twelve dollars",
            "It opens at 9. Tickets cost $12.",
        ),
        # A clause that also starts like the reply, but is explained better further on.
        (
            "Yes. I can help. Yes, I can help with that.",
            "Yes, I can help with",
            "Yes. I can help. Yes, I can help with",
        ),
        # Streaming: the clause is at the end of what has been sent so far.
        ("Sure. In 1999, the eu", "in nineteen ninety-nine the", "Sure. In 1999, the"),
    ],
)
def test_clause_utterances(sent, utterance, heard):
    assert heard_prefix(sent, utterance) == heard


def _clause_cuts(sentence):
    """(the clause being spoken when the caller cut in after word k, spoken words played
    so far, what heard_prefix must return) for every k as in _cuts."""
    for first_k, expected in _cuts(sentence):
        words = split_words(first_k)
        start = max(
            (w.end for w in words[:-1] if w.text[-1] in ".,;:!?"),
            default=0,
        )
        played = len(comparable_words(speak(first_k)))
        yield first_k[start:], played, expected


@pytest.mark.parametrize("sentence", SENTENCES)
def test_every_clause_boundary_is_found_with_the_duration(sentence):
    # As Twilio's engineers read utteranceUntilInterrupt: only the clause being spoken.
    # With the duration, even a clause said more than once ("Yes.") is placed right.
    for clause, played, expected in _clause_cuts(sentence):
        duration_ms = played * 60_000 / 165 + 100
        assert heard_prefix(sentence, speak(clause), duration_ms) == expected, clause
        assert heard_prefix(sentence, speak(clause).upper(), duration_ms) == expected, clause
        assert heard_prefix(sentence, clause, duration_ms) == expected, clause


def test_every_clause_boundary_is_found_in_text_without_repeats():
    sentence = "Sure! In 1999, the euro launched; prices rose 10% by May, then fell."
    for clause, _played, expected in _clause_cuts(sentence):
        assert heard_prefix(sentence, speak(clause)) == expected, clause


def test_a_placed_clause_logs_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        assert heard_prefix("Step one is easy, and step two is harder.", "and step two")
    assert caplog.records == []


def test_a_clause_that_is_not_in_the_reply_is_not_placed(caplog):
    # "and" matches, but most of the heard words do not: estimated, not placed.
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        result = heard_prefix("Step one is easy, and step two is harder.", "lorem ipsum and")
    assert result == "Step one is"
    assert "could not be found" in caplog.text


REPEATED = "I like it. Dogs bark. Cats purr. Dogs bark loudly."


def test_a_repeated_clause_without_duration_is_the_earliest():
    assert heard_prefix(REPEATED, "dogs bark") == "I like it. Dogs bark"


FIRST_BARK = "I like it. Dogs bark"
SECOND_BARK = "I like it. Dogs bark. Cats purr. Dogs bark"


@pytest.mark.parametrize(
    ("words_played", "heard"),
    # The runs end after word 5 and word 9; at 7 they are equally near: the earlier.
    [(3, FIRST_BARK), (6, FIRST_BARK), (7, FIRST_BARK), (8, SECOND_BARK), (20, SECOND_BARK)],
)
def test_a_repeated_clause_is_chosen_by_the_duration(words_played, heard):
    duration_ms = words_played * 60_000 / 165 + 10
    assert heard_prefix(REPEATED, "dogs bark", duration_ms) == heard


def test_the_voice_pace_changes_which_repeat_is_nearest():
    # 2 seconds is 5.5 words at 165 words a minute, but 11 at 330.
    assert heard_prefix(REPEATED, "dogs bark", 2000) == FIRST_BARK
    assert heard_prefix(REPEATED, "dogs bark", 2000, words_per_minute=330) == SECOND_BARK


def test_a_placed_utterance_ignores_the_duration():
    sent = "Step one is easy, and step two is harder."
    for duration_ms in (0, 100, 60_000):
        assert heard_prefix(sent, "and step two", duration_ms) == "Step one is easy, and step two"
        assert heard_prefix(sent, "step one", duration_ms) == "Step one"


def test_an_unplaced_utterance_is_estimated_from_the_duration(caplog):
    sent = "The quick brown fox jumps over the lazy dog."
    # 1,500 ms at 165 words a minute is 4.1 words: four were heard.
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        assert heard_prefix(sent, "Lorem ipsum dolor", 1500) == "The quick brown fox"
    assert "duration" in caplog.text
    assert heard_prefix(sent, "Lorem ipsum dolor", 1500, words_per_minute=330) == (
        "The quick brown fox jumps over the lazy"
    )
    assert heard_prefix(sent, "Lorem ipsum dolor", 10**9) == sent


def test_the_duration_estimate_counts_spoken_words():
    # "$12" takes two words to say: four spoken words cover three sent words.
    assert heard_prefix("Only $12 today, friend.", "xx yy", 4 * 60_000 / 165) == "Only $12 today"


def test_an_empty_utterance_without_duration_heard_nothing():
    assert heard_prefix("Hi there. Dogs were the first.", "") == ""
    assert heard_prefix("Hi there. Dogs were the first.", "", None) == ""
    assert heard_prefix("Hi there. Dogs were the first.", "", 0) == ""


def test_an_empty_utterance_keeps_the_clauses_the_duration_finished(caplog):
    sent = "Hi there. Dogs were the first animals people tamed."
    word_ms = 60_000 / 165
    # Less than the first clause: nothing.
    assert heard_prefix(sent, "", 1 * word_ms + 10) == ""
    # Four words played; the last finished clause is "Hi there."
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        assert heard_prefix(sent, "", 4 * word_ms + 10) == "Hi there"
    assert "last clause" in caplog.text
    # All of it played.
    assert heard_prefix(sent, "", 60_000) == sent
    # A cut-off first word of the new clause is no heard word either.
    assert heard_prefix(sent, "Do", 4 * word_ms + 10) == "Hi there"


@pytest.mark.parametrize("duration_ms", [-5, float("nan"), float("inf"), True, "460", [1]])
def test_an_unusable_duration_is_ignored(duration_ms):
    sent = "The quick brown fox jumps over the lazy dog."
    assert heard_prefix(sent, "the quick", duration_ms) == "The quick"
    assert heard_prefix(sent, "Lorem ipsum dolor", duration_ms) == "The quick brown"
    assert heard_prefix(sent, "", duration_ms) == ""


@pytest.mark.parametrize("words_per_minute", [0, -165, float("nan"), float("inf"), True, "165"])
def test_a_bad_speaking_rate_is_a_clear_error(words_per_minute):
    with pytest.raises(ValueError, match="words_per_minute"):
        heard_prefix("Hello there.", "hello", 500, words_per_minute=words_per_minute)


def test_text_that_is_not_a_string_is_a_clear_error():
    with pytest.raises(TypeError, match="strings"):
        heard_prefix("Hello there.", None)
    with pytest.raises(TypeError, match="strings"):
        heard_prefix(b"Hello there.", "hello")


def test_warnings_never_carry_the_callers_newlines(caplog):
    forged = "Lorem\nipsum\r\nERROR relaylab.shell.server: forged line\u2028"
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        heard_prefix("The quick brown fox\njumps over the lazy dog.", forged)
        heard_prefix("Hi there. Dogs.\n", "\n", 60_000)
    assert len(caplog.records) == 2
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message and "\u2028" not in message
        assert "ipsum" in message or "Hi there" in message


# --- heard_prefix: limits ---------------------------------------------------------------

LONG_REPLY_SENTENCES = [
    "The euro launched in 1999, and {n} countries use it today.",
    "Tickets cost ${n} for adults, and half that for children.",
    "Dogs were the first animals people tamed, about {n},000 years ago.",
    "Our office opens at 9 and closes at 5:30, Monday to Friday.",
    "About {n}% of callers ask about the weather first.",
    "Step {n} is harder than the one before it, but not by much.",
]


def _long_reply(words: int) -> str:
    sentences, count = [], 0
    for n in itertools.count(2):
        sentence = LONG_REPLY_SENTENCES[n % len(LONG_REPLY_SENTENCES)].format(n=n)
        sentences.append(sentence)
        count += len(sentence.split())
        if count >= words:
            return " ".join(sentences)
    raise AssertionError("unreachable")


def _first_words(text: str, count: int) -> str:
    return text[: split_words(text)[count - 1].spoken_end]


def test_a_long_played_prefix_is_placed_by_its_last_words():
    reply = _long_reply(1_500)
    for played_words in (HEARD_WORDS_LIMIT + 1, 300, 1_234):
        utterance = speak(reply[: split_words(reply)[played_words - 1].end])
        assert len(comparable_words(utterance)) > HEARD_WORDS_LIMIT
        assert heard_prefix(reply, utterance) == _first_words(reply, played_words)


def _unique_clause_end(words, at_least):
    """The end of the first six-word clause from `at_least` on that holds a percentage
    (each appears once in the long reply; its other clauses come back again and again)."""
    return next(i + 1 for i in range(at_least, len(words)) if "%" in words[i].text)


def test_a_clause_deep_in_a_long_reply_is_found():
    reply = _long_reply(1_500)
    words = split_words(reply)
    for at_least in (400, 1_000, 1_450):
        end = _unique_clause_end(words, at_least)
        clause = speak(" ".join(word.text for word in words[end - 6 : end]))
        assert heard_prefix(reply, clause) == _first_words(reply, end)


def test_a_clause_past_the_searched_words_falls_back_to_the_duration(caplog):
    reply = "Hello there. " + "Lorem ipsum dolor sit amet. " * SEARCHED_WORDS_LIMIT
    clause = "hello there"  # only at the start; the voice is far past it
    assert heard_prefix(reply, clause) == "Hello there"
    late = reply + " The very end, at last."
    with caplog.at_level(logging.WARNING, logger="relaylab.core.conversation"):
        result = heard_prefix(late, "the very end", duration_ms=10**9)
    assert "duration" in caplog.text
    assert late.startswith(result)


def test_huge_numbers_do_not_break_alignment():
    sent = "Your code is " + "7" * 5_000 + " and that is all."
    assert heard_prefix(sent, "your code is") == "Your code is"
    # Only the utterance's last words are read: part of the number, so not all of it.
    assert heard_prefix("Call " + "1" * 5_000, "call " + "1" * 5_000) == "Call"
    assert heard_prefix(sent, "and that is all", 10) == sent


HOSTILE_WORDS = ["the", "a", "dog", "1999", "$12", "and,", "step", "two.", "10%", "for"]


def _hostile_utterances(reply: str, count: int, size: int = 60_000) -> list[str]:
    """Utterances of `size` characters a hostile caller (or a broken transcript) might
    send: random reply words, one word over and over, digits, the reply itself."""
    rng = random.Random(9)
    reply_words = reply.split()
    kinds = [
        lambda: " ".join(rng.choice(HOSTILE_WORDS) for _ in range(size // 3)),
        lambda: "the " * (size // 4),
        lambda: "a\n" * (size // 2),
        lambda: "1" * size,
        lambda: (reply + " ") * (size // len(reply) + 1),
        lambda: " ".join(rng.choice(reply_words) for _ in range(size // 4)),
    ]
    return [kinds[i % len(kinds)]()[:size] for i in range(count)]


def test_a_flood_of_huge_utterances_stays_cheap_and_right():
    # issue 9: 100 interrupts of 60,000 characters cost the old code ~4.5 CPU-seconds,
    # stalling every other call on the event loop.
    reply = _long_reply(1_500)
    reply += " " + " ".join(["the"] * 3_000) + " " + "x" * 40_000  # 60 K, odd tail
    assert len(reply) > 60_000
    utterances = _hostile_utterances(reply, 100)
    words = split_words(reply)
    end = _unique_clause_end(words, 1_000)
    clause = speak(" ".join(word.text for word in words[end - 6 : end]))
    played = speak(reply[: words[299].end])

    started = time.process_time()
    for utterance in utterances:
        result = heard_prefix(reply, utterance, duration_ms=60_000)
        assert reply.startswith(result)
        # Between hostile interrupts, real ones are still answered right.
        assert heard_prefix(reply, clause) == _first_words(reply, end)
        assert heard_prefix(reply, played) == _first_words(reply, 300)
    elapsed = time.process_time() - started
    # Generous: ~0.4 CPU-s here when the machine is quiet; the uncapped code took ~48.
    assert elapsed < 8.0, f"300 interrupts took {elapsed:.2f} CPU-seconds"


def test_a_reply_of_few_distinct_words_is_bounded_by_the_step_limit():
    # Every word matches everywhere: without ALIGNMENT_STEPS_LIMIT each of these takes
    # about 0.3 CPU-seconds; with it, a few milliseconds.
    rng = random.Random(1)
    reply = " ".join(rng.choice("abc") for _ in range(30_000))
    utterances = [" ".join(rng.choice("abc") for _ in range(n)) for n in (59, 60, 61, 200)]
    utterances += ["a " * 30 + "b " * 30, "a b " * 40, "a " * 20_000]
    started = time.process_time()
    for utterance in utterances:
        assert reply.startswith(heard_prefix(reply, utterance))
    # Generous: ~0.05 CPU-s when the machine is quiet; without the limit about 2.
    assert time.process_time() - started < 1.0


def test_module_examples_run():
    failures, tried = doctest.testmod(conversation)
    assert tried >= 4
    assert failures == 0


# --- Conversation -------------------------------------------------------------------------


def test_conversation_is_a_plain_list_of_message_dicts():
    conversation = Conversation()
    conversation.add_user("Hi")
    conversation.add_assistant("Hello! How can I help?")
    assert isinstance(conversation, list)
    assert conversation == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]
    assert json.loads(json.dumps(conversation)) == conversation


def test_learner_code_can_append_directly():
    conversation = Conversation([{"role": "user", "content": "Hi"}])
    conversation.append({"role": "assistant", "content": "Hello"})
    assert len(conversation) == 2
    assert conversation.problems() == []


def test_same_role_turns_are_merged():
    conversation = Conversation()
    conversation.add_user("Hi.")
    conversation.add_user("  Are you there?  ")
    conversation.add_assistant("Yes.")
    conversation.add_assistant("I am here.")
    assert conversation == [
        {"role": "user", "content": "Hi. Are you there?"},
        {"role": "assistant", "content": "Yes. I am here."},
    ]


def test_an_assistant_turn_cannot_open_the_history():
    conversation = Conversation()
    conversation.add_assistant("Sorry, I'm having trouble answering right now.")
    assert conversation == []
    conversation.add_user("Hi")
    conversation.add_assistant("Hello!")
    assert conversation.problems() == []


def test_empty_text_is_ignored():
    conversation = Conversation()
    conversation.add_user("")
    conversation.add_user("   \n")
    conversation.add_assistant("")
    assert conversation == []
    conversation.add_user("Hi")
    conversation.add_user(" ")
    assert conversation == [{"role": "user", "content": "Hi"}]


def test_text_must_be_a_string():
    conversation = Conversation()
    with pytest.raises(TypeError, match="str"):
        conversation.add_user(None)
    with pytest.raises(TypeError, match="str"):
        conversation.add_assistant(["Hello"])


def _call_with_reply(reply):
    conversation = Conversation()
    conversation.add_user("Tell me about 1999")
    conversation.add_assistant(reply)
    return conversation


def test_keep_heard_cuts_a_finished_reply():
    conversation = _call_with_reply("Sure! In 1999, the euro launched. Then Y2K worried people.")
    heard = conversation.keep_heard("Sure in nineteen ninety-nine")
    assert heard == "Sure! In 1999"
    assert conversation[-1] == {"role": "assistant", "content": "Sure! In 1999"}
    assert conversation.problems() == []


def test_keep_heard_cuts_a_reply_still_streaming():
    # Mid-stream, the turn holds only the tokens received so far.
    conversation = _call_with_reply("Sure! In 1999, the eu")
    assert conversation.keep_heard("Sure in nineteen ninety-nine, the") == "Sure! In 1999, the"
    assert conversation[-1]["content"] == "Sure! In 1999, the"


def test_keep_heard_keeps_a_reply_heard_in_full():
    conversation = _call_with_reply("Sure! In 1999.")
    assert conversation.keep_heard("sure in nineteen ninety-nine") == "Sure! In 1999."
    assert conversation[-1]["content"] == "Sure! In 1999."


def test_keep_heard_with_nothing_heard_removes_the_reply():
    conversation = _call_with_reply("Sure! In 1999, the euro launched.")
    assert conversation.keep_heard("") == ""
    assert conversation == [{"role": "user", "content": "Tell me about 1999"}]
    conversation.add_user("Actually, tell me about 2005.")
    assert conversation == [
        {"role": "user", "content": "Tell me about 1999 Actually, tell me about 2005."}
    ]
    assert conversation.problems() == []


def test_keep_heard_only_touches_the_last_reply():
    conversation = Conversation()
    conversation.add_user("Hi")
    conversation.add_assistant("Hello there, friend.")
    conversation.add_user("Tell me more")
    conversation.add_assistant("Yes. Yes, I can help.")
    assert conversation.keep_heard("Yes") == "Yes"
    assert conversation[1]["content"] == "Hello there, friend."
    assert conversation[-1]["content"] == "Yes"


def test_locate_heard_places_words_or_says_it_cannot_without_estimating():
    sent = "Step one is easy, and step two is harder."
    assert locate_heard(sent, "and step two") == "Step one is easy, and step two"
    assert locate_heard(sent, "Step one") == "Step one"
    assert locate_heard(sent, "Welcome to the relay lab") is None  # heard_prefix would guess
    assert locate_heard(sent, "") is None and locate_heard("", "Step one") is None


def test_keep_heard_cuts_an_earlier_reply_still_playing_and_drops_those_queued_behind_it():
    # Twilio played the first reply while two more queued behind it: the caller cut in
    # during the first, so the later ones were never heard, and their user turns merge.
    conversation = Conversation()
    conversation.add_user("Hi")
    conversation.add_assistant("Hello there, friend. How are you doing today?")
    conversation.add_user("Tell me more")
    conversation.add_assistant("Yes. Yes, I can help.")
    conversation.add_user("And then?")
    conversation.add_assistant("Then we carry on.")
    assert conversation.keep_heard("Hello there, friend") == "Hello there, friend"
    assert conversation == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there, friend"},
        {"role": "user", "content": "Tell me more And then?"},
    ]
    assert conversation.problems() == []


def test_keep_heard_looks_no_further_back_than_a_tool_turn():
    conversation = Conversation()
    conversation.add_user("Hi")
    conversation.add_assistant("Hello there, friend.")
    conversation.append({"role": "user", "content": [{"type": "text", "text": "Weather?"}]})
    conversation.add_assistant("It is sunny today.")
    assert conversation.keep_heard("Hello there") == "It is"  # estimated in the last reply
    assert conversation[1]["content"] == "Hello there, friend."


def test_keep_heard_without_a_reply_at_the_end_does_nothing():
    conversation = Conversation()
    assert conversation.keep_heard("Hello") == ""
    assert conversation == []
    conversation.add_user("Hi")
    conversation.add_assistant("Hello")
    conversation.add_user("Hello?")
    before = conversation.snapshot()
    assert conversation.keep_heard("Hello") == ""
    assert conversation == before


def test_keep_heard_on_non_text_content_says_so():
    conversation = Conversation(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        ]
    )
    with pytest.raises(TypeError, match="string"):
        conversation.keep_heard("Hello")


def test_snapshot_is_a_plain_independent_copy():
    conversation = _call_with_reply("Hello")
    snapshot = conversation.snapshot()
    assert snapshot == conversation
    assert type(snapshot) is list
    assert all(type(turn) is dict for turn in snapshot)
    conversation.add_assistant("there")
    conversation.add_user("Bye")
    assert snapshot == [
        {"role": "user", "content": "Tell me about 1999"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_valid_history_has_no_problems():
    conversation = _call_with_reply("Hello")
    conversation.add_user("Bye")
    assert conversation.problems() == []


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([], "empty"),
        ([{"role": "assistant", "content": "Hi"}], "first turn must be 'user'"),
        ([{"role": "system", "content": "Be brief"}], "role 'system'"),
        ([{"role": "user", "content": ""}], "empty content"),
        ([{"role": "user", "content": "   "}], "empty content"),
        ([{"role": "user", "content": None}], "not a string"),
        ([{"role": "user", "content": 42}], "not a string or a list"),
        ([{"role": "user", "content": []}], "empty content"),
        ([{"role": "user"}], "no 'content'"),
        ([{"content": "Hi"}], "role None"),
        ([{"role": "user", "content": "Hi", "name": "Ann"}], "unexpected keys: name"),
        (["Hi"], "is a str, not a dict"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello "}],
            "ends with whitespace",
        ),
    ],
)
def test_problems_explains_each_invalid_history(turns, expected):
    problems = Conversation(turns).problems()
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_same_role_turns_are_valid_as_the_api_combines_them():
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Hello"},
        {"role": "assistant", "content": "Hello?"},
    ]
    assert Conversation(turns).problems() == []
    validate({"model": "m", "max_tokens": 10, "messages": turns})  # the stand-in agrees


@pytest.mark.parametrize(
    "turns",
    [
        [{"role": "assistant", "content": "Hi"}],
        [{"role": "user", "content": "Hi", "name": "Ann"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello "}],
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}, _RESULT_FIRST]}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [_CALL]}],
    ],
    ids=["assistant-first", "extra-key", "trailing-space", "result-after-text", "no-result"],
)
def test_the_relay_and_the_stand_in_judge_a_history_alike(turns):
    plain = Conversation(turns).problems()
    assert plain
    with pytest.raises(InvalidRequest) as rejected:
        validate({"model": "m", "max_tokens": 10, "messages": turns})
    assert str(rejected.value) == message_problems(turns)[0].api
    assert plain[0] == message_problems(turns)[0].plain


def test_problems_lists_every_problem():
    conversation = Conversation(
        [
            {"role": "assistant", "content": ""},
            {"role": "bot", "content": "Hi"},
        ]
    )
    assert len(conversation.problems()) == 3


def test_keep_heard_with_a_clause_utterance():
    conversation = _call_with_reply("It opens at 9. Tickets cost $12 for adults.")
    assert conversation.keep_heard("Tickets cost twelve dollars for") == (
        "It opens at 9. Tickets cost $12 for"
    )
    assert conversation[-1]["content"] == "It opens at 9. Tickets cost $12 for"


def test_keep_heard_uses_the_duration():
    conversation = _call_with_reply("Hi there. Dogs were the first animals people tamed.")
    assert conversation.keep_heard("", duration_ms=5 * 60_000 / 165) == "Hi there"
    assert conversation[-1] == {"role": "assistant", "content": "Hi there"}
    conversation = _call_with_reply("Hi there. Dogs were the first animals people tamed.")
    assert conversation.keep_heard("", duration_ms=None) == ""
    assert conversation == [{"role": "user", "content": "Tell me about 1999"}]


# --- Conversation: content blocks and tool use -------------------------------------------


def _tool_call(call_id="toolu_1", name="get_weather"):
    return {"type": "tool_use", "id": call_id, "name": name, "input": {"city": "Paris"}}


def _tool_answer(call_id="toolu_1", content="Sunny, 21 C"):
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


def _tool_history():
    """A caller asks, Claude calls a tool, gets its result and answers."""
    return [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Let me check."}, _tool_call()],
        },
        {"role": "user", "content": [_tool_answer()]},
        {"role": "assistant", "content": "It's sunny and 21 degrees."},
    ]


def test_a_valid_tool_exchange_has_no_problems():
    assert Conversation(_tool_history()).problems() == []


def test_valid_block_forms_have_no_problems():
    turns = _tool_history()
    # Two tools at once, answered in any order, then the caller's words after the results.
    turns[1]["content"] = [_tool_call("a"), _tool_call("b", "get_time")]
    turns[2]["content"] = [
        _tool_answer("b", [{"type": "text", "text": "12:00"}]),
        {"type": "tool_result", "tool_use_id": "a", "content": "Rain", "is_error": False},
        {"type": "text", "text": "And in Rome?"},
    ]
    turns[3]["content"] = [{"type": "text", "text": "Rain in Paris, noon in Rome."}]
    assert Conversation(turns).problems() == []


def _with(index, content):
    turns = _tool_history()
    turns[index]["content"] = content
    return turns


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        (_with(2, "Sunny"), "calls tool 'get_weather' (id 'toolu_1') but conversation[2] has no"),
        (
            _with(2, [_tool_answer(), _tool_answer("toolu_9")]),
            "has a tool_result for 'toolu_9', but conversation[1] has no tool_use with that id",
        ),
        (_tool_history()[:2], "conversation[2] has no tool_result for it"),
        (
            _with(2, [{"type": "text", "text": "Here:"}, _tool_answer()]),
            "tool_result blocks must come before any other block",
        ),
        (_with(0, [{"type": "text", "text": ""}]), "empty text block"),
        (_with(0, [{"type": "text", "text": " \n"}]), "empty text block"),
        (_with(0, [{"type": "text", "text": None}]), "'text' is not a string"),
        (_with(0, ["Hi"]), "conversation[0].content[0] is a str, not a content block"),
        (_with(0, [{"text": "Hi"}]), "has no 'type'"),
        (_with(0, []), "empty content"),
        (
            _with(1, [{"type": "tool_use", "id": "toolu_1", "input": {}}]),
            "tool_use block without a valid 'name'",
        ),
        (
            _with(1, [{"type": "tool_use", "id": "toolu_1", "name": "x", "input": "city"}]),
            "tool_use block without a valid 'input'",
        ),
        (_with(3, [{"type": "text", "text": "Sunny. "}]), "ends with whitespace"),
    ],
)
def test_problems_explains_each_tool_and_block_rule(turns, expected):
    problems = Conversation(turns).problems()
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_tool_blocks_in_the_wrong_role_are_problems():
    turns = _tool_history()
    turns[0]["content"] = [{"type": "text", "text": "Hi"}, _tool_call("x")]
    turns[3]["content"] = [_tool_answer("y")]
    problems = Conversation(turns).problems()
    assert any("tool_use belongs in assistant turns" in p for p in problems)
    assert any("tool_result belongs in user turns" in p for p in problems)


def test_a_tool_result_missing_its_id_is_a_problem():
    turns = _with(2, [{"type": "tool_result", "content": "Sunny"}])
    problems = Conversation(turns).problems()
    assert any("without a 'tool_use_id'" in p for p in problems)
    assert any("has no tool_result for it" in p for p in problems)


def test_add_user_after_tool_results_adds_a_text_block():
    conversation = Conversation(_tool_history()[:3])
    before = conversation.snapshot()
    conversation.add_user("  And tomorrow?  ")
    assert conversation[2]["content"] == [_tool_answer(), {"type": "text", "text": "And tomorrow?"}]
    assert conversation.problems() == []
    assert before[2]["content"] == [_tool_answer()]  # the snapshot did not change


def test_add_assistant_after_blocks_adds_a_text_block():
    conversation = Conversation(_tool_history()[:3])
    conversation.add_user("Thanks")
    conversation.add_assistant("You're welcome.")
    conversation.add_assistant("Anything else?")
    assert conversation[-1] == {"role": "assistant", "content": "You're welcome. Anything else?"}
    assert conversation.problems() == []


# --- Conversation.trim_to ----------------------------------------------------------------


def _chat(turns: int, size: int = 10) -> Conversation:
    conversation = Conversation()
    for n in range(turns):
        add = conversation.add_user if n % 2 == 0 else conversation.add_assistant
        add(f"{n:0{size}d}")
    return conversation


def _text_size(conversation) -> int:
    total = 0
    for turn in conversation:
        content = turn["content"]
        if isinstance(content, str):
            total += len(content)
        else:
            total += sum(
                len(b["text"])
                if b.get("type") == "text"
                else len(json.dumps(b, ensure_ascii=False))
                for b in content
            )
    return total


def test_trim_to_under_the_limit_drops_nothing():
    conversation = _chat(6)
    before = conversation.snapshot()
    assert conversation.trim_to(60) == 0
    assert conversation.trim_to(10**9) == 0
    assert conversation == before


def test_trim_to_drops_the_oldest_turns_and_opens_with_the_caller(caplog):
    conversation = _chat(6)  # six turns of ten characters
    newest = conversation.snapshot()[-3:]
    with caplog.at_level(logging.INFO, logger="relaylab.core.conversation"):
        assert conversation.trim_to(45) == 2  # three turns would leave an assistant first
    assert conversation == _chat(6).snapshot()[2:]
    assert conversation[0]["role"] == "user"
    assert conversation.problems() == []
    assert conversation[-3:] == newest
    assert "2 oldest turns were dropped" in caplog.text


def test_trim_to_keeps_the_newest_caller_turn_even_if_too_big():
    conversation = _chat(5, size=100)
    assert conversation.trim_to(10) == 4
    assert conversation == [{"role": "user", "content": f"{4:0100d}"}]
    assert conversation.trim_to(0) == 0


def test_trim_to_never_parts_a_tool_use_from_its_result():
    conversation = Conversation(
        [
            {"role": "user", "content": "Hi " * 20},
            {"role": "assistant", "content": "Hello " * 20},
            *_tool_history(),
        ]
    )
    conversation.add_user("Thanks!")
    assert conversation.trim_to(_text_size(conversation) - 150) == 2
    assert conversation[0] == {"role": "user", "content": "What's the weather in Paris?"}
    assert conversation.problems() == []
    # Starting at the tool_result turn would be small enough, but it answers a tool_use
    # that would be gone: the tool turns go together, up to the next caller's turn.
    assert conversation.trim_to(_text_size(conversation[2:])) == 4
    assert conversation == [{"role": "user", "content": "Thanks!"}]


@pytest.mark.parametrize("max_chars", [-1, 1.5, "100", True, None])
def test_trim_to_rejects_a_bad_limit(max_chars):
    conversation = _chat(4)
    with pytest.raises(ValueError, match="max_chars"):
        conversation.trim_to(max_chars)
    assert len(conversation) == 4


def test_trim_to_keeps_random_histories_valid():
    rng = random.Random(5)
    for _ in range(200):
        conversation = Conversation()
        for n in range(rng.randint(1, 12)):
            conversation.add_user("u" * rng.randint(1, 30))
            if rng.random() < 0.4:
                call = f"toolu_{n}"
                conversation.add_assistant("")
                conversation.append({"role": "assistant", "content": [_tool_call(call)]})
                conversation.append({"role": "user", "content": [_tool_answer(call)]})
                if rng.random() < 0.5:
                    conversation.add_user("and then?")
            conversation.add_assistant("a" * rng.randint(1, 30))
        assert conversation.problems() == []
        limit = rng.randint(0, _text_size(conversation))
        length = len(conversation)
        dropped = conversation.trim_to(limit)
        assert len(conversation) == length - dropped
        assert conversation.problems() == [], conversation
        if _text_size(conversation) > limit:
            # Only when no later turn could open the history.
            assert not any(
                turn["role"] == "user" and isinstance(turn["content"], str)
                for turn in conversation[1:]
            )


def test_a_tool_result_opening_the_history_is_a_problem():
    problems = Conversation([{"role": "user", "content": [_tool_answer()]}]).problems()
    assert problems == [
        "conversation[0] has a tool_result for 'toolu_1', but the turn before it (there is"
        " none) has no tool_use with that id"
    ]


def test_trim_to_cuts_the_oldest_words_of_an_opening_turn_too_big_alone(caplog):
    conversation = Conversation()
    for n in range(50):  # fifty prompts merged into one turn, none answered
        conversation.add_user(f"prompt{n} " + "word " * 100)
    conversation.add_assistant("Sure.")
    with caplog.at_level(logging.INFO, logger="relaylab.core.conversation"):
        assert conversation.trim_to(5_000) == 0
    text = conversation[0]["content"]
    assert 4_000 < len(text) + len("Sure.") <= 5_000
    assert text.startswith(("word", "prompt"))
    assert text.endswith("prompt49 " + "word " * 99 + "word")
    assert conversation.problems() == []
    assert "its first" in caplog.text
