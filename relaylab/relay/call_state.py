"""A call's state as plain data, so a reconnected socket can pick the call up again.

Pure: a ``CallSession`` goes in, a JSON-ready dict comes out, and back. What is kept is
what the next reply needs: the history, the replies so far (bounded), the ``setup`` and
the settings learned during the call. Where it is kept is ``relaylab.relay.store``'s job, and
when it is saved and loaded is ``relaylab.relay.resume``'s.

When the socket drops mid-reply, the caller heard only part of it. ``settle_drop`` works
out how much (Twilio's tokensPlayed report when it sent one, else the clauses a typical
voice had finished since the reply's first token) before the reply is cancelled, and ``store_drop``
then cuts the stored turn down to that and marks the reply as cut by the drop.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from relaylab.core import playback, protocol
from relaylab.relay.session import CallSession, RelayReply, ReplyState

VERSION = 1
KEPT_REPLIES = 20
"""Replies kept in a call's saved state (the history keeps every turn anyway)."""
MAX_STATE_CHARS = 2_000_000
"""A saved state over this many characters drops its oldest turns first (the history is
already bounded by ``Limits.history_chars``; tool results can still make it large)."""
VOICE_WPM = 165.0  # a typical voice's pace, words a minute, for the played estimate
_CLAUSE_END = re.compile(r"[.,;:!?…]['\"’”)\]]*$")  # a word that ends a clause


@dataclass
class Dropped:
    """A reply the socket dropped while it may still have been playing."""

    reply: RelayReply
    played: str


def capture(session: CallSession, status: str) -> dict[str, Any]:
    """The call's state as a JSON-ready dict; ``status`` is live, dropped or ended."""
    setup = session.setup
    state: dict[str, Any] = {
        "v": VERSION,
        "call_sid": session.call_sid,
        "status": status,
        "setup": dict(setup.raw) if setup is not None else None,
        "conversation": session.conversation.snapshot(),
        "replies": [_reply(r) for r in session.replies[-KEPT_REPLIES:]],
        "preemptible": session.preemptible,
        "reports": session._reports,
        "saved_at": time.time(),
    }
    return state


def dump(state: dict[str, Any]) -> str:
    """The state as JSON, within MAX_STATE_CHARS (oldest turns dropped first)."""
    text = json.dumps(state, ensure_ascii=False, allow_nan=False)
    while len(text) > MAX_STATE_CHARS and len(state["conversation"]) > 2:
        del state["conversation"][:2]  # a user turn and its answer
        text = json.dumps(state, ensure_ascii=False, allow_nan=False)
    return text


def load(text: str | None) -> dict[str, Any] | None:
    """A state saved by ``dump``; None for nothing, or for a state this version cannot read."""
    if not text:
        return None
    try:
        state = json.loads(text)
    except ValueError:
        return None
    if not isinstance(state, dict) or state.get("v") != VERSION:
        return None
    return state


def restore(session: CallSession, state: dict[str, Any]) -> None:
    """Give a new session the call's state: its history, replies, setup and settings."""
    session.call_sid = state["call_sid"]
    if state.get("setup"):
        message = protocol.parse(json.dumps(state["setup"]))
        if isinstance(message, protocol.Setup):
            session.setup = message
    session.conversation[:] = state.get("conversation") or []
    session.replies = [_restored(i + 1, data) for i, data in enumerate(state.get("replies") or [])]
    session._played_from = len(session.replies)  # every restored reply is over
    session.preemptible = bool(state.get("preemptible"))
    session._reports = bool(state.get("reports"))


def settle_drop(session: CallSession, now: float | None = None) -> list[Dropped]:
    """Before a dropped call's replies are cancelled: what the caller heard of each reply
    that may still have been playing (Twilio's tokensPlayed report, else the estimate)."""
    now = time.monotonic() if now is None else now
    dropped = []
    # Only the latest reply can still be playing: the caller spoke after the others.
    latest = session.last_reply
    for reply in [latest] if latest is not None else []:
        if reply.heard is not None or not reply.sent:
            continue  # an interrupt or a newer reply already settled it
        reported = playback.heard_as_reported(reply)
        if reported is not None:
            played = reported
        elif session._reports:
            played = reply.played.rstrip() if reply.played else ""
        else:
            played = _estimate(reply, now)
        if played.strip() != reply.sent.strip() or reply.running:
            dropped.append(Dropped(reply, played))
    return dropped


def store_drop(session: CallSession, dropped: list[Dropped]) -> None:
    """After the replies stopped: store each dropped reply as what was played, marked cut."""
    for item in dropped:
        reply = item.reply
        reply.heard = item.played
        reply.dropped = True
        if item.played.strip() != reply.sent.strip():
            session.conversation.cut_reply(reply.sent, item.played)


def _estimate(reply: RelayReply, now: float) -> str:
    """What had played of ``reply`` by ``now`` at a typical voice's pace: the clauses the
    time covers (never a word the voice may have been cut off in)."""
    if reply.first_token_at is None:
        return ""
    words = list(re.finditer(r"\S+", reply.sent))
    spoken = int((now - reply.first_token_at) / 60 * VOICE_WPM)
    if spoken >= len(words):
        return reply.sent.rstrip()
    ends = [w for w in words[:spoken] if _CLAUSE_END.search(w.group())]
    if not ends:
        return ""
    return _CLAUSE_END.sub("", reply.sent[: ends[-1].end()]).rstrip()


def _reply(reply: RelayReply) -> dict[str, Any]:
    return {
        "prompt": reply.prompt,
        "sent": reply.sent,
        "state": reply.state,
        "heard": reply.heard,
        "played": reply.played,
        "cut_off": reply.cut_off,
        "dropped": reply.dropped,
        "error": reply.error,
    }


def _restored(index: int, data: dict[str, Any]) -> RelayReply:
    state = str(data.get("state", ReplyState.DONE))
    known = state in ReplyState.__members__.values() and state != ReplyState.RUNNING
    return RelayReply(
        prompt=str(data.get("prompt", "")),
        id=index,
        sent=str(data.get("sent", "")),
        # A reply that was running when the socket dropped stopped with it.
        state=ReplyState(state) if known else ReplyState.CANCELLED,
        heard=data.get("heard"),
        played=str(data.get("played") or ""),
        cut_off=bool(data.get("cut_off")),
        dropped=bool(data.get("dropped")),
        error=data.get("error"),
    )
