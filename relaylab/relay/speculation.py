"""Speculative replies: ask Claude while the caller is still finishing their sentence.

With ``partialPrompts`` on, Twilio sends the transcript so far (``last: false``) as the
caller speaks, then, once its endpointing decides the turn is over (``speechTimeout``,
``turnDetection``), the final prompt (``last: true``). That wait is dead time for a relay
that only acts on the final prompt. A ``Speculator`` uses it:

1. A partial prompt that stays unchanged for ``stable_ms`` is *stable*: the speculator
   starts the request the step would make if that were the final prompt (the call's
   history plus the partial words, with the settings of the step's latest request).
2. Nothing is spoken: the speculative reply is read into a buffer, never into the call.
3. When the final prompt arrives and its words match (``normalise``: case, punctuation
   and spacing aside), the step's own request for it is answered from that buffer, at
   once for the tokens already received, then live. Any step works unchanged: the hand
   over happens in the HTTP transport (``SpeculativeTransport``), matching the step's
   real request body to the speculative one.
4. A final prompt with other words, a newer partial, a step that asks for something else,
   or a hang-up cancels the speculative request (closing it aborts the HTTP request);
   the step's request then goes to Claude as usual. Wasted requests and the text tokens
   they had received are counted (``SpeculationStats``). Aborting a request closes its
   HTTP/1.1 connection, so the speculator opens a replacement at once (a models lookup)
   rather than let the next request pay for a new one.

Not free: every cancelled speculation is a request Claude was sent (its input tokens are
billed by the real API even when cancelled early). ``stable_ms`` trades that waste
against the time saved.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2

from relaylab.core.log_lines import loggable

log = logging.getLogger("relaylab.relay.speculation")

STABLE_MS = 150.0
"""How long a partial prompt must stay unchanged to be speculated on (the default)."""
CLAIM_WINDOW = 2.0
"""Seconds after a matching final prompt the step has to make its request; then the
speculation is dropped as wasted."""

# The speculator of the call whose reply task is running (set in the reply's context).
current: contextvars.ContextVar[Speculator | None] = contextvars.ContextVar(
    "relaylab_speculator", default=None
)
# Set inside a speculation's own task: its request passes through and is recorded.
_speculating: contextvars.ContextVar[Speculation | None] = contextvars.ContextVar(
    "relaylab_speculating", default=None
)


def normalise(text: str) -> str:
    """The words of ``text``, lower case, without punctuation: "Tell me, about DOGS." and
    "tell me about dogs" are the same prompt."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _strip_cache_marks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_cache_marks(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_cache_marks(v) for v in value]
    return value


def request_key(body: dict[str, Any]) -> str:
    """What must be equal for a speculative request to stand in for a real one: the whole
    body, with cache marks left out (they change no word of the reply) and the last user
    turn's text normalised. System prompts given as one text block or as a string count
    as the same."""
    body = _strip_cache_marks(body)
    system = body.get("system")
    if isinstance(system, list):
        body["system"] = _text_of(system)
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last = messages[-1]
        if last.get("role") == "user":
            messages[-1] = {"role": "user", "content": normalise(_text_of(last.get("content")))}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def is_messages_stream(request: httpx2.Request) -> dict[str, Any] | None:
    """The JSON body of a streamed Messages API request, else None."""
    if request.method != "POST" or not request.url.path.endswith("/v1/messages"):
        return None
    try:
        body = json.loads(request.content)
    except (ValueError, httpx2.RequestNotRead):
        return None
    return body if isinstance(body, dict) and body.get("stream") is True else None


@dataclass
class SpeculationStats:
    """What speculation did on one call."""

    started: int = 0  # speculative requests sent
    kept: int = 0  # handed over to the step's real request
    wasted_requests: int = 0  # cancelled: the words changed, or nobody claimed them
    wasted_tokens: int = 0  # text deltas those had received
    saved_ms: list[float] = field(default_factory=list)  # head start of each kept one


