"""One call's state machine: frames in, handler calls and frames out. No sockets.

The I/O shell (server.py) hands every inbound frame to ``CallSession.receive`` the
moment it arrives, synchronously, and gives the session a ``send`` coroutine function
for frames out. A test can do the same with a list (see ``relaylab.relay.testing``).

The one ordering guarantee lives here, in ``send_text``: a reply never sends a frame
while a frame that arrived after it started is still being handed to its handler. An
``interrupt`` is read, its ``on_interrupt`` hook runs (and in the tracking step
cancels the reply), and only then may the reply send again, which it then cannot.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from relaylab.core import endings, playback, protocol
from relaylab.core.conversation import Conversation, heard_prefix, locate_heard
from relaylab.core.protocol import loggable
from relaylab.relay import caching, failures, speculation, streams
from relaylab.relay.events import EventBus, Listener
from relaylab.relay.llm import LLM
from relaylab.relay.polling import until
from relaylab.relay.prewarm import prewarm_soon
from relaylab.relay.step import Step

log = logging.getLogger("relaylab.relay.session")

FRAME_HISTORY = 40  # frames kept per call for the live view
MAX_SETTINGS = 64  # session settings kept from configUpdated (Twilio has about 30)
QUEUED_REPLIES = 3  # older replies an interrupt may still find playing (speech queues)
SLOWEST_VOICE_WPM = 110.0  # a slow speaking pace, words a minute (voices run near 165)


@dataclass(frozen=True)
class Limits:
    """How long and how much a call may take before the relay steps in."""

    first_token_timeout: float = 5.0
    """Seconds of silence before a reply's first word that the caller is left with: then, if
    the model is alive (thinking, or the API asked the client to wait), the caller hears
    a short holding line (``endings.HOLD_LINE``) and the relay waits on; else the apology."""
    stall_timeout: float = 5.0
    """Seconds the model may show no sign of life (no event of any kind, no retry being
    waited out) before the caller hears the apology, before or after the first word."""
    alive_window: float = 2.0
    """At the first-word budget the model counts as alive if it showed life within this
    many seconds (at most half of ``stall_timeout``, so a holding line is never followed
    at once by the apology)."""
    longest_wait: float = 30.0
    """Seconds a reply may take to its first word, however alive the model is; then the
    apology."""
    cancel_wait: float = 1.0
    """Seconds a cancelled reply gets to stop before the relay goes on without it."""
    history_chars: int = 100_000
    """Past this many characters of history the oldest turns are dropped (well under the
    model's context, and far under the API's request size limit)."""


Send = Callable[[str], Awaitable[None]]

# A weak reference: every callback scheduled from inside a reply (an HTTP connection's
# reader, a connection pool's cleanup timer) keeps a copy of the reply's context, and
# some of those live as long as the pool. A strong reference would keep the reply, its
# task and its text alive with them long after the call ended.
_current_reply: contextvars.ContextVar[weakref.ref[Reply] | None] = contextvars.ContextVar(
    "relaylab_current_reply", default=None
)


# For hooks other than on_prompt: the replies that existed when the hook's frame arrived.
# An interrupt's handler must not cancel a reply to a prompt that came in after it.
_replies_before: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "relaylab_replies_before", default=None
)
# For on_interrupt: the reply whose speech that interrupt cut (None: speech the relay never
# sent, such as Twilio's welcome greeting; False: not in an interrupt's handler).
_cut: contextvars.ContextVar[Reply | bool | None] = contextvars.ContextVar(
    "relaylab_cut", default=False
)
# For on_interrupt: has this interrupt's talk cycle been closed yet (one empty last:true
# per interrupt, however often the handler cancels)? None: not in an interrupt's handler.
_cycle_closed: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "relaylab_cycle_closed", default=None
)


def _running_reply() -> Reply | None:
    """The reply whose task is running this code, if any."""
    ref = _current_reply.get()
    return ref() if ref is not None else None


class HungUp(ConnectionError):
    """The caller's socket closed while the relay was sending."""


