"""TwiML from relaylab.shell.twiml and action_twiml, read back as XML; the --relay-attr
pairs (relaylab.cli.relay_attrs) and handoffData asking for a person (steps.handoff)."""

import inspect
import logging
import re
import xml.etree.ElementTree as ET

import pytest
from twilio.twiml.voice_response import Connect, ConversationRelay, VoiceResponse

from relaylab.cli.relay_attrs import parse_relay_attrs
from relaylab.shell.action_twiml import APOLOGY_LINE, GOODBYE_LINE, HANDOFF_LINE, handoff_twiml
from relaylab.shell.twiml import (
    DEFAULT_GREETING,
    INTERRUPT_MODES,
    Language,
    attribute_name,
    heard_blind_spots,
    playback_reports_needed,
    preempts,
    relay_twiml,
    voice_problem,
)
from relaylab.steps.handoff import wants_human

URL = "wss://relay.example/ws"
CAMEL_CASE = re.compile(r"[a-z][A-Za-z0-9]*\Z")


def parse(xml: str) -> ET.Element:
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    return root


def relay_element(xml: str) -> tuple[ET.Element, ET.Element]:
    root = parse(xml)
    [connect] = list(root)
    assert connect.tag == "Connect"
    [relay] = list(connect)
    assert relay.tag == "ConversationRelay"
    return connect, relay


def relay_attrib(**options) -> dict[str, str]:
    return relay_element(relay_twiml(URL, **options))[1].attrib


def keywords(method) -> list[str]:
    """Named keyword parameters of a twilio builder method (not self, url, **kwargs)."""
    return [
        name
        for name, p in inspect.signature(method).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and name not in ("self", "url")
    ]


def twilio_attribute(method_owner, method_name: str, keyword: str) -> str:
    """The attribute twilio itself writes for `keyword`: the oracle for our naming."""
    element = getattr(method_owner, method_name)(**{keyword: "x"})
    [name] = [a for a, v in element.xml().attrib.items() if v == "x"]
    return name


# ---- <ConversationRelay> attributes ---------------------------------------------


def test_minimal_relay_twiml_is_exact():
    assert relay_twiml(URL) == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<ConversationRelay url="{URL}" welcomeGreeting="{DEFAULT_GREETING}" />'
        "</Connect></Response>"
    )


def test_attributes_are_camel_case_and_booleans_lowercase():
    connect, relay = relay_element(
        relay_twiml(
            "wss://relay.example/ws?lesson=3",
            welcome_greeting="Hello",
            language="en-GB",
            voice="en-GB-Journey-D",
            tts_provider="Google",
            interruptible="speech",
            dtmf_detection=True,
        )
    )
    assert connect.attrib == {}
    assert relay.attrib == {
        "url": "wss://relay.example/ws?lesson=3",
        "welcomeGreeting": "Hello",
        "language": "en-GB",
        "voice": "en-GB-Journey-D",
        "ttsProvider": "Google",
        "interruptible": "speech",
        "dtmfDetection": "true",
    }
    assert list(relay) == []


def test_none_leaves_attributes_out_and_false_is_written():
    assert relay_attrib(welcome_greeting=None, dtmf_detection=False, voice=None) == {
        "url": URL,
        "dtmfDetection": "false",
    }


BUILDER_KEYWORDS = keywords(Connect.conversation_relay)


def test_twilio_builder_has_the_attributes_we_introspect():
    # Guards the parametrised test below against passing on an empty list.
    assert len(BUILDER_KEYWORDS) >= 30
    assert {"welcome_greeting", "interruptible", "debug", "events", "speechTimeout"} <= set(
        BUILDER_KEYWORDS
    )
    assert keywords(ConversationRelay.language)[0] == "code"


@pytest.mark.parametrize("keyword", BUILDER_KEYWORDS)
def test_every_twilio_builder_keyword_lands_as_its_camel_case_attribute(keyword):
    expected = twilio_attribute(Connect(), "conversation_relay", keyword)
    assert CAMEL_CASE.match(expected)
    value = "any" if "interruptible" in keyword or "speech" in keyword.lower() else "x"
    if keyword == "interrupt_sensitivity":
        value = "low"
    attrib = relay_attrib(**{keyword: value})
    assert attrib[expected] == value
    assert set(attrib) == {"url", "welcomeGreeting", expected}
    # Twilio's docs spell it camelCase: that spelling lands on the same attribute.
    assert relay_attrib(**{expected: value})[expected] == value


