import asyncio
import collections
import json
import math
import random

import pytest

from relaylab.core import log_lines, protocol, twilio_frames
from relaylab.core.protocol import ProtocolError, parse

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
    assert parse('{"type":"info","name":"tokensPlayed","value":7}').value == "7"


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
        general = {"type": "text", "token": token, "last": last}
        assert frame == json.dumps(general, ensure_ascii=False, separators=(",", ":"))


# -- hostile input: parse lets nothing but ProtocolError out ---------------------------


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        # Python 3.11's decoder gives up on the depth, 3.12's reads it and then sees an array.
        (_nested(1000), "nested too deeply|must be a JSON object, got array"),
        ('{"type":"prompt","voicePrompt":"hi","x":' + _nested(1000) + "}", "nested too deeply"),
        ('{"type":"config","x":' + _nested(protocol.MAX_NESTING) + "}", "nested too deeply"),
        ('{"type":"prompt","voicePrompt":"hi","n":' + "7" * 5000 + "}", "too many digits"),
        ('{"type":"interrupt","durationUntilInterruptMs":NaN}', "NaN"),
        ('{"type":"interrupt","durationUntilInterruptMs":Infinity}', "Infinity"),
        ('{"type":"config","x":-Infinity}', "-Infinity"),
        ('{"type":"config","x":1e400}', "too large for a float"),
        (b"\xff\xfe\x00not utf-8", "binary frame"),
        (bytearray(b'{"type":"prompt","voicePrompt":"hi"}'), "binary frame"),
        (None, "must be text"),
        (42, "must be text"),
        ('{"type":"setup","customParameters":"lesson=3"}', "customParameters"),
        ('{"type":"setup","customParameters":7}', "customParameters"),
        ("é" * (protocol.MAX_FRAME_BYTES // 2 + 1), "larger than"),
        ('{"type":"interrupt","durationUntilInterruptMs":-1}', "not below 0"),
        ('{"type":"interrupt","durationUntilInterruptMs":"NaN"}', "finite"),
        ('{"type":"interrupt","durationUntilInterruptMs":"-Infinity"}', "finite"),
        ('{"type":"interrupt","durationUntilInterruptMs":' + "9" * 400 + "}", "not a number"),
        ('{"type":"interrupt","durationUntilInterruptMs":[460]}', "must be a number"),
    ],
)
def test_hostile_frames_raise_protocol_error_only(frame, says):
    with pytest.raises(ProtocolError, match=says):
        parse(frame)


def test_nesting_up_to_the_limit_is_accepted():
    frame = '{"type":"config","x":' + _nested(protocol.MAX_NESTING - 1) + "}"
    assert parse(frame).raw["x"] == json.loads(_nested(protocol.MAX_NESTING - 1))


def test_a_frame_at_the_size_limit_is_accepted_and_bytes_are_counted_not_chars():
    head = '{"type":"prompt","voicePrompt":"'
    fill = protocol.MAX_FRAME_BYTES - len(head) - 2
    assert isinstance(parse(head + "a" * fill + '"}'), protocol.Prompt)
    # The same number of characters, one of them two bytes long in UTF-8: one byte too many.
    with pytest.raises(ProtocolError, match="larger than"):
        parse(head + "é" + "a" * (fill - 1) + '"}')


def test_huge_arrays_within_the_frame_limit_parse_quickly():
    zeros = ",".join(["0"] * 30_000)
    message = parse('{"type":"config","x":[' + zeros + "]}")
    assert len(message.raw["x"]) == 30_000
    prompt = parse('{"type":"prompt","voicePrompt":"hi","extra":[' + zeros + "]}")
    assert prompt.voice_prompt == "hi"


