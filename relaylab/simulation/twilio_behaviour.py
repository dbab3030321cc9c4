"""How Twilio's side of ConversationRelay behaves, as pure functions and small classes.

- ``TwilioBehaviour``: the documented behaviours that vary (or that readings of the
  docs disagree on), each selectable; the defaults are the most common real ones.
- ``interrupt_mode`` / ``allows``: what may interrupt speech, and what input is reported.
- ``read_outbound``: Twilio's check of each message the relay sends (error 64107).
- ``utterance_for`` / ``interrupt_message``: the ``interrupt`` frame for what was heard.
- ``PlaybackReporter``: the ``info`` frames Twilio sends when the TwiML asks for them.
- ``read_twiml``: what Twilio reads from the TwiML the voice webhook answers.

No I/O here: ``relaylab.notebook.caller.SimulatedCall`` does the sockets and HTTP.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urljoin

from relaylab.core import log_lines, twilio_frames
from relaylab.core.spoken import speak
from relaylab.shell.twiml import GROUND_TRUTH_EVENTS, voice_problem
from relaylab.simulation.speech_clock import CHUNKINGS, Chunk, Chunking, SpeechClock

Utterance = Literal["prefix", "sentence", "clause"]
HttpMethod = Literal["POST", "GET"]
InterruptMode = Literal["none", "dtmf", "speech", "any"]
InputKind = Literal["dtmf", "speech"]
ReportTiming = Literal["at_once", "after_speech"]
TokensPlayed = bool | Literal["cumulative"]
InterruptedCycle = Literal["ends", "open_until_last"]
Sensitivity = Literal["low", "medium", "high"]
TurnDetection = Literal["silence", "semantic"]
SENSITIVITIES: tuple[Sensitivity, ...] = ("low", "medium", "high")
TURN_DETECTIONS: tuple[TurnDetection, ...] = ("silence", "semantic")
# Words of caller speech it takes to interrupt the agent at each interruptSensitivity (a
# model: Twilio documents the setting, not its threshold).
WORDS_TO_INTERRUPT = {"high": 1, "medium": 2, "low": 3}
# Short acknowledgements that ignoreBackchannel keeps from interrupting.
BACKCHANNELS = frozenset(
    [
        "uh-huh",
        "uh huh",
        "mm-hmm",
        "mhm",
        "mm",
        "yeah",
        "yes",
        "yep",
        "okay",
        "ok",
        "right",
        "sure",
        "i see",
        "got it",
    ]
)
INTERRUPTED_CYCLES: tuple[InterruptedCycle, ...] = ("ends", "open_until_last")
UTTERANCES: tuple[Utterance, ...] = ("prefix", "sentence", "clause")
METHODS: tuple[HttpMethod, ...] = ("POST", "GET")
INTERRUPT_MODES: tuple[InterruptMode, ...] = ("none", "dtmf", "speech", "any")
REPORT_TIMINGS: tuple[ReportTiming, ...] = ("at_once", "after_speech")

INVALID_MESSAGE_ERROR = 64107  # Twilio's error code for an invalid message from the app
INVALID_VOICE_ERROR = 64106  # an invalid language, voice and TTS provider combination
APP_UNREACHABLE_ERROR = 64102  # Twilio could not open the app's WebSocket
APP_CLOSED_ERROR = 64105  # the app closed the WebSocket: the session failed
VOICE_SETTINGS = ("ttsProvider", "voice", "transcriptionProvider", "speechModel")
MALFORMED_CLOSE_CODE = 1007  # WebSocket close code after too many invalid messages in a row
_DIGITS = re.compile(r"[0-9w#*]+\Z")


@dataclass(frozen=True)
class TwilioBehaviour:
    """Which of Twilio's documented behaviours a simulated call shows.

    - ``utterance``: what ``utteranceUntilInterrupt`` holds: "prefix", everything the
      caller heard of the reply (as Twilio's docs example reads); "sentence" or "clause",
      only the part of the sentence (clause) being spoken when the caller cut in (as code
      by Twilio's engineers reads it). PROTOCOL.md section 3.
    - ``tts_normalise``: the utterance as the voice said it ("twelve dollars" for "$12").
    - ``duration_as_string``: ``durationUntilInterruptMs`` as "460" (older docs), not 460.
    - ``chunking``: the TTS speaks a "sentence" (or "clause") once its closing punctuation
      or ``last`` arrives, or each "word" as soon as it is complete.
    - ``speaker_events`` / ``tokens_played``: send ``info`` frames (agentSpeaking and
      clientSpeaking on/off; tokensPlayed), as Twilio does when the TwiML's ``debug`` or
      ``events`` ask for them. A dialled call also turns them on from its TwiML. What a
      ``tokensPlayed`` value holds is unconfirmed: True, the text of each speech chunk
      once played (the values joined are what was heard); "cumulative", everything
      played of the talk cycle so far.
    - ``partial_prompts``: send growing ``prompt`` frames with ``last: false`` before the
      final one (TwiML ``partialPrompts``; a dialled call also reads it there).
    - ``play_ms``: how long an audio file sent with ``play`` takes to play (speech time).
    - ``malformed_limit``: with ``malformed_close``, invalid messages in a row after which
      the socket closes (1007).
    - ``webhook_method`` / ``action_method``: how the voice webhook and the
      ``<Connect action>`` URL are requested (a TwiML ``method`` overrides the latter).
    - ``interruptible``: what may interrupt the agent's speech: "none", "dtmf" (a key
      press), "speech" or "any" (TwiML ``interruptible``; the older True/False mean
      "any"/"none"). A ``text`` or ``play`` frame's own boolean ``interruptible``
      overrides it for that talk cycle (true: "any", false: "none").
    - ``report_input_during_agent_speech``: which input made during agent speech that
      did not interrupt it is still sent to the app ("none": dropped; "dtmf", "speech",
      "any"). ``report_timing`` (unconfirmed by Twilio): "at_once", the ``prompt`` or
      ``dtmf`` goes out as soon as it is made; "after_speech", once the agent stops.
    - ``preemptible``: a new talk cycle's tokens cut off speech still playing (the caller
      hears the new one at once) rather than waiting for it to finish. A ``text`` or
      ``play`` frame's own ``preemptible`` overrides it for the speech it belongs to.
    - ``welcome_greeting``: what Twilio says itself when the socket opens (the relay never
      sees it); ``welcome_greeting_interruptible`` as ``interruptible``, for the greeting.
    - ``greeting_interrupt_frame`` (unconfirmed by Twilio): talking over the greeting sends
      an ``interrupt`` frame (its utterance is greeting text the relay never sent); False,
      the greeting just stops.
    - ``interrupted_cycle`` (unconfirmed by Twilio; PROTOCOL.md section 4): what an
      interrupt does to the relay's talk cycle. "ends": the cycle is over at the interrupt;
      an empty ``last: true`` that follows is an acknowledgement that closes nothing new.
      "open_until_last": the cycle the interrupt cut stays open until the relay sends a
      ``last: true``, even when it had sent one before (the acknowledgement Twilio's own
      SDK sends); until then every ``text`` frame belongs to the cut cycle, whose speech
      has stopped, so the next reply's tokens are dropped unspoken. In both readings
      the words of a cycle still open at the interrupt (sent before the relay read it)
      are taken as the cut cycle's and not spoken; ``Reply.late`` keeps them.
    - ``dtmf_detection``: key presses reach the app as ``dtmf`` frames (TwiML
      ``dtmfDetection``, off by default as on Twilio; a dialled call reads the TwiML).
    - ``malformed_close``: the reading (Telnyx's copy of the protocol, not Twilio's) in
      which ``malformed_limit`` invalid messages in a row close the socket with 1007. By
      default, as Twilio documents, each invalid message is dropped with error 64107 and
      the session goes on.
    - ``interrupt_sensitivity`` (TwiML ``interruptSensitivity``): how much caller speech
      it takes to interrupt: "high", any word; "medium", two words; "low", three (the
      thresholds are a model). Shorter speech talks over the agent without interrupting.
    - ``ignore_backchannel`` (``ignoreBackchannel``): a short acknowledgement ("uh-huh",
      "okay") over the agent neither interrupts it nor reaches the app.
    - ``speech_timeout`` (``speechTimeout``, "auto" or 600-5000 ms) and ``turn_detection``
      (``turnDetection``): when the final prompt goes out after the caller's last word.
      "silence": after ``speech_timeout`` ms of silence ("auto": at once); "semantic":
      at once when what was said is a finished sentence (ends in . ? !), else after the
      timeout. Partial prompts (``partial_prompts``) go out one word at a time, as each
      word is recognised at the caller's speaking rate.
    - ``final_partial``: a reading of partial prompts in which the last word is recognised
      too before the endpointing silence, so a partial prompt with every word goes out
      at the caller's last word, ``speech_timeout`` before the final prompt (streaming
      recognisers report it so; Twilio does not say). Off: the last word arrives only
      with the final prompt. Speculative replies (relaylab.relay.speculation) need it on.
    - ``mishear``: words the transcriber gets wrong ({"Anthropic": "and tropic"}) unless
      they are among the session's ``hints`` (TwiML ``hints``, or a ``hints`` / ``config``
      message mid-call).

    A dialled call takes ``interruptible``, ``reportInputDuringAgentSpeech``,
    ``preemptible``, ``welcomeGreeting`` and ``welcomeGreetingInterruptible`` from its
    TwiML when the TwiML has them.
    """

    utterance: Utterance = "prefix"
    tts_normalise: bool = False
    duration_as_string: bool = False
    chunking: Chunking = "sentence"
    speaker_events: bool = False
    tokens_played: TokensPlayed = False
    partial_prompts: bool = False
    final_partial: bool = False
    play_ms: float = 2000.0
    malformed_limit: int = 10
    webhook_method: HttpMethod = "POST"
    action_method: HttpMethod = "POST"
    interruptible: InterruptMode = "any"
    report_input_during_agent_speech: InterruptMode = "none"
    report_timing: ReportTiming = "at_once"
    preemptible: bool = False
    welcome_greeting: str = ""
    welcome_greeting_interruptible: InterruptMode = "any"
    greeting_interrupt_frame: bool = True
    interrupted_cycle: InterruptedCycle = "ends"
    mishear: Mapping[str, str] = field(default_factory=dict)
    dtmf_detection: bool = False
    malformed_close: bool = False
    interrupt_sensitivity: Sensitivity = "high"
    ignore_backchannel: bool = False
    speech_timeout: int | Literal["auto"] = "auto"
    turn_detection: TurnDetection = "silence"

    def __post_init__(self) -> None:
        for name in ("interruptible", "report_input_during_agent_speech"):
            object.__setattr__(self, name, interrupt_mode(name, getattr(self, name)))
        greeting_mode = interrupt_mode(
            "welcome_greeting_interruptible", self.welcome_greeting_interruptible
        )
        object.__setattr__(self, "welcome_greeting_interruptible", greeting_mode)
        _one_of("report_timing", self.report_timing, REPORT_TIMINGS)
        if not isinstance(self.welcome_greeting, str):
            raise ValueError(f"welcome_greeting must be text, got {self.welcome_greeting!r}")
        if self.tokens_played not in (True, False, "cumulative"):
            raise ValueError(
                f"tokens_played must be True, False or 'cumulative', got {self.tokens_played!r}"
            )
        for name in (
            "preemptible",
            "greeting_interrupt_frame",
            "dtmf_detection",
            "malformed_close",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _one_of("utterance", self.utterance, UTTERANCES)
        _one_of("interrupted_cycle", self.interrupted_cycle, INTERRUPTED_CYCLES)
        _one_of("interrupt_sensitivity", self.interrupt_sensitivity, SENSITIVITIES)
        _one_of("turn_detection", self.turn_detection, TURN_DETECTIONS)
        object.__setattr__(
            self, "speech_timeout", read_setting("speechTimeout", self.speech_timeout)
        )
        _one_of("chunking", self.chunking, CHUNKINGS)
        _one_of("webhook_method", self.webhook_method, METHODS)
        _one_of("action_method", self.action_method, METHODS)
        if self.play_ms < 0:
            raise ValueError(f"play_ms must not be negative, got {self.play_ms}")
        if self.malformed_limit < 1:
            raise ValueError(f"malformed_limit must be at least 1, got {self.malformed_limit}")

    @property
    def info_frames(self) -> bool:
        return self.speaker_events or bool(self.tokens_played)

    def with_twiml(self, relay: RelayTwiml) -> TwilioBehaviour:
        """This behaviour plus what the TwiML turns on (events, partial prompts) and the
        interruption and greeting attributes the TwiML sets (ValueError for a bad one)."""
        return replace(
            self,
            speaker_events=self.speaker_events or "speaker-events" in relay.events,
            tokens_played=self.tokens_played or "tokens-played" in relay.events,
            partial_prompts=self.partial_prompts or relay.flag("partialPrompts"),
            action_method=relay.action_method or self.action_method,
            interruptible=relay.mode("interruptible") or self.interruptible,
            report_input_during_agent_speech=(
                relay.mode("reportInputDuringAgentSpeech") or self.report_input_during_agent_speech
            ),
            preemptible=_either(relay.boolean("preemptible"), self.preemptible),
            dtmf_detection=_either(relay.boolean("dtmfDetection"), self.dtmf_detection),
            ignore_backchannel=_either(relay.boolean("ignoreBackchannel"), self.ignore_backchannel),
            **relay.turn_settings(),
            welcome_greeting=relay.attributes.get("welcomeGreeting", self.welcome_greeting),
            welcome_greeting_interruptible=(
                relay.mode("welcomeGreetingInterruptible") or self.welcome_greeting_interruptible
            ),
        )


_SETTING_FIELDS = {
    "interruptible": "interruptible",
    "reportInputDuringAgentSpeech": "report_input_during_agent_speech",
    "welcomeGreetingInterruptible": "welcome_greeting_interruptible",
    "preemptible": "preemptible",
    "partialPrompts": "partial_prompts",
    "dtmfDetection": "dtmf_detection",
    "interruptSensitivity": "interrupt_sensitivity",
    "ignoreBackchannel": "ignore_backchannel",
    "speechTimeout": "speech_timeout",
    "turnDetection": "turn_detection",
}


def with_settings(behaviour: TwilioBehaviour, settings: Mapping[str, Any]) -> TwilioBehaviour:
    """``behaviour`` with the session settings a ``config`` message changed (read with
    ``read_setting``); settings that are not behaviours (languages, hints) are left out."""
    changes = {_SETTING_FIELDS[k]: v for k, v in settings.items() if k in _SETTING_FIELDS}
    return replace(behaviour, **changes)


def speech_interrupts(words: str | None, behaviour: TwilioBehaviour) -> bool:
    """Is this caller speech over the agent enough to interrupt it? A backchannel is not
    when ``ignore_backchannel``; shorter speech than ``interrupt_sensitivity`` asks for is
    not. Speech with no words given counts as enough."""
    if words is None:
        return True
    if is_backchannel(words, behaviour):
        return False
    return len(words.split()) >= WORDS_TO_INTERRUPT[behaviour.interrupt_sensitivity]


def is_backchannel(words: str, behaviour: TwilioBehaviour) -> bool:
    """A short acknowledgement that ``ignore_backchannel`` keeps from the app."""
    said = re.sub(r"[^\w\s'-]", "", words).strip().lower()
    return behaviour.ignore_backchannel and said in BACKCHANNELS


def final_prompt_delay_ms(said: str, behaviour: TwilioBehaviour) -> float:
    """Speech-time milliseconds between the caller's last word and the final prompt."""
    timeout = 0.0 if behaviour.speech_timeout == "auto" else float(behaviour.speech_timeout)
    if behaviour.turn_detection == "semantic" and said.rstrip().endswith((".", "?", "!")):
        return 0.0
    return timeout


