"""The call's history, and how much of the last reply the caller really heard.

When the caller talks over Claude, ConversationRelay sends an `interrupt` with
`utteranceUntilInterrupt`: the part of the reply the voice had spoken. If we keep
the whole reply in the history, Claude will believe the caller heard things they
never did. So we cut the reply down to what was heard:

    >>> heard_prefix("Sure! In 1999, the euro launched.", "Sure in nineteen ninety-nine")
    'Sure! In 1999'

The utterance is what the voice *said*, so it rarely matches the text exactly: case,
punctuation and spacing differ, and "1999" becomes "nineteen ninety-nine". We line
the two up word by word from the start of the reply, allowing for small differences.

Everything here is pure: no I/O, just lists and strings.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from relaylab.spoken import (
    Word,
    comparable_words,
    edit_distance,
    speak,
    split_words,
    spoken_variants,
)

__all__ = ["Conversation", "heard_prefix"]

logger = logging.getLogger("relaylab.conversation")

# --- What the caller heard ---------------------------------------------------------------

# The ways a voice may say one sent word, each as comparable words, most typical first:
# "1999" -> [["nineteen", "ninety", "nine"], ["one", "thousand", "nine", ...], ...].
# A word of pure punctuation, like "—", is said as nothing: [[]].
WaysToSay = list[list[str]]

# Costs of explaining the heard words with the sent words: the cheapest explanation wins.
_SAME_WORD = 0
_CLOSE_WORD = 1  # a small misspelling: "colour" said as "color"
_EXTRA_HEARD_WORD = 2  # said but never sent, like a filler word
_MISSING_SENT_WORD = 2  # sent but never said
# How many words the voice may run ahead of or behind the sent text, e.g. by reading
# "1999" as "one thousand nine hundred ninety-nine" again and again.
_MAX_DRIFT = 40


def heard_prefix(
    sent: str, utterance: str, *, duration_ms: float | None = None, words_per_minute: float = 165.0
) -> str:
    """The start of `sent`, in its own spelling, that the caller heard before interrupting.

    `utterance` is ConversationRelay's `utteranceUntilInterrupt`: what the voice said,
    which can differ from `sent` in case, punctuation, spacing and in how numbers and
    symbols are read. The result is always `sent[:k]` for some k, and ends just after
    the last word heard (without the punctuation that follows it). A word the voice was
    cut off in the middle of does not count as heard. If the caller heard every word,
    the whole of `sent` is returned.

    >>> heard_prefix("It costs $5 today", "It costs five dollars")
    'It costs $5'
    """
    words = split_words(sent)
    heard = comparable_words(speak(utterance))
    readings = _readings_worth_aligning(words, len(heard))
    heard, cut_off_word_dropped = _without_cut_off_word(heard, readings)
    if not heard:
        return ""

    count = _count_heard_words(readings, heard, last_word_exact=not cut_off_word_dropped)
    if count == 0:
        spoken = len(heard)
        if duration_ms is not None and duration_ms > 0:
            # The text could not be placed; the time spoken says how far the voice got.
            spoken = max(spoken, int(duration_ms / 60_000 * words_per_minute))
        count = _estimate_heard_words(readings, spoken)
        result = _cut(sent, words, readings, count)
        logger.warning(
            "The heard text %r does not line up with the start of the reply %r, so the "
            "heard part was estimated from its length (%d words): %r",
            _shorten(utterance),
            _shorten(sent),
            len(heard),
            _shorten(result),
        )
        return result
    return _cut(sent, words, readings, count)


def _readings(word: str) -> WaysToSay:
    """Ways a voice may say one sent word: "$5" -> [["five", "dollars"]]."""
    readings = [comparable_words(variant) for variant in spoken_variants(word)]
    return list({tuple(r): r for r in readings}.values())


def _readings_worth_aligning(words: list[Word], heard_count: int) -> list[WaysToSay]:
    """Readings of the first sent words, enough of them to cover `heard_count` heard words
    with room to spare. (A long reply cut early needs only its first few words.)"""
    enough = 2 * heard_count + 10
    readings, said = [], 0
    for word in words:
        if said > enough:
            break
        readings.append(_readings(word.text))
        said += len(readings[-1][0])
    return readings


def _without_cut_off_word(heard: list[str], readings: list[WaysToSay]) -> tuple[list[str], bool]:
    """Drop the last heard word if the voice was cut off in the middle of it: "launc" is
    not a word we sent, but the start of one ("launched")."""
    if not heard:
        return heard, False
    vocabulary = {w for word_readings in readings for reading in word_readings for w in reading}
    last = heard[-1]
    if last not in vocabulary and any(w.startswith(last) for w in vocabulary):
        return heard[:-1], True
    return heard, False


def _count_heard_words(
    readings: list[WaysToSay], heard: list[str], *, last_word_exact: bool
) -> int:
    """How many sent words, from the start, the heard words cover (0 if none line up).

    This is an edit distance between word sequences, except that one sent word may be
    said as several words ("1999" as "nineteen ninety nine"). cost[i][j] is the cheapest
    way to explain the first j heard words with the first i sent words. Each row only
    looks at heard words near where its sent word should be said, which keeps long
    replies fast: a voice that drifts further than that makes us cut shorter.
    """
    expected_start = list(itertools.accumulate((len(r[0]) for r in readings), initial=0))
    cost: list[dict[int, int]] = [{} for _ in range(len(readings) + 1)]
    cost[0][0] = 0

    def improve(i: int, j: int, new_cost: int) -> None:
        if j not in cost[i] or new_cost < cost[i][j]:
            cost[i][j] = new_cost

    for i, row in enumerate(cost):
        first = max(0, expected_start[i] - _MAX_DRIFT)
        last = min(len(heard), expected_start[i] + _MAX_DRIFT)
        for j in range(first, last + 1):
            if j not in row:
                continue
            if j < len(heard):
                improve(i, j + 1, row[j] + _EXTRA_HEARD_WORD)
            if i == len(readings):
                continue
            improve(i + 1, j, row[j] + _MISSING_SENT_WORD)
            for reading in readings[i]:
                said = heard[j : j + len(reading)]
                ends_heard = j + len(reading) == len(heard)
                match_cost = _match_cost(
                    reading, said, exact_last_word=ends_heard and last_word_exact
                )
                if match_cost is not None:
                    improve(i + 1, j + len(reading), row[j] + match_cost)

    def explaining_all_heard_words(i: int) -> float:
        # Heard words beyond the ones row i explains were extra words.
        extra = (c + _EXTRA_HEARD_WORD * (len(heard) - j) for j, c in cost[i].items())
        return min(extra, default=float("inf"))

    # Of the sent prefixes that explain the heard words equally cheaply, take the
    # shortest: never claim more was heard than we can tell.
    return min(range(len(cost)), key=lambda i: (explaining_all_heard_words(i), i))


def _match_cost(reading: list[str], said: list[str], *, exact_last_word: bool) -> int | None:
    """Cost of the voice saying `reading` as `said`, or None if they are different words.
    With exact_last_word, the last word must match exactly: it may have been cut off
    mid-word ("launche" is close to "launched", but was not heard in full)."""
    if len(said) != len(reading):
        return None
    total = 0
    for position, (expected, actual) in enumerate(zip(reading, said, strict=True)):
        is_last = position == len(reading) - 1
        if expected == actual:
            total += _SAME_WORD
        elif _close(expected, actual) and not (exact_last_word and is_last):
            total += _CLOSE_WORD
        else:
            return None
    return total


def _close(expected: str, actual: str) -> bool:
    """Misspelled rather than different? Short words must match exactly."""
    shorter = min(len(expected), len(actual))
    allowed = 0 if shorter < 4 else 1 if shorter < 8 else 2
    if abs(len(expected) - len(actual)) > allowed or expected[0] != actual[0]:
        return False  # quick answer; misspellings rarely change the first letter
    return edit_distance(expected, actual) <= allowed


def _estimate_heard_words(readings: list[WaysToSay], heard_count: int) -> int:
    """How many sent words take `heard_count` words to say (at most all of them)."""
    count = said = 0
    for word_readings in readings:
        said += len(word_readings[0])
        if said > heard_count:
            break
        count += 1
    return count


def _cut(sent: str, words: list[Word], readings: list[WaysToSay], count: int) -> str:
    """`sent` up to the end of its `count`-th word, without the punctuation after it,
    or all of `sent` when every word that is said out loud was heard."""
    said_aloud = [i for i, word_readings in enumerate(readings[:count]) if word_readings[0]]
    if not said_aloud:
        return ""
    unheard = words[count:]
    if all(not comparable_words(speak(word.text)) for word in unheard):
        return sent.rstrip()
    return sent[: words[said_aloud[-1]].spoken_end]


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- The history -------------------------------------------------------------------------


class Conversation(list):
    """The call's history in Messages API form: a list of turns like
    `{"role": "user", "content": "Hi"}`.

    It is a plain list, so `client.messages.create(messages=conversation, ...)` works and
    so does `conversation.append(...)`. The add_* methods keep it valid for the API:
    no empty turns, and roles always alternate (a turn with the same role as the one
    before it is merged into it).
    """

    def add_user(self, text: str) -> None:
        """Add what the caller said."""
        self._add("user", text)

    def add_assistant(self, text: str) -> None:
        """Add what Claude replied. Before the caller's first turn it is dropped: a history
        for the Messages API opens with the caller."""
        self._add("assistant", text)

    def keep_heard(self, utterance: str) -> str:
        """Cut the last reply down to what the caller heard before interrupting, and return
        that. If nothing was heard, the reply is removed. `utterance` is the interrupt's
        `utteranceUntilInterrupt`. Does nothing (and returns "") if the last turn is not
        Claude's."""
        if not self or not isinstance(self[-1], dict) or self[-1].get("role") != "assistant":
            return ""
        reply = self[-1]
        heard = heard_prefix(_text_of(reply, "conversation[-1]"), utterance)
        if heard:
            reply["content"] = heard
        else:
            del self[-1]
        return heard

    def problems(self) -> list[str]:
        """Reasons the Messages API would reject this history, in plain words ([] if none)."""
        if not self:
            return ["the conversation is empty: the Messages API needs at least one turn"]
        found = []
        previous_role = None
        for index, turn in enumerate(self):
            where = f"conversation[{index}]"
            if not isinstance(turn, dict):
                found.append(f"{where} is a {type(turn).__name__}, not a dict")
                previous_role = None
                continue
            role = turn.get("role")
            if role not in ("user", "assistant"):
                found.append(
                    f"{where} has role {role!r}; only 'user' and 'assistant' are allowed"
                    " (a system prompt goes in the separate `system` parameter)"
                )
            elif index == 0 and role != "user":
                found.append(f"{where} is an {role!r} turn; the first turn must be 'user'")
            elif role == previous_role:
                found.append(
                    f"{where} and conversation[{index - 1}] are both {role!r} turns;"
                    " roles must alternate"
                )
            if "content" not in turn:
                found.append(f"{where} has no 'content'")
            elif not isinstance(turn["content"], str):
                found.append(
                    f"{where} has content of type {type(turn['content']).__name__}, not a string"
                )
            elif not turn["content"].strip():
                found.append(f"{where} has empty content")
            unexpected = sorted(str(key) for key in turn if key not in ("role", "content"))
            if unexpected:
                found.append(f"{where} has unexpected keys: {', '.join(unexpected)}")
            previous_role = role

        last = self[-1]
        if (
            isinstance(last, dict)
            and last.get("role") == "assistant"
            and isinstance(last.get("content"), str)
            and last["content"].strip()
            and last["content"] != last["content"].rstrip()
        ):
            found.append("the final assistant turn ends with whitespace, which the API rejects")
        return found

    def trim_to(self, max_chars: int) -> int:
        """Drop the oldest turns until the history holds at most `max_chars` characters of
        text, keeping it valid (it still opens with the caller). Returns how many went."""
        dropped = 0
        while len(self) > 1 and sum(len(str(turn.get("content", ""))) for turn in self) > max_chars:
            del self[0]
            dropped += 1
            while self and self[0].get("role") != "user":
                del self[0]
                dropped += 1
        return dropped

    def snapshot(self) -> list[dict[str, Any]]:
        """Plain copies of the turns, safe to keep while the conversation goes on."""
        return [dict(turn) for turn in self]

    def _add(self, role: str, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"{role} text must be a str, not {type(text).__name__}")
        text = text.strip()
        if not text or (role == "assistant" and not self):
            return
        last = self[-1] if self else None
        if isinstance(last, dict) and last.get("role") == role:
            last["content"] = f"{_text_of(last, 'conversation[-1]').rstrip()} {text}".lstrip()
        else:
            self.append({"role": role, "content": text})


def _text_of(turn: dict[str, Any], where: str) -> str:
    content = turn.get("content")
    if not isinstance(content, str):
        raise TypeError(f"{where} has content of type {type(content).__name__}, not a string")
    return content
