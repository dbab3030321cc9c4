"""Lesson 6: turn-taking. The tracking step, plus four things real calls need.

1. False interruptions. When the caller cuts in and then says nothing, only a backchannel
   ("uh-huh", "mm-hmm", "okay", "yeah" in the call's language: see
   ``relaylab.core.turn_taking.is_backchannel``), or an empty utterance, the reply goes on from
   where the caller stopped hearing it: its unheard rest is sent again, with no new
   request to Claude, and the history keeps one assistant turn. Only for a reply that was
   still being spoken (words left unheard) and only for a prompt that is nothing else; a
   real question is answered as in lesson 3. To resume, Claude's answer is read by a task
   of its own (``Answer``): the interrupt stops the reply's words at once, as in lesson 3,
   but the model stream stays open for ``resume_wait`` seconds, until the caller's next
   prompt says whether to resume (then it goes on) or not (then it is closed).
2. Telling Claude a turn was cut: a cut turn is stored as the heard words plus
   ``relaylab.core.turn_taking.CUT_MARK`` (`` — [interrupted by the caller]``), and the system
   prompt gets ``CUT_NOTE``, which explains it.
3. Half-finished turns: a reply holds its first word for ``merge_wait`` seconds after
   the prompt (Claude is already asked meanwhile). A second prompt in that time cancels it
   before any word is spoken, and the two prompts become one user turn and one answer.
4. Silence: ``silence_after`` seconds after the relay stops talking with no prompt, it
   asks ``reprompt`` ("Are you still there?"); after ``reprompts`` of those, it says
   ``goodbye`` and sends ``end``.

``turns_step(resume_wait=1.0, ...)`` builds the step with other ``TurnSettings``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anthropic.lib.streaming import AsyncMessageStreamManager

from relaylab.core import endings, protocol
from relaylab.core.log_lines import loggable
from relaylab.core.protocol import Dtmf, Prompt, Setup
from relaylab.core.turn_taking import CUT_NOTE, is_backchannel, mark_cut, speech_seconds
from relaylab.core.turn_taking import without_cut_mark as without_cut_mark
from relaylab.relay.session import CallSession, HungUp, Interruption, RelayReply
from relaylab.relay.step import Step
from relaylab.steps.streaming import blocks_of

name = "turns"
__all__ = [
    "Answer",
    "TurnSettings",
    "on_close",
    "on_dtmf",
    "on_interrupt",
    "on_prompt",
    "on_setup",
    "turns_step",
]
log = logging.getLogger("relaylab.steps.turns")


@dataclass(frozen=True)
class TurnSettings:
    """What the turns step waits for, and what it says."""

    resume_wait: float = 2.5
    """Seconds after an interrupt to wait for a prompt; with none (or a backchannel,
    sooner), the cut reply resumes."""
    merge_wait: float = 0.5
    """Seconds from a prompt to its reply's first word: a second prompt in this time
    joins the first (the caller paused mid-sentence)."""
    silence_after: float = 6.0
    """Seconds of silence after the relay stops talking before it asks ``reprompt``."""
    reprompts: int = 1
    """How many times it asks before it says ``goodbye`` and ends the call."""
    reprompt: str = "Are you still there?"
    goodbye: str = "I can't hear anyone, so I'll hang up now. Thanks for calling. Goodbye!"
    mark_cuts: bool = True
    """Store a cut turn with ``CUT_MARK`` and explain it in the system prompt."""
    words_per_minute: float = 165.0
    """The voice's pace, to know when it has stopped talking."""
    backchannel: Callable[[str, str], bool] = is_backchannel
    """``backchannel(text, lang)``: is this prompt only a listener's "uh-huh"?"""


DEFAULT_SETTINGS = TurnSettings()
SILENCE_POLL = 0.2  # seconds between looks at the line while listening for silence


