"""Hostile and odd input, model faults and callers that drop or stop reading (issue 9).

Everything goes through real sockets on 127.0.0.1: the relay of an offline Lab (or a
Relay on the test's own loop), the real ``anthropic`` SDK and the offline stand-in for
Claude. The callers here are plain ``websockets`` clients or raw sockets, not relaylab's
SimulatedCall, so that what is tested is the relay and nothing else.

Leak checks count, before and after: asyncio tasks on the relay's loop, open file
descriptors of this process, and the relay's open sessions. The SDK keeps idle
keep-alive connections to the stand-in (a task and two descriptors each), so each test
first warms that pool up with as many concurrent replies as it will run, and allows a
small slack on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import socket
import threading
import time
import unicodedata
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from conftest import within
from relaylab.core.conversation import Conversation
from relaylab.core.twilio_frames import (
    error_frame,
    info_frame,
    interrupt_frame,
    prompt_frame,
    setup_frame,
)
from relaylab.offline_claude import REPLIES, OfflineClaude, reply_for
from relaylab.offline_claude.replies import content_text
from relaylab.relay import failures
from relaylab.relay.llm import Backend, choose_backend
from relaylab.relay.session import CallSession, Limits, RelayReply
from relaylab.relay.settings import RelaySettings, SocketLimits
from relaylab.shell.stack import Relay
from relaylab.steps.restaurant import demo_toolbox
from relaylab.steps.tools import tools_step

pytestmark = pytest.mark.anyio

SEED = 20260409
MODEL = {"first_token_delay": 0.02, "tokens_per_second": 1000.0}
GREETING = REPLIES["greeting"]
DOGS = "Tell me about dogs"
NINETEEN = "Name ten things that happened in 1999"
HEALTHY_PROMPTS = ["Hello", DOGS, NINETEEN, "Tell me about penguins"]
TOKEN = "test-auth-token-reliability-0123"


def expected(prompt: str) -> str:
    """What the stand-in answers to ``prompt`` (its replies are deterministic)."""
    return reply_for([{"role": "user", "content": prompt}])


# -- a caller on a plain websockets client ------------------------------------------------


class Caller:
    """Twilio's side of one call: sends frames, reads the relay's text frames."""

    def __init__(self, ws: ClientConnection, call_sid: str) -> None:
        self.ws = ws
        self.call_sid = call_sid
        self.received = ""  # every token the relay sent on this call, in order

    @classmethod
    @contextlib.asynccontextmanager
    async def dial(cls, url: str, **options: object) -> AsyncIterator[Caller]:
        call_sid = "CA" + uuid.uuid4().hex
        async with connect(url, open_timeout=10, **options) as ws:
            await ws.send(setup_frame(call_sid))
            yield cls(ws, call_sid)

    async def send(self, frame: Hostile | str) -> None:
        if isinstance(frame, Hostile):
            await self.ws.send(frame.data, text=frame.text)
        else:
            await self.ws.send(frame)

    async def _token(self) -> tuple[str, bool]:
        while True:
            message = json.loads(await self.ws.recv())
            if message["type"] == "text":
                self.received += message["token"]
                return message["token"], message["last"]

    async def talk_cycle(self, timeout: float = 10.0) -> str:
        """The tokens up to and including the next text frame with ``last: true``."""
        tokens = []
        async with asyncio.timeout(timeout):
            while True:
                token, last = await self._token()
                tokens.append(token)
                if last:
                    return "".join(tokens)

    async def tokens(self, count: int, timeout: float = 10.0) -> str:
        """The text of the next ``count`` non-empty tokens."""
        tokens: list[str] = []
        async with asyncio.timeout(timeout):
            while len(tokens) < count:
                token, _ = await self._token()
                if token:
                    tokens.append(token)
        return "".join(tokens)

    async def say(self, words: str, timeout: float = 10.0) -> str:
        """Say ``words`` and return the next whole talk cycle."""
        await self.ws.send(prompt_frame(words))
        return await self.talk_cycle(timeout)

    async def say_until(self, words: str, reply: str | OfflineClaude, timeout: float = 10.0) -> str:
        """Say ``words``; skip the talk cycles of replies to earlier prompts until one ends
        with ``reply``. Fails if none does within ``timeout``.

        Given the stand-in instead of a text, the reply is the one it chose for the request
        that ends with ``words``: after a barge-in the relay merges the cut-off prompt into
        this one, and the stand-in answers the merged turn.
        """
        await self.ws.send(prompt_frame(words))
        async with asyncio.timeout(timeout):
            while True:
                cycle = await self.talk_cycle(timeout)
                wanted = reply if isinstance(reply, str) else reply_to(reply, words)
                if wanted and cycle.endswith(wanted):
                    return cycle


def reply_to(claude: OfflineClaude, words: str) -> str | None:
    """What the stand-in answered to the latest request whose last turn ends with ``words``."""
    for record in reversed(claude.requests):
        messages = record.body.get("messages") or []
        if messages and content_text(messages[-1]["content"]).endswith(words):
            return record.reply
    return None


async def healthy_conversation(caller: Caller, turns: int) -> None:
    """A well-behaved call: every prompt gets exactly its reply."""
    for i in range(turns):
        prompt = HEALTHY_PROMPTS[i % len(HEALTHY_PROMPTS)]
        assert await caller.say(prompt) == expected(prompt)


def capture_sessions(lab_server) -> list[CallSession]:
    sessions: list[CallSession] = []
    lab_server.session_listeners.append(sessions.append)
    return sessions


def session_of(sessions: Sequence[CallSession], caller: Caller) -> CallSession:
    return next(s for s in sessions if s.call_sid == caller.call_sid)


def squeezed(text: str) -> str:
    return "".join(text.split())


def assert_history_sound(session: CallSession, caller: Caller) -> None:
    """Valid for the Messages API, and every assistant word was sent to this caller."""
    history = session.conversation.snapshot()
    assert Conversation(history).problems() == [], history
    heard = squeezed(caller.received)
    for turn in history:
        turn["content"].encode("utf-8")  # no lone surrogate got into the history
        if turn["role"] == "assistant":
            assert squeezed(turn["content"]) in heard, (turn, caller.received)


# -- leak accounting ------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    tasks: int  # asyncio tasks on the relay's loop
    fds: int  # open file descriptors of this process
    sessions: int  # the relay's open sessions


async def _tasks_on_loop() -> int:
    return len(asyncio.all_tasks()) - 1  # not counting this one


async def usage(lab) -> Usage:
    tasks = await lab.run_async(_tasks_on_loop())
    return Usage(tasks, len(os.listdir("/proc/self/fd")), len(lab.server.sessions))


async def assert_settled(lab, before: Usage, *, slack: int = 3, timeout: float = 5.0) -> None:
    """Wait until the relay is back to ``before`` (within ``slack`` tasks and 2 x ``slack``
    descriptors, and no more sessions); fail with the figures if it never gets there."""
    deadline = time.monotonic() + timeout
    while True:
        now = await usage(lab)
        settled = (
            now.tasks <= before.tasks + slack
            and now.fds <= before.fds + 2 * slack
            and now.sessions <= before.sessions
        )
        if settled:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"resources did not come back: before {before}, after {now}")
        await asyncio.sleep(0.05)


async def warm_up(lab, calls: int) -> None:
    """Open the SDK's pool to the stand-in as wide as ``calls`` concurrent replies."""

    async def one() -> None:
        async with Caller.dial(lab.ws_url) as caller:
            assert await caller.say("Hello") == GREETING

    await asyncio.gather(*(one() for _ in range(calls)))


