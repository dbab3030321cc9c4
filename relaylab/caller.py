"""SimulatedCall: Twilio's side of the ConversationRelay socket, with a speech clock.

It speaks the protocol over a real WebSocket (``setup``, then ``prompt``,
``interrupt``, ``dtmf``), signs the handshake like Twilio when it has an auth token,
and "plays" the tokens it receives at a speaking rate, so it knows what the caller
has heard at any moment and can interrupt exactly like a person talking over the
assistant.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relaylab import signatures
from relaylab.loop import LoopThread
from relaylab.spoken import speak

T = TypeVar("T")

DEFAULT_WORDS_PER_MINUTE = 165.0
SETTLE_TIMEOUT = 2.0  # seconds to wait for the relay to catch up before reading its state
log = logging.getLogger("relaylab.caller")
_WORD = re.compile(r"\S+")
_WAKE: dict[str, Any] = {"type": "_wake"}  # an inbox marker, never sent or received
_TRAILING = ",.;:!?\"')]}"


class SpeechClock:
    """Plays text at a fixed speaking rate as it arrives; says what was heard by when.

    Playback starts when the first word arrives. Each word takes ``60 / wpm`` seconds
    of speech; ``speed`` > 1 runs the clock faster than real time (for tests). A word
    plays once it has fully arrived and the previous word has finished.
    """

    def __init__(self, words_per_minute: float = DEFAULT_WORDS_PER_MINUTE, speed: float = 1.0):
        self.word_ms = 60_000 / words_per_minute  # speech time per word
        self.speed = speed
        self.text = ""
        self._scanned = 0
        self._word_ends: list[int] = []  # character offset after each complete word
        self._starts: list[float] = []  # monotonic time each word starts playing
        self._finishes: list[float] = []  # ... and finishes

    @property
    def word_seconds(self) -> float:
        """Real seconds one word takes to play."""
        return self.word_ms / 1000 / self.speed

    @property
    def words(self) -> int:
        return len(self._word_ends)

    def feed(self, token: str, now: float, *, final: bool = False) -> None:
        """Add received text; a word counts once whitespace (or the end) follows it."""
        self.text += token
        for match in _WORD.finditer(self.text, self._scanned):
            complete = match.end() < len(self.text) or final
            if not complete:
                break
            start = max(now, self._finishes[-1]) if self._finishes else now
            self._word_ends.append(match.end())
            self._starts.append(start)
            self._finishes.append(start + self.word_seconds)
            self._scanned = match.end()

    def heard_words(self, now: float) -> int:
        """How many words have been fully spoken by ``now``."""
        return bisect.bisect_right(self._finishes, now)

    def heard_text(self, words: int) -> str:
        """The first ``words`` words, in the text's own spelling, without trailing punctuation.

        Like ``heard_prefix``: a comma after the last word heard is a pause not yet reached.
        """
        return self.text[: self._word_ends[words - 1]].rstrip(_TRAILING) if words > 0 else ""

    def played_ms(self, now: float) -> float:
        """Speech time played by ``now``, in milliseconds (pauses while waiting for words)."""
        seconds = sum(min(max(now - s, 0.0), self.word_seconds) for s in self._starts)
        return seconds * self.speed * 1000

    def time_of_word(self, words: int) -> float | None:
        """When the ``words``-th word finishes playing, if it has arrived."""
        return self._finishes[words - 1] if 0 < words <= len(self._finishes) else None

    def time_of_ms(self, ms: float) -> float | None:
        """When ``ms`` of speech have played, if the words for it have arrived."""
        index = int(ms // self.word_ms)
        if index >= len(self._starts):
            return None
        return self._starts[index] + (ms - index * self.word_ms) / 1000 / self.speed


@dataclass
class Reply:
    """What the caller got back for one thing they said."""

    prompt: str
    text: str = ""  # every token received, joined
    heard: str = ""  # what the caller heard: all of it, or up to the interrupt
    interrupted: bool = False
    utterance: str = ""  # what the interrupt frame reported as heard
    complete: bool = False  # the talk cycle ended with last:true
    timings: dict[str, float] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.interrupted:
            return self.text
        return f"{self.heard} [interrupted; unheard: {self.text[len(self.heard) :].strip()!r}]"


class SimulatedCall:
    """A phone call as Twilio's ConversationRelay would make it, driven from Python.

    Sync methods (``say``, ``press``, ``hang_up``) are for notebook cells; each has an
    ``_async`` twin for tests and top-level ``await``.
    """

    def __init__(
        self,
        ws_url: str,
        *,
        auth_token: str | None = None,
        signed_url: str | None = None,
        call_sid: str | None = None,
        from_number: str = "+15550100",
        to_number: str = "+15550101",
        custom_parameters: dict[str, str] | None = None,
        words_per_minute: float = DEFAULT_WORDS_PER_MINUTE,
        clock_speed: float = 1.0,
        tts_normalise: bool = False,
        portal: LoopThread | None = None,
        session_lookup: Callable[[str], Any] | None = None,
        on_frame: Callable[[dict[str, Any]], None] | None = None,
        action_url: str | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.auth_token = auth_token
        self.signed_url = signed_url or ws_url  # behind a tunnel Twilio signs the public URL
        self.call_sid = call_sid or "CA" + uuid.uuid4().hex
        self.from_number = from_number
        self.to_number = to_number
        self.custom_parameters = custom_parameters or {}
        self.words_per_minute = words_per_minute
        self.clock_speed = clock_speed
        self.tts_normalise = tts_normalise
        self.replies: list[Reply] = []
        self.received: list[tuple[float, dict[str, Any]]] = []  # every frame in, with its time
        self.sent: list[tuple[float, dict[str, Any]]] = []  # every frame out, with its time
        self.action_url = action_url
        self.handoff_data: str | None = None  # set when the relay ends the session
        self.action_twiml: str | None = None  # what the <Connect action> URL answered
        self.portal = portal
        self._playing: tuple[Reply, SpeechClock, float] | None = None  # the latest reply
        self._session_lookup = session_lookup
        self.frame_listeners: list[Callable[[dict[str, Any]], None]] = (
            [on_frame] if on_frame else []
        )
        self._session: Any = None
        self._socket: ClientConnection | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else "not connected"
        return f"<SimulatedCall {self.call_sid} {state}>"

    @property
    def connected(self) -> bool:
        return self._socket is not None and self._reader is not None and not self._reader.done()

    # -- running on the relay's loop -------------------------------------------------

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.portal is None:
            coro.close()
            raise RuntimeError("this call has no background loop; use the _async methods")
        return self.portal.run(coro, timeout=None)  # say() has its own timeout

    async def _async(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self.portal.arun(coro) if self.portal else await coro

    # -- public API ------------------------------------------------------------------

    def connect(self) -> SimulatedCall:
        return self._sync(self._connect())

    async def connect_async(self) -> SimulatedCall:
        return await self._async(self._connect())

    def say(
        self,
        text: str,
        *,
        interrupt_after_words: int | None = None,
        interrupt_after_ms: float | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        """Say ``text`` and return the reply; optionally talk over it after N words or ms."""
        return self._sync(self._say(text, interrupt_after_words, interrupt_after_ms, timeout))

    async def say_async(
        self,
        text: str,
        *,
        interrupt_after_words: int | None = None,
        interrupt_after_ms: float | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        return await self._async(
            self._say(text, interrupt_after_words, interrupt_after_ms, timeout)
        )

    def interrupt(self) -> Reply | None:
        """Talk over the reply now; None when nothing is playing any more."""
        return self._sync(self._interrupt_now())

    async def interrupt_async(self) -> Reply | None:
        return await self._async(self._interrupt_now())

    def press(self, digit: str) -> None:
        """Press a key on the phone (a ``dtmf`` message)."""
        self._sync(self.send_async({"type": "dtmf", "digit": digit}))

    async def press_async(self, digit: str) -> None:
        await self._async(self.send_async({"type": "dtmf", "digit": digit}))

    def listen(self, seconds: float) -> list[dict[str, Any]]:
        """Wait ``seconds`` and return the frames that arrived meanwhile."""
        return self._sync(self._listen(seconds))

    async def listen_async(self, seconds: float) -> list[dict[str, Any]]:
        return await self._async(self._listen(seconds))

    def hang_up(self) -> None:
        self._sync(self._hang_up())

    async def hang_up_async(self) -> None:
        await self._async(self._hang_up())

    @property
    def conversation(self) -> list[dict[str, str]]:
        """The relay's history for this call, once the relay has caught up with the call.

        Only for calls made with ``lab.call()`` (the relay runs in the same process).
        """
        session = self.session
        if session is None:
            raise RuntimeError("the relay's history is only visible for calls made with lab.call()")
        return session.conversation.snapshot()

    @property
    def session(self) -> Any:
        """The relay's CallSession for this call, after it has handled all we sent."""
        if self.portal is not None and self.portal.running and not self.portal.in_loop_thread():
            return self.portal.run(self._settled_session(), timeout=None)
        return self._find_session()

    def _find_session(self) -> Any:
        if self._session is None and self._session_lookup is not None:
            self._session = self._session_lookup(self.call_sid)
        return self._session

    async def _settled_session(self, timeout: float = SETTLE_TIMEOUT) -> Any:
        """Wait until the relay has handled every frame we sent, and no reply is between
        its last token and its end, so what it remembers is up to date."""
        if self._session_lookup is None:
            return None  # a call to a relay in another process: nothing to wait for
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            session = self._find_session()
            if session is None and not self.connected:
                return None  # the relay dropped the call before it knew who we were
            if session is not None and (session.closed or _caught_up(session, len(self.sent))):
                return session
            await asyncio.sleep(0.005)
        return self._find_session()

    # -- the protocol --------------------------------------------------------------------

    async def send_async(self, message: dict[str, Any] | str | bytes) -> None:
        """Send one frame: a dict as JSON, a str or bytes as it is (for tests of odd input)."""
        if self._socket is None:
            raise RuntimeError("the call is not connected")
        self.sent.append((time.monotonic(), message if isinstance(message, dict) else {}))
        await self._socket.send(json.dumps(message) if isinstance(message, dict) else message)

    async def _connect(self) -> SimulatedCall:
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = signatures.sign(self.auth_token, self.signed_url)
        self._socket = await connect(
            self.ws_url,
            additional_headers=headers,
            compression=None,
            open_timeout=10,
            logger=logging.getLogger("relaylab.websockets"),
        )
        self._inbox = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        await self.send_async(
            {
                "type": "setup",
                "sessionId": "VX" + uuid.uuid4().hex,
                "callSid": self.call_sid,
                "parentCallSid": "",
                "accountSid": "AC" + "0" * 32,
                "from": self.from_number,
                "to": self.to_number,
                "forwardedFrom": "",
                "callerName": "",
                "direction": "inbound",
                "callType": "PSTN",
                "callStatus": "RINGING",
                "customParameters": self.custom_parameters,
            }
        )
        return self

    async def _read(self) -> None:
        assert self._socket is not None
        try:
            async for frame in self._socket:
                message = json.loads(frame)
                self.received.append((time.monotonic(), message))
                for listener in self.frame_listeners:
                    listener(message)
                self._inbox.put_nowait(message)
                if message.get("type") == "end":
                    self.handoff_data = message.get("handoffData", "")
                    await self._socket.close()  # Twilio closes the socket after `end`
        except ConnectionClosed:
            pass
        if self.handoff_data is not None and self.action_url:
            try:
                self.action_twiml = await asyncio.to_thread(self._request_action)
            except OSError as exc:
                log.warning("the <Connect action> URL %s failed: %s", self.action_url, exc)

    def _request_action(self) -> str:
        """Request the <Connect action> URL the way Twilio does after `end`."""
        query = urlencode(
            {"CallSid": self.call_sid, "SessionStatus": "ended", "HandoffData": self.handoff_data}
        )
        url = f"{self.action_url}?{query}"
        signed = url
        if self.signed_url != self.ws_url:  # behind a tunnel Twilio requests the public host
            signed = f"https://{urlsplit(self.signed_url).netloc}{urlsplit(url).path}?{query}"
        request = urllib.request.Request(url)
        if self.auth_token:
            request.add_header("X-Twilio-Signature", signatures.sign(self.auth_token, signed))
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()

    async def _next(self, timeout: float) -> dict[str, Any] | None:
        if self._reader is None or (self._reader.done() and self._inbox.empty()):
            raise ConnectionError("the relay closed the call")
        try:
            return await asyncio.wait_for(self._inbox.get(), max(timeout, 0.0))
        except TimeoutError:
            return None

    async def _listen(self, seconds: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        frames = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await self._next(left)
            except ConnectionError:
                break
            if frame is not None and frame is not _WAKE:
                frames.append(frame)
        return frames

    async def _say(
        self,
        text: str,
        interrupt_after_words: int | None,
        interrupt_after_ms: float | None,
        timeout: float,
    ) -> Reply:
        while not self._inbox.empty():  # late frames of an earlier reply
            self._inbox.get_nowait()
        reply = Reply(prompt=text)
        self.replies.append(reply)
        clock = SpeechClock(self.words_per_minute, self.clock_speed)
        await self.send_async(
            {"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True}
        )
        sent_at = time.monotonic()
        self._playing = (reply, clock, sent_at)
        deadline = sent_at + timeout
        wants_interrupt = interrupt_after_words is not None or interrupt_after_ms is not None

        def interrupt_time() -> float | None:
            if interrupt_after_words is not None:
                return clock.time_of_word(interrupt_after_words)
            if interrupt_after_ms is not None:
                return clock.time_of_ms(interrupt_after_ms)
            return None

        while not reply.interrupted:  # interrupt_async() may end it from another task
            now = time.monotonic()
            at = interrupt_time() if wants_interrupt else None
            if at is not None and now >= at:
                await self._interrupt(reply, clock, now, sent_at)
                break
            if reply.complete:
                if at is None:
                    break  # the reply ended before the interrupt point: nothing to talk over
                await asyncio.sleep(at - now)
                continue
            if now >= deadline:
                raise TimeoutError(f"no complete reply to {text!r} within {timeout} seconds")
            frame = await self._next(min(deadline, at or deadline) - now)
            if frame is None or frame is _WAKE:
                continue
            reply.frames.append(frame)
            if frame.get("type") == "end":
                reply.complete = True
            if frame.get("type") != "text":
                continue
            token, last = frame.get("token", ""), bool(frame.get("last"))
            arrived = time.monotonic()
            if token and "first_token_ms" not in reply.timings:
                reply.timings["first_token_ms"] = (arrived - sent_at) * 1000
            clock.feed(token, arrived, final=last)
            reply.text += token
            if last:
                reply.complete = True
                reply.timings["last_token_ms"] = (arrived - sent_at) * 1000
        if not reply.interrupted:
            reply.heard = reply.text.strip()
        self._find_session()  # keep hold of it: the relay forgets it once the call ends
        return reply

    async def _interrupt_now(self) -> Reply | None:
        if self._playing is None:
            return None
        reply, clock, sent_at = self._playing
        now = time.monotonic()
        if reply.interrupted or (reply.complete and clock.heard_words(now) >= clock.words):
            return None  # already interrupted, or the caller has heard all of it
        await self._interrupt(reply, clock, now, sent_at)
        self._inbox.put_nowait(_WAKE)  # let a say() waiting for frames see it at once
        return reply

    async def _interrupt(
        self, reply: Reply, clock: SpeechClock, now: float, sent_at: float
    ) -> None:
        words = clock.heard_words(now)
        reply.heard = clock.heard_text(words)
        reply.utterance = speak(reply.heard) if self.tts_normalise else reply.heard
        reply.interrupted = True
        played_ms = round(clock.played_ms(now))
        reply.timings["interrupt_ms"] = (now - sent_at) * 1000
        reply.timings["heard_ms"] = played_ms
        await self.send_async(
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": reply.utterance,
                "durationUntilInterruptMs": played_ms,
            }
        )

    async def _hang_up(self) -> None:
        await self._settled_session()  # keep hold of the session: the relay forgets it
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            await self._reader


def _caught_up(session: Any, frames_sent: int) -> bool:
    return session.frames_handled >= frames_sent and not any(
        r.state == "running" and r.last_token_at is not None for r in session.replies
    )
