"""The kernel's half of the voice phone: dial the relay like Twilio, then carry frames.

The browser cannot reach the relay's socket when Jupyter runs on another machine, so
the widget's frames travel as widget messages to the kernel, and this bridge moves
them to and from a real WebSocket client on the Lab's loop. It knows nothing about
widgets: it takes envelopes (dicts) from the browser and hands envelopes back through
a callback, so the same class serves the anywidget and a plain test page.

Envelopes, browser to kernel: ``{"op": "dial"}``, ``{"op": "frame", "frame": "<json>"}``,
``{"op": "hangup"}``. Kernel to browser: ``{"op": "connected", "config": {...}}``,
``{"op": "frame", "frame": "<json>"}``, ``{"op": "closed", "code": .., "reason": ..}``,
``{"op": "error", "message": ..}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from relaylab.core import protocol
from relaylab.core.log_lines import loggable
from relaylab.shell import signatures
from relaylab.simulation import twilio_http
from relaylab.simulation.twilio_behaviour import RelayTwiml, TwilioBehaviour, read_twiml

log = logging.getLogger("relaylab.notebook.voice")

ToBrowser = Callable[[dict[str, Any]], None]
ACCOUNT_SID = "AC" + "0" * 32
MAX_BROWSER_FRAMES = 2_000  # per call: a runaway page cannot grow the log without bound


@dataclass
class CallIdentity:
    """Who calls whom: what Twilio would put in the webhook and in ``setup``."""

    call_sid: str = field(default_factory=lambda: "CA" + uuid.uuid4().hex)
    from_number: str = "+15550100"
    to_number: str = "+15550101"
    custom_parameters: dict[str, str] = field(default_factory=dict)


def browser_config(relay: RelayTwiml, who: CallIdentity) -> dict[str, Any]:
    """What the browser needs from the TwiML to behave like ConversationRelay."""
    twilio = TwilioBehaviour().with_twiml(relay)
    return {
        "callSid": who.call_sid,
        "sessionId": "VX" + uuid.uuid4().hex,
        "accountSid": ACCOUNT_SID,
        "from": who.from_number,
        "to": who.to_number,
        "customParameters": {**who.custom_parameters, **relay.parameters},
        "welcomeGreeting": twilio.welcome_greeting,
        "welcomeGreetingInterruptible": twilio.welcome_greeting_interruptible,
        "interruptible": twilio.interruptible,
        "reportInputDuringAgentSpeech": twilio.report_input_during_agent_speech,
        "partialPrompts": twilio.partial_prompts,
        "speakerEvents": twilio.speaker_events,
        "tokensPlayed": bool(twilio.tokens_played),
        "dtmfDetection": relay.dtmf_detection,
        "ttsLanguage": relay.language("tts"),
        "transcriptionLanguage": relay.language("transcription"),
    }


class RelayBridge:
    """One browser call to a relay: dials its /twiml webhook, opens the socket it names,
    and relays frames both ways. Runs on the Lab's loop; never raises into the browser
    path (problems become ``error`` envelopes and log lines)."""

    def __init__(
        self,
        twiml_url: str,
        to_browser: ToBrowser,
        *,
        auth_token: str | None = None,
        public_url: str | None = None,
        identity: CallIdentity | None = None,
    ) -> None:
        self.twiml_url = twiml_url
        self.to_browser = to_browser
        self.auth_token = auth_token
        self.public_url = public_url
        self.identity = identity or CallIdentity()
        self.twiml: RelayTwiml | None = None
        self.sent: list[str] = []  # frames the browser sent to the relay, in order
        self.received: list[str] = []  # frames the relay sent to the browser
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._order = asyncio.Lock()  # envelopes reach the relay in the order they came

    @property
    def connected(self) -> bool:
        return self._socket is not None

    async def handle(self, envelope: object) -> None:
        """Take one envelope from the browser."""
        op = envelope.get("op") if isinstance(envelope, dict) else None
        async with self._order:
            await self._handle(op, envelope)

    async def _handle(self, op: object, envelope: Any) -> None:
        try:
            if op == "dial":
                await self.dial()
            elif op == "frame":
                await self.forward(envelope.get("frame"))
            elif op == "hangup":
                await self.hang_up()
            else:
                log.warning("voice phone: ignored a browser message %s", loggable(envelope))
        except Exception as exc:  # the page must hear about it; the loop must go on
            log.warning("voice phone: %s failed: %s", loggable(op), loggable(str(exc)))
            self._tell({"op": "error", "message": str(exc)})

    async def dial(self) -> None:
        """Request the voice webhook, read its TwiML, open the relay's socket."""
        if self._socket is not None:
            raise RuntimeError("this phone is already on a call; hang up first")
        who = self.identity
        params = twilio_http.voice_webhook_params(
            who.call_sid, ACCOUNT_SID, who.from_number, who.to_number
        )
        exchange = await twilio_http.request(
            self.twiml_url,
            params,
            method="POST",
            auth_token=self.auth_token,
            public_url=self.public_url,
        )
        if exchange.status != 200:
            raise ConnectionError(
                f"the voice webhook answered HTTP {exchange.status}: {exchange.body[:200]!r}"
            )
        public_twiml_url = twilio_http.public_form(self.twiml_url, self.public_url)
        self.twiml = read_twiml(exchange.body, public_twiml_url)
        origin = _origin(self.twiml_url)
        headers = {}
        if self.auth_token:
            headers[signatures.SIGNATURE_HEADER] = signatures.sign(self.auth_token, self.twiml.url)
        self._socket = await connect(
            twilio_http.local_form(self.twiml.url, self.public_url, origin),
            additional_headers=headers,
            compression=None,
            open_timeout=10,
            logger=logging.getLogger("relaylab.websockets"),
        )
        self._reader = asyncio.create_task(self._read(self._socket))
        self._tell({"op": "connected", "config": browser_config(self.twiml, who)})

    async def forward(self, frame: object) -> None:
        """Send one frame from the browser to the relay, as Twilio would."""
        if not isinstance(frame, str):
            raise ValueError(f"a frame must be JSON text, not {type(frame).__name__}")
        if len(frame.encode("utf-8", "replace")) > protocol.MAX_FRAME_BYTES:
            raise ValueError(f"a frame of {len(frame)} characters is too big to send")
        if self._socket is None:
            raise RuntimeError("not on a call: dial first")
        if len(self.sent) < MAX_BROWSER_FRAMES:
            self.sent.append(frame)
        await self._socket.send(frame)

    async def hang_up(self) -> None:
        """Close the socket like a caller hanging up (the relay sees it close)."""
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self, socket: ClientConnection) -> None:
        try:
            async for frame in socket:
                text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                if len(self.received) < MAX_BROWSER_FRAMES:
                    self.received.append(text)
                self._tell({"op": "frame", "frame": text})
        except (ConnectionClosed, WebSocketException, OSError):
            pass
        finally:
            if self._socket is socket:
                self._socket = None
            self._tell({"op": "closed", "code": socket.close_code, "reason": socket.close_reason})

    def _tell(self, envelope: dict[str, Any]) -> None:
        try:
            self.to_browser(envelope)
        except Exception:
            log.exception("voice phone: could not reach the browser; the call goes on")


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