@dataclass(eq=False)
class Reply:
    """One prompt's reply: the task producing it and everything it has sent."""

    prompt: str
    id: int  # 1 for the call's first reply, 2 for the next, ...
    sent: str = ""
    frames: int = 0  # text frames sent
    state: str = "running"  # running, done, cancelled, failed
    heard: str | None = None  # set when the caller interrupts this reply, or it is cut off
    played: str = ""  # what Twilio reported as played (info tokensPlayed), when asked for
    cut_off: bool = False  # a newer reply's speech cut it off (preemptible); no interrupt
    dropped: bool = False  # the socket dropped while it played; heard is what had played
    heard_ms: float | None = None  # speech played before the interrupt, as Twilio reported it
    error: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    last_sent_at: float | None = None
    last_token_at: float | None = None  # when the frame with last=True went out
    ended_at: float | None = None
    interrupted_at: float | None = None
    stored: bool = True  # False: the step stored none of it (a refusal, no words at all)
    alive_at: float = 0.0  # the model's last sign of life (later: a retry being waited out)
    held_at: float | None = None  # when the caller heard the holding line, if they did
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    started: asyncio.Future[None] | None = field(default=None, repr=False)
    timeout_error: failures.ModelTooSlow | None = field(default=None, repr=False)
    watchdog: asyncio.TimerHandle | None = field(default=None, repr=False)
    _order: int = 0

    @property
    def interrupted(self) -> bool:
        return self.heard is not None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def timings(self) -> dict[str, float]:
        """Milliseconds from the prompt to the first and last frame sent, the interrupt
        and the end of the reply (each once it happened)."""
        marks = {
            "first_token_ms": self.first_token_at,
            "last_token_ms": self.last_token_at,
            "interrupt_ms": self.interrupted_at,
            "ended_ms": self.ended_at,
        }
        return {k: (at - self.started_at) * 1000 for k, at in marks.items() if at is not None}


def _may_still_play(text: str, began: float | None, at: float) -> bool:
    """Could speech of ``text`` that began at ``began`` still be playing at ``at``? Timed
    at SLOWEST_VOICE_WPM, so a slow voice is never taken to have finished early."""
    if not text or began is None:
        return False
    return at - began < len(text.split()) * 60 / SLOWEST_VOICE_WPM


def _alive_listener(ref: weakref.ref[Reply]) -> streams.AliveListener:
    """Record the model's signs of life on the reply (weakly held: see _current_reply)."""

    def alive(wait: float) -> None:
        reply = ref()
        if reply is not None:
            reply.alive_at = max(reply.alive_at, time.monotonic() + wait)

    return alive