def transcribe(said: str, behaviour: TwilioBehaviour, hints: list[str]) -> str:
    """What the transcriber makes of ``said``: each ``mishear`` word not in ``hints`` is
    replaced by what it is misheard as."""
    hinted = {hint.lower() for hint in hints}
    for word, misheard in behaviour.mishear.items():
        if word.lower() not in hinted:
            said = re.sub(rf"\b{re.escape(word)}\b", misheard, said, flags=re.IGNORECASE)
    return said


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _either(value: bool | None, default: bool) -> bool:
    return default if value is None else value


# -- interruptions -------------------------------------------------------------------------


def interrupt_mode(name: str, value: object) -> InterruptMode:
    """``value`` as one of none|dtmf|speech|any; the older booleans (True or "true": "any",
    False or "false": "none") are accepted too. ValueError naming ``name`` otherwise."""
    if isinstance(value, bool):
        return "any" if value else "none"
    word = value.strip().lower() if isinstance(value, str) else value
    if word in ("true", "false"):
        return "any" if word == "true" else "none"
    if word not in INTERRUPT_MODES:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, INTERRUPT_MODES))} (or true/false, "
            f"the older spelling of 'any'/'none'), got {value!r}"
        )
    return word


def allows(mode: InterruptMode, kind: InputKind) -> bool:
    """Does ``mode`` ("none", "dtmf", "speech", "any") cover input of ``kind``?"""
    return mode in ("any", kind)


