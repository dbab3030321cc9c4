"""Reconnects that keep the call: admitting a socket, saving the call, picking it up again.

The TwiML the relay serves names the call in its socket URL (``/ws?call=CA...``, plus a
``token`` when TWILIO_AUTH_TOKEN is set). When that socket opens, ``SavedCalls.admit`` looks the
call up in the session store (relaylab.relay.store):

- nothing saved: a new call. With an auth token, the URL's token must be fresh and
  unused (it is claimed in the store, so it opens one session, once, on any relay
  sharing the store);
- saved and dropped (its socket went without the call ending, or the relay holding it
  stopped or died): a reconnect. The new session gets the history, replies and
  settings, with or without a new ``setup`` frame, and Twilio's buffered events are then
  handed to it in order. Each drop grants one reconnect: the first socket to claim it
  wins, any other is refused;
- saved and live on a relay that is still running, or ended: refused, so a replayed
  handshake opens nothing.

While a call runs, its state is saved after each reply, interrupt and tool call; when its
socket drops, the reply that was playing is stored as what had played and marked cut
(relaylab.relay.call_state). A call that ends is deleted (a small tombstone refuses
reconnects for a while); a dropped one waits ``RECONNECT_WINDOW`` seconds.

A plain ``/ws`` with no call in its URL is a new call every time, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from relaylab.core.log_lines import loggable
from relaylab.relay import call_state, call_tokens
from relaylab.relay.events import Event, EventKind
from relaylab.relay.session import CallSession
from relaylab.relay.store import SessionStore

log = logging.getLogger("relaylab.relay.resume")

RECONNECT_WINDOW = 120.0
"""Seconds a dropped call's state waits for its reconnect; then it is gone."""
LIVE_TTL = 4 * 3600.0
"""Seconds a live call's state is kept after its last save (Twilio's longest call)."""
HEARTBEAT = 5.0
"""Seconds between a relay's "still running" marks: a call held by a relay whose mark
expired (after 3 heartbeats) is taken as dropped, so its reconnect can land elsewhere."""
SAVE_DELAY = 0.05  # seconds changes are gathered before one save
# The events after which the call's saved state is out of date.
_STATE_CHANGES = frozenset(
    {
        EventKind.REPLY_STARTED,
        EventKind.REPLY_ENDED,
        EventKind.INTERRUPT,
        EventKind.CUT_OFF,
        EventKind.TOOL_ENDED,
    }
)
TAKEOVER_WAIT = 3.0
"""Seconds a reconnect waits for the relay that held the call to record the drop (a
reconnect can arrive before the old socket's end is noticed); then it is refused."""
_CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")

Problem = tuple[int, str]


@dataclass
class Admission:
    """A socket the relay accepts: the call its URL names (None: a plain /ws) and, for a
    reconnect, the call's saved state."""

    call_sid: str | None = None
    state: dict[str, Any] | None = None
    connection: int = 0  # 0 for the call's first socket, 1 for its first reconnect, ...


@dataclass(eq=False)
class _Watch:
    session: CallSession
    call_sid: str
    connection: int
    dirty: bool = False
    saving: asyncio.Task[None] | None = None
    done: bool = False
    unsubscribe: Callable[[], None] = field(default=lambda: None)


