"""One call's state machine: history, the reply being spoken, events and timings.

No socket code lives here: the server hands each session a ``send`` coroutine
function and feeds it frames with ``handle_frame``. That keeps the session
testable alone, and the server a thin shell.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2

from relaylab import protocol
from relaylab.conversation import Conversation, heard_prefix
from relaylab.llm import LLM
from relaylab.steps import run_hook, step_name

log = logging.getLogger("relaylab.session")

APOLOGY = "Sorry, I'm having trouble answering right now. Could you say that again?"
CANCEL_WAIT = 1.0  # seconds a cancelled reply gets to stop before the relay goes on
FRAME_HISTORY = 40

Send = Callable[[str], Awaitable[None]]
Listener = Callable[["Event"], None]

_current_reply: contextvars.ContextVar[ReplyTask | None] = contextvars.ContextVar(
    "relaylab_current_reply", default=None
)


class HungUp(ConnectionError):
    """The caller's socket closed while the relay was sending."""


@dataclass
class Event:
    """Something that happened on a call, for widgets, logs and tests."""

    kind: str  # frame_in, frame_out, reply_started, token, reply_ended, interrupt, error, closed
    session: CallSession
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class ReplyTask:
    """One prompt's reply: the task producing it and everything it has sent."""

    prompt: str
    id: int  # 1 for the call's first reply, 2 for the next, ...
    sent: str = ""
    state: str = "running"  # running, done, cancelled, failed
    heard: str | None = None  # set when the caller interrupts this reply
    error: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    last_token_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def interrupted(self) -> bool:
        return self.heard is not None

    @property
    def timings(self) -> dict[str, float]:
        """Milliseconds from the prompt to the first and to the last token sent."""
        result = {}
        if self.first_token_at is not None:
            result["first_token_ms"] = (self.first_token_at - self.started_at) * 1000
        if self.last_token_at is not None:
            result["last_token_ms"] = (self.last_token_at - self.started_at) * 1000
        return result


