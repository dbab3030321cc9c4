"""ConversationRelay messages: parse what Twilio sends, build what the relay sends back.

Pure functions and small dataclasses, no I/O. Field names follow Python style
(``voice_prompt``); the wire names (``voicePrompt``) live only in this module.
See PROTOCOL.md for the facts behind each shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_FRAME_BYTES = 64 * 1024
"""Largest inbound frame the relay accepts. Real ConversationRelay frames are far smaller."""


class ProtocolError(ValueError):
    """An inbound frame that is not a valid ConversationRelay message."""


@dataclass(frozen=True, slots=True)
class Setup:
    """The first message of every call: who is calling, and the TwiML ``<Parameter>`` values."""

    session_id: str
    call_sid: str
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    direction: str = ""
    call_type: str = ""
    call_status: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    type: str = "setup"


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the caller said. ``last`` is False only for partial prompts."""

    voice_prompt: str
    lang: str = ""
    last: bool = True
    type: str = "prompt"


@dataclass(frozen=True, slots=True)
class Interrupt:
    """The caller spoke over the assistant; ``utterance_until_interrupt`` is what they heard."""

    utterance_until_interrupt: str
    duration_until_interrupt_ms: float | None = None
    type: str = "interrupt"


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the caller pressed (needs ``dtmfDetection`` in the TwiML)."""

    digit: str
    type: str = "dtmf"


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Twilio reporting a problem with something the relay sent."""

    description: str
    type: str = "error"


@dataclass(frozen=True, slots=True)
class Info:
    """Debug information (``debug`` attribute in the TwiML); shape not fixed by Twilio."""

    name: str
    value: Any
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    type: str = "info"


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message type this relay does not know yet; kept so it can be logged, never fatal."""

    type: str
    raw: dict[str, Any] = field(default_factory=dict)


Message = Setup | Prompt | Interrupt | Dtmf | ErrorMessage | Info | Unknown


def parse(frame: str | bytes) -> Message:
    """Turn one WebSocket frame into a message, or raise ProtocolError saying what is wrong."""
    if isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError("got a binary frame; ConversationRelay sends JSON in text frames only")
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"frame of {len(frame)} characters is larger than the {MAX_FRAME_BYTES} allowed"
        )
    try:
        data = json.loads(frame)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"frame must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError('frame has no "type" field')
    reader = _READERS.get(kind)
    return reader(data) if reader else Unknown(type=kind, raw=data)


def _text(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise ProtocolError(f'{data["type"]} message is missing "{name}"')
        return ""
    if not isinstance(value, str):
        raise ProtocolError(
            f'{data["type"]} message field "{name}" must be a string, got {type(value).__name__}'
        )
    return value


def _setup(data: dict[str, Any]) -> Setup:
    params = data.get("customParameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError('setup message field "customParameters" must be an object')
    return Setup(
        session_id=_text(data, "sessionId", required=False),
        call_sid=_text(data, "callSid", required=False),
        account_sid=_text(data, "accountSid", required=False),
        from_number=_text(data, "from", required=False),
        to_number=_text(data, "to", required=False),
        direction=_text(data, "direction", required=False),
        call_type=_text(data, "callType", required=False),
        call_status=_text(data, "callStatus", required=False),
        custom_parameters={str(k): str(v) for k, v in params.items()},
        raw=data,
    )


def _prompt(data: dict[str, Any]) -> Prompt:
    last = data.get("last", True)
    if not isinstance(last, bool):
        raise ProtocolError('prompt message field "last" must be true or false')
    return Prompt(
        voice_prompt=_text(data, "voicePrompt"),
        lang=_text(data, "lang", required=False),
        last=last,
    )


def _interrupt(data: dict[str, Any]) -> Interrupt:
    duration = data.get("durationUntilInterruptMs")
    if isinstance(duration, str):  # older docs show a numeric string
        try:
            duration = float(duration)
        except ValueError:
            raise ProtocolError(
                f'interrupt field "durationUntilInterruptMs" is not a number: {duration!r}'
            ) from None
    elif duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float)
    ):
        raise ProtocolError('interrupt field "durationUntilInterruptMs" must be a number')
    return Interrupt(
        utterance_until_interrupt=_text(data, "utteranceUntilInterrupt", required=False),
        duration_until_interrupt_ms=duration,
    )


def _dtmf(data: dict[str, Any]) -> Dtmf:
    return Dtmf(digit=_text(data, "digit"))


def _error(data: dict[str, Any]) -> ErrorMessage:
    return ErrorMessage(description=_text(data, "description", required=False))


def _info(data: dict[str, Any]) -> Info:
    return Info(name=str(data.get("name", "")), value=data.get("value"), raw=data)


_READERS = {
    "setup": _setup,
    "prompt": _prompt,
    "interrupt": _interrupt,
    "dtmf": _dtmf,
    "error": _error,
    "info": _info,
}


# Outbound: each builder returns the JSON text of one frame.


_json_string = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def _dump(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def text(
    token: str,
    last: bool = False,
    *,
    lang: str | None = None,
    interruptible: bool | None = None,
    preemptible: bool | None = None,
) -> str:
    """A ``text`` frame: tokens for Twilio to speak; ``last=True`` ends the talk cycle."""
    if not isinstance(token, str):
        raise TypeError(f"token must be a string, got {type(token).__name__}")
    if lang is None and interruptible is None and preemptible is None:
        # The hot path (one frame per token): the same JSON as _dump, built directly.
        end = ',"last":true}' if last else ',"last":false}'
        return '{"type":"text","token":' + _json_string(token) + end
    message: dict[str, Any] = {"type": "text", "token": token, "last": last}
    _add_optional(message, lang=lang, interruptible=interruptible, preemptible=preemptible)
    return _dump(message)


def play(
    source: str,
    *,
    loop: int = 1,
    interruptible: bool | None = None,
    preemptible: bool | None = None,
) -> str:
    """A ``play`` frame: Twilio plays the audio file at ``source``."""
    message: dict[str, Any] = {"type": "play", "source": source, "loop": loop}
    _add_optional(message, interruptible=interruptible, preemptible=preemptible)
    return _dump(message)


def send_digits(digits: str) -> str:
    """A ``sendDigits`` frame: Twilio plays DTMF tones (0-9, w, #, *)."""
    if not digits or any(ch not in "0123456789w#*" for ch in digits):
        raise ValueError(f"digits may contain only 0-9, w, # and *: {digits!r}")
    return _dump({"type": "sendDigits", "digits": digits})


def language(*, tts_language: str | None = None, transcription_language: str | None = None) -> str:
    """A ``language`` frame: switch the speech and/or transcription language mid-call."""
    if tts_language is None and transcription_language is None:
        raise ValueError("give tts_language, transcription_language, or both")
    message: dict[str, Any] = {"type": "language"}
    _add_optional(message, ttsLanguage=tts_language, transcriptionLanguage=transcription_language)
    return _dump(message)


def end(handoff_data: str | dict[str, Any] | None = None) -> str:
    """An ``end`` frame: close the session; ``handoff_data`` goes to the Connect action URL."""
    if handoff_data is None:
        handoff_data = ""
    if not isinstance(handoff_data, str):
        handoff_data = json.dumps(handoff_data)
    return _dump({"type": "end", "handoffData": handoff_data})


def _add_optional(message: dict[str, Any], **fields: Any) -> None:
    message.update({name: value for name, value in fields.items() if value is not None})