class CallSession:
    """What a step's handlers receive as ``call``: one phone call, from setup to hang-up."""

    def __init__(
        self,
        send: Send,
        *,
        step: Step,
        llm: LLM,
        limits: Limits | None = None,
        greeting: str = "",
        preemptible: bool = False,
        speculate: bool = False,
        speculate_after_ms: float = speculation.STABLE_MS,
        prewarm: bool = False,
        prompt_caching: bool = False,
    ) -> None:
        self._send = send
        self._prewarm = prewarm  # open the model connection at setup (relaylab.relay.prewarm)
        # Mark the system prompt and the history for Claude's prompt cache (relaylab.relay.caching).
        self.prompt_caching = prompt_caching
        self.greeting = greeting  # what Twilio says itself when the call connects
        # May a newer reply cut off the one playing (TwiML, or a text frame's own flag)?
        self.preemptible = preemptible
        self._opened_at = time.monotonic()  # about when Twilio began the greeting
        self.step = step
        self.claude = llm.client
        self.model = llm.model
        self.system = llm.system
        self.max_tokens = llm.max_tokens
        self.fast_stream = llm.fast_stream  # read streams with llm.stream_reply (serve)
        self.limits = limits or Limits()
        self.call_sid = ""
        self.setup: protocol.Setup | None = None
        self.conversation = Conversation()
        self.replies: list[Reply] = []
        self.frames: deque[tuple[str, str]] = deque(maxlen=FRAME_HISTORY)
        self.frames_received = 0
        self.closed = False
        # Reconnects (relaylab.relay.resume): the call the socket URL names, whether this session
        # took over a dropped call's state, and why the socket must close (set on a bad setup).
        self.bound_call_sid: str | None = None
        self.resumed = False
        self.refused: str | None = None
        self.agent_speaking: bool | None = None  # from info frames, when Twilio sends them
        self.settings: dict[str, Any] = {}  # session settings Twilio confirmed (configUpdated)
        self._played_from = 0  # replies before this one have stopped playing
        self._reports = False  # Twilio sends tokensPlayed reports on this call
        self.events = EventBus(self)
        self._order = itertools.count(1)
        self._handlers: set[asyncio.Task[None]] = set()  # hooks other than on_prompt
        self._last_handler: asyncio.Task[None] | None = None
        self._barriers: list[tuple[int, asyncio.Future[Any]]] = []
        # Speculative replies on partial prompts (relaylab.relay.speculation), when turned on.
        self.speculator: speculation.Speculator | None = None
        if speculate or step.speculate:
            self.speculator = speculation.Speculator(
                self.claude, self._speculative_request, stable_ms=speculate_after_ms
            )

    def _speculative_request(self, text: str, latest: dict[str, Any] | None) -> dict[str, Any]:
        """The request a step would make if ``text`` were the final prompt: the settings of
        its latest request on this call (else the lessons' defaults) and the history with
        ``text`` added as the lessons add it (``add_user``)."""
        settings = dict(latest) if latest else self.default_request()
        history = Conversation(self.conversation.snapshot())
        history.add_user(text)
        request = {**settings, "messages": list(history), "stream": True}
        return caching.cached_request(request) if self.prompt_caching else request

    def default_request(self) -> dict[str, Any]:
        """The settings of a lesson step's request (the messages aside)."""
        return {"model": self.model, "max_tokens": self.max_tokens, "system": self.system}

    def __repr__(self) -> str:
        return f"<CallSession {self._name} step={self.step.name}>"

    @property
    def _name(self) -> str:
        return f"Call {loggable(self.call_sid)}" if self.call_sid else "A call (before setup)"

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on the relay's loop for every event; returns an unsubscribe."""
        return self.events.subscribe(listener)

    # -- replies -----------------------------------------------------------------

    @property
    def reply(self) -> Reply | None:
        """The reply the running handler belongs to, else the latest reply of the call."""
        return _running_reply() or self.last_reply

    @property
    def last_reply(self) -> Reply | None:
        return self.replies[-1] if self.replies else None

    @property
    def heard(self) -> str:
        """What the caller heard of the reply they talked over ("" if nothing). In a handler
        of an interrupt, that is the reply whose speech the interrupt cut: the latest one
        begun before it arrived, or an older one still playing (see ``_cut_reply``)."""
        cut = _cut.get()
        if cut is not False:
            return (cut.heard or "") if isinstance(cut, Reply) else ""
        limit = _replies_before.get()
        replies = self.replies if limit is None else self.replies[:limit]
        return (replies[-1].heard or "") if replies else ""

    @property
    def interrupted_reply(self) -> Reply | None:
        """In a handler of an interrupt, the reply whose speech it cut (None for speech
        the relay never sent, such as the welcome greeting); else the latest reply."""
        cut = _cut.get()
        if cut is not False:
            return cut if isinstance(cut, Reply) else None
        return self.last_reply

    @property
    def timings(self) -> dict[str, float]:
        """Timings of the latest reply, in milliseconds."""
        return self.last_reply.timings if self.last_reply else {}

    async def cancel_reply(self) -> Reply | None:
        """Cancel every reply older than the caller's own, and wait until each has stopped.

        Cancelling closes the model stream inside the reply (``async with`` exits), which
        aborts the HTTP request. A newer reply is never cancelled by an older one, so two
        prompts in quick succession leave the newest one running; and a handler of another
        frame (an interrupt, a key press) cancels only replies that began before its frame.
        Then the talk cycle is closed with exactly one empty ``last: true`` (Twilio's own
        SDK acknowledges an interrupt this way; a reading of Twilio keeps an interrupted
        cycle open until it comes): always in an interrupt's handler (once per interrupt),
        and on a barge-in when a cancelled reply had sent words but not its ``last: true``.
        No word of a cancelled reply can follow it (``send_text`` keeps them silent).
        Returns the most recent reply that was cancelled.
        """
        current = _running_reply()
        limit = current.id - 1 if current is not None else _replies_before.get()
        running = [r for r in self.replies if r.running and (limit is None or r.id <= limit)]
        open_cycle = any(r.frames and r.last_token_at is None for r in running)
        for reply in running:
            reply.state = "cancelled"
            reply.task.cancel()  # type: ignore[union-attr]
        if running:
            await self._wait_for_stop(running)
        closed = _cycle_closed.get()
        if closed is not None and current is None:  # an interrupt's handler
            open_cycle, closed[0] = not closed[0], True
        if open_cycle:
            await self._close_talk_cycle()
        return running[-1] if running else None

    async def _close_talk_cycle(self) -> None:
        """Close the talk cycle of a cancelled reply: one empty ``last: true``, no words."""
        if self.closed:
            return
        try:
            await self.send(protocol.text("", True))
        except (HungUp, ConnectionError):
            log.info("%s: the caller hung up before the talk cycle was closed", self._name)

    async def _wait_for_stop(self, replies: list[Reply]) -> None:
        # A handler that ignores the cancel must not stall the call: wait a little,
        # then go on (send_text keeps a cancelled reply silent anyway).
        waiting = asyncio.ensure_future(
            asyncio.wait([r.task for r in replies], timeout=self.limits.cancel_wait)  # type: ignore[misc]
        )
        try:
            _, stuck = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # A newer prompt cancelled us mid-wait: still let the older replies finish
            # first, so their turns land in the history before ours.
            await waiting
            raise
        if stuck:
            log.warning(
                "%s: %d cancelled repl%s still running after %.1f s; the handler may be "
                "catching asyncio.CancelledError. Nothing more of it will be sent.",
                self._name,
                len(stuck),
                "y is" if len(stuck) == 1 else "ies are",
                self.limits.cancel_wait,
            )

    def _start_reply(self, prompt: protocol.Prompt) -> None:
        self._launch_reply(
            prompt.voice_prompt,
            lambda: self.step.run("on_prompt", self, prompt),
            contextvars.copy_context(),
        )

    def start_reply(self, speak: Callable[[CallSession], Awaitable[None]]) -> Reply:
        """Start a reply nobody prompted (a resumed answer, "Are you still there?"):
        ``speak(call)`` runs as a reply task, as ``on_prompt`` does, so ``send_text``,
        interrupts and ``cancel_reply`` treat it like any other reply. Its ``prompt`` is ""."""
        return self._launch_reply("", lambda: speak(self), contextvars.Context())

    def _launch_reply(
        self, prompt: str, run: Callable[[], Awaitable[None]], context: contextvars.Context
    ) -> Reply:
        loop = asyncio.get_running_loop()
        reply = Reply(prompt=prompt, id=len(self.replies) + 1)
        reply._order = next(self._order)
        reply.started = loop.create_future()
        self._barriers.append((reply._order, reply.started))
        self.replies.append(reply)
        reply.alive_at = reply.started_at
        context.run(_current_reply.set, weakref.ref(reply))
        context.run(speculation.current.set, self.speculator)
        context.run(streams.alive_listener.set, _alive_listener(weakref.ref(reply)))
        reply.task = loop.create_task(self._run_reply(reply, run), context=context)
        self._watch(reply)
        self.events.emit("reply_started", reply=reply)
        return reply

    async def _run_reply(self, reply: Reply, run: Callable[[], Awaitable[None]]) -> None:
        previous = self._last_handler
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])  # e.g. on_setup still running
            reply.started.set_result(None)  # type: ignore[union-attr]
            self._forget_barrier(reply.started)
            await run()
        except asyncio.CancelledError:
            if reply.state != "timed_out":
                reply.state = "cancelled"
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # we cancelled it
            await self._apologise(reply, reply.timeout_error)  # type: ignore[arg-type]
        except HungUp:
            reply.state = "cancelled"
            log.info("%s: the caller hung up while the reply was being sent", self._name)
        except Exception as exc:
            if reply.state == "cancelled":  # the handler turned the cancel into another error
                log.info("%s: a cancelled reply raised %r; nothing more is sent", self._name, exc)
            else:
                await self._apologise(reply, exc)
        else:
            if reply.running:
                reply.state = "done"
        finally:
            if not reply.started.done():  # type: ignore[union-attr]
                reply.started.set_result(None)  # type: ignore[union-attr]
            reply.ended_at = time.monotonic()
            if reply.watchdog is not None:
                reply.watchdog.cancel()  # drops its hold on the reply and the session now
            self._forget_barrier(reply.started)
            self.events.emit("reply_ended", reply=reply)
            self._check_history()

    def _watch(self, reply: Reply) -> None:
        """Keep the line from going silent. The voice budget counts silence, not lack of
        text: by ``first_token_timeout`` with no word yet, a model that is alive gets a
        holding line and more time; one that shows no sign of life for ``stall_timeout``
        (or takes past ``longest_wait`` to its first word) is given up on, and the caller
        hears the apology instead of silence. The call goes on."""
        loop = asyncio.get_running_loop()
        limits = self.limits

        def give_up(seconds: float, started: bool) -> None:
            reply.state = "timed_out"
            reply.timeout_error = failures.ModelTooSlow(seconds, started=started)
            reply.task.cancel()  # type: ignore[union-attr]

        def check() -> None:
            if not reply.running:
                return
            now = time.monotonic()
            life = max(reply.alive_at, reply.last_sent_at or 0.0)
            next_check = life + limits.stall_timeout
            if reply.first_token_at is not None:  # speaking: only a dead stream ends it
                if now >= next_check:
                    return give_up(limits.stall_timeout, started=True)
            elif reply.held_at is None:  # the first-word budget has passed
                window = min(limits.alive_window, limits.stall_timeout / 2)
                if life <= reply.started_at or now - life >= window:
                    return give_up(limits.first_token_timeout, started=False)
                reply.held_at = now
                self._spawn(self._hold(reply))
                next_check = min(next_check, reply.started_at + limits.longest_wait)
            else:  # holding: wait on while the model lives, up to the ceiling
                ceiling = reply.started_at + limits.longest_wait
                if now >= ceiling:
                    return give_up(limits.longest_wait, started=False)
                if now >= next_check:
                    return give_up(limits.stall_timeout, started=False)
                next_check = min(next_check, ceiling)
            reply.watchdog = loop.call_at(max(next_check, now + 0.001), check)

        reply.watchdog = loop.call_later(limits.first_token_timeout, check)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _hold(self, reply: Reply) -> None:
        """Say the holding line while a live model has not said its first word yet. Not
        part of Claude's reply (not in ``reply.sent``, never stored), and never sent once
        an interrupt or a newer prompt is being handled."""
        newer = [b for order, b in self._barriers if order > reply._order and not b.done()]
        if not reply.running or reply.first_token_at is not None or newer or self.closed:
            return
        try:
            # The start of the reply's talk cycle: the answer follows in the same cycle.
            await self.send(protocol.text(endings.HOLD_LINE + " ", False))
        except Exception:
            log.info("%s: could not send the holding line; the socket is gone", self._name)
            return
        log.info(
            "%s: Claude is alive but has said nothing for %.1f s; the caller hears %r",
            self._name,
            self.limits.first_token_timeout,
            endings.HOLD_LINE,
        )
        self.events.emit("hold", reply=reply)

    async def _apologise(self, reply: Reply, exc: BaseException) -> None:
        reply.state = "failed"
        reply.error = failures.describe(exc)
        log.warning(
            "%s: the reply to %s failed (%s). The caller hears a short apology and the call "
            "goes on.",
            self._name,
            loggable(reply.prompt),
            reply.error,
            exc_info=not failures.is_model_error(exc),
        )
        self.events.emit("error", message=f"reply failed: {reply.error}")
        if self.closed:
            return
        ending = endings.failed(reply.sent)
        try:
            await self.send(protocol.text(endings.spoken_after(reply.sent, ending.say), True))
        except Exception:
            log.warning("%s: could not send the apology; the socket is gone", self._name)
        # The relay's words are never stored as Claude's: a reply that had begun is
        # stored as far as it got, marked as cut off there.
        if ending.store != endings.APOLOGY and endings.mark_cut(self.conversation, reply.sent):
            return
        self.conversation.add_assistant(ending.store or "")

    def _check_history(self) -> None:
        if not self.conversation:
            return
        dropped = self.conversation.trim_to(self.limits.history_chars)
        if dropped:
            log.info(
                "%s: the history passed %d characters; dropped the %d oldest turns so the "
                "next request stays within the model's limits",
                self._name,
                self.limits.history_chars,
                dropped,
            )
        if problems := self.conversation.problems():
            log.warning(
                "%s: the Messages API would reject this history: %s",
                self._name,
                "; ".join(problems),
            )

    # -- sending -----------------------------------------------------------------

    async def send_text(self, token: str, last: bool = False, **options: Any) -> None:
        """Send tokens for Twilio to speak; ``last=True`` ends this talk cycle."""
        reply = _running_reply()
        if reply is not None:
            if self._barriers:
                await self._wait_for_handlers(reply)
            if not reply.running:
                # A cancelled reply stays silent even if a handler swallowed the cancel.
                raise asyncio.CancelledError
            # Recorded before the await: once send() starts, the frame counts as sent even
            # if the reply is cancelled while the socket drains.
            now = reply.last_sent_at = time.monotonic()
            if token:
                reply.sent += token
                reply.frames += 1
                if reply.first_token_at is None:
                    reply.first_token_at = now
            if last:
                reply.last_token_at = now
        if options.get("preemptible"):
            self.preemptible = True
        await self.send(protocol.text(token, last, **options))
        if reply is not None and token and self.events:
            self.events.emit("token", reply=reply, token=token)

    async def say(self, line: str) -> None:
        """Say the relay's own ``line`` (a wrap-up, a refusal's line) after Claude's words,
        ending the talk cycle. It is not Claude's: never added to ``reply.sent`` nor
        stored, and after Claude's words it follows a pause, a sentence of its own
        (``endings.spoken_after``). Silent once the reply is cancelled, as ``send_text``
        is."""
        reply = _running_reply()
        sent = ""
        if reply is not None:
            if self._barriers:
                await self._wait_for_handlers(reply)
            if not reply.running:
                raise asyncio.CancelledError
            reply.last_sent_at = reply.last_token_at = time.monotonic()
            sent = reply.sent
        await self.send(protocol.text(endings.spoken_after(sent, line), True))

    async def _wait_for_handlers(self, reply: Reply) -> None:
        """Wait while a frame that arrived during ``reply`` is still being handed to its
        handler: an interrupt's ``on_interrupt`` running, or a newer prompt's ``on_prompt``
        not yet started. This is what keeps a token from leaving after an interrupt."""
        newer = [barrier for order, barrier in self._barriers if order > reply._order]
        pending = [barrier for barrier in newer if not barrier.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.limits.cancel_wait)

    async def configure(self, **settings: Any) -> None:
        """Change session settings mid-call (dynamic configuration): ``interruptible``,
        ``interrupt_sensitivity``, ``hints``, languages... named as TwiML attributes.
        Twilio answers ``configUpdated``; ``settings`` then holds what it applied."""
        await self.send(protocol.config(**settings))

    async def end(self, handoff_data: str | dict[str, Any] | None = None) -> None:
        """End the ConversationRelay session; Twilio then requests the ``<Connect action>`` URL."""
        await self.send(protocol.end(handoff_data))

    async def send(self, frame: str) -> None:
        """Send one frame built with relaylab.core.protocol (text, play, sendDigits, language,
        end)."""
        if self.closed:
            raise HungUp(f"{self._name} has hung up; nothing more can be sent")
        await self._send(frame)
        self.frames.append(("out", frame))
        self.events.emit("frame_out", frame=frame)

    # -- receiving ---------------------------------------------------------------

    def receive(self, frame: str | bytes) -> None:
        """Take one inbound frame, now. Bad input is logged and dropped, never raised.

        Everything that decides what happens next (which reply was interrupted, what
        it had sent, which handler runs) is settled before this returns; the handlers
        themselves run as tasks on the loop.
        """
        self.frames_received += 1
        shown = frame if isinstance(frame, str) else f"<binary frame, {len(frame)} bytes>"
        self.frames.append(("in", shown[:2000]))
        self.events.emit("frame_in", frame=shown)
        try:
            message = protocol.parse(frame)
        except protocol.ProtocolError as exc:
            self._reject(f"ignored a frame: {exc}")
            return
        if isinstance(message, protocol.Setup):
            self._on_setup(message)
        elif self.setup is None:
            self._reject(f"ignored a {loggable(message.type)} message: it arrived before 'setup'")
        elif isinstance(message, protocol.Prompt):
            self._on_prompt(message)
        elif isinstance(message, protocol.Interrupt):
            self._on_interrupt(message)
        elif isinstance(message, protocol.Dtmf):
            self._run_handler("on_dtmf", message)
        elif isinstance(message, protocol.Info):
            self._on_info(message)
        elif isinstance(message, protocol.ConfigUpdated):
            for name, value in message.settings.items():  # a bounded number of names
                if name in self.settings or len(self.settings) < MAX_SETTINGS:
                    self.settings[name] = value
            log.info("%s: Twilio applied %s", self._name, loggable(message.settings))
            self.events.emit("config_updated", settings=message.settings)
        elif isinstance(message, protocol.ErrorMessage):
            log.warning(
                "%s: Twilio reported an error: %s", self._name, loggable(message.description)
            )
            self.events.emit("error", message=f"Twilio: {message.description}")
        else:
            log.info("%s: ignored a message of unknown type %s", self._name, loggable(message.type))

    def _reject(self, reason: str) -> None:
        log.warning("%s: %s", self._name, reason)
        self.events.emit("error", message=reason)

    def _on_setup(self, setup: protocol.Setup) -> None:
        bound = self.bound_call_sid
        if bound is not None and setup.call_sid != bound:
            self.refused = "its setup names another call than the socket URL"
            self._reject(
                f"refused a setup for call {loggable(setup.call_sid)} on the socket of call "
                f"{loggable(bound)}: {self.refused}"
            )
            return
        if self.resumed:  # a reconnect that sends setup again: the call goes on as it was
            self.resumed = False
            log.info("%s: setup again after a reconnect; the call goes on", self._name)
            return
        if self.setup is not None:
            self._reject("ignored a second 'setup' message")
            return
        self.setup = setup
        self.call_sid = setup.call_sid or setup.session_id or f"call-{id(self):x}"
        if not setup.call_sid:
            log.warning("%s: setup has no callSid; named the call after its session", self._name)
        log.info("%s: connected (step %s)", self._name, self.step.name)
        if self._prewarm:
            prewarm_soon(self.claude, self.model, 2 if self.speculator else 1)
        self._run_handler("on_setup", setup)

    def _on_prompt(self, prompt: protocol.Prompt) -> None:
        speculator = self.speculator
        if not prompt.last:  # a partial transcript: the final prompt (last: true) follows
            if speculator is not None:
                speculator.name = self._name
                speculator.partial(prompt.voice_prompt, busy=self._busy())
            if self._prewarm:  # the caller is talking: make sure a connection is open
                prewarm_soon(self.claude, self.model, 2 if speculator else 1)
            return
        if speculator is not None:
            speculator.final(prompt.voice_prompt)
        if not prompt.voice_prompt.strip():
            self._reject("ignored a prompt with no words in it")
            return
        if prompt.truncated_from:
            log.warning(
                "%s: a prompt of %d characters was cut to its first %d",
                self._name,
                prompt.truncated_from,
                len(prompt.voice_prompt),
            )
        self._start_reply(prompt)

    def _busy(self) -> bool:
        """Is a reply running or being handled (no speculating over it)?"""
        return any(r.running for r in self.replies)

    def _on_interrupt(self, interrupt: protocol.Interrupt) -> None:
        reply = self._cut_reply(interrupt)
        now = time.monotonic()
        if reply is not None and reply.heard is None:
            reply.interrupted_at = now
            reply.heard_ms = interrupt.duration_until_interrupt_ms
            reply.heard = self._heard(reply, interrupt)
        # An interrupt stops all speech, so replies queued behind the one cut never played.
        after = reply.id if reply is not None else 0
        for queued in self.replies[after:]:
            if queued.heard is None:
                queued.interrupted_at, queued.heard = now, ""
        self.events.emit("interrupt", reply=reply, utterance=interrupt.utterance_until_interrupt)
        self._run_handler("on_interrupt", interrupt, cut=reply)

    def _cut_reply(self, interrupt: protocol.Interrupt) -> Reply | None:
        """The reply whose speech the interrupt cut: the latest, unless the caller was
        still hearing older speech when it was sent (Twilio queues a reply behind speech
        still playing): an older reply, or the welcome greeting (None), that alone holds
        the utterance's words; for an interrupt with no words, the reply Twilio's
        tokensPlayed reports say is playing, when it sends them."""
        latest = self.last_reply
        utterance = interrupt.utterance_until_interrupt
        if latest is None or latest.heard is not None:
            return latest  # (an earlier interrupt already stopped all speech)
        if not utterance.strip():
            return self._playing() or latest
        if locate_heard(latest.sent, utterance) is not None:
            return latest
        for older in reversed(self.replies[-QUEUED_REPLIES - 1 : -1]):
            if older.heard is not None:
                break  # an interrupt cut it: nothing before it was still playing
            if not _may_still_play(older.sent, older.first_token_at, latest.started_at):
                break  # it had finished playing before the latest reply began
            if locate_heard(older.sent, utterance) is not None:
                return older
        greeting_may_play = _may_still_play(self.greeting, self._opened_at, latest.started_at)
        if greeting_may_play and locate_heard(self.greeting, utterance) is not None:
            return None
        return latest

    def _heard(self, reply: Reply, interrupt: protocol.Interrupt) -> str:
        """What the caller heard of ``reply``: Twilio's own played-tokens report when it sent
        one, else the interrupt's utterance lined up with what was sent."""
        if reply.played and reply.sent.startswith(reply.played):
            return reply.played.rstrip()
        return heard_prefix(
            reply.sent,
            interrupt.utterance_until_interrupt,
            duration_ms=interrupt.duration_until_interrupt_ms,
        )

    def _on_info(self, info: protocol.Info) -> None:
        if info.name == "tokensPlayed" and isinstance(info.value, str):
            self._credit_played(info.value)
        elif info.name == "agentSpeaking":
            self.agent_speaking = info.value == "on"
        self.events.emit("info", name=info.name, value=info.value)

    def _playing(self) -> Reply | None:
        """The reply Twilio's tokensPlayed reports say is playing (the oldest not played
        through), or None without reports."""
        if not self._reports:
            return None
        return next((r for r in self._from_first_unplayed() if playback.still_playing(r)), None)

    def _from_first_unplayed(self) -> list[Reply]:
        """The replies from the oldest one that may still be playing on."""
        replies = self.replies
        while self._played_from < len(replies) and playback.played_out(replies[self._played_from]):
            self._played_from += 1
        return replies[self._played_from :]

    def _credit_played(self, text: str) -> None:
        """Credit Twilio's report of played text to its reply (see relaylab.core.playback); a
        reply it shows was cut off by a newer one is stored as far as it played."""
        self._reports = True
        credit = playback.credit_played(
            self._from_first_unplayed(), text, preemption=self.preemptible
        )
        for reply in credit.cut_off:
            reply.cut_off = True
            stored = self.conversation.cut_reply(reply.sent, reply.heard or "")
            log.info(
                "%s: reply %d was cut off by a newer reply after %s%s",
                self._name,
                reply.id,
                loggable(reply.heard) if reply.heard else "no words",
                "" if stored else " (its turn was not found in call.conversation)",
            )
            self.events.emit("cut_off", reply=reply)

    def _run_handler(self, hook: str, *message: Any, cut: Reply | bool | None = False) -> None:
        """Run a hook other than on_prompt as a task, after the hooks before it; ``cut``
        is, for on_interrupt, the reply the interrupt cut."""
        if getattr(self.step, hook) is None:
            return
        previous = self._last_handler
        context = contextvars.Context()
        context.run(_replies_before.set, len(self.replies))
        context.run(_cut.set, cut)
        if hook == "on_interrupt":
            context.run(_cycle_closed.set, [False])
        task = asyncio.get_running_loop().create_task(
            self._handler(hook, previous, *message), context=context
        )
        self._last_handler = task
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        if hook == "on_interrupt":
            self._barriers.append((next(self._order), task))
            task.add_done_callback(self._forget_barrier)

    async def _handler(self, hook: str, previous: asyncio.Task[None] | None, *message: Any) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        try:
            await self.step.run(hook, self, *message)
        except Exception:
            log.exception("%s: the step's %s handler failed; the call goes on", self._name, hook)
            self.events.emit("error", message=f"{hook} failed")

    def _forget_barrier(self, barrier: asyncio.Future[Any] | None) -> None:
        self._barriers = [(o, b) for o, b in self._barriers if b is not barrier]

    # -- state for tests and the lab ---------------------------------------------

    def caught_up(self, frames: int) -> bool:
        """Has the relay handled the first ``frames`` frames of this call, and stored what
        followed from them? (No handler running, no reply between its last frame and
        its end.)"""
        if self.frames_received < frames:
            return False
        if any(not task.done() for task in self._handlers):
            return False
        return not any(r.running and r.last_token_at is not None and r.sent for r in self.replies)

    def idle(self, frames: int) -> bool:
        """Caught up with the first ``frames`` frames, and every reply has ended."""
        return self.caught_up(frames) and all(r.task is None or r.task.done() for r in self.replies)

    async def until_idle(self, frames: int, timeout: float) -> bool:
        """Wait until ``idle(frames)``; False if ``timeout`` seconds pass first."""
        return await until(lambda: self.idle(frames), timeout)

    async def close(self) -> None:
        """The socket is gone: stop every reply and handler, then let the step clean up."""
        if self.closed:
            return
        self.closed = True
        if self.speculator is not None:
            self.speculator.close()
        await self.cancel_reply()
        pending = [t for t in self._handlers if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=self.limits.cancel_wait)
        try:
            await self.step.run("on_close", self)
        except Exception:
            log.exception("%s: the step's on_close handler failed", self._name)
        self.events.emit("closed")
        log.info("%s: closed", self._name)
