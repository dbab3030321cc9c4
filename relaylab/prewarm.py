"""Pre-warming: open the connection to the model before the caller's first turn needs it.

The first request a relay sends to Claude opens a new HTTPS connection: a TCP handshake
and a TLS handshake before a byte of the request goes out (tens to a few hundred
milliseconds, depending on the distance to the API). Every later request reuses the
kept-alive connection. Without pre-warming the caller's first turn pays that cost.

``prewarm(client, model)`` makes a cheap documented request, the models API's
``client.models.retrieve(model)`` (the same lookup as the start-up check), so the SDK's
connection pool holds an open connection when the first prompt arrives. A relay does it
when Twilio requests ``/twiml`` (the phone is still ringing) and again at ``setup``.

The pool closes an idle connection after a while (httpx: 5 s; aiohttp: 15 s), so a call
whose first turn comes much later pays the handshake anyway; the second pre-warm, at
``setup``, narrows that gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

import anthropic

from relaylab.protocol import loggable

log = logging.getLogger("relaylab.prewarm")

RECENT = 1.0
"""Seconds after a pre-warm within which another one for the same client is skipped
(/twiml and setup follow each other closely)."""

_last: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
_tasks: set[asyncio.Task[bool]] = set()


async def prewarm(client: anthropic.AsyncAnthropic, model: str) -> bool:
    """Open (or refresh) a connection to the model with ``client.models.retrieve``;
    True when it answered. Never raises: a failed pre-warm only means the first turn
    opens its own connection."""
    now = time.monotonic()
    if now - _last.get(client, -RECENT) < RECENT:
        return True
    _last[client] = now
    try:
        await client.models.retrieve(model)
    except Exception as exc:
        log.info("pre-warming the model connection failed: %s", loggable(str(exc)))
        return False
    return True


def prewarm_soon(client: anthropic.AsyncAnthropic, model: str) -> asyncio.Task[bool]:
    """``prewarm`` as a background task (kept referenced until it ends)."""
    task = asyncio.get_running_loop().create_task(prewarm(client, model))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task