async def assert_still_serving(lab) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok\n"), answer
    async with Caller.dial(lab.ws_url) as caller:
        assert await caller.say("Hello") == GREETING


async def wait_for(condition: Callable[[], object], message: str, timeout: float = 5.0) -> None:
    """Poll the async ``condition`` until it holds; fail with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.05)


async def _empty(items: Sequence[object]) -> bool:
    return not items


async def _hello(lab) -> str:
    async with Caller.dial(lab.ws_url) as caller:
        return await caller.say("Hello")


# -- hostile frames from a seeded generator ------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One frame a hostile or broken peer might send."""

    kind: str
    data: str | bytes | list[str]  # a list is sent as a fragmented message
    text: bool | None = None  # True sends bytes as a text frame (not valid UTF-8)


def _mutated(rng: random.Random, frame: str) -> str:
    chars = list(frame)
    for _ in range(rng.randrange(1, 6)):
        at = rng.randrange(len(chars))
        action = rng.randrange(3)
        noise = rng.choice(['"', "\\", "{", "]", ",", ":", "\x00", "\u2028", "é", "9"])
        if action == 0:
            chars[at] = noise
        elif action == 1:
            chars.insert(at, noise)
        elif len(chars) > 1:
            del chars[at]
    return "".join(chars)


def garbage_json(rng: random.Random) -> Hostile:
    valid = prompt_frame("Hello there")
    return Hostile(
        "garbage",
        rng.choice(
            [
                valid[: rng.randrange(1, len(valid))],
                "".join(rng.choice('{}[]":,\\ tru') for _ in range(rng.randrange(1, 80))),
                "null",
                "[]",
                '"just a string"',
                "1e999",
                '{"type":"prompt","voicePrompt":NaN}',
                '{"type":"prompt","voicePrompt":"trailing comma",}',
                _mutated(rng, valid),
            ]
        ),
    )


def deep_nesting(rng: random.Random) -> Hostile:
    depth = rng.choice([17, 300, 1_000, 10_000])
    lists = rng.random() < 0.5
    nest = "[" * depth + "]" * depth if lists else '{"a":' * depth + "1" + "}" * depth
    return Hostile("deep", '{"type":"prompt","voicePrompt":"Hello","last":true,"x":' + nest + "}")


def huge_number(rng: random.Random) -> Hostile:
    digits = "9" * rng.choice([4_301, 20_000, 60_000])
    return Hostile(
        "huge-number",
        rng.choice(
            [
                '{"type":"prompt","voicePrompt":"Hello","last":true,"n":' + digits + "}",
                '{"type":"interrupt","utteranceUntilInterrupt":"x",'
                '"durationUntilInterruptMs":' + digits + "}",
                '{"type":"interrupt","utteranceUntilInterrupt":"x","durationUntilInterruptMs":1e400}',
                '{"type":"interrupt","utteranceUntilInterrupt":"x","durationUntilInterruptMs":-5}',
            ]
        ),
    )


def lone_surrogate(rng: random.Random) -> Hostile:
    return Hostile(
        "surrogate",
        rng.choice(
            [
                prompt_frame(f"Hello \ud800 number {rng.randrange(100)}"),
                '{"type":"\\udfff"}',
                '{"type":"setup","callSid":"CA\\ud800"}',
                '{"type":"info","name":"tokensPlayed","value":"\\ud800"}',
                '{"type":"prompt","voicePrompt":"x","\\ud800":1,"last":false}',
                interrupt_frame("Hello \udc00"),
            ]
        ),
    )


WRONG_TYPES = [
    {"type": "prompt", "voicePrompt": 5},
    {"type": "prompt", "voicePrompt": None, "last": True},
    {"type": "prompt", "voicePrompt": "Hello", "last": "yes"},
    {"type": "prompt", "voicePrompt": ["Hello"]},
    {"type": "prompt", "voicePrompt": "   ", "last": True},
    {"type": "interrupt", "utteranceUntilInterrupt": []},
    {"type": "interrupt", "utteranceUntilInterrupt": "x", "durationUntilInterruptMs": "abc"},
    {"type": "interrupt", "utteranceUntilInterrupt": "x", "durationUntilInterruptMs": True},
    {"type": "dtmf", "digit": {}},
    {"type": 7},
    {"type": ""},
    {"type": None},
    {"no": "type"},
    {"type": "info", "name": [1], "value": {"a": 1}},
    {"type": "info", "name": "tokensPlayed", "value": 12},
    {"type": "error", "description": 123},
    {"type": "setup", "customParameters": "x"},
]


def wrong_types(rng: random.Random) -> Hostile:
    return Hostile("wrong-type", json.dumps(rng.choice(WRONG_TYPES)))


def binary(rng: random.Random) -> Hostile:
    return Hostile("binary", rng.randbytes(rng.randrange(0, 300)))


def not_utf8(rng: random.Random) -> Hostile:
    bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80"])  # the last: a UTF-8 encoded surrogate
    frame = b'{"type":"prompt","voicePrompt":"Hel' + bad + b'lo","last":true}'
    return Hostile("not-utf8", rng.choice([frame, b"\xff\xfe" + frame]), text=True)


def fragments(rng: random.Random) -> Hostile:
    frame = rng.choice([prompt_frame("Hello"), garbage_json(rng).data, interrupt_frame("Hel")])
    cuts = sorted(rng.sample(range(1, len(frame)), k=min(len(frame) - 1, rng.randrange(1, 5))))
    pieces = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True)]
    return Hostile("fragments", pieces)


def oversized(rng: random.Random) -> Hostile:
    return Hostile("oversized", prompt_frame("x" * rng.choice([70_000, 200_000])))


def forged_lines(rng: random.Random) -> Hostile:
    return Hostile(
        "newlines",
        rng.choice(
            [
                '{"type":"mystery\\nERROR forged line"}',
                error_frame("boom\nERROR forged line"),
                '{"type":"dtmf","digit":"1\\r\\nforged"}',
                '{"type":"setup","callSid":"CA\\nforged"}',
            ]
        ),
    )


