"""How a reply ended, and what follows on the phone: what the caller hears, what is stored.

Every way a Messages API reply can end is decided here, once, and every step from
lesson 3 on follows it (``relaylab.steps.tracking``; the session does the same for a
reply that failed). Pure: no I/O, no third-party imports.

- ``end_turn``, ``stop_sequence`` (or ``tool_use`` with no tools): the caller hears the
  reply; it is stored. With no text: the caller hears ``EMPTY_LINE``; nothing is stored.
- ``max_tokens``: the reply so far, then ``WRAP_UP_LINE``; stored with ``CUT_MARK``.
- ``refusal``: what was already said, then ``REFUSAL_LINE``; nothing is stored, and the
  caller's turn that caused it is taken out (Anthropic's docs on refusals: reset the
  context before going on).
- ``pause_turn``: a new request sends the paused reply back as Claude's turn and the
  reply carries on (up to ``MAX_CONTINUATIONS`` times); the whole reply is stored.
- ``model_context_window_exceeded``: the reply so far, then ``CONTEXT_LINE``; stored
  with ``CUT_MARK``, and the oldest half of the history is dropped.
- an error mid-reply, a stalled or cut stream, or no stop reason at all: the reply so
  far, then ``APOLOGY``; stored with ``CUT_MARK`` (``APOLOGY`` if nothing was said).

The relay's own line ends the reply's talk cycle as a sentence of its own, after a
spoken pause (``spoken_after``): it is never run together with Claude's sentence, and
never stored as Claude's. (Lessons 1-2, which append turns rather than merge them,
store ``EMPTY_LINE`` for a reply with no words, so roles still alternate.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

APOLOGY = "Sorry, I'm having trouble answering right now. Could you say that again?"
EMPTY_LINE = "Sorry, I don't have an answer to that. Could you ask me another way?"
REFUSAL_LINE = "Sorry, I can't help with that one. Is there something else I can do for you?"
WRAP_UP_LINE = "I'll stop there. Just ask if you'd like me to go on."
CONTEXT_LINE = "We've covered a lot, so I've let go of the start of our call. Where were we?"
HOLD_LINE = "One moment."
"""Said once when Claude is alive (thinking, or the API asked the client to wait) but has
not said a word by the voice budget (``Limits.first_token_timeout``)."""

CUT_MARK = "..."
"""Ends a stored reply that stopped mid-way, so Claude can tell its words stopped there
(the system prompt, ``relaylab.relay.llm.SYSTEM_PROMPT``, says what it means). The caller
heard the same trailing pause before the relay's line (``spoken_after``), so a stored
turn stays exactly what the caller heard."""

NORMAL_ENDS = frozenset({"end_turn", "stop_sequence", "tool_use"})
MAX_CONTINUATIONS = 3
"""``pause_turn`` continuations one reply may make before it is wrapped up."""


@dataclass(frozen=True)
class Ending:
    """What the relay does once a reply has ended."""

    stop_reason: str | None
    say: str = ""
    """The relay's own line, spoken as a talk cycle of its own ("" for none)."""
    store: str | None = None
    """Claude's turn to store (None: store nothing)."""
    forget_prompt: bool = False
    """Take the caller's turn that led to this reply out of the history as well."""
    trim_history: bool = False
    """Drop the oldest half of the history (the model's context is full)."""
    continue_turn: bool = False
    """Ask again with the reply so far appended, and keep speaking (``pause_turn``)."""

    @property
    def normal(self) -> bool:
        return not self.say and not self.continue_turn


def ending(stop_reason: str | None, text: str, *, continuations: int = 0) -> Ending:
    """How a reply that stopped with ``stop_reason`` after saying ``text`` ends."""
    said = text.strip()
    if stop_reason == "refusal":
        return Ending(stop_reason, say=REFUSAL_LINE, forget_prompt=True)
    if stop_reason == "pause_turn" and continuations < MAX_CONTINUATIONS:
        return Ending(stop_reason, continue_turn=True)
    if stop_reason in ("max_tokens", "pause_turn"):
        return cut_short(stop_reason, said, WRAP_UP_LINE)
    if stop_reason == "model_context_window_exceeded":
        cut = cut_short(stop_reason, said, CONTEXT_LINE)
        return Ending(stop_reason, say=cut.say, store=cut.store, trim_history=True)
    if stop_reason is None:
        return failed(said)  # the stream ended without saying how: it was cut
    if not said:
        return Ending(stop_reason, say=EMPTY_LINE)
    return Ending(stop_reason, store=said)


def failed(text: str) -> Ending:
    """A reply that failed (an error mid-stream, a stalled or dropped stream) after ``text``."""
    said = text.strip()
    return Ending(None, say=APOLOGY, store=marked(said) if said else APOLOGY)


def cut_short(stop_reason: str | None, said: str, line: str) -> Ending:
    return Ending(stop_reason, say=line, store=marked(said) if said else None)


def marked(said: str) -> str:
    """``said`` marked as cut off."""
    said = said.rstrip()
    return said if said.endswith(CUT_MARK) else said + CUT_MARK


def spoken_after(sent: str, line: str) -> str:
    """The relay's ``line`` as it is said after Claude's words ``sent``: after a pause
    (the cut mark, spoken), as a sentence of its own, never run on from Claude's
    ("...was finished in Sorry, I'm having trouble" is what it must not be)."""
    if not sent.strip():
        return line
    return (CUT_MARK if not sent.rstrip().endswith(CUT_MARK) else "") + " " + line


def mark_cut(history: list[Any], text: str) -> bool:
    """Mark the newest stored turn of Claude's that ends with ``text`` as cut off there;
    False if there is none (it was never stored, or an interrupt already cut it)."""
    said = text.strip()
    if not said:
        return False
    for turn in reversed(history):
        if not isinstance(turn, dict) or turn.get("role") != "assistant":
            continue
        content = turn.get("content")
        if isinstance(content, str) and content.endswith(said):
            turn["content"] = marked(content)
            return True
        return False
    return False


def continuation(messages: list[Any], content: list[dict[str, Any]]) -> list[Any]:
    """The messages for carrying on a paused turn: the paused reply's content appended as
    Claude's turn (merged into one already there), as Anthropic's docs on ``pause_turn``
    describe. Text blocks lose trailing whitespace, which the API rejects at the end."""
    blocks = []
    for block in content:
        if block.get("type") == "text":
            if block.get("text", "").strip():
                blocks.append({"type": "text", "text": block["text"].rstrip()})
        else:
            blocks.append(block)
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        before = last["content"]
        if isinstance(before, str):
            before = [{"type": "text", "text": before}]
        return [*messages[:-1], {"role": "assistant", "content": [*before, *blocks]}]
    return [*messages, {"role": "assistant", "content": blocks}]
