"""The relay's plain HTTP routes, served by aiohttp's low-level server.

    GET|POST /twiml    TwiML that points Twilio's ConversationRelay at /ws
    GET|POST /action   where Twilio goes when a session ends (<Connect action>)
    GET      /healthz  "ok"

Twilio calls webhooks with POST and a form body unless told otherwise (a number set
up by hand in the Console does exactly that), so both methods are answered. With an
auth token configured every request must carry a valid X-Twilio-Signature over the
public URL plus, for a POST, its form fields; anything else gets 403.

A POST body is read here, not by aiohttp's ``request.post()``: Twilio sends a plain
UTF-8 form, so anything else (a compressed body, another charset or content type, bytes
that are not UTF-8) is refused with a 4xx before it costs the loop any work. A request
with no signature at all, when one is required, is refused before its body is read, and
a body that does not arrive within ``SocketLimits.request_body_timeout`` gets 408.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from relaylab.core.log_lines import loggable
from relaylab.relay.prewarm import prewarm_soon
from relaylab.relay.settings import RelaySettings
from relaylab.shell import action_twiml, twiml
from relaylab.shell.urls import PublicEndpoints

log = logging.getLogger("relaylab.shell.server")

PATHS = ("/twiml", "/ws", "/action", "/healthz")
_TEXT = "text/plain"
_XML = "text/xml"
_FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024  # Twilio's webhook forms are a few hundred bytes
MAX_FORM_FIELDS = 200


class Refused(Exception):
    """A request the relay answers with a 4xx; ``close``: also drop the connection (its
    body was not read, or is still arriving)."""

    def __init__(self, status: int, reason: str, *, close: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.close = status, reason, close


class Checks(Protocol):
    """What the webhooks need from the server that serves them (RelayServer)."""

    settings: RelaySettings
    llm: Any  # relaylab.relay.llm.LLM: the model client, for pre-warming

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
        try:
            form = await self._form(request) if request.method == "POST" else {}
        except Refused as refused:
            response = _text(refused.status, refused.reason)
            if refused.close:
                response.force_close()
            return response
        problem = self._signature_problem(request, form)
        if problem is not None:
            status, reason = problem
            return _text(status, reason)
        params = {**request.query, **form}
        if path == "/twiml":
            return self._twiml(request, params.get("CallSid"))
        body = action_twiml.handoff_twiml(
            loggable(params.get("SessionStatus", ""), 60),
            params.get("HandoffData"),
            dial_number=self.server.settings.dial_number,
            # Only logged: escaped here, so a forged ErrorCode cannot forge a log line.
            error_code=loggable(params["ErrorCode"], 40) if "ErrorCode" in params else None,
        )
        return web.Response(text=body, content_type=_XML)

    def _signature_problem(
        self, request: web.BaseRequest, form: Mapping[str, str]
    ) -> tuple[int, str] | None:
        return self.server.check_signature(
            path_qs=request.path_qs,
            host_headers=request.headers.getall("Host", []),
            signature_headers=request.headers.getall("X-Twilio-Signature", []),
            params=form,
            websocket=False,
        )

    async def _form(self, request: web.BaseRequest) -> dict[str, str]:
        """The POST's form fields; Refused for anything Twilio would not send. What can be
        judged from the head is judged before a byte of the body is read."""
        headers = request.headers
        expect = headers.get("Expect", "").strip().lower()
        if expect and expect != "100-continue":
            raise Refused(417, f"Expectation failed: {loggable(expect, 40)} is not supported")
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise Refused(
                415,
                f"Unsupported Content-Encoding {loggable(encoding, 40)}: send the form "
                "uncompressed, as Twilio does",
                close=True,
            )
        length = request.content_length
        if length is not None and length > MAX_FORM_BYTES:
            raise Refused(413, f"Request body too large (over {MAX_FORM_BYTES} bytes)", close=True)
        if length == 0 or (length is None and "Transfer-Encoding" not in headers):
            return {}
        _check_form_type(headers.get("Content-Type", ""))
        if self.server.settings.auth_token and not headers.getall("X-Twilio-Signature", []):
            problem = self._signature_problem(request, {})
            if problem is not None:  # no signature: no body can make it valid
                raise Refused(*problem, close=True)
        if expect:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await _read_body(request, self.server.settings.socket.request_body_timeout)
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(
                text,
                keep_blank_values=True,
                encoding="utf-8",
                errors="strict",
                max_num_fields=MAX_FORM_FIELDS,
            )
        except UnicodeDecodeError:
            raise Refused(400, "Bad request: the form is not UTF-8") from None
        except ValueError as exc:
            raise Refused(400, f"Bad request: {loggable(exc)}") from None
        return dict(pairs)

    def _twiml(self, request: web.BaseRequest, call_sid: str | None) -> web.Response:
        try:
            public = self.server.public_endpoints(request.headers.get("Host"))
        except ValueError as exc:
            return _text(400, f"Bad Host header: {exc}")
        settings = self.server.settings
        if settings.prewarm:  # the phone is still ringing: open the model connection now
            prewarm_soon(self.server.llm.client, self.server.llm.model)
        options = dict(settings.twiml)
        options.setdefault("action_url", public.action_url)
        options.setdefault("action_method", "POST")  # Twilio's default; /action takes both
        if settings.debug_events:
            options.setdefault("debug_events", True)
        if settings.speculate and not {"partial_prompts", "partialPrompts"} & options.keys():
            options["partial_prompts"] = True  # what speculation works from
        # The socket URL names the call, so a reconnect finds it (relaylab.relay.resume).
        ws_url = self.server.socket_url(public.ws_url, call_sid)
        return web.Response(text=twiml.relay_twiml(ws_url, **options), content_type=_XML)


# What logging's ``exc_info=`` takes.
_ExcInfo = (
    bool
    | BaseException
    | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None]
    | None
)


class HttpLog(logging.LoggerAdapter):
    """The logger handed to aiohttp's server. aiohttp reports a malformed request (two Host
    headers, a broken request line) as an exception with a traceback; a relay on a public
    URL gets those all the time, so they become one escaped line. Real errors keep theirs."""

    def __init__(self) -> None:
        super().__init__(log, {})

    def exception(
        self,
        msg: object,
        *args: object,
        exc_info: _ExcInfo = True,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kw: object,
    ) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.warning("refused a malformed HTTP request: %s", loggable(exc_info.message))
        else:
            super().exception(
                msg,
                *args,
                exc_info=exc_info,
                stack_info=stack_info,
                stacklevel=stacklevel,
                extra=extra,
                **kw,
            )


def _check_form_type(content_type: str) -> None:
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != _FORM:
        raise Refused(
            415,
            f"Unsupported Content-Type {loggable(kind.strip(), 60)}: the webhooks take "
            f"{_FORM}, as Twilio sends",
            close=True,
        )
    for parameter in rest.split(";"):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise Refused(
                415, f"Unsupported charset {loggable(charset, 40)}: send UTF-8", close=True
            )


async def _read_body(request: web.BaseRequest, timeout: float) -> bytes:
    """The whole body, at most MAX_FORM_BYTES; Refused if it is larger, arrives too slowly
    or the client goes away part way through (then nobody reads the answer)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > MAX_FORM_BYTES:
                    raise Refused(
                        413, f"Request body too large (over {MAX_FORM_BYTES} bytes)", close=True
                    )
                chunks.append(chunk)
    except TimeoutError:
        log.info("dropped a request whose body did not arrive within %.0f s", timeout)
        raise Refused(408, "Request Timeout: the body came too slowly", close=True) from None
    except (ConnectionError, HttpProcessingError) as exc:
        log.info("a client went away or broke off while sending a body (%s)", loggable(exc))
        raise Refused(400, "Bad request: the body was cut short", close=True) from None
    return b"".join(chunks)


def _text(status: int, text: str) -> web.Response:
    if status >= 400:
        log.warning("HTTP %d: %s", status, text)
    return web.Response(status=status, text=text + "\n", content_type=_TEXT)
