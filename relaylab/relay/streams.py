"""Claude's streamed reply, read lean for ``relaylab serve --fast-stream``, and the model's
signs of life.

The lessons' steps stream with the SDK's own ``client.messages.stream(...)``. With
``--fast-stream`` the client a step gets is a ``FastStreamClient``: the same client, whose
``messages.stream(...)`` is a ``ReplyStream`` with the surface the steps use (``async
with``, ``text_stream``, ``get_final_message()``), reading the server-sent events itself
rather than building a typed SDK object per token. ``tests/test_sse.py`` checks that it
reads the SDK's recorded streams as ``messages.stream()`` does.

Signs of life come from the HTTP client (``watch_body`` and ``report_retry_wait``, hooks
``make_llm`` installs), so either reader counts them alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anthropic
import httpx2
from anthropic.types import Message, TextBlock

from relaylab.core.sse import SSEParser


class FastStreamClient:
    """An ``AsyncAnthropic`` whose ``messages.stream(...)`` is a ``ReplyStream``; everything
    else (``messages.create``, ``models``, ``with_options``, ``close``...) is the wrapped
    client's own. A drop-in for the steps: they run unchanged on either."""

    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self.client = client
        self.messages = FastMessages(client.messages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def __aenter__(self) -> FastStreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()


class FastMessages:
    """``client.messages`` with ``stream(...)`` read by ``ReplyStream``; the rest delegates."""

    def __init__(self, messages: Any) -> None:
        self._messages = messages

    def stream(self, **request: Any) -> ReplyStream:
        """Like the SDK's ``messages.stream(**request)``: ``async with`` it for the stream."""
        return ReplyStream(self._messages, request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._messages, name)


def stream_reply(client: Any, **request: Any) -> ReplyStream:
    """The lean reader on any client: ``async with stream_reply(client, ...) as stream``,
    then ``stream.text_stream`` and ``await stream.get_final_message()``."""
    return ReplyStream(client.messages, request)


TOOL_INPUT_BLOCKS = ("tool_use", "server_tool_use")  # blocks whose input streams as JSON
# What a message_delta's usage may change besides output_tokens (the SDK's list; it keeps
# no other field of it).
DELTA_USAGE = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)


def _typed(message: dict[str, Any], block: dict[str, Any]) -> Any:
    """A content block of ``message`` as its SDK type; one of a type the SDK does not know
    is kept as the SDK's stream helper keeps it: a TextBlock built unvalidated (pydantic's
    ``model_construct``), its fields as sent."""
    try:
        return Message.model_validate({**message, "content": [block]}).content[0]
    except ValueError:  # pydantic's ValidationError
        return TextBlock.model_construct(**block)


