"""The relay's I/O shell: one port, two kinds of connection.

Each new connection's first request head decides where it goes:
- a WebSocket upgrade to ``/ws`` goes to a ``CallSocket`` (websockets' sans-I/O
  protocol), which gets one ``CallSession``;
- anything else goes to aiohttp's HTTP server (``Webhooks``): TwiML, the action
  URL, the health check, with GET or POST and form bodies.

Signatures are checked here, before any session exists. Everything about the
conversation itself lives in relay/session.py and the steps.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from websockets.http11 import Request

from relaylab.core.log_lines import loggable
from relaylab.relay.llm import LLM
from relaylab.relay.resume import Admission, SavedCalls
from relaylab.relay.session import CallSession, Send
from relaylab.relay.settings import RelaySettings
from relaylab.relay.step import Step, resolve
from relaylab.relay.store import open_store
from relaylab.shell import signatures
from relaylab.shell.call_socket import CallSocket
from relaylab.shell.twiml import (
    heard_blind_spots,
    playback_reports_needed,
    preempts,
    welcome_greeting,
)
from relaylab.shell.urls import PublicEndpoints, endpoints, is_local
from relaylab.shell.webhooks import HttpLog, Webhooks

log = logging.getLogger("relaylab.shell.server")

STOP_WAIT = 2.0  # seconds open connections get to close when the server stops
LINGER = 1.0  # seconds a refused request's unread body is drained before closing
# A Host header: a DNS name or IPv4 address, or a bracketed IPv6 address, then maybe a port.
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
Problem = tuple[int, str]  # (HTTP status, reason) for a refused request


class RelayServer:
    """Serves TwiML and ConversationRelay sockets; hands each socket to a CallSession."""

    def __init__(self, *, step: object, llm: LLM, settings: RelaySettings | None = None) -> None:
        self.settings = settings or RelaySettings()
        self.step: Step = resolve(step)
        self.llm = llm
        self.port = self.settings.port
        self.public = endpoints(self.settings.public_url) if self.settings.public_url else None
        self.sessions: list[CallSession] = []
        self.session_listeners: list[Callable[[CallSession], None]] = []
        self._sockets: set[CallSocket] = set()
        self._listener: asyncio.Server | None = None
        self._http: web.Server | None = None
        self._greeting = ""  # the TwiML's welcome greeting, read at start
        self._preemptible = False  # the TwiML's preemptible, read at start
        self.saved_calls: SavedCalls | None = None  # reconnects: the session store and its rules

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{_url_host(self.host)}:{self.port}/ws"

    async def start(self) -> None:
        self.saved_calls = SavedCalls(
            await open_store(self.settings.store), auth_token=self.settings.auth_token
        )
        await self.saved_calls.start()
        self._http = web.Server(
            Webhooks(self),
            access_log=None,
            logger=HttpLog(),
            # Never inflate a body: Webhooks refuses compressed ones before reading them.
            auto_decompress=False,
            keepalive_timeout=self.settings.socket.keepalive_timeout,
            # After a refusal, the unread rest of a body is drained this long, then the
            # connection closes (aiohttp's 10 s would let a dribbler hold it that long).
            lingering_time=LINGER,
        )
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: _FirstRequest(self),
            self.host,
            self.port,
            reuse_port=self.settings.reuse_port or None,
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info("relay listening on %s (step %s)", self.http_url, self.step.name)
        self._greeting = welcome_greeting(**self.settings.twiml)
        self._preemptible = preempts(**self.settings.twiml)
        for reason in playback_reports_needed(**self.settings.twiml):
            log.info("the TwiML asks Twilio for tokensPlayed reports (%s)", reason)
        for reason in heard_blind_spots(**self.settings.twiml):
            log.warning(
                "the TwiML's settings can make the stored history hold words the caller "
                "never heard: %s. Twilio's defaults avoid this.",
                reason,
            )

    async def stop(self) -> None:
        if self._listener is None or self._http is None:  # never started
            return
        self._listener.close()
        for socket in list(self._sockets):
            socket.close()
        closing = [socket.closed for socket in self._sockets]
        if closing:
            _, late = await asyncio.wait(closing, timeout=STOP_WAIT)
            if late:
                log.info(
                    "%d calls did not close within %.0f s; dropping them", len(late), STOP_WAIT
                )
                for socket in list(self._sockets):
                    socket._abort()
        await self._http.shutdown(STOP_WAIT)
        self._listener = None
        if self.saved_calls is not None:
            await self.saved_calls.stop()

    def stop_listening(self) -> None:
        """Take no new connections; the calls in progress go on (``stop`` ends them)."""
        if self._listener is not None:
            self._listener.close()

    def use(self, step: object) -> None:
        """Swap the handlers for new and ongoing calls."""
        self.step = resolve(step)
        for session in self.sessions:
            session.step = self.step
        log.info("relay now uses step %s", self.step.name)

    def find(self, call_sid: str) -> CallSession | None:
        # The newest first: after a reconnect, the dropped socket's session may linger.
        return next((s for s in reversed(self.sessions) if s.call_sid == call_sid), None)

    # -- connections --------------------------------------------------------------

    def call_socket(self) -> CallSocket:
        socket = CallSocket(self)
        self._sockets.add(socket)
        socket.closed.add_done_callback(lambda _: self._sockets.discard(socket))
        return socket

    def http_protocol(self) -> asyncio.Protocol:
        assert self._http is not None, "connections arrive only once start() has run"
        return self._http()

    def open_session(self, send: Send, admission: Admission | None = None) -> CallSession:
        session = CallSession(
            send,
            step=self.step,
            llm=self.llm,
            limits=self.settings.call,
            greeting=self._greeting,
            preemptible=self._preemptible,
            speculate=self.settings.speculate,
            speculate_after_ms=self.settings.speculate_after_ms,
            prewarm=self.settings.prewarm,
            prompt_caching=self.settings.prompt_caching,
        )
        if admission is not None and self.saved_calls is not None:
            self.saved_calls.opened(session, admission)  # before listeners: they see the call
        self.sessions.append(session)
        for listener in list(self.session_listeners):
            try:
                listener(session)
            except Exception:
                log.exception("a session listener failed; the call goes on without it")
        return session

    def end_session(self, session: CallSession, *, dropped: bool) -> asyncio.Task[None]:
        """The session's socket is gone: close it, and keep or let go of the call."""
        if self.saved_calls is None:
            return asyncio.get_running_loop().create_task(session.close())
        return self.saved_calls.release(session, dropped=dropped)

    def socket_url(self, ws_url: str, call_sid: str | None) -> str:
        """The WebSocket URL the TwiML for call ``call_sid`` names (see relaylab.relay.resume)."""
        return self.saved_calls.socket_url(ws_url, call_sid) if self.saved_calls else ws_url

    def admit(self, request: Request) -> Admission | Problem | Awaitable[Admission | Problem]:
        """Which call a signed /ws handshake opens: at once for a plain /ws (a new call),
        after a look in the session store when the URL names a call (a reconnect?)."""
        query = dict(parse_qsl(urlsplit(request.path).query, keep_blank_values=True))
        if self.saved_calls is None or "call" not in query:
            return Admission()
        return self.saved_calls.admit(query, self._live_here)

    def _live_here(self, call_sid: str) -> bool:
        session = self.find(call_sid)
        return session is not None and not session.closed

    def forget(self, session: CallSession) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    # -- requests -----------------------------------------------------------------

    def check_websocket(self, request: Request) -> Problem | None:
        """Why the /ws handshake must be refused, or None to accept it."""
        path = request.path.split("?", 1)[0]
        if path != "/ws":
            return HTTPStatus.NOT_FOUND, f"Not found: {loggable(path)}. The WebSocket is /ws.\n"
        return self.check_signature(
            path_qs=request.path,
            host_headers=request.headers.get_all("Host"),
            signature_headers=request.headers.get_all(signatures.SIGNATURE_HEADER),
            params={},
            websocket=True,
        )

    def check_signature(
        self,
        *,
        path_qs: str,
        host_headers: Sequence[str],
        signature_headers: Sequence[str],
        params: Mapping[str, str],
        websocket: bool,
    ) -> Problem | None:
        """None when the request may go on; else the status and reason to refuse it with."""
        if len(host_headers) > 1:
            return HTTPStatus.BAD_REQUEST, "Bad request: more than one Host header"
        if len(signature_headers) > 1:
            return HTTPStatus.BAD_REQUEST, "Bad request: more than one X-Twilio-Signature header"
        if not self.settings.auth_token:
            return None
        try:
            reason = signatures.verify(
                self.settings.auth_token,
                path=path_qs,
                host=host_headers[0] if host_headers else None,
                public_url=self.public.base_url if self.public else None,
                websocket=websocket,
                signature=signature_headers[0] if signature_headers else None,
                params=params,
            )
        except ValueError as exc:
            return HTTPStatus.BAD_REQUEST, f"Bad request: {exc}"
        if reason is None:
            return None
        # The reason quotes the Host header, which the caller chose.
        log.warning("refused %s: %s", loggable(path_qs), loggable(reason, 600))
        return HTTPStatus.FORBIDDEN, f"Forbidden: {reason}"

    def public_endpoints(self, host: str | None) -> PublicEndpoints:
        """Where Twilio reaches us: the configured public URL, else the request's Host."""
        if self.public is not None:
            return self.public
        host = host or f"{_url_host(self.host)}:{self.port}"
        if not _HOST.fullmatch(host):
            raise ValueError(f"{loggable(host)} is not a host name (expected name or name:port)")
        try:
            scheme = "http" if is_local(urlsplit("//" + host).hostname or "") else "https"
            return endpoints(f"{scheme}://{host}")
        except ValueError as exc:
            raise ValueError(f"{loggable(host)} is not a host name ({exc})") from None


