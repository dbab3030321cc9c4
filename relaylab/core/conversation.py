"""The call's history, and how much of the last reply the caller really heard.

When the caller talks over Claude, ConversationRelay sends an `interrupt` with
`utteranceUntilInterrupt`: what the voice had said. If we keep the whole reply in the
history, Claude will believe the caller heard things they never did. So we cut the reply
down to what was heard:

    >>> heard_prefix("Sure! In 1999, the euro launched.", "Sure in nineteen ninety-nine")
    'Sure! In 1999'

The utterance is what the voice *said*, so it rarely matches the text exactly: case,
punctuation and spacing differ, and "1999" becomes "nineteen ninety-nine". Twilio's
documentation shows it as everything played so far, but it may also be only the clause
or sentence being spoken when the caller cut in. Then we find that clause in the reply
and keep everything up to its end:

    >>> sent = "It opens at 9. Tickets cost $12 for adults."
    >>> heard_prefix(sent, "Tickets cost twelve dollars for")
    'It opens at 9. Tickets cost $12 for'

Everything here is pure: no I/O, just lists and strings (and a log line when we have to
guess).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from relaylab.core.message_rules import message_problems
from relaylab.core.spoken import (
    comparable_words,
    edit_distance,
    speak,
    split_words,
    spoken_variants,
)

__all__ = [
    "ALIGNMENT_STEPS_LIMIT",
    "HEARD_WORDS_LIMIT",
    "SEARCHED_WORDS_LIMIT",
    "Alignment",
    "Conversation",
    "align_heard",
    "heard_prefix",
    "locate_heard",
]

logger = logging.getLogger("relaylab.core.conversation")

# --- Limits: a hostile or broken utterance must not stall the event loop ------------------

HEARD_WORDS_LIMIT = 60
"""Only the last 60 words of an utterance are lined up with the reply (about 22 s of
speech): the last words are what place the end of what was heard."""

SEARCHED_WORDS_LIMIT = 2_000
"""Only the first 2,000 words of a reply (about 12 minutes of speech) are searched. Past
them, the cut is estimated from the interrupt's duration (or the utterance's length)."""

ALIGNMENT_STEPS_LIMIT = 8_000
"""At most this many alignment steps per interrupt (about 10 ms). A reply full of one
repeated word can use them up; then the best place found so far is kept."""

KEPT_OPENING_CHARS = 2_000
"""Conversation.trim_to never cuts the caller's opening turn below its last 2,000
characters (a minute or so of speech), whatever the limit."""

# What trying one more place for a run costs, in alignment steps (setting it up is work).
_STEPS_PER_RUN_END = 10
# Characters of the utterance read to get its last HEARD_WORDS_LIMIT words: generous,
# since a spoken word is rarely longer than 12 characters.
_UTTERANCE_CHARS_READ = HEARD_WORDS_LIMIT * 30

# --- What the caller heard ---------------------------------------------------------------

# The ways a voice may say one sent word, each as comparable words, most typical first:
# "1999" -> (("nineteen", "ninety", "nine"), ("one", "thousand", "nine", ...), ...).
# A word of pure punctuation, like "—", is said as nothing: ((),).
WaysToSay = tuple[tuple[str, ...], ...]

# Costs of explaining the heard words with the sent words: the cheapest explanation wins.
_SAME_WORD = 0
_CLOSE_WORD = 1  # a small misspelling: "colour" said as "color"
_EXTRA_HEARD_WORD = 2  # said but never sent, like a filler word
_MISSING_SENT_WORD = 2  # sent but never said
# How many words the voice may run ahead of or behind the sent text, e.g. by reading
# "1999" as "one thousand nine hundred ninety-nine" again and again.
_MAX_DRIFT = 40
# A word that ends a clause or sentence: "9.", "easy,", "(really!)".
_CLAUSE_END = re.compile(r"[.,;:!?…]['\"’”)\]]*$")


def heard_prefix(
    sent: str,
    utterance: str,
    duration_ms: float | None = None,
    words_per_minute: float = 165.0,
) -> str:
    """The start of `sent`, in its own spelling, that the caller heard before interrupting.

    `utterance` is ConversationRelay's `utteranceUntilInterrupt`: what the voice said,
    which can differ from `sent` in case, punctuation, spacing and in how numbers and
    symbols are read. It may be everything played so far or only the clause being spoken.
    `duration_ms` (`durationUntilInterruptMs`) and `words_per_minute` (the voice's pace)
    are used only when the words cannot be placed, and to choose between places where a
    repeated clause fits.

    The result is always `sent[:k]` for some k, and ends just after the last word heard
    (without the punctuation that follows it); all of `sent` if every word was heard.
    The first rule that applies gives it:

    1. The utterance lines up with the start of `sent`: the heard words cover that
       prefix. (So repeated words count from the start.)
    2. The utterance is found as a run of words further on (a clause) that explains it
       better than the start does: everything up to the end of that run. Where it fits
       in several places equally well, the one that ends nearest where `duration_ms`
       puts the voice (the start of the reply, rule 1, competes as one such place);
       without a duration, the earliest: we never claim more was heard than we can tell.
       (An utterance over HEARD_WORDS_LIMIT words is taken to be all that was played:
       nearest its length.)
    3. Otherwise it is estimated, with a warning in the log: from `duration_ms` at
       `words_per_minute`, or else from how many words the utterance has.

    An empty utterance means nothing was heard: "". With a `duration_ms`, though, the
    caller may have cut in just as a new clause began, so the reply is kept up to the
    last clause the duration says was finished. A word the voice was cut off in the
    middle of does not count as heard.

    >>> heard_prefix("It costs $5 today", "It costs five dollars")
    'It costs $5'
    >>> heard_prefix("Step one is easy, and step two is harder.", "and step two")
    'Step one is easy, and step two'
    """
    return align_heard(sent, utterance, duration_ms, words_per_minute).heard


@dataclass(frozen=True)
class Alignment:
    """The result of lining an utterance up with a sent text, once."""

    heard: str
    """The start of the sent text the caller heard (what ``heard_prefix`` returns)."""
    placed: bool
    """The utterance's words were found in the sent text (heard_prefix's rules 1 and 2);
    False when they were estimated, or when no word was heard at all."""


def align_heard(
    sent: str,
    utterance: str,
    duration_ms: float | None = None,
    words_per_minute: float = 165.0,
    *,
    estimate: bool = True,
) -> Alignment:
    """Line `utterance` up with `sent` (see heard_prefix, which is this function's
    ``heard``), saying whether its words were found there. With ``estimate=False``,
    words that cannot be placed give ``Alignment("", placed=False)`` at once (nothing is
    estimated or logged): the caller was hearing other words.

    Every alignment of heard words in relaylab goes through this one function, so a
    relay works each interrupt out once and keeps the result (``RelayReply.heard``)."""
    if not isinstance(sent, str) or not isinstance(utterance, str):
        raise TypeError(
            "heard_prefix needs the sent text and the utterance as strings, not "
            f"{type(sent).__name__} and {type(utterance).__name__}"
        )
    if isinstance(words_per_minute, bool) or not (
        isinstance(words_per_minute, int | float) and 0 < words_per_minute < math.inf
    ):
        raise ValueError(f"words_per_minute must be a positive number, not {words_per_minute!r}")
    text = _analyse(sent)
    if not text.words:
        return Alignment("", placed=False)
    spoken_estimate = _words_spoken_in(duration_ms, words_per_minute)
    found = _find(text, utterance, spoken_estimate)
    if found.heard and found.count is not None:
        return Alignment(text.cut(found.count), placed=True)
    if not estimate:
        return Alignment("", placed=False)
    if not found.heard:
        return Alignment(_nothing_placed_but_time(text, utterance, spoken_estimate), placed=False)
    heard = _estimate(text, utterance, found.heard, spoken_estimate, found.long)
    return Alignment(heard, placed=False)


def locate_heard(sent: str, utterance: str) -> str | None:
    """What heard_prefix would keep when the utterance's words are found in ``sent`` (its
    rules 1 and 2), else None: nothing is estimated, so None says the caller was hearing
    other words (another reply, or speech the relay never sent)."""
    found = align_heard(sent, utterance, estimate=False)
    return found.heard if found.placed else None


@dataclass
class _Found:
    heard: list[str]  # the utterance's last words, as the voice said them
    long: bool  # the utterance was longer than HEARD_WORDS_LIMIT words
    count: int | None  # words of the reply heard, None when they could not be placed


def _find(reply: _SentText, utterance: str, spoken_estimate: int | None) -> _Found:
    heard, utterance_was_long = _last_heard_words(utterance)
    heard, cut_off_word_dropped = _without_cut_off_word(heard, reply.vocabulary)
    if not heard:
        return _Found(heard, utterance_was_long, None)
    voice_at = spoken_estimate
    if voice_at is None and utterance_was_long:
        voice_at = len(utterance.split())  # if it is all that was played, it ends about here
    count = _place(
        reply,
        heard,
        try_start=not utterance_was_long,  # a long utterance's first words were left out
        last_word_exact=not cut_off_word_dropped,
        voice_at=voice_at,
    )
    return _Found(heard, utterance_was_long, count)


def _place(
    reply: _SentText,
    heard: list[str],
    *,
    try_start: bool,
    last_word_exact: bool,
    voice_at: int | None,
) -> int | None:
    """How many sent words the heard words cover (rules 1 and 2 of heard_prefix), or None
    if they cannot be placed."""
    budget = _Budget(ALIGNMENT_STEPS_LIMIT)
    from_start = _from_start(reply, heard, last_word_exact, budget) if try_start else None
    if from_start is not None and from_start.cost == _SAME_WORD and voice_at is None:
        return from_start.words

    # A run found further on must explain at least half the heard words, and explain
    # them better than the start of the reply does (or as well, nearer the voice).
    good_enough: float = len(heard) // 2
    if from_start is not None:
        ties_allowed = 0 if voice_at is not None else 1
        good_enough = min(good_enough, from_start.cost - ties_allowed)
    found = _locate(reply, heard, good_enough, voice_at, budget)
    if from_start is None:
        return found.words if found is not None else None
    if found is None or voice_at is None:  # without a voice position, found is cheaper
        return (found or from_start).words

    def distance(placement: _Placement) -> int:
        return abs(reply.said_before[placement.words] - voice_at)

    if found.cost < from_start.cost or distance(found) < distance(from_start):
        return found.words
    return from_start.words


def _from_start(
    reply: _SentText, heard: list[str], last_word_exact: bool, budget: _Budget
) -> _Placement | None:
    """Rule 1: the heard words lined up with the start of the reply (None if they do not)."""
    said_exactly = _said_exactly(reply, heard)
    if said_exactly is not None:
        return _Placement(said_exactly, _SAME_WORD)
    return _align_from_start(reply, heard, last_word_exact=last_word_exact, budget=budget)


@dataclass(frozen=True)
class _Placement:
    """Where heard words fit: the first `words` sent words were heard, at this `cost`."""

    words: int
    cost: float  # math.inf if nothing explains the heard words


class _Budget:
    """Alignment steps left, shared by every alignment of one interrupt."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def spend(self, steps: int = 1) -> bool:
        """Use up `steps`; False once there were not enough left."""
        self.left -= steps
        return self.left >= 0


