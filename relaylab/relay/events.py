"""What happened on a call, for widgets, logs and tests: events and who listens to them.

Nothing here knows about sockets or models. A relay serving real calls usually has
no listeners, and then emitting costs one check and builds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the session emits these events, so it sits above this module
    from relaylab.relay.session import CallSession, RelayReply

log = logging.getLogger("relaylab.relay.events")


class EventKind(StrEnum):
    """Every kind of event, with the fields of ``Event`` it fills in."""

    FRAME_IN = "frame_in"
    """``frame``: the inbound frame as received."""
    FRAME_OUT = "frame_out"
    """``frame``: the outbound frame as sent; ``reply``: the reply it goes with (the
    reply whose hook sent it, else the latest; None before any reply)."""
    REPLY_STARTED = "reply_started"
    """``reply``: a new reply of the relay's."""
    TOKEN = "token"
    """``reply``, ``token``: a text token sent for that reply."""
    HOLD = "hold"
    """``reply``: the caller heard the holding line while the model thought."""
    REPLY_ENDED = "reply_ended"
    """``reply``: finished, cancelled, failed or timed out (``reply.state`` says)."""
    INTERRUPT = "interrupt"
    """``reply``: the reply it cut (None: speech the relay never sent, or no reply yet);
    ``utterance``: Twilio's utteranceUntilInterrupt. ``reply.heard`` is set."""
    INFO = "info"
    """``name``, ``value``: an info frame from Twilio."""
    CONFIG_UPDATED = "config_updated"
    """``settings``: the session settings Twilio applied (configUpdated)."""
    CUT_OFF = "cut_off"
    """``reply``: a newer reply's speech cut it off (preemptible); ``reply.heard`` is set."""
    ERROR = "error"
    """``message``: what went wrong, for a learner."""
    TOOL_STARTED = "tool_started"
    """``reply``, ``run``: a tool call the relay began (a ``steps.tools.ToolRun``)."""
    TOOL_ENDED = "tool_ended"
    """``run``: the same ToolRun, now done, failed or cancelled."""
    CLOSED = "closed"
    """(nothing): the call is over."""


@dataclass(frozen=True)
class Event:
    """Something that happened on a call. ``session`` is the CallSession it happened on;
    the other fields are filled in as ``kind`` says (see ``EventKind``)."""

    kind: EventKind
    session: CallSession
    reply: RelayReply | None = None
    frame: str = ""
    token: str = ""
    utterance: str = ""
    name: str = ""
    value: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    run: Any = None  # a relaylab.steps.tools.ToolRun (a layer above this one)


Listener = Callable[[Event], None]


class EventBus:
    """Listeners for one call's events. A failing listener is logged, never fatal."""

    def __init__(self, owner: CallSession) -> None:
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

    def emit(
        self,
        kind: EventKind,
        *,
        reply: RelayReply | None = None,
        frame: str = "",
        token: str = "",
        utterance: str = "",
        name: str = "",
        value: Any = None,
        settings: dict[str, Any] | None = None,
        message: str = "",
        run: Any = None,
    ) -> None:
        """Tell every listener that ``kind`` happened, with its fields."""
        if not self._listeners:
            return  # nobody watching (relaylab serve): no Event per token and frame
        event = Event(
            EventKind(kind),
            self._owner,
            reply=reply,
            frame=frame,
            token=token,
            utterance=utterance,
            name=name,
            value=value,
            settings=settings if settings is not None else {},
            message=message,
            run=run,
        )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("an event listener failed on %r; the call goes on", str(kind))