class Answer:
    """One answer from Claude, read by a task of its own so that it can outlive the reply
    that began to speak it (a false interruption resumes it). ``text`` is everything read
    so far; once ``done``, ``ending`` says how it ended (``relaylab.core.endings``, as in the
    tracking step: a paused turn is carried on here) or ``error`` why it failed.
    ``cancel()`` closes the model stream."""

    def __init__(self, call: CallSession) -> None:
        self.text = ""
        self.done = False
        self.error: BaseException | None = None
        self.ending: endings.Ending | None = None
        self._changed = asyncio.Event()
        messages = call.conversation.snapshot()
        self.task = asyncio.get_running_loop().create_task(self._read(call, messages))

    async def _read(self, call: CallSession, messages: list[Any]) -> None:
        continuations = 0
        try:
            while True:
                async with _open_stream(call, messages) as stream:
                    async for text in stream.text_stream:
                        self.text += text
                        self._changed.set()
                    message = await stream.get_final_message()
                ending = endings.ending(message.stop_reason, self.text, continuations=continuations)
                if not ending.continue_turn:
                    self.ending = ending
                    break
                messages = endings.continuation(messages, blocks_of(message))
                continuations += 1
        except asyncio.CancelledError:
            self.error = asyncio.CancelledError()
            raise
        except Exception as exc:  # handed to the reply speaking it, which apologises
            self.error = exc
        finally:
            self.done = True
            self._changed.set()

    async def changed(self) -> None:
        """Wait for more text or the end."""
        self._changed.clear()
        if not self.done:
            await self._changed.wait()

    def cancel(self) -> None:
        self.task.cancel()


@dataclass(eq=False)
class _Resume:
    """A cut reply that may resume: its answer, where the caller stopped hearing it."""

    answer: Answer
    position: int
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Turns:
    """One call's turn-taking state."""

    resume: _Resume | None = None
    silence: asyncio.TimerHandle | None = None  # the next look at the line, while listening
    quiet_until: float = 0.0  # (no speaker events) when the relay's speech should be over
    quiet_since: float | None = None  # since when the line has been quiet
    reprompted: int = 0
    last_cut: weakref.ref[RelayReply] | None = None
    answers: set[Answer] = field(default_factory=set)


_calls: weakref.WeakKeyDictionary[CallSession, _Turns] = weakref.WeakKeyDictionary()
# Each reply's answer and where in it the reply began (0, or where a resume picked up).
_spoken: weakref.WeakKeyDictionary[RelayReply, tuple[Answer, int]] = weakref.WeakKeyDictionary()


def _turns(call: CallSession) -> _Turns:
    state = _calls.get(call.session)  # (each hook's `call` is a view of the session)
    if state is None:
        state = _calls[call.session] = _Turns()
    return state


def turns_step(**settings: Any) -> Step:
    """The turns step with other settings, e.g. ``turns_step(resume_wait=1.0)``."""
    chosen = TurnSettings(**settings)
    return Step(
        on_setup=functools.partial(on_setup, settings=chosen),
        on_prompt=functools.partial(on_prompt, settings=chosen),
        on_interrupt=functools.partial(on_interrupt, settings=chosen),
        on_dtmf=functools.partial(on_dtmf, settings=chosen),
        on_close=functools.partial(on_close, settings=chosen),
        name=name,
    )


# -- the hooks --------------------------------------------------------------------------------


async def on_setup(call: CallSession, setup: Setup, settings: TurnSettings | None = None) -> None:
    settings = settings or DEFAULT_SETTINGS
    if settings.mark_cuts and CUT_NOTE not in (call.system or ""):
        call.system = (call.system or "") + CUT_NOTE
    _listen_for_silence(call, settings, after=call.greeting)


