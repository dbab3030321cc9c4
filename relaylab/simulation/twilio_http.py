"""Twilio's HTTP requests to the app: the voice webhook and the ``<Connect action>`` URL.

Twilio requests them with POST and a form body unless told GET, and signs each with
``X-Twilio-Signature`` over the public URL it requested (plus, for a POST, the form
fields). A simulated call may reach the app at a local address while the app checks
signatures against its public one (behind a tunnel), so requests go to the local URL
and are signed over the public one (urllib in a worker thread: no client library needed).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from relaylab.shell import signatures
from relaylab.simulation.twilio_behaviour import HttpMethod

log = logging.getLogger("relaylab.simulation.twilio_http")
TIMEOUT_SECONDS = 10.0
API_VERSION = "2010-04-01"


@dataclass(frozen=True)
class WebhookExchange:
    """One request Twilio made to the app, and the answer."""

    method: HttpMethod
    url: str  # where it was sent (with the query string for a GET)
    signed_url: str  # the URL the signature covers
    params: dict[str, str]
    status: int
    body: str


def public_form(url: str, public_url: str | None) -> str:
    """``url`` as Twilio would see it through ``public_url`` (the host Twilio dials).

    http(s) URLs become https (ws(s) become wss) on the public host, unless the public
    URL is itself plain http (a local address). Without a public URL: ``url`` itself.
    """
    if not public_url:
        return url
    parts = urlsplit(url)
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    websocket = parts.scheme in ("ws", "wss")
    return signatures.public_urls(path, host=None, public_url=public_url, websocket=websocket)[0]


def local_form(url: str, public_url: str | None, local_origin: str | None) -> str:
    """``url`` with the public host replaced by the local one (scheme kept plain/secure
    by kind), so a simulated call can reach an app that believes it is public."""
    if not public_url or not local_origin:
        return url
    public = urlsplit(public_url if "://" in public_url else "https://" + public_url)
    parts, local = urlsplit(url), urlsplit(local_origin)
    if parts.netloc != public.netloc:
        return url
    secure = local.scheme in ("https", "wss")
    if parts.scheme in ("ws", "wss"):
        scheme = "wss" if secure else "ws"
    else:
        scheme = "https" if secure else "http"
    return urlunsplit((scheme, local.netloc, parts.path, parts.query, parts.fragment))


def voice_webhook_params(
    call_sid: str, account_sid: str, from_number: str, to_number: str
) -> dict[str, str]:
    """The form fields of Twilio's voice webhook for a ringing inbound call."""
    return {
        "CallSid": call_sid,
        "AccountSid": account_sid,
        "From": from_number,
        "To": to_number,
        "Caller": from_number,
        "Called": to_number,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": API_VERSION,
    }


def action_params(
    call_sid: str,
    session_id: str,
    status: str,
    *,
    handoff_data: str | None,
    duration_seconds: float,
    error_code: int | None = None,
    account_sid: str = "AC" + "0" * 32,
    from_number: str = "+15550100",
    to_number: str = "+15550101",
    application_sid: str | None = None,
) -> dict[str, str]:
    """The fields of the ``<Connect action>`` request after a ConversationRelay session
    (PROTOCOL.md section 4). The call goes on after the session (the action's TwiML says
    what next) unless the caller hung up: ``CallStatus`` says which."""
    params = {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "CallStatus": "completed" if status == "completed" else "in-progress",
        "From": from_number,
        "To": to_number,
        "Direction": "inbound",
        "SessionId": session_id,
        "SessionStatus": status,
        "SessionDuration": str(max(round(duration_seconds), 0)),
        "ApiVersion": API_VERSION,
    }
    if application_sid is not None:
        params["ApplicationSid"] = application_sid
    if handoff_data is not None:
        params["HandoffData"] = handoff_data
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    return params


async def request(
    url: str,
    params: Mapping[str, str],
    *,
    method: HttpMethod,
    auth_token: str | None,
    public_url: str | None,
) -> WebhookExchange:
    """Make one webhook request like Twilio; raises OSError (URLError) or TimeoutError."""
    fields = dict(params)
    if method == "GET":
        target = url + ("&" if urlsplit(url).query else "?") + urlencode(fields)
        signed, signed_params, body = public_form(target, public_url), {}, None
    else:
        target, signed, signed_params = url, public_form(url, public_url), fields
        body = urlencode(fields).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    if auth_token:
        headers[signatures.SIGNATURE_HEADER] = signatures.sign(auth_token, signed, signed_params)
    outgoing = urllib.request.Request(target, data=body, headers=headers, method=method)
    # urllib sends the URL exactly as signed (an HTTP client that re-quotes the query
    # would break the signature), in a thread so the event loop keeps running.
    status, text = await asyncio.to_thread(_send, outgoing)
    log.debug("Twilio-side %s %s -> %s", method, target, status)
    return WebhookExchange(method, target, signed, fields, status, text)


# Straight to the app, ignoring any HTTP_PROXY in the environment, as Twilio would.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _send(outgoing: urllib.request.Request) -> tuple[int, str]:
    try:
        with _DIRECT.open(outgoing, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # a 4xx/5xx answer is an answer, not a failure
        with exc:
            return exc.code, exc.read().decode("utf-8", "replace")
