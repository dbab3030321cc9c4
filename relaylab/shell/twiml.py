"""The TwiML the number's voice webhook (`/twiml`) answers: it hands the call to
ConversationRelay, built with twilio.twiml.voice_response. (What the `<Connect action>` URL
answers once the session is over is relaylab.shell.action_twiml.)

Any `<ConversationRelay>` attribute can be set, in snake_case (`speech_timeout`) or in
camelCase as Twilio's docs spell it (`speechTimeout`); both become the attribute that
twilio's own builder writes. Names this module does not know are accepted on purpose:
Twilio keeps adding attributes (2026 brought `speechTimeout`, `turnDetection`, ...), and
a relay should not need a new release to use them. Only names that cannot be
attributes at all (not identifiers) and values that are plainly wrong for the
attributes Twilio documents are refused, with a ValueError that says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from twilio.twiml import TwiML, lower_camel
from twilio.twiml.voice_response import VoiceResponse

DEFAULT_GREETING = "Hi! I'm Claude. Ask me anything."

INTERRUPT_MODES = ("none", "dtmf", "speech", "any")
INTERRUPT_SENSITIVITIES = ("low", "medium", "high")

# What `debug` (older name) and `events` both take to make Twilio send `info` frames:
# agentSpeaking/clientSpeaking on and off, and tokensPlayed (PROTOCOL.md section 3).
GROUND_TRUTH_EVENTS = ("speaker-events", "tokens-played")

# Attributes that take one of INTERRUPT_MODES. Twilio still accepts the booleans of
# their first version (true = "any", false = "none"), so those pass too.
_MODE_ATTRIBUTES = frozenset(
    {"interruptible", "welcomeGreetingInterruptible", "reportInputDuringAgentSpeech"}
)
_BOOLEAN_WORDS = ("true", "false")

# relay_twiml's own options, by the attribute name they would otherwise become: they
# are not <ConversationRelay> attributes, so they may not arrive as one.
_OWN_OPTIONS = {
    "url": "the WebSocket URL is relay_twiml's first argument (ws_url)",
    "languages": "give <Language> children as languages=[Language(...)]",
    "parameters": "give <Parameter> children as parameters={name: value}",
    "debugEvents": "debug_events=True is an option of relay_twiml, not an attribute",
    "actionUrl": "action_url goes on <Connect>, not on <ConversationRelay>",
    "actionMethod": "action_method goes on <Connect>, not on <ConversationRelay>",
}

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Language:
    """One `<Language>` child: the voice and transcription to use for `code` (e.g. "fr-FR").

    `extra` carries any other attribute of `<Language>` (e.g. `{"hints": "Claude"}`),
    named as for `relay_twiml`.
    """

    code: str
    tts_provider: str | None = None
    voice: str | None = None
    transcription_provider: str | None = None
    speech_model: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    def options(self) -> dict[str, object]:
        """All of this language's attributes as keyword options (None for unset ones)."""
        return {
            "code": self.code,
            "tts_provider": self.tts_provider,
            "voice": self.voice,
            "transcription_provider": self.transcription_provider,
            "speech_model": self.speech_model,
            **self.extra,
        }


# -- voices: which language, TTS provider and voice go together (else Twilio: 64106) --

TTS_PROVIDERS = ("ElevenLabs", "Google", "Amazon")
GOOGLE_VOICE = re.compile(
    r"(?P<language>[a-z]{2,3}-[A-Z]{2})-(?P<model>Standard|Wavenet|Neural2|Studio|Journey|"
    r"Polyglot|News|Chirp-HD|Chirp3-HD)-(?P<name>[A-Za-z]+)\Z"
)
# Amazon Polly voices the lessons may use, with the language each speaks (a voice may carry
# "-Neural" or "-Generative"); a sample, not Polly's list.
AMAZON_VOICES = {
    "Joanna": "en-US",
    "Matthew": "en-US",
    "Ruth": "en-US",
    "Amy": "en-GB",
    "Lucia": "es-ES",
    "Sergio": "es-ES",
    "Lupe": "es-US",
    "Mia": "es-MX",
}


