"""Phone (``lab.phone()``): the live view and the caller's controls together."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from relaylab.notebook.widgets.controls import CallerPanel
from relaylab.notebook.widgets.live_view import ConversationView
from relaylab.notebook.widgets.style import LIVE_CLASS, STOPPED_CLASS, esc


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
            part.remove_class(LIVE_CLASS)  # the phone says it once, at its top
        self.widget.add_class(LIVE_CLASS)
        self.view.detach_listeners.append(self._show_stopped)
        if self.view.stopped:
            self._show_stopped()

    def _show_stopped(self) -> None:
        self.panel.detach()
        self.widget.add_class(STOPPED_CLASS)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = f"{self.view.text}\n{self.panel.describe()}"
        bundle["text/html"] = (
            f"{self.view.snapshot().data}"
            f"<div class='rl-view rl-meta'>{esc(self.panel.describe())}</div>"
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
