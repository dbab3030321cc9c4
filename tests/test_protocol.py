import json

import pytest

from relaylab import protocol
from relaylab.protocol import ProtocolError, parse

SETUP = {
    "type": "setup",
    "sessionId": "VX1",
    "callSid": "CA1",
    "parentCallSid": "",
    "accountSid": "AC1",
    "from": "+15550100",
    "to": "+15550101",
    "forwardedFrom": "",
    "callerName": "",
    "direction": "inbound",
    "callType": "PSTN",
    "callStatus": "RINGING",
    "customParameters": {"lesson": "3"},
    "applicationSid": None,
}


def test_setup_fields_and_custom_parameters():
    setup = parse(json.dumps(SETUP))
    assert isinstance(setup, protocol.Setup)
    assert (setup.call_sid, setup.from_number, setup.to_number) == ("CA1", "+15550100", "+15550101")
    assert setup.custom_parameters == {"lesson": "3"}


def test_setup_without_call_sid_is_accepted():
    assert parse('{"type":"setup","sessionId":"VX9"}').call_sid == ""


def test_prompt_defaults_to_last():
    prompt = parse('{"type":"prompt","voicePrompt":"Hi there","lang":"en-US"}')
    assert prompt == protocol.Prompt(voice_prompt="Hi there", lang="en-US", last=True)
    assert parse('{"type":"prompt","voicePrompt":"Hi","last":false}').last is False


@pytest.mark.parametrize("duration", [460, 460.0, "460"])
def test_interrupt_duration_number_or_numeric_string(duration):
    frame = {
        "type": "interrupt",
        "utteranceUntilInterrupt": "Life is",
        "durationUntilInterruptMs": duration,
    }
    message = parse(json.dumps(frame))
    assert message == protocol.Interrupt("Life is", 460.0)


def test_interrupt_may_have_empty_or_missing_utterance():
    assert (
        parse('{"type":"interrupt","utteranceUntilInterrupt":""}').utterance_until_interrupt == ""
    )
    assert parse('{"type":"interrupt"}').utterance_until_interrupt == ""


def test_dtmf_error_info():
    assert parse('{"type":"dtmf","digit":"1"}') == protocol.Dtmf("1")
    assert (
        parse('{"type":"error","description":"Invalid message"}').description == "Invalid message"
    )
    info = parse('{"type":"info","name":"agentSpeaking","value":"on"}')
    assert (info.name, info.value) == ("agentSpeaking", "on")


def test_unknown_type_is_kept_not_fatal():
    message = parse('{"type":"config","foo":1}')
    assert message == protocol.Unknown(type="config", raw={"type": "config", "foo": 1})


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"voicePrompt": "hi"}', 'no "type"'),
        ('{"type": 7}', 'no "type"'),
        (b'{"type":"prompt"}', "binary frame"),
        ('{"type":"prompt"}', 'missing "voicePrompt"'),
        ('{"type":"prompt","voicePrompt":5}', "must be a string"),
        ('{"type":"prompt","voicePrompt":"x","last":"yes"}', "true or false"),
        ('{"type":"setup","callSid":"CA1","customParameters":[1]}', "customParameters"),
        ('{"type":"interrupt","durationUntilInterruptMs":"soon"}', "not a number"),
        ('{"type":"interrupt","durationUntilInterruptMs":true}', "must be a number"),
        ('{"type":"dtmf"}', 'missing "digit"'),
        ("x" * (protocol.MAX_FRAME_BYTES + 1), "larger than"),
    ],
)
def test_malformed_frames_raise_clear_protocol_errors(frame, says):
    with pytest.raises(ProtocolError, match=says):
        parse(frame)


def test_text_frames_keep_spaces_and_last_flag():
    assert json.loads(protocol.text(" world")) == {"type": "text", "token": " world", "last": False}
    assert json.loads(protocol.text("", last=True)) == {"type": "text", "token": "", "last": True}
    frame = json.loads(protocol.text("Hola", lang="es-ES", interruptible=False))
    assert frame == {
        "type": "text",
        "token": "Hola",
        "last": False,
        "lang": "es-ES",
        "interruptible": False,
    }
    with pytest.raises(TypeError):
        protocol.text(None)  # type: ignore[arg-type]


def test_other_outbound_builders():
    assert json.loads(protocol.play("https://x/a.mp3", loop=0)) == {
        "type": "play",
        "source": "https://x/a.mp3",
        "loop": 0,
    }
    assert json.loads(protocol.send_digits("12w#")) == {"type": "sendDigits", "digits": "12w#"}
    with pytest.raises(ValueError, match="0-9"):
        protocol.send_digits("12a")
    assert json.loads(protocol.language(tts_language="fr-FR")) == {
        "type": "language",
        "ttsLanguage": "fr-FR",
    }
    with pytest.raises(ValueError):
        protocol.language()
    assert json.loads(protocol.end({"reason": "human"})) == {
        "type": "end",
        "handoffData": '{"reason": "human"}',
    }
    assert json.loads(protocol.end()) == {"type": "end", "handoffData": ""}


@pytest.mark.parametrize(
    "token",
    [
        "",
        " plain",
        'say "hi"',
        "back\\slash",
        "new\nline\ttab",
        "café ☕ 日本",
        "\x00\x1f",
        "\u2028",
    ],
)
def test_text_fast_path_is_the_same_json_as_the_general_builder(token):
    for last in (False, True):
        frame = protocol.text(token, last)
        assert json.loads(frame) == {"type": "text", "token": token, "last": last}
        assert frame == protocol._dump({"type": "text", "token": token, "last": last})