def voice_problem(language: str, provider: str | None, voice: str | None) -> str:
    """Why Twilio would refuse this language, TTS provider and voice together (error 64106),
    or "". ElevenLabs voices are multilingual (any language); a Google voice speaks the
    language in its name (es-ES-Neural2-B speaks es-ES); an Amazon voice its own language.
    With no voice, the provider's default voice for the language is used. Providers other
    than ElevenLabs, Google and Amazon are not checked."""
    name = {p.lower(): p for p in TTS_PROVIDERS}.get((provider or "ElevenLabs").strip().lower())
    if name is None:
        return ""  # a provider relaylab does not know: not checked
    if not voice or name == "ElevenLabs":
        return ""
    if name == "Google":
        match = GOOGLE_VOICE.match(voice)
        if match is None:
            return f"{voice!r} is not a Google voice name (language-Model-Letter)"
        spoken = match["language"]
    else:
        spoken = AMAZON_VOICES.get(voice.split("-")[0], "")
        if not spoken:
            return f"{voice!r} is not an Amazon voice relaylab knows"
    if spoken.lower() != language.lower():
        return f"the {name} voice {voice} speaks {spoken}, not {language}"
    return ""


def attribute_name(name: str) -> str:
    """The XML attribute twilio writes for keyword `name`: snake_case becomes camelCase.

    camelCase names come back unchanged. Raises ValueError for a name that cannot be
    an attribute (empty, not an identifier, or starting with an underscore or digit).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{name!r} is not a valid TwiML attribute name: use letters, digits and "
            f"underscores, starting with a letter (e.g. speech_timeout or speechTimeout)"
        )
    return lower_camel(TwiML.MAP.get(name, name))


def relay_twiml(
    ws_url: str,
    *,
    languages: Iterable[Language | Mapping[str, object]] = (),
    parameters: Mapping[str, object] | None = None,
    debug_events: bool = False,
    action_url: str | None = None,
    action_method: str = "GET",
    **attributes: object,
) -> str:
    """TwiML that connects the call to ConversationRelay at `ws_url`.

    `attributes` are `<ConversationRelay>` attributes, snake_case or camelCase
    (`welcome_greeting="Hi"`, `speechTimeout=2000`, `dtmf_detection=True`); booleans
    are written "true"/"false" and `None` leaves an attribute out (Twilio's default
    applies). `welcome_greeting` defaults to DEFAULT_GREETING.

    `languages` become `<Language>` children (Language objects or dicts with a
    "code"); `parameters` become `<Parameter name value>` children, which arrive in
    the `setup` message's `customParameters`. `debug_events=True` asks Twilio for
    `info` frames (who is speaking, which tokens were played); settings under which only
    those tell the relay what was heard ask for them too (playback_reports_needed, e.g.
    `preemptible=True`). With `action_url`,
    Twilio requests it with `action_method` when the session ends.

    Raises ValueError for a URL that is not ws:// or wss://, a name that cannot be an
    attribute, one attribute given twice (e.g. as `tts_provider` and as
    `ttsProvider`), or a value Twilio documents as invalid.
    """
    _check_ws_url(ws_url)
    relay_attributes = _attributes(attributes, element="<ConversationRelay>")
    relay_attributes.setdefault("welcomeGreeting", DEFAULT_GREETING)
    if debug_events or _reports_needed(relay_attributes):
        _ask_for_ground_truth(relay_attributes)
    children = [_language_attributes(language) for language in languages]
    _check_voices(relay_attributes, children)
    custom = _parameters(parameters or {})
    method = _check_method(action_method) if action_url else None

    response = VoiceResponse()
    connect = response.connect(action=action_url, method=method)
    relay = connect.conversation_relay(url=ws_url, **_present(relay_attributes))
    for language in children:
        relay.language(**_present(language))
    for name, value in custom:
        relay.parameter(name=name, value=value)
    return response.to_xml()


def welcome_greeting(**options: object) -> str:
    """What Twilio says itself when a call connects with these ``relay_twiml`` options
    ("" when they turn the greeting off with ``welcome_greeting=None``)."""
    attributes = _relay_attributes(options)
    greeting = attributes.get("welcomeGreeting", DEFAULT_GREETING)
    return "" if greeting is None else str(greeting)


def preempts(**options: object) -> bool:
    """Do these ``relay_twiml`` options let a newer reply cut off the one still playing
    (``preemptible=true``)?"""
    return _preempts(_relay_attributes(options))


def _preempts(attributes: Mapping[str, object]) -> bool:
    return _word(attributes.get("preemptible")) == "true"


def _relay_attributes(options: Mapping[str, object]) -> dict[str, object]:
    """``relay_twiml`` options that are ``<ConversationRelay>`` attributes, by attribute."""
    attributes = {k: v for k, v in options.items() if attribute_name(k) not in _OWN_OPTIONS}
    return _attributes(attributes, element="<ConversationRelay>")


def heard_blind_spots(**options: object) -> list[str]:
    """Why, with these ``relay_twiml`` options, the relay could store words the caller
    never heard: settings under which Twilio plays one stretch of speech over or after
    another without an ``interrupt`` that says which. [] for Twilio's defaults.

    A relay learns what was heard from ``interrupt`` frames and ``tokensPlayed`` reports,
    which relay_twiml asks for when the settings need them (``playback_reports_needed``).
    What stays blind: with ``reportInputDuringAgentSpeech`` covering input that may not
    interrupt the welcome greeting while other input may, a reply can queue behind the
    greeting, which Twilio does not report as played; an interrupt that reports no words
    then cannot be placed in the greeting (one with words can: CallSession._cut_reply).
    """
    named = _relay_attributes(options)
    return [
        f"{reason}, and a later interrupt of it that reports no words is taken as the reply's"
        for attribute, reason in _speech_queued_behind(named)
        if attribute == "welcomeGreetingInterruptible"
    ]


def playback_reports_needed(**options: object) -> list[str]:
    """Why, with these ``relay_twiml`` options, the relay needs Twilio's ``tokensPlayed``
    reports ([] when interrupts tell it all), which relay_twiml then asks for:
    ``preemptible`` lets a newer reply cut off the one playing with no interrupt, and
    input answered while a reply plays on queues the answer behind it, so an interrupt
    that reports no words could be either's (relaylab.core.playback follows which is playing)."""
    return _reports_needed(_relay_attributes(options))


