"""The AsyncAnthropic client: the real Claude, or the offline stand-in, with the same code.

Which one is decided once per Lab (or per ``relaylab serve``):
1. ``offline=True``: the local stand-in, always.
2. ``RELAYLAB_PROVIDER=bedrock`` or ``vertex``: Claude on Amazon Bedrock or Google Vertex
   AI, through the SDK's own ``AsyncAnthropicBedrock`` / ``AsyncAnthropicVertex``, which
   read their cloud's usual settings (AWS_REGION and AWS credentials; CLOUD_ML_REGION,
   ANTHROPIC_VERTEX_PROJECT_ID and Google credentials). ``ANTHROPIC_MODEL`` is mapped to
   the cloud's model id (``provider_model``) unless it already is one.
3. ``ANTHROPIC_BASE_URL`` set: that server (any Messages API server), with
   ``ANTHROPIC_API_KEY`` if set.
4. ``ANTHROPIC_API_KEY`` set: the real Claude.
5. Otherwise: the local stand-in, so a workshop works with no accounts.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anthropic
import jiter

from relaylab.protocol import loggable

DEFAULT_MODEL = "claude-haiku-5-5"
DEFAULT_MAX_TOKENS = 400
OFFLINE_API_KEY = "offline-stand-in"

SYSTEM_PROMPT = (
    "You are a helpful assistant on a phone call. Everything you write is spoken aloud by "
    "a text-to-speech voice, so write the way people talk: short sentences, no lists, no "
    "markdown, no emoji, no symbols. Spell out numbers, dates and units in words. Keep "
    "answers brief unless the caller asks for detail. If the caller interrupts you, the "
    "conversation shows only what they heard before they spoke. A reply of yours that "
    "ends in '...' was cut off there: the caller heard it only that far."
)


PROVIDERS = {"bedrock": "Amazon Bedrock", "vertex": "Google Vertex AI"}
_BEDROCK_PREFIXES = ("anthropic.", "us.", "eu.", "apac.", "global.", "arn:")


def provider_model(kind: str, model: str) -> str:
    """``model`` as the cloud ``kind`` names it: Bedrock's ``anthropic.NAME-v1:0`` (a
    Bedrock id or inference profile is kept as it is); Vertex uses Anthropic's name
    (``NAME`` or ``NAME@VERSION``) as it is."""
    if kind == "bedrock" and not model.startswith(_BEDROCK_PREFIXES):
        return f"anthropic.{model}-v1:0"
    return model


@dataclass(frozen=True)
class Backend:
    """Where model requests go: ``kind`` is "offline", "custom", "anthropic", "bedrock" or
    "vertex"."""

    kind: str
    base_url: str | None
    api_key: str | None

    def describe(self) -> str:
        if self.kind == "offline":
            return "the offline stand-in for Claude (no API key used)"
        if self.kind == "custom":
            return f"the Messages API server at {self.base_url}"
        if self.kind in PROVIDERS:
            return f"Claude on {PROVIDERS[self.kind]} (RELAYLAB_PROVIDER={self.kind})"
        return "the real Claude (ANTHROPIC_API_KEY is set)"


def choose_backend(offline: bool | None = None, env: Mapping[str, str] | None = None) -> Backend:
    """Pick the backend from ``offline`` and the environment (see the module docstring)."""
    env = os.environ if env is None else env
    if offline:
        return Backend("offline", None, None)
    provider = (env.get("RELAYLAB_PROVIDER") or "").strip().lower()
    if provider in PROVIDERS:
        return Backend(provider, None, None)
    if provider not in ("", "anthropic"):
        raise ValueError(
            f"RELAYLAB_PROVIDER={loggable(provider)} is not one of anthropic, bedrock, vertex"
        )
    key = env.get("ANTHROPIC_API_KEY") or None
    base_url = env.get("ANTHROPIC_BASE_URL") or None
    if base_url:
        return Backend("custom", base_url, key)
    if key:
        return Backend("anthropic", None, key)
    if offline is False:
        raise ValueError("offline=False needs ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL) to be set")
    return Backend("offline", None, None)


@dataclass(frozen=True)
class LLM:
    """The client and the request settings every step uses."""

    client: anthropic.AsyncAnthropic
    model: str = DEFAULT_MODEL
    system: str = SYSTEM_PROMPT
    max_tokens: int = DEFAULT_MAX_TOKENS
    fast_stream: bool = True
    """Read streamed replies with ``stream_reply`` (``relaylab serve``: measured faster)
    rather than the SDK's ``messages.stream()`` (a Lab, as the lessons teach it)."""


