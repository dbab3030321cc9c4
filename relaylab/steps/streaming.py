"""Lesson 2: token streaming. Forward each token the moment Claude writes it.

The caller starts hearing the reply after the first token instead of the last.
Like the seed's step 2, this step ignores interruptions: lesson 3 fixes that.

Replies stream through the SDK's ``messages.stream()``, as lesson 2's notebook teaches.
(``relaylab serve --fast-stream`` gives the steps a client whose ``messages.stream()`` reads
the same events lean, with the same surface: see ``relaylab.relay.streams``.)
"""

from __future__ import annotations

from typing import Any

from anthropic.types import Message

from relaylab.core.endings import EMPTY_LINE
from relaylab.core.protocol import Prompt
from relaylab.relay.caching import cached_messages, cached_system
from relaylab.relay.session import CallSession

name = "streaming"


def request(call: CallSession) -> dict[str, object]:
    """The request settings of every reply of this call (the messages aside)."""
    return {"model": call.model, "max_tokens": call.max_tokens, "system": call.system}


async def forward(call: CallSession, messages: list, **options: Any) -> Message:
    """Stream Claude's reply to ``messages`` to the caller piece by piece, without ending
    the talk cycle; return the final message (its ``stop_reason`` and ``content``).
    ``options`` add to or replace the request's settings (e.g. ``thinking``)."""
    settings = {**request(call), **options}
    if call.prompt_caching:  # lesson 7: Claude reads the unchanged prefix from its cache
        settings["system"] = cached_system(settings["system"])
        messages = cached_messages(list(messages))
    # Leaving the `async with` (done or cancelled) closes the HTTP request.
    async with call.claude.messages.stream(messages=messages, **settings) as stream:
        async for text in stream.text_stream:
            await call.send_text(text)
        return await stream.get_final_message()


def text_of(message: Message) -> str:
    """The text of a message's text blocks, joined."""
    return "".join(block.text for block in message.content if block.type == "text")


def blocks_of(message: Message) -> list[dict[str, Any]]:
    """A message's content blocks as dicts, as a request sends them back (no null fields)."""
    return [block.model_dump(exclude_none=True) for block in message.content]


async def ai_response_stream(call: CallSession) -> str:
    """Stream Claude's reply to the caller piece by piece; return the whole text (a short
    line instead, when Claude said nothing: never dead air, never an empty turn)."""
    text = text_of(await forward(call, call.conversation))
    if not text.strip():
        await call.send_text(EMPTY_LINE, last=True)
        return EMPTY_LINE
    await call.send_text("", last=True)
    return text


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = await ai_response_stream(call)
    call.conversation.append({"role": "assistant", "content": reply})
