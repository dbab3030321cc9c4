"""Turn-taking rules of lesson 6, pure: backchannels, the mark of a cut turn, speech time.

- ``is_backchannel(text, lang)``: is this prompt only a listener's "uh-huh" / "mm-hmm" /
  "okay" / "yeah" (in the call's language), nothing else? A word list is risky: "yes" or
  "okay" can be the answer to a question. So the list leaves out "yes"/"no", takes at most
  ``MAX_BACKCHANNEL_WORDS`` words, every one of which must be on it, and the turns step
  only asks while a reply was still being spoken (it was cut with words left unheard).
- ``CUT_MARK``: how a stored assistant turn shows that the caller cut it: the heard words,
  then `` — [interrupted by the caller]``. ``CUT_NOTE`` is the line added to the system
  prompt that tells Claude what the mark means. ``mark_cut`` / ``without_cut_mark`` add and
  remove it (a resumed reply removes it before its words are added).
- ``speech_seconds(text, words_per_minute)``: about how long a voice takes to say ``text``.

No I/O, no third-party imports.
"""

from __future__ import annotations

import re

__all__ = [
    "BACKCHANNELS",
    "CUT_MARK",
    "CUT_NOTE",
    "MAX_BACKCHANNEL_WORDS",
    "is_backchannel",
    "mark_cut",
    "speech_seconds",
    "without_cut_mark",
]

CUT_MARK = " — [interrupted by the caller]"
CUT_NOTE = (
    " When one of your earlier turns ends with '— [interrupted by the caller]', the caller "
    "talked over you there: they heard your words up to the dash and nothing after it. If "
    "they ask how far you got, quote the words just before the dash. Never write that mark "
    "yourself."
)
MAX_BACKCHANNEL_WORDS = 4

# Phrases a listener says to keep the speaker going, by language (the first part of the
# prompt's `lang`, e.g. "en" of "en-US"), as words ("uh-huh" is "uh huh"). Left out on
# purpose: "yes", "no", "sí", "oui", "ja": they answer questions.
BACKCHANNELS: dict[str, frozenset[tuple[str, ...]]] = {
    "en": frozenset(
        tuple(p.split())
        for p in ("uh huh", "mm hmm", "mhm", "mm", "hmm", "okay", "ok", "yeah", "yep", "right")
    ),
    "es": frozenset(tuple(p.split()) for p in ("ajá", "aja", "mhm", "ya", "vale", "claro")),
    "fr": frozenset(tuple(p.split()) for p in ("mhm", "ouais", "d'accord", "ok", "hmm")),
    "de": frozenset(tuple(p.split()) for p in ("mhm", "aha", "okay", "ok", "genau")),
}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def is_backchannel(text: str, lang: str = "") -> bool:
    """True if ``text`` is nothing but backchannel phrases of ``lang`` (English if unknown)."""
    words = _WORD.findall(text.lower())
    if not words or len(words) > MAX_BACKCHANNEL_WORDS:
        return False
    phrases = BACKCHANNELS.get(lang.lower().split("-")[0], BACKCHANNELS["en"])
    longest = max(len(p) for p in phrases)
    i = 0
    while i < len(words):
        for size in range(min(longest, len(words) - i), 0, -1):
            if tuple(words[i : i + size]) in phrases:
                i += size
                break
        else:
            return False
    return True


def mark_cut(text: str) -> str:
    """``text`` (what the caller heard) with the mark of a cut turn after it."""
    return without_cut_mark(text).rstrip() + CUT_MARK


def without_cut_mark(text: str) -> str:
    """``text`` without a trailing cut mark (unchanged if it has none)."""
    return text[: -len(CUT_MARK)] if text.endswith(CUT_MARK) else text


def speech_seconds(text: str, words_per_minute: float) -> float:
    """About how long a voice speaking ``words_per_minute`` takes to say ``text``."""
    return len(text.split()) * 60.0 / words_per_minute