def odd_but_valid(rng: random.Random) -> Hostile:
    return Hostile(
        "odd",
        rng.choice(
            [
                interrupt_frame(" ".join(rng.choices(["dogs", "were", "the", "I", "um"], k=9))),
                interrupt_frame("", 0),
                info_frame("tokensPlayed", "Hello " * rng.randrange(1, 3_000)),
                info_frame("agentSpeaking", "on"),
                '{"type":"config","anything":[1,2,3]}',
                prompt_frame("Hello partial", last=False),
            ]
        ),
    )


HOSTILE_KINDS: list[Callable[[random.Random], Hostile]] = [
    garbage_json,
    deep_nesting,
    huge_number,
    lone_surrogate,
    wrong_types,
    binary,
    not_utf8,
    fragments,
    oversized,
    forged_lines,
    odd_but_valid,
]


def hostile_frames(rng: random.Random, count: int) -> list[Hostile]:
    """``count`` hostile frames, every kind at least once, in a seeded order."""
    frames = [kind(rng) for kind in HOSTILE_KINDS]
    frames += [rng.choice(HOSTILE_KINDS)(rng) for _ in range(count - len(frames))]
    rng.shuffle(frames)
    return frames


def test_the_generator_is_seeded_and_covers_every_kind():
    first = hostile_frames(random.Random(SEED), 120)
    again = hostile_frames(random.Random(SEED), 120)
    assert first == again
    assert {frame.kind for frame in first} >= {
        "garbage",
        "deep",
        "huge-number",
        "surrogate",
        "wrong-type",
        "binary",
        "not-utf8",
        "fragments",
        "oversized",
        "newlines",
        "odd",
    }


async def test_fuzzed_frames_never_end_a_call_and_a_concurrent_call_is_unaffected(make_lab):
    lab = make_lab(**MODEL)
    sessions = capture_sessions(lab.server)
    await warm_up(lab, calls=3)
    before = await usage(lab)
    rng = random.Random(SEED)
    frames = hostile_frames(rng, 120)
    fuzz_done = asyncio.Event()

    async def keep_talking(caller: Caller) -> int:
        turns = 0
        while not fuzz_done.is_set() or turns < 3:
            await healthy_conversation(caller, 1)
            turns += 1
        return turns

    async with Caller.dial(lab.ws_url) as fuzzed, Caller.dial(lab.ws_url) as healthy:
        talking = asyncio.create_task(keep_talking(healthy))
        for batch in range(0, len(frames), 12):
            for frame in frames[batch : batch + 12]:
                await fuzzed.send(frame)
            words = f"Tell me about {rng.choice(['owls', 'tea', 'rivers'])} number {batch}"
            await fuzzed.say_until(words, lab.offline_claude)
        # After all that, an interrupt still leaves exactly the heard words in the history.
        await fuzzed.ws.send(prompt_frame(DOGS))
        heard = await fuzzed.tokens(8)
        await fuzzed.ws.send(interrupt_frame(heard, 1_000))
        await fuzzed.say_until("Hello again", GREETING)
        fuzz_done.set()
        assert await talking >= 3
        fuzzed_session = session_of(sessions, fuzzed)
        stored_heard = fuzzed_session.conversation[-3]["content"]
        assert stored_heard.rstrip(",") == heard.strip().rstrip(",")  # the words, comma or not
        assert fuzzed_session.conversation[-4:] == [
            {"role": "user", "content": DOGS},
            {"role": "assistant", "content": stored_heard},
            {"role": "user", "content": "Hello again"},
            {"role": "assistant", "content": GREETING},
        ]
        assert_history_sound(fuzzed_session, fuzzed)
        assert_history_sound(session_of(sessions, healthy), healthy)
    await assert_settled(lab, before)
    await assert_still_serving(lab)


async def test_a_lone_surrogate_does_not_poison_later_requests(make_lab):
    lab = make_lab(**MODEL)
    sessions = capture_sessions(lab.server)
    async with Caller.dial(lab.ws_url) as caller:
        first = await caller.say("Hello \ud800 there")  # valid JSON, not valid Unicode
        assert first == GREETING
        for prompt in [DOGS, "Hello"]:
            assert await caller.say(prompt) == expected(prompt)
        session = session_of(sessions, caller)
        assert session.conversation[0] == {"role": "user", "content": "Hello \ufffd there"}
        assert_history_sound(session, caller)
    assert [r.outcome for r in lab.offline_claude.requests] == ["complete"] * 3


# -- model faults ----------------------------------------------------------------------------

FAULT_LIMITS = Limits(first_token_timeout=1.0, stall_timeout=0.3)


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("rate_limit", 429),
        ("overloaded", 529),
        ("server_error", 500),
        ("cut", None),
        ("hang", None),
        ("stall", None),
    ],
)
async def test_a_model_fault_is_an_apology_in_budget_and_the_next_prompt_works(
    make_lab, kind, status
):
    lab = make_lab(**MODEL, call=FAULT_LIMITS)
    sessions = capture_sessions(lab.server)
    # An HTTP error is retried by the SDK, so every attempt must fail to reach the caller.
    times = 1 + lab.claude.max_retries if status else 1
    lab.offline_claude.fail_next(kind, times=times)
    async with Caller.dial(lab.ws_url) as caller:
        started = time.monotonic()
        heard = await caller.say(DOGS)
        took = time.monotonic() - started
        assert heard.endswith(failures.APOLOGY)
        budget = FAULT_LIMITS.first_token_timeout + FAULT_LIMITS.stall_timeout
        assert took < budget + within(1.5), f"the apology took {took:.2f} s"
        assert await caller.say("Hello") == GREETING
        assert_history_sound(session_of(sessions, caller), caller)
    failed = [r for r in lab.offline_claude.requests if r.outcome == f"failed:{kind}"]
    assert len(failed) == times
    if status:
        assert {r.status for r in failed} == {status}
    if kind in ("hang", "stall"):  # the relay gave up and closed the stream: none left open
        assert all(r.client_closed_at is not None for r in failed)


# -- callers that drop, and many connections ------------------------------------------------


async def test_callers_dropping_mid_reply_leave_nothing_behind(make_lab):
    lab = make_lab(first_token_delay=0.02, tokens_per_second=200.0)
    await warm_up(lab, calls=2)
    before = await usage(lab)

    async def drop_mid_reply(i: int) -> None:
        async with Caller.dial(lab.ws_url) as caller:
            await caller.ws.send(prompt_frame(DOGS))
            await caller.tokens(2 + i % 6)
            caller.ws.transport.abort()  # the line drops: no close frame

    async with Caller.dial(lab.ws_url) as healthy:
        await asyncio.gather(
            *(drop_mid_reply(i) for i in range(20)), healthy_conversation(healthy, 4)
        )

    first_dogs = [{"role": "user", "content": DOGS}]  # the healthy call asks it later on

    async def aborted() -> bool:
        dropped = [r for r in lab.offline_claude.requests if r.body["messages"] == first_dogs]
        return len(dropped) >= 20 and all(r.outcome == "client_closed" for r in dropped)

    await wait_for(aborted, "the relay left a dropped caller's model stream open")
    await assert_settled(lab, before)
    await assert_still_serving(lab)


