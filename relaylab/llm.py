"""The AsyncAnthropic client: the real Claude, or the offline stand-in, with the same code.

Which one is decided once per Lab (or per ``relaylab serve``):
1. ``offline=True``: the local stand-in, always.
2. ``ANTHROPIC_BASE_URL`` set: that server (any Messages API server), with
   ``ANTHROPIC_API_KEY`` if set.
3. ``ANTHROPIC_API_KEY`` set: the real Claude.
4. Otherwise: the local stand-in, so a workshop works with no accounts.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anthropic

DEFAULT_MODEL = "claude-haiku-5-5"
DEFAULT_MAX_TOKENS = 400
OFFLINE_API_KEY = "offline-stand-in"

SYSTEM_PROMPT = (
    "You are a helpful assistant on a phone call. Everything you write is spoken aloud by "
    "a text-to-speech voice, so write the way people talk: short sentences, no lists, no "
    "markdown, no emoji, no symbols. Spell out numbers, dates and units in words. Keep "
    "answers brief unless the caller asks for detail. If the caller interrupts you, the "
    "conversation shows only what they heard before they spoke."
)


@dataclass(frozen=True)
class Backend:
    """Where model requests go: ``kind`` is "offline", "custom" or "anthropic"."""

    kind: str
    base_url: str | None
    api_key: str | None

    def describe(self) -> str:
        if self.kind == "offline":
            return "the offline stand-in for Claude (no API key used)"
        if self.kind == "custom":
            return f"the Messages API server at {self.base_url}"
        return "the real Claude (ANTHROPIC_API_KEY is set)"


def choose_backend(offline: bool | None = None, env: Mapping[str, str] | None = None) -> Backend:
    """Pick the backend from ``offline`` and the environment (see the module docstring)."""
    env = os.environ if env is None else env
    if offline:
        return Backend("offline", None, None)
    key = env.get("ANTHROPIC_API_KEY") or None
    base_url = env.get("ANTHROPIC_BASE_URL") or None
    if base_url:
        return Backend("custom", base_url, key)
    if key:
        return Backend("anthropic", None, key)
    if offline is False:
        raise ValueError("offline=False needs ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL) to be set")
    return Backend("offline", None, None)


@dataclass(frozen=True)
class LLM:
    """The client and the request settings every step uses."""

    client: anthropic.AsyncAnthropic
    model: str = DEFAULT_MODEL
    system: str = SYSTEM_PROMPT
    max_tokens: int = DEFAULT_MAX_TOKENS


def make_llm(
    backend: Backend,
    *,
    offline_url: str | None = None,
    model: str | None = None,
    max_retries: int = 1,
    timeout: float = 30.0,
    aiohttp: bool = False,
) -> LLM:
    """Build the client for ``backend``; ``offline_url`` is the running stand-in's base URL.

    ``aiohttp=True`` uses the SDK's aiohttp transport, which reads a token stream for about
    a fifth less CPU than the default (see bench/). Its session belongs to the first event
    loop that uses it, so it suits ``relaylab serve`` (one loop), not a Lab whose client a
    notebook may also await from its own loop.
    """
    if backend.kind == "offline":
        if offline_url is None:
            raise ValueError("the offline backend needs the stand-in's URL")
        base_url, api_key = offline_url, OFFLINE_API_KEY
    else:
        base_url, api_key = backend.base_url, backend.api_key or OFFLINE_API_KEY
    client = anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=max_retries,
        timeout=timeout,
        http_client=anthropic.DefaultAioHttpClient(timeout=timeout) if aiohttp else None,
    )
    return LLM(client=client, model=model or os.environ.get("ANTHROPIC_MODEL") or DEFAULT_MODEL)


async def stream_text(client: anthropic.AsyncAnthropic, **request: Any) -> AsyncIterator[str]:
    """Claude's reply as text, piece by piece as it arrives: what a relay forwards.

    The same request as ``client.messages.create(stream=True, ...)``, read differently:
    the SDK builds a typed event object for every token, which at a few hundred calls
    is most of a relay's CPU (see bench/). Here the server-sent events are read as they
    come and only the text is kept; when the transport hands over several tokens at once
    (the aiohttp one does, when the relay fell behind) they come out as one piece, so the
    caller gets one frame, not several.
    Leaving the loop early closes the HTTP request. HTTP errors are the SDK's own; an
    ``error`` event mid-stream raises ``anthropic.APIError``.
    """
    async with client.messages.with_streaming_response.create(stream=True, **request) as response:
        pending = b""
        async for chunk in response.iter_bytes():
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            text = "".join(_text_of(event, response) for event in events)
            if text:
                yield text


def _text_of(event: bytes, response: Any) -> str:
    """The text a server-sent event adds to the reply ("" for every other event)."""
    head, _, data = event.partition(b"data: ")
    if b"content_block_delta" not in head:
        if b"event: error" in head:
            body = json.loads(data)
            message = body.get("error", {}).get("message", "the stream reported an error")
            raise anthropic.APIError(message, response.http_request, body=body)
        return ""
    delta = json.loads(data)["delta"]
    return delta.get("text", "") if delta.get("type") == "text_delta" else ""
