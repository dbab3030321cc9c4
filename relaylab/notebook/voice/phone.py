"""The voice phone widget: ConversationRelay in the learner's browser, frames via the kernel.

``VoicePhone(lab)`` (or ``lab.voice_phone()``) shows a phone that speaks the relay's
replies with the browser's speech synthesis and hears the learner with its speech
recognition. The browser part is ``widget.js`` (an anywidget ES module); this part
holds the WebSocket to the relay on the Lab's loop (RelayBridge), so it works when
Jupyter runs on another machine.
"""

from __future__ import annotations

import contextvars
import logging
from collections import deque
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from relaylab.core.log_lines import loggable
from relaylab.notebook.voice.bridge import CallIdentity, RelayBridge

log = logging.getLogger("relaylab.notebook.voice")
HERE = Path(__file__).parent
MODES = ("headphones", "speaker")


class VoicePhone(anywidget.AnyWidget):
    """A phone in the notebook: press Call, speak, hear Claude, talk over it.

    ``mode`` is "headphones" (barge-in on: talk any time) or "speaker" (push to talk,
    so the speakers do not interrupt Claude). ``custom_parameters`` are added to the
    TwiML's ``<Parameter>`` values in ``setup``.
    """

    _esm = HERE / "widget.js"
    _css = HERE / "widget.css"
    mode = traitlets.Unicode("headphones").tag(sync=True)

    def __init__(
        self,
        lab: Any,
        *,
        mode: str = "headphones",
        from_number: str = "+15550100",
        to_number: str = "+15550101",
        custom_parameters: dict[str, str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        super().__init__(mode=mode)
        self.lab = lab
        self._from_number, self._to_number = from_number, to_number
        self._custom_parameters = custom_parameters
        self.bridge = self._new_bridge()
        # The relay's sessions opened since, to find this phone's call after it ended
        # (a session learns its CallSid from `setup`, after the listener runs).
        self._sessions: deque[Any] = deque(maxlen=20)
        lab.server.session_listeners.append(self._sessions.append)
        self.on_msg(self._on_browser)

    def _new_bridge(self) -> RelayBridge:
        identity = CallIdentity(  # a new CallSid for each call
            from_number=self._from_number,
            to_number=self._to_number,
            custom_parameters=dict(self._custom_parameters or {}),
        )
        return RelayBridge(
            f"{self.lab.http_url}/twiml",
            self._to_browser,
            auth_token=self.lab.settings.auth_token,
            public_url=self.lab.settings.public_url,
            identity=identity,
        )

    def __repr__(self) -> str:  # the text/plain of the output, where no browser renders it
        return (
            f"VoicePhone ({self.mode} mode): open this notebook in a browser and press Call "
            "to talk to the relay"
        )

    @property
    def call_sid(self) -> str:
        """The CallSid of this phone's current (or last) call."""
        return self.bridge.identity.call_sid

    def conversation(self) -> list[dict[str, Any]] | None:
        """The relay's stored history for this phone's call (None before a call), also
        after the call ended."""
        return self.lab.run(self._conversation())

    async def _conversation(self) -> list[dict[str, Any]] | None:
        sid = self.call_sid
        session = next((s for s in reversed(self._sessions) if s.call_sid == sid), None)
        return session.conversation.snapshot() if session is not None else None

    @traitlets.validate("mode")
    def _valid_mode(self, proposal: Any) -> str:
        if proposal["value"] not in MODES:
            raise traitlets.TraitError(f"mode must be one of {', '.join(MODES)}")
        return proposal["value"]

    def _on_browser(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("op") == "dial" and self.bridge.twiml:
            self.bridge = self._new_bridge()  # each call gets its own CallSid
        try:
            self.lab.loop.submit(self.bridge.handle(content))
        except RuntimeError as exc:  # the lab was stopped
            log.warning("voice phone: %s", loggable(str(exc)))
            self._to_browser({"op": "error", "message": str(exc)})

    def _to_browser(self, envelope: dict[str, Any]) -> None:
        # An empty context, as in widgets/live_view.py: the loop's tasks carry the context of the
        # cell that started the Lab, and ipykernel would file these messages under it.
        contextvars.Context().run(self.send, envelope)
