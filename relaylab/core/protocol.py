"""ConversationRelay messages: parse what Twilio sends, build what the relay sends back.

Pure functions and small dataclasses, no I/O. Field names follow Python style
(``voice_prompt``); the wire names (``voicePrompt``) live only in this module.
See PROTOCOL.md for the facts behind each shape.

What ``parse`` promises, whatever arrives on the socket:

- It returns a message or raises ``ProtocolError``; nothing else gets out
  (not ``RecursionError``, ``ValueError`` from a huge number, ``UnicodeError``...).
- ``ProtocolError`` messages are one line and short; any caller text in them has
  been through ``loggable`` (relaylab.core.log_lines), so they can go straight into a log line.
- Lone surrogates (``"\\ud800"`` is valid JSON but not valid Unicode) are replaced
  by U+FFFD in every string of the message, ``raw`` included: the caller's other
  words are kept, and nothing downstream (the SDK, a UTF-8 socket) chokes on them.
- Over-long prompts and utterances are cut to the limits below, and the message
  says so in ``truncated_from``.

Sections: inbound messages and ``parse``; outbound builders (relay to Twilio).
Twilio's side of the wire is built in relaylab.core.twilio_frames, and caller text is
made safe for logs by relaylab.core.log_lines.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from relaylab.core.log_lines import loggable

# -- limits ----------------------------------------------------------------------------

MAX_FRAME_BYTES = 64 * 1024
"""Largest inbound frame (UTF-8 bytes) the relay accepts. Real ConversationRelay frames
are far smaller: a setup is about 500 bytes, a long prompt a few KB."""

MAX_PROMPT_CHARS = 4_000
"""A longer ``voicePrompt`` is cut to its first this-many characters. One spoken turn
runs at about 150 words (roughly 900 characters) a minute, so 4,000 characters is over
four minutes of unbroken speech: no real turn reaches it, while a hostile caller cannot
put 64 KB into every turn of the history sent to the model."""

MAX_UTTERANCE_CHARS = 2_000
"""A longer ``utteranceUntilInterrupt`` keeps only its last this-many characters: the
end is where the caller cut in, which is what the relay has to locate. A voice reply is
a few sentences; 2,000 characters is over two minutes of agent speech at 165 words a
minute. The cap bounds the cost of lining the utterance up with the reply."""

MAX_NESTING = 16
"""Deepest nesting of JSON objects/arrays accepted (the frame itself is level 1).
ConversationRelay uses two levels (``setup.customParameters``); the cap keeps every
``raw`` dict safe to walk, print or re-serialise without hitting Python's recursion limit."""


class ProtocolError(ValueError):
    """An inbound frame that is not a valid ConversationRelay message."""


# -- inbound messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """The first message of every call: who is calling, and the TwiML ``<Parameter>`` values.

    ``custom_parameters`` is always string to string: a non-string value is written as
    its JSON text (``3`` -> ``"3"``, ``true`` -> ``"true"``), ``null`` as ``""``.
    """

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
    type: Literal["setup"] = "setup"


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the caller said. ``last`` is False only for partial prompts.

    ``truncated_from`` is the original length when ``voicePrompt`` was longer than
    ``MAX_PROMPT_CHARS`` (``voice_prompt`` then holds its start), else None.
    """

    voice_prompt: str
    lang: str = ""
    last: bool = True
    type: Literal["prompt"] = "prompt"
    truncated_from: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Interrupt:
    """The caller spoke over the assistant; ``utterance_until_interrupt`` is what they heard.

    ``truncated_from`` is the original length when the utterance was longer than
    ``MAX_UTTERANCE_CHARS`` (the utterance then holds its end), else None.
    """

    utterance_until_interrupt: str
    duration_until_interrupt_ms: float | None = None
    type: Literal["interrupt"] = "interrupt"
    truncated_from: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the caller pressed (needs ``dtmfDetection`` in the TwiML)."""

    digit: str
    type: Literal["dtmf"] = "dtmf"


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Twilio reporting a problem with something the relay sent."""

    description: str
    type: Literal["error"] = "error"


