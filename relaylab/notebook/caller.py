"""SimulatedCall: Twilio's side of a ConversationRelay call, driven from Python.

It is a pure client of the relay: everything it knows comes over the wire, as it would
for Twilio. It can dial like Twilio (request the voice webhook, read the TwiML, open the
socket it names), speaks ``setup``, ``prompt``, ``interrupt`` and ``dtmf``, "plays" the
relay's ``text`` through a speech clock so it knows what the caller has heard at any
moment, and acts on ``play``, ``sendDigits``, ``language``, ``config``, ``hints`` and
``end`` (then requests the ``<Connect action>`` URL). Messages Twilio would reject get an
``error`` frame (64107) and the call goes on (closing with 1007 after ten in a row is a
selectable reading, ``malformed_close``). Which of Twilio's behaviours it shows is a
``TwilioBehaviour`` (see ``relaylab.simulation.twilio_behaviour``). ``drop`` and
``reconnect`` model ``applicationReconnect``: the socket goes without a close frame, what
the caller does meanwhile is buffered (up to 500 events), and the same URL is opened
again, with or without a new ``setup`` (Twilio's docs leave that open), before the
buffered events are replayed in order.

The one question about the relay's side, "what history did you store for this call?",
goes through a ``RelayProbe`` (relaylab.notebook.relay_probe) that whoever runs the relay
(the Lab) hands in.

Frames the call sends, in order, when asked for: ``clientSpeaking`` on, partial
prompts, ``clientSpeaking`` off, then the prompt; on an interrupt, ``clientSpeaking``
on, ``tokensPlayed`` for the part of the chunk played, ``agentSpeaking`` off, the
``interrupt``, ``clientSpeaking`` off. A new ``say`` while the last reply is still
playing counts that reply as heard in full (the caller waited for it to end).

This module is the I/O shell: the socket, the webhooks, the reader task, the sync and
async methods, and sending. How Twilio plays talk cycles (waiting, preemption, what may
interrupt, what was heard) is ``relaylab.simulation.talk_cycles``; when the caller cuts
in and what becomes of input made over the agent is ``relaylab.simulation.cut_in``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from relaylab.core import log_lines, twilio_frames
from relaylab.notebook.loop import LoopThread
from relaylab.notebook.relay_probe import RelayProbe
from relaylab.shell import signatures
from relaylab.simulation import twilio_http
from relaylab.simulation.cut_in import CutIn, check_keys, input_fate
from relaylab.simulation.speech_clock import DEFAULT_WORDS_PER_MINUTE, SpeechClock
from relaylab.simulation.talk_cycles import CutOff, Reply, TalkCycle, TalkCycles
from relaylab.simulation.twilio_behaviour import (
    APP_CLOSED_ERROR,
    APP_UNREACHABLE_ERROR,
    INVALID_MESSAGE_ERROR,
    INVALID_VOICE_ERROR,
    MALFORMED_CLOSE_CODE,
    VOICE_SETTINGS,
    InputKind,
    InvalidOutbound,
    PlaybackReporter,
    RelayTwiml,
    TwilioBehaviour,
    client_speaking,
    config_settings,
    final_prompt_delay_ms,
    invalid_message_description,
    is_backchannel,
    partial_prompts,
    read_outbound,
    read_setting,
    read_twiml,
    speech_interrupts,
    transcribe,
    voice_problem,
    with_settings,
)
from relaylab.simulation.twilio_http import WebhookExchange

__all__ = [
    "DEFAULT_WORDS_PER_MINUTE",
    "RelayProbe",
    "Reply",
    "SimulatedCall",
    "SpeechClock",
    "TwilioBehaviour",
]

T = TypeVar("T")

log = logging.getLogger("relaylab.notebook.caller")
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_APPLICATION_SID = "AP" + "0" * 32  # the TwiML App the number points at
_HTTP_ERRORS = (OSError, TimeoutError)
RECONNECT_BUFFER = 500  # events Twilio keeps for a reconnect (PROTOCOL.md section 3)
# Closes after which Twilio reconnects (our reading): none (a drop), going away, an
# internal error, a restart, try again later.
_RECONNECT_CLOSE_CODES = {None, 1001, 1006, 1011, 1012, 1013}


class SimulatedCall:
    """A phone call as Twilio's ConversationRelay would make it, driven from Python.

    Give ``ws_url`` to open the relay's socket directly, or ``twiml_url`` to dial like
    Twilio: request the voice webhook (signed, POST by default), read the
    ``<ConversationRelay>`` url, ``debug``/``events``, ``dtmfDetection``, languages,
    ``<Parameter>`` children and ``<Connect action>``, then open that socket. With
    ``public_url`` (a tunnel's address) requests go to the local address but are signed
    over the public one, as the relay sees Twilio's. ``twilio`` picks Twilio's behaviours.

    Sync methods (``say``, ``press``, ``hang_up``...) are for notebook cells and need
    ``loop_thread`` (the Lab's loop); each has an ``_async`` twin for tests and ``await``.
    """

    def __init__(
        self,
        ws_url: str | None = None,
        *,
        twiml_url: str | None = None,
        public_url: str | None = None,
        auth_token: str | None = None,
        signed_url: str | None = None,
        call_sid: str | None = None,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        application_sid: str | None = DEFAULT_APPLICATION_SID,
        from_number: str = "+15550100",
        to_number: str = "+15550101",
        custom_parameters: dict[str, str] | None = None,
        words_per_minute: float = DEFAULT_WORDS_PER_MINUTE,
        clock_speed: float = 1.0,
        twilio: TwilioBehaviour | None = None,
        tts_normalise: bool | None = None,
        loop_thread: LoopThread | None = None,
        relay_probe: RelayProbe | None = None,
        on_frame: Callable[[dict[str, Any]], None] | None = None,
        action_url: str | None = None,
        application_reconnect: bool = False,
    ) -> None:
        if ws_url is None and twiml_url is None:
            raise ValueError(
                "give ws_url (open the relay's socket directly) or twiml_url (dial: "
                "request the TwiML first, as Twilio does)"
            )
        behaviour = twilio or TwilioBehaviour()
        if tts_normalise is not None:  # the older spelling of twilio.tts_normalise
            behaviour = replace(behaviour, tts_normalise=tts_normalise)
        self.twilio = behaviour
        self.ws_url = ws_url
        self.twiml_url = twiml_url
        self.public_url = public_url or _origin(signed_url)
        self.auth_token = auth_token
        self.signed_url = signed_url  # the exact URL to sign the handshake over, if given
        self.call_sid = call_sid or "CA" + uuid.uuid4().hex
        self.session_id = "VX" + uuid.uuid4().hex
        self.account_sid = account_sid
        self.application_sid = application_sid
        self.from_number = from_number
        self.to_number = to_number
        self.custom_parameters = dict(custom_parameters or {})
        self.words_per_minute = words_per_minute
        self.clock_speed = clock_speed
        self.loop_thread = loop_thread
        self.relay_probe = relay_probe
        self.action_url = action_url
        self.frame_listeners: list[Callable[[dict[str, Any]], None]] = (
            [on_frame] if on_frame else []
        )
        self._talk = TalkCycles(self._new_clock)  # the talk cycles, as Twilio plays them
        # What happened on the call, for tests, widgets and timelines (and self.replies).
        self.greeting: Reply | None = None  # the welcome greeting Twilio spoke itself
        self.received: list[tuple[float, dict[str, Any]]] = []  # valid frames in, with time
        self.sent: list[tuple[float, dict[str, Any]]] = []  # every frame out, with its time
        self.invalid: list[tuple[float, str | bytes, str]] = []  # dropped frames: time, frame, why
        self.webhooks: list[WebhookExchange] = []  # the voice webhook and action requests
        self.twiml: RelayTwiml | None = None  # what the voice webhook answered, when dialled
        self.dtmf_detection = behaviour.dtmf_detection  # keys reach the relay (dtmfDetection)
        self.tts_language = "en-US"
        self.transcription_language = "en-US"  # prompts carry it as `lang`
        self.voice: dict[str, str] = {}  # ttsProvider, voice, transcriptionProvider, speechModel
        self.hints: list[str] = []  # words the transcriber expects (TwiML, hints, config)
        self.settings_changed: list[dict[str, Any]] = []  # each config/hints applied, in order
        self.played: list[str] = []  # audio sources the relay asked Twilio to play
        self.digits_played: list[str] = []  # digits the relay asked Twilio to send
        self.handoff_data: str | None = None  # set when the relay ends the session
        self.session_status: str | None = None  # ended | completed | failed, once over
        self.action_twiml: str | None = None  # what the <Connect action> URL answered
        self.close_code: int | None = None
        self.connected_at: float | None = None
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._player: asyncio.Task[None] | None = None
        self._held: list[tuple[InputKind, str]] = []  # input held until the agent stops
        self._held_task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._changed = asyncio.Event()  # a frame arrived or the call changed
        self._playback_changed = asyncio.Event()
        self._frames_lock = asyncio.Lock()  # keeps a group of info frames together
        self._held_lock = asyncio.Lock()  # held input goes out once, in order
        self._malformed = 0  # invalid messages in a row
        self._hung_up = False
        self._error_code: int | None = None  # Twilio's error when it failed the session
        # Twilio's applicationReconnect (also read from a dialled call's TwiML): a socket
        # the relay's side drops or closes as going away leaves the call up for reconnect().
        self.application_reconnect = application_reconnect
        self._dropped = False  # the socket dropped and no reconnect has opened yet
        self._buffered: list[str | bytes] = []  # events made while the socket was down
        self.reconnects = 0

    def __repr__(self) -> str:
        state = "connected" if self.connected else "not connected"
        return f"<SimulatedCall {self.call_sid} {state}>"

    @property
    def connected(self) -> bool:
        return self._socket is not None and self._reader is not None and not self._reader.done()

    @property
    def dropped(self) -> bool:
        """The socket dropped and the call waits for ``reconnect``."""
        return self._dropped

    def _relay_went_away(self) -> bool:
        """With applicationReconnect: did the socket go in a way Twilio reconnects after
        (no close frame, or the relay closing as going away or restarting)?"""
        if not self.application_reconnect or self._hung_up or self.handoff_data is not None:
            return False
        return self._error_code is None and self.close_code in _RECONNECT_CLOSE_CODES

    @property
    def replies(self) -> list[Reply]:
        """Every reply of the call in order, unprompted ones included (not the greeting)."""
        return self._talk.replies

    @replies.setter
    def replies(self, replies: list[Reply]) -> None:
        self._talk.replies = replies

    @property
    def agent_speaking(self) -> bool:
        """Is Claude's speech still playing to the caller (or waiting its turn to play)?"""
        return self._talk.agent_busy(time.monotonic())

    def _new_clock(self) -> SpeechClock:
        return SpeechClock(self.words_per_minute, self.clock_speed, chunking=self.twilio.chunking)

    # -- running on the relay's loop -------------------------------------------------

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop_thread is None:
            coro.close()
            raise RuntimeError("this call has no background loop; use the _async methods")
        return self.loop_thread.run(coro, timeout=None)  # say() has its own timeout

    async def _async(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self.loop_thread.arun(coro) if self.loop_thread else await coro

    # -- public API ------------------------------------------------------------------

    def connect(self) -> SimulatedCall:
        """Dial (with ``twiml_url``) or open the socket, then send ``setup``."""
        return self._sync(self._connect())

    async def connect_async(self) -> SimulatedCall:
        return await self._async(self._connect())

    def say(
        self,
        text: str,
        *,
        interrupt_after_words: int | None = None,
        interrupt_after_ms: float | None = None,
        talk_over: str | None = None,
        press: str | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        """Say ``text`` and return the reply; optionally cut in after N words or ms.

        Cutting in is talking over the reply (saying ``talk_over``, if given) or pressing
        the ``press`` keys over it. It interrupts the reply when Twilio lets that input
        interrupt (then ``talk_over`` or the keys follow the interrupt); otherwise the
        reply plays on (``Reply.talked_over``) and the input is reported or dropped as
        ``reportInputDuringAgentSpeech`` says. ``say`` returns at the cut-in; use
        ``wait_for_reply`` for what follows.
        """
        cut_in = CutIn(interrupt_after_words, interrupt_after_ms, talk_over, press)
        return self._sync(self._say(text, cut_in, timeout))

    async def say_async(
        self,
        text: str,
        *,
        interrupt_after_words: int | None = None,
        interrupt_after_ms: float | None = None,
        talk_over: str | None = None,
        press: str | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        cut_in = CutIn(interrupt_after_words, interrupt_after_ms, talk_over, press)
        return await self._async(self._say(text, cut_in, timeout))

    def interrupt(self, *, talk_over: str | None = None, press: str | None = None) -> Reply | None:
        """Talk over (or press keys over) whatever plays now, the welcome greeting included;
        the reply talked over, or None when nothing is playing any more."""
        return self._sync(self._cut_in_now(CutIn(talk_over=talk_over, press=press)))

    async def interrupt_async(
        self, *, talk_over: str | None = None, press: str | None = None
    ) -> Reply | None:
        return await self._async(self._cut_in_now(CutIn(talk_over=talk_over, press=press)))

    def wait_for_reply(self, timeout: float = 60.0) -> Reply | None:
        """Wait until input held during agent speech is sent and the latest reply is over
        (complete, interrupted or cut off); return it (None if there is none)."""
        return self._sync(self._wait_for_reply(timeout))

    async def wait_for_reply_async(self, timeout: float = 60.0) -> Reply | None:
        return await self._async(self._wait_for_reply(timeout))

    def press(self, digits: str) -> None:
        """Press keys on the phone (one ``dtmf`` message each: 0-9, * and #)."""
        self._sync(self._press(digits))

    async def press_async(self, digits: str) -> None:
        await self._async(self._press(digits))

    def listen(self, seconds: float) -> list[dict[str, Any]]:
        """Wait ``seconds`` and return the frames that arrived meanwhile."""
        return self._sync(self._listen(seconds))

    async def listen_async(self, seconds: float) -> list[dict[str, Any]]:
        return await self._async(self._listen(seconds))

    async def next_frame_async(self, timeout: float) -> dict[str, Any] | None:
        """The next frame not yet taken by ``say`` or ``listen``; None after ``timeout``
        seconds; ConnectionError once the call is closed and nothing is left."""
        return await self._async(self._next(timeout))

    def hang_up(self) -> None:
        """The caller hangs up: close the socket (then Twilio requests the action URL)."""
        self._sync(self._hang_up())

    async def hang_up_async(self) -> None:
        await self._async(self._hang_up())

    def drop(self) -> None:
        """The socket drops (a network blip, the relay restarting) with no close frame.
        The call stays up, as with Twilio's ``applicationReconnect``: frames sent until
        ``reconnect`` are buffered, then replayed in order."""
        self._sync(self._drop())

    async def drop_async(self) -> None:
        await self._async(self._drop())

    def reconnect(self, *, setup: bool = True) -> SimulatedCall:
        """Open the call's socket URL again after ``drop``: with a new ``setup`` first
        (``setup=True``) or straight on with the buffered events (both readings of
        Twilio's docs), then the events buffered meanwhile, in order."""
        return self._sync(self._reconnect(setup))

    async def reconnect_async(self, *, setup: bool = True) -> SimulatedCall:
        return await self._async(self._reconnect(setup))

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """The relay's history for this call, once it has handled every frame sent so far.

        Asked of the ``relay_probe`` (``lab.call()`` passes one). In a coroutine, use
        ``await call.history_async()`` instead.
        """
        self._require_probe()
        if self.loop_thread is not None and self.loop_thread.running:
            return self.loop_thread.run(self._history(), timeout=None)
        if self.loop_thread is not None and self.loop_thread.in_loop_thread():
            raise RuntimeError("use await call.history_async() on the relay's own loop")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # no loop to borrow: a fresh one
            return pool.submit(asyncio.run, self._history()).result()

    async def history_async(self) -> list[dict[str, Any]]:
        """``conversation`` for async code."""
        self._require_probe()
        return await self._async(self._history())

    def _require_probe(self) -> RelayProbe:
        if self.relay_probe is None:
            raise RuntimeError(
                "this call cannot see the relay's history: a SimulatedCall only speaks the "
                "wire, and the history lives in the relay. Make the call with lab.call(), "
                "or pass relay_probe=<a RelayProbe> when you create it"
            )
        return self.relay_probe

    async def _history(self) -> list[dict[str, Any]]:
        history = await self._require_probe().history(len(self.sent))
        if history is None:
            raise LookupError(
                f"the relay has no history for call {self.call_sid}: it never got this "
                "call's setup, or it has forgotten the call"
            )
        return history

    # -- sending ---------------------------------------------------------------------

    async def send_async(self, message: dict[str, Any] | str | bytes) -> None:
        """Send one frame: a dict as JSON, a str or bytes as it is (for tests of odd input)."""
        frame = json.dumps(message) if isinstance(message, dict) else message
        await self._async(self._send(frame))

    async def _send(self, frame: str | bytes) -> None:
        if self._socket is None:
            raise RuntimeError("the call is not connected")
        self.sent.append((time.monotonic(), _as_message(frame)))
        if self._dropped:  # Twilio keeps the events for the reconnect
            self._buffered.append(frame)
            if len(self._buffered) > RECONNECT_BUFFER:
                del self._buffered[0]
                log.warning(
                    "more than %d events while the socket was down: the oldest is lost",
                    RECONNECT_BUFFER,
                )
            return
        await self._socket.send(frame)

    async def _send_all(self, frames: list[str]) -> None:
        for frame in frames:
            await self._send(frame)

    def _require_connected(self) -> None:
        if not self.connected:
            state = "was never connected" if self._socket is None else "is over"
            raise ConnectionError(f"call {self.call_sid} {state}: make a new call")

    # -- dialling and connecting -----------------------------------------------------

    async def _connect(self) -> SimulatedCall:
        if self._socket is not None:
            raise RuntimeError("this call was already connected; make a new SimulatedCall")
        self._inbox = asyncio.Queue()
        self._changed, self._playback_changed = asyncio.Event(), asyncio.Event()
        self._frames_lock, self._held_lock = asyncio.Lock(), asyncio.Lock()
        if self.twiml_url:
            await self._dial(self.twiml_url)
        await self._open_socket()
        await self._send(self._setup_frame())
        self._play_greeting()
        return self

    async def _open_socket(self) -> None:
        """Open the socket the TwiML named (signed, as Twilio signs each handshake)."""
        assert self.ws_url is not None
        headers = {}
        if self.auth_token:
            signed = self.signed_url or twilio_http.public_form(self.ws_url, self.public_url)
            headers[signatures.SIGNATURE_HEADER] = signatures.sign(self.auth_token, signed)
        try:
            socket = await connect(
                twilio_http.local_form(self.ws_url, self.public_url, self._local_origin()),
                additional_headers=headers,
                compression=None,
                open_timeout=10,
                logger=logging.getLogger("relaylab.websockets"),
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            await self._fail_before_session(
                APP_UNREACHABLE_ERROR, f"could not open the relay's socket {self.ws_url}: {exc}"
            )
        self._socket = socket
        self.connected_at = self.connected_at or time.monotonic()
        if self.twilio.info_frames:
            if self._talk.reporter is None:
                self._talk.reporter = PlaybackReporter(
                    speaker_events=self.twilio.speaker_events,
                    tokens_played=self.twilio.tokens_played,
                )
            self._player = asyncio.create_task(self._report_playback())
        self._reader = asyncio.create_task(self._read())

    def _setup_frame(self) -> str:
        return twilio_frames.setup_frame(
            self.call_sid,
            session_id=self.session_id,
            account_sid=self.account_sid,
            from_number=self.from_number,
            to_number=self.to_number,
            custom_parameters=self.custom_parameters,
        )

    # -- drops and reconnects (applicationReconnect) ------------------------------------

    async def _drop(self) -> None:
        """The socket goes without a close frame; the call stays up, and what the caller
        does meanwhile is buffered (up to RECONNECT_BUFFER events) for the reconnect."""
        self._require_connected()
        self._dropped = True
        socket = self._socket
        assert socket is not None and self._reader is not None
        socket.transport.abort()
        await self._reader

    async def _reconnect(self, setup: bool) -> SimulatedCall:
        """Open the same socket URL again; send ``setup`` again if ``setup`` (whether
        Twilio does is unconfirmed: PROTOCOL.md section 3), then the buffered events."""
        if not self._dropped:
            raise RuntimeError("reconnect() follows drop(): this call's socket did not drop")
        await self._open_socket()
        self._dropped = False
        self.reconnects += 1
        if setup:
            await self._send(self._setup_frame())
        buffered, self._buffered = self._buffered, []
        socket = self._socket
        assert socket is not None  # _open_socket() opened it (or raised)
        for frame in buffered:
            await socket.send(frame)  # already in self.sent
        return self

    async def _fail_before_session(self, code: int, why: str) -> NoReturn:
        """Twilio fails the call before the session starts (error ``code``): the action URL
        hears ``SessionStatus=failed``, and the caller of connect() a ConnectionError."""
        self._error_code = code
        log.warning("Twilio fails the call (error %d): %s", code, why)
        await self._after_session()
        raise ConnectionError(f"Twilio would fail this call with error {code}: {why}")

    def _play_greeting(self) -> None:
        """Twilio speaks the welcome greeting itself as the session starts; the relay never
        sees it. It is not reported in info frames (whether Twilio does is unconfirmed)."""
        text = self.twilio.welcome_greeting
        if text.strip():
            self.greeting = self._talk.greet(text, time.monotonic())

    async def _dial(self, twiml_url: str) -> None:
        """Request the voice webhook like Twilio and take the call's settings from the TwiML."""
        params = twilio_http.voice_webhook_params(
            self.call_sid, self.account_sid, self.from_number, self.to_number
        )
        try:
            exchange = await self._webhook(twiml_url, params, self.twilio.webhook_method)
        except _HTTP_ERRORS as exc:
            raise ConnectionError(f"could not reach the voice webhook {twiml_url}: {exc}") from exc
        if exchange.status != 200:
            raise ConnectionError(
                f"the voice webhook {twiml_url} answered HTTP {exchange.status} "
                f"({exchange.body[:200]!r}); Twilio would report error 11200 and the caller "
                "would hear an application error"
            )
        relay = read_twiml(exchange.body, twilio_http.public_form(twiml_url, self.public_url))
        self.twiml = relay
        if problem := relay.voice_problem():
            self.action_url = relay.action_url or self.action_url
            await self._fail_before_session(INVALID_VOICE_ERROR, problem)
        self.ws_url = relay.url
        self.action_url = relay.action_url or self.action_url
        self.custom_parameters = {**self.custom_parameters, **relay.parameters}
        self.twilio = self.twilio.with_twiml(relay)
        self.tts_language = relay.language("tts")
        self.transcription_language = relay.language("transcription")
        self.voice = {k: relay.attributes[k] for k in VOICE_SETTINGS if k in relay.attributes}
        if "hints" in relay.attributes:
            self.hints = read_setting("hints", relay.attributes["hints"])
        self.dtmf_detection = self.twilio.dtmf_detection
        self.application_reconnect = self.application_reconnect or relay.flag(
            "applicationReconnect"
        )

    async def _webhook(
        self, url: str, params: dict[str, str], method: twilio_http.HttpMethod
    ) -> WebhookExchange:
        exchange = await twilio_http.request(
            twilio_http.local_form(url, self.public_url, self._local_origin()),
            params,
            method=method,
            auth_token=self.auth_token,
            public_url=self.public_url,
        )
        self.webhooks.append(exchange)
        return exchange

    def _local_origin(self) -> str | None:
        """scheme://host:port where this call reaches the relay locally."""
        return _origin(self.twiml_url or self.ws_url)

    # -- receiving: what Twilio does with each message -------------------------------

    async def _read(self) -> None:
        socket = self._socket
        assert socket is not None
        try:
            async for frame in socket:
                await self._receive(frame, time.monotonic())
        except ConnectionClosed:
            pass
        finally:
            self.close_code = socket.close_code
            if self._relay_went_away():
                self._dropped = True
            self._changed.set()
            for task in (self._player, self._held_task):
                if task is not None:
                    task.cancel()
        if not self._dropped:  # a dropped socket is not the end of the session
            await self._after_session()

    async def _receive(self, frame: str | bytes, now: float) -> None:
        try:
            message = read_outbound(frame)
        except InvalidOutbound as exc:
            await self._reject(frame, str(exc), now)
            return
        self._malformed = 0
        self.received.append((now, message))
        self._notify(message)
        self._inbox.put_nowait(message)
        kind = message["type"]
        target, cut_off = self._talk.take(message, now, self.twilio)
        if cut_off is not None:
            await self._send_cut_off(cut_off)
        if kind == "text" and target is not None:
            self._talk.on_text(message, now, target)
        elif kind == "play":
            self.played.append(message["source"])
            if target is not None:
                self._talk.on_play(message, now, target, self.twilio.play_ms)
        elif kind == "sendDigits":
            self.digits_played.append(message["digits"])
        elif kind == "language":
            await self._configure(message, answer=False)
        elif kind == "config":
            await self._configure(config_settings(message), answer=True)
        elif kind == "hints":
            await self._configure({"hints": read_setting("hints", message["hints"])}, answer=True)
        elif kind == "end":
            await self._on_end(message, target)
        self._changed.set()
        self._playback_changed.set()

    async def _configure(self, settings: dict[str, Any], *, answer: bool) -> None:
        """Apply new session settings (``config``, ``hints`` or ``language``), then answer
        ``configUpdated`` when asked to. A language, voice and provider that do not go
        together are refused whole with error 64106, and the old ones stay."""
        general = settings.get("language")
        tts = settings.get("ttsLanguage", general or self.tts_language)
        voice = {k: settings[k] for k in VOICE_SETTINGS if k in settings}
        combined = {**self.voice, **voice}
        problem = voice_problem(tts, combined.get("ttsProvider"), combined.get("voice"))
        if problem:
            log.warning("Twilio refuses the voice (error %d): %s", INVALID_VOICE_ERROR, problem)
            await self._send(twilio_frames.error_frame(f"Error {INVALID_VOICE_ERROR}: {problem}"))
            return
        self.tts_language = tts
        self.transcription_language = settings.get(
            "transcriptionLanguage", general or self.transcription_language
        )
        self.voice = combined
        self.hints = settings.get("hints", self.hints)
        if "dtmfDetection" in settings:
            self.dtmf_detection = settings["dtmfDetection"]
        self.twilio = with_settings(self.twilio, settings)
        if answer:
            applied = {k: ",".join(v) if k == "hints" else v for k, v in settings.items()}
            self.settings_changed.append(applied)
            await self._send(twilio_frames.config_updated_frame(applied))

    def _notify(self, message: dict[str, Any]) -> None:
        for listener in self.frame_listeners:
            try:
                listener(message)
            except Exception:  # a broken listener must not end the call
                log.exception("a frame listener of call %s failed", self.call_sid)

    async def _send_cut_off(self, cut_off: CutOff) -> None:
        """The next talk cycle cut off the ones before it: a waiting say() sees it at once,
        and the info frames about what played of them go out."""
        self._changed.set()
        async with self._frames_lock:
            await self._send_all(cut_off.frames)

    async def _on_end(self, message: dict[str, Any], target: TalkCycle | None) -> None:
        self.handoff_data = message.get("handoffData", "")
        if target is not None:
            target.reply.complete = target.closed = True
        assert self._socket is not None
        await self._socket.close()  # Twilio closes the socket after `end`

    async def _reject(self, frame: str | bytes, problem: str, now: float) -> None:
        """Drop an invalid message like Twilio (error 64107): an error frame, the call goes
        on; with ``malformed_close``, ``malformed_limit`` in a row close the socket (1007)."""
        self.invalid.append((now, frame, problem))
        self._malformed += 1
        log.warning(
            "Twilio would drop this message from the relay (error %d) and send an error frame: %s",
            INVALID_MESSAGE_ERROR,
            problem,
        )
        await self._send(twilio_frames.error_frame(invalid_message_description(problem)))
        limit = self.twilio.malformed_limit
        if self.twilio.malformed_close and self._malformed >= limit and self._socket is not None:
            self._error_code = INVALID_MESSAGE_ERROR
            log.warning("%d invalid messages in a row: Twilio closes the socket (1007)", limit)
            await self._socket.close(MALFORMED_CLOSE_CODE, f"{limit} invalid messages in a row")

    async def _after_session(self) -> None:
        """Request the <Connect action> URL the way Twilio does once the session is over."""
        if self.handoff_data is not None:
            self.session_status = "ended"
        elif self._error_code is not None or not self._hung_up:
            self.session_status = "failed"  # Twilio failed it, or the relay dropped the socket
            if self._error_code is None:
                self._error_code = APP_CLOSED_ERROR
        else:
            self.session_status = "completed"
        if not self.action_url:
            return
        params = twilio_http.action_params(
            self.call_sid,
            self.session_id,
            self.session_status,
            handoff_data=self.handoff_data,
            duration_seconds=time.monotonic() - (self.connected_at or time.monotonic()),
            error_code=self._error_code,
            account_sid=self.account_sid,
            from_number=self.from_number,
            to_number=self.to_number,
            application_sid=self.application_sid,
        )
        try:
            exchange = await self._webhook(self.action_url, params, self.twilio.action_method)
        except _HTTP_ERRORS as exc:
            # A relay shutting down (1001) usually takes its action URL with it: no alarm.
            level = logging.INFO if self.close_code == 1001 else logging.WARNING
            log.log(level, "the <Connect action> URL %s failed: %s", self.action_url, exc)
            return
        self.action_twiml = exchange.body
        if exchange.status != 200:
            log.warning(
                "the <Connect action> URL %s answered HTTP %d: Twilio would report error "
                "11200 and hang up",
                self.action_url,
                exchange.status,
            )

    # -- playback reports (info frames) ----------------------------------------------

    async def _report_playback(self) -> None:
        """Send agentSpeaking / tokensPlayed frames as the speech clocks reach them."""
        reporter = self._talk.reporter
        assert reporter is not None
        with contextlib.suppress(ConnectionClosed, RuntimeError):
            while True:
                self._playback_changed.clear()
                async with self._frames_lock:
                    await self._send_all(reporter.due(time.monotonic()))
                at = reporter.next_at()
                wait = None if at is None else max(at - time.monotonic(), 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._playback_changed.wait(), wait)

    # -- the caller's actions --------------------------------------------------------

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
            if frame is not None:
                frames.append(frame)
        return frames

    async def _wait_changed(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(seconds, 0.0))

    async def _say(self, text: str, cut_in: CutIn, timeout: float) -> Reply:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"say() needs the words the caller says, got {text!r}: Twilio sends no "
                "prompt when nothing was said"
            )
        if cut_in.words is not None and not cut_in.timed:
            raise ValueError(
                "talk_over and press say what the caller does when cutting in: give "
                "interrupt_after_words or interrupt_after_ms too (or use interrupt())"
            )
        self._require_connected()
        self._drain_inbox()  # late frames of an earlier reply
        await self._caller_waited()
        cycle = await self._new_prompt(text, after_live=False, awaited=True)
        reply = cycle.reply
        try:
            await self._await_reply(cycle, cut_in, reply.sent_at + timeout)
        finally:
            cycle.awaited = False
        if not (reply.interrupted or reply.cut_off):
            reply.heard = reply.text.strip()
        self._drain_inbox()  # the reply took these frames; listen() gets the ones after
        return reply

    async def _await_reply(self, cycle: TalkCycle, cut_in: CutIn, deadline: float) -> None:
        """Wait for the reply to complete, cutting in at ``cut_in``'s point if it comes."""
        reply = cycle.reply
        while not (reply.interrupted or reply.cut_off):  # interrupt_async() may end it
            self._changed.clear()
            now = time.monotonic()
            at = cut_in.time(cycle.clock)
            if at is not None and now >= at:
                await self._cut_in(now, cut_in)
                return
            if reply.complete:
                if at is None:
                    return  # the reply ended before the cut-in point: nothing to talk over
                await self._wait_changed(at - now)
                continue
            if not self.connected:
                raise ConnectionError(
                    f"the relay closed the call before replying to {reply.prompt!r}"
                )
            if now >= deadline:
                raise TimeoutError(f"no complete reply to {reply.prompt!r} in time")
            await self._wait_changed(min(deadline, at if at is not None else deadline) - now)

    async def _caller_waited(self) -> None:
        """The caller waited for silence: what still played counts as heard, and input held
        until the agent stopped goes out now."""
        if self._talk.reporter is not None:
            async with self._frames_lock:
                await self._send_all(self._talk.reporter.flush())
        task = self._held_task
        if task is not None and not task.done():
            task.cancel()  # stops its wait; a send under way finishes (shielded) first
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._send_held()

    async def _new_prompt(self, text: str, *, after_live: bool, awaited: bool = False) -> TalkCycle:
        """Send what the caller said (with speaker events and partial prompts when asked
        for) and open the talk cycle of its reply."""
        speaker_events = self.twilio.speaker_events
        lang = self.transcription_language
        if speaker_events:
            await self._send(client_speaking("on"))
        word_seconds = 60.0 / self.words_per_minute / self.clock_speed
        if self.twilio.partial_prompts:
            for partial in partial_prompts(text):  # each as its last word is recognised
                await self._send(twilio_frames.prompt_frame(partial, last=False, lang=lang))
                await asyncio.sleep(word_seconds)
            if self.twilio.final_partial:  # the last word, recognised as it ends
                heard_so_far = transcribe(text, self.twilio, self.hints)
                await self._send(twilio_frames.prompt_frame(heard_so_far, last=False, lang=lang))
        last_word_at = time.monotonic()
        if speaker_events:
            await self._send(client_speaking("off"))
        delay_ms = final_prompt_delay_ms(text, self.twilio)
        if delay_ms:  # speechTimeout / turnDetection: the silence Twilio waits for
            await asyncio.sleep(delay_ms / 1000 / self.clock_speed)
        reply = Reply(prompt=text)
        self.replies.append(reply)
        cycle = self._talk.open(reply, after_live=after_live)
        cycle.awaited = awaited
        heard = transcribe(text, self.twilio, self.hints)
        await self._send(twilio_frames.prompt_frame(heard, last=True, lang=lang))
        reply.sent_at = time.monotonic()
        reply.last_word_at = last_word_at
        return cycle

    def _drain_inbox(self) -> None:
        while not self._inbox.empty():
            self._inbox.get_nowait()

    async def _wait_for_reply(self, timeout: float) -> Reply | None:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            reply = self.replies[-1] if self.replies else None
            over = reply is None or reply.complete or reply.interrupted or reply.cut_off
            if over and not self._held:
                return reply
            if not self.connected:
                raise ConnectionError("the relay closed the call while a reply was awaited")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no complete reply within {timeout} seconds")
            await self._wait_changed(min(deadline - time.monotonic(), 0.05))

    # -- cutting in: interrupts, and input made during agent speech --------------------

    async def _cut_in_now(self, cut_in: CutIn) -> Reply | None:
        if cut_in.words is not None:
            self._require_connected()
        return await self._cut_in(time.monotonic(), cut_in)

    async def _cut_in(self, now: float, cut_in: CutIn) -> Reply | None:
        """The caller talks (or presses keys) over what plays at ``now``: an interrupt when
        Twilio lets this input interrupt, else the input is reported or dropped. Returns
        the reply talked over; None (and the input is simply made) when nothing plays."""
        playing = self._talk.playing(now)
        if cut_in.press and not self._keys_detected(cut_in.press):
            return playing.reply if playing else None
        if playing is None:
            await self._make_input(cut_in.kind, cut_in.words, after_live=True)
            return None
        enough = cut_in.kind == "dtmf" or speech_interrupts(cut_in.words, self.twilio)
        if enough and self._talk.interrupts(playing, cut_in.kind, self.twilio):
            await self._interrupt(playing, now, cut_in.kind)
            await self._make_input(cut_in.kind, cut_in.words, after_live=False)
        else:
            self._talk.talk_over(playing)
            if cut_in.words is not None and is_backchannel(cut_in.words, self.twilio):
                log.info("Twilio ignores a backchannel: %s", log_lines.loggable(cut_in.words))
                return playing.reply
            await self._input_during_speech(cut_in.kind, cut_in.words)
        return playing.reply

    async def _input_during_speech(self, kind: InputKind, words: str | None) -> None:
        """Input that did not interrupt: sent now, held until the agent stops, or dropped,
        as reportInputDuringAgentSpeech (and the reading of its timing) says."""
        if words is None:
            return  # speech with no words given: nothing to transcribe
        fate = input_fate(kind, self.twilio)
        if fate == "drop":
            log.info(
                "Twilio drops %s made while the agent speaks (reportInputDuringAgentSpeech=%s): %s",
                "the key press" if kind == "dtmf" else "what the caller said",
                self.twilio.report_input_during_agent_speech,
                log_lines.loggable(words),
            )
            return
        if fate == "send":
            await self._make_input(kind, words, after_live=True)
            return
        self._held.append((kind, words))
        if self._held_task is None or self._held_task.done():
            self._held_task = asyncio.create_task(self._release_held())

    async def _make_input(self, kind: InputKind, words: str | None, *, after_live: bool) -> None:
        """Send the caller's input: a prompt (with its reply's talk cycle) or dtmf frames."""
        if words is None:
            return
        if kind == "dtmf":
            for digit in words:
                await self._send(twilio_frames.dtmf_frame(digit))
        else:
            await self._new_prompt(words, after_live=after_live)

    async def _release_held(self) -> None:
        """Send the held input once the agent has stopped speaking."""
        with contextlib.suppress(ConnectionClosed, RuntimeError):
            while self._talk.agent_busy(time.monotonic()):
                self._changed.clear()
                await self._wait_changed(0.05)
            await asyncio.shield(self._send_held())

    async def _send_held(self) -> None:
        async with self._held_lock:
            if self._held and self._talk.reporter is not None:
                async with self._frames_lock:  # agentSpeaking off comes first
                    await self._send_all(self._talk.reporter.due(time.monotonic()))
            while self._held:
                kind, words = self._held[0]
                await self._make_input(kind, words, after_live=True)
                self._held.pop(0)  # only now: wait_for_reply sees it as pending till here

    async def _interrupt(self, playing: TalkCycle, now: float, kind: InputKind) -> None:
        """Twilio stops all speech at ``now`` and sends the interrupt frames."""
        stop = self._talk.interrupt(playing, now, kind, self.twilio)
        self._changed.set()  # a say() waiting for frames sees it at once
        if not stop.reported:
            return  # the reading where the greeting just stops
        async with self._frames_lock:  # built under the lock: they move the reporter on
            await self._send_all(self._talk.interrupt_frames(stop, self.twilio))

    def _keys_detected(self, digits: str) -> bool:
        if self.dtmf_detection:
            return True
        log.warning(
            "key %s not reported: dtmfDetection is off (Twilio's default; set "
            'dtmfDetection="true" in the TwiML, or TwilioBehaviour(dtmf_detection=True)), so '
            "Twilio sends no dtmf",
            digits,
        )
        return False

    async def _press(self, digits: str) -> None:
        check_keys(digits)
        self._require_connected()
        if self._keys_detected(digits):
            await self._make_input("dtmf", digits, after_live=True)

    async def _hang_up(self) -> None:
        if self._socket is None:
            return
        self._hung_up = True
        await self._socket.close()
        if self._reader is not None:
            await self._reader


def _as_message(frame: str | bytes) -> dict[str, Any]:
    """A sent frame as a dict for the record ({} for frames that are not a JSON object)."""
    try:
        message = json.loads(frame)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _origin(url: str | None) -> str | None:
    """scheme://host[:port] of ``url`` (None for None)."""
    if not url:
        return None
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))
