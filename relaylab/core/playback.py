"""Which reply each of Twilio's ``tokensPlayed`` reports belongs to. No I/O.

Twilio plays a call's replies in the order it got them, and each ``tokensPlayed`` carries
the next stretch of text it played (when the TwiML asks for ``tokens-played``), or, in the
other reading of Twilio's docs, all of the talk cycle played so far: both are taken. So a
report continues the oldest reply still playing, unless it begins a newer reply instead:
then, when ``preemptible`` is on, the newer reply's speech cut off the ones before it,
and each of those was heard as far as it had played. No ``interrupt`` comes for that cut,
so these reports are the only way a relay can learn where it happened. (With preemptible
off nothing can cut a reply off: the report only skipped what Twilio left unreported.)

Text is compared without whitespace: only the words and their order matter.

A report's cost is bounded whatever the call's length: Twilio queues only a few replies,
so no more than ``PLAYING_AT_ONCE`` replies, all among the newest ``SCANNED``, are taken
to be still playing. An older one (with that many unfinished replies, or that many
replies of any kind, sent after it) is taken to have played through unreported, and is
never looked at again (the session skips replies played out).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Playable(Protocol):
    """What this module reads and writes of a reply (``relaylab.relay.session.RelayReply``)."""

    sent: str  # every token sent so far
    played: str  # what tokensPlayed reports credited to it so far
    heard: str | None  # set once the reply stopped playing early

    @property
    def running(self) -> bool: ...


R = TypeVar("R", bound=Playable)

PLAYING_AT_ONCE = 8  # replies a report may belong to: the newest ones not yet played out
SCANNED = 4 * PLAYING_AT_ONCE  # ... and only among this many of the newest replies


@dataclass
class Credit(Generic[R]):
    """Where one report went: the reply it continues or begins (None if it matches none:
    Twilio's welcome greeting, say), and the older replies that reply's speech cut off."""

    reply: R | None
    cut_off: list[R] = field(default_factory=list)


def credit_played(replies: Sequence[R], text: str, *, preemption: bool = True) -> Credit[R]:
    """Add ``text`` to the ``played`` of the reply it belongs to, among ``replies`` in the
    order sent. Replies it shows were cut off get ``heard`` (what they had played). Without
    ``preemption`` (the TwiML's and the replies' own preemptible) nothing can cut a reply
    off, so a report that skips past the rest of one means Twilio did not report all of
    it: it counts as played through."""
    words = _squashed(text)
    if not words:
        return Credit(None)
    playing = _settled(replies)
    for index, reply in enumerate(playing):
        if _continues(reply, words):
            reply.played += text
        elif _extends(reply, words):
            reply.played = text
        else:
            continue
        skipped = playing[:index]  # the report skipped past the rest of these
        for older in skipped:
            if preemption:
                older.heard = older.played.rstrip()  # cut off where it had got to
            else:
                older.played = older.sent
        return Credit(reply, skipped if preemption else [])
    return Credit(None)


def _settled(replies: Sequence[R]) -> list[R]:
    """The replies still playing, at most PLAYING_AT_ONCE of them (plus any still running),
    all among the last SCANNED replies: older ones count as played through, unreported."""
    old = len(replies) - SCANNED
    playing = []
    for index, reply in enumerate(replies):
        if not still_playing(reply):
            continue
        if index < old and not reply.running:
            reply.played = reply.sent
        else:
            playing.append(reply)
    if len(playing) <= PLAYING_AT_ONCE:
        return playing
    kept = []
    for index, reply in enumerate(playing):
        if index < len(playing) - PLAYING_AT_ONCE and not reply.running:
            reply.played = reply.sent
        else:
            kept.append(reply)
    return kept


def heard_as_reported(reply: Playable) -> str | None:
    """What Twilio's ``tokensPlayed`` reports say the caller heard of ``reply``: what played,
    without its trailing space, when that is how the reply's text begins; None when no
    report fits (none came, or they do not match what was sent)."""
    if reply.played and reply.sent.startswith(reply.played):
        return reply.played.rstrip()
    return None


def played_out(reply: Playable) -> bool:
    """Will nothing more of ``reply`` play? (A reply still running may yet send words.)"""
    if reply.heard is not None:
        return True
    return not reply.running and _squashed(reply.played) == _squashed(reply.sent)


def still_playing(reply: Playable) -> bool:
    """Has ``reply`` sent words that may still be played (it is not ``played_out``)?"""
    return bool(reply.sent) and not played_out(reply)


def _continues(reply: Playable, words: str) -> bool:
    """Is ``words`` the next stretch of ``reply`` after what has played of it?"""
    unplayed = _squashed(reply.sent)[len(_squashed(reply.played)) :]
    return unplayed.startswith(words)


def _extends(reply: Playable, words: str) -> bool:
    """Is ``words`` all of ``reply`` played so far (a cumulative report)?"""
    return words.startswith(_squashed(reply.played)) and _squashed(reply.sent).startswith(words)


def _squashed(text: str) -> str:
    if len(text) <= _CACHED_CHARS:
        return _squashed_cached(text)
    return "".join(text.split())


_CACHED_CHARS = 8_192  # a reply's text is squashed on every report: remember the result


@functools.lru_cache(maxsize=256)
def _squashed_cached(text: str) -> str:
    return "".join(text.split())
