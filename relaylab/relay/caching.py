"""Prompt caching: mark the request so Claude reuses the prefix it has already read.

Each turn of a call re-sends the system prompt and the whole conversation so far. With
prompt caching (Anthropic's docs, "Prompt caching") the API stores a prefix of the
request at each block marked ``cache_control: {"type": "ephemeral"}`` and a later
request that starts with the same prefix reads it from the cache, for a tenth of the
price of input tokens and a shorter time to first token on long prompts. The rules the
marks follow here:

- The order of a request's prefix is tools, then ``system``, then ``messages``.
- At most 4 blocks may carry ``cache_control`` (breakpoints); this uses two: the system
  prompt (the same on every turn of every call) and the last block of the last message
  (the conversation so far, written on this turn and read on the next: the API looks
  for a cached prefix at each block boundary up to about 20 blocks before a breakpoint).
- A prefix shorter than the model's minimum (1,024 tokens for most models, more for
  some: the docs list each) is not cached, even when marked; nothing fails, and usage
  shows no cache tokens. A short system prompt alone is below it: caching pays off for
  long instructions (a knowledge base, tools) and long calls.
- A cached prefix lives 5 minutes after its last use (``"ttl": "1h"`` for an hour, at
  a higher write price).

``usage.cache_creation_input_tokens`` and ``usage.cache_read_input_tokens`` report
what was written and read; ``usage.input_tokens`` counts only the tokens after the last
breakpoint. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4


def cached_system(system: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The system prompt as text blocks, its last block marked for caching."""
    blocks: list[dict[str, Any]] = (
        [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
    )
    if blocks:
        blocks[-1] = {**blocks[-1], "cache_control": dict(EPHEMERAL)}
    return blocks


def cached_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the last block of the last message marked for caching (a copy:
    the call's own history is never changed). Earlier marks are left out, so a request
    never carries more breakpoints than it needs."""
    marked = [_unmarked(m) for m in messages]
    if not marked:
        return marked
    last = marked[-1]
    content = last.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}] if content else []
    if content:
        content = [*content[:-1], {**content[-1], "cache_control": dict(EPHEMERAL)}]
        marked[-1] = {**last, "content": content}
    return marked


def _unmarked(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    blocks = [
        {k: v for k, v in b.items() if k != "cache_control"} if isinstance(b, dict) else b
        for b in content
    ]
    return {**message, "content": blocks}


def cached_request(request: dict[str, Any]) -> dict[str, Any]:
    """A Messages API request (system and messages) with both breakpoints set."""
    marked = dict(request)
    if marked.get("system"):
        marked["system"] = cached_system(marked["system"])
    if "messages" in marked:
        marked["messages"] = cached_messages(list(marked["messages"]))
    return marked
