"""Lesson 2: token streaming. Forward each token the moment Claude writes it.

The caller starts hearing the reply after the first token instead of the last.
Like the seed's step 2, this step ignores interruptions: lesson 3 fixes that.

Lesson 2's notebook uses ``messages.stream()`` and its ``text_stream``, the SDK's
friendliest helper. Here the relay reads the raw events of ``create(stream=True)``
instead: the same text, without the helper rebuilding a snapshot of the whole message
for every token, which at 200 concurrent calls is the difference between a few
milliseconds and a few hundred of added latency (see bench/).
"""

from __future__ import annotations

from relaylab.protocol import Prompt
from relaylab.session import CallSession

name = "streaming"


async def ai_response_stream(call: CallSession) -> str:
    """Stream Claude's reply to the caller token by token; return the whole text."""
    reply = ""
    stream = await call.claude.messages.create(
        model=call.model,
        max_tokens=call.max_tokens,
        system=call.system,
        messages=call.conversation,
        stream=True,
    )
    async with stream:  # leaving it (done or cancelled) closes the HTTP request
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                reply += event.delta.text
                await call.send_text(event.delta.text)
    await call.send_text("", last=True)
    return reply


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = await ai_response_stream(call)
    call.conversation.append({"role": "assistant", "content": reply})
