"""Tokens that bind a ConversationRelay WebSocket URL to one call.

Twilio's signature on the ``/ws`` handshake covers only the URL, so a captured handshake
could be replayed. The TwiML the relay serves therefore carries, next to the CallSid, a
token: ``EXPIRES.NONCE.MAC``, where MAC is an HMAC over the CallSid, the expiry and the
nonce keyed from TWILIO_AUTH_TOKEN (so every worker and every relay sharing that token
can check it, and nobody without it can make one). It opens a new session once, before
it expires; what makes it single-use is a claim in the session store (relaylab.relay.resume).

Pure: no I/O, stdlib only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TOKEN_TTL = 120.0
"""Seconds from the TwiML to the socket: Twilio opens it within a second or two."""
_CONTEXT = b"relaylab ConversationRelay socket token v1"
_MAC_CHARS = 32


def _key(auth_token: str) -> bytes:
    return hmac.new(auth_token.encode(), _CONTEXT, hashlib.sha256).digest()


def _mac(auth_token: str, call_sid: str, expires: int, nonce: str) -> str:
    message = f"{call_sid}|{expires}|{nonce}".encode()
    return hmac.new(_key(auth_token), message, hashlib.sha256).hexdigest()[:_MAC_CHARS]


def mint(
    auth_token: str, call_sid: str, *, now: float | None = None, ttl: float = TOKEN_TTL
) -> str:
    """A new token for ``call_sid``, valid for ``ttl`` seconds."""
    expires = int((time.time() if now is None else now) + ttl)
    nonce = secrets.token_hex(8)
    return f"{expires}.{nonce}.{_mac(auth_token, call_sid, expires, nonce)}"


def check(auth_token: str, call_sid: str, token: str) -> tuple[str, int] | str:
    """``(nonce, expires)`` when ``token`` was made for ``call_sid`` with this auth token
    (expired or not: the caller decides what expiry means); else the reason it is not."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
        return "the socket URL's token is malformed"
    expires, nonce, mac = int(parts[0]), parts[1], parts[2]
    if not hmac.compare_digest(mac, _mac(auth_token, call_sid, expires, nonce)):
        return "the socket URL's token was not made for this call by this relay"
    return nonce, expires


def expired(expires: int, *, now: float | None = None) -> bool:
    return (time.time() if now is None else now) >= expires


def call_url(ws_url: str, call_sid: str, token: str | None = None) -> str:
    """``ws_url`` naming the call it is for (``?call=CA...``), and with ``token`` the
    socket token that binds it to that call (``mint`` below): a reconnect then
    finds the call whether or not Twilio sends a new ``setup``."""
    parts = urlsplit(ws_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k not in ("call", "token")]
    query.append(("call", call_sid))
    if token:
        query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))