# -- what the relay sends: Twilio's checks -----------------------------------------------


class InvalidOutbound(ValueError):
    """A message from the relay that Twilio would drop (error 64107)."""


def read_outbound(frame: str | bytes) -> dict[str, Any]:
    """Check one frame from the relay as Twilio does; the message, or InvalidOutbound."""
    if not isinstance(frame, str):
        raise InvalidOutbound("a binary frame; ConversationRelay takes JSON in text frames")
    try:
        message = json.loads(frame)
    except ValueError:
        raise InvalidOutbound(f"not valid JSON: {log_lines.loggable(frame)}") from None
    if not isinstance(message, dict):
        raise InvalidOutbound(f"not a JSON object: {log_lines.loggable(frame)}")
    kind = message.get("type")
    check = _CHECKS.get(kind) if isinstance(kind, str) else None
    if check is None:
        shown = "no type" if kind is None else f"unknown type {log_lines.loggable(kind)}"
        raise InvalidOutbound(f"{shown} in {log_lines.loggable(frame)}")
    problem = check(message)
    if problem:
        raise InvalidOutbound(f"{kind} message {problem}")
    return message


def _field_problem(message: dict[str, Any], name: str, kind: type) -> str:
    if name not in message:
        return ""
    value = message[name]
    if kind is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        return ""
    expected = "true or false" if kind is bool else "a string"
    return f'field "{name}" must be {expected}, got {log_lines.loggable(value)}'


