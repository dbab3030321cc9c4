"""CallerPanel: a Say box, Say, Interrupt and a key pad that act as the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import ipywidgets as widgets

from relaylab.notebook.loop import LoopThread
from relaylab.notebook.widgets.static_html import html_to_text
from relaylab.notebook.widgets.style import (
    LAB_STOPPED,
    LIVE_CLASS,
    STOPPED_CLASS,
    STYLE,
    esc,
    plural,
)

KEYS = "123456789*0#"
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
            loop = getattr(call, "loop_thread", None)
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
        style = widgets.HTML(STYLE, layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox([*rows, self.status, style])
        self.widget.add_class(LIVE_CLASS)
        self.future: Any = None  # the latest scheduled action (a concurrent Future)
        self._saying: asyncio.Task[Any] | None = None  # the say() waiting for its reply
        self._speaking: str | None = None  # what the caller is saying over Claude, if anything
        self.stopped = False
        if hasattr(lab, "attach_view"):
            lab.attach_view(self)  # lab.stop() calls detach(): the panel says so at once

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.describe()
        bundle["text/html"] = f"<div class='rl-view rl-meta'>{esc(self.describe())}</div>"
        return bundle

    def describe(self) -> str:
        """The controls and the status line, in words."""
        status = html_to_text(self.status.value)
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
        self._status(f"{STYLE}<b>{esc(LAB_STOPPED[0].upper() + LAB_STOPPED[1:])}.</b>")
        for button in (self.say_button, self.interrupt_button, *self.key_buttons):
            button.disabled = True
        self.text.disabled = True
        self.widget.add_class(STOPPED_CLASS)

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
        self._status(f"caller: {esc(text)}")
        try:
            await self._talk_over(text)
            call = await self._placed_call()
            self._status(f"caller: {esc(text)} · waiting for Claude's reply…")
            self._saying = asyncio.current_task()
            try:
                reply = await call.say_async(text)
            except ConnectionError:
                if self.lab is None:
                    raise
                self.call = None  # the call had ended (hung up, or the relay ended it)
                call = await self._placed_call()
                self._status(f"caller (on a new call, the last one had ended): {esc(text)}")
                reply = await call.say_async(text)
        except Exception as exc:
            self._status(f"<b>could not say that:</b> {esc(str(exc) or type(exc).__name__)}")
            return None
        finally:
            if self._saying is asyncio.current_task():
                self._saying = None
        if not reply.interrupted:
            self._status(f"Claude's reply arrived ({plural(len(reply.text.split()), 'word')})")
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
                f"the caller talks over Claude, saying: {esc(text)} ({seconds:.1f} s of "
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
                f"the caller is still saying: {esc(self._speaking)}; Claude stopped already. "
                "Press Interrupt again once Claude answers."
            )
            return None
        try:
            reply = await self.call.interrupt_async() if self.call else None
        except ConnectionError as exc:
            self._status(f"<b>could not interrupt:</b> {esc(str(exc))}")
            return None
        if reply is None:
            self._status("nothing to interrupt: Claude is not speaking")
        elif not reply.interrupted:
            self._status(
                "talked over Claude, who kept speaking: this call's TwiML lets "
                "nothing (or only a key press) interrupt"
            )
        else:
            self._status(f"interrupted after: “{esc(reply.heard)}”")
        return reply

    async def _press(self, key: str) -> None:
        try:
            call = await self._placed_call()
            await call.press_async(key)
        except Exception as exc:
            self._status(f"<b>could not press {esc(key)}:</b> {esc(str(exc))}")
            return
        if getattr(call, "dtmf_detection", None) is False:
            self._status(f"pressed {esc(key)}: not sent, the TwiML has no dtmfDetection")
            return
        self._status(f"pressed {esc(key)}: sent a dtmf frame (digit {esc(key)})")

    def _status(self, text: str) -> None:
        self.status.value = f"<span class='rl-view rl-meta'>{text}</span>"
