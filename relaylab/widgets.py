"""Live views of a Lab's calls for Jupyter: a view, a caller panel and history tables.

These are views only: they read what the relay's CallSession records (its replies,
what each reply sent, what the caller heard, the last frames, timings) and draw it.
No conversation logic lives here.

Threading: session events arrive on the lab's loop thread. The view never draws on
each event; it marks itself dirty and draws from a timer on that loop, at most
``max_rate`` times a second, by setting widget values (comm messages, not cell
output). Nothing here prints or writes to an Output widget from a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
from IPython.display import HTML

from relaylab.caller import SimulatedCall

MAX_RATE = 15.0  # draws per second, at most
FRAMES_SHOWN = 6
FRAME_CHARS = 110

_STYLE = """<style>
.rl-view {font-family: system-ui, sans-serif; font-size: 13px; line-height: 1.45;}
.rl-head {color: #555; margin-bottom: 4px;}
.rl-turn {margin: 3px 0; padding: 4px 8px; border-radius: 6px; max-width: 58em;}
.rl-user {background: #eef3fb;}
.rl-assistant {background: #f3f7ee;}
.rl-who {font-weight: 600; margin-right: 6px;}
.rl-meta {color: #777; font-size: 11px;}
.rl-view del {color: #b3261e; text-decoration: line-through;}
.rl-frames {font-family: monospace; font-size: 11px; color: #444; white-space: pre;
  overflow-x: auto; margin: 0;}
</style>"""


_LEFT = "style='text-align: left'"  # JupyterLab right-aligns table cells by default


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _count(tokens: int) -> str:
    return f"{tokens} token" if tokens == 1 else f"{tokens} tokens"


def _ms(value: float | None) -> str:
    return f"{value / 1000:.2f} s" if value is not None else "…"


# -- static helpers (also used by the notebooks for outputs that read well on GitHub) ----


def spoken_html(sent: str, heard: str | None) -> str:
    """``sent`` as HTML: the heard part plain, the rest struck through (<del>).

    ``heard`` is what the relay or the caller already worked out (ReplyTask.heard,
    Reply.heard): a prefix of ``sent``. None means the reply was not interrupted.
    """
    if heard is None:
        return _esc(sent)
    unheard = sent[len(heard) :] if sent.startswith(heard) else sent
    kept = _esc(heard) if sent.startswith(heard) else ""
    return kept + (f"<del>{_esc(unheard)}</del>" if unheard.strip() else "")


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


# -- the live view --------------------------------------------------------------------------


class ConversationView:
    """A live view of the lab's latest call: turns, tokens as they arrive, heard vs
    unheard text, the last frames in and out, and timings.

    ``lab.view()`` builds one; display it by leaving it last in a cell. It follows each
    new call the relay accepts. ``detach()`` (called by ``lab.stop()``) stops updates.
    """

    def __init__(self, lab: Any, *, max_rate: float = MAX_RATE) -> None:
        self.lab = lab
        self.min_interval = 1.0 / max_rate
        self.renders = 0  # how many times the view has drawn itself
        self.session: Any = None
        self._loop_thread = lab.loop
        self._unsubscribe: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_render = 0.0
        self._detached = False
        self._tokens: dict[int, int] = {}
        self._head = widgets.HTML()
        self._turns = widgets.HTML()
        self._frames = widgets.HTML()
        frames_box = widgets.Accordion(children=[self._frames], titles=("Last frames in and out",))
        self.widget = widgets.VBox([self._head, self._turns, frames_box])
        self._loop_thread.run(self._attach(), timeout=10)

    # Display the inner widget; plain-text front ends (GitHub) get one honest line.
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = "ConversationView: a live widget (run the notebook to see it)"
        return bundle

    @property
    def html(self) -> str:
        """The transcript as last drawn (for tests and snapshots)."""
        return self._turns.value

    def snapshot(self) -> HTML:
        """The view as it is now, as static HTML (reads well where widgets don't run)."""
        return HTML(f"{self._head.value}{self._turns.value}")

    # -- binding (all on the lab's loop) ------------------------------------------------

    async def _attach(self) -> None:
        self.lab.server.session_listeners.append(self._on_session)
        if self.lab.server.sessions:
            self._bind(self.lab.server.sessions[-1])
        self._render()

    def _on_session(self, session: Any) -> None:
        if not self._detached:
            self._bind(session)
            self._mark_dirty()

    def _bind(self, session: Any) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.session = session
        self._tokens = {}
        self._unsubscribe = session.subscribe(self._on_event)

    def _on_event(self, event: Any) -> None:
        if event.kind == "token":
            reply = event.data["reply"]
            self._tokens[reply.id] = self._tokens.get(reply.id, 0) + 1
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        if self._detached or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_render + self.min_interval - time.monotonic())
        self._timer = loop.call_later(delay, self._render)

    def detach(self) -> None:
        """Stop following the lab: no more updates. Safe to call twice."""
        if self._detached:
            return
        if self._loop_thread.running and not self._loop_thread.in_loop_thread():
            with contextlib.suppress(Exception):
                self._loop_thread.run(self._detach(), timeout=5)
        else:
            self._detach_now()

    async def _detach(self) -> None:
        self._detach_now()

    def _detach_now(self) -> None:
        self._render(final=True)
        self._detached = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with contextlib.suppress(ValueError):
            self.lab.server.session_listeners.remove(self._on_session)

    # -- drawing ------------------------------------------------------------------------

    def _render(self, final: bool = False) -> None:
        self._timer = None
        if self._detached:
            return
        self._last_render = time.monotonic()
        self.renders += 1
        head, turns, frames = self._draw(final)
        for widget, value in ((self._head, head), (self._turns, turns), (self._frames, frames)):
            if widget.value != value:
                widget.value = value

    def _draw(self, final: bool) -> tuple[str, str, str]:
        session = self.session
        step = self.lab.server.step.name
        if final:
            state = "lab stopped"
        elif session is None:
            state = "waiting for a call"
        elif session.closed:
            state = "call ended"
        else:
            state = "on a call"
        head = (
            f"{_STYLE}<div class='rl-view rl-head'>Relay step <b>{_esc(step)}</b>, "
            f"Claude: {self.lab.backend.kind} · {state}</div>"
        )
        if session is None:
            return head, "<div class='rl-view rl-meta'>No call yet.</div>", ""
        parts = [self._draw_reply(reply) for reply in session.replies]
        turns = "<div class='rl-view'>" + "".join(parts) + "</div>"
        lines = []
        for direction, frame in list(session.frames)[-FRAMES_SHOWN:]:
            arrow = "→ relay" if direction == "in" else "← relay"
            text = frame if len(frame) <= FRAME_CHARS else frame[: FRAME_CHARS - 1] + "…"
            lines.append(f"{arrow}  {_esc(text)}")
        frames = f"<pre class='rl-frames'>{chr(10).join(lines)}</pre>"
        return head, turns, frames

    def _draw_reply(self, reply: Any) -> str:
        caller = (
            f"<div class='rl-turn rl-user'><span class='rl-who'>caller</span>"
            f"{_esc(reply.prompt)}</div>"
        )
        if reply.sent:
            body = spoken_html(reply.sent, reply.heard)
        elif reply.state == "running":
            body = "<i class='rl-meta'>waiting for Claude's first word…</i>"
        else:
            body = "<i class='rl-meta'>(nothing sent)</i>"
        if reply.state == "running" and reply.sent:
            body += " ▌"
        notes = [reply.state]
        if reply.interrupted:
            notes.append(f"interrupted, heard {len(reply.heard.split())} words")
            if reply.state == "running":
                notes.append("still streaming after the interrupt")
        if reply.error:
            notes.append(_esc(reply.error))
        timings = reply.timings
        notes.append(
            f"first word {_ms(timings.get('first_token_ms'))}, "
            f"last {_ms(timings.get('last_token_ms'))}, {_count(self._tokens.get(reply.id, 0))}"
        )
        meta = f"<div class='rl-meta'>{' · '.join(notes)}</div>"
        assistant = (
            f"<div class='rl-turn rl-assistant'><span class='rl-who'>claude</span>{body}"
            f"{meta}</div>"
        )
        return caller + assistant


# -- the caller's controls ------------------------------------------------------------------


class CallerPanel:
    """A text box and two buttons that act as the caller: Say, and Interrupt.

    Give it a Lab (a call is placed on the first Say) or a SimulatedCall from
    ``lab.call()``. Clicks run on the kernel's thread, so each one only schedules work
    on the lab's loop and returns at once; results show in the panel's status line.
    """

    def __init__(self, target: Any, *, text: str = "Tell me about dogs") -> None:
        if isinstance(target, SimulatedCall):
            self.lab, self.call = None, target
            self._loop_thread = target.portal
        else:
            self.lab, self.call = target, None
            self._loop_thread = target.loop
        if self._loop_thread is None:
            raise ValueError("CallerPanel needs a Lab or a call made with lab.call()")
        self.text = widgets.Text(value=text, placeholder="What the caller says")
        self.say_button = widgets.Button(description="Say", button_style="primary")
        self.interrupt_button = widgets.Button(description="Interrupt", button_style="warning")
        self.status = widgets.HTML("<span class='rl-meta'>Type, then press Say.</span>")
        self.say_button.on_click(lambda _: self.say(self.text.value))
        self.interrupt_button.on_click(lambda _: self.interrupt())
        row = widgets.HBox([self.text, self.say_button, self.interrupt_button])
        self.widget = widgets.VBox([row, self.status])
        self.future: Any = None  # the latest scheduled action (a concurrent Future)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = "CallerPanel: Say and Interrupt buttons (run the notebook)"
        return bundle

    def say(self, text: str) -> Any:
        """Say ``text`` on the call without blocking; returns a concurrent Future."""
        self.future = self._loop_thread.submit(self._say(text))
        return self.future

    def interrupt(self) -> Any:
        """Talk over the reply now; returns a concurrent Future."""
        self.future = self._loop_thread.submit(self._interrupt())
        return self.future

    async def _say(self, text: str) -> Any:
        try:
            if self.call is None:
                self.call = await self.lab.call_async()
            self._status(f"caller: {_esc(text)}")
            reply = await self.call.say_async(text)
        except Exception as exc:
            self._status(f"<b>could not say that:</b> {_esc(str(exc))}")
            return None
        if not reply.interrupted:
            self._status(f"reply finished ({len(reply.text.split())} words)")
        return reply

    async def _interrupt(self) -> Any:
        reply = await self.call.interrupt_async() if self.call else None
        if reply is None:
            self._status("nothing to interrupt: Claude is not speaking")
        else:
            self._status(f"interrupted after: “{_esc(reply.heard)}”")
        return reply

    def _status(self, text: str) -> None:
        self.status.value = f"<span class='rl-meta'>{text}</span>"


def frames_text(frames: Sequence[tuple[str, str]], limit: int = FRAMES_SHOWN) -> str:
    """The last frames as plain lines ("in"/"out" plus compact JSON), for printing."""
    lines = []
    for direction, frame in list(frames)[-limit:]:
        with contextlib.suppress(ValueError):
            frame = json.dumps(json.loads(frame), separators=(",", ":"))
        lines.append(f"{direction:>3}: {frame}")
    return "\n".join(lines)
