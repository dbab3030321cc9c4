"""Tests for relaylab.conversation: heard_prefix() and the Conversation history."""

import itertools
import json
import logging

import pytest

from relaylab.conversation import Conversation, heard_prefix
from relaylab.spoken import comparable_words, number_words, speak, split_words

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
    with caplog.at_level(logging.WARNING, logger="relaylab.conversation"):
        result = heard_prefix(sent, "Lorem ipsum dolor")
    assert result == "The quick brown"
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.name == "relaylab.conversation"
    assert "estimated" in record.getMessage()
    assert "Lorem ipsum dolor" in record.getMessage()


def test_estimate_counts_spoken_words_not_written_ones(caplog):
    # "$5" takes two words to say, so four heard words cover three sent words.
    with caplog.at_level(logging.WARNING, logger="relaylab.conversation"):
        assert heard_prefix("Only $5 today, friend.", "xx yy zz ww") == "Only $5 today"
    assert "estimated" in caplog.text


def test_estimate_never_goes_past_the_end(caplog):
    with caplog.at_level(logging.WARNING, logger="relaylab.conversation"):
        assert heard_prefix("Hi there.", "one two three four five six") == "Hi there."


def test_matched_utterance_logs_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="relaylab.conversation"):
        heard_prefix("Sure! In 1999, the euro launched.", "Sure in nineteen ninety-nine")
        heard_prefix("Sure! In 1999, the euro launched.", "")
    assert caplog.records == []


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
        ([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "not a string"),
        ([{"role": "user"}], "no 'content'"),
        ([{"content": "Hi"}], "role None"),
        ([{"role": "user", "content": "Hi", "name": "Ann"}], "unexpected keys: name"),
        (["Hi"], "is a str, not a dict"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}],
            "both 'user' turns",
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "assistant", "content": "Hello?"},
            ],
            "conversation[2] and conversation[1] are both 'assistant' turns",
        ),
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


def test_problems_lists_every_problem():
    conversation = Conversation(
        [
            {"role": "assistant", "content": ""},
            {"role": "bot", "content": "Hi"},
        ]
    )
    assert len(conversation.problems()) == 3
