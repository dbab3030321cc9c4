"""Lesson 2: token streaming. Forward each token the moment Claude writes it.

The caller starts hearing the reply after the first token instead of the last.
Like the seed's step 2, this step ignores interruptions: lesson 3 fixes that.

Lesson 2's notebook uses ``messages.stream()`` and its ``text_stream``, the SDK's
friendliest helper. The relay reads the same stream through ``relaylab.llm.stream_text``,
which keeps only the text and skips building a typed SDK object per token: at 200
concurrent calls that is most of the relay's CPU (see bench/).
"""

from __future__ import annotations

from relaylab.llm import stream_text
from relaylab.protocol import Prompt
from relaylab.session import CallSession

name = "streaming"


async def ai_response_stream(call: CallSession) -> str:
    """Stream Claude's reply to the caller piece by piece; return the whole text."""
    reply = ""
    request = {"model": call.model, "max_tokens": call.max_tokens, "system": call.system}
    # Leaving the loop (done or cancelled) closes the HTTP request.
    async for text in stream_text(call.claude, messages=call.conversation, **request):
        reply += text
        await call.send_text(text)
    await call.send_text("", last=True)
    return reply


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = await ai_response_stream(call)
    call.conversation.append({"role": "assistant", "content": reply})