class SavedCalls:
    """The calls this relay saves in the session store, for reconnects: their socket URLs,
    admitting a socket, saving each call as it runs and the final word when it ends."""

    def __init__(self, store: SessionStore, *, auth_token: str | None) -> None:
        self.store = store
        self.auth_token = auth_token
        self.instance = uuid.uuid4().hex  # this relay process, for the "still running" mark
        self._watched: dict[CallSession, _Watch] = {}
        self._ending: dict[str, asyncio.Task[None]] = {}  # calls whose socket end is recorded
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._beat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beating())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        with contextlib.suppress(Exception):
            await self.store.delete(f"relay:{self.instance}")
        await self.store.close()

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._beat()
            except Exception as exc:
                log.warning("could not mark this relay as running in the store: %s", exc)

    async def _beat(self) -> None:
        await self.store.put(f"relay:{self.instance}", "1", HEARTBEAT * 3)

    # -- the URL in the TwiML -----------------------------------------------------------

    def socket_url(self, ws_url: str, call_sid: str | None) -> str:
        """The socket URL for the TwiML of call ``call_sid`` (``ws_url`` as it is when the
        webhook named no call, or named it in a form the relay does not accept)."""
        if not call_sid or not _CALL_SID.fullmatch(call_sid):
            return ws_url
        token = call_tokens.mint(self.auth_token, call_sid) if self.auth_token else None
        return call_tokens.call_url(ws_url, call_sid, token)

    # -- admitting a socket -------------------------------------------------------------

    async def admit(
        self, query: Mapping[str, str], live_here: Callable[[str], bool]
    ) -> Admission | Problem:
        """May a socket with this URL query open (and as which call)? ``live_here(call)``
        says whether this relay holds a live socket for the call."""
        call_sid = query.get("call")
        if call_sid is None:
            return Admission()
        if not _CALL_SID.fullmatch(call_sid):
            return HTTPStatus.BAD_REQUEST, f"Bad request: {loggable(call_sid)} is not a call id"
        nonce = None
        if self.auth_token:
            checked = call_tokens.check(self.auth_token, call_sid, query.get("token", ""))
            if isinstance(checked, str):
                return self._refuse(call_sid, checked)
            nonce, expires = checked
        state = await self._settled_state(call_sid, live_here)
        if state is None:
            if nonce is not None:
                if call_tokens.expired(expires):
                    return self._refuse(call_sid, "the socket URL's token has expired")
                ttl = max(expires - time.time(), 0) + 60
                if not await self.store.add(f"token:{nonce}", call_sid, ttl):
                    return self._refuse(call_sid, "the socket URL's token was already used")
            connection = 0
        else:
            why_not = await self._why_not_resume(state, live_here)
            if why_not:
                return self._refuse(call_sid, why_not)
            connection = int(state.get("connections", 1))
        # One socket per connection number: two sockets racing for one call, one wins.
        if not await self.store.add(f"socket:{call_sid}:{connection}", "1", RECONNECT_WINDOW):
            return self._refuse(call_sid, "another socket took this call first")
        if state is not None:
            log.info(
                "Call %s: reconnected (socket %d), with %d turns of history",
                loggable(call_sid),
                connection + 1,
                len(state.get("conversation") or []),
            )
        return Admission(call_sid, state, connection)

    async def _settled_state(
        self, call_sid: str, live_here: Callable[[str], bool]
    ) -> dict[str, Any] | None:
        """The call's saved state once any socket of it that went has been recorded."""
        deadline = time.monotonic() + TAKEOVER_WAIT
        while True:
            ending = self._ending.get(call_sid)
            if ending is not None:  # this relay is still recording the old socket's end
                await asyncio.wait([ending])
            state = call_state.load(await self.store.get(f"call:{call_sid}"))
            if state is None or state.get("status") != "live" or time.monotonic() > deadline:
                return state
            if not await self._why_not_resume(state, live_here):
                return state
            await asyncio.sleep(0.05)

    async def _why_not_resume(
        self, state: dict[str, Any], live_here: Callable[[str], bool]
    ) -> str | None:
        status, owner = state.get("status"), state.get("owner")
        if status == "ended":
            return "the call is over"
        if status != "live":
            return None  # dropped: this is its reconnect
        if owner == self.instance:
            held = live_here(state.get("call_sid", ""))
        else:
            held = await self.store.get(f"relay:{owner}") is not None
        return "the call is connected already" if held else None

    def _refuse(self, call_sid: str, reason: str) -> Problem:
        log.warning("refused a socket for call %s: %s", loggable(call_sid), reason)
        return HTTPStatus.FORBIDDEN, f"Forbidden: {reason}"

    # -- a session's life ---------------------------------------------------------------

    def opened(self, session: CallSession, admission: Admission) -> None:
        """A socket named ``admission.call_sid`` was accepted with ``session``: restore
        the call's state into it, and save it as it changes."""
        if admission.call_sid is None:
            return
        session.bound_call_sid = admission.call_sid
        session.call_sid = admission.call_sid
        if admission.state is not None:
            call_state.restore(session, admission.state)
            session.resumed = True
        watch = _Watch(session, admission.call_sid, admission.connection)
        self._watched[session] = watch
        watch.unsubscribe = session.subscribe(lambda event: self._changed(watch, event))
        self._schedule(watch, delay=0.0)  # marks the call live at once

    def _changed(self, watch: _Watch, event: Event) -> None:
        """Save the call's state soon after an event that changes it."""
        if event.kind in _STATE_CHANGES:
            self._schedule(watch)

    def _schedule(self, watch: _Watch, delay: float = SAVE_DELAY) -> None:
        watch.dirty = True
        if watch.saving is None or watch.saving.done():
            watch.saving = asyncio.get_running_loop().create_task(self._save_soon(watch, delay))

    async def _save_soon(self, watch: _Watch, delay: float) -> None:
        while watch.dirty and not watch.done:
            await asyncio.sleep(delay)
            delay = SAVE_DELAY
            # A handler (an interrupt's) may still be cutting the history: let it finish.
            running = [t for t in watch.session._handlers if not t.done()]
            if running:
                await asyncio.wait(running, timeout=watch.session.limits.cancel_wait)
            if watch.done:
                return
            watch.dirty = False
            await self._save(watch, "live", LIVE_TTL)

    async def _save(self, watch: _Watch, status: str, ttl: float) -> None:
        state = call_state.capture(watch.session, status)
        state["call_sid"] = watch.call_sid
        state["owner"] = self.instance
        state["connections"] = watch.connection + 1
        try:
            await self.store.put(f"call:{watch.call_sid}", call_state.dump(state), ttl)
        except Exception as exc:  # the call goes on; only a reconnect would miss it
            log.warning(
                "Call %s: could not save its state (%s); a reconnect would start afresh",
                loggable(watch.call_sid),
                loggable(exc),
            )

    def release(self, session: CallSession, *, dropped: bool) -> asyncio.Task[None]:
        """The socket is gone: close the session, then keep the call for its reconnect
        (``dropped``) or let it go (the call ended). A reconnect of the call waits for it."""
        watch = self._watched.get(session)
        task = asyncio.get_running_loop().create_task(self._release(session, dropped=dropped))
        if watch is not None:
            self._ending[watch.call_sid] = task
            task.add_done_callback(lambda _: self._ending.pop(watch.call_sid, None))
        return task

    async def _release(self, session: CallSession, *, dropped: bool) -> None:
        watch = self._watched.pop(session, None)
        if watch is None:
            await session.close()
            return
        watch.done = True
        watch.unsubscribe()
        settled = call_state.settle_drop(session) if dropped else []
        await session.close()
        if watch.saving is not None and not watch.saving.done():
            watch.saving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch.saving
        if dropped:
            call_state.store_drop(session, settled)
            await self._save(watch, "dropped", RECONNECT_WINDOW)
            log.info(
                "Call %s: the socket dropped; its state waits %.0f s for a reconnect",
                loggable(watch.call_sid),
                RECONNECT_WINDOW,
            )
            return
        ended = {"v": call_state.VERSION, "call_sid": watch.call_sid, "status": "ended"}
        try:
            await self.store.put(f"call:{watch.call_sid}", json.dumps(ended), RECONNECT_WINDOW)
        except Exception as exc:
            log.warning("Call %s: could not forget its state: %s", loggable(watch.call_sid), exc)