class _FirstRequest(asyncio.Protocol):
    """Reads a new connection's first request head, then hands the connection on."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.head = bytearray()
        self.transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def _connected(self) -> asyncio.Transport:
        """The transport, set once the connection is made (and never unset)."""
        assert self.transport is not None, "no connection yet"
        return self.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream protocol is always given a full Transport (asyncio's, or uvloop's).
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(
            self.server.settings.socket.request_head_timeout, self._too_slow
        )

    def data_received(self, data: bytes) -> None:
        if self._deadline is None:
            return  # already refused
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > self.server.settings.socket.max_request_head_bytes:
                self._refuse(b"431 Request Header Fields Too Large")
            return
        self._deadline.cancel()
        self._deadline = None
        if _asks_for_websocket(bytes(self.head[:end])):
            protocol: asyncio.Protocol = self.server.call_socket()
        else:
            protocol = self.server.http_protocol()
        self._connected.set_protocol(protocol)
        protocol.connection_made(self._connected)
        protocol.data_received(bytes(self.head))

    def _too_slow(self) -> None:
        log.info(
            "dropped a connection that sent no complete request within %.0f s",
            self.server.settings.socket.request_head_timeout,
        )
        self._refuse(b"408 Request Timeout")

    def _refuse(self, status: bytes) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._connected.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self._connected.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:  # closed before a whole request head arrived
            self._deadline.cancel()
            self._deadline = None


def _asks_for_websocket(head: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
