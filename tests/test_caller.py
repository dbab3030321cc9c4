"""SimulatedCall as Twilio's side of ConversationRelay, against a scripted fake relay.

The relay here is a few lines on the `websockets` server (it sends scripted frames and
records what the caller sends); the voice webhook and the <Connect action> URL are a
tiny aiohttp.web app. Everything goes through real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from conftest import within
from relaylab.core import protocol, twilio_frames
from relaylab.notebook.caller import (
    DEFAULT_WORDS_PER_MINUTE,
    Reply,
    SimulatedCall,
    SpeechClock,
    TwilioBehaviour,
)
from relaylab.notebook.loop import LoopThread
from relaylab.simulation.twilio_behaviour import (
    InvalidOutbound,
    PlaybackReporter,
    RelayTwiml,
    config_settings,
    read_outbound,
    read_twiml,
    with_settings,
)
from relaylab.simulation.twilio_http import local_form, public_form

TOKEN = "a-test-auth-token"
SPEED = 20.0  # speech clock speed: a word (364 ms of speech) plays in 18 ms
WORD_MS = 60_000 / DEFAULT_WORDS_PER_MINUTE
# How far past the words spoken a measured duration may run: one word's time on an idle
# machine, more on a loaded one (a late timer adds to what was played).
SLACK_MS = within(WORD_MS / 1000) * 1000

Handler = Callable[["FakeRelay", ServerConnection, dict[str, Any]], Awaitable[None]]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 15))


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.005)


# -- the fake relay and the fake webhooks ---------------------------------------------------


class FakeRelay:
    """A relay that runs `handlers[type](relay, socket, message)` for each frame it gets."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = handlers
        self.received: list[dict[str, Any]] = []
        self.headers: Any = None
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.texts_sent = 0  # text frames sent so far (a stream helper counts them)
        self.texts_before_interrupt: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeRelay:
        self.server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        port = self.server.sockets[0].getsockname()[1]
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        self.server.close()
        await self.server.wait_closed()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, socket: ServerConnection) -> None:
        self.headers = socket.request.headers
        try:
            async for frame in socket:
                message = json.loads(frame)
                self.received.append(message)
                if message["type"] == "interrupt" and self.texts_before_interrupt is None:
                    self.texts_before_interrupt = self.texts_sent
                handler = self.handlers.get(message["type"])
                if handler is not None:
                    await handler(self, socket, message)
        except ConnectionClosed:
            pass
        self.close_code = socket.close_code
        self.closed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == kind]

    def infos(self) -> list[tuple[str, Any]]:
        return [(m["name"], m["value"]) for m in self.of("info")]

    async def stream(
        self, socket: ServerConnection, tokens: list[str], gap: float = 0.0, last: bool = True
    ) -> None:
        for token in tokens:
            await socket.send(protocol.text(token))
            self.texts_sent += 1
            if gap:
                await asyncio.sleep(gap)
        if last:
            await socket.send(protocol.text("", last=True))
            self.texts_sent += 1