WS_UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def _open_and_drop(lab, rng: random.Random) -> None:
    """One connection that goes away somewhere between connecting and a reply."""
    how = rng.choice(["connect", "half-head", "handshake", "setup", "prompt", "healthz"])
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.server.port)
    try:
        if how == "half-head":
            writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpg")
        elif how == "healthz":
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        elif how in ("handshake", "setup", "prompt"):
            client = ClientProtocol(parse_uri(lab.ws_url))
            client.send_request(client.connect())
            writer.write(b"".join(client.data_to_send()))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            client.receive_data(head)
            if how in ("setup", "prompt"):
                client.send_text(setup_frame("CA" + uuid.uuid4().hex).encode())
            if how == "prompt":
                client.send_text(prompt_frame(DOGS).encode())
            writer.write(b"".join(client.data_to_send()))
            if how == "prompt":
                await reader.read(rng.randrange(1, 400))  # maybe some of the reply
        await writer.drain()
    finally:
        writer.transport.abort()


async def test_hundreds_of_connections_opened_and_dropped_leak_nothing(make_lab):
    lab = make_lab(**MODEL, socket=SocketLimits(request_head_timeout=0.5, setup_timeout=0.5))
    await warm_up(lab, calls=4)
    before = await usage(lab)
    rng = random.Random(SEED)
    gate = asyncio.Semaphore(20)

    async def one() -> None:
        async with gate:
            await _open_and_drop(lab, rng)

    # Some connections say nothing at all, or never start a call: the relay must drop them.
    silent = [await asyncio.open_connection("127.0.0.1", lab.server.port) for _ in range(10)]
    no_setup = [await connect(lab.ws_url) for _ in range(5)]
    async with Caller.dial(lab.ws_url) as healthy:
        await asyncio.gather(*(one() for _ in range(200)), healthy_conversation(healthy, 4))
    for reader, writer in silent:
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        writer.close()
    for ws in no_setup:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1008
    await assert_settled(lab, before)
    await assert_still_serving(lab)


# -- malformed HTTP ------------------------------------------------------------------------

BAD_HOSTS = ["a b", "[::1", "a.test:abc", "\x80\x9b31m.test", '"><x y="', "a.test:99999999"]


def malformed_request(rng: random.Random) -> bytes:
    """One request head that no HTTP client should send, built from a seeded choice."""
    path = rng.choice(["/ws", "/twiml", "/action", "/healthz"])
    upgrade = WS_UPGRADE if path == "/ws" else ""
    kind = rng.randrange(9)
    if kind == 0:  # a Host that is no host name, where the relay uses it
        return f"GET /twiml HTTP/1.1\r\nHost: {rng.choice(BAD_HOSTS)}\r\n\r\n".encode("latin-1")
    if kind == 1:
        return f"GET {path} HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n{upgrade}\r\n".encode()
    if kind == 2:
        path = rng.choice(["/twiml", "/ws"])
        upgrade = WS_UPGRADE if path == "/ws" else ""
        signatures_twice = "X-Twilio-Signature: a\r\nX-Twilio-Signature: b\r\n"
        return f"GET {path} HTTP/1.1\r\nHost: a.test\r\n{signatures_twice}{upgrade}\r\n".encode()
    if kind == 3:  # bytes no URL may hold
        junk = bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 8)))
        target = path.encode() + b"?x=" + junk
        return b"GET " + target + b" HTTP/1.1\r\nHost: a.test\r\n" + upgrade.encode() + b"\r\n"
    if kind == 4:  # not a request line at all
        junk = bytes(rng.choice(b"ABC /\x00\x7f:\t") for _ in range(rng.randrange(1, 40)))
        return junk + b"\r\n\r\n"
    if kind == 5:
        return f"GET {path} HTTP/1.1\r\nHost a.test\r\n{upgrade}\r\n".encode()
    if kind == 6:
        length = rng.choice(["-1", "abc", "1 2"])
        return f"POST /twiml HTTP/1.1\r\nHost: a.test\r\nContent-Length: {length}\r\n\r\n".encode()
    if kind == 7:  # a WebSocket upgrade without a usable key or version
        broken = rng.choice(
            [
                WS_UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
                WS_UPGRADE.replace("Version: 13", "Version: 8"),
            ]
        )
        return f"GET /ws HTTP/1.1\r\nHost: a.test\r\n{broken}\r\n".encode()
    return f"GET {path} HTTP/1.1\r\nHost: a.test\r\nX-Big: {'a' * 20_000}\r\n\r\n".encode()


async def _status_of(port: int, request: bytes) -> int | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.transport.abort()
    return int(line.split()[1]) if line.startswith(b"HTTP/1.") else None


async def test_malformed_http_always_gets_a_4xx_never_a_500_or_silence(make_lab, caplog):
    lab = make_lab(**MODEL)
    rng = random.Random(SEED)
    requests = [malformed_request(rng) for _ in range(60)]
    answers = [await _status_of(lab.server.port, request) for request in requests]
    wrong = [
        (r[:60], a) for r, a in zip(requests, answers, strict=True) if not 400 <= (a or 0) < 500
    ]
    assert wrong == []
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    await assert_still_serving(lab)


# -- log lines -----------------------------------------------------------------------------


def _unsafe_characters(message: str) -> list[str]:
    return [
        f"U+{ord(c):04X}"
        for c in message
        if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or 0x202A <= ord(c) <= 0x202E
    ]


async def test_caller_text_never_forges_a_log_line(make_lab, caplog):
    caplog.set_level("INFO", logger="relaylab")
    lab = make_lab(**MODEL)
    forged = "\nERROR relaylab.shell.server: forged \x1b[31m\u2028\u202e"
    async with Caller.dial(lab.ws_url) as caller:
        await caller.send('{"type":"mystery' + json.dumps(forged)[1:-1] + '"}')
        await caller.send(error_frame("bad token" + forged))
        await caller.send(interrupt_frame("x", 5))
        assert await caller.talk_cycle() == "", "the interrupt's one empty last:true"
        lab.offline_claude.fail_next("server_error", times=1 + lab.claude.max_retries)
        assert (await caller.say("Hello" + forged)).endswith(failures.APOLOGY)
    async with connect(lab.ws_url) as ws:
        await ws.send(setup_frame("CA" + forged))
        await ws.send(prompt_frame("Hello"))
        await ws.recv()
    await _status_of(lab.server.port, b"GET /nope%0Aforged HTTP/1.1\r\nHost: a.test\r\n\r\n")
    signed = make_lab(**MODEL, auth_token=TOKEN)
    host = "\x80\x9b31mrelay.test"
    request = f"GET /ws HTTP/1.1\r\nHost: {host}\r\nX-Twilio-Signature: x\r\n{WS_UPGRADE}\r\n"
    assert await _status_of(signed.server.port, request.encode("latin-1")) == 403

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("relaylab")]
    assert [(m, _unsafe_characters(m)) for m in messages if _unsafe_characters(m)] == []
    # Each path did log the caller's text, escaped: the check above was not vacuous.
    for seen in ["mystery\\nERROR", "bad token\\nERROR", "Hello\\nERROR", "CA\\nERROR", "nope\\n"]:
        assert any(seen in m for m in messages), seen
    assert any("\\x9b31mrelay.test" in m for m in messages)


