"""What the caller does in a scenario, each action a small frozen dataclass: ``Say``,
``Ask``, ``WaitForFrames``, ``TalkOver``, ``Press``, ``Wait`` and ``Settle``; ``Action``,
their union; the names plain-data scenarios use for them; and how many seconds the caller
waits for the relay.
"""

from __future__ import annotations

from dataclasses import dataclass

REPLY_WAIT = 8.0  # seconds a Say waits for its reply
QUIET = 0.25  # seconds of a finished relay reply without last=true before Say gives up
SETTLE = 6.0  # seconds the relay gets to finish its replies after the last action


@dataclass(frozen=True)
class Say:
    """Say ``text`` and wait for the reply; with ``interrupt_after_words``, talk over it
    once the caller has heard that many words."""

    text: str
    interrupt_after_words: int | None = None


@dataclass(frozen=True)
class Ask:
    """Send ``text`` as a prompt and go straight on, as Twilio does when the caller speaks
    while a reply is still coming (a barge-in, when the reply is still streaming)."""

    text: str


@dataclass(frozen=True)
class WaitForFrames:
    """Wait until ``count`` text frames with words have arrived since the last prompt."""

    count: int
    timeout: float = 5.0


@dataclass(frozen=True)
class TalkOver:
    """Talk over whatever is playing now (Twilio then sends the relay an ``interrupt``)."""


@dataclass(frozen=True)
class Press:
    """Press keys on the phone's key pad (one ``dtmf`` frame each)."""

    digits: str


@dataclass(frozen=True)
class Wait:
    """Let the call run on for ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Settle:
    """Let the relay finish whatever it is still doing (at most ``timeout`` seconds): a
    reply that was not stopped streams on, and is stored, before the caller goes on."""

    timeout: float = SETTLE


Action = Say | Ask | WaitForFrames | TalkOver | Press | Wait | Settle
_ACTIONS: dict[str, type] = {
    "say": Say,
    "ask": Ask,
    "wait_for_frames": WaitForFrames,
    "talk_over": TalkOver,
    "press": Press,
    "wait": Wait,
    "settle": Settle,
}