def words_of(text: str) -> list[str]:
    """Tokens as a model streams them: each word with the space before it."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def replying(text: str, gap: float = 0.0) -> Handler:
    """A prompt handler that streams `text` word by word (in the background)."""

    async def on_prompt(relay: FakeRelay, socket: ServerConnection, message: dict) -> None:
        if message["last"]:
            relay.spawn(relay.stream(socket, words_of(text), gap))

    return on_prompt


def sending(*frames: str) -> Handler:
    """A handler that sends `frames` at once."""

    async def handler(relay: FakeRelay, socket: ServerConnection, message: dict) -> None:
        if message.get("last", True):
            for frame in frames:
                await socket.send(frame)

    return handler


class Webhooks:
    """The relay's HTTP side: /twiml answers `twiml`, /action answers `action_body`; both
    record each request; /ws accepts a WebSocket and records its handshake and frames."""

    def __init__(self, twiml: str = "", *, status: int = 200, action_body: str = "<Response/>"):
        self.twiml, self.status, self.action_body = twiml, status, action_body
        self.requests: list[dict[str, Any]] = []
        self.ws_headers: Any = None
        self.ws_frames: list[dict[str, Any]] = []

    async def __aenter__(self) -> Webhooks:
        app = web.Application()
        app.router.add_route("*", "/twiml", self._twiml)
        app.router.add_route("*", "/action", self._action)
        app.router.add_get("/ws", self._ws)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.http_url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def _record(self, request: web.Request) -> None:
        form = dict(await request.post()) if request.method == "POST" else {}
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "url": str(request.url),
                "query": dict(request.query),
                "form": {k: str(v) for k, v in form.items()},
                "signature": request.headers.get("X-Twilio-Signature"),
            }
        )

    async def _twiml(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=self.status, text=self.twiml, content_type="text/xml")

    async def _action(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text=self.action_body, content_type="text/xml")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self.ws_headers = request.headers
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            self.ws_frames.append(json.loads(message.data))
        return socket

    def to(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


def relay_twiml(ws_url: str, *, action: str | None = None, method: str | None = None, **attrs):
    response = VoiceResponse()
    connect = response.connect(action=action, method=method)
    parameters = attrs.pop("parameters", {})
    relay = connect.conversation_relay(url=ws_url, **attrs)
    for name, value in parameters.items():
        relay.parameter(name=name, value=value)
    return response.to_xml()


def valid(url: str, params: dict[str, str], signature: str | None) -> bool:
    return signature is not None and RequestValidator(TOKEN).validate(url, params, signature)


def new_call(fake: FakeRelay, **options: Any) -> SimulatedCall:
    options.setdefault("clock_speed", SPEED)
    return SimulatedCall(fake.ws_url, **options)


# -- the speech clock (pure) ------------------------------------------------------------------


def test_word_chunking_plays_each_word_once_whitespace_follows():
    clock = SpeechClock(60, chunking="word")  # one second per word
    clock.feed("Hello", 0.0)
    assert clock.words == 0, "'Hello' may go on in the next token"
    clock.feed(" there", 0.5)
    assert clock.time_of_word(1) == 1.5
    clock.feed("", 0.7, final=True)
    assert clock.time_of_word(2) == 2.5
    assert clock.heard_words(2.0) == 1 and clock.heard_text(1) == "Hello"


def test_sentence_chunking_waits_for_the_end_of_the_sentence():
    clock = SpeechClock(60, chunking="sentence")
    clock.feed("Hi there, friend", 0.0)
    assert clock.words == 0
    clock.feed(". Dogs", 1.0)
    assert clock.words == 3 and [c.start for c in clock.chunks] == [1.0]
    clock.feed(" bark.", 1.2, final=True)
    assert clock.words == 5 and clock.chunks[1].start == 4.0  # after the first chunk
    assert [clock.text[c.start_char : c.end_char] for c in clock.chunks] == [
        "Hi there, friend.",
        " Dogs bark.",
    ]


def test_clause_chunking_closes_at_commas_but_not_abbreviations():
    clock = SpeechClock(60, chunking="clause")
    clock.feed("In the U.S. today, dogs bark. ", 0.0, final=True)
    texts = [clock.text[c.start_char : c.end_char] for c in clock.chunks]
    assert texts == ["In the U.S. today,", " dogs bark."]
    assert clock.heard_text(3) == "In the U.S.", "an abbreviation keeps its dot"
    assert clock.heard_text(4) == "In the U.S. today", "a comma is a pause not yet reached"


@pytest.mark.parametrize(
    ("sent", "words", "unit", "expected"),
    [  # PROTOCOL.md section 3's examples
        (
            "Hi there. Dogs were the first animals people tamed.",
            6,
            "sentence",
            "Dogs were the first",
        ),
        ("It opens at 9. Tickets cost $12 for adults.", 8, "sentence", "Tickets cost $12 for"),
        ("Step one is easy, and step two is harder.", 7, "clause", "and step two"),
        (
            "Step one is easy, and step two is harder.",
            7,
            "sentence",
            "Step one is easy, and step two",
        ),
        ("Short.", 1, "sentence", "Short"),
    ],
)
def test_unit_text_is_the_sentence_or_clause_being_spoken(sent, words, unit, expected):
    clock = SpeechClock(chunking="word")
    clock.feed(sent, 0.0, final=True)
    assert clock.unit_text(words, unit) == expected


def test_stop_freezes_what_was_heard_and_schedules_nothing_more():
    clock = SpeechClock(60, chunking="word")
    clock.feed("one two three ", 0.0)
    clock.stop(1.5)
    clock.feed("four five", 1.6, final=True)
    assert clock.heard_words(10.0) == 1 and clock.words == 3
    assert clock.played_ms(10.0) == 1500
    assert "four" in clock.text and not clock.speaking(1.6)


def test_audio_delays_the_words_after_it_and_counts_as_played_time():
    clock = SpeechClock(60, speed=2.0, chunking="word")  # half a second per word
    clock.play_audio("https://example.com/hold.mp3", 0.0, ms=2000)  # 1 s of real time
    clock.feed("after audio ", 0.1)
    assert clock.time_of_word(1) == 1.5
    assert clock.played_ms(1.25) == 2500  # 2 s of audio and half a word, in speech time
    assert clock.time_of_ms(2000) == 1.0
    assert clock.time_of_ms(5000) is None


def test_reporter_tells_played_tokens_and_speaking_state_in_time_order():
    clock = SpeechClock(60, chunking="sentence")
    reporter = PlaybackReporter(speaker_events=True, tokens_played=True)
    reporter.add(clock)
    clock.feed("Hi there. Bye now.", 0.0, final=True)
    assert reporter.due(0.0) == [twilio_frames.info_frame("agentSpeaking", "on")]
    assert reporter.next_at() == 2.0
    assert reporter.due(3.0) == [twilio_frames.info_frame("tokensPlayed", "Hi there.")]
    assert reporter.flush() == [
        twilio_frames.info_frame("tokensPlayed", " Bye now."),
        twilio_frames.info_frame("agentSpeaking", "off"),
    ]
    assert reporter.next_at() is None


def test_reporter_in_the_cumulative_reading_tells_all_of_the_cycle_played_so_far():
    clock = SpeechClock(60, chunking="sentence")
    reporter = PlaybackReporter(speaker_events=False, tokens_played="cumulative")
    reporter.add(clock)
    clock.feed("Hi there. Bye now. See you.", 0.0, final=True)
    assert reporter.due(3.0) == [twilio_frames.info_frame("tokensPlayed", "Hi there.")]
    assert reporter.interrupted(clock, 3.5, 3) == [
        twilio_frames.info_frame("tokensPlayed", "Hi there. Bye")
    ]


def test_tokens_played_takes_true_false_or_cumulative():
    assert TwilioBehaviour(tokens_played="cumulative").info_frames
    with pytest.raises(ValueError, match="tokens_played"):
        TwilioBehaviour(tokens_played="sometimes")  # type: ignore[arg-type]


# -- Twilio's check of what the relay sends (pure) -----------------------------------------

BAD_FRAMES = [
    b'{"type":"text","token":"binary","last":true}',
    "not json",
    '["a list"]',
    '{"token":"no type"}',
    '{"type":"dance"}',
    '{"type":"text","last":true}',
    '{"type":"text","token":42}',
    '{"type":"text","token":"hi","last":"yes"}',
    '{"type":"sendDigits","digits":"12a"}',
    '{"type":"play"}',
    '{"type":"language"}',
    '{"type":"end","handoffData":{"not":"a string"}}',
    '{"type":"config"}',
    '{"type":"config","interruptible":"sometimes"}',
    '{"type":"config","speechTimeout":100}',
    '{"type":"config","loudness":"high"}',
    '{"type":"config","turnDetection":"semantic"}',
    '{"type":"hints","hints":""}',
    '{"type":"language","ttsLanguage":"es-ES","voice":7}',
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
def test_read_outbound_refuses_what_twilio_refuses(frame):
    with pytest.raises(InvalidOutbound):
        read_outbound(frame)


@pytest.mark.parametrize(
    "frame",
    [
        protocol.text("hi", last=True, lang="fr-FR", interruptible=False),
        protocol.play("https://example.com/a.mp3", loop=0),
        protocol.send_digits("12w#*"),
        protocol.language(tts_language="es-ES"),
        protocol.language(tts_language="es-ES", tts_provider="Google", voice="es-ES-Neural2-B"),
        protocol.end({"reason": "human"}),
        protocol.config(interruptible="dtmf", interrupt_sensitivity="low", speech_timeout=2000),
        '{"type":"config","config":{"hints":"Claude,Anthropic"}}',
        protocol.hints(["Claude", "Anthropic"]),
    ],
)
def test_read_outbound_accepts_every_documented_message(frame):
    assert read_outbound(frame)["type"] == json.loads(frame)["type"]


def test_behaviour_refuses_unknown_choices():
    with pytest.raises(ValueError, match="utterance"):
        TwilioBehaviour(utterance="whole")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunking"):
        TwilioBehaviour(chunking="paragraph")  # type: ignore[arg-type]


def test_public_and_local_forms_of_a_url():
    public = "https://calls.example.com"
    assert public_form("ws://127.0.0.1:5/ws?x=1", public) == "wss://calls.example.com/ws?x=1"
    assert public_form("http://127.0.0.1:5/action", public) == "https://calls.example.com/action"
    local = local_form("wss://calls.example.com/ws", public, "http://127.0.0.1:5")
    assert local == "ws://127.0.0.1:5/ws"
    assert local_form("wss://elsewhere.com/ws", public, "http://127.0.0.1:5").startswith(
        "wss://else"
    )


# -- the call over real sockets ---------------------------------------------------------------


def test_setup_comes_first_signed_and_say_returns_the_reply_with_arrival_times():
    async def scenario():
        async with FakeRelay(prompt=replying("Hello there. How are you today?")) as relay:
            call = new_call(relay, auth_token=TOKEN, custom_parameters={"topic": "dogs"})
            await call.connect_async()
            reply = await call.say_async("Hi")
            await call.hang_up_async()
            return relay, call, reply

    relay, call, reply = run(scenario())
    setup = relay.received[0]
    assert setup["type"] == "setup" and setup["callSid"] == call.call_sid
    assert setup["sessionId"] == call.session_id and setup["customParameters"] == {"topic": "dogs"}
    assert valid(relay.ws_url, {}, relay.headers["X-Twilio-Signature"])
    assert relay.received[1] == {
        "type": "prompt",
        "voicePrompt": "Hi",
        "lang": "en-US",
        "last": True,
    }
    assert reply.text == reply.heard == "Hello there. How are you today?"
    assert reply.complete and not reply.interrupted
    assert set(reply.timings) == {"first_token_ms", "last_token_ms"}
    assert len(reply.arrivals) == len(reply.frames) == 7
    assert reply.sent_at <= reply.arrivals[0]
    assert reply.arrivals == sorted(reply.arrivals)


@pytest.mark.parametrize(("chunking", "at_most", "at_least"), [("word", 3, 0), ("sentence", 99, 6)])
def test_chunking_decides_when_speech_starts(chunking, at_most, at_least):
    tokens = ["One", " two", " three", " four", " five.", " Six", " seven", " eight."]

    async def on_prompt(relay, socket, message):
        relay.spawn(relay.stream(socket, tokens, gap=0.06))

    async def scenario():
        async with FakeRelay(prompt=on_prompt) as relay:
            call = new_call(relay, twilio=TwilioBehaviour(chunking=chunking))
            await call.connect_async()
            reply = await call.say_async("Count", interrupt_after_words=1)
            await call.hang_up_async()
            return relay, reply

    relay, reply = run(scenario())
    assert reply.heard == "One"
    assert at_least <= relay.texts_before_interrupt <= at_most, relay.texts_before_interrupt


@pytest.mark.parametrize(
    ("sent", "words", "utterance", "tts", "expected"),
    [
        ("It opens at 9. Tickets cost $12 for adults.", 7, "prefix", False,
         "It opens at 9. Tickets cost $12"),
        ("It opens at 9. Tickets cost $12 for adults.", 7, "prefix", True,
         "It opens at nine. Tickets cost twelve dollars"),
        ("It opens at 9. Tickets cost $12 for adults.", 7, "sentence", False, "Tickets cost $12"),
        ("It opens at 9. Tickets cost $12 for adults.", 8, "sentence", True,
         "Tickets cost twelve dollars for"),
        ("Step one is easy, and step two is harder.", 7, "clause", False, "and step two"),
        ("Step one is easy, and step two is harder.", 7, "sentence", False,
         "Step one is easy, and step two"),
        ("Hi there. Dogs were the first animals people tamed.", 6, "sentence", False,
         "Dogs were the first"),
    ],
)  # fmt: skip
def test_interrupt_reports_the_utterance_each_way_twilio_may(sent, words, utterance, tts, expected):
    async def scenario():
        async with FakeRelay(prompt=replying(sent)) as relay:
            twilio = TwilioBehaviour(utterance=utterance, tts_normalise=tts)
            # At 4x, not SPEED: the last words left after the interrupt point take ~0.2 s to
            # play, so a busy CPU does not let the whole reply play before the caller cuts in.
            call = new_call(relay, twilio=twilio, clock_speed=4.0)
            await call.connect_async()
            reply = await call.say_async("Go on", interrupt_after_words=words)
            await call.hang_up_async()
            return relay, reply

    relay, reply = run(scenario())
    [interrupt] = relay.of("interrupt")
    assert interrupt["utteranceUntilInterrupt"] == reply.utterance == expected
    assert reply.interrupted and reply.heard == " ".join(sent.split()[:words]).rstrip(",.")
    duration = interrupt["durationUntilInterruptMs"]
    assert isinstance(duration, int) and words * WORD_MS <= duration < words * WORD_MS + SLACK_MS


def test_duration_can_be_a_numeric_string_like_older_docs():
    async def scenario():
        async with FakeRelay(prompt=replying("one two three four five six")) as relay:
            call = new_call(relay, twilio=TwilioBehaviour(duration_as_string=True))
            await call.connect_async()
            await call.say_async("Count", interrupt_after_words=2)
            await call.hang_up_async()
            return relay

    [interrupt] = run(scenario()).of("interrupt")
    duration = interrupt["durationUntilInterruptMs"]
    assert isinstance(duration, str) and 2 * WORD_MS <= float(duration) < 2 * WORD_MS + SLACK_MS


def test_interrupt_after_ms_and_interrupt_now():
    text = " ".join(["word"] * 40)

    async def scenario():
        async with FakeRelay(prompt=replying(text, gap=0.01)) as relay:
            call = new_call(relay)
            await call.connect_async()
            by_time = await call.say_async("Go", interrupt_after_ms=3 * WORD_MS + 1)
            task = asyncio.create_task(call.say_async("Again"))
            await wait_until(lambda: len(call.replies) == 2 and len(call.replies[1].frames) > 8)
            now = await call.interrupt_async()
            by_hand = await task
            complete_when_interrupted = by_hand.complete
            late = await call.interrupt_async()
            await call.hang_up_async()
            return by_time, now, by_hand, complete_when_interrupted, late

    by_time, now, by_hand, complete, late = run(scenario())
    assert by_time.heard == "word word word" and by_time.interrupted
    assert now is by_hand and by_hand.interrupted and not complete
    assert late is None, "nothing is playing after an interrupt"


def test_info_frames_tell_what_was_played_when_the_reply_is_heard_in_full():
    text = "Hello there. How are you?"
    twilio = TwilioBehaviour(speaker_events=True, tokens_played=True)

    async def scenario():
        async with FakeRelay(prompt=replying(text)) as relay:
            call = new_call(relay, twilio=twilio)
            await call.connect_async()
            await call.say_async("Hi")
            await wait_until(lambda: ("agentSpeaking", "off") in relay.infos())
            await call.hang_up_async()
            return relay

    relay = run(scenario())
    kinds = [m.get("name", m["type"]) for m in relay.received]
    assert kinds[:4] == ["setup", "clientSpeaking", "clientSpeaking", "prompt"]
    infos = relay.infos()[2:]
    assert infos == [
        ("agentSpeaking", "on"),
        ("tokensPlayed", "Hello there."),
        ("tokensPlayed", " How are you?"),
        ("agentSpeaking", "off"),
    ]


def test_info_frames_around_an_interrupt_add_up_to_what_was_heard():
    twilio = TwilioBehaviour(speaker_events=True, tokens_played=True, chunking="clause")

    async def scenario():
        async with FakeRelay(prompt=replying("Well, dogs are loyal and kind. Cats too.")) as relay:
            call = new_call(relay, twilio=twilio)
            await call.connect_async()
            reply = await call.say_async("Dogs?", interrupt_after_words=4)
            await call.hang_up_async()
            return relay, reply

    relay, reply = run(scenario())
    after_prompt = relay.received[relay.received.index(relay.of("prompt")[0]) + 1 :]
    shown = [(m["type"], m.get("name"), m.get("value")) for m in after_prompt]
    assert shown[-4:] == [
        ("info", "tokensPlayed", " dogs are loyal"),
        ("info", "agentSpeaking", "off"),
        ("interrupt", None, None),
        ("info", "clientSpeaking", "off"),
    ]
    assert ("info", "clientSpeaking", "on") in shown[:-4]
    played = "".join(v for n, v in relay.infos() if n == "tokensPlayed")
    assert played == reply.heard == "Well, dogs are loyal"


def test_partial_prompts_grow_before_the_final_prompt():
    async def scenario():
        async with FakeRelay(prompt=replying("Sure.")) as relay:
            call = new_call(relay, twilio=TwilioBehaviour(partial_prompts=True))
            await call.connect_async()
            reply = await call.say_async("Tell me about dogs")
            await call.hang_up_async()
            return relay, reply

    relay, reply = run(scenario())
    prompts = [(m["voicePrompt"], m["last"]) for m in relay.of("prompt")]
    assert prompts == [
        ("Tell", False),
        ("Tell me", False),
        ("Tell me about", False),
        ("Tell me about dogs", True),
    ]
    assert reply.text == "Sure."


def test_invalid_messages_get_an_error_frame_and_the_call_goes_on():
    bad = BAD_FRAMES[:9]  # one short of the limit
    heard: list[dict] = []

    async def scenario():
        async with FakeRelay(
            prompt=sending(*bad, protocol.text("Still here.", last=True))
        ) as relay:
            call = new_call(relay, on_frame=heard.append)
            await call.connect_async()
            reply = await call.say_async("Hello?")
            connected = call.connected
            await call.hang_up_async()
            return relay, call, reply, connected

    relay, call, reply, connected = run(scenario())
    errors = relay.of("error")
    assert len(errors) == len(call.invalid) == 9
    assert all(e["description"].startswith("Invalid message received: ") for e in errors)
    assert "unknown type" in errors[4]["description"]
    assert reply.text == "Still here." and connected
    assert heard == [{"type": "text", "token": "Still here.", "last": True}]


def test_ten_malformed_messages_in_a_row_do_not_end_the_session_by_default():
    junk = ["{nope"] * 12 + [protocol.text("Still here.", last=True)]

    async def scenario():
        async with FakeRelay(prompt=sending(*junk)) as relay:
            call = new_call(relay)
            await call.connect_async()
            reply = await call.say_async("Hello?")
            connected = call.connected
            await call.hang_up_async()
            return relay, reply, connected

    relay, reply, connected = run(scenario())
    assert connected and reply.text == "Still here." and len(relay.of("error")) == 12


def test_ten_malformed_messages_in_a_row_close_the_socket_with_1007_in_telnyx_reading():
    async def scenario():
        async with Webhooks() as hooks:
            junk = ["{nope"] * 10
            async with FakeRelay(prompt=sending(*junk)) as relay:
                call = new_call(
                    relay,
                    action_url=f"{hooks.http_url}/action",
                    twilio=TwilioBehaviour(malformed_close=True),
                )
                await call.connect_async()
                with pytest.raises(ConnectionError):
                    await call.say_async("Hello?", timeout=5)
                await asyncio.wait_for(relay.closed.wait(), 5)
                await call.hang_up_async()
                return relay, call, hooks

    relay, call, hooks = run(scenario())
    assert relay.close_code == 1007 and len(relay.of("error")) == 10
    [action] = hooks.to("/action")
    assert action["form"]["SessionStatus"] == "failed" and action["form"]["ErrorCode"] == "64107"
    assert call.session_status == "failed"


def test_a_valid_message_resets_the_malformed_count():
    frames = ["{nope"] * 9 + [protocol.text("ok ")] + ["{nope"] * 9 + [protocol.text("", True)]

    async def scenario():
        async with FakeRelay(prompt=sending(*frames)) as relay:
            call = new_call(relay)
            await call.connect_async()
            reply = await call.say_async("Hello?")
            connected = call.connected
            await call.hang_up_async()
            return relay, reply, connected

    relay, reply, connected = run(scenario())
    assert connected and reply.text == "ok " and len(relay.of("error")) == 18
    assert relay.close_code == 1000


def test_play_send_digits_and_language_are_acted_on():
    first = sending(
        protocol.language(tts_language="es-ES", transcription_language="es-ES"),
        protocol.send_digits("12#"),
        protocol.play("https://example.com/hold.mp3"),
        protocol.text("Hola amigos mios.", last=True),
    )

    async def scenario():
        async with FakeRelay(prompt=first) as relay:
            call = new_call(relay, twilio=TwilioBehaviour(play_ms=1000))
            await call.connect_async()
            reply = await call.say_async("Hola", interrupt_after_words=1)
            relay.handlers["prompt"] = replying("Vale.")
            await call.say_async("Gracias")
            await call.hang_up_async()
            return relay, call, reply

    relay, call, reply = run(scenario())
    assert call.digits_played == ["12#"] and call.played == ["https://example.com/hold.mp3"]
    assert call.tts_language == call.transcription_language == "es-ES"
    assert [p["lang"] for p in relay.of("prompt")] == ["en-US", "es-ES"]
    assert reply.heard == "Hola"
    duration = relay.of("interrupt")[0]["durationUntilInterruptMs"]
    assert 1000 + WORD_MS <= duration < 1000 + WORD_MS + SLACK_MS, "the audio plays first"
    assert [f["type"] for f in reply.frames] == ["language", "sendDigits", "play", "text"]


def test_config_and_hints_are_applied_and_answered_with_config_updated():
    relay_frames = sending(
        protocol.config(interruptible="dtmf", dtmf_detection=True, language="es-ES"),
        protocol.hints("Anthropic"),
        protocol.text("Vale.", last=True),
    )

    async def scenario():
        async with FakeRelay(prompt=relay_frames) as relay:
            mishears = TwilioBehaviour(mishear={"Anthropic": "and tropic"})
            call = new_call(relay, twilio=mishears)
            await call.connect_async()
            await call.say_async("Call Anthropic")
            relay.handlers["prompt"] = replying("One two three four five six seven eight.")
            talked_over = await call.say_async(
                "Anthropic again", interrupt_after_words=2, talk_over="Wait"
            )
            await call.hang_up_async()
            return relay, call, talked_over

    relay, call, talked_over = run(scenario())
    updated = relay.of("configUpdated")
    assert [u["config"] for u in updated] == [
        {"interruptible": "dtmf", "dtmfDetection": True, "language": "es-ES"},
        {"hints": "Anthropic"},
    ]
    assert call.twilio.interruptible == "dtmf" and call.dtmf_detection is True
    assert call.tts_language == call.transcription_language == "es-ES"
    prompts = [p["voicePrompt"] for p in relay.of("prompt")]
    assert prompts == ["Call and tropic", "Anthropic again"], "the hint fixed the transcript"
    assert relay.of("prompt")[1]["lang"] == "es-ES"
    assert talked_over.talked_over and not talked_over.interrupted, "speech no longer interrupts"
    assert relay.of("error") == [] and call.invalid == []


def test_a_voice_that_does_not_speak_the_language_is_refused_with_64106():
    relay_frames = sending(
        protocol.language(tts_language="en-US", tts_provider="Google", voice="es-ES-Neural2-B"),
        protocol.config(ttsProvider="Google", voice="es-ES-Neural2-B", language="es-ES"),
        protocol.text("Hola.", last=True),
    )

    async def scenario():
        async with FakeRelay(prompt=relay_frames) as relay:
            call = new_call(relay)
            await call.connect_async()
            reply = await call.say_async("Hello")
            await call.hang_up_async()
            return relay, call, reply

    relay, call, reply = run(scenario())
    [error] = relay.of("error")
    assert "64106" in error["description"] and "speaks es-ES, not en-US" in error["description"]
    assert call.voice == {"ttsProvider": "Google", "voice": "es-ES-Neural2-B"}
    assert call.tts_language == "es-ES" and reply.text == "Hola."
    assert len(relay.of("configUpdated")) == 1


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_end_closes_the_socket_and_requests_the_action_url_signed(method):
    async def scenario():
        async with Webhooks(action_body="<Response><Hangup/></Response>") as hooks:
            end = sending(protocol.text("Bye.", last=True), protocol.end({"reason": "human"}))
            async with FakeRelay(prompt=end) as relay:
                call = new_call(
                    relay,
                    auth_token=TOKEN,
                    action_url=f"{hooks.http_url}/action",
                    twilio=TwilioBehaviour(action_method=method),
                )
                await call.connect_async()
                reply = await call.say_async("Get me a person")
                await asyncio.wait_for(relay.closed.wait(), 5)
                await call.hang_up_async()
                return relay, call, hooks, reply

    relay, call, hooks, reply = run(scenario())
    assert reply.complete and reply.text == "Bye."
    assert call.handoff_data == '{"reason": "human"}' and relay.close_code == 1000
    [action] = hooks.to("/action")
    assert action["method"] == method
    fields = action["form"] if method == "POST" else action["query"]
    assert (
        fields["CallSid"] == call.call_sid and fields["SessionId"] == relay.received[0]["sessionId"]
    )
    assert fields["SessionStatus"] == "ended" and fields["HandoffData"] == call.handoff_data
    assert fields["SessionDuration"].isdigit()
    if method == "POST":
        assert valid(f"{hooks.http_url}/action", action["form"], action["signature"])
    else:
        assert valid(action["url"], {}, action["signature"])
    assert call.action_twiml == "<Response><Hangup/></Response>" and call.session_status == "ended"


def test_hanging_up_is_quick_and_reports_completed():
    async def scenario():
        async with Webhooks() as hooks, FakeRelay(prompt=replying("Fine.")) as relay:
            call = new_call(relay, action_url=f"{hooks.http_url}/action")
            await call.connect_async()
            await call.say_async("How are you?")
            started = time.monotonic()
            await call.hang_up_async()
            return call, hooks, time.monotonic() - started

    call, hooks, took = run(scenario())
    assert took < within(1.0)
    [action] = hooks.to("/action")
    assert action["form"]["SessionStatus"] == "completed" and "HandoffData" not in action["form"]
    assert call.session_status == "completed"


def test_the_relay_speaking_first_is_an_unprompted_reply():
    async def scenario():
        greet = sending(protocol.text("Welcome! ", last=False), protocol.text("", last=True))
        async with FakeRelay(setup=greet, prompt=replying("Hi.")) as relay:
            call = new_call(relay)
            await call.connect_async()
            await wait_until(lambda: call.replies and call.replies[0].complete)
            reply = await call.say_async("Hello")
            await call.hang_up_async()
            return call, reply

    call, reply = run(scenario())
    assert [(r.prompt, r.text) for r in call.replies] == [("", "Welcome! "), ("Hello", "Hi.")]
    assert call.replies[0].heard == "Welcome!"
    assert reply is call.replies[1]


# -- dialling like Twilio ------------------------------------------------------------------------


def test_dial_posts_the_signed_voice_webhook_and_follows_the_twiml():
    async def scenario():
        async with FakeRelay(prompt=replying("Bonjour.")) as relay, Webhooks() as hooks:
            hooks.twiml = relay_twiml(
                relay.ws_url,
                action="/action",
                method="GET",
                debug="speaker-events tokens-played",
                dtmf_detection=True,
                language="fr-FR",
                parameters={"topic": "dogs"},
            )
            call = SimulatedCall(
                twiml_url=f"{hooks.http_url}/twiml", auth_token=TOKEN, clock_speed=SPEED
            )
            await call.connect_async()
            await call.say_async("Salut")
            await call.press_async("1")
            await wait_until(lambda: relay.of("dtmf"))
            await call.hang_up_async()
            return relay, hooks, call

    relay, hooks, call = run(scenario())
    [voice] = hooks.to("/twiml")
    assert voice["method"] == "POST" and voice["form"]["CallSid"] == call.call_sid
    assert voice["form"]["From"] == "+15550100" and voice["form"]["CallStatus"] == "ringing"
    assert valid(f"{hooks.http_url}/twiml", voice["form"], voice["signature"])
    assert valid(relay.ws_url, {}, relay.headers["X-Twilio-Signature"])
    assert relay.received[0]["customParameters"] == {"topic": "dogs"}
    assert relay.of("prompt")[0]["lang"] == "fr-FR"
    assert call.twilio.speaker_events and call.twilio.tokens_played
    assert relay.of("dtmf") == [{"type": "dtmf", "digit": "1"}]
    [action] = hooks.to("/action")
    assert action["method"] == "GET" and action["query"]["SessionStatus"] == "completed"


def test_dial_with_get_and_no_dtmf_detection_sends_no_keys(caplog):
    caplog.set_level(logging.WARNING, logger="relaylab")

    async def scenario():
        async with FakeRelay() as relay, Webhooks() as hooks:
            hooks.twiml = relay_twiml(relay.ws_url)
            call = SimulatedCall(
                twiml_url=f"{hooks.http_url}/twiml",
                auth_token=TOKEN,
                twilio=TwilioBehaviour(webhook_method="GET"),
            )
            await call.connect_async()
            await call.press_async("5")
            await call.send_async(twilio_frames.prompt_frame("marker"))
            await wait_until(lambda: relay.of("prompt"))
            await call.hang_up_async()
            return relay, hooks

    relay, hooks = run(scenario())
    [voice] = hooks.to("/twiml")
    assert voice["method"] == "GET" and voice["query"]["CallSid"].startswith("CA")
    assert valid(voice["url"], {}, voice["signature"])
    assert relay.of("dtmf") == [] and "dtmfDetection" in caplog.text


def test_a_refused_voice_webhook_is_a_clear_error():
    async def scenario():
        async with Webhooks("Forbidden", status=403) as hooks:
            call = SimulatedCall(twiml_url=f"{hooks.http_url}/twiml", auth_token="wrong-token")
            with pytest.raises(ConnectionError, match="HTTP 403"):
                await call.connect_async()
            return hooks

    assert len(run(scenario()).to("/twiml")) == 1


def test_behind_a_public_url_requests_go_local_but_are_signed_as_public():
    public = "https://calls.example.com"

    async def scenario():
        async with Webhooks() as hooks:
            hooks.twiml = relay_twiml("wss://calls.example.com/ws", action="/action")
            call = SimulatedCall(
                twiml_url=f"{hooks.http_url}/twiml", public_url=public, auth_token=TOKEN
            )
            await call.connect_async()
            await wait_until(lambda: hooks.ws_frames)
            await call.hang_up_async()
            return hooks, call

    hooks, call = run(scenario())
    voice, action = hooks.to("/twiml")[0], hooks.to("/action")[0]
    assert valid(f"{public}/twiml", voice["form"], voice["signature"])
    assert valid("wss://calls.example.com/ws", {}, hooks.ws_headers["X-Twilio-Signature"])
    assert hooks.ws_frames[0]["callSid"] == call.call_sid
    assert valid(f"{public}/action", action["form"], action["signature"])


# -- the relay probe and the sync API --------------------------------------------------------


class FakeProbe:
    """A RelayProbe over the fake relay: answers once it has received `frames_sent` frames."""

    def __init__(self, relay: FakeRelay, call_sid: str) -> None:
        self.relay = relay
        self.call_sid = call_sid
        self.asked: list[int] = []

    async def history(self, frames_sent: int) -> list[dict[str, Any]] | None:
        self.asked.append(frames_sent)
        await wait_until(lambda: len(self.relay.received) >= frames_sent)
        if self.relay.received[0]["callSid"] != self.call_sid:
            return None
        return [{"role": "user", "content": m["voicePrompt"]} for m in self.relay.of("prompt")]


def test_sync_api_and_conversation_through_the_relay_probe():
    loop_thread = LoopThread("test-caller")
    try:

        async def start_relay() -> FakeRelay:
            return await FakeRelay(prompt=replying("Yes.")).__aenter__()

        relay = loop_thread.run(start_relay())
        probe = FakeProbe(relay, "CAfirst")
        keys = TwilioBehaviour(dtmf_detection=True)
        call = new_call(
            relay, loop_thread=loop_thread, relay_probe=probe, twilio=keys, call_sid="CAfirst"
        ).connect()
        reply = call.say("First")
        assert isinstance(reply, Reply) and reply.text == "Yes."
        call.press("9")
        assert call.conversation == [{"role": "user", "content": "First"}]
        assert probe.asked == [3], "asked once the relay had setup, prompt, dtmf"
        assert call.listen(0.05) == []
        assert call.interrupt() is None
        stranger_probe = FakeProbe(relay, "CAother")
        stranger = new_call(
            relay, loop_thread=loop_thread, relay_probe=stranger_probe, call_sid="CAother"
        )
        with pytest.raises(LookupError, match="no history for call CAother"):
            _ = stranger.conversation
        call.hang_up()
        loop_thread.run(relay.__aexit__(None, None, None))
    finally:
        loop_thread.close()


def test_history_async_waits_for_the_relay_to_handle_what_was_sent():
    async def scenario():
        async with FakeRelay(prompt=replying("Yes.")) as relay:
            probe = FakeProbe(relay, "CAasync")
            call = new_call(relay, relay_probe=probe, call_sid="CAasync")
            await call.connect_async()
            await call.say_async("One")
            await call.send_async(twilio_frames.prompt_frame("Two"))
            history = await call.history_async()
            await call.hang_up_async()
            return history, probe.asked

    history, asked = run(scenario())
    assert history == [{"role": "user", "content": "One"}, {"role": "user", "content": "Two"}]
    assert asked == [3]


def test_read_twiml_finds_the_relay_and_says_what_is_missing():
    twiml = relay_twiml("wss://x.example/ws", action="/done", events="tokens-played")
    relay = read_twiml(twiml, "https://x.example/twiml")
    assert relay.url == "wss://x.example/ws" and relay.action_url == "https://x.example/done"
    assert relay.events == {"tokens-played"} and not relay.dtmf_detection
    assert relay.language("tts") == "en-US"
    with pytest.raises(ValueError, match="no <Connect><ConversationRelay>"):
        read_twiml("<Response><Say>Hi</Say></Response>", "https://x.example/twiml")


def test_conversation_without_a_probe_says_where_the_history_lives():
    call = SimulatedCall("ws://127.0.0.1:9/ws")
    with pytest.raises(RuntimeError, match=r"lab\.call\(\)"):
        _ = call.conversation


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="ws_url"):
        SimulatedCall()

    async def scenario():
        async with FakeRelay() as relay:
            call = new_call(relay)
            await call.connect_async()
            with pytest.raises(ValueError, match="words the caller says"):
                await call.say_async("  ")
            with pytest.raises(ValueError, match="keys 0-9"):
                await call.press_async("x")
            await call.hang_up_async()
            with pytest.raises(ConnectionError, match="is over"):
                await call.say_async("Hello?")

    run(scenario())


# -- interruptible, reportInputDuringAgentSpeech, preemptible, the welcome greeting -----------

SIX = "one two three four five six."  # one sentence: played once all of it has arrived


def first_prompt_only(text: str) -> Handler:
    """Reply `text` (all at once) to the first prompt and "Okay." to every later one."""

    async def on_prompt(relay: FakeRelay, socket: ServerConnection, message: dict) -> None:
        if message["last"]:
            answer = text if len(relay.of("prompt")) == 1 else "Okay."
            relay.spawn(relay.stream(socket, words_of(answer)))

    return on_prompt


def prompt_sent_at(call: SimulatedCall, words: str) -> float:
    return next(at for at, m in call.sent if m.get("voicePrompt") == words and m.get("last"))


def speech_seconds(words: int) -> float:
    return words * WORD_MS / 1000 / SPEED


def test_interrupt_modes_take_the_older_booleans_and_refuse_the_rest():
    assert TwilioBehaviour(interruptible=False).interruptible == "none"
    assert TwilioBehaviour(interruptible="TRUE").interruptible == "any"
    greeting = TwilioBehaviour(welcome_greeting_interruptible="false")
    assert greeting.welcome_greeting_interruptible == "none"
    defaults = TwilioBehaviour()
    assert (defaults.interruptible, defaults.report_input_during_agent_speech) == ("any", "none")
    assert not defaults.preemptible and defaults.welcome_greeting == ""
    with pytest.raises(ValueError, match="interruptible must be one of"):
        TwilioBehaviour(interruptible="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="report_timing"):
        TwilioBehaviour(report_timing="later")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preemptible"):
        TwilioBehaviour(preemptible="yes")  # type: ignore[arg-type]


def test_with_twiml_takes_the_interruption_and_greeting_attributes():
    twiml = relay_twiml(
        "wss://x.example/ws",
        interruptible="dtmf",
        report_input_during_agent_speech="speech",
        preemptible=True,
        welcome_greeting="Hello caller",
        welcome_greeting_interruptible="false",
    )
    behaviour = TwilioBehaviour(report_timing="after_speech").with_twiml(
        read_twiml(twiml, "https://x.example/twiml")
    )
    assert behaviour.interruptible == "dtmf" and behaviour.preemptible
    assert behaviour.report_input_during_agent_speech == "speech"
    assert behaviour.welcome_greeting == "Hello caller"
    assert behaviour.welcome_greeting_interruptible == "none"
    assert behaviour.report_timing == "after_speech", "not a TwiML attribute: kept"
    bare = read_twiml(relay_twiml("wss://x.example/ws"), "https://x.example/twiml")
    kept = TwilioBehaviour(interruptible="none", preemptible=True).with_twiml(bare)
    assert kept.interruptible == "none" and kept.preemptible, "absent attributes keep the option"
    bad = read_twiml(relay_twiml("wss://x.example/ws", interruptible="never"), "https://x/t")
    with pytest.raises(ValueError, match="interruptible"):
        TwilioBehaviour().with_twiml(bad)


@pytest.mark.parametrize(
    ("report", "timing"), [("none", "at_once"), ("speech", "at_once"), ("any", "after_speech")]
)
def test_speech_that_may_not_interrupt_plays_on_and_is_reported_as_asked(report, timing):
    async def scenario():
        async with FakeRelay(prompt=first_prompt_only(SIX)) as relay:
            twilio = TwilioBehaviour(
                interruptible="none", report_input_during_agent_speech=report, report_timing=timing
            )
            call = new_call(relay, twilio=twilio)
            await call.connect_async()
            reply = await call.say_async("Go", interrupt_after_words=2, talk_over="wait")
            talked_over = (reply.talked_over, reply.interrupted)
            last = await call.wait_for_reply_async(timeout=5)
            await call.hang_up_async()
            return relay, call, reply, talked_over, last

    relay, call, reply, talked_over, last = run(scenario())
    assert talked_over == (True, False) and relay.of("interrupt") == []
    assert reply.heard == SIX and not reply.interrupted, "the agent kept speaking"
    prompts = [p["voicePrompt"] for p in relay.of("prompt")]
    if report == "none":
        assert prompts == ["Go"] and last is reply and call.replies == [reply]
        return
    assert prompts == ["Go", "wait"] and last is call.replies[1] and last.heard == "Okay."
    speech_end = reply.arrivals[-1] + speech_seconds(6)
    if timing == "at_once":
        assert prompt_sent_at(call, "wait") < speech_end - speech_seconds(2)
    else:
        assert prompt_sent_at(call, "wait") >= speech_end - 0.002


def test_with_dtmf_only_speech_talks_over_and_a_key_interrupts():
    async def scenario():
        async with FakeRelay(prompt=replying(SIX)) as relay:
            call = new_call(
                relay, twilio=TwilioBehaviour(interruptible="dtmf", dtmf_detection=True)
            )
            await call.connect_async()
            spoken = await call.say_async("Go", interrupt_after_words=2, talk_over="stop")
            await call.wait_for_reply_async(timeout=5)
            pressed = await call.say_async("Again", interrupt_after_words=2, press="5")
            await wait_until(lambda: relay.of("dtmf"))
            await call.hang_up_async()
            return relay, spoken, pressed

    relay, spoken, pressed = run(scenario())
    assert not spoken.interrupted and spoken.heard == SIX
    assert pressed.interrupted and pressed.heard == "one two"
    assert [m["type"] for m in relay.received[3:]] == ["interrupt", "dtmf"]
    assert relay.of("interrupt")[0]["utteranceUntilInterrupt"] == "one two"
    assert relay.of("dtmf") == [{"type": "dtmf", "digit": "5"}]
    assert [p["voicePrompt"] for p in relay.of("prompt")] == ["Go", "Again"], "'stop' dropped"


@pytest.mark.parametrize("report", ["none", "dtmf"])
def test_a_key_that_may_not_interrupt_is_reported_only_when_asked(report):
    async def scenario():
        async with FakeRelay(prompt=replying(SIX)) as relay:
            twilio = TwilioBehaviour(
                interruptible="speech", report_input_during_agent_speech=report, dtmf_detection=True
            )
            call = new_call(relay, twilio=twilio)
            await call.connect_async()
            reply = await call.say_async("Go", interrupt_after_words=3, press="7")
            await call.send_async(twilio_frames.prompt_frame("marker"))
            await wait_until(lambda: relay.of("prompt")[-1]["voicePrompt"] == "marker")
            await call.hang_up_async()
            return relay, reply

    relay, reply = run(scenario())
    assert reply.talked_over and not reply.interrupted and relay.of("interrupt") == []
    assert relay.of("dtmf") == ([{"type": "dtmf", "digit": "7"}] if report == "dtmf" else [])


@pytest.mark.parametrize(
    ("twiml_mode", "own", "interrupts"), [("any", False, False), ("none", True, True)]
)
def test_a_talk_cycles_own_interruptible_overrides_the_twiml(twiml_mode, own, interrupts):
    async def scenario():
        cycle = sending(protocol.text(SIX, last=True, interruptible=own))
        async with FakeRelay(prompt=cycle) as relay:
            call = new_call(relay, twilio=TwilioBehaviour(interruptible=twiml_mode))
            await call.connect_async()
            reply = await call.say_async("Go", interrupt_after_words=2)
            await call.hang_up_async()
            return relay, reply

    relay, reply = run(scenario())
    assert reply.interrupted is interrupts and len(relay.of("interrupt")) == int(interrupts)
    assert reply.heard == ("one two" if interrupts else SIX)


@pytest.mark.parametrize(
    ("twiml", "own", "cut"),
    [(False, None, False), (True, None, True), (False, True, True), (True, False, False)],
)
def test_the_next_talk_cycle_waits_for_speech_still_playing_or_preempts_it(twiml, own, cut):
    async def two_cycles(relay: FakeRelay, socket: ServerConnection, message: dict) -> None:
        await socket.send(protocol.text(SIX, last=True, preemptible=own))
        await asyncio.sleep(speech_seconds(2.5))  # the voice is on the third word
        await socket.send(protocol.text("seven eight.", last=True))

    async def scenario():
        async with FakeRelay(prompt=two_cycles) as relay:
            twilio = TwilioBehaviour(preemptible=twiml, tokens_played=True, speaker_events=True)
            call = new_call(relay, twilio=twilio)
            await call.connect_async()
            await call.say_async("Go")
            await wait_until(lambda: len(call.replies) == 2 and call.replies[1].complete)
            await call.listen_async(speech_seconds(8) + 0.1)  # everything has played
            await call.hang_up_async()
            return relay, call

    relay, call = run(scenario())
    first, second = call.replies
    assert second.prompt == "" and second.heard == "seven eight."
    played = [value for name, value in relay.infos() if name == "tokensPlayed"]
    speaking = [value for name, value in relay.infos() if name == "agentSpeaking"]
    if cut:
        assert first.cut_off and first.heard in ("one two", "one two three"), first.heard
        assert played == [first.heard, "seven eight."]
        assert speaking == ["on", "off", "on", "off"]
    else:
        assert not first.cut_off and first.heard == SIX
        assert played == [SIX, "seven eight."] and speaking == ["on", "off"], "played back to back"


@pytest.mark.parametrize("frame", [True, False])
def test_the_welcome_greeting_plays_first_and_talking_over_it_is_an_interrupt_or_not(frame):
    greeting = "Welcome to the lab. Ask me anything at all, whenever you like."

    async def scenario():
        async with FakeRelay(prompt=replying("Hi.")) as relay:
            twilio = TwilioBehaviour(welcome_greeting=greeting, greeting_interrupt_frame=frame)
            call = new_call(relay, twilio=twilio)
            await call.connect_async()
            await asyncio.sleep(speech_seconds(2.5))
            talked_over = await call.interrupt_async()
            reply = await call.say_async("Hello")
            await call.hang_up_async()
            return relay, call, talked_over, reply

    relay, call, talked_over, reply = run(scenario())
    assert talked_over is call.greeting and call.greeting.text == greeting
    assert call.greeting.interrupted and call.greeting.heard in ("Welcome to", "Welcome to the")
    assert call.replies == [reply] and reply.heard == "Hi.", "the greeting is not a reply"
    interrupts = relay.of("interrupt")
    assert [m["type"] for m in relay.received[:1]] == ["setup"]
    if frame:
        assert [i["utteranceUntilInterrupt"] for i in interrupts] == [call.greeting.heard]
    else:
        assert interrupts == []


def test_a_greeting_that_may_not_be_interrupted_plays_on_and_relay_speech_waits_for_it():
    greeting = "Welcome to the lab. Please hold on."  # seven words

    async def scenario():
        hello = sending(protocol.text("Hello from the relay.", last=True))
        async with FakeRelay(setup=hello) as relay:
            twilio = TwilioBehaviour(
                welcome_greeting=greeting,
                welcome_greeting_interruptible="dtmf",
                dtmf_detection=True,
            )
            call = new_call(relay, twilio=twilio)
            await call.connect_async()
            await wait_until(lambda: call.replies and call.replies[0].complete)
            await asyncio.sleep(speech_seconds(2.5) - (time.monotonic() - call.connected_at))
            spoken_over = await call.interrupt_async()  # speech: the greeting plays on
            state = (call.greeting.interrupted, call.greeting.talked_over)
            pressed_over = await call.interrupt_async(press="1")  # a key: it stops
            await wait_until(lambda: relay.of("dtmf"))
            await call.hang_up_async()
            return relay, call, spoken_over, state, pressed_over

    relay, call, spoken_over, state, pressed_over = run(scenario())
    assert spoken_over is pressed_over is call.greeting and state == (False, True)
    [relay_line] = call.replies
    assert relay_line.interrupted and relay_line.heard == "", "queued behind the greeting"
    [interrupt] = relay.of("interrupt")
    assert interrupt["utteranceUntilInterrupt"] == call.greeting.heard != ""
    assert [m["type"] for m in relay.received[-2:]] == ["interrupt", "dtmf"]


def test_dialling_takes_interruption_settings_and_the_greeting_from_the_twiml():
    async def scenario():
        async with FakeRelay(prompt=replying(SIX)) as relay, Webhooks() as hooks:
            hooks.twiml = relay_twiml(
                relay.ws_url, interruptible="false", welcome_greeting="Hello from Twilio."
            )
            call = SimulatedCall(twiml_url=f"{hooks.http_url}/twiml", clock_speed=SPEED)
            await call.connect_async()
            reply = await call.say_async("Go", interrupt_after_words=2)
            await call.wait_for_reply_async(timeout=5)
            await call.hang_up_async()
            return relay, call, reply

    relay, call, reply = run(scenario())
    assert call.twilio.interruptible == "none" and call.greeting.text == "Hello from Twilio."
    assert reply.talked_over and reply.heard == SIX and relay.of("interrupt") == []


def test_bad_cut_ins_are_clear_errors():
    async def scenario():
        async with FakeRelay() as relay:
            call = new_call(relay)
            await call.connect_async()
            with pytest.raises(ValueError, match="interrupt_after_words"):
                await call.say_async("Hi", talk_over="wait")
            with pytest.raises(ValueError, match="keys 0-9"):
                await call.say_async("Hi", interrupt_after_words=1, press="x")
            with pytest.raises(ValueError, match="not both"):
                await call.interrupt_async(talk_over="wait", press="1")
            with pytest.raises(ValueError, match="words the caller says"):
                await call.interrupt_async(talk_over=" ")
            await call.hang_up_async()

    run(scenario())


def test_keys_reach_the_relay_only_with_dtmf_detection(caplog):
    async def scenario():
        async with FakeRelay() as relay:
            silent = new_call(relay)
            await silent.connect_async()
            await silent.press_async("1")
            keys = new_call(relay, twilio=TwilioBehaviour(dtmf_detection=True), call_sid="CAkeys")
            await keys.connect_async()
            await keys.press_async("2")
            await wait_until(lambda: relay.of("dtmf"))
            await silent.hang_up_async()
            await keys.hang_up_async()
            return relay

    relay = run(scenario())
    assert [d["digit"] for d in relay.of("dtmf")] == ["2"]
    assert "dtmfDetection is off" in caplog.text


def test_the_action_request_carries_the_whole_form_and_64105_when_the_relay_drops():
    async def scenario():
        async with Webhooks() as hooks:

            async def drop(relay, socket, message):  # the relay crashes mid-call
                await socket.close()

            async with FakeRelay(prompt=drop) as relay:
                call = new_call(relay, action_url=f"{hooks.http_url}/action")
                await call.connect_async()
                await call.send_async(twilio_frames.prompt_frame("Hello?"))
                await wait_until(lambda: hooks.to("/action"))
                return call, hooks

    call, hooks = run(scenario())
    [action] = hooks.to("/action")
    form = action["form"]
    assert form["SessionStatus"] == "failed" and form["ErrorCode"] == "64105"
    assert form["AccountSid"] == call.account_sid and form["CallSid"] == call.call_sid
    assert form["From"] == call.from_number and form["To"] == call.to_number
    assert form["Direction"] == "inbound" and form["CallStatus"] == "in-progress"
    assert form["ApplicationSid"].startswith("AP") and form["SessionId"] == call.session_id


def test_an_unreachable_relay_fails_the_call_with_64102():
    async def scenario():
        async with Webhooks() as hooks:
            call = SimulatedCall("ws://127.0.0.1:9/ws", action_url=f"{hooks.http_url}/action")
            with pytest.raises(ConnectionError, match="64102"):
                await call.connect_async()
            return call, hooks

    call, hooks = run(scenario())
    [action] = hooks.to("/action")
    assert action["form"]["SessionStatus"] == "failed" and action["form"]["ErrorCode"] == "64102"
    assert call.session_status == "failed"


def test_a_dialled_call_whose_twiml_voice_does_not_fit_fails_with_64106():
    wrong = (
        '<Response><Connect action="/action"><ConversationRelay url="ws://127.0.0.1:9/ws">'
        '<Language code="es-ES" ttsProvider="Google" voice="en-US-Neural2-A"/>'
        "</ConversationRelay></Connect></Response>"
    )

    async def scenario():
        async with Webhooks(wrong) as hooks:
            call = SimulatedCall(twiml_url=f"{hooks.http_url}/twiml")
            with pytest.raises(ConnectionError, match="64106"):
                await call.connect_async()
            return call, hooks

    call, hooks = run(scenario())
    [action] = hooks.to("/action")
    assert action["form"]["ErrorCode"] == "64106" and call.session_status == "failed"


# -- the 2026 turn settings ----------------------------------------------------------------

LONG = " ".join(f"word{n}" for n in range(40)) + "."


@pytest.mark.parametrize(
    ("sensitivity", "talk_over", "interrupts"),
    [
        ("high", "Wait", True),
        ("medium", "Wait", False),
        ("medium", "Wait a second", True),
        ("low", "Wait a", False),
        ("low", "Wait a second", True),
    ],
)
def test_interrupt_sensitivity_sets_how_much_speech_interrupts(sensitivity, talk_over, interrupts):
    async def scenario():
        async with FakeRelay(prompt=replying(LONG)) as relay:
            twilio = TwilioBehaviour(
                interrupt_sensitivity=sensitivity, report_input_during_agent_speech="speech"
            )
            call = new_call(relay, twilio=twilio, clock_speed=4.0)
            await call.connect_async()
            reply = await call.say_async("Go", interrupt_after_words=3, talk_over=talk_over)
            await call.listen_async(0.2)
            await call.hang_up_async()
            return relay, reply

    relay, reply = run(scenario())
    assert reply.interrupted is interrupts and reply.talked_over is not interrupts
    assert len(relay.of("interrupt")) == int(interrupts)
    assert [p["voicePrompt"] for p in relay.of("prompt")] == ["Go", talk_over], "reported"


@pytest.mark.parametrize("ignore", [True, False])
def test_ignore_backchannel_keeps_an_uh_huh_from_interrupting_or_reaching_the_app(ignore):
    async def scenario():
        async with FakeRelay(prompt=replying(LONG)) as relay:
            call = new_call(relay, twilio=TwilioBehaviour(ignore_backchannel=ignore))
            await call.connect_async()
            reply = await call.say_async("Go", interrupt_after_words=3, talk_over="Uh-huh.")
            await call.listen_async(0.2)
            await call.hang_up_async()
            return relay, reply

    relay, reply = run(scenario())
    prompts = [p["voicePrompt"] for p in relay.of("prompt")]
    if ignore:
        assert reply.talked_over and not reply.interrupted and relay.of("interrupt") == []
        assert prompts == ["Go"]
    else:
        assert reply.interrupted and prompts == ["Go", "Uh-huh."]


def prompt_gap(timeout, detection, said) -> float:
    """Seconds between the caller's last partial prompt and the final one."""

    async def scenario():
        async with FakeRelay(prompt=replying("Ok.")) as relay:
            twilio = TwilioBehaviour(
                partial_prompts=True, speech_timeout=timeout, turn_detection=detection
            )
            call = new_call(relay, twilio=twilio, clock_speed=4.0)
            await call.connect_async()
            await call.say_async(said)
            await call.hang_up_async()
            return call

    call = run(scenario())
    prompts = [(t, m) for t, m in call.sent if m.get("type") == "prompt"]
    assert [m["last"] for _, m in prompts] == [False] * (len(said.split()) - 1) + [True]
    return prompts[-1][0] - prompts[-2][0]