@dataclass(eq=False)
class Speculation:
    """One speculative request and everything it has received so far."""

    words: str  # the normalised partial prompt it answers
    text: str = ""  # that partial prompt as Twilio sent it
    started_at: float = field(default_factory=time.monotonic)
    key: str | None = None  # request_key of its body, once the transport saw it
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    done: bool = False
    failed: bool = False
    claimed: bool = False
    final_matched: bool = False
    task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # headers in (or failed)
    keyed: asyncio.Event = field(default_factory=asyncio.Event)  # key set (or failed)
    more: asyncio.Event = field(default_factory=asyncio.Event)  # a chunk or the end came

    @property
    def text_tokens(self) -> int:
        return sum(chunk.count(b'"text_delta"') for chunk in self.chunks)

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.more.set()

    def finish(self, failed: bool = False) -> None:
        self.done = True
        self.failed = self.failed or failed
        self.keyed.set()
        self.ready.set()
        self.more.set()

    async def replay(self) -> AsyncIterator[bytes]:
        """Every chunk received so far at once, then the rest as it comes."""
        sent = 0
        while True:
            while sent < len(self.chunks):
                sent += 1
                yield self.chunks[sent - 1]
            if self.done:
                return
            self.more.clear()
            if sent == len(self.chunks) and not self.done:
                await self.more.wait()


class _ReplayStream(httpx2.AsyncByteStream):
    """The response body the step's request reads: the speculation's bytes. Closing it
    early (an interrupt, a barge-in) cancels the speculative request."""

    def __init__(self, speculation: Speculation) -> None:
        self._speculation = speculation

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._speculation.replay():
            yield chunk

    async def aclose(self) -> None:
        task = self._speculation.task
        if task is not None and not task.done():
            task.cancel()