def _optional(message: dict[str, Any], **fields: type) -> str:
    return next(
        (p for name, kind in fields.items() if (p := _field_problem(message, name, kind))), ""
    )


def _check_text(message: dict[str, Any]) -> str:
    if not isinstance(message.get("token"), str):
        return f'needs "token" as a string, got {log_lines.loggable(message.get("token"))}'
    return _optional(message, last=bool, lang=str, interruptible=bool, preemptible=bool)


def _check_play(message: dict[str, Any]) -> str:
    source = message.get("source")
    if not isinstance(source, str) or not source:
        return f'needs "source" as a URL, got {log_lines.loggable(source)}'
    loop = message.get("loop", 1)
    if isinstance(loop, bool) or not isinstance(loop, int) or loop < 0:
        return f'field "loop" must be a whole number, 0 or more, got {log_lines.loggable(loop)}'
    return _optional(message, interruptible=bool, preemptible=bool)


def _check_send_digits(message: dict[str, Any]) -> str:
    digits = message.get("digits")
    if not isinstance(digits, str) or not _DIGITS.match(digits):
        return f'needs "digits" made of 0-9, w, # and *, got {log_lines.loggable(digits)}'
    return ""


def _check_language(message: dict[str, Any]) -> str:
    if "ttsLanguage" not in message and "transcriptionLanguage" not in message:
        return 'needs "ttsLanguage" or "transcriptionLanguage"'
    return _optional(
        message,
        ttsLanguage=str,
        transcriptionLanguage=str,
        ttsProvider=str,
        voice=str,
        transcriptionProvider=str,
        speechModel=str,
    )


