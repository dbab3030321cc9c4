"""One call's state machine: frames in, handler calls and frames out. No sockets.

The I/O shell (relaylab.shell.call_socket) hands every inbound frame to ``CallSession.receive`` the
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
from enum import StrEnum
from typing import Any

from relaylab.core import conversation, endings, playback, protocol
from relaylab.core.conversation import Conversation
from relaylab.core.log_lines import loggable
from relaylab.relay import caching, failures, speculation, streams
from relaylab.relay.events import EventBus, EventKind, Listener
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


class HungUp(ConnectionError):
    """The caller's socket closed while the relay was sending."""


class ReplyState(StrEnum):
    """Where a relay reply is in its life. It starts ``RUNNING`` and ends in one of
    ``DONE``, ``CANCELLED`` or ``FAILED``; ``TIMED_OUT`` is the short step between
    ``RUNNING`` and ``FAILED`` while the caller is told the model was too slow."""

    RUNNING = "running"
    """The reply's task is producing it."""
    DONE = "done"
    """Its hook returned: everything it had to say was sent."""
    CANCELLED = "cancelled"
    """An interrupt, a newer prompt or the hang-up stopped it (``cancel_reply``)."""
    TIMED_OUT = "timed_out"
    """The model stayed silent past the voice budget; the apology is on its way."""
    FAILED = "failed"
    """It raised, or timed out: the caller heard the apology (``error`` says why)."""


@dataclass(eq=False)
class RelayReply:
    """The relay's side of one reply: the task producing it and everything it has sent.
    (The caller's side of the same reply is ``relaylab.Reply``.)"""

    prompt: str
    id: int  # 1 for the call's first reply, 2 for the next, ...
    sent: str = ""
    frames: int = 0  # text frames sent
    state: ReplyState = ReplyState.RUNNING
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
        return self.state == ReplyState.RUNNING

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