def make_llm(
    backend: Backend,
    *,
    offline_url: str | None = None,
    model: str | None = None,
    max_retries: int = 1,
    timeout: float = 30.0,
    aiohttp: bool = False,
) -> LLM:
    """Build the client for ``backend``; ``offline_url`` is the running stand-in's base URL.

    ``aiohttp=True`` uses the SDK's aiohttp transport, which reads a token stream for about
    a fifth less CPU than the default (see bench/). Its session belongs to the first event
    loop that uses it, so it suits ``relaylab serve`` (one loop), not a Lab whose client a
    notebook may also await from its own loop.
    """
    chosen = model or os.environ.get("ANTHROPIC_MODEL") or DEFAULT_MODEL
    if backend.kind in PROVIDERS:
        cloud = anthropic.AsyncAnthropicBedrock if backend.kind == "bedrock" else None
        client: Any = (cloud or anthropic.AsyncAnthropicVertex)(
            max_retries=max_retries, timeout=timeout, http_client=_http_client(timeout, aiohttp)
        )
        return LLM(client=client, model=provider_model(backend.kind, chosen), fast_stream=aiohttp)
    if backend.kind == "offline":
        if offline_url is None:
            raise ValueError("the offline backend needs the stand-in's URL")
        base_url, api_key = offline_url, OFFLINE_API_KEY
    else:
        base_url, api_key = backend.base_url, backend.api_key or OFFLINE_API_KEY
    client = anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=max_retries,
        timeout=timeout,
        http_client=_http_client(timeout, aiohttp),
    )
    return LLM(client=client, model=chosen, fast_stream=aiohttp)


def _http_client(timeout: float, aiohttp: bool) -> Any:
    """The SDK's own HTTP client, with a hook that reports retry waits as signs of life."""
    hooks = {"response": [_on_response]}
    if aiohttp:
        return anthropic.DefaultAioHttpClient(timeout=timeout, event_hooks=hooks)
    return anthropic.DefaultAsyncHttpxClient(timeout=timeout, event_hooks=hooks)


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
                    self._block(event)["input"] = jiter.from_json(
                        self._json[index].encode(), partial_mode=True
                    )
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


class SSEParser:
    """Server-sent events from bytes in any chunks, as the SSE spec reads them: lines end
    with CR, LF or CRLF (a CR at a chunk's end waits for the next chunk), ``field:value``
    with one optional space, ``data`` lines joined with LF, ``:`` comments skipped, and a
    blank line ends an event. ``feed`` returns the events complete so far as
    ``(event name or None, data)``."""

    def __init__(self) -> None:
        self._pending = b""
        self._name: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        buffer = self._pending + chunk
        if b"\r" in buffer:
            keep_cr = buffer.endswith(b"\r")  # it may be half of a CRLF
            body = buffer[:-1] if keep_cr else buffer
            *lines, rest = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            self._pending = rest + (b"\r" if keep_cr else b"")
        else:
            *lines, self._pending = buffer.split(b"\n")
        events: list[tuple[str | None, str]] = []
        for line in lines:
            if event := self._line(line):
                events.append(event)
        return events

    def close(self) -> list[tuple[str | None, str]]:
        """The end of the stream. A CR held back is a line end after all; a last line
        without one ends no event, and an event without its blank line is dropped, as
        the spec says."""
        pending, self._pending = self._pending, b""
        if pending.endswith(b"\r") and (event := self._line(pending[:-1])):
            return [event]
        return []

    def _line(self, line: bytes) -> tuple[str | None, str] | None:
        if not line:
            if self._name is None and not self._data:
                return None
            event = (self._name, b"\n".join(self._data).decode("utf-8"))
            self._name, self._data = None, []
            return event
        name, _, value = line.partition(b":")
        if not name:
            return None  # a comment (some servers send these to keep a connection open)
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._name = value.decode("utf-8")
        return None  # id, retry and unknown fields change nothing here


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


async def _on_response(response: Any) -> None:
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


# -- the start-up check ------------------------------------------------------------------------


class ModelUnavailable(Exception):
    """The model cannot be used with this key: it does not exist, or the key is refused."""


def needs_model_check(backend: Backend) -> bool:
    """A relay with a key checks its model at start (the stand-in answers any model)."""
    return backend.kind != "offline" and bool(backend.api_key)


async def check_model(llm: LLM, backend: Backend | None = None) -> str:
    """Look ``llm.model`` up through the SDK's models API (``client.models.retrieve``)
    and return its display name; raise ModelUnavailable, naming the model, when it does
    not exist or the key is refused, so a wrong ANTHROPIC_MODEL or key fails at start
    rather than as an apology on every turn."""
    model = llm.model
    where = backend.describe() if backend is not None else "the Messages API"
    try:
        info = await llm.client.models.retrieve(model)
    except anthropic.NotFoundError as exc:
        raise ModelUnavailable(
            f"the model {model!r} does not exist at {where} (HTTP 404). Set ANTHROPIC_MODEL "
            "to a model your key can use (client.models.list() lists them)."
        ) from exc
    except anthropic.AuthenticationError as exc:
        raise ModelUnavailable(
            f"the API key was refused (HTTP 401) when looking up the model {model!r} at "
            f"{where}. Check ANTHROPIC_API_KEY."
        ) from exc
    except anthropic.PermissionDeniedError as exc:
        raise ModelUnavailable(
            f"the API key may not use the model {model!r} at {where} (HTTP 403). Check "
            "ANTHROPIC_API_KEY and ANTHROPIC_MODEL."
        ) from exc
    except anthropic.APIStatusError as exc:
        raise ModelUnavailable(
            f"looking up the model {model!r} at {where} failed with HTTP {exc.status_code}"
        ) from exc
    except anthropic.APIConnectionError as exc:
        raise ModelUnavailable(
            f"could not reach {where} to look up the model {model!r} ({exc})"
        ) from exc
    return info.display_name