def test_custom_parameters_are_coerced_to_strings():
    frame = {
        "type": "setup",
        "callSid": "CA1",
        "customParameters": {
            "text": "x",
            "count": 3,
            "ratio": 1.5,
            "flag": True,
            "nothing": None,
            "list": [1, "a"],
            "object": {"k": "é"},
        },
    }
    setup = parse(json.dumps(frame))
    assert setup.custom_parameters == {
        "text": "x",
        "count": "3",
        "ratio": "1.5",
        "flag": "true",
        "nothing": "",
        "list": '[1,"a"]',
        "object": '{"k":"é"}',
    }
    assert parse('{"type":"setup","customParameters":null}').custom_parameters == {}


# -- lone surrogates become U+FFFD everywhere ----------------------------------------


def _strings(value):
    """Every string inside a message: dataclass fields, dict keys and values, list items."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from _strings(getattr(value, name))


def _assert_utf8_safe(message):
    for text in _strings(message):
        text.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate


LONE = "\\ud800"  # a JSON escape: valid JSON, not valid Unicode


@pytest.mark.parametrize(
    ("frame", "read"),
    [
        (
            f'{{"type":"prompt","voicePrompt":"Hi {LONE}there","lang":"en{LONE}"}}',
            lambda m: (m.voice_prompt, m.lang),
        ),
        (
            f'{{"type":"interrupt","utteranceUntilInterrupt":"Life is{LONE}"}}',
            lambda m: m.utterance_until_interrupt,
        ),
        (f'{{"type":"dtmf","digit":"{LONE}"}}', lambda m: m.digit),
        (f'{{"type":"error","description":"bad {LONE}"}}', lambda m: m.description),
        (
            f'{{"type":"info","name":"n{LONE}","value":"v{LONE}"}}',
            lambda m: (m.name, m.value, m.raw["value"]),
        ),
        (
            f'{{"type":"setup","callSid":"CA{LONE}","from":"{LONE}",'
            f'"customParameters":{{"k{LONE}":"v{LONE}"}}}}',
            lambda m: (m.call_sid, m.from_number, m.custom_parameters, m.raw["callSid"]),
        ),
        (
            f'{{"type":"config{LONE}","x":["{LONE}",{{"{LONE}":"\\udfff"}}]}}',
            lambda m: (m.type, m.raw),
        ),
    ],
)
def test_lone_surrogates_are_replaced_in_every_string(frame, read):
    message = parse(frame)
    _assert_utf8_safe(message)
    assert "\ufffd" in repr(read(message))


def test_surrogate_replacement_keeps_the_other_words_and_real_pairs():
    message = parse('{"type":"prompt","voicePrompt":"Hi \\ud800 there \\ud83d\\ude00 \\udc00!"}')
    assert message.voice_prompt == "Hi \ufffd there \U0001f600 \ufffd!"
    # A raw lone surrogate in the str itself (possible only in-process) is replaced too.
    assert parse('{"type":"dtmf","digit":"\ud800"}').digit == "\ufffd"


# -- length limits ----------------------------------------------------------------------


def test_prompt_longer_than_the_limit_keeps_its_start_and_says_so():
    limit = protocol.MAX_PROMPT_CHARS
    exact = parse(twilio_frames.prompt_frame("a" * limit))
    assert (len(exact.voice_prompt), exact.truncated_from) == (limit, None)
    long = parse(twilio_frames.prompt_frame("start " + "b" * limit))
    assert long.voice_prompt == ("start " + "b" * limit)[:limit]
    assert long.truncated_from == limit + 6


def test_utterance_longer_than_the_limit_keeps_its_end_and_says_so():
    limit = protocol.MAX_UTTERANCE_CHARS
    exact = parse(twilio_frames.interrupt_frame("a" * limit))
    assert (len(exact.utterance_until_interrupt), exact.truncated_from) == (limit, None)
    utterance = "x" * limit + " and then the caller cut in"
    long = parse(twilio_frames.interrupt_frame(utterance, 900))
    assert long.utterance_until_interrupt == utterance[-limit:]
    assert long.utterance_until_interrupt.endswith("the caller cut in")
    assert long.truncated_from == len(utterance)


def test_truncation_and_surrogate_replacement_together():
    frame = twilio_frames.prompt_frame("\ud800" + "a" * protocol.MAX_PROMPT_CHARS)
    prompt = parse(frame)
    assert prompt.voice_prompt.startswith("\ufffda")
    assert len(prompt.voice_prompt) == protocol.MAX_PROMPT_CHARS


@pytest.mark.parametrize("duration", [0, 0.5, "0", " 12.5 "])
def test_duration_zero_and_fractions_are_accepted(duration):
    frame = json.dumps({"type": "interrupt", "durationUntilInterruptMs": duration})
    assert parse(frame).duration_until_interrupt_ms == float(duration)


# -- info and unknown messages ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("agentSpeaking", "on"),
        ("agentSpeaking", "off"),
        ("clientSpeaking", "on"),
        ("tokensPlayed", "Hello there. Dogs were"),
    ],
)
def test_info_name_and_value_are_strings_with_raw_kept(name, value):
    frame = twilio_frames.info_frame(name, value)
    message = parse(frame)
    assert message == protocol.Info(name=name, value=value)
    assert message.raw == json.loads(frame)


def test_info_non_string_values_become_json_text():
    assert parse('{"type":"info","name":"x","value":{"a":[1,true]}}').value == '{"a":[1,true]}'
    assert parse('{"type":"info","name":"x","value":null}').value == ""
    assert parse('{"type":"info"}') == protocol.Info(name="", value="")


def test_config_and_other_new_types_are_unknown():
    assert parse('{"type":"config","x":{"y":1}}') == protocol.Unknown(
        type="config", raw={"type": "config", "x": {"y": 1}}
    )


# -- loggable ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("CA123", "CA123"),
        ("café ☕ 日本", "café ☕ 日本"),
        ("CA1\n2026-01-01 ERROR forged", "CA1\\n2026-01-01 ERROR forged"),
        ("a\rb\tc", "a\\rb\\tc"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("x\u2028y\u2029z\x85", "x\\u2028y\\u2029z\\x85"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("lone \ud800", "lone \\ud800"),
        ("back\\slash", "back\\\\slash"),
        (None, "None"),
        (460, "460"),
    ],
)
def test_loggable_escapes_what_could_forge_or_garble_a_line(value, shown):
    assert log_lines.loggable(value) == shown


def test_loggable_cuts_long_text_with_its_length():
    assert log_lines.loggable("x" * 121) == "x" * 120 + "... (121 chars)"
    assert log_lines.loggable("x" * 120) == "x" * 120
    assert log_lines.loggable("abcdef", limit=3) == "abc... (6 chars)"
    # Escapes count toward the limit and are never cut in half.
    assert log_lines.loggable("\n" * 50, limit=5) == "\\n\\n... (50 chars)"


def test_loggable_never_returns_more_than_one_line_or_fails():
    class Broken:
        def __str__(self):
            raise RuntimeError("no")

    assert log_lines.loggable(Broken()) == "<Broken that cannot be shown>"
    rng = random.Random(9)
    alphabet = "ab \\\n\r\x1b\x00\x85\u2028\u2029\ud800\udfff\u202e\t\x7f"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        limit = rng.randint(0, 150)
        shown = log_lines.loggable(text, limit)
        shown.encode("utf-8")
        assert len(shown.splitlines()) <= 1 and shown.isprintable()
        body = shown.split("... (")[0]
        assert len(body) <= limit


def test_protocol_error_messages_escape_caller_text():
    frame = json.dumps({"type": "interrupt", "durationUntilInterruptMs": "x\nERROR forged" * 50})
    with pytest.raises(ProtocolError) as caught:
        parse(frame)
    message = str(caught.value)
    assert "\n" not in message and "\\nERROR forged" in message and len(message) < 300


# -- Twilio-side builders ---------------------------------------------------------------


SETUP_FIELDS = {  # PROTOCOL.md section 3
    "type",
    "sessionId",
    "callSid",
    "parentCallSid",
    "accountSid",
    "from",
    "to",
    "forwardedFrom",
    "callerName",
    "direction",
    "callType",
    "callStatus",
    "customParameters",
}


def test_setup_frame_has_every_documented_field_and_round_trips():
    frame = twilio_frames.setup_frame(
        "CA9", session_id="VX9", custom_parameters={"lesson": "3"}, from_number="+15550199"
    )
    assert set(json.loads(frame)) == SETUP_FIELDS
    assert all(isinstance(v, str) for k, v in json.loads(frame).items() if k != "customParameters")
    setup = parse(frame)
    assert setup == protocol.Setup(
        session_id="VX9",
        call_sid="CA9",
        account_sid="AC" + "0" * 32,
        from_number="+15550199",
        to_number="+15550101",
        direction="inbound",
        call_type="PSTN",
        call_status="RINGING",
        custom_parameters={"lesson": "3"},
    )


def test_setup_frame_gives_each_session_its_own_id():
    first, second = (parse(twilio_frames.setup_frame("CA1")).session_id for _ in range(2))
    assert first.startswith("VX") and len(first) == 34 and first != second


def test_twilio_side_builders_round_trip():
    assert parse(twilio_frames.prompt_frame("Hi there")) == protocol.Prompt(
        "Hi there", "en-US", True
    )
    assert parse(twilio_frames.prompt_frame("Hi", last=False, lang="fr-FR")) == protocol.Prompt(
        "Hi", "fr-FR", False
    )
    assert parse(twilio_frames.interrupt_frame("Life is", 460)) == protocol.Interrupt(
        "Life is", 460.0
    )
    assert parse(twilio_frames.interrupt_frame("")) == protocol.Interrupt("", None)
    assert parse(twilio_frames.dtmf_frame("#")) == protocol.Dtmf("#")
    assert parse(twilio_frames.error_frame("Invalid message")) == protocol.ErrorMessage(
        "Invalid message"
    )
    assert parse(twilio_frames.info_frame("tokensPlayed", "Hi")) == protocol.Info(
        "tokensPlayed", "Hi"
    )


def test_twilio_side_frame_shapes():
    assert json.loads(twilio_frames.interrupt_frame("a", 460.0))["durationUntilInterruptMs"] == 460
    assert "durationUntilInterruptMs" not in json.loads(twilio_frames.interrupt_frame("a"))
    assert '"café"' in twilio_frames.prompt_frame("café")  # non-ASCII as it is, like Twilio
    with pytest.raises(ValueError):
        twilio_frames.interrupt_frame("a", float("nan"))


def test_twilio_side_frame_with_a_lone_surrogate_can_still_be_sent_as_utf8():
    frame = twilio_frames.prompt_frame("café \ud800")
    frame.encode("utf-8")
    assert parse(frame).voice_prompt == "café \ufffd"


# -- seeded fuzzing -----------------------------------------------------------------------


HOSTILE_LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "9" * 5000,
    "-0",
    "1.5e-400",
    "true",
    "null",
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\u0000\\n\\u001b[31m"',
    '""',
    '"' + "w" * 5000 + '"',
    "[" * 1200 + "]" * 1200,
    "{}",
    "[]",
]
INSERTS = [*HOSTILE_LITERALS, "\\ud800", "\\", '"', "\ud800"]  # escape text, then a raw one
FIELDS = {
    "setup": [
        "sessionId",
        "callSid",
        "accountSid",
        "from",
        "to",
        "direction",
        "callType",
        "callStatus",
        "customParameters",
        "applicationSid",
    ],
    "prompt": ["voicePrompt", "lang", "last"],
    "interrupt": ["utteranceUntilInterrupt", "durationUntilInterruptMs"],
    "dtmf": ["digit"],
    "error": ["description"],
    "info": ["name", "value"],
}


def _random_json(rng: random.Random, depth: int) -> str:
    """Random JSON-ish text: mostly valid values, with hostile literals mixed in."""
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(HOSTILE_LITERALS)
    if depth <= 0 or roll < 0.5:
        return rng.choice(
            [
                str(rng.randint(-(10**6), 10**6)),
                repr(rng.uniform(-1e6, 1e6)),
                "true",
                "null",
                json.dumps("".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 12)))),
            ]
        )
    items = [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.5:
        return "[" + ",".join(items) + "]"
    return "{" + ",".join(f'"k{i}":{item}' for i, item in enumerate(items)) + "}"


def _valid_frame(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: twilio_frames.setup_frame("CA1", custom_parameters={"a": "b"}),
            lambda: twilio_frames.prompt_frame("Name ten things", last=rng.random() < 0.8),
            lambda: twilio_frames.interrupt_frame("Life is a", rng.choice([None, 460, 12.5])),
            lambda: twilio_frames.dtmf_frame("5"),
            lambda: twilio_frames.error_frame("Invalid message"),
            lambda: twilio_frames.info_frame("agentSpeaking", "on"),
            lambda: '{"type":"config","x":1}',
        ]
    )()


def _wrong_field(rng: random.Random) -> str:
    kind = rng.choice(list(FIELDS))
    message = json.loads(_valid_frame(rng)) if rng.random() < 0.3 else {"type": kind}
    body = json.dumps({k: v for k, v in message.items() if k != "type"})[1:-1]
    field_name = rng.choice(FIELDS[kind])
    extra = f'"{field_name}":{_random_json(rng, rng.randint(0, 5))}'
    return '{"type":"' + kind + '"' + (", " + body if body else "") + ", " + extra + "}"


def _byte_flips(rng: random.Random) -> str | bytes:
    data = bytearray(_valid_frame(rng).encode("utf-8"))
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    how = rng.random()
    if how < 0.2:
        return bytes(data)
    return data.decode("utf-8", "surrogateescape" if how < 0.6 else "replace")


def _odd_text(rng: random.Random) -> str:
    """Well-typed but odd text: surrogates, controls, astral chars; sometimes over a limit."""
    alphabet = 'ab \n\x1b\x00\ud800\udfff\u2028é😀\\"'
    length = rng.choice(
        [0, 1, 5, 40, protocol.MAX_UTTERANCE_CHARS + 3, protocol.MAX_PROMPT_CHARS + 9]
    )
    return "".join(rng.choice(alphabet) for _ in range(length))


def _odd_frame(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: twilio_frames.setup_frame(
                _odd_text(rng), custom_parameters={_odd_text(rng): "v"}
            ),
            lambda: twilio_frames.prompt_frame(_odd_text(rng), lang=_odd_text(rng)),
            lambda: twilio_frames.interrupt_frame(
                _odd_text(rng), rng.choice([None, 0, 460, "460"])
            ),
            lambda: twilio_frames.dtmf_frame(_odd_text(rng)),
            lambda: twilio_frames.error_frame(_odd_text(rng)),
            lambda: twilio_frames.info_frame(_odd_text(rng), _odd_text(rng)),
        ]
    )()


def _fuzz_frame(rng: random.Random) -> object:
    strategy = rng.randrange(7)
    if strategy == 0:
        return _random_json(rng, rng.randint(0, 8))
    if strategy == 1:
        return _wrong_field(rng)
    if strategy == 2:
        frame = _valid_frame(rng)
        return frame[: rng.randrange(len(frame) + 1)]
    if strategy == 3:
        return _byte_flips(rng)
    if strategy == 4:
        frame = _valid_frame(rng)
        at = rng.randrange(len(frame))
        return frame[:at] + rng.choice(INSERTS) + frame[at:]
    if strategy == 5:
        return _odd_frame(rng)
    return rng.choice([None, 3, b"", b"\xff", "", " ", "{}", '{"type":""}', "[" * 50_000])


def _check_message(message) -> None:
    assert isinstance(message, protocol.Message.__args__)
    _assert_utf8_safe(message)
    if isinstance(message, protocol.Prompt):
        assert len(message.voice_prompt) <= protocol.MAX_PROMPT_CHARS
        assert isinstance(message.last, bool)
    elif isinstance(message, protocol.Interrupt):
        assert len(message.utterance_until_interrupt) <= protocol.MAX_UTTERANCE_CHARS
        duration = message.duration_until_interrupt_ms
        assert duration is None or (math.isfinite(duration) and duration >= 0)
    elif isinstance(message, protocol.Setup):
        assert all(isinstance(v, str) for v in message.custom_parameters.values())
    elif isinstance(message, protocol.Info):
        assert isinstance(message.name, str) and isinstance(message.value, str)
    raw = getattr(message, "raw", {})
    json.dumps(raw, allow_nan=False)  # re-serialisable: no NaN, no depth trouble


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_frames_give_a_message_or_a_protocol_error(seed):
    rng = random.Random(seed)
    outcomes = collections.Counter()
    for _ in range(2000):
        frame = _fuzz_frame(rng)
        try:
            message = parse(frame)
        except ProtocolError as exc:
            text = str(exc)
            assert "\n" not in text and "\r" not in text and len(text) < 300, text
            outcomes["error"] += 1
        else:
            _check_message(message)
            outcomes[type(message).__name__] += 1
    # The generator must reach every outcome, or the test proves less than it claims.
    expected = {"error", "Setup", "Prompt", "Interrupt", "Dtmf", "ErrorMessage", "Info", "Unknown"}
    assert expected <= set(outcomes), outcomes
    assert outcomes["error"] > 200 and sum(outcomes.values()) - outcomes["error"] > 200, outcomes


# -- dynamic configuration -----------------------------------------------------------------


def test_config_names_settings_as_twiml_attributes_and_needs_one():
    frame = protocol.config(interruptible="dtmf", interrupt_sensitivity="low", hints=None)
    assert json.loads(frame) == {
        "type": "config",
        "interruptible": "dtmf",
        "interruptSensitivity": "low",
    }
    assert json.loads(protocol.config(speechTimeout=2000))["speechTimeout"] == 2000
    with pytest.raises(ValueError, match="at least one setting"):
        protocol.config(voice=None)
    with pytest.raises(ValueError, match="string, number or bool"):
        protocol.config(interruptible={"no": "dicts"})


def test_hints_are_comma_separated_like_the_twiml_attribute():
    assert json.loads(protocol.hints(["Claude", " Anthropic ", "a,b"])) == {
        "type": "hints",
        "hints": "Claude,Anthropic,a,b",
    }
    assert json.loads(protocol.hints("Claude"))["hints"] == "Claude"
    with pytest.raises(ValueError, match="at least one"):
        protocol.hints([" ", ""])


def test_the_extended_language_names_the_voice_and_providers():
    frame = protocol.language(
        tts_language="es-ES", tts_provider="Google", voice="es-ES-Neural2-B", speech_model="long"
    )
    assert json.loads(frame) == {
        "type": "language",
        "ttsLanguage": "es-ES",
        "ttsProvider": "Google",
        "voice": "es-ES-Neural2-B",
        "speechModel": "long",
    }


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"configUpdated","config":{"interruptible":"dtmf"}}',
        '{"type":"configUpdated","interruptible":"dtmf"}',
    ],
)
def test_config_updated_is_read_nested_or_flat(frame):
    message = protocol.parse(frame)
    assert isinstance(message, protocol.ConfigUpdated)
    assert message.settings == {"interruptible": "dtmf"}
    assert protocol.parse(twilio_frames.config_updated_frame({"interruptible": "dtmf"})) == message


def test_a_session_keeps_what_configupdated_confirms_and_no_more_than_its_limit():
    from relaylab.relay import session as session_module
    from relaylab.relay.testing import run_step

    frames = [twilio_frames.config_updated_frame({"interruptible": "dtmf"})]
    frames += [twilio_frames.config_updated_frame({f"made-up-{n}": n}) for n in range(100)]
    result = asyncio.run(run_step("tracking", frames))
    settings = result.session.settings
    assert settings["interruptible"] == "dtmf"
    assert len(settings) == session_module.MAX_SETTINGS