# -- what one call may cost ------------------------------------------------------------------


async def _loop_lag(stop: threading.Event, tick: float = 0.005) -> float:
    """The longest the relay's loop took to come back to a ``tick``-second sleep."""
    worst = 0.0
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.sleep(tick)
        worst = max(worst, time.monotonic() - started - tick)
    return worst


async def test_huge_utterances_do_not_stall_the_loop_or_delay_another_call(make_lab):
    lab = make_lab(first_token_delay=0.02, tokens_per_second=float("inf"))
    await warm_up(lab, calls=2)
    words = expected(DOGS).split()
    utterance = " ".join(random.Random(SEED).choices(words, k=12_000))[:60_000]
    assert len(utterance) == 60_000

    loaded: list[float] = []

    async def attack(caller: Caller) -> None:
        # Each reply is sent whole first, so there is as much text as possible to line
        # the utterance up with; then interrupts of 60 K characters in bursts of four:
        # at least 100, and on until the victim has measured five turns under attack
        # (however fast or slow this machine runs the two sides).
        rounds = 0
        while rounds < 25 or len(loaded) < 5:
            await caller.say_until(DOGS, expected(DOGS))
            for _ in range(4):
                await caller.ws.send(interrupt_frame(utterance, 3_000))
            rounds += 1

    async def first_token_delay(caller: Caller, prompt: str) -> float:
        started = time.monotonic()
        await caller.ws.send(prompt_frame(prompt))
        await caller.tokens(1)
        took = time.monotonic() - started
        await caller.talk_cycle()
        return took

    async with Caller.dial(lab.ws_url) as attacker, Caller.dial(lab.ws_url) as victim:
        quiet = [await first_token_delay(victim, "Hello") for _ in range(3)]
        stop = threading.Event()
        lag = lab.loop.submit(_loop_lag(stop))
        attacking = asyncio.create_task(attack(attacker))
        while not attacking.done():
            loaded.append(await first_token_delay(victim, "Hello"))
        await attacking
        stop.set()
        worst_lag = lag.result(5)
    assert len(loaded) >= 5
    # Quiet, the first token takes ~20 ms (the stand-in's delay). The bounds leave room
    # for a loaded CI machine and still catch a loop stalled by lining up utterances.
    assert worst_lag < within(0.2), worst_lag
    assert max(loaded) < max(quiet) + within(0.35), (quiet, loaded)


async def test_a_long_call_never_sends_an_oversized_model_request(make_lab, caplog):
    caplog.set_level("INFO", logger="relaylab.relay.session")
    lab = make_lab(first_token_delay=0.0, tokens_per_second=float("inf"))
    sessions = capture_sessions(lab.server)
    cap = Limits().history_chars
    async with Caller.dial(lab.ws_url) as caller:
        for i in range(40):  # 40 x 60 KB spoken: far past the history cap once prompts are cut
            words = f"Question {i}: " + "word " * 12_000
            assert await caller.say(words) == expected(words)
        assert_history_sound(session_of(sessions, caller), caller)
    sizes = [len(json.dumps(r.body)) for r in lab.offline_claude.requests]
    assert max(sizes) > 0.9 * cap  # the cap was reached, so the bound below means something
    # At most the capped history, one new (cut) prompt, the system prompt and JSON framing.
    assert max(sizes) < cap + 10_000, max(sizes)
    assert "dropped the" in caplog.text


# -- callers that stop reading ---------------------------------------------------------------


class DeafCaller:
    """A caller on a blocking socket with a tiny receive buffer that never reads after the
    handshake: Twilio's side gone quiet while the relay keeps talking."""

    def __init__(self, lab) -> None:
        self.call_sid = "CA" + uuid.uuid4().hex
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", lab.server.port))
        self.ws = ClientProtocol(parse_uri(lab.ws_url))
        self.ws.send_request(self.ws.connect())
        self._flush()
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self.sock.recv(1)
        self.ws.receive_data(head)
        self.send(setup_frame(self.call_sid))
        assert wait_until(lambda: lab.server.find(self.call_sid) is not None, 5)

    def _flush(self) -> None:
        for data in self.ws.data_to_send():
            self.sock.sendall(data)

    def send(self, frame: str) -> None:
        self.ws.send_text(frame.encode())
        self._flush()

    def close(self) -> None:
        self.sock.close()


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_caller_that_stops_reading_is_closed_and_its_model_stream_aborted(make_lab, caplog):
    # A reply of 154 tokens at 40 a second to a caller that reads nothing: the socket's
    # buffers hold about 100 of its frames, and half a second after they fill the call is
    # given up, with some 35 tokens still to come (room for a loaded machine's lag).
    limits = SocketLimits(write_buffer_bytes=1024, send_timeout=0.5)
    lab = make_lab(first_token_delay=0.02, tokens_per_second=40.0, socket=limits)
    deaf = DeafCaller(lab)
    try:
        deaf.send(prompt_frame(NINETEEN))
        closed = wait_until(lambda: lab.server.find(deaf.call_sid) is None, 10)
    finally:
        deaf.close()
    assert closed, "the relay kept a caller that reads nothing"
    slow = lab.offline_claude.requests[-1]
    assert slow.body["messages"][-1]["content"] == NINETEEN
    assert wait_until(lambda: slow.outcome == "client_closed", 2), slow.outcome
    assert slow.tokens_sent < slow.tokens_planned, (slow.tokens_sent, slow.tokens_planned)
    assert "the caller has read nothing" in caplog.text
    assert lab.server.sessions == []
    assert lab.run(_hello(lab)) == GREETING


def test_a_caller_that_keeps_talking_but_never_reads_is_closed_too(make_lab, caplog):
    limits = SocketLimits(write_buffer_bytes=1024, send_timeout=0.5)
    lab = make_lab(first_token_delay=0.0, tokens_per_second=float("inf"), socket=limits)
    deaf = DeafCaller(lab)
    try:
        # Each prompt cancels the reply stuck behind the full buffer and starts another:
        # the relay must count from when the caller stopped reading, not from each send.
        for _ in range(60):
            if lab.server.find(deaf.call_sid) is None:
                break
            with contextlib.suppress(OSError):
                deaf.send(prompt_frame(NINETEEN))
            time.sleep(0.1)
        closed = lab.server.find(deaf.call_sid) is None
    finally:
        deaf.close()
    assert closed, "a caller that never reads stayed connected by talking every 0.1 s"
    assert "the caller has read nothing" in caplog.text


