"""X-Twilio-Signature: sign like Twilio, and check what the relay receives.

Twilio signs the full public URL it requested (plus sorted form fields for a POST)
with HMAC-SHA1 keyed by the account's Auth Token. The relay sees only a path and
a Host header, and behind a tunnel that Host is local, so the checker rebuilds the
URL Twilio used before asking `twilio.request_validator.RequestValidator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator

SIGNATURE_HEADER = "X-Twilio-Signature"

_PLAIN_SCHEMES = {"http", "ws"}


def sign(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The X-Twilio-Signature Twilio would send for `url` (and POST `params`)."""
    _require_token(auth_token)
    return RequestValidator(auth_token).compute_signature(url, dict(params or {}))


def public_urls(
    path: str, *, host: str | None, public_url: str | None, websocket: bool
) -> list[str]:
    """The URL(s) Twilio may have signed for a request received at `path` with `host`.

    `path` includes the query string ("/ws?x=1"). With `public_url` configured there
    is exactly one: its host with wss:// (websocket) or https:// (webhook); an
    http:// public_url (a local address) gives ws:// / http:// instead. Without it,
    the Host header gives two, secure scheme first, then plain, because a local
    simulated call signs the ws:// URL it dials. No host and no public_url: none.
    """
    if not path.startswith("/"):
        path = "/" + path
    secure, plain = ("wss", "ws") if websocket else ("https", "http")
    if public_url:
        scheme, netloc = _split_public_url(public_url)
        return [f"{plain if scheme in _PLAIN_SCHEMES else secure}://{netloc}{path}"]
    if not host:
        return []
    return [f"{secure}://{host}{path}", f"{plain}://{host}{path}"]


def verify(
    auth_token: str,
    *,
    path: str,
    host: str | None,
    public_url: str | None,
    websocket: bool,
    signature: str | None,
    params: Mapping[str, str] | None = None,
) -> str | None:
    """None when `signature` is valid for a URL Twilio may have signed, else the reason.

    The reason is meant for a learner's log and never contains the token.
    """
    _require_token(auth_token)
    if not signature:
        return (
            f"missing {SIGNATURE_HEADER} header: an auth token is configured, so only "
            "requests signed by Twilio (or by a simulated call using the same token) are accepted"
        )
    candidates = public_urls(path, host=host, public_url=public_url, websocket=websocket)
    if not candidates:
        return (
            f"cannot check {SIGNATURE_HEADER}: the request has no Host header and no "
            "--public-url is set, so the URL Twilio signed cannot be rebuilt"
        )
    validator = RequestValidator(auth_token)
    form = dict(params or {})
    if any(validator.validate(url, form, signature) for url in candidates):
        return None
    hint = (
        "is --public-url the address Twilio calls?"
        if public_url
        else "if Twilio reaches this server through a tunnel, is --public-url set to its address?"
    )
    return (
        f"{SIGNATURE_HEADER} does not match {' or '.join(candidates)}: is TWILIO_AUTH_TOKEN "
        f"the auth token of the account that owns this number, and {hint}"
    )


def _split_public_url(public_url: str) -> tuple[str, str]:
    """(scheme, host[:port]) of a configured public URL; a bare host means https."""
    text = public_url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if not parts.netloc:
        raise ValueError(f"public URL {public_url!r} has no host")
    return parts.scheme.lower(), parts.netloc


def _require_token(auth_token: str) -> None:
    if not auth_token:
        raise ValueError("auth_token is empty: signatures need the account's Auth Token")
