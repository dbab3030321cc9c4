"""TwiML from relaylab.twiml, read back as XML."""

import xml.etree.ElementTree as ET

import pytest

from relaylab.twiml import (
    APOLOGY_LINE,
    DEFAULT_GREETING,
    GOODBYE_LINE,
    HANDOFF_LINE,
    handoff_twiml,
    relay_twiml,
    wants_human,
)


def parse(xml: str) -> ET.Element:
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    return root


def relay_element(xml: str) -> tuple[ET.Element, ET.Element]:
    root = parse(xml)
    [connect] = list(root)
    assert connect.tag == "Connect"
    [relay] = [child for child in connect if child.tag == "ConversationRelay"]
    return connect, relay


def test_minimal_relay_twiml_is_exact():
    assert relay_twiml("wss://relay.example/ws") == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        '<ConversationRelay url="wss://relay.example/ws" '
        f'welcomeGreeting="{DEFAULT_GREETING}" />'
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
    _, relay = relay_element(
        relay_twiml("wss://relay.example/ws", welcome_greeting=None, dtmf_detection=False)
    )
    assert relay.attrib == {"url": "wss://relay.example/ws", "dtmfDetection": "false"}


def test_parameters_become_children_in_order():
    _, relay = relay_element(
        relay_twiml(
            "wss://relay.example/ws",
            parameters={"lesson": "tracking", "caller_name": "Ada & Bob <3"},
        )
    )
    assert [(p.tag, p.attrib) for p in relay] == [
        ("Parameter", {"name": "lesson", "value": "tracking"}),
        ("Parameter", {"name": "caller_name", "value": "Ada & Bob <3"}),
    ]


def test_action_url_is_on_connect_with_get():
    connect, relay = relay_element(
        relay_twiml("wss://relay.example/ws", action_url="https://relay.example/action")
    )
    assert connect.attrib == {"action": "https://relay.example/action", "method": "GET"}
    assert relay.get("url") == "wss://relay.example/ws"


def test_local_ws_url_is_allowed():
    _, relay = relay_element(relay_twiml("ws://127.0.0.1:8080/ws"))
    assert relay.get("url") == "ws://127.0.0.1:8080/ws"


@pytest.mark.parametrize(
    "bad", ["https://relay.example/ws", "relay.example/ws", "", "WSS:/relay.example"]
)
def test_non_websocket_url_is_rejected(bad):
    with pytest.raises(ValueError, match="wss://"):
        relay_twiml(bad)


def says(xml: str) -> list[tuple[str, str | None]]:
    return [(el.tag, el.text) for el in parse(xml)]


def test_handoff_to_a_human_dials_the_number():
    xml = handoff_twiml("ended", '{"reason": "human"}', dial_number="+15550100")
    assert says(xml) == [("Say", HANDOFF_LINE), ("Dial", "+15550100")]


def test_handoff_without_dial_number_says_goodbye():
    xml = handoff_twiml("ended", '{"reason": "human"}')
    assert says(xml) == [("Say", GOODBYE_LINE), ("Hangup", None)]


@pytest.mark.parametrize(
    "data", [None, "", '{"reason": "done"}', "not json", '["human"]', '{"reason": 1}']
)
def test_ended_without_a_human_request_says_goodbye(data):
    xml = handoff_twiml("ended", data, dial_number="+15550100")
    assert says(xml) == [("Say", GOODBYE_LINE), ("Hangup", None)]


def test_completed_says_goodbye_even_if_handoff_asked():
    xml = handoff_twiml("completed", '{"reason": "human"}', dial_number="+15550100")
    assert says(xml) == [("Say", GOODBYE_LINE), ("Hangup", None)]


def test_failed_apologises_and_hangs_up():
    xml = handoff_twiml("failed", None, dial_number="+15550100")
    assert says(xml) == [("Say", APOLOGY_LINE), ("Hangup", None)]
    assert "sorry" in APOLOGY_LINE.lower()


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
