"""The addresses Twilio reaches a relay at, from one public base URL.

Twilio needs three: the voice webhook (/twiml), the WebSocket (/ws) and the
``<Connect action>`` URL (/action). The server answers on all three at its root.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import urlsplit


class PublicUrlError(ValueError):
    """A public URL the relay cannot be reached at, with what to pass instead."""


@dataclass(frozen=True)
class PublicEndpoints:
    """The addresses Twilio uses to reach a relay at one public base URL."""

    base_url: str
    twiml_url: str
    ws_url: str
    action_url: str


def endpoints(public_url: str) -> PublicEndpoints:
    """PublicEndpoints for "https://host", "host" or "host:port", trailing slash or not.

    http:// is accepted only for a local host (localhost, 127.x, ::1), which then gets
    ws:// for the socket; Twilio's cloud needs https and wss.
    """
    text = (public_url or "").strip()
    if not text:
        raise PublicUrlError("public URL is empty: pass e.g. --public-url https://abc.ngrok.app")
    parts = urlsplit(text if "://" in text else "https://" + text)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise PublicUrlError(
            f"public URL {public_url!r} must start with https:// (the relay adds /twiml and /ws)"
        )
    if not parts.hostname:
        raise PublicUrlError(f"public URL {public_url!r} has no host name")
    if parts.path.strip("/") or parts.query or parts.fragment:
        # Signature checks rebuild the URL from this host plus the path the server
        # received, so a path prefix would break them.
        raise PublicUrlError(
            f"public URL {public_url!r} must be just scheme and host (like "
            f"https://{parts.netloc}): the relay serves /twiml and /ws at its root"
        )
    if scheme == "http" and not is_local(parts.hostname):
        raise PublicUrlError(
            f"public URL {public_url!r} uses http://, but Twilio only calls https:// webhooks "
            f"and wss:// sockets: use https://{parts.netloc}"
        )
    base = f"{scheme}://{parts.netloc}"
    ws_scheme = "wss" if scheme == "https" else "ws"
    return PublicEndpoints(
        base_url=base,
        twiml_url=f"{base}/twiml",
        ws_url=f"{ws_scheme}://{parts.netloc}/ws",
        action_url=f"{base}/action",
    )


def is_local(hostname: str) -> bool:
    """Whether ``hostname`` is this machine (localhost or a loopback address)."""
    if hostname.lower() == "localhost" or hostname.lower().endswith(".localhost"):
        return True
    try:
        return ip_address(hostname).is_loopback
    except ValueError:
        return False