class CallSession:
    """What a step's handlers receive as ``call``: one phone call, from setup to hang-up."""

    def __init__(
        self,
        send: Send,
        *,
        step: object,
        llm: LLM,
        frames_waiting: Callable[[], int] = lambda: 0,
    ) -> None:
        self._send = send
        self._frames_waiting = frames_waiting
        self.step = step
        self.claude = llm.client
        self.model = llm.model
        self.system = llm.system
        self.max_tokens = llm.max_tokens
        self.call_sid = ""
        self.setup: protocol.Setup | None = None
        self.conversation = Conversation()
        self.replies: list[ReplyTask] = []
        self.frames: deque[tuple[str, str]] = deque(maxlen=FRAME_HISTORY)
        self.frames_handled = 0  # inbound frames fully handled (a simulated call waits on it)
        self.closed = False
        self._listeners: list[Listener] = []

    def __repr__(self) -> str:
        return f"<CallSession {self.call_sid or '(no setup yet)'} step={step_name(self.step)}>"

    # -- events ------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on the relay's loop for every event; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, kind: str, **data: Any) -> None:
        if not self._listeners:
            return  # nobody watching (relaylab serve): no Event per token and frame
        event = Event(kind, self, data)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: an event listener failed on %r", self._name, kind)

    @property
    def _name(self) -> str:
        return f"Call {self.call_sid}" if self.call_sid else "A call (before setup)"

    # -- replies -----------------------------------------------------------------

    @property
    def reply(self) -> ReplyTask | None:
        """The reply the running handler belongs to, else the latest reply of the call."""
        return _current_reply.get() or self.last_reply

    @property
    def last_reply(self) -> ReplyTask | None:
        return self.replies[-1] if self.replies else None

    @property
    def timings(self) -> dict[str, float]:
        """Timings of the latest reply, in milliseconds."""
        return self.last_reply.timings if self.last_reply else {}

    async def cancel_reply(self) -> ReplyTask | None:
        """Cancel every reply older than the caller's own, and wait until each has stopped.

        Cancelling closes the model stream inside the reply (``async with`` exits), which
        aborts the HTTP request. A newer reply is never cancelled by an older one, so two
        prompts in quick succession leave the newest one running. Returns the most recent
        reply that was cancelled.
        """
        current = _current_reply.get()
        running = [
            r
            for r in self.replies
            if r.state == "running" and r.task and (current is None or r.id < current.id)
        ]
        for reply in running:
            reply.state = "cancelled"
            reply.task.cancel()  # type: ignore[union-attr]
        if running:
            await self._wait_for_stop(running)
        return running[-1] if running else None

    async def _wait_for_stop(self, replies: list[ReplyTask]) -> None:
        # A handler that ignores the cancel must not stall the socket: wait a little,
        # then go on (send_text keeps a cancelled reply silent anyway).
        waiting = asyncio.ensure_future(
            asyncio.wait([r.task for r in replies], timeout=CANCEL_WAIT)  # type: ignore[misc]
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
                CANCEL_WAIT,
            )

    def _start_reply(self, prompt: protocol.Prompt) -> None:
        reply = ReplyTask(prompt=prompt.voice_prompt, id=len(self.replies) + 1)
        self.replies.append(reply)
        context = contextvars.copy_context()
        context.run(_current_reply.set, reply)
        reply.task = asyncio.get_running_loop().create_task(
            self._run_reply(reply, prompt), context=context
        )
        self._emit("reply_started", reply=reply)

    async def _run_reply(self, reply: ReplyTask, prompt: protocol.Prompt) -> None:
        try:
            await run_hook(self.step, "on_prompt", self, prompt)
        except asyncio.CancelledError:
            reply.state = "cancelled"
            raise
        except HungUp:
            reply.state = "cancelled"
            log.info("%s: the caller hung up while the reply was being sent", self._name)
        except Exception as exc:
            if reply.state == "cancelled":  # the handler turned the cancel into another error
                log.info("%s: a cancelled reply raised %r; nothing more is sent", self._name, exc)
            else:
                await self._apologise(reply, exc)
        else:
            if reply.state == "running":
                reply.state = "done"
        finally:
            self._emit("reply_ended", reply=reply)
            if self.conversation and (problems := self.conversation.problems()):
                log.warning(
                    "%s: the Messages API would reject this history: %s",
                    self._name,
                    "; ".join(problems),
                )

    async def _apologise(self, reply: ReplyTask, exc: Exception) -> None:
        reply.state = "failed"
        reply.error = describe_error(exc)
        log.warning(
            "%s: the reply to %r failed (%s). The caller hears a short apology and the call "
            "goes on.",
            self._name,
            reply.prompt,
            reply.error,
            exc_info=not _is_model_error(exc),
        )
        self._emit("error", message=f"reply failed: {reply.error}")
        if self.closed:
            return
        # After partial tokens, a space keeps the voice from running two words together.
        apology = f" {APOLOGY}" if reply.sent and not reply.sent[-1].isspace() else APOLOGY
        try:
            await self.send_text(apology, last=True)
        except Exception:
            log.warning("%s: could not send the apology; the socket is gone", self._name)
        self.conversation.add_assistant(APOLOGY)

    # -- sending -----------------------------------------------------------------

    async def send_text(self, token: str, last: bool = False, **options: Any) -> None:
        """Send tokens for Twilio to speak; ``last=True`` ends this talk cycle."""
        reply = _current_reply.get()
        if reply is not None and self._frames_waiting():
            # A frame has been read but not handled yet (an interrupt?): let the read
            # loop run first, so a token never leaves after an interrupt it could see.
            # (A handler busy awaiting inside a hook can still delay that read.)
            await asyncio.sleep(0)
        if reply is not None and reply.state == "cancelled":
            # A cancelled reply must stay silent even if a handler swallowed the cancel.
            log.debug("%s: dropped %r from a cancelled reply", self._name, token)
            raise asyncio.CancelledError
        frame = protocol.text(token, last, **options)
        if reply is not None:
            # Recorded before the await: once send() starts, the frame counts as sent even
            # if the reply is cancelled while the socket drains.
            now = time.monotonic()
            if token:
                reply.sent += token
                reply.first_token_at = reply.first_token_at or now
            if last:
                reply.last_token_at = now
        await self.send(frame)
        if reply is not None and token:
            self._emit("token", reply=reply, token=token)

    async def end(self, handoff_data: str | dict[str, Any] | None = None) -> None:
        """End the ConversationRelay session; Twilio then requests the ``<Connect action>`` URL."""
        await self.send(protocol.end(handoff_data))

    async def send(self, frame: str) -> None:
        """Send one frame built with relaylab.protocol (text, play, sendDigits, language, end)."""
        if self.closed:
            raise HungUp(f"{self._name} has hung up; nothing more can be sent")
        await self._send(frame)
        self.frames.append(("out", frame))
        self._emit("frame_out", frame=frame)

    # -- receiving ---------------------------------------------------------------

    async def handle_frame(self, frame: str | bytes) -> None:
        """Handle one inbound frame. Bad input is logged and dropped, never raised."""
        try:
            await self._handle_frame(frame)
        finally:
            self.frames_handled += 1

    async def _handle_frame(self, frame: str | bytes) -> None:
        shown = frame if isinstance(frame, str) else f"<binary frame, {len(frame)} bytes>"
        self.frames.append(("in", shown[:2000]))
        self._emit("frame_in", frame=shown)
        try:
            message = protocol.parse(frame)
        except protocol.ProtocolError as exc:
            self._reject(f"ignored a frame: {exc}")
            return
        if isinstance(message, protocol.Setup):
            await self._on_setup(message)
        elif self.setup is None:
            self._reject(f"ignored a {message.type!r} message: it arrived before 'setup'")
        elif isinstance(message, protocol.Prompt):
            if not message.voice_prompt.strip():
                self._reject("ignored a prompt with no words in it")
            elif message.last:
                self._start_reply(message)
        elif isinstance(message, protocol.Interrupt):
            await self._on_interrupt(message)
        elif isinstance(message, protocol.Dtmf):
            await self._run_hook_safely("on_dtmf", message)
        elif isinstance(message, protocol.ErrorMessage):
            log.warning("%s: Twilio reported an error: %s", self._name, message.description)
            self._emit("error", message=f"Twilio: {message.description}")
        elif isinstance(message, protocol.Unknown):
            log.info("%s: ignored a message of unknown type %r", self._name, message.type)

    def _reject(self, reason: str) -> None:
        log.warning("%s: %s", self._name, reason)
        self._emit("error", message=reason)

    async def _on_setup(self, setup: protocol.Setup) -> None:
        if self.setup is not None:
            self._reject("ignored a second 'setup' message")
            return
        self.setup = setup
        self.call_sid = setup.call_sid or setup.session_id or f"call-{id(self):x}"
        if not setup.call_sid:
            log.warning(
                "%s: setup has no callSid; using %r to name the call", self._name, self.call_sid
            )
        log.info("%s: connected (step %s)", self._name, step_name(self.step))
        await self._run_hook_safely("on_setup", setup)

    async def _on_interrupt(self, interrupt: protocol.Interrupt) -> None:
        reply = self.last_reply
        if reply is not None:
            reply.heard = heard_prefix(reply.sent, interrupt.utterance_until_interrupt)
        self._emit("interrupt", reply=reply, utterance=interrupt.utterance_until_interrupt)
        await self._run_hook_safely("on_interrupt", interrupt)

    async def _run_hook_safely(self, hook: str, *args: Any) -> None:
        try:
            await run_hook(self.step, hook, self, *args)
        except Exception:
            log.exception("%s: the step's %s handler failed; the call goes on", self._name, hook)
            self._emit("error", message=f"{hook} failed")

    async def close(self) -> None:
        """The socket is gone: stop any reply and let the step clean up."""
        if self.closed:
            return
        self.closed = True
        await self.cancel_reply()
        await self._run_hook_safely("on_close")
        self._emit("closed")
        log.info("%s: closed", self._name)


def _is_model_error(exc: Exception) -> bool:
    return isinstance(exc, anthropic.APIError)


def describe_error(exc: Exception) -> str:
    """A short, plain description of why a reply failed."""
    if isinstance(exc, anthropic.APIStatusError):
        kind = exc.body.get("error", {}).get("type") if isinstance(exc.body, dict) else None
        return f"Claude answered HTTP {exc.status_code}" + (f" {kind}" if kind else "")
    if isinstance(exc, anthropic.APITimeoutError):
        return "Claude did not answer in time"
    if isinstance(exc, anthropic.APIConnectionError):
        return "could not reach Claude (the connection failed)"
    if isinstance(exc, httpx2.TransportError):
        return f"the connection to Claude was cut mid-reply ({exc})"
    return f"{type(exc).__name__}: {exc}"