class _SentText:
    """What `heard_prefix` needs to know about a sent text, worked out once: its first
    SEARCHED_WORDS_LIMIT words, the ways each may be said (forwards and backwards), and
    where each word's reading may end a run of heard words."""

    def __init__(self, sent: str) -> None:
        self.sent = sent
        self.words = split_words(sent, SEARCHED_WORDS_LIMIT)
        self.readings = [_readings(word.text) for word in self.words]
        self.backwards = [tuple(r[::-1] for r in ways) for ways in self.readings]
        # said_before[i]: words it takes to say the first i sent words (typical readings).
        self.said_before = list(
            itertools.accumulate((len(ways[0]) for ways in self.readings), initial=0)
        )
        self.vocabulary = frozenset(w for ways in self.readings for r in ways for w in r)
        # Heard word -> sent words with a reading that contains it.
        self.said_in: dict[str, list[int]] = {}
        for i, ways in enumerate(self.readings):
            for word in {w for r in ways for w in r}:
                self.said_in.setdefault(word, []).append(i)

    def words_said_in(self, said_words: int) -> int:
        """How many sent words take at most `said_words` words to say."""
        return max(0, bisect.bisect_right(self.said_before, said_words) - 1)

    def cut(self, count: int) -> str:
        """`sent` up to the end of its `count`-th word, without the punctuation after it,
        or all of `sent` when every word said out loud was heard."""
        said_aloud = [i for i in range(count) if self.readings[i][0]]
        if not said_aloud:
            return ""
        if _silent(self.sent[self.words[count - 1].end :]):
            return self.sent.rstrip()
        return self.sent[: self.words[said_aloud[-1]].spoken_end]