def _reports_needed(attributes: Mapping[str, object]) -> list[str]:
    reasons = [
        f"{reason}, so an interrupt that reports no words could be either's"
        for attribute, reason in _speech_queued_behind(attributes)
        if attribute == "interruptible"
    ]
    if _preempts(attributes):
        reasons.insert(0, "preemptible=true: a newer reply cuts off the one playing")
    return reasons


def _speech_queued_behind(attributes: Mapping[str, object]) -> list[tuple[str, str]]:
    """(attribute, reason) for each kind of input answered while speech plays on: only
    when something else can interrupt that speech later (with "none" it plays out)."""
    found = []
    reported = _mode(attributes.get("reportInputDuringAgentSpeech"), default="none")
    for attribute, speech in (
        ("interruptible", "a reply"),
        ("welcomeGreetingInterruptible", "the welcome greeting"),
    ):
        mode = _mode(attributes.get(attribute), default="any")
        for kind in ("speech", "dtmf"):
            if reported in ("any", kind) and mode not in ("any", kind, "none"):
                found.append(
                    (
                        attribute,
                        f"reportInputDuringAgentSpeech={reported} with {attribute}={mode}: "
                        f"{kind} during {speech} is answered while it plays on",
                    )
                )
    return found


def _word(value: object) -> str:
    return str(value).strip().lower() if value is not None else ""


def _mode(value: object, *, default: str) -> str:
    """An interrupt mode, the older booleans read as Twilio reads them (true: any)."""
    word = _word(value) or default
    return {"true": "any", "false": "none"}.get(word, word)


def checked_attribute(name: str, value: object) -> str:
    """The ``<ConversationRelay>`` attribute that keyword or attribute ``name`` sets, once
    ``name`` and ``value`` are checked: ValueError for a name that cannot be an attribute,
    one of relay_twiml's own options, or a value Twilio documents as invalid."""
    attribute = _checked_name(name, element="<ConversationRelay>")
    _check_value(attribute, value)
    return attribute


def _check_ws_url(ws_url: object) -> None:
    if not isinstance(ws_url, str) or not ws_url.startswith(("wss://", "ws://")):
        raise ValueError(
            f"ConversationRelay url must be a WebSocket URL starting with wss:// "
            f"(or ws:// for a local test), got {ws_url!r}"
        )


def _check_method(method: str) -> str:
    if method not in ("GET", "POST"):
        raise ValueError(f"action_method must be 'GET' or 'POST', got {method!r}")
    return method