def test_all_twilio_builder_keywords_at_once():
    # preemptible=True would add words to debug (see the test on that below).
    options = {keyword: True for keyword in BUILDER_KEYWORDS if keyword != "preemptible"}
    attrib = relay_attrib(**options)
    assert len(attrib) == len(options) + 1  # plus url
    assert all(CAMEL_CASE.match(name) for name in attrib)
    assert {v for k, v in attrib.items() if k != "url"} == {"true"}


def test_attributes_twilio_has_not_heard_of_yet_are_passed_through():
    attrib = relay_attrib(turn_detection_mode="semantic", someFutureFlag=False, speechTimeout=2000)
    assert attrib["turnDetectionMode"] == "semantic"
    assert attrib["someFutureFlag"] == "false"
    assert attrib["speechTimeout"] == "2000"


@pytest.mark.parametrize("name", ["2fast", "_private", "has-dash", "with space", "ns:attr", ""])
def test_names_that_cannot_be_attributes_are_refused(name):
    with pytest.raises(ValueError, match="not a valid TwiML attribute name"):
        relay_twiml(URL, **{name: "x"})


def test_attribute_name_follows_twilio():
    assert attribute_name("welcome_greeting") == "welcomeGreeting"
    assert attribute_name("welcomeGreeting") == "welcomeGreeting"
    assert attribute_name("speechTimeout") == "speechTimeout"


def test_one_attribute_spelled_twice_is_refused():
    with pytest.raises(ValueError, match="ttsProvider given twice, as 'tts_provider' and as"):
        relay_twiml(URL, tts_provider="Google", ttsProvider="Amazon")


def test_camel_case_welcome_greeting_replaces_the_default():
    assert relay_attrib(welcomeGreeting="Hello there")["welcomeGreeting"] == "Hello there"
    assert "welcomeGreeting" not in relay_attrib(welcomeGreeting=None)


@pytest.mark.parametrize("name", ["url", "actionUrl", "debugEvents"])
def test_relay_twiml_own_options_cannot_arrive_as_attributes(name):
    with pytest.raises(ValueError, match="not a <ConversationRelay> attribute"):
        relay_twiml(URL, **{name: "wss://elsewhere/ws"})


@pytest.mark.parametrize(
    "attribute", ["interruptible", "welcome_greeting_interruptible", "reportInputDuringAgentSpeech"]
)
def test_interrupt_modes_are_checked(attribute):
    for mode in INTERRUPT_MODES:
        assert relay_attrib(**{attribute: mode})[attribute_name(attribute)] == mode
    assert relay_attrib(**{attribute: True})[attribute_name(attribute)] == "true"
    with pytest.raises(ValueError, match="must be one of none, dtmf, speech, any, got 'sometimes'"):
        relay_twiml(URL, **{attribute: "sometimes"})


def test_interrupt_sensitivity_is_checked():
    assert relay_attrib(interrupt_sensitivity="medium")["interruptSensitivity"] == "medium"
    with pytest.raises(ValueError, match="low, medium, high"):
        relay_twiml(URL, interrupt_sensitivity="extreme")


def test_values_that_are_not_text_numbers_or_bools_are_refused():
    with pytest.raises(ValueError, match="hints takes a string, number or bool, got list"):
        relay_twiml(URL, hints=["Claude", "Anthropic"])


# ---- debug / events ---------------------------------------------------------------


def test_debug_events_sets_one_documented_attribute_debug():
    attrib = relay_attrib(debug_events=True)
    assert attrib["debug"] == "speaker-events tokens-played"
    assert "events" not in attrib


def test_debug_events_off_leaves_both_out():
    attrib = relay_attrib(debug_events=False)
    assert "debug" not in attrib and "events" not in attrib


def test_debug_events_keeps_words_already_asked_for_without_repeats():
    attrib = relay_attrib(debug_events=True, debug="debugging", events="tokens-played")
    assert attrib["debug"] == "debugging speaker-events tokens-played"
    assert attrib["events"] == "tokens-played", "the app's own events are left as they are"


def test_debug_events_with_a_non_text_debug_is_refused():
    with pytest.raises(ValueError, match="space-separated words"):
        relay_twiml(URL, debug_events=True, debug=True)


# ---- children -----------------------------------------------------------------------


def test_parameters_become_children_in_order():
    _, relay = relay_element(
        relay_twiml(URL, parameters={"lesson": "tracking", "caller_name": "Ada & Bob <3"})
    )
    assert [(p.tag, p.attrib) for p in relay] == [
        ("Parameter", {"name": "lesson", "value": "tracking"}),
        ("Parameter", {"name": "caller_name", "value": "Ada & Bob <3"}),
    ]