def _check_config(message: dict[str, Any]) -> str:
    try:
        config_settings(message)
    except ValueError as exc:
        return str(exc)
    return ""


def _check_hints(message: dict[str, Any]) -> str:
    try:
        read_setting("hints", message.get("hints"))
    except ValueError as exc:
        return str(exc)
    return ""


def _check_end(message: dict[str, Any]) -> str:
    return _optional(message, handoffData=str)


_CHECKS = {
    "text": _check_text,
    "play": _check_play,
    "sendDigits": _check_send_digits,
    "language": _check_language,
    "end": _check_end,
    "config": _check_config,
    "hints": _check_hints,
}


# -- dynamic configuration: config, hints, the extended language -------------------------

_MODE_SETTINGS = ("interruptible", "welcomeGreetingInterruptible", "reportInputDuringAgentSpeech")
_BOOLEAN_SETTINGS = (
    "preemptible",
    "dtmfDetection",
    "partialPrompts",
    "ignoreBackchannel",
    "echoPromptFiltering",
    "profanityFilter",
)
_WORD_SETTINGS = {
    "interruptSensitivity": ("low", "medium", "high"),
    "turnDetection": ("silence", "semantic"),
}
_TEXT_SETTINGS = (
    "language",
    "ttsLanguage",
    "transcriptionLanguage",
    "voice",
    "ttsProvider",
    "transcriptionProvider",
    "speechModel",
)
# What a config message may change: the session and language settings Twilio's dynamic
# configuration guide lists (welcomeGreetingInterruptible and turnDetection are not).
CONFIG_SETTINGS = frozenset(
    [
        *("interruptible", "reportInputDuringAgentSpeech", *_BOOLEAN_SETTINGS),
        *("interruptSensitivity", "speechTimeout", "eotThreshold", "hints", *_TEXT_SETTINGS),
    ]
)
SPEECH_TIMEOUT_MS = (600, 5000)  # speechTimeout: "auto" or this many ms (PROTOCOL.md section 2)