def _checked_name(name: str, *, element: str) -> str:
    attribute = attribute_name(name)
    if element == "<ConversationRelay>" and attribute in _OWN_OPTIONS:
        raise ValueError(f"{name!r} is not a {element} attribute: {_OWN_OPTIONS[attribute]}")
    return attribute


def _attributes(options: Mapping[str, object], *, element: str) -> dict[str, object]:
    """Keyword options keyed by attribute name, checked; None values kept for now."""
    result: dict[str, object] = {}
    spelled: dict[str, str] = {}
    for name, value in options.items():
        attribute = _checked_name(name, element=element)
        if attribute in result:
            raise ValueError(
                f"{element} attribute {attribute} given twice, as {spelled[attribute]!r} "
                f"and as {name!r}: keep one"
            )
        _check_value(attribute, value)
        result[attribute] = value
        spelled[attribute] = name
    return result


def _check_value(attribute: str, value: object) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int | float):
        return
    if not isinstance(value, str):
        raise ValueError(
            f"attribute {attribute} takes a string, number or bool, got "
            f"{type(value).__name__} {value!r}"
        )
    if attribute in _MODE_ATTRIBUTES and value not in INTERRUPT_MODES + _BOOLEAN_WORDS:
        raise ValueError(f"{attribute} must be one of {', '.join(INTERRUPT_MODES)}, got {value!r}")
    if attribute == "interruptSensitivity" and value not in INTERRUPT_SENSITIVITIES:
        raise ValueError(
            f"interruptSensitivity must be one of {', '.join(INTERRUPT_SENSITIVITIES)}, "
            f"got {value!r}"
        )


def _ask_for_ground_truth(attributes: dict[str, object]) -> None:
    """Add the speaker and token events to ``debug``, keeping the words already there.

    One attribute only: ``debug`` is the one the ConversationRelay noun page documents for
    ``speaker-events`` and ``tokens-played`` (PROTOCOL.md section 3). Setting the same
    words on ``events`` too could make Twilio send each ``info`` frame twice, or refuse
    the pair; whatever the app asks for in ``events`` itself is left as it is.
    """
    current = attributes.get("debug")
    if current is not None and not isinstance(current, str):
        raise ValueError(f"debug takes space-separated words (e.g. 'debugging'), got {current!r}")
    words = (current or "").split()
    words += [word for word in GROUND_TRUTH_EVENTS if word not in words]
    attributes["debug"] = " ".join(words)


def _check_voices(relay: Mapping[str, object], children: list[dict[str, object]]) -> None:
    """ValueError for a language and voice Twilio would refuse (it fails the call, 64106)."""
    provider, voice = relay.get("ttsProvider"), relay.get("voice")
    general = str(relay.get("ttsLanguage") or relay.get("language") or "en-US")
    checks: list[tuple[object, object, object]] = [(general, provider, voice)]
    checks += [(c["code"], c.get("ttsProvider", provider), c.get("voice")) for c in children]
    for language, tts_provider, tts_voice in checks:
        problem = voice_problem(
            str(language),
            None if tts_provider is None else str(tts_provider),
            None if tts_voice is None else str(tts_voice),
        )
        if problem:
            raise ValueError(f"Twilio would fail the call with error 64106: {problem}")


def _language_attributes(language: Language | Mapping[str, object]) -> dict[str, object]:
    options = language.options() if isinstance(language, Language) else language
    if not isinstance(options, Mapping):
        raise ValueError(
            f"languages takes Language(...) objects or dicts with a 'code', got {language!r}"
        )
    attributes = _attributes(options, element="<Language>")
    code = attributes.get("code")
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"a <Language> needs a code such as 'fr-FR', got {language!r}")
    return attributes


def _parameters(parameters: Mapping[str, object]) -> list[tuple[str, str | bool | int | float]]:
    if not isinstance(parameters, Mapping):
        raise ValueError(f"parameters takes a mapping of name to value, got {parameters!r}")
    result = []
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a <Parameter> needs a non-empty name, got {name!r}")
        if value is None or not isinstance(value, str | bool | int | float):
            raise ValueError(
                f"<Parameter> {name!r} needs a string (or number, bool) value, got {value!r}; "
                f"Twilio passes custom parameters on as strings"
            )
        result.append((name, value))
    return result


def _present(attributes: Mapping[str, object]) -> dict[str, object]:
    return {name: value for name, value in attributes.items() if value is not None}
