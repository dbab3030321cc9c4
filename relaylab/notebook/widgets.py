"""Live views of a Lab's calls for Jupyter: a view, the caller's controls, a phone, tables.

These are views only: they read what the relay's CallSession records (its replies,
what each reply sent, what the caller heard, the last frames, timings, the tool calls
of the tools step) and draw it. No conversation logic lives here.

- ``ConversationView`` (``lab.view()``): the newest call, live.
- ``CallerPanel``: a Say box, Say, Interrupt and a key pad that act as the caller.
- ``Phone``: the two together, so you watch the reply while pressing Interrupt.
- ``history_table``, ``reply_html``, ``spoken_html``: static HTML for printed outputs.
- ``freeze_widget_outputs``: turns a saved notebook's live widget outputs into static
  HTML of what they showed last (what GitHub and nbconvert can display).

Threading: session events arrive on the lab's loop thread. The view never draws on
each token; it marks itself dirty and draws from a timer on that loop, at most
``max_rate`` times a second, by setting widget values (comm messages, not cell
output). A reply starting or ending, an interrupt, a tool call starting or ending and a
hang-up draw at once. Nothing here prints or writes to an Output widget from a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import html
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from IPython.display import HTML

from relaylab.core import protocol
from relaylab.notebook.loop import LoopThread
from relaylab.relay.events import Event, EventKind
from relaylab.relay.session import ReplyState

log = logging.getLogger("relaylab.notebook.widgets")

MAX_RATE = 15.0  # draws per second, at most, while tokens stream
FRAMES_SHOWN = 6
FRAME_CHARS = 110
KEYS = "123456789*0#"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_URGENT = frozenset(
    {
        EventKind.REPLY_STARTED,
        EventKind.REPLY_ENDED,
        EventKind.INTERRUPT,
        EventKind.TOOL_STARTED,
        EventKind.TOOL_ENDED,
        EventKind.CLOSED,
    }
)

_STYLE = """<style>
.rl-view {font-family: system-ui, sans-serif; font-size: 13px; line-height: 1.45;}
.rl-head {color: #555; margin-bottom: 4px;}
.rl-stopped {color: #b3261e; font-weight: 600;}
.rl-turn {margin: 3px 0; padding: 4px 8px; border-radius: 6px; max-width: 58em;}
.rl-user {background: #eef3fb;}
.rl-assistant {background: #f3f7ee;}
.rl-who {font-weight: 600; margin-right: 6px;}
.rl-meta {color: #777; font-size: 11px;}
.rl-tool {color: #5b4a00; font-size: 12px; margin: 2px 0;}
.rl-view del {color: #b3261e; text-decoration: line-through;}
.rl-frames {font-family: monospace; font-size: 11px; color: #444; white-space: pre;
  overflow-x: auto; margin: 0;}
.rl-lab-stopped .jupyter-widgets-disconnected::before,
.rl-lab-stopped.jupyter-widgets-disconnected::before {content: none; display: none;}
.rl-live.jupyter-widgets-disconnected .jupyter-widgets-disconnected::before {display: none;}
.rl-live.jupyter-widgets-disconnected:not(.rl-lab-stopped)::before {
  content: "The lab has stopped: its kernel restarted or shut down. Run rl.start again.";
  display: block; font: 600 13px system-ui, sans-serif; color: #b3261e; padding: 2px 0 4px;}
.rl-live.jupyter-widgets-disconnected:not(.rl-lab-stopped) .rl-state {display: none;}
.rl-live.jupyter-widgets-disconnected button, .rl-live.jupyter-widgets-disconnected input {
  pointer-events: none; opacity: 0.45;}
</style>"""
_LIVE_CLASS = "rl-live"  # the outermost box of a view, panel or phone: when the kernel is
# gone (a restart drops the kernel's last messages), the front end marks every widget
# disconnected and this box's CSS says the lab has stopped instead of the stale state
_STOPPED_CLASS = "rl-lab-stopped"  # once the lab stopped, the view says so itself: no
# broken-link icon on each control when the kernel restarts (see _STYLE)

_LEFT = "style='text-align: left'"  # JupyterLab right-aligns table cells by default
_STOPPED = "the lab has stopped: run the cell that starts it (rl.start) again to make calls"


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.2f} s"


# -- static helpers (also used by the notebooks for outputs that read well on GitHub) ----


def spoken_html(sent: str, heard: str | None) -> str:
    """``sent`` as HTML: the heard part plain, the rest struck through (<del>).

    ``heard`` is what the relay or the caller already worked out (the relay's
    ``RelayReply.heard``, the caller's ``Reply.heard``): a prefix of ``sent``. None means
    the caller heard all of it (or will: the reply was not interrupted).
    """
    if heard is None:
        return _esc(sent)
    unheard = sent[len(heard) :] if sent.startswith(heard) else sent
    kept = _esc(heard) if sent.startswith(heard) else ""
    return kept + (f"<del>{_esc(unheard)}</del>" if unheard.strip() else "")


def spoken_text(sent: str, heard: str | None) -> str:
    """``spoken_html`` as plain text: the unheard part in ``[not heard: ...]``."""
    if heard is None or not sent.startswith(heard):
        return sent if heard is None else f"[not heard: {sent.strip()}]"
    unheard = sent[len(heard) :].strip()
    return heard + (f" [not heard: {unheard}]" if unheard else "")


def reply_html(reply: Any) -> HTML:
    """A caller-side Reply (from ``call.say``) as heard text plus struck-through unheard text."""
    heard = reply.heard if reply.interrupted else None
    body = spoken_html(reply.text, heard)
    note = " <i>(interrupted)</i>" if reply.interrupted else ""
    return HTML(f"<div class='rl-view'><b>caller heard:</b> {body}{note}</div>")


def history_table(
    history: Sequence[dict[str, Any]],
    *,
    heard: Any = None,
    before: Sequence[dict[str, Any]] | None = None,
    title: str | None = None,
) -> HTML:
    """The relay's history as an HTML table, one row a turn.

    ``heard``: a caller-side Reply; in the assistant turn answering its prompt, any text
    past what the caller heard is struck through ("stored, never heard").
    ``before``: an earlier snapshot; new turns are marked <ins>, and text that was cut
    from a turn since then is shown struck through.
    """
    rows = []
    for index, turn in enumerate(history):
        role, content = turn.get("role", "?"), str(turn.get("content", ""))
        cell = _esc(content)
        note = ""
        if before is not None:
            old = before[index] if index < len(before) else None
            if old is None:
                cell, note = f"<ins>{cell}</ins>", "new"
            elif old.get("content") != content and str(old.get("content", "")).startswith(content):
                cell, note = spoken_html(str(old["content"]), content), "cut"
            elif old.get("content") != content:
                note = "changed"
        if _stores_unheard(history, index, heard):
            cell, note = spoken_html(content, heard.heard), "never heard"
        rows.append(
            f"<tr><td>{index}</td><td>{role}</td><td {_LEFT}>{cell}</td><td><i>{note}</i></td></tr>"
        )
    if before is not None:
        for index in range(len(history), len(before)):
            old = before[index]
            rows.append(
                f"<tr><td>{index}</td><td>{old.get('role')}</td>"
                f"<td {_LEFT}><del>{_esc(str(old.get('content', '')))}</del></td>"
                "<td><i>dropped</i></td></tr>"
            )
    caption = f"<caption style='text-align:left'><b>{_esc(title)}</b></caption>" if title else ""
    table = (
        f"<table class='rl-table'>{caption}<tr><th>#</th><th>role</th><th {_LEFT}>content</th>"
        f"<th></th></tr>{''.join(rows)}</table>"
    )
    return HTML(table)


def _stores_unheard(history: Sequence[dict[str, Any]], index: int, reply: Any) -> bool:
    """Is history[index] the answer to ``reply``'s prompt, holding more than was heard?"""
    if reply is None or not reply.interrupted or history[index].get("role") != "assistant":
        return False
    previous = history[index - 1] if index > 0 else {}
    if previous.get("role") != "user" or reply.prompt not in str(previous.get("content", "")):
        return False
    content = str(history[index].get("content", ""))
    return content.startswith(reply.heard) and content != reply.heard


def frames_text(frames: Sequence[tuple[str, str]], limit: int = FRAMES_SHOWN) -> str:
    """The last frames as plain lines ("in"/"out" plus compact JSON), for printing."""
    lines = []
    for direction, frame in list(frames)[-limit:]:
        with contextlib.suppress(ValueError):
            frame = json.dumps(json.loads(frame), separators=(",", ":"))
        lines.append(f"{direction:>3}: {frame}")
    return "\n".join(lines)


# -- one relay-side reply, in words ------------------------------------------------------------


@dataclass(frozen=True)
class ReplyLines:
    """What the view says about one of the relay's replies (a ``RelayReply``)."""

    prompt: str
    sent: str
    heard: str | None  # a prefix of sent, or None when nothing is known to be unheard
    placeholder: str  # shown when nothing was sent yet
    streaming: bool
    notes: tuple[str, ...]
    tools: tuple[str, ...] = ()  # one line per tool call the reply ran

    @classmethod
    def of(
        cls,
        reply: Any,
        speech_ms: float | None = None,
        tools: Sequence[Any] = (),
        clock_speed: float = 1.0,
    ) -> ReplyLines:
        """Describe ``reply``; ``speech_ms`` is the interrupt's durationUntilInterruptMs,
        ``tools`` the tool calls it ran (``relaylab.steps.tools.ToolRun``), ``clock_speed``
        how much faster than real time the simulated voice spoke (a lab's clock_speed)."""
        heard = _heard(reply)
        running = reply.state == ReplyState.RUNNING
        placeholder = "waiting for Claude's first word…" if running else "(nothing sent)"
        return cls(
            prompt=reply.prompt,
            sent=reply.sent,
            heard=heard,
            placeholder=placeholder,
            streaming=running and bool(reply.sent),
            notes=tuple(_notes(reply, heard, speech_ms, clock_speed)),
            tools=tuple(tool_line(run) for run in tools),
        )

    def html(self) -> str:
        caller = (
            f"<div class='rl-turn rl-user'><span class='rl-who'>caller:</span> "
            f"{_esc(self.prompt)}</div>"
        )
        if self.sent:
            body = spoken_html(self.sent, self.heard) + (" ▌" if self.streaming else "")
        else:
            body = f"<i class='rl-meta'>{_esc(self.placeholder)}</i>"
        tools = "".join(f"<div class='rl-tool'>tool: {_esc(line)}</div>" for line in self.tools)
        meta = f"<div class='rl-meta'>{' · '.join(_esc(n) for n in self.notes)}</div>"
        return (
            f"{caller}<div class='rl-turn rl-assistant'><span class='rl-who'>claude:</span> "
            f"{body}{tools}{meta}</div>"
        )

    def text(self) -> str:
        body = spoken_text(self.sent, self.heard) if self.sent else self.placeholder
        if self.streaming:
            body += " …"
        tools = "".join(f"\n        tool: {line}" for line in self.tools)
        return f"caller: {self.prompt}\nclaude: {body}{tools}\n        ({'; '.join(self.notes)})"


def tool_line(run: Any) -> str:
    """One tool call in words: name, input, state and time, and what an interrupt did.

    ``run`` is a ``relaylab.steps.tools.ToolRun`` (name, input, state, ms, interrupted,
    side_effects)."""
    call = f"{run.name} {json.dumps(run.input, ensure_ascii=False)}"
    took = _seconds(run.ms)
    state = {
        "running": f"running, {took} so far",
        "done": f"done in {took}",
        "failed": f"failed after {took}",
        "cancelled": f"cancelled after {took}",
    }.get(run.state, f"{run.state} after {took}")
    line = f"{call}: {state}"
    if run.interrupted:
        if getattr(run, "side_effects", False):
            line += "; the caller interrupted, but it changes things, so it was not stopped"
        else:
            line += "; the caller interrupted while it ran"
    return line


def _heard(reply: Any) -> str | None:
    """What the caller heard of a relay-side reply, when less than all of it."""
    if reply.heard is not None:
        return reply.heard
    played = getattr(reply, "played", "")
    if reply.state != ReplyState.RUNNING and played and reply.sent.startswith(played):
        return played.rstrip()  # Twilio's own report (tokensPlayed) of what it played
    return None


def _notes(
    reply: Any, heard: str | None, speech_ms: float | None, clock_speed: float = 1.0
) -> list[str]:
    timings = reply.timings
    if (
        reply.state == ReplyState.RUNNING
        and not reply.sent
        and not reply.frames
        and not reply.interrupted
    ):
        return ["waiting for Claude: nothing sent yet"]  # a basic step waits for the whole reply
    notes = [
        {
            ReplyState.RUNNING: "streaming",
            ReplyState.DONE: "done",
            ReplyState.CANCELLED: "stopped",
            ReplyState.FAILED: "failed",
            ReplyState.TIMED_OUT: "timed out",
        }.get(reply.state, str(reply.state))
    ]
    if getattr(reply, "cut_off", False):  # preemptible: no interrupt, Twilio's reports say
        words = _plural(len(reply.heard.split()), "word")
        notes.append(f"cut off by the next reply's speech after {words}")
    elif reply.interrupted:
        words = _plural(len(reply.heard.split()), "word")
        at = timings.get("interrupt_ms")
        when = f" at {_seconds(at)}" if at is not None else ""
        notes.append(f"the caller cut in{when}, having heard {words}")
        if speech_ms is not None:
            notes.append(_speech_played(speech_ms, clock_speed))
        last = timings.get("last_token_ms")
        if reply.state == ReplyState.RUNNING:
            notes.append(
                "still streaming after the interrupt" if reply.sent else "Claude is still writing"
            )
        elif at is not None and last is not None and last > at:
            notes.append(f"the relay kept sending for {_seconds(last - at)} after the interrupt")
    elif reply.state == ReplyState.CANCELLED:
        notes.append("cancelled by the caller's next prompt")
        if heard is None:
            notes.append("no interrupt came, so what was heard is unknown")
    played = getattr(reply, "played", "")
    if played:
        notes.append(f"Twilio reports {_plural(len(played.split()), 'word')} played")
    if reply.error:
        notes.append(reply.error)
    if (sent_words := _words_sent(reply)) is not None:
        notes.append(sent_words)
    notes.append(_plural(reply.frames, "text frame"))
    return notes


def _speech_played(speech_ms: float, clock_speed: float) -> str:
    """Twilio's durationUntilInterruptMs in words. It is speech time: a simulated voice
    running at ``clock_speed`` plays it faster than the wall clock the other notes use."""
    said = f"{_seconds(speech_ms)} of speech played before the interrupt"
    if clock_speed == 1.0:
        return said
    return f"{said}, at {clock_speed:g}x speed ({_seconds(speech_ms / clock_speed)} of real time)"


def _words_sent(reply: Any) -> str | None:
    """When the reply's words went out, in seconds after the prompt reached the relay."""
    timings = reply.timings
    first, last = timings.get("first_token_ms"), timings.get("last_token_ms")
    ended = timings.get("ended_ms")
    if first is None:
        return None if reply.state == ReplyState.RUNNING else "no words sent"
    if reply.state == ReplyState.DONE and last is not None:
        if last - first < 1.0:
            return f"the whole reply sent at once, {_seconds(first)} after the prompt"
        return f"words sent from {_seconds(first)} to {_seconds(last)} after the prompt"
    said = f"first word sent {_seconds(first)} after the prompt"
    if reply.state != ReplyState.RUNNING and ended is not None:
        said += f", stopped at {_seconds(ended)}"
    return said


# -- the live view --------------------------------------------------------------------------


class ConversationView:
    """A live view of the lab's newest call: turns, tokens as they arrive, heard vs
    unheard text, the last frames in and out, and timings.

    ``lab.view()`` builds one; display it by leaving it last in a cell. It follows each
    new call the relay accepts; ``lab.view(call=call)`` stays on one call from
    ``lab.call()`` instead, so a saved notebook shows that call where the lesson talks
    about it. ``detach()`` (called by ``lab.stop()``) stops updates and says in the view
    that the lab has stopped. ``replies_shown`` limits the view to the newest replies
    (None: all of them).
    """

    def __init__(
        self,
        lab: Any,
        *,
        call: Any = None,
        max_rate: float = MAX_RATE,
        replies_shown: int | None = None,
    ) -> None:
        self.lab = lab
        self.pinned: Any = _session_of(lab, call) if call is not None else None
        # The simulated voice's speed, to put Twilio's speech time in real time.
        self.clock_speed = float(
            getattr(call, "clock_speed", None) or getattr(lab, "clock_speed", None) or 1.0
        )
        self.min_interval = 1.0 / max_rate
        self.replies_shown = replies_shown
        self.renders = 0  # how many times the view has drawn itself
        self.session: Any = None
        self.stopped = False
        self.detach_listeners: list[Callable[[], None]] = []
        self._loop_thread: LoopThread = lab.loop
        self._unsubscribe: Callable[[], None] | None = None
        self._timer: asyncio.Handle | None = None
        self._last_render = 0.0
        self._detached = False
        self._speech_ms: dict[int, float] = {}  # reply id -> durationUntilInterruptMs
        self._tools: dict[int, list[Any]] = {}  # reply id -> its tool calls (ToolRun)
        self._pending_speech_ms: float | None = None
        self._text = ""
        self._head = widgets.HTML()
        self._turns = widgets.HTML()
        self._frames = widgets.HTML()
        frames_box = widgets.Accordion(children=[self._frames], titles=("Last frames in and out",))
        self.widget = widgets.VBox([self._head, self._turns, frames_box])
        self.widget.add_class(_LIVE_CLASS)
        self._loop_thread.run(self._attach(), timeout=10)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # The live widget, plus what it shows now for front ends that cannot run it.
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.text
        bundle["text/html"] = self.snapshot().data
        return bundle

    @property
    def html(self) -> str:
        """The transcript as last drawn (for tests and snapshots)."""
        return self._turns.value

    @property
    def text(self) -> str:
        """The view as last drawn, as plain text."""
        return self._text

    def snapshot(self) -> HTML:
        """The view as it is now, as static HTML (reads well where widgets don't run)."""
        return HTML(f"{self._head.value}{self._turns.value}")

    def refresh(self) -> None:
        """Draw again now (e.g. after changing ``replies_shown``)."""
        if self._loop_thread.running and not self._loop_thread.in_loop_thread():
            self._loop_thread.run(self._refresh(), timeout=10)

    async def _refresh(self) -> None:
        self._render()

    # -- binding (all on the lab's loop) ------------------------------------------------

    async def _attach(self) -> None:
        if self.pinned is not None:
            self._bind(self.pinned)
        else:
            self.lab.server.session_listeners.append(self._on_session)
            if self.lab.server.sessions:
                self._bind(self.lab.server.sessions[-1])
        self._render()

    def _on_session(self, session: Any) -> None:
        if not self._detached:
            self._bind(session)
            self._draw_soon(urgent=True)

    def _bind(self, session: Any) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.session = session
        self._speech_ms = {}
        self._tools = _tool_runs_so_far(session)
        self._unsubscribe = session.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        reply = event.reply
        if event.kind is EventKind.FRAME_IN and '"interrupt"' in event.frame:
            self._pending_speech_ms = _speech_ms(event.frame)
        elif event.kind is EventKind.INTERRUPT:
            if reply is not None and self._pending_speech_ms is not None:
                self._speech_ms.setdefault(reply.id, self._pending_speech_ms)
            self._pending_speech_ms = None
        elif event.kind is EventKind.TOOL_STARTED:
            run = event.run
            if reply is not None and run is not None:
                runs = self._tools.setdefault(reply.id, [])
                if not any(known is run for known in runs):
                    runs.append(run)
        self._draw_soon(urgent=event.kind in _URGENT)

    def _draw_soon(self, urgent: bool = False) -> None:
        """Draw next round for a change of state, else within ``min_interval`` (tokens,
        frames)."""
        if self._detached:
            return
        if urgent and self._timer is not None:
            self._timer.cancel()
        elif self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay = 0.0 if urgent else self._last_render + self.min_interval - time.monotonic()
        # Drawn in an empty context: the session's tasks carry the context of the cell that
        # started the Lab, and ipykernel would label the widget updates with that old cell
        # (nbconvert then leaves them out of the saved widget state). With no parent of its
        # own, an update is labelled with the cell running now.
        self._timer = loop.call_later(max(0.0, delay), self._render, context=contextvars.Context())

    def detach(self) -> None:
        """Stop following the lab: no more updates, and the view says the lab stopped.
        Safe to call twice."""
        if self._detached:
            return
        if self._loop_thread.running and not self._loop_thread.in_loop_thread():
            with contextlib.suppress(Exception):
                self._loop_thread.run(self._detach(), timeout=5)
        if not self._detached:  # the loop is gone (or this is its thread): do it here
            self._detach_now()

    async def _detach(self) -> None:
        self._detach_now()

    def _detach_now(self) -> None:
        self.stopped = True
        self._render()
        self.widget.add_class(_STOPPED_CLASS)
        self._detached = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with contextlib.suppress(ValueError):
            self.lab.server.session_listeners.remove(self._on_session)
        for listener in list(self.detach_listeners):
            try:
                listener()
            except Exception:
                log.exception("a listener for the view's detach failed")

    # -- drawing ------------------------------------------------------------------------

    def _render(self) -> None:
        self._timer = None
        if self._detached:
            return
        self._last_render = time.monotonic()
        self.renders += 1
        head, turns, frames, text = self._draw()
        self._text = text
        for widget, value in ((self._head, head), (self._turns, turns), (self._frames, frames)):
            if widget.value != value:
                widget.value = value

    def _state(self) -> str:
        if self.stopped:
            return _STOPPED
        if self.session is None:
            return "waiting for a call"
        return "call ended" if self.session.closed else "on a call"

    def _draw(self) -> tuple[str, str, str, str]:
        session, state = self.session, self._state()
        step = self.lab.server.step.name
        shown_state = (
            f"<span class='rl-stopped'>{_esc(state)}</span>"
            if self.stopped
            else f"<span class='rl-state'>{_esc(state)}</span>"
        )
        head = (
            f"{_STYLE}<div class='rl-view rl-head'>Relay step <b>{_esc(step)}</b>, "
            f"Claude: {_esc(self.lab.backend.kind)} · {shown_state}</div>"
        )
        heading = f"Relay step {step}, Claude: {self.lab.backend.kind} · {state}"
        if session is None:
            return head, "<div class='rl-view rl-meta'>No call yet.</div>", "", heading
        replies = list(session.replies)
        hidden = 0
        if self.replies_shown is not None and len(replies) > self.replies_shown:
            hidden = len(replies) - self.replies_shown
            replies = replies[hidden:]
        lines = [
            ReplyLines.of(
                r,
                getattr(r, "heard_ms", None) or self._speech_ms.get(r.id),
                self._tools.get(r.id, ()),
                self.clock_speed,
            )
            for r in replies
        ]
        earlier = f"{_plural(hidden, 'earlier exchange')} not shown" if hidden else ""
        turns = (
            "<div class='rl-view'>"
            + (f"<div class='rl-meta'>{earlier}</div>" if earlier else "")
            + "".join(line.html() for line in lines)
            + "</div>"
        )
        text = "\n".join([heading, *([earlier] if earlier else []), *(x.text() for x in lines)])
        rows = []
        for direction, frame in list(session.frames)[-FRAMES_SHOWN:]:
            arrow = "→ relay" if direction == "in" else "← relay"
            shown = frame if len(frame) <= FRAME_CHARS else frame[: FRAME_CHARS - 1] + "…"
            rows.append(f"{arrow}  {_esc(shown)}")
        frames = f"<pre class='rl-frames'>{chr(10).join(rows)}</pre>"
        return head, turns, frames, text


def _session_of(lab: Any, call: Any) -> Any:
    """The relay's session of ``call`` (a SimulatedCall of ``lab``), for a pinned view."""
    if not hasattr(call, "call_sid"):
        raise TypeError(f"view(call=...) takes a call from lab.call(), not {type(call).__name__}")
    session = lab.session_for(call)
    if session is None:
        raise ValueError(
            f"the relay has no call {call.call_sid}: place it with this lab's lab.call() "
            "before lab.view(call=...)"
        )
    return session


def _tool_runs_so_far(session: Any) -> dict[int, list[Any]]:
    """The tool calls of the session's replies before the view started listening (the
    tools step records them), so a view made after a call still shows them."""
    from relaylab.steps.tools import tool_runs

    found = {reply.id: tool_runs(reply) for reply in list(session.replies)}
    return {reply_id: runs for reply_id, runs in found.items() if runs}


def _speech_ms(frame: str) -> float | None:
    """durationUntilInterruptMs of an interrupt frame, if it parses."""
    try:
        message = protocol.parse(frame)
    except protocol.ProtocolError:
        return None
    return getattr(message, "duration_until_interrupt_ms", None)


# -- the caller's controls ------------------------------------------------------------------

FIRST_WORDS = "Tell me about dogs"  # long enough to interrupt
TOOL_WORDS = "Can I book a table for two on Saturday at 8pm?"  # for a step with tools


def first_words(lab: Any) -> str:
    """What the Say box starts with: a question that suits the lab's step (a booking for
    a step with tools, else a long answer to interrupt)."""
    step = getattr(getattr(lab, "server", None), "step", None)
    name = str(getattr(step, "name", "")).lower()
    return TOOL_WORDS if "tool" in name else FIRST_WORDS


class CallerPanel:
    """A text box, Say, Interrupt and a key pad that act as the caller.

    ``CallerPanel(lab)`` places a call on the first Say; ``CallerPanel(lab, call=call)``
    goes on with a call from ``lab.call()``. Say while Claude is still speaking talks
    over it: the panel interrupts first, as Twilio does when the caller speaks. Clicks
    run on the kernel's thread, so each one only schedules work on the lab's loop and
    returns at once; results show in the panel's status line, and so does a stopped lab.
    """

    def __init__(
        self,
        lab: Any,
        *,
        call: Any = None,
        text: str | None = None,
        keypad: bool = True,
    ) -> None:
        if hasattr(lab, "say_async"):  # the older form, CallerPanel(call)
            call, lab = lab, None
            loop = getattr(call, "portal", None)
        else:
            loop = getattr(lab, "loop", None)
        if not isinstance(loop, LoopThread):
            raise TypeError(
                "CallerPanel needs a Lab: CallerPanel(lab), or CallerPanel(lab, call=call) "
                "to go on with a call from lab.call()"
            )
        self.lab, self.call = lab, call
        self._loop_thread = loop
        if text is None:
            text = first_words(lab)
        self.text = widgets.Text(value=text, placeholder="What the caller says")
        self.text.on_msg(self._on_text_msg)  # Enter in the box says it, as Say does
        self.say_button = widgets.Button(description="Say", button_style="primary")
        self.interrupt_button = widgets.Button(description="Interrupt", button_style="warning")
        self.key_buttons = [
            widgets.Button(description=key, layout=widgets.Layout(width="2.6em"))
            for key in (KEYS if keypad else "")
        ]
        self.status = widgets.HTML()
        self._status("Type what the caller says, then press Say.")
        self.say_button.on_click(lambda _: self.say(self.text.value))
        self.interrupt_button.on_click(lambda _: self.interrupt())
        for button in self.key_buttons:
            button.on_click(lambda b: self.press(b.description))
        rows: list[widgets.Widget] = [
            widgets.HBox([self.text, self.say_button, self.interrupt_button])
        ]
        if self.key_buttons:
            rows.append(widgets.HBox([widgets.Label("keys:"), *self.key_buttons]))
        style = widgets.HTML(_STYLE, layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox([*rows, self.status, style])
        self.widget.add_class(_LIVE_CLASS)
        self.future: Any = None  # the latest scheduled action (a concurrent Future)
        self._saying: asyncio.Task[Any] | None = None  # the say() waiting for its reply
        self._speaking: str | None = None  # what the caller is saying over Claude, if anything
        self.stopped = False
        if isinstance(getattr(lab, "_views", None), list):
            from relaylab.notebook.kernel_exit import stop_labs_at_shutdown

            lab._views.append(self)  # lab.stop() calls detach(): the panel says so at once
            stop_labs_at_shutdown()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.describe()
        bundle["text/html"] = f"<div class='rl-view rl-meta'>{_esc(self.describe())}</div>"
        return bundle

    def describe(self) -> str:
        """The controls and the status line, in words."""
        status = _html_to_text(self.status.value)
        keys = " and a key pad" if self.key_buttons else ""
        return f"[caller's controls: a Say box, Say, Interrupt{keys}] {status}"

    def _on_text_msg(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        if content.get("event") == "submit":
            self.say(self.text.value)

    # -- what the buttons do (callable from cells and tests too) -------------------------

    def say(self, text: str) -> Any:
        """Say ``text`` on the call without blocking; returns a concurrent Future (or None
        when the lab has stopped)."""
        return self._schedule(self._say(text))

    def interrupt(self) -> Any:
        """Talk over the reply now; returns a concurrent Future (or None)."""
        return self._schedule(self._interrupt())

    def press(self, key: str) -> Any:
        """Press a key on the phone (a ``dtmf`` frame); returns a concurrent Future (or None)."""
        return self._schedule(self._press(key))

    def show_stopped(self) -> None:
        """Say in the panel that the lab has stopped, and grey out the buttons and the box."""
        self.stopped = True
        self._status(f"{_STYLE}<b>{_esc(_STOPPED[0].upper() + _STOPPED[1:])}.</b>")
        for button in (self.say_button, self.interrupt_button, *self.key_buttons):
            button.disabled = True
        self.text.disabled = True
        self.widget.add_class(_STOPPED_CLASS)

    def detach(self) -> None:
        """What ``lab.stop()`` calls: show that the lab has stopped."""
        if not self.stopped:
            self.show_stopped()

    def _schedule(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self.stopped or not self._loop_thread.running:
            coro.close()
            self.show_stopped()
            self.future = None
            return None
        self.future = self._loop_thread.submit(coro)
        return self.future

    # -- on the lab's loop ------------------------------------------------------------------

    async def _placed_call(self) -> Any:
        if self.call is None:
            if self.lab is None:
                raise ConnectionError("this panel's call has ended and it has no lab to call")
            self.call = await self.lab.call_async()
        return self.call

    async def _say(self, text: str) -> Any:
        self._status(f"caller: {_esc(text)}")
        try:
            await self._talk_over(text)
            call = await self._placed_call()
            self._status(f"caller: {_esc(text)} · waiting for Claude's reply…")
            self._saying = asyncio.current_task()
            try:
                reply = await call.say_async(text)
            except ConnectionError:
                if self.lab is None:
                    raise
                self.call = None  # the call had ended (hung up, or the relay ended it)
                call = await self._placed_call()
                self._status(f"caller (on a new call, the last one had ended): {_esc(text)}")
                reply = await call.say_async(text)
        except Exception as exc:
            self._status(f"<b>could not say that:</b> {_esc(str(exc) or type(exc).__name__)}")
            return None
        finally:
            if self._saying is asyncio.current_task():
                self._saying = None
        if not reply.interrupted:
            self._status(f"Claude's reply arrived ({_plural(len(reply.text.split()), 'word')})")
        return reply

    async def _talk_over(self, text: str) -> None:
        """Before saying something new: if Claude is still speaking, interrupt it, as Twilio
        does the moment the caller starts to speak, and let the old say() end. The new
        prompt follows once the caller has finished saying ``text``, as on a real call."""
        if self.call is None:
            return
        try:
            interrupted = await self.call.interrupt_async()
        except ConnectionError:
            return
        previous = self._saying
        if previous is not None and not previous.done():
            await asyncio.wait([previous], timeout=5)
        if interrupted is not None:
            words_per_second = getattr(self.call, "words_per_minute", 165.0) / 60
            speed = getattr(self.call, "clock_speed", 1.0)
            seconds = len(text.split()) / words_per_second / speed
            self._speaking = text
            self._status(
                f"the caller talks over Claude, saying: {_esc(text)} ({seconds:.1f} s of "
                "speech); Claude answers when they finish"
            )
            try:
                await asyncio.sleep(seconds)
            finally:
                self._speaking = None

    async def _interrupt(self) -> Any:
        if self._speaking is not None:
            # The caller is the one speaking: Claude already stopped, and its answer to
            # what they are saying has not started yet. Nothing is cut.
            self._status(
                f"the caller is still saying: {_esc(self._speaking)}; Claude stopped already. "
                "Press Interrupt again once Claude answers."
            )
            return None
        try:
            reply = await self.call.interrupt_async() if self.call else None
        except ConnectionError as exc:
            self._status(f"<b>could not interrupt:</b> {_esc(str(exc))}")
            return None
        if reply is None:
            self._status("nothing to interrupt: Claude is not speaking")
        elif not reply.interrupted:
            self._status(
                "talked over Claude, who kept speaking: this call's TwiML lets "
                "nothing (or only a key press) interrupt"
            )
        else:
            self._status(f"interrupted after: “{_esc(reply.heard)}”")
        return reply

    async def _press(self, key: str) -> None:
        try:
            call = await self._placed_call()
            await call.press_async(key)
        except Exception as exc:
            self._status(f"<b>could not press {_esc(key)}:</b> {_esc(str(exc))}")
            return
        if getattr(call, "dtmf_detection", None) is False:
            self._status(f"pressed {_esc(key)}: not sent, the TwiML has no dtmfDetection")
            return
        self._status(f"pressed {_esc(key)}: sent a dtmf frame (digit {_esc(key)})")

    def _status(self, text: str) -> None:
        self.status.value = f"<span class='rl-view rl-meta'>{text}</span>"


# -- the phone: the view and the controls together -------------------------------------------


class Phone:
    """The live view of the newest call with the caller's controls right under it, so
    you watch the reply while you press Interrupt.

    ``Phone(lab)`` places a call on the first Say; ``Phone(lab, call=call)`` goes on
    with a call from ``lab.call()``. ``replies_shown`` keeps the view short (the newest
    replies), so the reply you are watching sits next to the buttons. When the lab
    stops, the view and the status line both say so.
    """

    def __init__(
        self,
        lab: Any,
        *,
        call: Any = None,
        text: str | None = None,
        replies_shown: int | None = 3,
        keypad: bool = True,
    ) -> None:
        self.lab = lab
        self.view: ConversationView = lab.view()  # lab.stop() detaches the views it made
        self.view.replies_shown = replies_shown
        self.view.refresh()
        self.panel = CallerPanel(lab, call=call, text=text, keypad=keypad)
        self.widget = widgets.VBox([self.view.widget, self.panel.widget])
        for part in (self.view.widget, self.panel.widget):
            part.remove_class(_LIVE_CLASS)  # the phone says it once, at its top
        self.widget.add_class(_LIVE_CLASS)
        self.view.detach_listeners.append(self._show_stopped)
        if self.view.stopped:
            self._show_stopped()

    def _show_stopped(self) -> None:
        self.panel.detach()
        self.widget.add_class(_STOPPED_CLASS)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = f"{self.view.text}\n{self.panel.describe()}"
        bundle["text/html"] = (
            f"{self.view.snapshot().data}"
            f"<div class='rl-view rl-meta'>{_esc(self.panel.describe())}</div>"
        )
        return bundle

    @property
    def call(self) -> Any:
        """The call the controls act on (None before the first Say)."""
        return self.panel.call

    def say(self, text: str) -> Any:
        return self.panel.say(text)

    def interrupt(self) -> Any:
        return self.panel.interrupt()

    def press(self, key: str) -> Any:
        return self.panel.press(key)


# -- saved notebooks: live widget outputs as static HTML ---------------------------------------


def freeze_widget_outputs(notebook: dict[str, Any]) -> int:
    """Replace each live widget output of a saved notebook (a dict in nbformat 4) by static
    HTML and text of what the widget showed last, taken from the notebook's saved widget
    state; then drop that state. Returns the number of outputs replaced.

    A widget output only renders where JavaScript can rebuild the widget (and fetch its
    library); GitHub and ``nbconvert --to html`` show an empty output instead. Run the
    cell again in Jupyter and the live widget is back.
    """
    state = notebook.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            model = data[WIDGET_VIEW].get("model_id", "")
            page = _widget_html(state, model)
            if not page.strip():
                page = "<i>(a live widget: run the notebook to see it)</i>"
            page = (
                f"<div class='rl-view'>{page}<div class='rl-meta'><i>Saved from the last run; "
                "run the cell to use it live.</i></div></div>"
            )
            output["data"] = {"text/html": page, "text/plain": _html_to_text(page)}
            replaced += 1
    notebook.get("metadata", {}).pop("widgets", None)
    return replaced


def _widget_html(state: dict[str, Any], model_id: str) -> str:
    model = state.get(model_id)
    if model is None:
        return ""
    name, values = model.get("model_name", ""), model.get("state", {})
    children = [
        _widget_html(state, ref.removeprefix("IPY_MODEL_")) for ref in values.get("children", [])
    ]
    if name in ("HTMLModel", "HTMLMathModel"):
        return str(values.get("value", ""))
    if name == "LabelModel":
        return _esc(str(values.get("value", "")))
    if name == "HBoxModel":
        return "<div style='display: flex; gap: 6px'>" + " ".join(children) + "</div>"
    if name == "AccordionModel":
        titles = list(values.get("titles", [])) + [""] * len(children)
        return "".join(
            f"<details><summary>{_esc(str(title))}</summary>{child}</details>"
            for title, child in zip(titles, children, strict=False)
        )
    if name in ("VBoxModel", "BoxModel", "GridBoxModel"):
        return "".join(f"<div>{child}</div>" for child in children)
    if name == "TextModel":
        return f"<code>[{_esc(str(values.get('value', '')))}]</code>"
    if name == "ButtonModel":
        return f"<code>[{_esc(str(values.get('description', '')))}]</code>"
    return ""


class _TextOf(HTMLParser):
    """Plain text of an HTML fragment: no styles, a line per block, unheard text marked."""

    BLOCKS = frozenset({"div", "p", "tr", "br", "details", "summary", "pre", "table", "caption"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "style":
            self._skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "del":
            self.parts.append(" [not heard: ")
        elif tag == "td":
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._skip -= 1
        elif tag == "del":
            self.parts.append("]")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _html_to_text(page: str) -> str:
    parser = _TextOf()
    parser.feed(page)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _freeze_files(paths: Sequence[str]) -> int:
    """``python -m relaylab.notebook.widgets NOTEBOOK...``: freeze the widget outputs in place."""
    if not paths:
        sys.stderr.write("usage: python -m relaylab.notebook.widgets NOTEBOOK.ipynb...\n")
        return 2
    for name in paths:
        path = Path(name)
        notebook = json.loads(path.read_text(encoding="utf-8"))
        count = freeze_widget_outputs(notebook)
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        sys.stdout.write(f"{path}: {_plural(count, 'widget output')} saved as static HTML\n")
    return 0


if __name__ == "__main__":
    sys.exit(_freeze_files(sys.argv[1:]))