def test_parameter_values_that_are_not_text_are_written_as_twilio_does():
    _, relay = relay_element(relay_twiml(URL, parameters={"vip": True, "tries": 3}))
    assert [p.attrib["value"] for p in relay] == ["true", "3"]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [({"": "x"}, "non-empty name"), ({"lesson": None}, "needs a string"), ("a=b", "mapping")],
)
def test_bad_parameters_are_refused(parameters, message):
    with pytest.raises(ValueError, match=message):
        relay_twiml(URL, parameters=parameters)


def test_languages_become_children_before_parameters():
    _, relay = relay_element(
        relay_twiml(
            URL,
            language="en-US",
            languages=[
                Language(
                    "fr-FR",
                    tts_provider="ElevenLabs",
                    voice="Amelie",
                    transcription_provider="Deepgram",
                    speech_model="nova-3-general",
                ),
                {"code": "de-DE", "voice": "de-DE-Neural2-B", "ttsProvider": "Google"},
            ],
            parameters={"lesson": "languages"},
        )
    )
    assert relay.get("language") == "en-US"
    assert [(child.tag, child.attrib) for child in relay] == [
        (
            "Language",
            {
                "code": "fr-FR",
                "ttsProvider": "ElevenLabs",
                "voice": "Amelie",
                "transcriptionProvider": "Deepgram",
                "speechModel": "nova-3-general",
            },
        ),
        ("Language", {"code": "de-DE", "voice": "de-DE-Neural2-B", "ttsProvider": "Google"}),
        ("Parameter", {"name": "lesson", "value": "languages"}),
    ]


def test_every_twilio_language_keyword_is_accepted():
    extra = {keyword: True for keyword in keywords(ConversationRelay.language) if keyword != "code"}
    _, relay = relay_element(relay_twiml(URL, languages=[Language("es-ES", extra=extra)]))
    [language] = list(relay)
    expected = {twilio_attribute(ConversationRelay(), "language", k) for k in extra}
    assert language.attrib == {"code": "es-ES", **dict.fromkeys(expected, "true")}


@pytest.mark.parametrize(
    ("language", "message"),
    [
        ({"voice": "Amelie"}, "needs a code"),
        (Language(""), "needs a code"),
        ("fr-FR", "Language"),
        ({"code": "fr-FR", "bad-name": 1}, "not a valid TwiML attribute name"),
        ({"code": "fr-FR", "tts_provider": "A", "ttsProvider": "B"}, "given twice"),
    ],
)
def test_bad_languages_are_refused(language, message):
    with pytest.raises(ValueError, match=message):
        relay_twiml(URL, languages=[language])


# ---- <Connect action> -----------------------------------------------------------


def test_action_url_is_on_connect_with_get_by_default():
    connect, relay = relay_element(relay_twiml(URL, action_url="https://relay.example/action"))
    assert connect.attrib == {"action": "https://relay.example/action", "method": "GET"}
    assert relay.get("url") == URL


def test_action_method_post():
    connect, _ = relay_element(
        relay_twiml(URL, action_url="https://relay.example/action", action_method="POST")
    )
    assert connect.attrib["method"] == "POST"


def test_action_method_other_than_get_or_post_is_refused():
    with pytest.raises(ValueError, match="'GET' or 'POST'"):
        relay_twiml(URL, action_url="https://relay.example/action", action_method="PUT")


def test_local_ws_url_is_allowed():
    _, relay = relay_element(relay_twiml("ws://127.0.0.1:8080/ws"))
    assert relay.get("url") == "ws://127.0.0.1:8080/ws"


@pytest.mark.parametrize(
    "bad", ["https://relay.example/ws", "relay.example/ws", "", "WSS:/relay.example", None]
)
def test_non_websocket_url_is_rejected(bad):
    with pytest.raises(ValueError, match="wss://"):
        relay_twiml(bad)


# ---- parse_relay_attrs -------------------------------------------------------------


def test_parse_relay_attrs_reads_names_and_values():
    assert parse_relay_attrs(
        [
            "speechTimeout=2000",
            "ignore_backchannel=True",
            "preemptible=FALSE",
            "hints=Claude,Anthropic",
            "welcomeGreeting=Hi = hello",
        ]
    ) == {
        "speechTimeout": "2000",
        "ignoreBackchannel": True,
        "preemptible": False,
        "hints": "Claude,Anthropic",
        "welcomeGreeting": "Hi = hello",
    }
    assert parse_relay_attrs([]) == {}


