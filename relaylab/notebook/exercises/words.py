"""Words for the report: the helpers that turn replies, frames and histories into the
short plain-English evidence an expectation or the runner writes (counts, quotes, frame
summaries), and that find the request to Claude made for a reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from relaylab.core.conversation import content_text, last_user_text

if TYPE_CHECKING:
    from relaylab.notebook.caller import Reply
    from relaylab.notebook.exercises.run import Run
    from relaylab.offline_claude import RecordedRequest


def _texts(reply: Reply) -> list[dict[str, Any]]:
    return [frame for frame in reply.frames if frame.get("type") == "text"]


def _first_text_arrival(reply: Reply) -> float | None:
    pairs = zip(reply.arrivals, reply.frames, strict=False)
    return next((t for t, f in pairs if f.get("type") == "text" and f.get("token")), None)


def _request_for(run: Run, reply: Reply) -> RecordedRequest | None:
    """The request to Claude made for this reply (the first one after its prompt)."""
    after = [r for r in run.requests if r.received_at >= reply.sent_at - 0.05]
    mine = [r for r in after if reply.prompt in last_user_text(r.body.get("messages", []))]
    return next(iter(mine or after), None)


def _history_text(history: Sequence[dict[str, Any]]) -> str:
    """Every text, tool input and tool result of the history, for searching."""
    parts: list[str] = []
    for turn in history:
        content = turn.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                parts.append(json.dumps(block.get("input")))
            elif block.get("type") == "tool_result":
                result = block.get("content")
                parts.append(result if isinstance(result, str) else content_text(result))
            else:
                parts.append(str(block.get("text", "")))
    return "\n".join(parts)


def _words(text: str) -> list[str]:
    return text.replace("…", " ").split()


def _quote(text: str, limit: int = 90) -> str:
    words = text.split()
    flat = " ".join(words)
    if len(flat) <= limit:
        return f"{flat!r} ({_count(len(words), 'word')})"
    head = flat[: limit // 2].rsplit(" ", 1)[0]
    tail = flat[-limit // 3 :].split(" ", 1)[-1]
    return f"'{head} … {tail}' ({_count(len(words), 'word')})"


def _count(number: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"


def _who(role: object) -> str:
    return {"user": "caller's words", "assistant": "assistant's reply"}.get(str(role), str(role))


def _frames_in_words(frames: Sequence[dict[str, Any]]) -> str:
    count = len(frames)
    finals = sum(1 for f in frames if f.get("last") is True)
    text = f"{count} text frame{'s' if count != 1 else ''}"
    if finals:
        text += " (the last with last=true)" if frames[-1].get("last") is True else ""
    elif count:
        text += ", none with last=true"
    return text


def _tokens(frames: Sequence[dict[str, Any]], shown: int = 6) -> str:
    tokens = [repr(f.get("token", "")) for f in frames[:shown]]
    more = f", … ({len(frames) - shown} more)" if len(frames) > shown else ""
    return ", ".join(tokens) + more


def _history_in_words(history: Sequence[dict[str, Any]]) -> str:
    if not history:
        return "[] (empty)"
    turns = [
        f"{turn.get('role')}: {_quote(content_text(turn.get('content')), 50)}" for turn in history
    ]
    return "[" + "; ".join(turns) + "]"
