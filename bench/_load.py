"""The load generator's side of a call: Twilio's half of ConversationRelay, kept lean.

``TwilioSide`` is an asyncio protocol around websockets' public sans-I/O
``ClientProtocol``: bytes in, events out, no private API. It stamps every inbound frame
with the time.monotonic() at which its bytes were read from the socket, keeps the
frames in arrival order (pongs included, so a ping sent right after an interrupt marks
the point where the relay had the interrupt in hand), and never queues them for a
reader task: the load generator does as little per frame as possible, so its own
delay stays out of the measurement.

The frames it sends are the ones Twilio sends (PROTOCOL.md section 3), built by
relaylab.core.twilio_frames: ``setup`` first, then ``prompt`` (and
``interrupt`` in bench/interrupt.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import percentile
from websockets import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import WebSocketURI, parse_uri

from relaylab.core.twilio_frames import prompt_frame, setup_frame

PONG = None  # marks a pong in TwilioSide.frames
OPEN_TIMEOUT = 20.0
CLOSE_TIMEOUT = 2.0

# -- the load generator's own pauses -------------------------------------------------------


@contextlib.contextmanager
def no_gc_pauses() -> Iterator[None]:
    """Keep Python's garbage collector out of the load generator while it measures.

    A full collection in this process stops it reading for as long as it takes, and every
    frame that arrives meanwhile is stamped late, so the pause shows up as the relay's
    latency: at 50 calls the worst token measured 70-110 ms, all from one pause while the
    calls were starting; with collection paused, 3.4-3.6 ms. A run's garbage is freed
    when the block ends.
    """
    gc.collect()
    gc.freeze()  # what exists now is never scanned again
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


# -- the connection ----------------------------------------------------------------------


def _ends_talk_cycle(data: str) -> bool:
    # A substring test instead of json.loads keeps the per-frame cost tiny; both spellings
    # of JSON separators are accepted so any relay's encoder matches.
    return '"last":true' in data or '"last": true' in data


class TwilioSide(asyncio.Protocol):
    """One caller's WebSocket, recording inbound frames as (arrival time, text or PONG)."""

    def __init__(self, uri: WebSocketURI) -> None:
        loop = asyncio.get_running_loop()
        self.ws = ClientProtocol(uri)
        self.frames: list[tuple[float, str | None]] = []
        self.texts = 0  # text frames received
        self.lasts = 0  # ... of which ended a talk cycle
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        self._want: Callable[[], bool] | None = None
        self._waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        at = time.monotonic()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event, at)
            elif isinstance(event, Response):
                self._on_handshake(event)
        self._flush()
        self._check()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._flush()
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    # what happens to events

    def _on_handshake(self, response: Response) -> None:
        if self.opened.done():
            return
        if self.ws.handshake_exc is not None:
            self.opened.set_exception(
                ConnectionError(f"the relay refused the WebSocket: {self.ws.handshake_exc}")
            )
        else:
            self.opened.set_result(None)

    def _on_frame(self, frame: Frame, at: float) -> None:
        if frame.opcode is Opcode.PONG:
            self.frames.append((at, PONG))
            return
        if frame.opcode is Opcode.TEXT or (frame.opcode is Opcode.CONT and self._fragments):
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments).decode()
                self._fragments.clear()
                self.frames.append((at, data))
                self.texts += 1
                if _ends_talk_cycle(data):
                    self.lasts += 1

    def _flush(self) -> None:
        if self._transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                self._transport.write(data)
            elif self._transport.can_write_eof():
                self._transport.write_eof()  # sans-I/O asks for a half-close

    def _check(self) -> None:
        if self._waiter is not None and not self._waiter.done() and self._want and self._want():
            self._waiter.set_result(None)

    # what the load generator calls

    async def until(self, want: Callable[[], bool], timeout: float) -> None:
        """Wait until ``want()`` holds after a frame arrives; TimeoutError / ConnectionError."""
        if want():
            return
        self._want, self._waiter = want, asyncio.get_running_loop().create_future()
        try:
            done, _ = await asyncio.wait(
                {self._waiter, self.lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._want = None
        if self._waiter in done:
            return
        if self.lost in done:
            raise ConnectionError("the relay closed the call")
        raise TimeoutError(f"no reply within {timeout:.0f} s")

    async def send_frame(self, frame: str) -> float:
        """Send one text frame; return the time.monotonic() just before it was sent."""
        if self.lost.done():
            raise ConnectionError("the relay closed the call")
        at = time.monotonic()
        self.ws.send_text(frame.encode())
        self._flush()
        return at

    def send_ping(self) -> None:
        """Send a WebSocket ping; its pong shows up in ``frames`` as PONG."""
        self.ws.send_ping(os.urandom(4))
        self._flush()

    async def close(self) -> None:
        """Close the WebSocket politely; drop the TCP connection if the relay lingers."""
        if self._transport is None or self.lost.done():
            return
        with contextlib.suppress(InvalidState):  # already closing: wait or drop below
            self.ws.send_close()
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), CLOSE_TIMEOUT)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self._transport is not None:
            self._transport.abort()


async def open_call(ws_url: str) -> TwilioSide:
    """Connect and send ``setup``, as Twilio does."""
    uri = parse_uri(ws_url)
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: TwilioSide(uri), uri.host, uri.port), OPEN_TIMEOUT
    )
    try:
        await asyncio.wait_for(asyncio.shield(conn.opened), OPEN_TIMEOUT)
    except BaseException:
        conn.abort()
        raise
    await conn.send_frame(setup_frame("CA" + uuid.uuid4().hex))
    return conn


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


def texts_since(conn: TwilioSide, start: int) -> list[tuple[float, str, bool]]:
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
            turn = Turn(text, await conn.send_frame(prompt_frame(text)))
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
    """Pair each token the stand-in emitted with the frame that brought its last character
    to the caller. A relay may put several waiting tokens in one frame; each of them then
    counts as arriving with that frame."""
    matched = Matched()
    for result in results:
        for turn in result.turns:
            record = records.get(turn.prompt)
            latencies = _token_latencies(record["emits"], turn.tokens) if record else None
            if latencies is None:
                matched.mismatched_turns += 1
                continue
            matched.latencies_ms += latencies
            matched.tokens += len(latencies)
    return matched


def _token_latencies(
    emits: Sequence[tuple[float, int]], received: Sequence[tuple[float, str]]
) -> list[float] | None:
    """Milliseconds from each emit to the arrival of the frame that completed it; None when
    the caller did not get exactly the emitted text."""
    if sum(size for _, size in emits) != sum(len(text) for _, text in received):
        return None
    latencies, frame, frame_end, emitted_end = [], -1, 0, 0
    for emitted_at, size in emits:
        emitted_end += size
        while frame_end < emitted_end:
            frame += 1
            frame_end += len(received[frame][1])
        latencies.append((received[frame][0] - emitted_at) * 1000)
    return latencies


def summary(values_ms: Sequence[float]) -> tuple[float, float, float]:
    """p50, p99, max."""
    return (
        percentile(values_ms, 50),
        percentile(values_ms, 99),
        max(values_ms, default=float("nan")),
    )