class ReplyStream:
    """Claude's streamed reply, read from the server-sent events as they arrive.

    The same request as ``client.messages.stream(...)``, with the surface the steps use:
    ``async with`` (leaving it closes the HTTP response), ``text_stream`` (the text as it
    arrives), ``get_final_message()`` (an ``anthropic.types.Message``, built once, when
    asked), ``get_final_text()``, ``until_done()`` and ``close()``. Not the SDK's typed
    events: ``async for event in stream`` is the SDK's alone.

    The SDK builds a typed event object for every token, which at a few hundred calls is
    most of a relay's CPU (see bench/). This reads the events as the SSE spec (and the
    SDK's own decoder) does: CR, LF or CRLF line ends, ``data:`` with or without its
    space, data over several lines, comments, ``ping`` and unknown events ignored, and
    accumulates the message as the SDK's stream helper does. When the transport hands
    over several tokens at once (the aiohttp one does, when the relay fell behind) they
    come out as one piece. HTTP errors are the SDK's own; an ``error`` event mid-stream
    raises ``anthropic.APIStatusError`` and a dropped connection
    ``anthropic.APIConnectionError``, as the SDK's stream does.
    """

    def __init__(self, messages: Any, request: dict[str, Any]) -> None:
        self._messages = messages
        self._request = request
        self._manager: Any = None
        self._response: Any = None
        self._texts: AsyncIterator[str] | None = None
        self._start: dict[str, Any] | None = None  # message_start's message
        self._end: dict[str, Any] = {}  # what message_delta events change in the message
        self._usage: dict[str, Any] = {}  # and in its usage
        self._content: list[dict[str, Any]] = []
        self._texts_of: dict[tuple[int, str], list[str]] = {}  # joined once, when asked
        self._json: dict[int, str] = {}
        self._error: anthropic.APIError | None = None
        self._final: Message | None = None

    async def __aenter__(self) -> ReplyStream:
        streaming = self._messages.with_streaming_response
        self._manager = streaming.create(stream=True, **self._request)
        self._response = await self._manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP response (at once, whatever was read of it)."""
        manager, self._manager = self._manager, None
        if manager is not None:
            await manager.__aexit__(None, None, None)

    def __aiter__(self) -> Any:
        raise TypeError(
            "the fast reader (relaylab serve --fast-stream) gives stream.text_stream and "
            "get_final_message(), not the SDK's typed events: run without --fast-stream"
        )

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """The reply's text as it arrives (one iterator per stream, as the SDK's)."""
        if self._texts is None:
            self._texts = self._read_texts()
        return self._texts

    async def until_done(self) -> None:
        """Read the stream to its end."""
        async for _ in self.text_stream:
            pass

    async def get_final_message(self) -> Message:
        """Read the stream to its end; the message it made, as the SDK's would be."""
        await self.until_done()
        if self._final is None:
            self._final = self._message()
        return self._final

    async def get_final_text(self) -> str:
        """The text blocks of the final message, joined."""
        message = await self.get_final_message()
        return "".join(block.text for block in message.content if block.type == "text")

    async def _read_texts(self) -> AsyncIterator[str]:
        events = SSEParser()
        http: Any = getattr(self._response, "http_response", None)  # None: a stand-in's
        try:
            async for chunk in self._response.iter_bytes():
                text = self._read(events.feed(chunk))
                if text:
                    yield text
                if self._error is not None:
                    raise self._error
        except httpx2.TimeoutException as exc:  # as the SDK's stream reports a failed read
            raise anthropic.APITimeoutError(http.request) from exc
        except httpx2.TransportError as exc:
            message = f"Connection failed: {exc}"
            raise anthropic.APIConnectionError(message=message, request=http.request) from exc
        text = self._read(events.close())
        if text:
            yield text

    def _read(self, events: list[tuple[str | None, str]]) -> str:
        """The text these events add; an ``error`` event raises once the text before it
        has been handed out (``_read_texts`` yields it first)."""
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
        if name in (None, "ping") or not data:
            return ""  # as the SDK: an event needs a name and data
        if name == "content_block_delta":
            event = json.loads(data)
            delta = event["delta"]
            kind = delta.get("type")
            if kind == "text_delta":
                self._add(event, "text", delta["text"])
                return delta["text"]  # as the SDK's text_stream: every text delta
            if kind == "thinking_delta":
                self._add(event, "thinking", delta["thinking"])
            elif kind == "signature_delta":
                block = self._block(event)
                if block.get("type") == "thinking":
                    block["signature"] = delta["signature"]
            elif kind == "input_json_delta":
                # Read as far as it goes, as the SDK does: a cut-off input keeps its start.
                block = self._block(event)
                if block.get("type") in TOOL_INPUT_BLOCKS:
                    index = event.get("index", 0)
                    self._json[index] = self._json.get(index, "") + delta["partial_json"]
                    if self._json[index]:
                        block["input"] = partial_json(self._json[index])
            elif kind == "citations_delta":
                block = self._block(event)
                if block.get("type") == "text":
                    block["citations"] = [*(block.get("citations") or []), delta["citation"]]
            return ""
        if name == "content_block_start":
            self._content.append(dict(json.loads(data)["content_block"]))
        elif name == "message_start":
            self._start = json.loads(data)["message"]
        elif name == "message_delta":
            self._message_delta(json.loads(data))
        elif name == "error":
            self._raise(data)
        return ""

    def _raise(self, data: str) -> None:
        """An ``error`` event: the SDK's error for it (APIStatusError, on the 200 response)."""
        try:
            body: Any = json.loads(data)
        except ValueError:
            body = data
        error = body.get("error") if isinstance(body, dict) else None
        message = (error or {}).get("message") if isinstance(error, dict) else None
        message = message or str(body) or "the stream reported an error"
        http = getattr(self._response, "http_response", None)
        if http is None:  # a stand-in response with no HTTP behind it
            raise anthropic.APIError(message, None, body=body)  # type: ignore[arg-type]
        raise anthropic.APIStatusError(message, response=http, body=body)

    def _block(self, event: dict[str, Any]) -> dict[str, Any]:
        index = event.get("index", 0)
        return self._content[index] if index < len(self._content) else {}

    def _add(self, event: dict[str, Any], field: str, text: str) -> bool:
        """Add ``text`` to the block's ``field``, if the block is of that kind."""
        key = (event.get("index", 0), field)
        if key in self._texts_of:
            self._texts_of[key].append(text)
            return True
        if self._block(event).get("type") == field:  # "text" or "thinking"
            self._texts_of[key] = [text]
            return True
        return False

    def _message(self) -> Message:
        """The final message, from the events read: as the SDK's stream helper builds it."""
        if self._start is None:
            raise RuntimeError("the stream ended before its message_start event")
        blocks = [dict(block) for block in self._content]
        for (index, field), pieces in self._texts_of.items():
            blocks[index][field] += "".join(pieces)
        usage = {**(self._start.get("usage") or {}), **self._usage}
        message = {**self._start, **self._end, "content": blocks, "usage": usage}
        try:
            return Message.model_validate(message)
        except ValueError:  # pydantic's ValidationError: a block type newer than this SDK
            final = Message.model_validate({**message, "content": []})
            final.content = [_typed(message, block) for block in blocks]
            return final

    def _message_delta(self, event: dict[str, Any]) -> None:
        """Apply a message_delta as the SDK does: the stop fields are replaced, the
        container only when given; usage counts are totals, and an optional one left out
        keeps the value before it."""
        delta = event.get("delta") or {}
        for key in ("stop_reason", "stop_sequence", "stop_details"):
            self._end[key] = delta.get(key)
        if delta.get("container") is not None:
            self._end["container"] = delta["container"]
        usage = event.get("usage") or {}
        self._usage["output_tokens"] = usage.get("output_tokens")
        for key in DELTA_USAGE:
            if usage.get(key) is not None:
                self._usage[key] = usage[key]