# A burst of interrupts is usually about the same reply: work it out once.
_analyse = functools.lru_cache(maxsize=4)(_SentText)


@functools.lru_cache(maxsize=8192)
def _readings(word: str) -> WaysToSay:
    """Ways a voice may say one sent word: "$5" -> (("five", "dollars"),)."""
    readings = (tuple(comparable_words(variant)) for variant in spoken_variants(word))
    return tuple(dict.fromkeys(readings))


def _silent(text: str) -> bool:
    """Would a voice say nothing at all for `text` (only spaces and punctuation)?"""
    return not re.search(r"[^\W_]", text) and not comparable_words(speak(text))


def _last_heard_words(utterance: str) -> tuple[list[str], bool]:
    """The utterance's last HEARD_WORDS_LIMIT words as comparable words, and whether
    earlier words were left out."""
    tail = utterance[-_UTTERANCE_CHARS_READ:]
    heard = comparable_words(speak(tail))
    was_long = len(tail) < len(utterance)
    if was_long:
        heard = heard[1:]  # the slice may have begun inside a word
    if len(heard) > HEARD_WORDS_LIMIT:
        heard, was_long = heard[-HEARD_WORDS_LIMIT:], True
    return heard, was_long


def _words_spoken_in(duration_ms: object, words_per_minute: float) -> int | None:
    """Whole words a voice at `words_per_minute` says in `duration_ms`; None when there is
    no usable duration (missing, negative, not a number)."""
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int | float):
        return None
    if not 0 <= duration_ms < math.inf:
        return None
    return int(duration_ms * words_per_minute / 60_000)