# -- memory ------------------------------------------------------------------------------------


def track_replies(lab_server, replies: list[weakref.ref[RelayReply]], calls: list) -> None:
    def on_session(session: CallSession) -> None:
        calls.append(weakref.ref(session))

        def on_event(event) -> None:
            if event.kind == "reply_started":
                replies.append(weakref.ref(event.reply))

        session.subscribe(on_event)

    lab_server.session_listeners.append(on_session)


async def _calls_with_every_ending(ws_url: str) -> None:
    """Calls that finish, are interrupted, barge in, and drop mid-reply."""

    async def finished() -> None:
        async with Caller.dial(ws_url) as caller:
            assert await caller.say("Hello") == GREETING
            assert await caller.say(DOGS) == expected(DOGS)

    async def interrupted() -> None:
        async with Caller.dial(ws_url) as caller:
            await caller.ws.send(prompt_frame(DOGS))
            heard = await caller.tokens(4)
            await caller.ws.send(interrupt_frame(heard))
            await caller.say_until("Hello", GREETING)

    async def barged_in() -> None:
        async with Caller.dial(ws_url) as caller:
            await caller.ws.send(prompt_frame(DOGS))
            await caller.tokens(2)
            await caller.say_until("Hello", GREETING)

    async def dropped() -> None:
        async with Caller.dial(ws_url) as caller:
            await caller.ws.send(prompt_frame(DOGS))
            await caller.tokens(2)
            caller.ws.transport.abort()

    endings = [finished, interrupted, barged_in, dropped]
    await asyncio.gather(*(endings[i % 4]() for i in range(24)))


