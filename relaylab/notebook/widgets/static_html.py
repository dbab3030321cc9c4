"""Static HTML for printed outputs (what reads well on GitHub too): heard and unheard
text, the caller's reply, the relay's history as a table, the last frames; and the plain
text of such HTML."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from html.parser import HTMLParser
from typing import Any

from IPython.display import HTML

from relaylab.notebook.widgets.style import esc

FRAMES_SHOWN = 6
_LEFT = "style='text-align: left'"  # JupyterLab right-aligns table cells by default


def spoken_html(sent: str, heard: str | None) -> str:
    """``sent`` as HTML: the heard part plain, the rest struck through (<del>).

    ``heard`` is what the relay or the caller already worked out (the relay's
    ``RelayReply.heard``, the caller's ``Reply.heard``): a prefix of ``sent``. None means
    the caller heard all of it (or will: the reply was not interrupted).
    """
    if heard is None:
        return esc(sent)
    unheard = sent[len(heard) :] if sent.startswith(heard) else sent
    kept = esc(heard) if sent.startswith(heard) else ""
    return kept + (f"<del>{esc(unheard)}</del>" if unheard.strip() else "")


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
        cell = esc(content)
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
                f"<td {_LEFT}><del>{esc(str(old.get('content', '')))}</del></td>"
                "<td><i>dropped</i></td></tr>"
            )
    caption = f"<caption style='text-align:left'><b>{esc(title)}</b></caption>" if title else ""
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


def html_to_text(page: str) -> str:
    parser = _TextOf()
    parser.feed(page)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)
