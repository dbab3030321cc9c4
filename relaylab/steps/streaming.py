"""Lesson 2: token streaming. Forward each token the moment Claude writes it.

The caller starts hearing the reply after the first token instead of the last.
Like the seed's step 2, this step ignores interruptions: lesson 3 fixes that.
"""

from __future__ import annotations

from relaylab.protocol import Prompt
from relaylab.session import CallSession

name = "streaming"


async def ai_response_stream(call: CallSession) -> str:
    """Stream Claude's reply to the caller token by token; return the whole text."""
    reply = ""
    async with call.claude.messages.stream(
        model=call.model,
        max_tokens=call.max_tokens,
        system=call.system,
        messages=call.conversation,
    ) as stream:
        async for token in stream.text_stream:
            reply += token
            await call.send_text(token)
    await call.send_text("", last=True)
    return reply


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = await ai_response_stream(call)
    call.conversation.append({"role": "assistant", "content": reply})
