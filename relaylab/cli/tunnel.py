"""A public URL for the relay (ngrok through pyngrok), and the Twilio number pointed at it.

Twilio must reach the relay over https (the `/twiml` webhook) and wss (the `/ws`
socket). `endpoints()` turns one public base URL into those addresses,
`open_tunnel()` gets such a URL from ngrok, and `configure_number()` sets a Twilio
number's voice webhook to the relay's `/twiml`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import requests
from pyngrok import conf, ngrok
from pyngrok.exception import PyngrokError, PyngrokNgrokError, PyngrokNgrokInstallError
from twilio.base.exceptions import (
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.response import Response

from relaylab.shell.urls import endpoints

if TYPE_CHECKING:
    from twilio.http import HttpClient
    from twilio.rest import Client

logger = logging.getLogger(__name__)

NO_NGROK_TOKEN = (
    "set NGROK_AUTHTOKEN (free at the ngrok dashboard) or pass --public-url if you already have one"
)


class TunnelError(RuntimeError):
    """The relay could not get (or was given an unusable) public URL."""


class NumberSetupError(RuntimeError):
    """The Twilio number could not be pointed at the relay."""


class Tunnel:
    """An open ngrok tunnel to the relay; `close()` takes it down."""

    def __init__(self, public_url: str, pyngrok_config: conf.PyngrokConfig | None = None):
        self.public_url = public_url
        self.endpoints = endpoints(public_url)
        self._pyngrok_config = pyngrok_config
        self._closed = False

    def close(self) -> None:
        """Disconnect the tunnel (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            ngrok.disconnect(self.public_url, pyngrok_config=self._pyngrok_config)
        except PyngrokError as exc:
            # Closing runs at shutdown: a failure here must not hide why we stopped.
            logger.warning("could not close ngrok tunnel %s: %s", self.public_url, exc)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tunnel({self.public_url!r})"


def open_tunnel(
    port: int,
    *,
    authtoken: str | None = None,
    pyngrok_config: conf.PyngrokConfig | None = None,
) -> Tunnel:
    """Open an ngrok http tunnel to the relay on local `port`.

    The ngrok auth token comes from `authtoken` or NGROK_AUTHTOKEN. `pyngrok_config`
    defaults to a copy of pyngrok's default config. Raises TunnelError with a clear
    message when no token is set or ngrok cannot be installed or started.
    """
    token = authtoken or os.environ.get("NGROK_AUTHTOKEN")
    if not token:
        raise TunnelError(f"no ngrok auth token: {NO_NGROK_TOKEN}")
    config = copy.copy(pyngrok_config or conf.get_default())
    config.auth_token = token
    try:
        tunnel = ngrok.connect(str(port), "http", pyngrok_config=config)
    except PyngrokNgrokInstallError as exc:
        raise TunnelError(
            "could not download the ngrok agent (this machine may have no internet access): "
            f"{_scrub(str(exc), token)}. Install ngrok and set PYNGROK_NGROK_PATH to it, "
            "or pass --public-url if you already have a public https address"
        ) from None
    except PyngrokError as exc:
        raise TunnelError(
            f"ngrok did not start a tunnel to port {port}: {_scrub(_describe(exc), token)}. "
            "Check NGROK_AUTHTOKEN, or pass --public-url if you already have one"
        ) from None
    public_url = str(tunnel.public_url or "")
    # ngrok serves every http endpoint over https too; Twilio requires https/wss.
    if public_url.startswith("http://"):
        public_url = "https://" + public_url.removeprefix("http://")
    logger.info("ngrok tunnel %s -> local port %s", public_url, port)
    return Tunnel(public_url, config)


def _describe(exc: PyngrokError) -> str:
    if isinstance(exc, PyngrokNgrokError) and exc.ngrok_error:
        code = f" ({exc.ngrok_error_code})" if exc.ngrok_error_code else ""
        return f"{exc.ngrok_error}{code}"
    return str(exc) or type(exc).__name__


def _scrub(text: str, *secrets: str | None) -> str:
    """`text` with every secret replaced: ngrok's own errors can echo the authtoken."""
    for secret in secrets:
        # Real tokens are long; replacing a short test string would mangle the text.
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class NumberChange:
    """What configure_number() changed on a Twilio number's voice webhook."""

    sid: str
    phone_number: str
    old_voice_url: str | None
    old_voice_method: str | None
    new_voice_url: str
    new_voice_method: str

    @property
    def changed(self) -> bool:
        """False when the number already pointed at this URL with this method."""
        return (self.old_voice_url, (self.old_voice_method or "").upper()) != (
            self.new_voice_url,
            self.new_voice_method.upper(),
        )

    def __str__(self) -> str:
        new = f"{self.new_voice_method} {self.new_voice_url}"
        if not self.changed:
            return f"{self.phone_number} ({self.sid}): voice webhook already {new}"
        old = (
            f"{self.old_voice_method or 'POST'} {self.old_voice_url}"
            if self.old_voice_url
            else "(none)"
        )
        return f"{self.phone_number} ({self.sid}): voice webhook {old} -> {new}"


def configure_number(
    phone_number: str,
    twiml_url: str,
    *,
    client: Client | None = None,
    http_client: HttpClient | None = None,
) -> NumberChange:
    """Point the account's number `phone_number` (E.164) at `twiml_url`, method POST
    (Twilio's default; the signature then covers the form fields too).

    Without `client`, one is built from TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN
    (`http_client` is passed to it). Raises NumberSetupError when credentials are
    missing, the number is not on the account, or Twilio answers an error.
    """
    number = _e164(phone_number)
    token: str | None = None
    if client is None:
        client, token = _client_from_env(http_client)
    else:
        token = getattr(client, "password", None)
    action = "look up"
    try:
        found = client.incoming_phone_numbers.list(phone_number=number, limit=20)
        match = next((n for n in found if n.phone_number == number), None)
        if match is None:
            raise NumberSetupError(
                f"{number} is not a phone number on Twilio account {client.account_sid}: "
                "check the number (E.164, e.g. +15551234567) in the Twilio Console under "
                "Phone Numbers > Manage > Active numbers, and that TWILIO_ACCOUNT_SID is "
                "the account that owns it"
            )
        action = "update"
        updated = match.update(voice_url=twiml_url, voice_method="POST")
    except requests.RequestException as exc:
        raise NumberSetupError(
            _scrub(f"could not reach Twilio to {action} {number}: {exc}", token)
        ) from None
    except TwilioException as exc:
        raise NumberSetupError(_scrub(_twilio_reason(exc, action, number), token)) from None
    return NumberChange(
        sid=str(match.sid),
        phone_number=number,
        old_voice_url=match.voice_url,
        old_voice_method=match.voice_method,
        new_voice_url=str(updated.voice_url or twiml_url),
        new_voice_method=str(updated.voice_method or "POST"),
    )


def _e164(phone_number: str) -> str:
    number = re.sub(r"[\s().-]", "", phone_number or "")
    if not re.fullmatch(r"\+[1-9]\d{6,14}", number):
        raise NumberSetupError(
            f"{phone_number!r} is not a phone number in E.164 form, e.g. +15551234567"
        )
    return number


def _client_from_env(http_client: HttpClient | None) -> tuple[Client, str]:
    from twilio.rest import Client

    sid = os.environ.get("TWILIO_ACCOUNT_SID", "").strip()
    token = os.environ.get("TWILIO_AUTH_TOKEN", "").strip()
    missing = [
        name for name, v in (("TWILIO_ACCOUNT_SID", sid), ("TWILIO_AUTH_TOKEN", token)) if not v
    ]
    if missing:
        raise NumberSetupError(
            f"set {' and '.join(missing)} (Twilio Console > Account info) so relaylab can "
            "point your number at the relay, or set its voice webhook by hand"
        )
    return Client(sid, token, http_client=http_client), token


def _twilio_error(exc: TwilioException) -> tuple[int | None, int | None, str]:
    """(HTTP status, Twilio error code, message) from any TwilioException."""
    if isinstance(exc, TwilioRestException):
        return exc.status, exc.code, exc.msg
    if isinstance(exc, TwilioServiceException):
        return exc.status, exc.code, exc.detail or exc.title
    # A failed page read (list) raises a bare TwilioException("Unable to fetch page",
    # response) rather than a TwilioRestException: dig the error out of the response.
    response = next((a for a in exc.args if isinstance(a, Response)), None)
    if response is None:
        return None, None, str(exc)
    try:
        payload = json.loads(response.text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return response.status_code, None, response.text.strip()[:200]
    message = payload.get("message") or payload.get("detail") or payload.get("title") or ""
    return response.status_code, payload.get("code"), str(message)


def _twilio_reason(exc: TwilioException, action: str, number: str) -> str:
    status, code, message = _twilio_error(exc)
    http = f"HTTP {status}" if status else "no HTTP status"
    error = f", error {code}" if code else ""
    reason = f"Twilio refused to {action} {number} ({http}{error}): {message}"
    if status == 401:
        reason += (
            ". Check that TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are this account's "
            "Account SID and Auth Token (Twilio Console > Account info)"
        )
    elif status == 404:
        reason += f". Is {number} on the account in TWILIO_ACCOUNT_SID?"
    if code:
        reason += f". More: https://www.twilio.com/docs/errors/{code}"
    return reason