def test_parsed_relay_attrs_feed_relay_twiml():
    attrib = relay_attrib(**parse_relay_attrs(["turn_detection=true", "interruptible=speech"]))
    assert attrib["turnDetection"] == "true"
    assert attrib["interruptible"] == "speech"


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["speechTimeout"], "takes NAME=VALUE .*no '='"),
        (["=2000"], "empty NAME"),
        (["  =2000"], "empty NAME"),
        (["speechTimeout="], "empty VALUE"),
        (["speech-timeout=2000"], "not a valid TwiML attribute name"),
        (["speechTimeout=1", "speech_timeout=2"], "sets speechTimeout twice"),
        (["url=wss://elsewhere/ws"], "ws_url"),
        (["interruptible=sometimes"], "must be one of none, dtmf, speech, any"),
    ],
)
def test_parse_relay_attrs_refuses_malformed_pairs(pairs, message):
    with pytest.raises(ValueError, match=message):
        parse_relay_attrs(pairs)


# ---- the action URL's answer ---------------------------------------------------------


def says(xml: str) -> list[tuple[str, str | None]]:
    return [(el.tag, el.text) for el in parse(xml)]


def test_handoff_to_a_human_dials_the_number():
    xml = handoff_twiml("ended", '{"reason": "human"}', dial_number="+15550100")
    assert says(xml) == [("Say", HANDOFF_LINE), ("Dial", "+15550100")]


def test_status_is_read_without_case_or_spaces():
    xml = handoff_twiml(" Ended ", '{"reason": "human"}', dial_number="+15550100")
    assert says(xml) == [("Say", HANDOFF_LINE), ("Dial", "+15550100")]


def test_handoff_without_dial_number_says_goodbye_and_logs_why(caplog):
    with caplog.at_level(logging.WARNING, logger="relaylab.shell.action_twiml"):
        xml = handoff_twiml("ended", '{"reason": "human"}')
    assert says(xml) == [("Say", GOODBYE_LINE), ("Hangup", None)]
    assert "no dial number" in caplog.text


@pytest.mark.parametrize(
    "data", [None, "", '{"reason": "done"}', "not json", '["human"]', '{"reason": 1}', "{"]
)
def test_ended_without_a_human_request_says_goodbye(data):
    xml = handoff_twiml("ended", data, dial_number="+15550100")
    assert says(xml) == [("Say", GOODBYE_LINE), ("Hangup", None)]


def test_completed_answers_an_empty_response_even_if_handoff_asked():
    xml = handoff_twiml("completed", '{"reason": "human"}', dial_number="+15550100")
    assert says(xml) == []
    assert xml == '<?xml version="1.0" encoding="UTF-8"?><Response />'


def test_failed_apologises_hangs_up_and_logs_the_error_code(caplog):
    with caplog.at_level(logging.WARNING, logger="relaylab.shell.action_twiml"):
        xml = handoff_twiml("failed", None, dial_number="+15550100", error_code="64105")
    assert says(xml) == [("Say", APOLOGY_LINE), ("Hangup", None)]
    assert "sorry" in APOLOGY_LINE.lower()
    assert "64105" in caplog.text


def test_unknown_status_says_goodbye_and_logs_it(caplog):
    with caplog.at_level(logging.WARNING, logger="relaylab.shell.action_twiml"):
        xml = handoff_twiml("", '{"reason": "human"}', dial_number="+15550100")
    assert says(xml) == [("Say", GOODBYE_LINE), ("Hangup", None)]
    assert "unexpected SessionStatus" in caplog.text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"reason": "human"}', True),
        ('{"reason": " Agent "}', True),
        ('{"handoff": true}', True),
        ('{"handoff": "yes"}', False),
        ('{"reason": "goodbye"}', False),
        ("human", False),
        (None, False),
    ],
)
def test_wants_human(data, expected):
    assert wants_human(data) is expected


def test_twilio_writes_an_empty_response_as_we_expect():
    # The "completed" answer relies on this shape of twilio's output.
    assert VoiceResponse().to_xml() == '<?xml version="1.0" encoding="UTF-8"?><Response />'


def test_twilios_defaults_leave_no_blind_spot_in_what_the_caller_heard():
    assert heard_blind_spots() == []
    assert heard_blind_spots(interruptible="any", report_input_during_agent_speech="any") == []
    assert heard_blind_spots(languages=[Language("fr-FR")], action_url="https://a.test/") == []