async def assert_all_freed(refs: Sequence[weakref.ref], what: str, timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        if alive == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{alive} of {len(refs)} {what} still alive after the calls ended")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("aiohttp", [False, True], ids=["httpx", "aiohttp"])
async def test_replies_and_sessions_are_freed_when_calls_end(aiohttp):
    """On the relay alone (a Lab keeps its recent sessions on purpose), with both of the
    SDK's transports: ``relaylab serve`` reads Claude's stream through aiohttp, whose pooled
    connections keep copies of the context they were opened in. Default Limits: the voice
    budget's watchdog must not hold a finished reply for its five seconds either."""
    relay = Relay(
        choose_backend(True),
        step="tracking",
        first_token_delay=0.02,
        tokens_per_second=300.0,
        aiohttp=aiohttp,
        settings=RelaySettings(),
    )
    server = await relay.start()
    replies: list[weakref.ref[RelayReply]] = []
    calls: list[weakref.ref[CallSession]] = []
    track_replies(server, replies, calls)
    try:
        await _calls_with_every_ending(server.ws_url)
        await wait_for(lambda: _empty(server.sessions), "sessions stayed open")
        assert len(replies) >= 40
        await assert_all_freed(replies, "replies")
        await assert_all_freed(calls, "sessions")
    finally:
        await relay.stop()


async def test_a_flood_of_tokens_played_reports_stays_bounded(make_lab):
    lab = make_lab(first_token_delay=0.02, tokens_per_second=100.0)
    sessions = capture_sessions(lab.server)
    async with Caller.dial(lab.ws_url) as caller:
        await caller.ws.send(prompt_frame(DOGS))
        await caller.tokens(3)
        for _ in range(100):  # 6 MB of "played" text for a reply a few hundred bytes long
            await caller.ws.send(info_frame("tokensPlayed", "Dogs " * 12_000))
        await caller.say_until("Hello", GREETING)
        reply = session_of(sessions, caller).replies[0]
        assert len(reply.played) <= len(reply.sent)


# -- what one HTTP client may cost (issue 21) ------------------------------------------------


def _relay_cpu(lab) -> float:
    """CPU seconds the relay's loop thread has used so far."""

    async def now() -> float:
        return time.thread_time()

    return lab.loop.submit(now()).result(5)


def _gzip_bomb(megabytes: int) -> bytes:
    """A gzip body that inflates to ``megabytes`` MB of zeros."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(megabytes)) + packer.flush()


def _post_head(path: str, length: int, extra: str = "", content_type: str | None = None) -> bytes:
    kind = content_type if content_type is not None else "application/x-www-form-urlencoded"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{extra}\r\n"
    ).encode()


async def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection; everything the relay answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.transport.abort()


async def test_a_compressed_body_costs_the_relay_no_inflating(make_lab):
    bomb = _gzip_bomb(100)  # ~100 KB that would inflate to 100 MB
    for options in ({"auth_token": TOKEN}, {}):
        lab = make_lab(**MODEL, **options)
        before = _relay_cpu(lab)
        for signature in ("", "X-Twilio-Signature: forged\r\n"):
            head = _post_head("/twiml", len(bomb), "Content-Encoding: gzip\r\n" + signature)
            answer = await _exchange(lab.server.port, head + bomb)
            status = int(answer.split()[1])
            assert status in (403, 415), answer[:200]
            if signature or not options:
                assert status == 415, answer[:200]
        spent = _relay_cpu(lab) - before
        assert spent < 0.3, spent
        healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        assert (await _exchange(lab.server.port, healthz)).endswith(b"ok\n")


async def test_an_unsigned_post_is_refused_before_its_body_is_read(make_lab):
    lab = make_lab(**MODEL, auth_token=TOKEN)
    # The head alone: the relay answers without waiting for the 60 KB it announced.
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.server.port)
    try:
        writer.write(_post_head("/twiml", 60_000))
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    finally:
        writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 403"), answer


ODD_BODIES = [
    (_post_head("/twiml", 9) + b"CallSid=\xff", 400),
    (_post_head("/action", 11) + b"CallSid=%FF", 400),
    (
        _post_head("/twiml", 5, content_type="application/x-www-form-urlencoded; charset=bogus")
        + b"a=b&c",
        415,
    ),
    (
        _post_head("/twiml", 6, content_type="application/x-www-form-urlencoded; charset=utf-16")
        + "a=b".encode("utf-16-le"),
        415,
    ),
    (_post_head("/twiml", 2, content_type="application/json") + b"{}", 415),
    (_post_head("/twiml", 3, "Expect: teapot\r\n") + b"a=b", 417),
]


async def test_odd_bodies_get_a_4xx_and_no_traceback(make_lab, caplog):
    caplog.set_level("INFO", logger="relaylab")
    lab = make_lab(**MODEL)
    for request, status in ODD_BODIES:
        answer = await _exchange(lab.server.port, request)
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), (request[-40:], answer[:120])
    deep = "SessionStatus=ended&HandoffData=" + "%5B" * 5_000 + "%5D" * 5_000
    answer = await _exchange(lab.server.port, _post_head("/action", len(deep)) + deep.encode())
    assert answer.startswith(b"HTTP/1.1 200") and b"<Hangup" in answer, answer[:300]
    # A client that goes away halfway through its body.
    _reader, writer = await asyncio.open_connection("127.0.0.1", lab.server.port)
    writer.write(_post_head("/twiml", 1_000) + b"CallSid=CA1&")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    await assert_still_serving(lab)


async def test_expect_100_continue_is_answered_before_the_body_is_sent(make_lab):
    lab = make_lab(**MODEL)
    body = b"CallSid=CA1&From=%2B15550100"
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.server.port)
    try:
        writer.write(_post_head("/twiml", len(body), "Expect: 100-continue\r\n"))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        writer.transport.abort()


async def test_idle_and_dribbling_http_connections_are_closed(make_lab, caplog):
    caplog.set_level("INFO", logger="relaylab")
    limits = SocketLimits(keepalive_timeout=1.0, request_body_timeout=1.0)
    lab = make_lab(**MODEL, socket=limits)
    port = lab.server.port
    healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def closed_after(writer_work: Callable[[asyncio.StreamWriter], object]) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dribbler = asyncio.ensure_future(writer_work(writer))  # type: ignore[arg-type]
        try:
            return await asyncio.wait_for(reader.read(), 6)  # EOF: the relay closed it
        finally:
            dribbler.cancel()
            writer.transport.abort()

    async def idle(writer: asyncio.StreamWriter) -> None:
        writer.write(healthz)

    async def dribble(writer: asyncio.StreamWriter, data: bytes) -> None:
        head, _, rest = data.partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")  # the first head whole: only what follows dribbles
        for byte in rest:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    answer = await closed_after(idle)
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1, answer
    second_head = healthz + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    answer = await closed_after(lambda w: dribble(w, second_head))
    assert answer.count(b"HTTP/1.1 200") == 1, answer
    body = _post_head("/twiml", 200) + b"CallSid=CA" + b"1" * 190
    answer = await closed_after(lambda w: dribble(w, body))
    assert answer.startswith(b"HTTP/1.1 408"), answer
    await assert_still_serving(lab)


async def test_the_action_urls_error_code_cannot_forge_a_log_line(make_lab, caplog):
    caplog.set_level("INFO", logger="relaylab")
    lab = make_lab(**MODEL)
    form = "SessionStatus=failed&ErrorCode=%1B%5B31m%0AERROR+forged" + "x" * 20_000
    answer = await _exchange(lab.server.port, _post_head("/action", len(form)) + form.encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("relaylab")]
    logged = [m for m in messages if "ErrorCode" in m]
    assert logged and all("\\x1b[31m\\nERROR" in m and len(m) < 400 for m in logged), logged
    assert [m for m in messages if _unsafe_characters(m)] == []


async def test_unmatched_tokens_played_reports_cost_little_however_long_the_call(make_lab):
    lab = make_lab(first_token_delay=0.0, tokens_per_second=float("inf"))
    sessions = capture_sessions(lab.server)
    async with Caller.dial(lab.ws_url) as attacker, Caller.dial(lab.ws_url) as victim:
        for i in range(300):  # 300 answered prompts, none reported as played
            prompt = HEALTHY_PROMPTS[i % len(HEALTHY_PROMPTS)]
            assert await attacker.say(prompt) == expected(prompt)
        assert await victim.say("Hello") == GREETING
        stop = threading.Event()
        lag = lab.loop.submit(_loop_lag(stop))
        before = _relay_cpu(lab)
        report = info_frame("tokensPlayed", "Zebras quantum marmalade, nothing said here.")
        for _ in range(1_000):
            await attacker.ws.send(report)
        assert await attacker.say("Hello") == GREETING  # every report has been handled
        spent = _relay_cpu(lab) - before
        stop.set()
        worst_lag = lag.result(5)
        assert await victim.say("Hello") == GREETING
    assert len(session_of(sessions, attacker).replies) == 301
    assert spent < 1.0, spent
    assert worst_lag < within(0.3), worst_lag


async def test_a_flood_of_prompts_cut_off_by_the_next_keeps_requests_bounded(make_lab):
    lab = make_lab(first_token_delay=0.02, tokens_per_second=200.0)
    await warm_up(lab, calls=2)
    cap = Limits().history_chars
    words = expected(DOGS).split()
    rng = random.Random(SEED)
    prompts = [" ".join(rng.choices(words, k=800))[:4_000] for _ in range(1_500)]
    async with Caller.dial(lab.ws_url) as attacker, Caller.dial(lab.ws_url) as victim:
        for prompt in prompts:  # each one barges in on the reply to the one before
            await attacker.ws.send(prompt_frame(prompt))
        started = time.monotonic()
        await victim.ws.send(prompt_frame("Hello"))
        await victim.tokens(1, timeout=30)
        first_token = time.monotonic() - started
        await victim.talk_cycle()
        await attacker.say_until("Hello", lab.offline_claude, timeout=60)
    sizes = [len(json.dumps(r.body)) for r in lab.offline_claude.requests]
    assert max(sizes) < 2 * cap, max(sizes)
    assert first_token < within(1.5), first_token


# -- hostile tool calls, from a Messages API fake at the wire level --------------------------


@dataclass
class ToolSpec:
    """One tool_use block the fake streams: its input JSON arrives in ``chunks``."""

    name: str
    id: str
    chunks: Callable[[], Iterable[str]]


class HostileClaude:
    """Claude's Messages API on 127.0.0.1, streaming server-sent events like the real one.
    Each request gets the next scripted round of tool calls; once the script is used up,
    a short answer in words. Records each request body and how many bytes each answer
    got out before the client went away (``cut_short``)."""

    ANSWER = "All done here."

    def __init__(self, script: Sequence[Sequence[ToolSpec]]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        self.sent: list[int] = []
        self.cut_short: list[bool] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HostileClaude:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()  # type: ignore[union-attr]

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        index = len(self.sent)
        self.sent.append(0)
        self.cut_short.append(False)
        tools = self.script.pop(0) if self.script else []

        async def event(kind: str, **data: object) -> None:
            line = f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
            self.sent[index] += len(line)
            await response.write(line)

        message = {
            "id": "msg_hostile",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
        try:
            await event("message_start", message=message)
            if not tools:
                block = {"type": "text", "text": ""}
                await event("content_block_start", index=0, content_block=block)
                delta = {"type": "text_delta", "text": self.ANSWER}
                await event("content_block_delta", index=0, delta=delta)
                await event("content_block_stop", index=0)
            for number, tool in enumerate(tools):
                block = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
                await event("content_block_start", index=number, content_block=block)
                for chunk in tool.chunks():
                    delta = {"type": "input_json_delta", "partial_json": chunk}
                    await event("content_block_delta", index=number, delta=delta)
                await event("content_block_stop", index=number)
            stop = {"stop_reason": "tool_use" if tools else "end_turn", "stop_sequence": None}
            await event("message_delta", delta=stop, usage={"output_tokens": 5})
            await event("message_stop")
        except (ConnectionError, RuntimeError):
            self.cut_short[index] = True
        return response


@contextlib.asynccontextmanager
async def tools_relay(claude: HostileClaude, slow: float = 0.05) -> AsyncIterator[tuple]:
    """A relay running the tools step against ``claude``, on this test's loop."""
    toolbox = demo_toolbox(slow_seconds=slow)
    relay = Relay(
        Backend("custom", claude.base_url, "test-key"),
        step=tools_step(toolbox=toolbox, hold_after=5.0),
        settings=RelaySettings(),
    )
    server = await relay.start()
    try:
        yield server, toolbox
    finally:
        await relay.stop()


def _json(value: object) -> Callable[[], list[str]]:
    return lambda: [json.dumps(value)]


async def test_a_tool_input_that_never_ends_is_cut_off_not_buffered():
    def endless() -> Iterable[str]:
        yield '{"day": "'
        for _ in range(2_000):  # 32 MB of one string
            yield "a" * 16_384
        yield '"}'

    script = [[ToolSpec("opening_hours", "toolu_endless", endless)]]
    async with (
        HostileClaude(script) as claude,
        tools_relay(claude) as (server, _),
        Caller.dial(server.ws_url) as caller,
    ):
        cycle = await caller.say("When are you open?", timeout=20)
        assert cycle.endswith(failures.APOLOGY), cycle
        assert await caller.say("Hello") == HostileClaude.ANSWER
    assert claude.cut_short[0] and claude.sent[0] < 4 * 1024 * 1024, claude.sent


async def test_tool_calls_the_api_would_reject_are_never_stored(caplog):
    caplog.set_level("INFO", logger="relaylab")
    deep = {"day": "Friday", "more": json.loads("[" * 100 + "]" * 100)}
    too_deep = lambda: ['{"day": ' + "[" * 5_000, "]" * 5_000 + "}"]  # noqa: E731
    script = [
        [
            ToolSpec("opening_hours", "toolu_1", _json({"day": "Friday"})),
            ToolSpec("opening_hours", "toolu_1", _json({"day": "Monday"})),  # same id
            ToolSpec("", "toolu_2", _json({"day": "Monday"})),  # no name
            ToolSpec("opening_hours", "toolu_3", too_deep),
            ToolSpec("opening_hours", "toolu_4", _json(deep)),
        ],
        [],  # the answer in words
        [ToolSpec("opening_hours", "toolu_1", _json({"day": "Sunday"}))],  # an id used before
    ]
    async with (
        HostileClaude(script) as claude,
        tools_relay(claude) as (server, _),
        Caller.dial(server.ws_url) as caller,
    ):
        assert await caller.say("When are you open?") == HostileClaude.ANSWER
        assert await caller.say("And on Sunday?") == failures.APOLOGY  # not silence
        assert await caller.say("Thanks") == HostileClaude.ANSWER
    history = claude.requests[-1]["messages"]
    assert Conversation(history).problems() == [], history
    uses = [b for t in history if isinstance(t["content"], list) for b in t["content"]]
    uses = [b for b in uses if b["type"] == "tool_use"]
    assert sorted(u["id"] for u in uses) == ["toolu_1", "toolu_3", "toolu_4"], uses
    assert all(u["name"] == "opening_hours" for u in uses)
    assert [u["input"] for u in uses if u["id"] != "toolu_1"] == [{}, {}]
    assert "Traceback" not in caplog.text
    assert "reuses the tool_use id" in caplog.text and "no name" in caplog.text


async def test_tool_names_and_call_sids_never_forge_a_log_line(caplog):
    caplog.set_level("INFO", logger="relaylab")
    forged = "\nERROR relaylab.steps.tools: forged \x1b[31m\u2028"
    script = [
        [ToolSpec("order" + forged, "toolu_a", lambda: ["{not json" + forged])],
        [],
        [ToolSpec("order_status", "toolu_b", _json({"order_number": "12345"}))],
    ]
    async with (
        HostileClaude(script) as claude,
        tools_relay(claude, slow=5.0) as (server, _),
        connect(server.ws_url) as ws,
    ):
        caller = Caller(ws, "CA" + forged)
        await ws.send(setup_frame(caller.call_sid))
        assert await caller.say("Where is my order?") == HostileClaude.ANSWER
        await ws.send(prompt_frame("Where is order 12345?"))
        await wait_for(lambda: _async(len(claude.requests) >= 3), "no tool ran")
        await ws.send(interrupt_frame("", 100))  # while order_status runs
        await asyncio.sleep(0.3)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("relaylab")]
    assert [m for m in messages if _unsafe_characters(m)] == []
    assert any("order\\nERROR" in m for m in messages)
    assert any("CA\\nERROR" in m and "order_status" in m for m in messages)


