"""Live views of a Lab's calls for Jupyter: a view, the caller's controls, a phone, tables.

These are views only: they read what the relay's CallSession records (its replies,
what each reply sent, what the caller heard, the last frames, timings, the tool calls
of the tools step) and draw it. No conversation logic lives here.

- ``ConversationView`` (``lab.view()``, live_view.py): the newest call, live.
- ``CallerPanel`` (controls.py): a Say box, Say, Interrupt and a key pad that act as
  the caller.
- ``Phone`` (``lab.phone()``, phone.py): the two together, so you watch the reply while
  pressing Interrupt.
- ``ReplyLines`` (reply_lines.py): one of the relay's replies in words.
- ``history_table``, ``reply_html``, ``spoken_html`` (static_html.py): static HTML for
  printed outputs.
- ``freeze_widget_outputs`` (freeze.py): turns a saved notebook's live widget outputs
  into static HTML of what they showed last (what GitHub and nbconvert can display);
  ``python -m relaylab.notebook.widgets NOTEBOOK.ipynb...`` does it to files.
- style.py: the stylesheet and the small text helpers they share.
"""

from relaylab.notebook.widgets.controls import (
    FIRST_WORDS,
    KEYS,
    TOOL_WORDS,
    CallerPanel,
    first_words,
)
from relaylab.notebook.widgets.freeze import WIDGET_STATE, WIDGET_VIEW, freeze_widget_outputs
from relaylab.notebook.widgets.live_view import MAX_RATE, ConversationView
from relaylab.notebook.widgets.phone import Phone
from relaylab.notebook.widgets.reply_lines import ReplyLines, tool_line
from relaylab.notebook.widgets.static_html import (
    FRAMES_SHOWN,
    frames_text,
    history_table,
    reply_html,
    spoken_html,
    spoken_text,
)

__all__ = [
    "FIRST_WORDS",
    "FRAMES_SHOWN",
    "KEYS",
    "MAX_RATE",
    "TOOL_WORDS",
    "WIDGET_STATE",
    "WIDGET_VIEW",
    "CallerPanel",
    "ConversationView",
    "Phone",
    "ReplyLines",
    "first_words",
    "frames_text",
    "freeze_widget_outputs",
    "history_table",
    "reply_html",
    "spoken_html",
    "spoken_text",
    "tool_line",
]