@dataclass(frozen=True, slots=True)
class Info:
    """Events asked for with ``debug``/``events`` in the TwiML.

    ``name`` and ``value`` are strings: ``agentSpeaking``/``clientSpeaking`` with
    ``"on"``/``"off"``, ``tokensPlayed`` with the played text. A non-string value is
    written as its JSON text (``null`` as ``""``); ``raw`` keeps the frame as sent.
    """

    name: str
    value: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    type: Literal["info"] = "info"


@dataclass(frozen=True, slots=True)
class ConfigUpdated:
    """Twilio confirming session settings the relay changed with ``config`` (or ``hints``).

    ``settings`` maps each setting's TwiML attribute name (``interruptible``, ``hints``...)
    to its new value. Where the settings sit in the frame is *unconfirmed* (PROTOCOL.md
    section 3): under a ``config`` object, or beside ``type``; both are read.
    """

    settings: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    type: Literal["configUpdated"] = "configUpdated"


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message type this relay does not know yet; kept so it can be logged, never fatal."""

    type: str
    raw: dict[str, Any] = field(default_factory=dict)


Message = Setup | Prompt | Interrupt | Dtmf | ErrorMessage | Info | ConfigUpdated | Unknown


def parse(frame: str | bytes) -> Message:
    """Turn one WebSocket frame into a message, or raise ProtocolError saying what is wrong.

    ConversationRelay sends JSON in text frames, so ``bytes`` (a binary frame) is refused.
    """
    if not isinstance(frame, str):
        raise _not_text(frame)
    _check_size(frame)
    data = _decode(frame)
    if not isinstance(data, dict):
        raise ProtocolError(f"frame must be a JSON object, got {_json_type(data)}")
    # Deep nesting needs many brackets; counting them is far cheaper than walking.
    if frame.count("{") + frame.count("[") > MAX_NESTING:
        _check_nesting(data)
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError('frame has no "type" field')
    # Without a \u escape or a non-ASCII character, no string can hold a surrogate.
    dirty = "\\u" in frame or not frame.isascii()
    reader = _READERS.get(kind)
    if reader is not None:
        return reader(data, dirty)
    raw = _cleaned(data) if dirty else data
    return Unknown(type=raw["type"], raw=raw)


def _not_text(frame: object) -> ProtocolError:
    if isinstance(frame, bytes | bytearray | memoryview):
        return ProtocolError(
            f"got a binary frame ({len(frame)} bytes); "
            "ConversationRelay sends JSON in text frames only"
        )
    return ProtocolError(f"frame must be text, got {type(frame).__name__}")


def _check_size(frame: str) -> None:
    size = len(frame)  # UTF-8 needs at least one byte a character, at most four
    if MAX_FRAME_BYTES // 4 < size <= MAX_FRAME_BYTES and not frame.isascii():
        size = len(frame.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"frame is larger than the {MAX_FRAME_BYTES} bytes allowed "
            f"(MAX_FRAME_BYTES): {size} or more"
        )


def _reject_constant(name: str) -> float:
    raise ProtocolError(f"frame holds {name}, which is not valid JSON")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ProtocolError(f"frame holds a number too large for a float: {loggable(literal, 40)}")
    return number


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _decode(frame: str) -> Any:
    try:
        return _DECODER.decode(frame)
    except ProtocolError:
        raise
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise ProtocolError(
            f"frame is nested too deeply (more than {MAX_NESTING} levels allowed)"
        ) from None
    except ValueError:  # int() refuses numbers of more than sys.get_int_max_str_digits() digits
        raise ProtocolError("frame holds a number with too many digits") from None


def _check_nesting(data: dict[str, Any]) -> None:
    """Raise ProtocolError if ``data`` nests deeper than MAX_NESTING (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ProtocolError(
                f"frame is nested too deeply (more than {MAX_NESTING} levels allowed)"
            )
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Replace lone surrogates (left by JSON escapes such as \\ud800) with U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")  # several times faster than a regex search when all is well
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def _cleaned(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with every string, keys included, passed through ``_clean``."""
    root: dict[str, Any] = {}
    stack: list[tuple[Any, Any]] = [(data, root)]

    def copy_of(value: object) -> object:
        if isinstance(value, dict | list):
            copy: dict[str, Any] | list[Any] = {} if isinstance(value, dict) else []
            stack.append((value, copy))
            return copy
        return _clean(value) if isinstance(value, str) else value

    while stack:
        source, target = stack.pop()
        if isinstance(source, dict):
            for key, value in source.items():
                target[_clean(key)] = copy_of(value)
        else:
            target.extend(copy_of(value) for value in source)
    return root


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _text(data: dict[str, Any], name: str, dirty: bool, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise ProtocolError(f'{data["type"]} message is missing "{name}"')
        return ""
    if not isinstance(value, str):
        raise ProtocolError(
            f'{data["type"]} message field "{name}" must be a string, got {_json_type(value)}'
        )
    return _clean(value) if dirty else value


def _as_text(value: object) -> str:
    """A JSON value as a string: strings as they are, ``null`` as "", others as JSON text.

    ``value`` comes from a parsed, nesting-checked, cleaned frame, so dumping it is safe.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _setup(data: dict[str, Any], dirty: bool) -> Setup:
    raw = _cleaned(data) if dirty else data
    params = raw.get("customParameters")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise ProtocolError(
            f'setup message field "customParameters" must be an object, got {_json_type(params)}'
        )
    return Setup(
        session_id=_text(raw, "sessionId", False, required=False),
        call_sid=_text(raw, "callSid", False, required=False),
        account_sid=_text(raw, "accountSid", False, required=False),
        from_number=_text(raw, "from", False, required=False),
        to_number=_text(raw, "to", False, required=False),
        direction=_text(raw, "direction", False, required=False),
        call_type=_text(raw, "callType", False, required=False),
        call_status=_text(raw, "callStatus", False, required=False),
        custom_parameters={key: _as_text(value) for key, value in params.items()},
        raw=raw,
    )


def _prompt(data: dict[str, Any], dirty: bool) -> Prompt:
    last = data.get("last", True)
    if not isinstance(last, bool):
        raise ProtocolError('prompt message field "last" must be true or false')
    words = _text(data, "voicePrompt", False)
    truncated_from = None
    if len(words) > MAX_PROMPT_CHARS:
        truncated_from = len(words)
        words = words[:MAX_PROMPT_CHARS]
    return Prompt(
        voice_prompt=_clean(words) if dirty else words,
        lang=_text(data, "lang", dirty, required=False),
        last=last,
        truncated_from=truncated_from,
    )


def _interrupt(data: dict[str, Any], dirty: bool) -> Interrupt:
    heard = _text(data, "utteranceUntilInterrupt", False, required=False)
    truncated_from = None
    if len(heard) > MAX_UTTERANCE_CHARS:
        truncated_from = len(heard)
        heard = heard[-MAX_UTTERANCE_CHARS:]  # the end is where the caller cut in
    return Interrupt(
        utterance_until_interrupt=_clean(heard) if dirty else heard,
        duration_until_interrupt_ms=_duration(data.get("durationUntilInterruptMs")),
        truncated_from=truncated_from,
    )


def _duration(value: object) -> float | None:
    """``durationUntilInterruptMs``: a number, or a numeric string as in older docs."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ProtocolError(
            f'interrupt field "durationUntilInterruptMs" must be a number, got {_json_type(value)}'
        )
    try:
        duration = float(value)
    except (ValueError, OverflowError):
        raise ProtocolError(
            f'interrupt field "durationUntilInterruptMs" is not a number: {loggable(value, 40)}'
        ) from None
    if not math.isfinite(duration) or duration < 0:
        raise ProtocolError(
            'interrupt field "durationUntilInterruptMs" must be a finite number of '
            f"milliseconds, not below 0: {loggable(value, 40)}"
        )
    return duration


def _dtmf(data: dict[str, Any], dirty: bool) -> Dtmf:
    return Dtmf(digit=_text(data, "digit", dirty))


def _error(data: dict[str, Any], dirty: bool) -> ErrorMessage:
    return ErrorMessage(description=_text(data, "description", dirty, required=False))


def _info(data: dict[str, Any], dirty: bool) -> Info:
    raw = _cleaned(data) if dirty else data
    return Info(name=_as_text(raw.get("name")), value=_as_text(raw.get("value")), raw=raw)


def _config_updated(data: dict[str, Any], dirty: bool) -> ConfigUpdated:
    raw = _cleaned(data) if dirty else data
    nested = raw.get("config")
    settings = dict(nested) if isinstance(nested, dict) else {}
    settings.update((k, v) for k, v in raw.items() if k not in ("type", "config"))
    return ConfigUpdated(settings=settings, raw=raw)


_READERS: dict[str, Callable[[dict[str, Any], bool], Message]] = {
    "setup": _setup,
    "prompt": _prompt,
    "interrupt": _interrupt,
    "dtmf": _dtmf,
    "error": _error,
    "info": _info,
    "configUpdated": _config_updated,
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


CLOSE_TALK_CYCLE = '{"type":"text","token":"","last":true}'
"""The frame that closes a talk cycle with no more words: after an interrupt (or a
barge-in) the relay sends exactly one of it, and no word of the cut reply."""


def is_cycle_close(message: dict[str, Any]) -> bool:
    """Is ``message`` (a parsed outbound frame) an empty ``text`` with ``last: true``?"""
    return (
        message.get("type") == "text" and message.get("token") == "" and message.get("last") is True
    )


def words_and_closes(messages: list[dict[str, Any]]) -> tuple[list[str], int]:
    """The tokens with words among ``text`` messages (parsed outbound frames), and how many
    empty ``last: true`` frames there are: after an interrupt, ``([], 1)``."""
    texts = [m for m in messages if m.get("type") == "text"]
    return [m["token"] for m in texts if m.get("token")], sum(map(is_cycle_close, texts))


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


def language(
    *,
    tts_language: str | None = None,
    transcription_language: str | None = None,
    tts_provider: str | None = None,
    voice: str | None = None,
    transcription_provider: str | None = None,
    speech_model: str | None = None,
) -> str:
    """A ``language`` frame: switch the speech and/or transcription language mid-call.

    The extended form (dynamic configuration, 2026-10) also names the voice and the
    providers to use with it; a voice must suit its provider and language, or Twilio
    answers error 64106 and keeps the old ones.
    """
    if tts_language is None and transcription_language is None:
        raise ValueError("give tts_language, transcription_language, or both")
    message: dict[str, Any] = {"type": "language"}
    _add_optional(
        message,
        ttsLanguage=tts_language,
        transcriptionLanguage=transcription_language,
        ttsProvider=tts_provider,
        voice=voice,
        transcriptionProvider=transcription_provider,
        speechModel=speech_model,
    )
    return _dump(message)


def config(**settings: object) -> str:
    """A ``config`` frame (dynamic configuration): change session settings mid-call.

    Settings are named as TwiML attributes, snake_case or camelCase
    (``config(interruptible="dtmf", interrupt_sensitivity="low")``); None leaves one out.
    Twilio answers ``configUpdated``. The settings go beside ``type`` (where they sit is
    *unconfirmed*; the simulated Twilio also reads them under a ``config`` object).
    """
    present = {_camel(name): value for name, value in settings.items() if value is not None}
    if not present:
        raise ValueError("config needs at least one setting, e.g. interruptible='dtmf'")
    for name, value in present.items():
        if not isinstance(value, str | bool | int | float | list):
            raise ValueError(f"config setting {name} takes a string, number or bool: {value!r}")
    return _dump({"type": "config", **present})


def hints(words: str | list[str] | tuple[str, ...]) -> str:
    """A ``hints`` frame: words and phrases the transcriber should expect from now on (names,
    products), written as TwiML's ``hints`` attribute is: comma separated."""
    listed = [words] if isinstance(words, str) else list(words)
    cleaned = [w.strip() for word in listed for w in str(word).split(",") if w.strip()]
    if not cleaned:
        raise ValueError(f"hints needs at least one word or phrase, got {words!r}")
    return _dump({"type": "hints", "hints": ",".join(cleaned)})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def end(handoff_data: str | dict[str, Any] | None = None) -> str:
    """An ``end`` frame: close the session; ``handoff_data`` goes to the Connect action URL."""
    if handoff_data is None:
        handoff_data = ""
    if not isinstance(handoff_data, str):
        handoff_data = json.dumps(handoff_data)
    return _dump({"type": "end", "handoffData": handoff_data})


def _add_optional(message: dict[str, Any], **fields: Any) -> None:
    message.update({name: value for name, value in fields.items() if value is not None})
