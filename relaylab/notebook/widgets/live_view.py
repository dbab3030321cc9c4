"""ConversationView (``lab.view()``): the lab's newest call, live.

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
import logging
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from IPython.display import HTML

from relaylab.notebook.loop import LoopThread
from relaylab.notebook.widgets.reply_lines import ReplyLines
from relaylab.notebook.widgets.static_html import FRAMES_SHOWN
from relaylab.notebook.widgets.style import (
    LAB_STOPPED,
    LIVE_CLASS,
    STOPPED_CLASS,
    STYLE,
    esc,
    plural,
)
from relaylab.relay.events import Event, EventKind

log = logging.getLogger(__name__)

MAX_RATE = 15.0  # draws per second, at most, while tokens stream
FRAME_CHARS = 110
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
        self._tools: dict[int, list[Any]] = {}  # reply id -> its tool calls (ToolRun)
        self._text = ""
        self._head = widgets.HTML()
        self._turns = widgets.HTML()
        self._frames = widgets.HTML()
        frames_box = widgets.Accordion(children=[self._frames], titles=("Last frames in and out",))
        self.widget = widgets.VBox([self._head, self._turns, frames_box])
        self.widget.add_class(LIVE_CLASS)
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
        self._tools = _tool_runs_so_far(session)
        self._unsubscribe = session.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.kind is EventKind.TOOL_STARTED:
            reply, run = event.reply, event.run
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
        self.widget.add_class(STOPPED_CLASS)
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
            return LAB_STOPPED
        if self.session is None:
            return "waiting for a call"
        return "call ended" if self.session.closed else "on a call"

    def _draw(self) -> tuple[str, str, str, str]:
        session, state = self.session, self._state()
        step = self.lab.server.step.name
        shown_state = (
            f"<span class='rl-stopped'>{esc(state)}</span>"
            if self.stopped
            else f"<span class='rl-state'>{esc(state)}</span>"
        )
        head = (
            f"{STYLE}<div class='rl-view rl-head'>Relay step <b>{esc(step)}</b>, "
            f"Claude: {esc(self.lab.backend.kind)} · {shown_state}</div>"
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
                r.heard_ms,  # the interrupt's durationUntilInterruptMs, as the relay kept it
                self._tools.get(r.id, ()),
                self.clock_speed,
            )
            for r in replies
        ]
        earlier = f"{plural(hidden, 'earlier exchange')} not shown" if hidden else ""
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
            rows.append(f"{arrow}  {esc(shown)}")
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