def read_setting(name: str, value: object) -> Any:
    """One session setting as the simulated Twilio takes it (TwiML attribute ``name``),
    normalised: modes as none|dtmf|speech|any, booleans as bool, ``hints`` as a list,
    ``speechTimeout`` as "auto" or whole milliseconds. ValueError saying what is wrong."""
    if name in _MODE_SETTINGS:
        return interrupt_mode(name, value)
    if name in _BOOLEAN_SETTINGS:
        word = value.strip().lower() if isinstance(value, str) else value
        if word not in (True, False, "true", "false"):
            raise ValueError(f"{name} takes true or false, got {log_lines.loggable(value)}")
        return word in (True, "true")
    if name in _WORD_SETTINGS:
        if value not in _WORD_SETTINGS[name]:
            allowed = ", ".join(_WORD_SETTINGS[name])
            raise ValueError(f"{name} takes one of {allowed}, got {log_lines.loggable(value)}")
        return value
    if name in _TEXT_SETTINGS:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} takes a non-empty string, got {log_lines.loggable(value)}")
        return value.strip()
    if name == "hints":
        return _hint_list(value)
    if name == "speechTimeout":
        return _speech_timeout(value)
    if name == "eotThreshold":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"eotThreshold takes a number 0-1, got {log_lines.loggable(value)}")
        return value
    raise ValueError(f"unknown setting {log_lines.loggable(name)}")


def _hint_list(value: object) -> list[str]:
    items: list[object] = value if isinstance(value, list) else [value]
    texts = [item for item in items if isinstance(item, str)]
    if not items or len(texts) != len(items):
        raise ValueError(f"hints takes comma-separated words, got {log_lines.loggable(value)}")
    words = [word.strip() for item in texts for word in item.split(",") if word.strip()]
    if not words:
        raise ValueError("hints has no words in it")
    return words


def _speech_timeout(value: object) -> str | int:
    if value == "auto":
        return "auto"
    text = str(value).strip() if isinstance(value, str | int) else ""
    low, high = SPEECH_TIMEOUT_MS
    if isinstance(value, bool) or not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(
            f"speechTimeout takes auto or {low}-{high} ms, got {log_lines.loggable(value)} "
            "(Twilio: error 64101)"
        )
    return int(text)


def config_settings(message: dict[str, Any]) -> dict[str, Any]:
    """The settings a ``config`` message changes, read and normalised (ValueError if one is
    unknown or invalid). They may sit beside ``type`` or under a ``config`` object: where
    Twilio wants them is unconfirmed."""
    nested = message.get("config")
    raw = dict(nested) if isinstance(nested, dict) else {}
    raw.update((k, v) for k, v in message.items() if k not in ("type", "config"))
    if not raw:
        return _no_settings()
    fixed = [name for name in raw if name not in CONFIG_SETTINGS and isinstance(name, str)]
    if fixed:
        raise ValueError(f"{log_lines.loggable(fixed[0])} cannot be changed mid-call")
    return {name: read_setting(name, value) for name, value in raw.items()}


def _no_settings() -> dict[str, Any]:
    raise ValueError("has no settings to change")


def invalid_message_description(problem: str) -> str:
    """The ``description`` of the ``error`` frame Twilio sends for an invalid message."""
    return f"Invalid message received: {problem}"


# -- the interrupt -----------------------------------------------------------------------


def utterance_for(clock: SpeechClock, words: int, behaviour: TwilioBehaviour) -> str:
    """``utteranceUntilInterrupt`` after ``words`` heard words, as ``behaviour`` says."""
    if behaviour.utterance == "prefix":
        text = clock.heard_text(words)
    else:
        text = clock.unit_text(words, behaviour.utterance)
    return speak(text) if behaviour.tts_normalise else text