@pytest.mark.parametrize(
    ("options", "needed", "blind"),
    [
        ({"preemptible": True}, ["preemptible=true"], []),
        ({"preemptible": "true"}, ["preemptible=true"], []),
        (
            {"interruptible": "dtmf", "report_input_during_agent_speech": "speech"},
            ["reportInputDuringAgentSpeech=speech with interruptible=dtmf: speech during a reply"],
            [],
        ),
        (
            {"interruptible": "speech", "reportInputDuringAgentSpeech": "any"},
            ["reportInputDuringAgentSpeech=any with interruptible=speech: dtmf during a reply"],
            [],
        ),
        ({"interruptible": False, "reportInputDuringAgentSpeech": "any"}, [], []),  # plays out
        (
            {"welcomeGreetingInterruptible": "dtmf", "reportInputDuringAgentSpeech": "speech"},
            [],
            ["welcomeGreetingInterruptible=dtmf: speech during the welcome greeting"],
        ),
    ],
)
def test_settings_that_play_speech_without_an_interrupt_are_named(options, needed, blind):
    for found, named in (
        (playback_reports_needed(**options), needed),
        (heard_blind_spots(**options), blind),
    ):
        assert len(found) == len(named)
        for reason, words in zip(found, named, strict=True):
            assert words in reason
    _, relay = relay_element(relay_twiml(URL, **options))
    asked = "tokens-played" in (relay.get("debug") or "").split()
    assert asked == bool(needed), "relay_twiml asks for the reports exactly when needed"


def test_the_relay_warns_at_start_when_its_twiml_makes_heard_unknowable(make_lab, caplog):
    caplog.set_level(logging.INFO, logger="relaylab")
    make_lab(
        "tracking",
        twiml_options={
            "interruptible": "dtmf",
            "welcomeGreetingInterruptible": "dtmf",
            "reportInputDuringAgentSpeech": "any",
        },
    )

    def said(level):
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    assert any(
        "never heard: reportInputDuringAgentSpeech=any with welcomeGreeting" in message
        for message in said(logging.WARNING)
    )
    assert any(
        "tokensPlayed reports (reportInputDuringAgentSpeech=any with interruptible=dtmf" in message
        for message in said(logging.INFO)
    )


def test_preempts_reads_preemptible_as_twilio_does():
    assert preempts(preemptible=True) and preempts(preemptible="TRUE")
    assert not preempts() and not preempts(preemptible=False, interruptible="none")


@pytest.mark.parametrize("preemptible", [True, "true", "TRUE"])
def test_preemptible_twiml_asks_for_the_played_tokens_it_needs(preemptible):
    _, relay = relay_element(relay_twiml(URL, preemptible=preemptible))
    assert "tokens-played" in relay.get("debug").split() and relay.get("events") is None
    _, plain = relay_element(relay_twiml(URL, preemptible=False))
    assert "events" not in plain.attrib and "debug" not in plain.attrib


# -- voices Twilio would refuse (error 64106) ----------------------------------------------


@pytest.mark.parametrize(
    ("language", "provider", "voice", "problem"),
    [
        ("es-ES", "Google", "es-ES-Neural2-B", ""),
        ("es-ES", "google", "es-ES-Standard-A", ""),
        ("en-US", "Google", "es-ES-Neural2-B", "speaks es-ES, not en-US"),
        ("es-ES", "Google", "Lucia", "not a Google voice name"),
        ("es-ES", "Amazon", "Lucia-Neural", ""),
        ("en-US", "Amazon", "Lucia", "speaks es-ES, not en-US"),
        ("es-ES", "ElevenLabs", "UgBBYS2sOqTuMpoF3BR0", ""),
        ("es-ES", None, None, ""),
    ],
)
def test_voice_problem_checks_language_provider_and_voice(language, provider, voice, problem):
    found = voice_problem(language, provider, voice)
    assert (problem in found and found) if problem else found == ""


def test_relay_twiml_refuses_a_language_whose_voice_speaks_another():
    wrong = Language("es-ES", tts_provider="Google", voice="fr-FR-Neural2-A")
    with pytest.raises(ValueError, match=r"64106.*speaks fr-FR, not es-ES"):
        relay_twiml(URL, languages=[wrong])
    with pytest.raises(ValueError, match="64106"):
        relay_twiml(URL, tts_provider="Google", voice="es-ES-Neural2-B")  # en-US by default
    relay_twiml(URL, language="es-ES", tts_provider="Google", voice="es-ES-Neural2-B")