async def _async(value: object) -> object:
    return value


async def test_each_caller_has_their_own_bookings():
    booking = {"day": "Friday", "time": "7 pm", "people": 2}
    script = [
        [ToolSpec("book_table", "toolu_a", _json(booking))],
        [],
        [ToolSpec("book_table", "toolu_b", _json(booking))],
        [],
    ]
    async with HostileClaude(script) as claude, tools_relay(claude) as (server, toolbox):
        for _ in range(2):  # two callers ask for the same table, one after the other
            async with Caller.dial(server.ws_url) as caller:
                assert await caller.say("Book a table") == HostileClaude.ANSWER
    results = [
        json.loads(block["content"])
        for record in claude.requests
        for block in record["messages"][-1]["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert [r["reference"] for r in results] == ["T101", "T102"], results
    assert not any(r.get("already_booked") for r in results), "caller B saw A's booking"
    assert len(toolbox.restaurant.bookings) == 2


async def test_many_tool_calls_at_once_are_bounded_in_number_and_input(caplog):
    from relaylab.steps.tools import MAX_TOOL_CALLS

    many = [
        ToolSpec("opening_hours", f"toolu_{n}", _json({"day": "Friday", "pad": "x" * 2_000}))
        for n in range(500)  # 1 MB of input in all, each call well under the limit
    ]
    few = [ToolSpec("opening_hours", f"toolu_f{n}", _json({"day": "Friday"})) for n in range(20)]
    async with (
        HostileClaude([many, few, []]) as claude,
        tools_relay(claude) as (server, _),
        Caller.dial(server.ws_url) as caller,
    ):
        assert (await caller.say("When are you open?")).endswith(failures.APOLOGY)
        assert await caller.say("And on Friday?") == HostileClaude.ANSWER
    assert "tool passed 65536 characters; the request was stopped" in caplog.text
    history = claude.requests[-1]["messages"]
    uses = [b for t in history if isinstance(t["content"], list) for b in t["content"]]
    assert len([b for b in uses if b["type"] == "tool_use"]) == MAX_TOOL_CALLS
    assert caplog.text.count("tool calls at once") == 2  # once a request, not once a call
