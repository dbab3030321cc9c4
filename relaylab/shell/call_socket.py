"""One ConversationRelay WebSocket: websockets' sans-I/O protocol under a thin asyncio shell.

``websockets.server.ServerProtocol`` does the WebSocket work (handshake, framing,
pings, closing); this class only moves bytes between it and the transport, and
hands each inbound message to the call's session the moment its bytes arrive. That
is what lets ``CallSession`` promise that no token leaves after an interrupt it has
received: there is no queue between the socket and the session for it to hide in.

Sending waits only when the caller stops reading: past the write buffer limit a
send waits for the buffer to drain. If the buffer stays full for the send timeout,
counted from the moment it filled up (so new prompts do not restart the clock), the
call is closed, which cancels its reply and aborts the model stream. The kernel's own
send buffer is capped at the same size: Linux would otherwise let it grow to 4 MB per
socket, so a caller that stops reading would park that much before the relay noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Awaitable
from typing import Any, Protocol, cast

from websockets.exceptions import InvalidMessage
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import BytesLike

from relaylab.core.log_lines import loggable
from relaylab.relay.session import CallSession, HungUp, Send
from relaylab.relay.settings import RelaySettings

log = logging.getLogger("relaylab.shell.server")
_WEBSOCKETS_LOG = logging.getLogger("relaylab.websockets")  # quiet unless asked for
_CLOSE_TIMEOUT = 2.0  # seconds the caller gets to finish a close handshake
_BAD_REQUEST_TEXT = b"Bad request: not a valid WebSocket request\n"
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(_BAD_REQUEST_TEXT), _BAD_REQUEST_TEXT)
)


class SocketHost(Protocol):
    """What a CallSocket needs from the server that accepted it (RelayServer)."""

    settings: RelaySettings

    def check_websocket(self, request: Request) -> tuple[int, str] | None: ...

    def admit(self, request: Request) -> Any:
        """The call a checked handshake may open (an admission) or a (status, reason);
        or an awaitable of either when the call must be looked up first."""
        ...

    def open_session(self, send: Send, admission: Any = None) -> CallSession: ...

    def end_session(self, session: CallSession, *, dropped: bool) -> asyncio.Future[None]: ...

    def forget(self, session: CallSession) -> None: ...


class CallSocket(asyncio.Protocol):
    """The relay's side of one ConversationRelay socket."""

    def __init__(self, server: SocketHost) -> None:
        self.server = server
        limits = server.settings.socket
        self.ws = ServerProtocol(max_size=limits.max_message_bytes, logger=_WEBSOCKETS_LOG)
        self.session: CallSession | None = None
        self.transport: asyncio.Transport | None = None
        self._message: list[BytesLike] = []  # fragments of a message still arriving
        self._message_opcode = Opcode.TEXT
        self._drained: asyncio.Future[None] | None = None  # set while writing is paused
        self._reading_deadline: asyncio.TimerHandle | None = None  # while writing is paused
        self._stopped_reading = False
        self._setup_deadline: asyncio.TimerHandle | None = None
        # While the call is looked up in the session store (reconnects), frames that came
        # with the handshake wait here, in order; reading is paused meanwhile.
        self._admitting: asyncio.Task[None] | None = None
        self._held_frames: list[Frame] = []
        self._relay_closed = False  # the relay closed the socket (shutting down)
        self.closed = asyncio.get_running_loop().create_future()

    @property
    def _connected(self) -> asyncio.Transport:
        """The transport, set once the connection is made (and never unset)."""
        assert self.transport is not None, "no connection yet"
        return self.transport

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream protocol is always given a full Transport (asyncio's, or uvloop's).
        self.transport = cast(asyncio.Transport, transport)
        limit = self.server.settings.socket.write_buffer_bytes
        self.transport.set_write_buffer_limits(high=limit)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                if self._admitting is not None:
                    self._held_frames.append(event)
                else:
                    self._frame(event)
        self._flush()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._flush()
        return False  # close the transport

    def pause_writing(self) -> None:
        loop = asyncio.get_running_loop()
        self._drained = loop.create_future()
        timeout = self.server.settings.socket.send_timeout
        self._reading_deadline = loop.call_later(timeout, self._caller_stopped_reading)

    def resume_writing(self) -> None:
        if self._reading_deadline is not None:
            self._reading_deadline.cancel()
            self._reading_deadline = None
        self._release_senders()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()
        self.resume_writing()
        if self._setup_deadline is not None:
            self._setup_deadline.cancel()
        if self._admitting is not None:
            self._admitting.cancel()
        if self.session is not None:
            session = self.session
            # A close frame from the caller ends the call; a socket that just went (a
            # network drop) or that the relay closed (a restart) may come back.
            # A socket refused for its setup leaves the call as it was, for the real one.
            dropped = self.ws.close_rcvd is None or self._relay_closed or bool(session.refused)
            task = self.server.end_session(session, dropped=dropped)
            task.add_done_callback(lambda _: self.server.forget(session))
            task.add_done_callback(lambda _: self.closed.set_result(None))
        else:
            self.closed.set_result(None)

    # -- receiving ----------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        problem = self.server.check_websocket(request)
        if problem is not None:
            status, text = problem
            self.ws.send_response(self.ws.reject(status, text))
            return
        admission = self.server.admit(request)
        if inspect.isawaitable(admission):
            self._connected.pause_reading()
            self._admitting = asyncio.get_running_loop().create_task(
                self._admit(request, admission)
            )
        else:
            self._answer(request, admission)

    async def _admit(self, request: Request, looking_up: Awaitable[Any]) -> None:
        """Look the call up (a reconnect?) before answering the handshake."""
        try:
            admission = await looking_up
        except Exception as exc:
            log.warning("could not look the call up in the session store: %s", loggable(exc))
            admission = (503, "Service unavailable: the session store cannot be reached")
        self._admitting = None
        if self.transport is None or self.transport.is_closing():
            return
        self._answer(request, admission)
        held, self._held_frames = self._held_frames, []
        if self.session is not None:
            for frame in held:
                self._frame(frame)
        self._flush()
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _answer(self, request: Request, admission: Any) -> None:
        if isinstance(admission, tuple):
            status, text = admission
            self.ws.send_response(self.ws.reject(status, text))
            return
        response = self.ws.accept(request)
        self.ws.send_response(response)
        if response.status_code == 101:
            self.session = self.server.open_session(self.send, admission)
            loop = asyncio.get_running_loop()
            self._setup_deadline = loop.call_later(
                self.server.settings.socket.setup_timeout, self._check_setup
            )

    def _check_setup(self) -> None:
        self._setup_deadline = None
        if self.session is not None and self.session.setup is None:
            log.info(
                "closed a socket that sent no 'setup' within %.0f s",
                self.server.settings.socket.setup_timeout,
            )
            self.close(1008, "no setup message")

    def _frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._message_opcode = frame.opcode
            self._message = [frame.data]
        elif frame.opcode is Opcode.CONT:
            self._message.append(frame.data)
        else:
            return  # ping, pong, close: websockets answers those itself
        if not frame.fin or self.session is None:
            return
        data = b"".join(self._message)
        self._message = []
        if self._message_opcode is Opcode.BINARY:
            self.session.receive(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            log.warning("%r: a text frame was not valid UTF-8; undecodable bytes replaced", self)
            text = data.decode(errors="replace")
        self.session.receive(text)
        if self.session.refused is not None:
            self.close(1008, self.session.refused[:120])

    # -- sending ------------------------------------------------------------------

    def _flush(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk:
                self._connected.write(chunk)
            else:  # the end of the stream: the close handshake is over
                self._answer_unreadable_request()
                self._connected.close()
                return
        if self.ws.close_expected():
            asyncio.get_running_loop().call_later(_CLOSE_TIMEOUT, self._abort)

    def _answer_unreadable_request(self) -> None:
        """websockets closes without a word when a request head does not parse; answer
        400 instead, as the relay does for any other malformed HTTP request."""
        problem = self.ws.handshake_exc
        if self.session is None and isinstance(problem, InvalidMessage):
            log.warning(
                "refused a WebSocket request that is not valid HTTP: %s",
                loggable(problem.__cause__ or problem),
            )
            self._connected.write(_BAD_REQUEST)

    def _abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    async def send(self, frame: str) -> None:
        """Send one text frame; waits only while a caller that stopped reading catches up."""
        self._check_open()
        self.ws.send_text(frame.encode())
        for chunk in self.ws.data_to_send():
            self._connected.write(chunk)
        if self._drained is not None:
            await asyncio.shield(self._drained)
            self._check_open()

    def _check_open(self) -> None:
        if self._stopped_reading:
            raise HungUp("the caller stopped reading")
        if self.ws.state is not State.OPEN:
            raise HungUp("the caller's socket is closed")

    def _caller_stopped_reading(self) -> None:
        """The send buffer has stayed full for the whole send timeout: give up on the caller."""
        self._reading_deadline = None
        self._stopped_reading = True
        log.warning(
            "%r: the caller has read nothing for %.1f s while frames kept queueing; "
            "closing the call (its reply and model stream stop)",
            self.session,
            self.server.settings.socket.send_timeout,
        )
        self._abort()
        self._release_senders()

    def _release_senders(self) -> None:
        """Wake every send waiting for the caller to read (it then checks why)."""
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def close(self, code: int = 1001, reason: str = "relay shutting down") -> None:
        """Close the socket from the relay's side (server shutdown, by default)."""
        self._relay_closed = self._relay_closed or code == 1001
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._flush()
        elif self.transport is not None:
            self.transport.close()