async def stream_text(client: anthropic.AsyncAnthropic, **request: Any) -> AsyncIterator[str]:
    """Claude's reply as text, piece by piece as it arrives, read by ``ReplyStream``;
    leaving the loop early closes the HTTP request."""
    async with stream_reply(client, **request) as stream:
        async for text in stream.text_stream:
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
shows it is alive: each piece of a response body as it arrives (server-sent events,
pings included: ``wait`` 0), and each retryable HTTP answer the SDK will wait out
(``wait``: its ``retry-after`` seconds). A relay sets it per reply."""


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


async def watch_body(response: httpx2.Response) -> None:
    """An httpx event hook: each piece of the response body, as it is read, is a sign of
    life (while Claude thinks before its first word, the events keep coming)."""
    response.stream = AliveBody(response.stream)


class AliveBody(httpx2.AsyncByteStream):
    """A response body that reports each piece read to the reading task's listener."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def __getattr__(self, name: str) -> Any:  # what the SDK looks up on a body (its tracing)
        return getattr(self._body, name)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            signal_alive()
            yield chunk

    async def aclose(self) -> None:
        await self._body.aclose()


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds a response asks the client to wait (``retry-after-ms`` or ``retry-after``)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        with contextlib.suppress(TypeError, ValueError):
            value = headers.get(name)
            if value is not None:
                return max(float(value) * scale, 0.0)
    return 0.0
