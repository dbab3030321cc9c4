"""Lesson 3: conversation tracking with interruptions, done right.

Three rules on top of lesson 2:
1. One reply at a time: a new prompt cancels the reply still running (barge-in).
2. On an interrupt, cancel the reply at once; closing Claude's stream aborts the
   HTTP request, so no more tokens are generated or sent.
3. Store only what the caller heard, whether the reply had finished or not, so the
   next request tells Claude exactly how far it got.

``add_user`` and ``add_assistant`` (rather than ``append``) merge two turns of the
same role and skip empty text, which keeps the history valid for the Messages API
whatever order things happen in.
"""

from __future__ import annotations

from relaylab.protocol import Interrupt, Prompt
from relaylab.session import CallSession
from relaylab.steps.streaming import ai_response_stream

name = "tracking"


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    try:
        await call.cancel_reply()  # barge-in: the old reply stops before the new one starts
    finally:
        call.conversation.add_user(prompt.voice_prompt)  # kept even if a newer prompt wins
    try:
        await ai_response_stream(call)
    finally:
        # Runs when the reply finishes and when it is cancelled. `call.reply` is this
        # prompt's reply; `.sent` is every token sent so far. on_interrupt then cuts
        # it down to what was heard.
        call.conversation.add_assistant(call.reply.sent)


async def on_interrupt(call: CallSession, interrupt: Interrupt) -> None:
    # Cancel first: the cancelled reply's `finally` above stores what it sent, and
    # only then is there a turn to cut down to the heard words. `call.heard` is what
    # the relay worked out from the interrupt (see relaylab.conversation.heard_prefix).
    await call.cancel_reply()
    call.conversation.keep_heard(call.heard)