def _without_cut_off_word(heard: list[str], vocabulary: frozenset[str]) -> tuple[list[str], bool]:
    """Drop the last heard word if the voice was cut off in the middle of it: "launc" is
    not a word we sent, but the start of one ("launched")."""
    if not heard:
        return heard, False
    last = heard[-1]
    if last not in vocabulary and any(w.startswith(last) for w in vocabulary):
        return heard[:-1], True
    return heard, False


def _said_exactly(reply: _SentText, heard: list[str]) -> int | None:
    """How many sent words the heard words are, word for word from the start (taking the
    first reading that fits each sent word); None if they are not. The common case, and
    much quicker than _align_from_start."""
    j = 0
    for i, ways in enumerate(reply.readings):
        if j == len(heard):
            return i
        reading = next((r for r in ways if tuple(heard[j : j + len(r)]) == r), None)
        if reading is None:
            return None
        j += len(reading)
    return len(reply.readings) if j == len(heard) else None


def _align_from_start(
    reply: _SentText, heard: list[str], *, last_word_exact: bool, budget: _Budget
) -> _Placement | None:
    """Line the heard words up with the start of the reply (None if they do not)."""
    # Enough sent words to say the heard words with room to spare.
    rows = reply.words_said_in(2 * len(heard) + 10) + 1
    costs = _align(
        reply.readings[:rows],
        heard,
        {0: 0},
        last_word_exact=last_word_exact,
        budget=budget,
        # Calling every heard word extra costs this much, and places nothing.
        max_cost=_EXTRA_HEARD_WORD * len(heard) - 1,
    )
    if costs is None:
        return None
    placement = _cheapest_explanation(costs, len(heard))
    return placement if placement.words > 0 else None


@dataclass(frozen=True)
class _RunEnd:
    """A place where a run of heard words may end: inside or at the end of sent word `word`.

    `kept`: how many sent words were heard if the run ends here. `used`: {how many of the
    last heard words sent word `word` accounts for: at what cost}."""

    word: int
    kept: int
    used: dict[int, int]