class SpeculativeTransport(httpx2.AsyncBaseTransport):
    """Wraps the model client's HTTP transport: a streamed Messages request made inside a
    call with a speculator is answered from the matching speculation, if there is one;
    every other request passes straight through."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        speculating = _speculating.get()
        speculator = current.get()
        if speculating is None and speculator is None:
            return await self.inner.handle_async_request(request)
        body = is_messages_stream(request)
        if body is None:
            return await self.inner.handle_async_request(request)
        if speculating is not None:
            speculating.key = request_key(body)
            speculating.keyed.set()
            return await self.inner.handle_async_request(request)
        assert speculator is not None
        speculator.remember(body)
        speculation = await speculator.claim(request_key(body))
        if speculation is None:
            return await self.inner.handle_async_request(request)
        return httpx2.Response(
            speculation.status,
            headers=speculation.headers,
            stream=_ReplayStream(speculation),
            request=request,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def install(http_client: httpx2.AsyncClient) -> httpx2.AsyncClient:
    """Put a SpeculativeTransport in front of ``http_client``'s transport (the SDK's own
    client, httpx or aiohttp). Requests outside a speculating call are untouched."""
    inner = http_client._transport  # httpx keeps no public setter for it
    if not isinstance(inner, SpeculativeTransport):
        http_client._transport = SpeculativeTransport(inner)
    return http_client


class Speculator:
    """Speculation for one call. ``partial`` and ``final`` are fed the call's prompts;
    ``request(text, latest)`` builds the request a step would make if ``text`` were the
    final prompt, from ``latest``, the settings of the step's latest request (or None)."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        request: Callable[[str, dict[str, Any] | None], dict[str, Any]],
        *,
        stable_ms: float = STABLE_MS,
        name: str = "a call",
    ) -> None:
        self.client = client.with_options(max_retries=0)  # a failed guess is just dropped
        self.request = request
        self.stable_ms = stable_ms
        self.name = name
        self.stats = SpeculationStats()
        self.last_request: dict[str, Any] | None = None  # the step's latest real body
        self.speculation: Speculation | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.closed = False
        self.model: str | None = None  # for replacement connections before any request
        self._rewarming: set[asyncio.Task[None]] = set()

    def partial(self, text: str, busy: bool = False) -> None:
        """A partial prompt arrived; ``busy``: a reply is running (no speculating then)."""
        words = normalise(text)
        current_words = self.speculation.words if self.speculation else None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if busy or not words or self.closed or words == current_words:
            return
        self._drop("a newer partial prompt")
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.stable_ms / 1000, self._start, words, text)

    def final(self, text: str) -> None:
        """The final prompt arrived: keep a speculation on the same words, drop any other."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        speculation = self.speculation
        if speculation is None:
            return
        if speculation.words != normalise(text):
            self._drop("the final prompt has other words")
            return
        speculation.final_matched = True
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(CLAIM_WINDOW, self._drop, "the step did not ask for it")

    def remember(self, body: dict[str, Any]) -> None:
        """The settings of the step's latest request, for the next speculation."""
        self.last_request = {k: v for k, v in body.items() if k not in ("messages", "stream")}

    async def claim(self, key: str) -> Speculation | None:
        """The matching speculation for a real request with ``key``, if one is ready to
        stand in; a speculation that does not match is dropped."""
        speculation = self.speculation
        if speculation is None or not speculation.final_matched:
            return None
        await speculation.keyed.wait()  # (its request may not have left yet)
        if speculation.key != key:
            self._drop_if_current(speculation, "the step asked for something else")
            return None
        await speculation.ready.wait()
        if speculation.failed or speculation.status != 200:
            self._drop_if_current(speculation, "it failed")
            return None
        speculation.claimed = True
        self.speculation = None
        if self._expiry is not None:
            self._expiry.cancel()
        self.stats.kept += 1
        self.stats.saved_ms.append((time.monotonic() - speculation.started_at) * 1000)
        return speculation

    def _drop_if_current(self, speculation: Speculation, why: str) -> None:
        # (A newer partial prompt may have replaced it while the claim waited.)
        if self.speculation is speculation:
            self._drop(why)

    def close(self) -> None:
        """The call ended: cancel whatever is in flight."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._drop("the call ended")

    def _start(self, words: str, text: str) -> None:
        self._timer = None
        if self.closed:
            return
        try:
            body = self.request(text, self.last_request)
        except Exception:
            log.exception("%s: could not build a speculative request", self.name)
            return
        speculation = Speculation(words, text)
        self.speculation = speculation
        self.model = self.model or body.get("model")
        self.stats.started += 1
        context = contextvars.copy_context()
        context.run(current.set, None)
        context.run(_speculating.set, speculation)
        speculation.task = asyncio.get_running_loop().create_task(
            self._read(speculation, body), context=context
        )

    async def _read(self, speculation: Speculation, body: dict[str, Any]) -> None:
        try:
            streaming = self.client.messages.with_streaming_response
            async with streaming.create(**body) as response:
                raw = response.http_response
                speculation.status = raw.status_code
                speculation.headers = list(raw.headers.raw)
                speculation.ready.set()
                async for chunk in raw.aiter_raw():
                    speculation.add(chunk)
        except asyncio.CancelledError:
            speculation.finish(failed=True)
            raise
        except Exception as exc:  # a guess that failed is dropped; the real request retries
            log.info("%s: a speculative request failed: %s", self.name, loggable(str(exc)))
            speculation.finish(failed=True)
        else:
            speculation.finish()

    def _drop(self, why: str) -> None:
        speculation = self.speculation
        if speculation is None:
            return
        self.speculation = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.stats.wasted_requests += 1
        self.stats.wasted_tokens += speculation.text_tokens
        log.info("%s: dropped a speculative reply (%s)", self.name, why)
        if speculation.task is not None and not speculation.task.done():
            speculation.task.cancel()
            if not self.closed and not speculation.done:
                self._rewarm()
        if not speculation.done:  # wakes a claim waiting on it, even if the task never ran
            speculation.finish(failed=True)

    def _rewarm(self) -> None:
        """Aborting a request in flight closes its HTTP/1.1 connection, so the next
        request would pay for a new one: open a replacement now, while the next partial
        prompt settles (a models lookup, as relaylab.relay.prewarm does)."""
        model = (self.last_request or {}).get("model") or self.model
        if model:
            task = asyncio.get_running_loop().create_task(self._lookup(str(model)))
            self._rewarming.add(task)
            task.add_done_callback(self._rewarming.discard)

    async def _lookup(self, model: str) -> None:
        # Two at once: one may take a connection already idle in the pool, the other then
        # opens the replacement, so the pool keeps a spare for the next speculation.
        try:
            await asyncio.gather(*(self.client.models.retrieve(model) for _ in range(2)))
        except Exception as exc:
            log.info("%s: could not open a replacement connection: %s", self.name, exc)
