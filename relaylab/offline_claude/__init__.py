"""A local stand-in for Claude: a small Messages API server on 127.0.0.1.

It speaks enough of Anthropic's Messages API (``POST /v1/messages``, JSON or
server-sent events, text and tool use) that the unmodified ``anthropic`` SDK works
against it::

    async with OfflineClaude() as claude:
        client = AsyncAnthropic(base_url=claude.base_url, api_key="offline")
        async with client.messages.stream(model="any", max_tokens=300, messages=[...]) as s:
            async for text in s.text_stream:
                ...

Replies are deterministic and written for the ear (numbers spelled out, no symbols),
paced like a real model (time to first token, then tokens per second), and every
request is recorded in ``claude.requests`` so tests can see exactly what the relay
sent and when it hung up. ``fail_next()`` makes the next requests fail the ways the
real API can fail, or end its next reply another way than ``end_turn`` (a refusal, no
words, ``max_tokens``, ``pause_turn``, a full context, an ``error`` event mid-stream,
thinking first). Requests are checked like the real API checks them (400s with its
messages, including ``tool_use`` / ``tool_result`` pairing and thinking budgets), and
``GET /v1/models`` and ``/v1/models/{id}`` answer as the models API does, for a
start-up check.

Modules: ``replies`` (what it says, tokens), ``tools`` (when and how it calls a tool),
``validation`` (the 400s), ``server`` (aiohttp.web, pacing, failures, records). It
never prints from a running server: it usually runs on a notebook's background thread,
so it logs to ``logging.getLogger("relaylab.offline_claude")``.
"""

from relaylab.offline_claude.replies import REPLIES, reply_for, tokenize
from relaylab.offline_claude.server import (
    FAILURE_KINDS,
    MODELS,
    OfflineClaude,
    RecordedRequest,
    TokenHook,
    main,
)
from relaylab.offline_claude.validation import InvalidRequest, validate

__all__ = [
    "FAILURE_KINDS",
    "MODELS",
    "REPLIES",
    "InvalidRequest",
    "OfflineClaude",
    "RecordedRequest",
    "TokenHook",
    "main",
    "reply_for",
    "tokenize",
    "validate",
]