def _locate(
    reply: _SentText,
    heard: list[str],
    good_enough: float,
    voice_at: int | None,
    budget: _Budget,
) -> _Placement | None:
    """Find the heard words as a run of sent words anywhere in the reply, costing at most
    `good_enough`. Where several runs fit, prefer the cheapest, then the one ending nearest
    `voice_at` (in said words), then the earliest."""
    if good_enough < 0:
        return None
    words = reply.said_in.get(heard[-1], [])
    if voice_at is not None:
        words = sorted(words, key=lambda i: (abs(reply.said_before[i + 1] - voice_at), i))

    best: _Placement | None = None
    for end in _run_ends(reply, heard, words):
        limit = good_enough if best is None else best.cost - 1
        cost = _cost_of_run_ending_at(reply, end, heard, limit, budget)
        if budget.left < 0:
            logger.info(
                "Stopped looking for the heard words in the reply after %d steps; "
                "keeping the best place found so far.",
                ALIGNMENT_STEPS_LIMIT,
            )
            break
        if cost <= limit:
            best = _Placement(end.kept, cost)
            if cost == _SAME_WORD:
                break
    return best


def _run_ends(reply: _SentText, heard: list[str], words: list[int]) -> Iterator[_RunEnd]:
    """Places where a run of heard words can end, in sent `words` (in that order). The
    last heard word must be said in full there, exactly: as the last word of a reading of
    sent word i (then i + 1 words were heard), or partway through one ("twelve" of "$12"
    said "twelve dollars": then word i was not heard in full, and i words were)."""
    last = heard[-1]
    for i in words:
        in_full: dict[int, int] = {}
        partly: dict[int, int] = {}
        for reading in reply.readings[i]:
            if reading and reading[-1] == last and len(reading) <= len(heard):
                said = heard[len(heard) - len(reading) :]
                cost = _match_cost(reading, said, exact_last_word=True)
                if cost is not None and cost < in_full.get(len(reading), math.inf):
                    in_full[len(reading)] = cost
            for used in range(1, min(len(reading), len(heard) + 1)):
                if reading[used - 1] == last and tuple(heard[-used:]) == reading[:used]:
                    partly[used] = _SAME_WORD
        if in_full:
            yield _RunEnd(i, i + 1, in_full)
        if partly:
            yield _RunEnd(i, i, partly)


def _cost_of_run_ending_at(
    reply: _SentText, end: _RunEnd, heard: list[str], limit: float, budget: _Budget
) -> float:
    """The cheapest explanation of all the heard words by a run of sent words that ends
    at `end` (math.inf if none costs at most `limit`, or the budget ran out).

    Lines the words up backwards: the reversed heard words against the sent words before
    end.word, nearest first, once end.word has accounted for the last heard words."""
    start_states = {j: c for j, c in end.used.items() if c <= limit}
    if not budget.spend(_STEPS_PER_RUN_END) or not start_states:
        return math.inf
    first = reply.words_said_in(reply.said_before[end.word] - 2 * len(heard) - 10)
    costs = _align(
        _NearestFirst(reply.backwards, first, end.word),
        heard[::-1],
        start_states,
        last_word_exact=False,
        budget=budget,
        max_cost=limit,
        first_expected=min(start_states),
    )
    return math.inf if costs is None else _cheapest_explanation(costs, len(heard)).cost


class _NearestFirst(Sequence[WaysToSay]):
    """items[start:stop] from the last to the first, without copying them."""

    def __init__(self, items: list[WaysToSay], start: int, stop: int) -> None:
        self._items, self._start, self._stop = items, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index: int) -> WaysToSay:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._items[self._stop - 1 - index]


