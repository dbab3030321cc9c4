"""What happened on a call, for widgets, logs and tests: events and who listens to them.

Nothing here knows about sockets or models. A relay serving real calls usually has
no listeners, and then emitting costs one check and builds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("relaylab.relay.events")

# Every kind of event, with the data it carries.
KINDS = (
    "frame_in",  # frame: the inbound frame as received
    "frame_out",  # frame: the outbound frame as sent
    "reply_started",  # reply: the session's Reply
    "token",  # reply, token: a text token sent for that reply
    "reply_ended",  # reply: finished, cancelled, failed or timed out (reply.state says)
    "interrupt",  # reply (None before any reply), utterance: utteranceUntilInterrupt
    "info",  # name, value: an info frame from Twilio
    "cut_off",  # reply: a newer reply's speech cut it off (preemptible); reply.heard is set
    "error",  # message: what went wrong, for a learner
    "tool_started",  # reply, run: a tool call the relay began (steps.tools.ToolRun)
    "tool_ended",  # run: the same ToolRun, now done, failed or cancelled
    "closed",  # (nothing): the call is over
)


@dataclass
class Event:
    """Something that happened on a call. ``session`` is the CallSession it happened on."""

    kind: str
    session: Any
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]


class EventBus:
    """Listeners for one call's events. A failing listener is logged, never fatal."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def emit(self, kind: str, **data: Any) -> None:
        if not self._listeners:
            return  # nobody watching (relaylab serve): no Event per token and frame
        event = Event(kind, self._owner, data)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("an event listener failed on %r; the call goes on", kind)
