"""Pre-warming: open the connection to the model before the caller's first turn needs it.

The first request a relay sends to Claude opens a new HTTPS connection: a TCP handshake
and a TLS handshake before a byte of the request goes out (tens to a few hundred
milliseconds, depending on the distance to the API). Every later request reuses the
kept-alive connection. Without pre-warming the caller's first turn pays that cost.

``prewarm(client, model)`` makes a cheap documented request, the models API's
``client.models.retrieve(model)`` (the same lookup as the start-up check), so the SDK's
connection pool holds an open connection when the first prompt arrives. A relay does it
when Twilio requests ``/twiml`` (the phone is still ringing), again at ``setup``, and on
a partial prompt (the caller is talking; at most once a second).

The pool closes an idle connection after a while (the SDK's httpx pool: 5 s; aiohttp:
15 s). Turns of a phone call are often further apart than that (the caller listens to
the reply, then thinks), so without the pre-warm on partial prompts a later turn may pay
the handshake again. That one needs ``partialPrompts``; without it only /twiml and
setup are warmed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

import anthropic

from relaylab.core.log_lines import loggable

log = logging.getLogger("relaylab.relay.prewarm")

RECENT = 1.0
"""Seconds after a pre-warm within which another one for the same client is skipped
(/twiml and setup follow each other closely)."""

_last: weakref.WeakKeyDictionary[Any, tuple[float, int]] = weakref.WeakKeyDictionary()
_tasks: set[asyncio.Task[bool]] = set()


async def prewarm(client: anthropic.AsyncAnthropic, model: str, connections: int = 1) -> bool:
    """Open (or refresh) ``connections`` connections to the model with concurrent
    ``client.models.retrieve`` lookups; True when they answered. Never raises: a failed
    pre-warm only means the first turn opens its own connection. (A speculating relay
    keeps two: cancelling a speculative request closes its connection.)"""
    now = time.monotonic()
    at, opened = _last.get(client, (-RECENT, 0))
    if now - at < RECENT and opened >= connections:
        return True
    _last[client] = (now, connections)
    try:
        await asyncio.gather(*(client.models.retrieve(model) for _ in range(connections)))
    except Exception as exc:
        log.info("pre-warming the model connection failed: %s", loggable(str(exc)))
        return False
    return True


def prewarm_soon(
    client: anthropic.AsyncAnthropic, model: str, connections: int = 1
) -> asyncio.Task[bool]:
    """``prewarm`` as a background task (kept referenced until it ends)."""
    task = asyncio.get_running_loop().create_task(prewarm(client, model, connections))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task
