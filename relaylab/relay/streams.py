"""Claude's streamed reply as a relay reads it, and the model's signs of life.

``stream_reply`` reads the server-sent events itself (``relaylab serve``: no typed SDK
object per token); ``SDKReplyStream`` puts the SDK's own ``messages.stream()`` behind
the same interface (a Lab, as the lessons teach it). Both report every event as a sign
of life to the running reply's ``alive_listener``, as the HTTP client's hook does for a
retry the SDK waits out. ``tests/test_sse.py`` checks both read the SDK's recorded
streams alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anthropic

from relaylab.core.sse import SSEParser


def stream_reply(client: anthropic.AsyncAnthropic, **request: Any) -> ReplyStream:
    """Open a streamed reply: ``async with stream_reply(client, ...) as reply``, then
    ``async for text in reply`` gives the text as it arrives; afterwards
    ``reply.stop_reason`` says how it ended and ``reply.content`` holds its blocks."""
    return ReplyStream(client, request)


class ReplyStream:
    """Claude's streamed reply, read from the server-sent events as they arrive.

    The same request as ``client.messages.stream(...)``, read differently: the SDK builds
    a typed event object for every token, which at a few hundred calls is most of a
    relay's CPU (see bench/). This reads the event stream as the SSE spec (and the SDK's
    own decoder) does: CR, LF or CRLF line ends, ``data:`` with or without its space,
    data over several lines, comments, ``ping`` and unknown events ignored. Only text is
    handed out; when the transport hands over several tokens at once (the aiohttp one
    does, when the relay fell behind) they come out as one piece, so the caller gets
    one frame, not several. ``tests/test_sse.py`` checks it reads every recorded SDK
    stream as ``messages.stream()`` does.

    Every event is also a sign that the model is alive (see ``alive_listener``), which a
    relay's voice budget counts while Claude thinks before speaking. Leaving the
    ``async with`` closes the HTTP request. HTTP errors are the SDK's own; an ``error``
    event mid-stream raises ``anthropic.APIError``.
    """

    def __init__(self, client: anthropic.AsyncAnthropic, request: dict[str, Any]) -> None:
        self._client = client
        self._request = request
        self._manager: Any = None
        self._response: Any = None
        self.stop_reason: str | None = None
        self._content: list[dict[str, Any]] = []
        self._texts_of: dict[tuple[int, str], list[str]] = {}  # joined once, when asked
        self._json: dict[int, str] = {}
        self._error: anthropic.APIError | None = None

    async def __aenter__(self) -> ReplyStream:
        streaming = self._client.messages.with_streaming_response
        self._manager = streaming.create(stream=True, **self._request)
        self._response = await self._manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._manager.__aexit__(*exc_info)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._texts()

    async def _texts(self) -> AsyncIterator[str]:
        events = SSEParser()
        async for chunk in self._response.iter_bytes():
            text = self._read(events.feed(chunk))
            if text:
                yield text
            if self._error is not None:
                raise self._error
        text = self._read(events.close())
        if text:
            yield text

    def _read(self, events: list[tuple[str | None, str]]) -> str:
        """The text these events add; an ``error`` event raises once the text before it
        has been handed out (it is in ``self.text``; ``_texts`` yields it first)."""
        text = ""
        for name, data in events:
            try:
                text += self._take(name, data)
            except anthropic.APIError as exc:
                if not text:
                    raise
                self._error = exc
                break
        return text

    def _take(self, name: str | None, data: str) -> str:
        """Read one event; return the text it adds to the reply ("" for most events)."""
        signal_alive()
        if name in (None, "ping") or not data:
            return ""  # as the SDK: an event needs a name and data
        if name == "content_block_delta":
            event = json.loads(data)
            delta = event["delta"]
            kind = delta.get("type")
            if kind == "text_delta":
                self._add(event, "text", delta["text"])
                return delta["text"]
            if kind == "thinking_delta":
                self._add(event, "thinking", delta["thinking"])
            elif kind == "signature_delta":
                self._block(event)["signature"] = delta["signature"]
            elif kind == "input_json_delta":
                # Read as far as it goes, as the SDK does: a cut-off input keeps its start.
                index = event.get("index", 0)
                self._json[index] = self._json.get(index, "") + delta["partial_json"]
                if self._json[index]:
                    self._block(event)["input"] = partial_json(self._json[index])
            elif kind == "citations_delta":
                block = self._block(event)
                block["citations"] = [*(block.get("citations") or []), delta["citation"]]
            return ""
        if name == "content_block_start":
            event = json.loads(data)
            self._content.append(dict(event["content_block"]))
        elif name == "message_delta":
            self.stop_reason = json.loads(data).get("delta", {}).get("stop_reason")
        elif name == "error":
            body = json.loads(data)
            message = body.get("error", {}).get("message", "the stream reported an error")
            raise anthropic.APIError(message, self._response.http_request, body=body)
        return ""

    def _block(self, event: dict[str, Any]) -> dict[str, Any]:
        index = event.get("index", 0)
        return self._content[index] if index < len(self._content) else {}

    def _add(self, event: dict[str, Any], field: str, text: str) -> None:
        key = (event.get("index", 0), field)
        if key in self._texts_of:
            self._texts_of[key].append(text)
        elif field in self._block(event):
            self._texts_of[key] = [text]

    @property
    def content(self) -> list[dict[str, Any]]:
        """The reply's content blocks so far, as the API sent them (text, thinking,
        tool_use...): what ``messages.stream()`` would have in its final message."""
        blocks = [dict(block) for block in self._content]
        for (index, field), pieces in self._texts_of.items():
            blocks[index][field] += "".join(pieces)
        return blocks

    @property
    def text(self) -> str:
        """The reply's text so far."""
        return "".join(b["text"] for b in self.content if b.get("type") == "text")


