"""Lesson 2: token streaming. Forward each token the moment Claude writes it.

The caller starts hearing the reply after the first token instead of the last.
Like the seed's step 2, this step ignores interruptions: lesson 3 fixes that.

Replies stream through the SDK's ``messages.stream()``, as lesson 2's notebook teaches.
``relaylab serve`` reads the same stream with ``relaylab.relay.llm.stream_reply`` instead
(``call.fast_stream``): it reads the events as the SDK does (tests/test_sse.py) but keeps
only what a relay needs, skipping a typed SDK object per token, which at 200 concurrent
calls is most of the relay's CPU (see bench/).
"""

from __future__ import annotations

from typing import Any

from relaylab.core.endings import EMPTY_LINE
from relaylab.core.protocol import Prompt
from relaylab.relay.caching import cached_messages, cached_system
from relaylab.relay.llm import ReplyStream, SDKReplyStream, stream_reply
from relaylab.relay.session import CallSession

name = "streaming"


def request(call: CallSession) -> dict[str, object]:
    """The request settings of every reply of this call (the messages aside)."""
    return {"model": call.model, "max_tokens": call.max_tokens, "system": call.system}


async def forward(
    call: CallSession, messages: list, **options: Any
) -> ReplyStream | SDKReplyStream:
    """Stream Claude's reply to ``messages`` to the caller piece by piece, without ending
    the talk cycle; return the finished stream (its ``stop_reason`` and ``content``).
    ``options`` add to or replace the request's settings (e.g. ``thinking``)."""
    settings = {**request(call), **options}
    if call.prompt_caching:  # lesson 7: Claude reads the unchanged prefix from its cache
        settings["system"] = cached_system(settings["system"])
        messages = cached_messages(list(messages))
    reply: ReplyStream | SDKReplyStream
    if call.fast_stream:  # relaylab serve: the same events, read for less CPU
        reply = stream_reply(call.claude, messages=messages, **settings)
    else:
        reply = SDKReplyStream(call.claude.messages.stream(messages=messages, **settings))
    # Leaving the `async with` (done or cancelled) closes the HTTP request.
    async with reply as stream:
        async for text in stream:
            await call.send_text(text)
    return stream


async def ai_response_stream(call: CallSession) -> str:
    """Stream Claude's reply to the caller piece by piece; return the whole text (a short
    line instead, when Claude said nothing: never dead air, never an empty turn)."""
    stream = await forward(call, call.conversation)
    if not stream.text.strip():
        await call.send_text(EMPTY_LINE, last=True)
        return EMPTY_LINE
    await call.send_text("", last=True)
    return stream.text


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = await ai_response_stream(call)
    call.conversation.append({"role": "assistant", "content": reply})