def test_speech_timeout_and_turn_detection_decide_when_the_final_prompt_goes():
    word = 60 / DEFAULT_WORDS_PER_MINUTE / 4.0  # one word at clock speed 4
    assert prompt_gap("auto", "silence", "Tell me about dogs") < word + 0.15
    silence = prompt_gap(2000, "silence", "Tell me about dogs.")
    assert silence >= word + 2.0 / 4.0 - 0.02, "2 s of silence (at 4x) before the prompt"
    assert prompt_gap(2000, "semantic", "Tell me about dogs.") < word + 0.15, "a whole sentence"
    assert prompt_gap(2000, "semantic", "Tell me about") >= word + 0.48, "unfinished: it waits"


def test_partial_prompts_arrive_as_each_word_is_recognised():
    async def scenario():
        async with FakeRelay(prompt=replying("Ok.")) as relay:
            call = new_call(relay, twilio=TwilioBehaviour(partial_prompts=True), clock_speed=4.0)
            await call.connect_async()
            await call.say_async("one two three four")
            await call.hang_up_async()
            return call

    call = run(scenario())
    times = [t for t, m in call.sent if m.get("type") == "prompt"]
    word = 60 / DEFAULT_WORDS_PER_MINUTE / 4.0
    assert all(b - a >= word * 0.9 for a, b in itertools.pairwise(times))


def test_turn_settings_come_from_the_twiml_and_from_config():
    twiml = RelayTwiml(
        url="wss://x/ws",
        attributes={
            "interruptSensitivity": "low",
            "ignoreBackchannel": "true",
            "speechTimeout": "1500",
            "turnDetection": "semantic",
        },
    )
    behaviour = TwilioBehaviour().with_twiml(twiml)
    assert (behaviour.interrupt_sensitivity, behaviour.ignore_backchannel) == ("low", True)
    assert (behaviour.speech_timeout, behaviour.turn_detection) == (1500, "semantic")
    message = json.loads(protocol.config(interrupt_sensitivity="medium", speech_timeout="auto"))
    changed = with_settings(behaviour, config_settings(message))
    assert changed.interrupt_sensitivity == "medium" and changed.speech_timeout == "auto"
    with pytest.raises(ValueError, match="64101"):
        TwilioBehaviour(speech_timeout=100)
