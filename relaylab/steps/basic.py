"""Lesson 1: a basic reply. Wait for Claude's whole answer, then send it as one frame.

The caller hears nothing until the full reply is written: simple, and slow.
"""

from __future__ import annotations

from relaylab.core.endings import EMPTY_LINE
from relaylab.core.protocol import Prompt
from relaylab.relay.session import CallSession

name = "basic"


async def ai_response(call: CallSession) -> str:
    """Ask Claude for the whole reply to the conversation so far."""
    message = await call.claude.messages.create(
        model=call.model,
        max_tokens=call.max_tokens,
        system=call.system,
        messages=call.conversation,
    )
    return "".join(block.text for block in message.content if block.type == "text")


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    # No words is possible too. An empty turn would make every later request fail with a
    # 400, so the caller hears (and the history keeps) a short line instead.
    reply = (await ai_response(call)).strip() or EMPTY_LINE
    call.conversation.append({"role": "assistant", "content": reply})
    await call.send_text(reply, last=True)
