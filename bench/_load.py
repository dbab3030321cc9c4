"""The load generator's side of a call: Twilio's half of ConversationRelay, kept lean.

``RecordingConnection`` stamps every inbound frame with time.monotonic() the moment the
websockets protocol parses it (inside ``data_received``), keeps the frames in arrival
order (pongs included, so a ping sent right after an interrupt marks the point where
the relay had the interrupt in hand), and never queues them for ``recv()``: the load
generator does as little per frame as possible, so its own delay stays out of the way.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import percentile
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode

PONG = None  # marks a pong in RecordingConnection.frames


class RecordingConnection(ClientConnection):
    """A client connection that records inbound frames with their arrival time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[tuple[float, str | None]] = []
        self.texts = 0  # text frames received
        self.lasts = 0  # ... of which ended a talk cycle
        self._want: Callable[[], bool] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def process_event(self, event: Frame) -> None:  # type: ignore[override]
        if not isinstance(event, Frame):  # the handshake response
            super().process_event(event)
            return
        if event.opcode is Opcode.TEXT:
            data = bytes(event.data).decode()
            self.frames.append((time.monotonic(), data))
            self.texts += 1
            if '"last":true' in data:
                self.lasts += 1
            self._check()
            return
        if event.opcode is Opcode.PONG:
            self.frames.append((time.monotonic(), PONG))
        super().process_event(event)

    def _check(self) -> None:
        if self._waiter is not None and not self._waiter.done() and self._want and self._want():
            self._waiter.set_result(None)

    async def until(self, want: Callable[[], bool], timeout: float) -> None:
        """Wait until ``want()`` holds after a frame arrives; TimeoutError / ConnectionError."""
        if want():
            return
        self._want, self._waiter = want, self.loop.create_future()
        lost = self.connection_lost_waiter
        try:
            done, _ = await asyncio.wait(
                {self._waiter, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._want = None
        if self._waiter in done:
            return
        if lost in done:
            raise ConnectionError("the relay closed the call")
        raise TimeoutError(f"no reply within {timeout:.0f} s")

    async def send_json(self, message: dict[str, Any]) -> float:
        """Send one message; return the time.monotonic() just before it was sent."""
        at = time.monotonic()
        await self.send(json.dumps(message))
        return at


async def open_call(ws_url: str) -> RecordingConnection:
    """Connect and send ``setup``, as Twilio does."""
    conn = await connect(
        ws_url,
        create_connection=RecordingConnection,
        compression=None,
        open_timeout=20,
        ping_interval=None,
        max_queue=None,
    )
    assert isinstance(conn, RecordingConnection)
    await conn.send_json(
        {
            "type": "setup",
            "sessionId": "VX" + uuid.uuid4().hex,
            "callSid": "CA" + uuid.uuid4().hex,
            "parentCallSid": "",
            "accountSid": "AC" + "0" * 32,
            "from": "+15550100",
            "to": "+15550101",
            "forwardedFrom": "",
            "callerName": "",
            "direction": "inbound",
            "callType": "PSTN",
            "callStatus": "RINGING",
            "customParameters": {},
        }
    )
    return conn


def prompt(text: str) -> dict[str, Any]:
    return {"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True}


@dataclass
class Turn:
    """One prompt and the text frames that came back, each (arrival time, token, last)."""

    prompt: str
    sent_at: float
    frames: list[tuple[float, str, bool]] = field(default_factory=list)

    @property
    def tokens(self) -> list[tuple[float, str]]:
        return [(t, token) for t, token, _ in self.frames if token]

    @property
    def first_token_at(self) -> float | None:
        return next((t for t, _ in self.tokens), None)


def texts_since(conn: RecordingConnection, start: int) -> list[tuple[float, str, bool]]:
    """The text frames recorded from index ``start`` on, parsed."""
    out = []
    for at, data in conn.frames[start:]:
        if data is PONG:
            continue
        message = json.loads(data)
        if message.get("type") == "text":
            out.append((at, message.get("token", ""), bool(message.get("last"))))
    return out


@dataclass
class CallResult:
    turns: list[Turn] = field(default_factory=list)
    error: str | None = None


async def conversation(
    ws_url: str, prompts: Sequence[str], *, start_delay: float = 0.0, timeout: float = 30.0
) -> CallResult:
    """One call: setup, then each prompt in turn, waiting for its ``last:true``."""
    result = CallResult()
    await asyncio.sleep(start_delay)
    try:
        conn = await open_call(ws_url)
    except Exception as exc:
        result.error = f"connect: {type(exc).__name__}: {exc}"
        return result
    try:
        for i, text in enumerate(prompts):
            start = len(conn.frames)
            turn = Turn(text, await conn.send_json(prompt(text)))
            await conn.until(lambda i=i: conn.lasts > i, timeout)
            turn.frames = texts_since(conn, start)
            result.turns.append(turn)
    except Exception as exc:
        result.error = f"turn {len(result.turns) + 1}: {type(exc).__name__}: {exc}"
    finally:
        await conn.close()
    return result


async def dump_standin(control_port: int) -> dict[str, dict[str, Any]]:
    """Fetch (and clear) the stand-in's request records, keyed by prompt."""
    reader, writer = await asyncio.open_connection("127.0.0.1", control_port, limit=1 << 26)
    try:
        writer.write(b"dump\n")
        await writer.drain()
        records = json.loads(await reader.readline())
    finally:
        writer.close()
    return {r["prompt"]: r for r in records}


@dataclass
class Matched:
    """Per-token relay latencies (ms) and what did not line up."""

    latencies_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    mismatched_turns: int = 0


def match_tokens(results: Sequence[CallResult], records: dict[str, dict[str, Any]]) -> Matched:
    """Pair the i-th token a turn received with the i-th token the stand-in emitted for it."""
    matched = Matched()
    for result in results:
        for turn in result.turns:
            record = records.get(turn.prompt)
            received = turn.tokens
            if record is None or len(record["emits"]) != len(received):
                matched.mismatched_turns += 1
                continue
            for emitted_at, (arrived_at, _) in zip(record["emits"], received, strict=True):
                matched.latencies_ms.append((arrived_at - emitted_at) * 1000)
            matched.tokens += len(received)
    return matched


def summary(values_ms: Sequence[float]) -> tuple[float, float, float]:
    """p50, p99, max."""
    return (
        percentile(values_ms, 50),
        percentile(values_ms, 99),
        max(values_ms, default=float("nan")),
    )