def interrupt_message(utterance: str, played_ms: float, behaviour: TwilioBehaviour) -> str:
    """The ``interrupt`` frame; the duration a number, or a numeric string if asked."""
    frame = twilio_frames.interrupt_frame(utterance, round(played_ms))
    if not behaviour.duration_as_string:
        return frame
    message = json.loads(frame)
    message["durationUntilInterruptMs"] = str(message["durationUntilInterruptMs"])
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


# -- info frames ---------------------------------------------------------------------------


class PlaybackReporter:
    """The ``info`` frames about playback, from the speech clocks of one call.

    ``agentSpeaking`` goes "on" when the voice starts after silence and "off" when it has
    nothing more to play; ``tokensPlayed`` carries each speech chunk's text once played
    (for an interrupted chunk, the part played before the interrupt), so the values
    joined are exactly the text the caller heard. Clocks are played in the order added.
    """

    def __init__(self, *, speaker_events: bool, tokens_played: TokensPlayed) -> None:
        self.speaker_events = speaker_events
        self.tokens_played = tokens_played
        self.agent_speaking = False
        self._clocks: list[SpeechClock] = []
        self._started = 0  # chunks (over all clocks, in order) whose start was reported
        self._finished = 0  # ... whose end was reported

    def add(self, clock: SpeechClock) -> None:
        self._clocks.append(clock)

    def _chunks(self) -> list[tuple[SpeechClock, Chunk]]:
        return [(clock, chunk) for clock in self._clocks for chunk in clock.chunks]

    def next_at(self) -> float | None:
        """When the next frame is due, or None if nothing is scheduled."""
        chunks = self._chunks()
        times = []
        if self._finished < self._started:
            times.append(chunks[self._finished][1].finish)
        if self._started < len(chunks):
            times.append(chunks[self._started][1].start)
        return min(times, default=None)

    def due(self, now: float) -> list[str]:
        """The frames for everything that happened up to ``now``, in order."""
        frames: list[str] = []
        chunks = self._chunks()
        while True:
            finish = chunks[self._finished][1].finish if self._finished < self._started else None
            start = chunks[self._started][1].start if self._started < len(chunks) else None
            if finish is not None and finish <= now and (start is None or finish <= start):
                frames += self._finish(chunks, self._finished)
                self._finished += 1
            elif start is not None and start <= now:
                if not self.agent_speaking:
                    frames += self._speaking("on")
                self._started += 1
            else:
                return frames

    def flush(self) -> list[str]:
        """Report everything still scheduled as played (the caller waited for it)."""
        return self.due(float("inf"))

    def interrupted(self, clock: SpeechClock, now: float, words: int) -> list[str]:
        """Frames for playback cut off at ``now`` after ``words`` heard words of ``clock``:
        the played part of the chunk in progress, then agentSpeaking off."""
        frames = self.due(now)
        chunks = self._chunks()
        heard_end = clock.word_end(words)
        for owner, chunk in chunks[self._finished : self._started]:
            if owner is clock and not chunk.is_audio and heard_end > chunk.start_char:
                frames += self._tokens(clock, chunk.start_char, heard_end)
        self._started = self._finished = len(chunks)
        if self.agent_speaking:
            frames += self._speaking("off")
        return frames

    def _finish(self, chunks: list[tuple[SpeechClock, Chunk]], index: int) -> list[str]:
        clock, chunk = chunks[index]
        frames = [] if chunk.is_audio else self._tokens(clock, chunk.start_char, chunk.end_char)
        following = chunks[index + 1][1] if index + 1 < len(chunks) else None
        if self.agent_speaking and (following is None or following.start > chunk.finish):
            frames += self._speaking("off")
        return frames

    def _tokens(self, clock: SpeechClock, start: int, end: int) -> list[str]:
        """tokensPlayed for ``clock.text[start:end]``, just played (from 0 if cumulative)."""
        if self.tokens_played == "cumulative":
            start = 0
        text = clock.text[start:end]
        return (
            [twilio_frames.info_frame("tokensPlayed", text)] if self.tokens_played and text else []
        )

    def _speaking(self, value: str) -> list[str]:
        self.agent_speaking = value == "on"
        return [twilio_frames.info_frame("agentSpeaking", value)] if self.speaker_events else []


def client_speaking(value: Literal["on", "off"]) -> str:
    """The ``info`` frame Twilio sends when the caller starts or stops speaking."""
    return twilio_frames.info_frame("clientSpeaking", value)