async def on_prompt(
    call: CallSession, prompt: Prompt, settings: TurnSettings | None = None
) -> None:
    settings = settings or DEFAULT_SETTINGS
    state = _turns(call)
    _stop_listening(state)
    state.reprompted = 0
    resume = state.resume
    if settings.backchannel(prompt.voice_prompt, prompt.lang):
        if resume is not None:
            log.info("%s after an interrupt: resuming", _said(call, prompt))
            _take_resume(state)
            await _speak(call, resume.answer, resume.position, settings, resumed=True)
            return
        if _still_speaking(call):
            log.info("%s while the reply plays: ignored", _said(call, prompt))
            return
    if resume is not None:  # a real question: the cut reply stays cut
        _take_resume(state).answer.cancel()
    try:
        await call.cancel_reply()  # barge-in: the old reply stops (and is stored) first
    finally:
        before = call.conversation.snapshot()
        call.conversation.add_user(prompt.voice_prompt)  # joins an unanswered prompt
    reply = call.reply
    assert reply is not None  # on_prompt always runs as a reply
    answer = Answer(call)
    hold_until = reply.started_at + settings.merge_wait
    await _speak(call, answer, 0, settings, hold_until=hold_until, before=before)


async def on_interrupt(
    call: CallSession, interrupt: Interruption, settings: TurnSettings | None = None
) -> None:
    settings = settings or DEFAULT_SETTINGS
    state = _turns(call)
    _stop_listening(state)
    await call.cancel_reply()  # the reply's words stop now; its answer is still read
    cut = _cut_reply(call)
    if cut is None or (state.last_cut is not None and state.last_cut() is cut):
        return  # no reply was cut, or this reply's interrupt was handled already
    state.last_cut = weakref.ref(cut)
    heard = cut.heard or ""
    if not call.conversation.cut_reply(cut.sent, heard):
        call.conversation.keep_heard(interrupt.heard)
    spoken = _spoken.get(cut)
    if spoken is None:
        return  # not a reply of this step's (a re-prompt, say)
    answer, start = spoken
    position = start + len(heard)
    unheard = answer.text[position:].strip() or not answer.done
    if unheard and settings.mark_cuts:
        _mark_last_turn(call)  # (the turn before it is the caller's if nothing was heard)
    # Replies queued behind the cut one were stopped with it: too tangled to resume.
    queued = any(r.id > cut.id and r.interrupted_at is not None for r in call.replies)
    if not unheard or queued or not cut.sent.startswith(heard):
        answer.cancel()  # heard in full (a normal new turn follows), or not resumable
        return
    resume = state.resume = _Resume(answer, position)
    loop = asyncio.get_running_loop()
    resume.timer = loop.call_later(settings.resume_wait, _resume_now, call, resume, settings)


async def on_dtmf(call: CallSession, dtmf: Dtmf, settings: TurnSettings | None = None) -> None:
    state = _turns(call)
    _stop_listening(state)
    state.reprompted = 0
    if state.resume is not None:  # the caller did something: no resuming
        _take_resume(state).answer.cancel()


async def on_close(call: CallSession, settings: TurnSettings | None = None) -> None:
    state = _calls.pop(call, None)
    if state is None:
        return
    _stop_listening(state)
    if state.resume is not None:
        _take_resume(state)
    for answer in list(state.answers):
        answer.cancel()


# -- speaking an answer -----------------------------------------------------------------------


