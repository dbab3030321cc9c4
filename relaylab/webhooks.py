"""The relay's plain HTTP routes, served by aiohttp's low-level server.

    GET|POST /twiml    TwiML that points Twilio's ConversationRelay at /ws
    GET|POST /action   where Twilio goes when a session ends (<Connect action>)
    GET      /healthz  "ok"

Twilio calls webhooks with POST and a form body unless told otherwise (a number set
up by hand in the Console does exactly that), so both methods are answered. With an
auth token configured every request must carry a valid X-Twilio-Signature over the
public URL plus, for a POST, its form fields; anything else gets 403.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from relaylab import twiml
from relaylab.protocol import loggable
from relaylab.settings import RelaySettings
from relaylab.tunnel import PublicEndpoints

log = logging.getLogger("relaylab.server")

PATHS = ("/twiml", "/ws", "/action", "/healthz")
_TEXT = "text/plain"
_XML = "text/xml"


class Checks(Protocol):
    """What the webhooks need from the server that serves them (RelayServer)."""

    settings: RelaySettings

    def check_signature(
        self,
        *,
        path_qs: str,
        host_headers: Sequence[str],
        signature_headers: Sequence[str],
        params: Mapping[str, str],
        websocket: bool,
    ) -> tuple[int, str] | None: ...

    def public_endpoints(self, host: str | None) -> PublicEndpoints: ...

    def socket_url(self, ws_url: str, call_sid: str | None) -> str: ...


class Webhooks:
    """aiohttp request handler for the relay's HTTP paths."""

    def __init__(self, server: Checks) -> None:
        self.server = server

    async def __call__(self, request: web.BaseRequest) -> web.Response:
        path = request.path
        if path not in PATHS:
            return _text(404, f"Not found: {loggable(path)}. This relay serves {', '.join(PATHS)}.")
        if path == "/ws":
            return _text(426, "/ws is the ConversationRelay WebSocket: connect with a WebSocket.")
        allowed = ("GET",) if path == "/healthz" else ("GET", "POST")
        if request.method not in allowed:
            return web.Response(
                status=405,
                text=f"{request.method} is not supported on {path}; use {' or '.join(allowed)}.\n",
                content_type=_TEXT,
                headers={"Allow": ", ".join(allowed)},
            )
        if path == "/healthz":
            return _text(200, "ok")
        form: Mapping[str, str] = {}
        if request.method == "POST":
            form = {key: str(value) for key, value in (await request.post()).items()}
        params = {**request.query, **form}
        problem = self.server.check_signature(
            path_qs=request.path_qs,
            host_headers=request.headers.getall("Host", []),
            signature_headers=request.headers.getall("X-Twilio-Signature", []),
            params=form,
            websocket=False,
        )
        if problem is not None:
            status, reason = problem
            return _text(status, reason)
        if path == "/twiml":
            return self._twiml(request, params.get("CallSid"))
        body = twiml.handoff_twiml(
            params.get("SessionStatus", ""),
            params.get("HandoffData"),
            dial_number=self.server.settings.dial_number,
            error_code=params.get("ErrorCode"),
        )
        return web.Response(text=body, content_type=_XML)

    def _twiml(self, request: web.BaseRequest, call_sid: str | None) -> web.Response:
        try:
            public = self.server.public_endpoints(request.headers.get("Host"))
        except ValueError as exc:
            return _text(400, f"Bad Host header: {exc}")
        settings = self.server.settings
        options = dict(settings.twiml)
        options.setdefault("action_url", public.action_url)
        options.setdefault("action_method", "POST")  # Twilio's default; /action takes both
        if settings.debug_events:
            options.setdefault("debug_events", True)
        # The socket URL names the call, so a reconnect finds it (relaylab.resume).
        ws_url = self.server.socket_url(public.ws_url, call_sid)
        return web.Response(text=twiml.relay_twiml(ws_url, **options), content_type=_XML)


class HttpLog(logging.LoggerAdapter):
    """The logger handed to aiohttp's server. aiohttp reports a malformed request (two Host
    headers, a broken request line) as an exception with a traceback; a relay on a public
    URL gets those all the time, so they become one escaped line. Real errors keep theirs."""

    def __init__(self) -> None:
        super().__init__(log, {})

    def exception(self, msg: object, *args: object, exc_info: object = True, **kw: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.warning("refused a malformed HTTP request: %s", loggable(exc_info.message))
        else:
            super().exception(msg, *args, exc_info=exc_info, **kw)  # type: ignore[arg-type]


def _text(status: int, text: str) -> web.Response:
    if status >= 400:
        log.warning("HTTP %d: %s", status, text)
    return web.Response(status=status, text=text + "\n", content_type=_TEXT)
