"""The frames ConversationRelay sends the relay, built the way Twilio writes them: for the
simulated caller, the benchmarks and the tests (relaylab.core.protocol reads them). Pure."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _dump_twilio(message: dict[str, Any]) -> str:
    # Compact, non-ASCII as it is. A lone surrogate (useful in tests of hostile input)
    # cannot be sent in a UTF-8 text frame, so then every non-ASCII char is \u-escaped.
    frame = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if not frame.isascii() and _SURROGATE.search(frame):
        frame = json.dumps(message, separators=(",", ":"), allow_nan=False)
    return frame


def setup_frame(
    call_sid: str,
    *,
    session_id: str | None = None,
    account_sid: str = "AC" + "0" * 32,
    from_number: str = "+15550100",
    to_number: str = "+15550101",
    custom_parameters: dict[str, str] | None = None,
    call_status: str = "RINGING",
    direction: str = "inbound",
) -> str:
    """The ``setup`` frame Twilio sends first, with every field of PROTOCOL.md section 3.

    ``session_id`` defaults to a fresh ``VX...`` id, as each real session has its own.
    """
    return _dump_twilio(
        {
            "type": "setup",
            "sessionId": session_id if session_id is not None else "VX" + uuid.uuid4().hex,
            "callSid": call_sid,
            "parentCallSid": "",
            "accountSid": account_sid,
            "from": from_number,
            "to": to_number,
            "forwardedFrom": "",
            "callerName": "",
            "direction": direction,
            "callType": "PSTN",
            "callStatus": call_status,
            "customParameters": dict(custom_parameters or {}),
        }
    )


def prompt_frame(text: str, *, last: bool = True, lang: str = "en-US") -> str:
    """A ``prompt`` frame: the caller's words (``last=False`` for a partial prompt)."""
    return _dump_twilio({"type": "prompt", "voicePrompt": text, "lang": lang, "last": last})


def interrupt_frame(utterance: str, duration_ms: float | None = None) -> str:
    """An ``interrupt`` frame: what the caller heard before speaking, and for how long.

    A whole-number duration is written as an integer (``460``), as Twilio's docs show it;
    None leaves the field out.
    """
    message: dict[str, Any] = {"type": "interrupt", "utteranceUntilInterrupt": utterance}
    if duration_ms is not None:
        if isinstance(duration_ms, float) and duration_ms.is_integer():
            duration_ms = int(duration_ms)
        message["durationUntilInterruptMs"] = duration_ms
    return _dump_twilio(message)


def dtmf_frame(digit: str) -> str:
    """A ``dtmf`` frame: the caller pressed ``digit``."""
    return _dump_twilio({"type": "dtmf", "digit": digit})


def info_frame(name: str, value: object) -> str:
    """An ``info`` frame: ``info_frame("agentSpeaking", "on")``, ``("tokensPlayed", text)``."""
    return _dump_twilio({"type": "info", "name": name, "value": value})


def config_updated_frame(settings: dict[str, Any]) -> str:
    """A ``configUpdated`` frame: Twilio confirming the settings it applied."""
    return _dump_twilio({"type": "configUpdated", "config": dict(settings)})


def error_frame(description: str) -> str:
    """An ``error`` frame: Twilio reporting a bad outbound message."""
    return _dump_twilio({"type": "error", "description": description})
