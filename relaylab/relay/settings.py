"""Everything a relay is configured with, in one frozen object passed down the layers.

``relaylab serve`` builds it from the command line and the environment, a Lab from
its keyword arguments; the server, the web routes and each call read it, and nothing
copies it field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from relaylab.relay.session import Limits


@dataclass(frozen=True)
class SocketLimits:
    """What one ConversationRelay socket may cost the relay."""

    max_message_bytes: int = 1024 * 1024
    """Past this, websockets closes the socket (1009). Smaller oversized frames are
    refused one by one by protocol.parse, and the call goes on."""
    write_buffer_bytes: int = 256 * 1024
    """Frames queued for a caller that is not reading, before sends start waiting (the
    socket's kernel send buffer is capped to the same size)."""
    send_timeout: float = 10.0
    """Seconds a send may wait for a caller that stopped reading; then the call is closed
    and its model stream aborted."""
    max_request_head_bytes: int = 16 * 1024
    """Largest HTTP request line plus headers accepted on the relay's port."""
    request_head_timeout: float = 10.0
    """Seconds a new connection gets to send its request head; then 408, so connections
    that never say anything cannot pile up and use every file descriptor."""
    keepalive_timeout: float = 15.0
    """Seconds an HTTP connection may sit idle after a request, or take over its next
    request head; then it is closed."""
    request_body_timeout: float = 10.0
    """Seconds a webhook request's body gets to arrive; then 408 and the connection is
    closed, so a client dribbling a body cannot hold a descriptor."""
    setup_timeout: float = 10.0
    """Seconds an open ConversationRelay socket gets to send `setup` (Twilio sends it at
    once); then it is closed (1008)."""


@dataclass(frozen=True)
class RelaySettings:
    """How a relay listens, checks requests, answers TwiML and bounds each call."""

    host: str = "127.0.0.1"
    port: int = 0
    auth_token: str | None = field(default=None, repr=False)  # never shown
    public_url: str | None = None
    twiml: Mapping[str, Any] = field(default_factory=dict)
    """ConversationRelay attributes (snake_case) and children for the /twiml answer."""
    debug_events: bool = False
    """Ask Twilio for `info` frames (speaker events, tokens played): ground truth of what
    the caller heard."""
    dial_number: str | None = None
    """Where /action dials when a call is handed to a person."""
    reuse_port: bool = False
    """Let several relay processes listen on one port (``relaylab serve --workers N``)."""
    store: str | None = None
    """Where calls' state is kept for reconnects: None or "memory" (this process),
    "sqlite:///PATH" (the processes of one machine) or "redis://HOST:PORT" (several
    machines). See relaylab.relay.store."""
    speculate: bool = False
    """Start Claude on stable partial prompts, for every step (relaylab.relay.speculation);
    it takes TwiML ``partialPrompts``, which the /twiml answer then turns on."""
    speculate_after_ms: float = 150.0
    """How long a partial prompt must stay unchanged before it is speculated on."""
    prewarm: bool = False
    """Open the connection to the model when /twiml arrives and at setup
    (relaylab.relay.prewarm), so the first turn pays no connection set-up."""
    prompt_caching: bool = False
    """Mark the system prompt and the conversation so far with cache_control, so Claude
    reads the unchanged prefix from its prompt cache (relaylab.relay.caching)."""
    call: Limits = field(default_factory=Limits)
    socket: SocketLimits = field(default_factory=SocketLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "twiml", MappingProxyType(dict(self.twiml)))