def _align(
    readings: Sequence[WaysToSay],
    heard: list[str],
    start_states: dict[int, int],
    *,
    last_word_exact: bool,
    budget: _Budget,
    max_cost: float = math.inf,
    first_expected: int = 0,
) -> list[dict[int, int]] | None:
    """Costs of explaining heard words with sent words, both from their start.

    This is an edit distance between word sequences, except that one sent word may be
    said as several words ("1999" as "nineteen ninety nine"). cost[i][j] is the cheapest
    way to explain the first j heard words with the first i sent words; row 0 holds
    `start_states`, with its heard words expected from `first_expected` on. Each row only
    looks at heard words near where its sent word should be said, which keeps long
    replies fast: a voice that drifts further than that makes us cut shorter. Costs above
    `max_cost` are dropped. None if the budget ran out.
    """
    cost: list[dict[int, int]] = [dict(start_states)]
    expected_start = first_expected

    def improve(i: int, j: int, new_cost: int) -> None:
        if new_cost <= max_cost and new_cost < cost[i].get(j, math.inf):
            cost[i][j] = new_cost

    for i, row in enumerate(cost):  # rows are added as the loop goes
        if not row:
            break  # nothing reaches this row, so nothing reaches later ones
        if i < len(readings):
            cost.append({})
        first = max(0, expected_start - _MAX_DRIFT)
        last = min(len(heard), expected_start + _MAX_DRIFT)
        for j in range(first, last + 1):
            if j not in row:
                continue
            if not budget.spend():
                return None
            if j < len(heard):
                improve(i, j + 1, row[j] + _EXTRA_HEARD_WORD)
            if i == len(readings):
                continue
            improve(i + 1, j, row[j] + _MISSING_SENT_WORD)
            for reading in readings[i]:
                if j + len(reading) > len(heard) or (
                    reading and reading[0][0] != heard[j][0]  # quick: not even close
                ):
                    continue
                said = heard[j : j + len(reading)]
                ends_heard = j + len(reading) == len(heard)
                match_cost = _match_cost(
                    reading, said, exact_last_word=ends_heard and last_word_exact
                )
                if match_cost is not None:
                    improve(i + 1, j + len(reading), row[j] + match_cost)
        if i < len(readings):
            expected_start += len(readings[i][0])
    return cost


def _cheapest_explanation(cost: list[dict[int, int]], heard_count: int) -> _Placement:
    """The sent prefix that explains all heard words most cheaply. Heard words beyond
    the ones a row explains were extra words. Of equally cheap prefixes, the shortest:
    never claim more was heard than we can tell."""

    def explaining_all(i: int) -> float:
        extra = (c + _EXTRA_HEARD_WORD * (heard_count - j) for j, c in cost[i].items())
        return min(extra, default=math.inf)

    words = min(range(len(cost)), key=lambda i: (explaining_all(i), i))
    return _Placement(words, explaining_all(words))


def _match_cost(
    reading: Sequence[str], said: Sequence[str], *, exact_last_word: bool
) -> int | None:
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


def _nothing_placed_but_time(reply: _SentText, utterance: str, spoken_estimate: int | None) -> str:
    """No word was heard in full. Without a duration, that means nothing was heard. With
    one, the caller may have cut in as a new clause began (the utterance being the empty
    start of that clause): keep the clauses the duration says were finished."""
    if not spoken_estimate:
        return ""
    count = reply.words_said_in(spoken_estimate)
    while count > 0 and not _CLAUSE_END.search(reply.words[count - 1].text):
        count -= 1
    result = reply.cut(count)
    if result:
        logger.warning(
            "The interrupt reported %r as heard, but %d words' worth of speech had played, "
            "so the reply was kept up to the last clause the voice had finished: %r",
            shorten(utterance),
            spoken_estimate,
            shorten(result),
        )
    return result


def _estimate(
    reply: _SentText,
    utterance: str,
    heard: list[str],
    spoken_estimate: int | None,
    utterance_was_long: bool,
) -> str:
    """The heard part of the reply, guessed from the duration or the utterance's length.
    (For an over-long utterance, its whitespace-separated words: counting its spoken
    words would cost as much as the limits save.)"""
    if spoken_estimate is not None:
        said, source = spoken_estimate, "the interrupt's duration"
    else:
        said = len(utterance.split()) if utterance_was_long else len(heard)
        source = f"its length ({said} words)"
    result = reply.cut(reply.words_said_in(said))
    logger.warning(
        "The heard text %r could not be found in the reply %r, so the heard part was "
        "estimated from %s: %r",
        shorten(utterance),
        shorten(reply.sent),
        source,
        shorten(result),
    )
    return result


def shorten(text: str, limit: int = 80) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis if longer."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- The history -------------------------------------------------------------------------


