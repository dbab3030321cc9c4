"""Lesson 3: conversation tracking with interruptions, done right.

Three rules on top of lesson 2:
1. One reply at a time: a new prompt cancels the reply still running (barge-in).
2. On an interrupt, cancel the reply at once; closing Claude's stream aborts the
   HTTP request, so no more tokens are generated or sent.
3. Store only what the caller heard, whether the reply had finished or not, so the
   next request tells Claude exactly how far it got.

And a fourth: every way a reply can end (a refusal, no words at all, cut off at
``max_tokens``, paused, the context full) has its own spoken line and stored turn,
decided in one place, ``relaylab.core.endings``; ``speak_reply`` follows it.

``add_user`` and ``add_assistant`` (rather than ``append``) merge two turns of the
same role and skip empty text, which keeps the history valid for the Messages API
whatever order things happen in.
"""

from __future__ import annotations

import functools
from typing import Any

from relaylab.core import endings
from relaylab.core.endings import Ending
from relaylab.core.protocol import Prompt
from relaylab.relay.session import CallSession, Interruption
from relaylab.relay.step import Step
from relaylab.steps.streaming import blocks_of, forward, text_of

name = "tracking"


def tracking_step(*, thinking_budget: int | None = None) -> Step:
    """The tracking step with extended thinking on, for models that support it: Claude may
    think for up to ``thinking_budget`` tokens (1,024 or more) before it speaks. Thinking
    is a sign of life, so past the voice budget the caller hears a holding line rather
    than the apology (``relaylab.relay.session.Limits``)."""
    if thinking_budget is not None and thinking_budget < 1024:
        raise ValueError("thinking_budget must be at least 1024 tokens (the API's minimum)")
    return Step(
        on_prompt=functools.partial(on_prompt, thinking_budget=thinking_budget),
        on_interrupt=on_interrupt,
        name=name,
    )


async def speak_reply(call: CallSession, thinking_budget: int | None = None) -> Ending:
    """Stream Claude's reply to the caller, carrying on a paused turn, and return how it
    ended. The talk cycle is ended here, unless the relay has a line of its own to add
    (``ending.say``): that is said after the turn is stored, and ends it."""
    messages = list(call.conversation)
    options: dict[str, Any] = {}
    if thinking_budget:  # max_tokens counts the thinking too
        options["thinking"] = {"type": "enabled", "budget_tokens": thinking_budget}
        options["max_tokens"] = call.max_tokens + thinking_budget
    continuations = 0
    while True:
        message = await forward(call, messages, **options)
        sent = call.reply.sent if call.reply else text_of(message)
        ending = endings.ending(message.stop_reason, sent, continuations=continuations)
        if not ending.continue_turn:
            break
        messages = endings.continuation(messages, blocks_of(message))
        continuations += 1
    if sent and not ending.say:
        await call.send_text("", last=True)  # the end of the talk cycle
    return ending


def store(call: CallSession, ending: Ending | None, before: list) -> None:
    """Store the reply as ``ending`` says (None: it was cancelled or failed, so what was
    sent, which on_interrupt then cuts to what was heard)."""
    if ending is None:
        call.conversation.add_assistant(call.reply.sent if call.reply else "")
        return
    if ending.forget_prompt:  # a refusal: the turn that caused it leaves the context
        call.conversation[:] = before
    if ending.store:
        call.conversation.add_assistant(ending.store)
    elif call.reply:
        call.reply.stored = False  # so an interrupt finds no turn of it to cut
    if ending.trim_history:  # the model's context is full: keep the newer half
        call.conversation.trim_to(len(str(call.conversation)) // 2)


async def on_prompt(call: CallSession, prompt: Prompt, thinking_budget: int | None = None) -> None:
    try:
        await call.cancel_reply()  # barge-in: the old reply stops before the new one starts
    finally:
        before = call.conversation.snapshot()
        call.conversation.add_user(prompt.voice_prompt)  # kept even if a newer prompt wins
    ending = None
    try:
        ending = await speak_reply(call, thinking_budget)
    finally:
        # Runs when the reply finishes and when it is cancelled. `call.reply` is this
        # prompt's reply; `.sent` is every token sent so far. on_interrupt then cuts
        # it down to what was heard.
        store(call, ending, before)
    if ending.say:
        await call.say(ending.say)  # the relay's own words: a sentence of their own


async def on_interrupt(call: CallSession, interrupt: Interruption) -> None:
    # Cancel first: the cancelled reply's `finally` above stores what it sent, and
    # only then is there a turn to cut down to the heard words. `interrupt.heard` is what
    # the relay worked out, once, of `interrupt.reply` (see relaylab.heard_prefix).
    await call.cancel_reply()
    if interrupt.reply is None or interrupt.reply.stored:  # (a refusal left nothing to cut)
        call.conversation.keep_heard(interrupt.heard)
