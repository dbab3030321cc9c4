"""One of the relay's replies in words: what was sent and heard, its state, its tool
calls and its timings, as HTML and as text (what the live view lists)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relaylab.core import playback
from relaylab.notebook.widgets.static_html import spoken_html, spoken_text
from relaylab.notebook.widgets.style import esc, plural, seconds
from relaylab.relay.session import ReplyState


@dataclass(frozen=True)
class ReplyLines:
    """What the view says about one of the relay's replies (a ``RelayReply``)."""

    prompt: str
    sent: str
    heard: str | None  # a prefix of sent, or None when nothing is known to be unheard
    placeholder: str  # shown when nothing was sent yet
    streaming: bool
    notes: tuple[str, ...]
    tools: tuple[str, ...] = ()  # one line per tool call the reply ran

    @classmethod
    def of(
        cls,
        reply: Any,
        speech_ms: float | None = None,
        tools: Sequence[Any] = (),
        clock_speed: float = 1.0,
    ) -> ReplyLines:
        """Describe ``reply``; ``speech_ms`` is the interrupt's durationUntilInterruptMs,
        ``tools`` the tool calls it ran (``relaylab.steps.tools.ToolRun``), ``clock_speed``
        how much faster than real time the simulated voice spoke (a lab's clock_speed)."""
        heard = _heard(reply)
        running = reply.state == ReplyState.RUNNING
        placeholder = "waiting for Claude's first word…" if running else "(nothing sent)"
        return cls(
            prompt=reply.prompt,
            sent=reply.sent,
            heard=heard,
            placeholder=placeholder,
            streaming=running and bool(reply.sent),
            notes=tuple(_notes(reply, heard, speech_ms, clock_speed)),
            tools=tuple(tool_line(run) for run in tools),
        )

    def html(self) -> str:
        caller = (
            f"<div class='rl-turn rl-user'><span class='rl-who'>caller:</span> "
            f"{esc(self.prompt)}</div>"
        )
        if self.sent:
            body = spoken_html(self.sent, self.heard) + (" ▌" if self.streaming else "")
        else:
            body = f"<i class='rl-meta'>{esc(self.placeholder)}</i>"
        tools = "".join(f"<div class='rl-tool'>tool: {esc(line)}</div>" for line in self.tools)
        meta = f"<div class='rl-meta'>{' · '.join(esc(n) for n in self.notes)}</div>"
        return (
            f"{caller}<div class='rl-turn rl-assistant'><span class='rl-who'>claude:</span> "
            f"{body}{tools}{meta}</div>"
        )

    def text(self) -> str:
        body = spoken_text(self.sent, self.heard) if self.sent else self.placeholder
        if self.streaming:
            body += " …"
        tools = "".join(f"\n        tool: {line}" for line in self.tools)
        return f"caller: {self.prompt}\nclaude: {body}{tools}\n        ({'; '.join(self.notes)})"


def tool_line(run: Any) -> str:
    """One tool call in words: name, input, state and time, and what an interrupt did.

    ``run`` is a ``relaylab.steps.tools.ToolRun`` (name, input, state, ms, interrupted,
    side_effects)."""
    call = f"{run.name} {json.dumps(run.input, ensure_ascii=False)}"
    took = seconds(run.ms)
    state = {
        "running": f"running, {took} so far",
        "done": f"done in {took}",
        "failed": f"failed after {took}",
        "cancelled": f"cancelled after {took}",
    }.get(run.state, f"{run.state} after {took}")
    line = f"{call}: {state}"
    if run.interrupted:
        if getattr(run, "side_effects", False):
            line += "; the caller interrupted, but it changes things, so it was not stopped"
        else:
            line += "; the caller interrupted while it ran"
    return line


def _heard(reply: Any) -> str | None:
    """What the caller heard of a relay-side reply, when less than all of it: the relay's
    own ``heard``, else, once the reply has ended, what Twilio reports it played."""
    if reply.heard is not None:
        return reply.heard
    if reply.state == ReplyState.RUNNING:
        return None  # still sending: what has not played yet may still play
    return playback.heard_as_reported(reply)


def _notes(
    reply: Any, heard: str | None, speech_ms: float | None, clock_speed: float = 1.0
) -> list[str]:
    timings = reply.timings
    if (
        reply.state == ReplyState.RUNNING
        and not reply.sent
        and not reply.frames
        and not reply.interrupted
    ):
        return ["waiting for Claude: nothing sent yet"]  # a basic step waits for the whole reply
    notes = [
        {
            ReplyState.RUNNING: "streaming",
            ReplyState.DONE: "done",
            ReplyState.CANCELLED: "stopped",
            ReplyState.FAILED: "failed",
            ReplyState.TIMED_OUT: "timed out",
        }.get(reply.state, str(reply.state))
    ]
    if getattr(reply, "cut_off", False):  # preemptible: no interrupt, Twilio's reports say
        words = plural(len(reply.heard.split()), "word")
        notes.append(f"cut off by the next reply's speech after {words}")
    elif reply.interrupted:
        words = plural(len(reply.heard.split()), "word")
        at = timings.get("interrupt_ms")
        when = f" at {seconds(at)}" if at is not None else ""
        notes.append(f"the caller cut in{when}, having heard {words}")
        if speech_ms is not None:
            notes.append(_speech_played(speech_ms, clock_speed))
        last = timings.get("last_token_ms")
        if reply.state == ReplyState.RUNNING:
            notes.append(
                "still streaming after the interrupt" if reply.sent else "Claude is still writing"
            )
        elif at is not None and last is not None and last > at:
            notes.append(f"the relay kept sending for {seconds(last - at)} after the interrupt")
    elif reply.state == ReplyState.CANCELLED:
        notes.append("cancelled by the caller's next prompt")
        if heard is None:
            notes.append("no interrupt came, so what was heard is unknown")
    played = getattr(reply, "played", "")
    if played:
        notes.append(f"Twilio reports {plural(len(played.split()), 'word')} played")
    if reply.error:
        notes.append(reply.error)
    if (sending := _words_sent(reply)) is not None:
        notes.append(sending)
    notes.append(plural(reply.frames, "text frame"))
    return notes


def _speech_played(speech_ms: float, clock_speed: float) -> str:
    """Twilio's durationUntilInterruptMs in words. It is speech time: a simulated voice
    running at ``clock_speed`` plays it faster than the wall clock the other notes use."""
    said = f"{seconds(speech_ms)} of speech played before the interrupt"
    if clock_speed == 1.0:
        return said
    return f"{said}, at {clock_speed:g}x speed ({seconds(speech_ms / clock_speed)} of real time)"


def _words_sent(reply: Any) -> str | None:
    """When the reply's words went out, in seconds after the prompt reached the relay."""
    timings = reply.timings
    first, last = timings.get("first_token_ms"), timings.get("last_token_ms")
    ended = timings.get("ended_ms")
    if first is None:
        return None if reply.state == ReplyState.RUNNING else "no words sent"
    if reply.state == ReplyState.DONE and last is not None:
        if last - first < 1.0:
            return f"the whole reply sent at once, {seconds(first)} after the prompt"
        return f"words sent from {seconds(first)} to {seconds(last)} after the prompt"
    said = f"first word sent {seconds(first)} after the prompt"
    if reply.state != ReplyState.RUNNING and ended is not None:
        said += f", stopped at {seconds(ended)}"
    return said