def partial_prompts(text: str) -> Iterator[str]:
    """The growing partial transcripts of ``text``: "Tell", "Tell me", "Tell me about"."""
    words = text.split()
    for count in range(1, len(words)):
        yield " ".join(words[:count])


# -- the TwiML ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RelayTwiml:
    """What Twilio reads from a ``<Connect><ConversationRelay>`` document."""

    url: str
    attributes: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    action_url: str | None = None
    action_method: HttpMethod | None = None
    languages: tuple[dict[str, str], ...] = ()  # the <Language> children's attributes

    def turn_settings(self) -> dict[str, Any]:
        """The TwiML's interruptSensitivity, speechTimeout and turnDetection, as
        ``TwilioBehaviour`` fields (ValueError for a bad value)."""
        names = {
            "interruptSensitivity": "interrupt_sensitivity",
            "speechTimeout": "speech_timeout",
            "turnDetection": "turn_detection",
        }
        return {
            field_name: read_setting(name, self.attributes[name])
            for name, field_name in names.items()
            if name in self.attributes
        }

    def voice_problem(self) -> str:
        """Why Twilio would fail the call for its voices (error 64106), or "": the main
        language with the TwiML's ttsProvider and voice, and each ``<Language>`` with its
        own (or the main ones)."""
        provider, voice = self.attributes.get("ttsProvider"), self.attributes.get("voice")
        checks = [(self.language("tts"), provider, voice)]
        for child in self.languages:
            checks.append(
                (child.get("code", ""), child.get("ttsProvider", provider), child.get("voice"))
            )
        for language, tts_provider, tts_voice in checks:
            if problem := voice_problem(language, tts_provider, tts_voice):
                return problem
        return ""

    def flag(self, name: str) -> bool:
        return self.attributes.get(name, "").strip().lower() == "true"

    def boolean(self, name: str) -> bool | None:
        """A true/false attribute; None when the TwiML leaves it out (ValueError if bad)."""
        value = self.attributes.get(name)
        if value is None:
            return None
        word = value.strip().lower()
        if word not in ("true", "false"):
            raise ValueError(f"<ConversationRelay {name}={value!r}>: Twilio takes true or false")
        return word == "true"

    def mode(self, name: str) -> InterruptMode | None:
        """A none|dtmf|speech|any attribute (true/false accepted); None when left out."""
        value = self.attributes.get(name)
        return None if value is None else interrupt_mode(f"<ConversationRelay {name}>", value)

    @property
    def events(self) -> frozenset[str]:
        """The event words of ``debug`` and ``events`` (e.g. "speaker-events")."""
        words = f"{self.attributes.get('debug', '')} {self.attributes.get('events', '')}"
        return frozenset(w for w in re.split(r"[\s,]+", words) if w in GROUND_TRUTH_EVENTS)

    @property
    def dtmf_detection(self) -> bool:
        return self.flag("dtmfDetection")

    def language(self, kind: Literal["tts", "transcription"]) -> str:
        """The starting TTS or transcription language (``language`` unless overridden)."""
        general = self.attributes.get("language") or "en-US"
        return self.attributes.get(f"{kind}Language") or general


def read_twiml(document: str, base_url: str) -> RelayTwiml:
    """Read the ConversationRelay TwiML a voice webhook answered (relative URLs resolved
    against ``base_url``); ValueError saying what is missing."""
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as exc:
        raise ValueError(
            f"the voice webhook did not answer TwiML (XML: {exc}): {document[:200]!r}"
        ) from None
    connect = root.find("Connect")
    relay = connect.find("ConversationRelay") if connect is not None else None
    if connect is None or relay is None:
        raise ValueError(
            "the TwiML has no <Connect><ConversationRelay>, so Twilio would not open a "
            f"ConversationRelay session: {document[:200]!r}"
        )
    url = relay.get("url")
    if not url:
        raise ValueError("<ConversationRelay> has no url attribute: Twilio would fail the call")
    action = connect.get("action")
    method = (connect.get("method") or "").upper() or None
    if method is not None and method not in METHODS:
        raise ValueError(f"<Connect method={method!r}>: Twilio accepts GET or POST")
    return RelayTwiml(
        url=url,
        attributes={name: value for name, value in relay.attrib.items() if name != "url"},
        parameters={p.get("name", ""): p.get("value", "") for p in relay.iter("Parameter")},
        action_url=urljoin(base_url, action) if action else None,
        action_method=method,
        languages=tuple(dict(child.attrib) for child in relay.iter("Language")),
    )