class Conversation(list):
    """The call's history in Messages API form: a list of turns like
    `{"role": "user", "content": "Hi"}`; content is a string, or a list of content blocks
    where tool use needs them.

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

    def keep_heard(self, utterance: str, duration_ms: float | None = None) -> str:
        """Cut the reply the caller was hearing down to what they heard, and return that.
        If nothing was heard, the reply is removed. `utterance` and `duration_ms` are the
        interrupt's `utteranceUntilInterrupt` and `durationUntilInterruptMs` (see
        heard_prefix), or what the relay already worked out from them (`interrupt.heard`
        in an `on_interrupt` hook): a start of the last reply, word for word, is kept as
        it is, without lining it up again. Does nothing (and returns "") if the last turn
        is not Claude's.

        The reply being heard is the last one, unless the utterance is found only in an
        earlier one: Twilio can queue a reply behind speech still playing (see
        relaylab.shell.twiml.playback_reports_needed). That one is cut, and the replies stored after
        it, which were never played, are removed with it.
        """
        if not self or not isinstance(self[-1], dict) or self[-1].get("role") != "assistant":
            return ""
        if _is_start_of(utterance, _text_of(self[-1], "conversation[-1]")):
            index, heard = len(self) - 1, utterance  # already worked out: kept as it is
        else:
            index = self._reply_being_heard(utterance)
            text = _text_of(self[index], f"conversation[{index}]")
            heard = heard_prefix(text, utterance, duration_ms)
        reply = self[index]
        unplayed = [turn for turn in self[index + 1 :] if turn.get("role") == "assistant"]
        if heard:
            reply["content"] = heard
        else:
            unplayed.append(reply)
        self._remove_text_turns(unplayed)
        return heard

    def cut_reply(self, sent: str, heard: str) -> bool:
        """Cut a stored reply that stopped playing early without an interrupt (a newer
        reply's speech cut it off) from ``sent`` down to ``heard``, or remove it if
        nothing was heard. The reply is the newest text turn of Claude's that ends with
        ``sent``; returns False if there is none."""
        sent, heard = sent.strip(), heard.strip()
        if not sent:
            return False
        for turn in reversed(self):
            if not isinstance(turn, dict) or turn.get("role") != "assistant":
                continue
            content = turn.get("content")
            if isinstance(content, str) and content.endswith(sent):
                kept = f"{content[: len(content) - len(sent)].rstrip()} {heard}".strip()
                if kept:
                    turn["content"] = kept
                else:
                    self._remove_text_turns([turn])
                return True
        return False

    def _reply_being_heard(self, utterance: str) -> int:
        """The index of the assistant turn the utterance was heard in: the last one, or an
        earlier text reply that alone holds the words (never past a tool turn)."""
        last = len(self) - 1
        if not utterance.strip() or _holds(self[last], utterance):
            return last
        for index in range(last - 1, -1, -1):
            turn = self[index]
            if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
                break
            if turn.get("role") == "assistant" and _holds(turn, utterance):
                return index
        return last

    def _remove_text_turns(self, turns: list[dict[str, Any]]) -> None:
        """Remove ``turns`` and merge the user turns this leaves side by side."""
        gone = {id(turn) for turn in turns}
        kept: list[Any] = []
        for turn in self:
            if id(turn) in gone:
                continue
            previous = kept[-1] if kept else None
            if (
                isinstance(previous, dict)
                and previous.get("role") == "user" == turn.get("role")
                and isinstance(previous.get("content"), str)
                and isinstance(turn.get("content"), str)
            ):
                previous["content"] = f"{previous['content'].rstrip()} {turn['content']}".strip()
                continue
            kept.append(turn)
        self[:] = kept

    def problems(self) -> list[str]:
        """Reasons the Messages API would reject this history, in plain words ([] if none).
        The rules are ``relaylab.core.message_rules``, which the offline stand-in for Claude
        checks requests with too."""
        return [problem.plain for problem in message_problems(list(self))]

    def trim_to(self, max_chars: int) -> int:
        """Drop the oldest turns until the history holds at most `max_chars` characters of
        text, and return how many turns were dropped.

        The history stays valid: it still opens with a caller's turn (never one that only
        answers a tool call), roles still alternate, and a `tool_use` is never parted from
        its `tool_result`. The newest such opening turn is always kept; when the history is
        still too long (many prompts merged into one turn: each was cut off by the next
        before a reply), that turn loses its oldest words instead, down to its last
        KEPT_OPENING_CHARS characters at least.
        """
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 0:
            raise ValueError(f"max_chars must be a whole number >= 0, not {max_chars!r}")
        sizes = [_size(turn) for turn in self]
        total = sum(sizes)
        if total <= max_chars:
            return 0
        dropped = 0
        for start in range(1, len(self)):
            total -= sizes[start - 1]
            if _can_open_history(self[start]):
                dropped = start
                if total <= max_chars:
                    break
        if dropped:
            del self[:dropped]
            logger.info(
                "The call's history was over %d characters, so its %d oldest turns were "
                "dropped (%d characters are left); Claude no longer sees them.",
                max_chars,
                dropped,
                sum(sizes[dropped:]),
            )
        excess = sum(sizes[dropped:]) - max_chars
        if excess > 0:
            self._shorten_opening_turn(excess)
        return dropped

    def _shorten_opening_turn(self, excess: int) -> None:
        """Cut about ``excess`` of the oldest characters from the first turn, a caller's
        text turn, starting it at a word."""
        turn = self[0]
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(content, str) or not _can_open_history(turn):
            return
        keep = max(len(content) - excess, min(len(content), KEPT_OPENING_CHARS))
        if keep >= len(content):
            return
        kept = content[len(content) - keep :]
        if not content[len(content) - keep - 1].isspace():  # the cut fell inside a word
            _, space, rest = kept.partition(" ")
            kept = rest if space and rest.strip() else kept
        turn["content"] = kept.strip()
        logger.info(
            "The caller's oldest turn alone was over the history's limit, so its first %d "
            "characters were cut; Claude sees the last %d.",
            len(content) - len(turn["content"]),
            len(turn["content"]),
        )

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
        if not (isinstance(last, dict) and last.get("role") == role):
            self.append({"role": role, "content": text})
        elif isinstance(last.get("content"), list):
            # After tool results, say, the text goes in a block of its own. A new list,
            # so a snapshot taken earlier does not change.
            last["content"] = [*last["content"], {"type": "text", "text": text}]
        else:
            last["content"] = f"{_text_of(last, 'conversation[-1]').rstrip()} {text}".lstrip()


def content_text(content: object) -> str:
    """The words of a message's content: a string as it is, or its text blocks joined,
    with ``[tool_use NAME]`` and ``[tool_result]`` standing in for tool blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            parts.append(f"[tool_use {block.get('name')}]")
        elif block.get("type") == "tool_result":
            parts.append("[tool_result]")
    return " ".join(parts)