def _alive_listener(ref: weakref.ref[RelayReply]) -> streams.AliveListener:
    """Record the model's signs of life on the reply. Weakly held: every callback scheduled
    from inside a reply (an HTTP connection's reader, a pool's cleanup timer) keeps a copy
    of the reply task's context, and some live as long as the pool; a strong reference
    would keep the reply, its task and its text alive long after the call ended."""

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
        self.limits = limits or Limits()
        self.call_sid = ""
        self.setup: protocol.Setup | None = None
        self.conversation = Conversation()
        self.replies: list[RelayReply] = []
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
    def session(self) -> CallSession:
        """The call itself, whichever hook's view of it this is (see ``HookCall``)."""
        return self

    @property
    def reply(self) -> RelayReply | None:
        """In ``on_prompt`` (and a reply started with ``start_reply``), the reply it
        produces; elsewhere the latest reply of the call."""
        return self.last_reply

    @property
    def last_reply(self) -> RelayReply | None:
        return self.replies[-1] if self.replies else None

    @property
    def heard(self) -> str:
        """What the caller heard of the latest reply they talked over ("" if nothing). In
        ``on_interrupt`` read ``interrupt.heard`` instead (``call.heard`` is the same there,
        kept for handlers written before the hook received it)."""
        return self._heard_before(None)

    def _heard_before(self, limit: int | None) -> str:
        replies = self.replies if limit is None else self.replies[:limit]
        return (replies[-1].heard or "") if replies else ""

    @property
    def timings(self) -> dict[str, float]:
        """Timings of the latest reply, in milliseconds."""
        return self.last_reply.timings if self.last_reply else {}

    # What a hook's view of the call is about (HookCall overrides these): the call itself
    # sends for no reply, may cancel every reply, and closes any talk cycle it leaves open.

    def _sending_reply(self) -> RelayReply | None:
        """The reply whose words ``send_text`` sends here (None: not a reply's hook)."""
        return None

    def _cancel_limit(self) -> int | None:
        """The newest reply ``cancel_reply`` may cancel, by id (None: every reply)."""
        return None

    def _must_close_cycle(self, open_cycle: bool) -> bool:
        """Should ``cancel_reply`` now send the empty ``last: true``?"""
        return open_cycle

    async def cancel_reply(self) -> RelayReply | None:
        """Cancel every reply older than the caller's own, and wait until each has stopped.

        Cancelling closes the model stream inside the reply (``async with`` exits), which
        aborts the HTTP request. A newer reply is never cancelled by an older one, so two
        prompts in quick succession leave the newest one running; and a handler of another
        frame (an interrupt, a key press) cancels only replies that began before its frame.
        (The ``call`` a hook receives knows which: see ``HookCall``.)
        Then the talk cycle is closed with exactly one empty ``last: true`` (Twilio's own
        SDK acknowledges an interrupt this way; a reading of Twilio keeps an interrupted
        cycle open until it comes): always in an interrupt's handler (once per interrupt),
        and on a barge-in when a cancelled reply had sent words but not its ``last: true``.
        No word of a cancelled reply can follow it (``send_text`` keeps them silent).
        Returns the most recent reply that was cancelled.
        """
        limit = self._cancel_limit()
        running = [r for r in self.replies if r.running and (limit is None or r.id <= limit)]
        open_cycle = any(r.frames and r.last_token_at is None for r in running)
        for reply in running:
            reply.state = ReplyState.CANCELLED
            reply.task.cancel()  # type: ignore[union-attr]
        if running:
            await self._wait_for_stop(running)
        if self._must_close_cycle(open_cycle):
            await self._close_talk_cycle()
        return running[-1] if running else None

    async def _close_talk_cycle(self) -> None:
        """Close the talk cycle of a cancelled reply: one empty ``last: true``, no words."""
        if self.closed:
            return
        try:
            await self._deliver(protocol.text("", True), self._frame_reply())
        except (HungUp, ConnectionError):
            log.info("%s: the caller hung up before the talk cycle was closed", self._name)

    async def _wait_for_stop(self, replies: list[RelayReply]) -> None:
        # A handler that ignores the cancel must not stall the call: wait a little,
        # then go on (send_text keeps a cancelled reply silent anyway).
        tasks = [r.task for r in replies if r.task is not None]
        waiting = asyncio.ensure_future(asyncio.wait(tasks, timeout=self.limits.cancel_wait))
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
            lambda call: self.step.run("on_prompt", call, prompt),
            contextvars.copy_context(),
        )

    def start_reply(self, speak: Callable[[CallSession], Awaitable[None]]) -> RelayReply:
        """Start a reply nobody prompted (a resumed answer, "Are you still there?"):
        ``speak(call)`` runs as a reply task, as ``on_prompt`` does, so ``send_text``,
        interrupts and ``cancel_reply`` treat it like any other reply. Its ``prompt`` is ""."""
        return self._launch_reply("", speak, contextvars.Context())

    def _launch_reply(
        self,
        prompt: str,
        run: Callable[[CallSession], Awaitable[None]],
        context: contextvars.Context,
    ) -> RelayReply:
        """Run ``run(call)`` as a new reply's task, ``call`` being the view of the call
        bound to that reply. (``context`` carries only the model client's own settings:
        the speculator, and where the stream reports signs of life.)"""
        loop = asyncio.get_running_loop()
        reply = RelayReply(prompt=prompt, id=len(self.replies) + 1)
        reply._order = next(self._order)
        reply.started = loop.create_future()
        self._barriers.append((reply._order, reply.started))
        self.replies.append(reply)
        reply.alive_at = reply.started_at
        context.run(speculation.current.set, self.speculator)
        context.run(streams.alive_listener.set, _alive_listener(weakref.ref(reply)))
        call = HookCall(self, reply=reply)
        reply.task = loop.create_task(self._run_reply(reply, lambda: run(call)), context=context)
        self._watch(reply)
        self.events.emit(EventKind.REPLY_STARTED, reply=reply)
        return reply

    async def _run_reply(self, reply: RelayReply, run: Callable[[], Awaitable[None]]) -> None:
        previous = self._last_handler
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])  # e.g. on_setup still running
            reply.started.set_result(None)  # type: ignore[union-attr]
            self._forget_barrier(reply.started)
            await run()
        except asyncio.CancelledError:
            if reply.state != ReplyState.TIMED_OUT:
                reply.state = ReplyState.CANCELLED
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # we cancelled it
            await self._apologise(reply, reply.timeout_error)  # type: ignore[arg-type]
        except HungUp:
            reply.state = ReplyState.CANCELLED
            log.info("%s: the caller hung up while the reply was being sent", self._name)
        except Exception as exc:
            # (the handler turned the cancel into another error)
            if reply.state == ReplyState.CANCELLED:
                log.info("%s: a cancelled reply raised %r; nothing more is sent", self._name, exc)
            else:
                await self._apologise(reply, exc)
        else:
            if reply.running:
                reply.state = ReplyState.DONE
        finally:
            if not reply.started.done():  # type: ignore[union-attr]
                reply.started.set_result(None)  # type: ignore[union-attr]
            reply.ended_at = time.monotonic()
            if reply.watchdog is not None:
                reply.watchdog.cancel()  # drops its hold on the reply and the session now
            self._forget_barrier(reply.started)
            self.events.emit(EventKind.REPLY_ENDED, reply=reply)
            self._check_history()

    def _watch(self, reply: RelayReply) -> None:
        """Keep the line from going silent. The voice budget counts silence, not lack of
        text: by ``first_token_timeout`` with no word yet, a model that is alive gets a
        holding line and more time; one that shows no sign of life for ``stall_timeout``
        (or takes past ``longest_wait`` to its first word) is given up on, and the caller
        hears the apology instead of silence. The call goes on."""
        loop = asyncio.get_running_loop()
        limits = self.limits

        def give_up(seconds: float, started: bool) -> None:
            reply.state = ReplyState.TIMED_OUT
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

    async def _hold(self, reply: RelayReply) -> None:
        """Say the holding line while a live model has not said its first word yet. Not
        part of Claude's reply (not in ``reply.sent``, never stored), and never sent once
        an interrupt or a newer prompt is being handled."""
        newer = [b for order, b in self._barriers if order > reply._order and not b.done()]
        if not reply.running or reply.first_token_at is not None or newer or self.closed:
            return
        try:
            # The start of the reply's talk cycle: the answer follows in the same cycle.
            await self._deliver(protocol.text(endings.HOLD_LINE + " ", False), reply)
        except Exception:
            log.info("%s: could not send the holding line; the socket is gone", self._name)
            return
        log.info(
            "%s: Claude is alive but has said nothing for %.1f s; the caller hears %r",
            self._name,
            self.limits.first_token_timeout,
            endings.HOLD_LINE,
        )
        self.events.emit(EventKind.HOLD, reply=reply)

    async def _apologise(self, reply: RelayReply, exc: BaseException) -> None:
        reply.state = ReplyState.FAILED
        reply.error = failures.describe(exc)
        log.warning(
            "%s: the reply to %s failed (%s). The caller hears a short apology and the call "
            "goes on.",
            self._name,
            loggable(reply.prompt),
            reply.error,
            exc_info=not failures.is_model_error(exc),
        )
        self.events.emit(EventKind.ERROR, message=f"reply failed: {reply.error}")
        if self.closed:
            return
        ending = endings.failed(reply.sent)
        try:
            line = endings.spoken_after(reply.sent, ending.say)
            await self._deliver(protocol.text(line, True), reply)
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
        """Send tokens for Twilio to speak; ``last=True`` ends this talk cycle. In a reply's
        hook the tokens are that reply's (``call.reply.sent`` grows), and stay silent once
        it is cancelled."""
        reply = self._sending_reply()
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
        await self._deliver(protocol.text(token, last, **options), reply or self.last_reply)
        if reply is not None and token and self.events:
            self.events.emit(EventKind.TOKEN, reply=reply, token=token)

    async def say(self, line: str) -> None:
        """Say the relay's own ``line`` (a wrap-up, a refusal's line) after Claude's words,
        ending the talk cycle. It is not Claude's: never added to ``reply.sent`` nor
        stored, and after Claude's words it follows a pause, a sentence of its own
        (``endings.spoken_after``). Silent once the reply is cancelled, as ``send_text``
        is."""
        reply = self._sending_reply()
        sent = ""
        if reply is not None:
            if self._barriers:
                await self._wait_for_handlers(reply)
            if not reply.running:
                raise asyncio.CancelledError
            reply.last_sent_at = reply.last_token_at = time.monotonic()
            sent = reply.sent
        frame = protocol.text(endings.spoken_after(sent, line), True)
        await self._deliver(frame, reply or self.last_reply)

    async def _wait_for_handlers(self, reply: RelayReply) -> None:
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
        await self._deliver(frame, self._frame_reply())

    def _frame_reply(self) -> RelayReply | None:
        """The reply a frame sent here goes with: this hook's reply, else the latest."""
        return self._sending_reply() or self.last_reply

    async def _deliver(self, frame: str, reply: RelayReply | None) -> None:
        """Send ``frame``, which goes with ``reply`` (for the live view and recordings)."""
        if self.closed:
            raise HungUp(f"{self._name} has hung up; nothing more can be sent")
        await self._send(frame)
        self.frames.append(("out", frame))
        self.events.emit(EventKind.FRAME_OUT, frame=frame, reply=reply)

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
        self.events.emit(EventKind.FRAME_IN, frame=shown)
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
            self.events.emit(EventKind.CONFIG_UPDATED, settings=message.settings)
        elif isinstance(message, protocol.ErrorMessage):
            log.warning(
                "%s: Twilio reported an error: %s", self._name, loggable(message.description)
            )
            self.events.emit(EventKind.ERROR, message=f"Twilio: {message.description}")
        else:
            log.info("%s: ignored a message of unknown type %s", self._name, loggable(message.type))

    def _reject(self, reason: str) -> None:
        log.warning("%s: %s", self._name, reason)
        self.events.emit(EventKind.ERROR, message=reason)

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
        reply, found = self._cut_reply(interrupt)
        now = time.monotonic()
        if reply is not None and reply.heard is None:
            reply.interrupted_at = now
            reply.heard_ms = interrupt.duration_until_interrupt_ms
            reply.heard = self._heard(reply, interrupt, found)
        # An interrupt stops all speech, so replies queued behind the one cut never played.
        after = reply.id if reply is not None else 0
        for queued in self.replies[after:]:
            if queued.heard is None:
                queued.interrupted_at, queued.heard = now, ""
        self.events.emit(
            EventKind.INTERRUPT, reply=reply, utterance=interrupt.utterance_until_interrupt
        )
        self._run_handler("on_interrupt", Interruption.of(interrupt, reply))

    def _cut_reply(
        self, interrupt: protocol.Interrupt
    ) -> tuple[RelayReply | None, conversation.Alignment | None]:
        """The reply whose speech the interrupt cut: the latest, unless the caller was
        still hearing older speech when it was sent (Twilio queues a reply behind speech
        still playing): an older reply, or the welcome greeting (None), that alone holds
        the utterance's words; for an interrupt with no words, the reply Twilio's
        tokensPlayed reports say is playing, when it sends them. With it, where the words
        were found in that reply, when they were (so they are lined up only once)."""
        latest = self.last_reply
        utterance = interrupt.utterance_until_interrupt
        if latest is None or latest.heard is not None:
            return latest, None  # (an earlier interrupt already stopped all speech)
        if not utterance.strip():
            return self._playing() or latest, None
        duration = interrupt.duration_until_interrupt_ms
        found = conversation.align_heard(latest.sent, utterance, duration, estimate=False)
        if found.placed:
            return latest, found
        for older in reversed(self.replies[-QUEUED_REPLIES - 1 : -1]):
            if older.heard is not None:
                break  # an interrupt cut it: nothing before it was still playing
            if not _may_still_play(older.sent, older.first_token_at, latest.started_at):
                break  # it had finished playing before the latest reply began
            found = conversation.align_heard(older.sent, utterance, duration, estimate=False)
            if found.placed:
                return older, found
        greeting_may_play = _may_still_play(self.greeting, self._opened_at, latest.started_at)
        if greeting_may_play and conversation.locate_heard(self.greeting, utterance) is not None:
            return None, None
        return latest, None

    def _heard(
        self,
        reply: RelayReply,
        interrupt: protocol.Interrupt,
        found: conversation.Alignment | None,
    ) -> str:
        """What the caller heard of ``reply``: Twilio's own played-tokens report when it sent
        one, else the interrupt's utterance lined up with what was sent (``found``, when
        ``_cut_reply`` already lined it up)."""
        if reply.played and reply.sent.startswith(reply.played):
            return reply.played.rstrip()
        if found is not None:
            return found.heard
        return conversation.heard_prefix(
            reply.sent,
            interrupt.utterance_until_interrupt,
            duration_ms=interrupt.duration_until_interrupt_ms,
        )

    def _on_info(self, info: protocol.Info) -> None:
        if info.name == "tokensPlayed" and isinstance(info.value, str):
            self._credit_played(info.value)
        elif info.name == "agentSpeaking":
            self.agent_speaking = info.value == "on"
        self.events.emit(EventKind.INFO, name=info.name, value=info.value)

    def _playing(self) -> RelayReply | None:
        """The reply Twilio's tokensPlayed reports say is playing (the oldest not played
        through), or None without reports."""
        if not self._reports:
            return None
        return next((r for r in self._from_first_unplayed() if playback.still_playing(r)), None)

    def _from_first_unplayed(self) -> list[RelayReply]:
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
            self.events.emit(EventKind.CUT_OFF, reply=reply)

    def _run_handler(self, hook: str, *message: Any) -> None:
        """Run a hook other than on_prompt as a task, after the hooks before it. Its
        ``call`` may cancel only the replies that existed when its frame arrived."""
        if getattr(self.step, hook) is None:
            return
        previous = self._last_handler
        interruption = message[0] if hook == "on_interrupt" else None
        call = HookCall(self, replies_before=len(self.replies), interruption=interruption)
        task = asyncio.get_running_loop().create_task(
            self._handler(hook, previous, call, *message), context=contextvars.Context()
        )
        self._last_handler = task
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        if hook == "on_interrupt":
            self._barriers.append((next(self._order), task))
            task.add_done_callback(self._forget_barrier)

    async def _handler(
        self, hook: str, previous: asyncio.Task[None] | None, call: CallSession, *message: Any
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        try:
            await self.step.run(hook, call, *message)
        except Exception:
            log.exception("%s: the step's %s handler failed; the call goes on", self._name, hook)
            self.events.emit(EventKind.ERROR, message=f"{hook} failed")

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
        self.events.emit(EventKind.CLOSED)
        log.info("%s: closed", self._name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Interruption(protocol.Interrupt):
    """What ``on_interrupt`` receives: Twilio's ``interrupt`` message (its
    ``utterance_until_interrupt`` and ``duration_until_interrupt_ms``) and what the relay
    worked out from it, once, as the frame arrived."""

    reply: RelayReply | None = None
    """The reply whose speech it cut; None when the caller talked over speech the relay
    never sent (Twilio's welcome greeting) or before any reply."""
    heard: str = ""
    """What the caller heard of that reply: a start of ``reply.sent`` in its own spelling
    ("" if nothing, or no reply). The same text as ``reply.heard``."""

    @classmethod
    def of(cls, interrupt: protocol.Interrupt, reply: RelayReply | None) -> Interruption:
        """``interrupt`` with the reply it cut, and what was heard of that reply."""
        return cls(
            utterance_until_interrupt=interrupt.utterance_until_interrupt,
            duration_until_interrupt_ms=interrupt.duration_until_interrupt_ms,
            truncated_from=interrupt.truncated_from,
            reply=reply,
            heard=(reply.heard or "") if reply is not None else "",
        )


class HookCall(CallSession):
    """The ``call`` one hook run receives: the call itself (every attribute read or set is
    the session's, and it compares equal to the session), told what this run is about, so
    nothing depends on which task runs.

    - In ``on_prompt`` (or ``start_reply``'s function), bound to the reply it produces:
      ``call.reply`` is that reply, ``send_text`` sends its words, and ``cancel_reply``
      cancels only older replies.
    - In another hook, bound to the moment its frame arrived: ``cancel_reply`` cancels
      only replies begun before it, and in ``on_interrupt`` closes the talk cycle once
      per interrupt.
    """

    _session: CallSession
    _own_reply: RelayReply | None
    _replies_before: int | None
    _interruption: Interruption | None
    _cycle_closed: bool

    def __init__(
        self,
        session: CallSession,
        *,
        reply: RelayReply | None = None,
        replies_before: int | None = None,
        interruption: Interruption | None = None,
    ) -> None:
        # Not CallSession.__init__: this view holds no state of the call's own.
        object.__setattr__(self, "_session", session.session)
        object.__setattr__(self, "_own_reply", reply)
        object.__setattr__(self, "_replies_before", replies_before)
        object.__setattr__(self, "_interruption", interruption)
        object.__setattr__(self, "_cycle_closed", False)

    def __getattr__(self, name: str) -> Any:
        if name == "_session":  # (not set yet: a copy being made)
            raise AttributeError(name)
        return getattr(self._session, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._session, name, value)

    def __repr__(self) -> str:
        return repr(self._session)

    # A view is its call: a step may key its own per-call state by ``call`` in any hook.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallSession) and other.session is self._session

    def __hash__(self) -> int:
        return hash(self._session)

    @property
    def session(self) -> CallSession:
        return self._session

    @property
    def reply(self) -> RelayReply | None:
        return self._own_reply or self._session.last_reply

    @property
    def heard(self) -> str:
        if self._interruption is not None:
            return self._interruption.heard
        return self._session._heard_before(self._replies_before)

    def _sending_reply(self) -> RelayReply | None:
        return self._own_reply

    def _cancel_limit(self) -> int | None:
        if self._own_reply is not None:
            return self._own_reply.id - 1
        return self._replies_before

    def _must_close_cycle(self, open_cycle: bool) -> bool:
        if self._interruption is None:
            return open_cycle
        first = not self._cycle_closed
        object.__setattr__(self, "_cycle_closed", True)
        return first
