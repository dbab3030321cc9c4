"""The caller cutting in on the agent: when, with what, and what becomes of the input.

``CutIn`` says when and how a simulated caller talks (or presses keys) over a reply;
``input_fate`` says what Twilio does with input that did not interrupt the agent's
speech, as ``reportInputDuringAgentSpeech`` (and the reading of its timing) has it.
Whether input interrupts a talk cycle at all is ``TalkCycles.interrupts``. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from relaylab.simulation.speech_clock import SpeechClock
from relaylab.simulation.twilio_behaviour import InputKind, TwilioBehaviour, allows

__all__ = ["DTMF_KEYS", "CutIn", "InputFate", "check_keys", "input_fate"]

DTMF_KEYS = "0123456789*#"
InputFate = Literal["drop", "send", "hold"]


def check_keys(digits: object) -> None:
    """ValueError unless ``digits`` are keys a phone has (0-9, * and #)."""
    if not isinstance(digits, str) or not digits or any(d not in DTMF_KEYS for d in digits):
        raise ValueError(f"a phone has keys 0-9, * and #; cannot press {digits!r}")


@dataclass(frozen=True)
class CutIn:
    """When and how the caller cuts in on a reply (see ``SimulatedCall.say``)."""

    after_words: int | None = None
    after_ms: float | None = None
    talk_over: str | None = None
    press: str | None = None

    def __post_init__(self) -> None:
        if self.talk_over is not None and (
            not isinstance(self.talk_over, str) or not self.talk_over.strip()
        ):
            raise ValueError(f"talk_over needs the words the caller says, got {self.talk_over!r}")
        if self.press is not None:
            check_keys(self.press)
        if self.talk_over is not None and self.press is not None:
            raise ValueError("cut in by talking (talk_over) or by pressing keys (press), not both")

    @property
    def timed(self) -> bool:
        """Is the cut-in point given (after some words or milliseconds of the reply)?"""
        return self.after_words is not None or self.after_ms is not None

    @property
    def kind(self) -> InputKind:
        return "dtmf" if self.press else "speech"

    @property
    def words(self) -> str | None:
        """What the caller says or presses when cutting in (None: speech with no words)."""
        return self.press or self.talk_over

    def time(self, clock: SpeechClock) -> float | None:
        """When the caller cuts in on ``clock``'s speech, once that is scheduled."""
        if self.after_words is not None and self.after_words > 0:
            return clock.time_of_word(self.after_words)
        if self.timed:
            return clock.time_of_ms(self.after_ms or 0.0)
        return None


def input_fate(kind: InputKind, behaviour: TwilioBehaviour) -> InputFate:
    """Input of ``kind`` made during agent speech that did not interrupt it: "drop" (not
    reported), "send" at once, or "hold" until the agent stops speaking."""
    if not allows(behaviour.report_input_during_agent_speech, kind):
        return "drop"
    return "send" if behaviour.report_timing == "at_once" else "hold"