async def _speak(
    call: CallSession,
    answer: Answer,
    start: int,
    settings: TurnSettings,
    *,
    hold_until: float | None = None,
    resumed: bool = False,
    before: list[dict[str, Any]] | None = None,
) -> None:
    """Send ``answer`` from ``start`` as this reply's talk cycle, and store what was sent.
    ``hold_until``: no word before then (``merge_wait``); ``resumed``: the words continue
    the last assistant turn, which loses its cut mark; ``before``: the history before the
    prompt, restored if Claude refuses (``relaylab.core.endings``)."""
    reply = call.reply
    assert reply is not None
    state = _turns(call)
    if answer not in state.answers:  # kept while its stream is open, for on_close
        state.answers.add(answer)
        answer.task.add_done_callback(lambda _: state.answers.discard(answer))
    _spoken[reply] = (answer, start)
    base = _continued_turn(call) if resumed else None
    position = start
    finished = False
    ending: endings.Ending | None = None
    try:
        if hold_until is not None and (wait := hold_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if resumed:
            await _close_cut_cycle(call)
        while True:
            if position < len(answer.text):
                chunk = answer.text[position:]
                position += len(chunk)
                await call.send_text(chunk)
            elif answer.done:
                break
            else:
                await answer.changed()
        if answer.error is not None:
            raise answer.error
        ending = answer.ending
        if ending is not None and not ending.say and reply.sent:
            await call.send_text("", last=True)
        finished = True
    finally:
        _store(call, reply.sent, base, answer.ending if finished else None, answer.text)
        if finished and ending is not None and ending.forget_prompt and before is not None:
            call.conversation[:] = before  # a refusal: its prompt leaves the context too
        if reply.heard is None:  # not interrupted: nothing can resume this answer
            answer.cancel()
    if ending is not None and ending.say:
        await call.say(ending.say)  # the relay's own line (relaylab.core.endings): not stored
    _listen_for_silence(call, settings, after=reply.sent)


def _store(
    call: CallSession,
    sent: str,
    base: dict[str, Any] | None,
    ending: endings.Ending | None,
    whole: str = "",
) -> None:
    """Store what a reply sent: after the turn it continues (a resumed reply), else as a
    turn of its own (merged with an assistant turn before it, as ``add_assistant`` does).
    An ``ending`` that cuts the answer short marks it as ``relaylab.core.endings`` says; one
    that stores nothing (a refusal, no words) leaves it out. (None: the reply was
    cancelled or failed; an interrupt, or the session's apology, then cuts or marks it.)"""
    if ending is not None and ending.store is None:
        return
    if base is not None and call.conversation and call.conversation[-1] is base:
        base["content"] = (base["content"] + sent).rstrip()
    else:
        call.conversation.add_assistant(sent)
    if ending is not None and ending.store != whole.strip():  # (``whole``: the answer)
        endings.mark_cut(call.conversation, sent)
    if ending is not None and ending.trim_history:  # the model's context is full
        call.conversation.trim_to(len(str(call.conversation)) // 2)


def _continued_turn(call: CallSession) -> dict[str, Any] | None:
    """The last turn, Claude's cut turn that a resumed reply continues, without its mark."""
    turn = call.conversation[-1] if call.conversation else None
    if not (isinstance(turn, dict) and turn.get("role") == "assistant"):
        return None
    if not isinstance(turn.get("content"), str):
        return None
    turn["content"] = without_cut_mark(turn["content"])
    return turn


def _mark_last_turn(call: CallSession) -> None:
    turn = call.conversation[-1] if call.conversation else None
    if (
        isinstance(turn, dict)
        and turn.get("role") == "assistant"
        and isinstance(turn["content"], str)
    ):
        turn["content"] = mark_cut(turn["content"])


async def _close_cut_cycle(call: CallSession) -> None:
    """Close the cut reply's talk cycle with one empty ``last: true``, unless the last text
    frame sent already closed one (so a resumed reply is a talk cycle of its own)."""
    for direction, frame in reversed(call.frames):
        message = json.loads(frame) if direction == "out" else None
        if isinstance(message, dict) and message.get("type") == "text":
            if not message.get("last"):
                await call.send(protocol.text("", True))
            return


# -- resuming, and listening for silence -------------------------------------------------------


def _open_stream(call: CallSession, messages: list[Any]) -> AsyncMessageStreamManager:
    """Claude's streamed reply to ``messages``, as the tracking step asks for it."""
    return call.claude.messages.stream(
        messages=messages, model=call.model, max_tokens=call.max_tokens, system=call.system
    )


def _cut_reply(call: CallSession) -> RelayReply | None:
    """The reply the latest interrupt cut: the oldest of those it stopped."""
    stopped = [(r.interrupted_at, r) for r in call.replies if r.interrupted_at is not None]
    if not stopped:
        return None
    at = max(when for when, _ in stopped)
    return next(r for when, r in stopped if when == at)


def _take_resume(state: _Turns) -> _Resume:
    resume = state.resume
    assert resume is not None
    state.resume = None
    if resume.timer is not None:
        resume.timer.cancel()
    return resume


def _resume_now(call: CallSession, resume: _Resume, settings: TurnSettings) -> None:
    """No prompt came after the interrupt: the reply goes on where the caller stopped."""
    state = _calls.get(call)
    if call.closed or state is None or state.resume is not resume:
        return
    _take_resume(state)
    log.info("Call %s: nothing said after the interrupt: resuming", loggable(call.call_sid))
    call.start_reply(lambda c: _speak(c, resume.answer, resume.position, settings, resumed=True))


def _still_speaking(call: CallSession) -> bool:
    """Is a reply that has begun to speak still running (the prompt came over it)?"""
    current = call.reply
    return any(r.running and r.sent and r is not current for r in call.replies)


def _listen_for_silence(call: CallSession, settings: TurnSettings, after: str) -> None:
    """Ask ``reprompt`` (or say ``goodbye``) if nothing is said for ``silence_after`` seconds
    once the relay has stopped talking: when Twilio reports speaker events (``agentSpeaking``
    info frames), from when it says the voice went quiet; otherwise from an estimate of how
    long ``after``, just sent, takes to say. Any prompt, interrupt or key stops listening."""
    state = _turns(call)
    _stop_listening(state)
    if call.closed:
        return
    now = time.monotonic()
    state.quiet_until = now + speech_seconds(after, settings.words_per_minute)
    state.quiet_since = None
    state.silence = asyncio.get_running_loop().call_later(SILENCE_POLL, _on_silence, call, settings)


def _stop_listening(state: _Turns) -> None:
    if state.silence is not None:
        state.silence.cancel()
        state.silence = None


def _on_silence(call: CallSession, settings: TurnSettings) -> None:
    """One look at the line: re-prompt or say goodbye once it has been quiet long enough."""
    state = _calls.get(call)
    if call.closed or state is None:
        return
    now = time.monotonic()
    busy = state.resume is not None or any(r.running for r in call.replies)
    if busy or call.agent_speaking:
        state.quiet_since = None
    elif call.agent_speaking is None:  # no reports: quiet once the estimate has passed
        state.quiet_since = state.quiet_until if now >= state.quiet_until else None
    else:
        state.quiet_since = state.quiet_since or now
    if state.quiet_since is None or now - state.quiet_since < settings.silence_after:
        state.silence = asyncio.get_running_loop().call_later(
            SILENCE_POLL, _on_silence, call, settings
        )
        return
    state.silence = None
    if state.reprompted < settings.reprompts:
        state.reprompted += 1
        log.info("Call %s: silence: asking if the caller is still there", loggable(call.call_sid))
        call.start_reply(lambda c: _say_line(c, settings.reprompt, settings))
    else:
        log.info("Call %s: silence after the re-prompt: saying goodbye", loggable(call.call_sid))
        call.start_reply(lambda c: _say_line(c, settings.goodbye, settings, end=True))


async def _say_line(
    call: CallSession, line: str, settings: TurnSettings, *, end: bool = False
) -> None:
    """Say a fixed line as a reply of its own (and store it); then listen, or end the call."""
    try:
        await call.send_text(line, last=True)
    finally:
        call.conversation.add_assistant(call.reply.sent if call.reply else "")
    if end:
        await _until_spoken(call, line, settings)
        with contextlib.suppress(HungUp):
            await call.end({"reason": "silence"})
    else:
        _listen_for_silence(call, settings, after=line)


async def _until_spoken(call: CallSession, line: str, settings: TurnSettings) -> None:
    """Wait until ``line``, just sent, has been spoken: until Twilio's agentSpeaking goes
    off when it reports it, else for as long as the voice should take (a session ``end``
    may cut off speech still playing)."""
    estimate = speech_seconds(line, settings.words_per_minute) + 0.3
    if call.agent_speaking is None:
        await asyncio.sleep(estimate)
        return
    deadline = time.monotonic() + 2 * estimate
    await asyncio.sleep(SILENCE_POLL)  # let its agentSpeaking "on" arrive first
    while call.agent_speaking and time.monotonic() < deadline:
        await asyncio.sleep(SILENCE_POLL / 2)


def _said(call: CallSession, prompt: Prompt) -> str:
    return f"Call {loggable(call.call_sid)}: the caller said only {loggable(prompt.voice_prompt)}"
