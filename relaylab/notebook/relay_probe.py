"""RelayProbe: the one window a simulated call has onto the relay's side of itself.

A SimulatedCall only speaks the wire, as Twilio does; the history the relay stored for the
call lives in the relay. Whoever runs both (the Lab) hands each call a probe, which finds
the call's CallSession among the sessions the relay opened and answers once the relay has
handled every frame the call sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relaylab.relay.polling import until
from relaylab.relay.session import CallSession


class RelayProbe:
    """The relay's side of one simulated call: its session and its stored history.

    One per call; it keeps hold of the call's session, which the relay forgets at hang-up.
    """

    SETTLE_TIMEOUT = 2.0  # seconds to wait for the relay to catch up with the call

    def __init__(self, sessions: Iterable[CallSession], call_sid: str) -> None:
        self._sessions = sessions  # every session the relay opened (a Lab's recent ones)
        self.call_sid = call_sid
        self._session: CallSession | None = None

    async def session(self, frames_sent: int) -> CallSession | None:
        """The call's session once it has handled ``frames_sent`` frames (or 2 s passed);
        None if the relay never saw the call."""

        def settled() -> bool:
            self._session = self._session or next(
                (s for s in self._sessions if s.call_sid == self.call_sid), None
            )
            session = self._session
            return session is not None and (session.closed or session.caught_up(frames_sent))

        await until(settled, self.SETTLE_TIMEOUT)
        return self._session

    async def history(self, frames_sent: int) -> list[dict[str, Any]] | None:
        """The relay's stored history for the call once it has handled ``frames_sent``
        frames from it (None if the relay does not know the call)."""
        session = await self.session(frames_sent)
        return session.conversation.snapshot() if session is not None else None
