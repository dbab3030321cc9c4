"""The relay's I/O shell: one websockets server on one port.

    GET /twiml    TwiML that points Twilio's ConversationRelay at /ws
    GET /ws       the ConversationRelay WebSocket; one CallSession per socket
    GET /action   where Twilio goes when a session ends (<Connect action>)
    GET /healthz  "ok"

With an auth token configured, /twiml, /action and the /ws handshake must carry a
valid X-Twilio-Signature, checked before any session exists. Everything about the
conversation itself lives in session.py and the steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from relaylab import protocol, signatures, twiml
from relaylab.llm import LLM
from relaylab.session import CallSession, HungUp
from relaylab.steps import resolve, step_name
from relaylab.tunnel import PublicEndpoints, TunnelError, endpoints

log = logging.getLogger("relaylab.server")

WEBSOCKET_MAX_SIZE = 16 * protocol.MAX_FRAME_BYTES
"""Past this, websockets closes the socket (1009). Smaller oversized frames are refused
one by one by protocol.parse, and the call goes on."""
STOP_WAIT = 2.0  # seconds open connections get to close when the server stops


class RelayServer:
    """Serves TwiML and ConversationRelay sockets; hands each socket to a CallSession."""

    def __init__(
        self,
        *,
        step: object,
        llm: LLM,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_token: str | None = None,
        public_url: str | None = None,
        twiml_options: dict[str, object] | None = None,
        dial_number: str | None = None,
    ) -> None:
        self.step = resolve(step)
        self.llm = llm
        self.host = host
        self.port = port
        self.auth_token = auth_token
        self.public = endpoints(public_url) if public_url else None
        self.twiml_options = twiml_options or {}
        self.dial_number = dial_number
        self.sessions: list[CallSession] = []
        self.session_listeners: list[Callable[[CallSession], None]] = []
        self._server: Server | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    async def start(self) -> None:
        self._server = await serve(
            self._handle_socket,
            self.host,
            self.port,
            process_request=self._route,
            max_size=WEBSOCKET_MAX_SIZE,
            compression=None,  # frames are tiny; deflate would only add latency
            logger=logging.getLogger("relaylab.websockets"),  # quiet in notebooks, like ours
            create_connection=_Connection,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("relay listening on %s (step %s)", self.http_url, step_name(self.step))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                # An HTTP client holding its keep-alive socket must not stall a restart.
                await asyncio.wait_for(self._server.wait_closed(), STOP_WAIT)
            except TimeoutError:
                log.info("some connections did not close within %.0f s; dropping them", STOP_WAIT)
                for connection in list(self._server.connections):
                    connection.transport.abort()
            self._server = None

    def use(self, step: object) -> None:
        """Swap the handlers for new and ongoing calls."""
        self.step = resolve(step)
        for session in self.sessions:
            session.step = self.step
        log.info("relay now uses step %s", step_name(self.step))

    def find(self, call_sid: str) -> CallSession | None:
        return next((s for s in self.sessions if s.call_sid == call_sid), None)

    # -- HTTP --------------------------------------------------------------------

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path not in ("/twiml", "/ws", "/action", "/healthz"):
            return connection.respond(
                HTTPStatus.NOT_FOUND,
                f"Not found: {url.path}. This relay serves /twiml, /ws, /action and /healthz.\n",
            )
        if request.method != "GET":
            return connection.respond(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{request.method} is not supported: the webhook must use HTTP GET. In the "
                "Twilio console set 'A call comes in' to HTTP GET, or run "
                "`relaylab serve --configure-number`.\n",
            )
        if url.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if reason := self._signature_problem(request, websocket=url.path == "/ws"):
            log.warning("refused %s: %s", url.path, reason)
            return connection.respond(HTTPStatus.FORBIDDEN, f"Forbidden: {reason}\n")
        if url.path == "/ws":
            return None  # go on with the WebSocket handshake
        if url.path == "/twiml":
            try:
                public = self._public_endpoints(request)
            except TunnelError as exc:
                return connection.respond(HTTPStatus.BAD_REQUEST, f"Bad Host header: {exc}\n")
            options = {"action_url": public.action_url, **self.twiml_options}
            body = twiml.relay_twiml(public.ws_url, **options)
        else:
            query = dict(parse_qsl(url.query))
            body = twiml.handoff_twiml(
                query.get("SessionStatus", ""),
                query.get("HandoffData"),
                dial_number=self.dial_number,
            )
        response = connection.respond(HTTPStatus.OK, body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "text/xml; charset=utf-8"
        return response

    def _public_endpoints(self, request: Request) -> PublicEndpoints:
        """Where Twilio reaches us: the configured public URL, else the request's Host."""
        if self.public is not None:
            return self.public
        return endpoints("https://" + (request.headers.get("Host") or f"{self.host}:{self.port}"))

    def _signature_problem(self, request: Request, *, websocket: bool) -> str | None:
        if not self.auth_token:
            return None
        return signatures.verify(
            self.auth_token,
            path=request.path,
            host=request.headers.get("Host"),
            public_url=self.public.base_url if self.public else None,
            websocket=websocket,
            signature=request.headers.get("X-Twilio-Signature"),
        )

    # -- WebSocket ---------------------------------------------------------------

    async def _handle_socket(self, connection: _Connection) -> None:
        async def send(frame: str) -> None:
            try:
                await connection.send(frame)
            except ConnectionClosed as exc:
                raise HungUp(str(exc)) from None

        session = CallSession(
            send, step=self.step, llm=self.llm, frames_waiting=lambda: connection.unhandled
        )
        self.sessions.append(session)
        try:
            for listener in list(self.session_listeners):
                try:
                    listener(session)
                except Exception:
                    log.exception("a session listener failed; the call goes on without it")
            async for frame in connection:
                connection.unhandled -= 1
                await session.handle_frame(frame)
        except ConnectionClosed as exc:
            log.info("%r: the socket dropped (%s)", session, exc)
        finally:
            await session.close()
            self.sessions.remove(session)


class _Connection(ServerConnection):
    """A server connection that counts the frames it has read and the relay not handled.

    The session asks before each token it sends, so that an ``interrupt`` already read
    is handled first (see CallSession.send_text).
    """

    unhandled = 0

    def process_event(self, event: object) -> None:
        super().process_event(event)  # type: ignore[arg-type]
        if isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.unhandled += 1