class SDKReplyStream:
    """The SDK's own ``messages.stream()`` behind ``ReplyStream``'s interface: ``async with
    SDKReplyStream(client.messages.stream(...)) as reply``, ``async for text in reply``,
    then ``reply.stop_reason`` and ``reply.content``. Each event is a sign of life."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._stream: Any = None

    async def __aenter__(self) -> SDKReplyStream:
        self._stream = await self._manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._manager.__aexit__(*exc_info)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._texts()

    async def _texts(self) -> AsyncIterator[str]:
        async for event in self._stream:
            signal_alive()
            if event.type == "text":
                yield event.text

    @property
    def _message(self) -> Any:
        return self._stream.current_message_snapshot

    @property
    def stop_reason(self) -> str | None:
        return self._message.stop_reason

    @property
    def content(self) -> list[dict[str, Any]]:
        return [block.model_dump(exclude_none=True) for block in self._message.content]

    @property
    def text(self) -> str:
        return "".join(b.text for b in self._message.content if b.type == "text")


async def stream_text(client: anthropic.AsyncAnthropic, **request: Any) -> AsyncIterator[str]:
    """Claude's reply as text, piece by piece as it arrives: what a relay forwards.

    ``stream_reply`` without the ending; leaving the loop early closes the HTTP request.
    """
    async with stream_reply(client, **request) as reply:
        async for text in reply:
            yield text


def partial_json(raw: str) -> Any:
    """JSON cut off mid-way, read as far as its last complete value (as the SDK's partial
    mode reads a tool input still streaming): an unfinished string or value is left out
    and the open arrays and objects are closed."""
    with contextlib.suppress(ValueError):
        return json.loads(raw)
    stack: list[str] = []
    in_string = escaped = False
    cut: tuple[int, str] | None = None  # the last point all before it is whole, and closers
    for index, char in enumerate(raw):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append("]" if char == "[" else "}")
            cut = (index + 1, "".join(reversed(stack)))
        elif char in "]}" and stack:
            stack.pop()
        elif char == ",":
            cut = (index, "".join(reversed(stack)))
    candidates = [] if in_string else [raw + "".join(reversed(stack))]
    if cut is not None:
        candidates.append(raw[: cut[0]] + cut[1])
    for candidate in candidates:
        with contextlib.suppress(ValueError):
            return json.loads(candidate)
    return {}


# -- signs of life -----------------------------------------------------------------------------

AliveListener = Callable[[float], None]
alive_listener: contextvars.ContextVar[AliveListener | None] = contextvars.ContextVar(
    "relaylab_alive_listener", default=None
)
"""Called, in the task that made the request, as ``listener(wait)`` whenever the model
shows it is alive: each server-sent event (``wait`` 0), and each retryable HTTP answer
the SDK will wait out (``wait``: its ``retry-after`` seconds). A relay sets it per reply."""


def signal_alive(wait: float = 0.0) -> None:
    """Tell the running reply's listener, if any, that the model is alive."""
    listener = alive_listener.get()
    if listener is not None:
        listener(wait)


async def report_retry_wait(response: Any) -> None:
    """An httpx event hook: a 429/5xx that the SDK will retry after ``retry-after`` is a
    model that is busy, not dead."""
    if response.status_code in (408, 409, 429) or response.status_code >= 500:
        signal_alive(retry_after(response.headers))


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds a response asks the client to wait (``retry-after-ms`` or ``retry-after``)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        with contextlib.suppress(TypeError, ValueError):
            value = headers.get(name)
            if value is not None:
                return max(float(value) * scale, 0.0)
    return 0.0