def last_user_text(messages: object) -> str:
    """The words of the last user turn of a Messages API ``messages`` list ("" if none)."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _is_start_of(heard: str, text: str) -> bool:
    """Is ``heard`` a start of ``text`` that ends after a whole word (or is all of it)?
    Such a start is what heard_prefix would keep of ``text`` for it, word for word."""
    if not heard or not text.startswith(heard):
        return False
    if heard == text.rstrip():
        return True
    return heard[-1].isalnum() and not text[len(heard)].isalnum()


def _holds(turn: object, utterance: str) -> bool:
    """Can the utterance's words be placed in this text turn?"""
    content = turn.get("content") if isinstance(turn, dict) else None
    return isinstance(content, str) and locate_heard(content, utterance) is not None


def _text_of(turn: dict[str, Any], where: str) -> str:
    content = turn.get("content")
    if not isinstance(content, str):
        raise TypeError(f"{where} has content of type {type(content).__name__}, not a string")
    return content


def _blocks(turn: object, kind: str) -> list[dict[str, Any]]:
    content = turn.get("content") if isinstance(turn, dict) else None
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _can_open_history(turn: object) -> bool:
    """Can the history start at this turn: a caller's turn that answers no tool call."""
    return (
        isinstance(turn, dict) and turn.get("role") == "user" and not _blocks(turn, "tool_result")
    )


def _size(turn: object) -> int:
    """Characters of text in a turn; tool inputs and results count as their JSON."""
    if not isinstance(turn, dict):
        return 0
    content = turn.get("content")
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            total += len(block["text"])
        else:
            total += len(json.dumps(block, ensure_ascii=False, default=str))
    return total
