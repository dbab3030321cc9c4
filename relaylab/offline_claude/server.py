"""The stand-in's HTTP side: ``POST /v1/messages`` on aiohttp.web, as JSON or server-sent events.

Every body it sends is one of the ``anthropic`` SDK's own types, serialised, so the SDK
reads back exactly what it would read from the real API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import math
import signal
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from anthropic import types
from anthropic.types.raw_message_delta_event import Delta

from relaylab.core.log_lines import loggable
from relaylab.offline_claude import replies, tool_calls
from relaylab.offline_claude.cache import CacheUsage, PromptCache
from relaylab.offline_claude.replies import REPLIES, content_text, tokenize
from relaylab.offline_claude.validation import InvalidRequest, validate

log = logging.getLogger("relaylab.offline_claude")

FAILURE_KINDS: dict[str, tuple[int, str, str]] = {
    # kind: (HTTP status, Anthropic error type, message); status 0: no error response
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "rate_limit": (
        429,
        "rate_limit_error",
        "This request would exceed your rate limit (simulated by relaylab's offline Claude).",
    ),
    "server_error": (500, "api_error", "Internal server error"),
    "cut": (0, "", "the connection drops in the middle of the reply"),
    "hang": (0, "", "the request is accepted, then nothing is sent until the client gives up"),
    "stall": (0, "", "the reply starts, then stops without the connection closing"),
    "unauthorized": (401, "authentication_error", "invalid x-api-key"),
    "forbidden": (403, "permission_error", "Your API key does not have permission to do this."),
    "not_found": (404, "not_found_error", "model: {model}"),
    "too_large": (413, "request_too_large", "Request exceeds the maximum allowed size."),
    # Replies that end in other ways than end_turn (a stream of them, or one JSON message):
    "refusal": (0, "", "a few words, then stop_reason refusal"),
    "refusal_no_text": (0, "", "stop_reason refusal before any text"),
    "empty": (0, "", "stop_reason end_turn with no content at all"),
    "max_tokens": (0, "", "half the reply, then stop_reason max_tokens"),
    "pause_turn": (0, "", "half the reply, then stop_reason pause_turn; sent back, it goes on"),
    "context_window": (0, "", "half the reply, then stop_reason model_context_window_exceeded"),
    "error_event": (0, "", "a few words, then an overloaded_error event mid-stream"),
    "thinking": (0, "", "thinking deltas for `thinking_seconds` before the reply's first word"),
}
_CUT_SHORT: dict[str, types.StopReason] = {
    # kind: the stop reason after half the reply (None: after no text at all)
    "refusal": "refusal",
    "refusal_no_text": "refusal",
    "empty": "end_turn",
    "max_tokens": "max_tokens",
    "pause_turn": "pause_turn",
    "context_window": "model_context_window_exceeded",
}
MODELS = ("claude-haiku-5-5", "claude-sonnet-5", "claude-opus-5", "claude-offline")
"""Models ``GET /v1/models`` lists (``OfflineClaude.models``); requests may name any."""
_BREAK_AFTER = 10  # "cut" and "stall" send at most this many tokens (half the reply if fewer)
_MAX_BODY_BYTES = 32 * 1024 * 1024  # the real API's request size limit


@dataclass
class RecordedRequest:
    """One ``POST /v1/messages`` as the server saw it. Times are ``time.monotonic()``.

    ``outcome`` is "pending" while it runs, then "complete", "client_closed" (the client
    hung up before the reply was complete), "rejected" (a 400) or "failed:<kind>": a
    ``fail_next`` failure, or "failed:stopped" if the server stopped mid-reply. With
    "failed:hang" and "failed:stall", ``client_closed_at`` is when the client gave up.
    ``first_token_at`` is when the first token was written (for a JSON reply: the whole
    reply). ``reply`` is the text the server chose, ``tool_use`` its tool call
    (``{"id", "name", "input"}``) or None; ``tokens_planned`` counts the tokens (text
    tokens and tool-input chunks) it meant to send after max_tokens, ``tokens_sent``
    those it did send.
    """

    body: dict[str, Any]
    stream: bool
    received_at: float
    reply: str = ""
    tool_use: dict[str, Any] | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens_sent: int = 0
    tokens_planned: int = 0
    client_closed_at: float | None = None
    outcome: str = "pending"
    status: int = 200
    stop_reason: str | None = None
    error: str | None = None
    thinking_for: float = 0.0  # seconds of thinking before the first token
    usage: CacheUsage | None = None  # input, cache-written and cache-read tokens


TokenHook = Callable[[RecordedRequest, str, float], None]


@dataclass
class _Plan:
    """What a reply sends: text tokens, then maybe a tool call streamed as JSON chunks."""

    text: list[str]
    tool: types.ToolUseBlock | None = None
    chunks: list[str] = field(default_factory=list)
    stop_reason: types.StopReason = "end_turn"
    thinking: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.text) + len(self.chunks)


def _plan(body: dict[str, Any], preamble: str) -> tuple[str, _Plan]:
    """The full reply text, and what of it will be sent once max_tokens applies."""
    messages = body["messages"]
    index = replies.last_index(messages, "user")
    last_user = messages[index] if index is not None else {"content": ""}
    question = content_text(last_user["content"])
    results = tool_calls.tool_results(last_user)
    asked = tool_calls.choose_tool(body, question) if question.strip() else None
    stale = replies.results_are_stale(messages, results, asked["name"] if asked else None)
    if results and not replies.has_own_reply(question) and not stale:
        # The follow-up to a tool call, or a question about what the tools just said
        # ("did the booking go through?"): answered from the results. A question on one
        # of the stand-in's own topics ("tell me about dogs") is answered as itself.
        text, plan = tool_calls.answer_from_results(results), _Plan([])
    elif not replies.asks_how_far(question) and (chosen := tool_calls.choose_tool(body, question)):
        call = tool_calls.tool_call(chosen, question)
        text, plan = preamble, _Plan([], call, tokenize(json.dumps(call.input)), "tool_use")
    else:
        text, plan = replies.reply_for(messages), _Plan([])
    if messages and messages[-1]["role"] == "assistant":  # carry on a paused turn
        text = replies.continue_after(text, content_text_joined(messages[-1]["content"]))
        plan = _Plan([])
    plan.text = tokenize(text)
    if plan.size > body["max_tokens"]:  # a tool call that does not fit is dropped whole
        plan = _Plan(plan.text[: body["max_tokens"]], stop_reason="max_tokens")
    return text, plan


def content_text_joined(content: Any) -> str:
    """The text of a message's content, its text blocks run together as they were said."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def _cut_short(plan: _Plan, failure: str) -> _Plan:
    """The plan of a reply that ends as ``failure`` says (see ``_CUT_SHORT``)."""
    kept = [] if failure in ("refusal_no_text", "empty") else plan.text[: max(1, plan.size // 2)]
    if failure == "refusal":
        kept = plan.text[: min(_BREAK_AFTER, max(1, len(plan.text) // 2))]
    return _Plan(kept, stop_reason=_CUT_SHORT[failure])


def _thinking(seconds: float) -> list[str]:
    """Thinking deltas, one every ``_THINKING_STEP`` seconds for about ``seconds``."""
    count = max(1, round(seconds / _THINKING_STEP))
    return [f" Thinking it over, step {i + 1}." for i in range(count)]


_THINKING_STEP = 0.25


def _input_tokens(body: dict[str, Any]) -> int:
    """The stand-in's count of a request's input tokens."""
    system = body.get("system")
    texts = [system if isinstance(system, str) else content_text(system)]
    texts += [content_text(m["content"]) for m in body["messages"]]
    texts += [json.dumps(t) for t in body.get("tools") or []]
    # A few tokens of framing per message, as the real count includes.
    return sum(len(tokenize(t)) for t in texts) + 3 * len(body["messages"]) + 5


def _message(
    body: dict[str, Any], plan: _Plan | None, usage: CacheUsage | None = None
) -> types.Message:
    """The Message of a JSON reply, or with ``plan=None`` the empty one a stream starts with;
    ``usage``: its input tokens as the prompt cache counted them."""
    usage = usage or CacheUsage(_input_tokens(body))
    content: list[Any] = []
    if plan and plan.thinking:
        thought = "".join(plan.thinking)
        content.append(types.ThinkingBlock(type="thinking", thinking=thought, signature="sig"))
    if plan and plan.text:
        content.append(types.TextBlock(type="text", text="".join(plan.text)))
    if plan and plan.tool:
        content.append(plan.tool)
    return types.Message(
        id="msg_offline_" + uuid.uuid4().hex[:20],
        type="message",
        role="assistant",
        model=body["model"],
        content=content,
        stop_reason=plan.stop_reason if plan else None,
        stop_sequence=None,
        usage=types.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=plan.size if plan else 1,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
        ),
    )


def _error(status: int, error_type: str, message: str, **headers: str) -> web.Response:
    request_id = "req_offline_" + uuid.uuid4().hex[:24]
    error = {"type": error_type, "message": message}
    # Built by hand: the API's 413 ``request_too_large`` is not among the SDK's error types.
    body = {"type": "error", "error": error, "request_id": request_id}
    return web.Response(
        status=status,
        reason="Overloaded" if status == 529 else None,
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        headers={"request-id": request_id, **headers},
    )


def _sse(*events: Any) -> bytes:
    """Server-sent events; ``None`` stands for a ping, which has no SDK type."""
    return "".join(
        f"event: {e.type}\ndata: {e.to_json(indent=None)}\n\n"
        if e is not None
        else 'event: ping\ndata: {"type": "ping"}\n\n'
        for e in events
    ).encode()


KEPT_REQUESTS = 2_000
"""Request records kept; past this the older half is dropped, so memory stays flat."""


class OfflineClaude:
    """A local Messages API server that the ``anthropic`` SDK can talk to.

    Pacing: the first token is sent ``first_token_delay`` seconds after the request
    arrives, then ``tokens_per_second`` tokens a second (``math.inf``: no delay); a JSON
    reply is sent whole after the same total time. These can change between requests,
    as can ``tool_preamble`` (said before a tool call; "" for none) and ``on_token``,
    called as ``on_token(record, token, at)`` for every token and tool-input chunk written.

    ``connect_delay``: seconds the first request on each new connection waits before it
    is read, the model of what a fresh connection to the real API costs (TCP and TLS
    handshakes, tens to a few hundred milliseconds depending on distance). A connection
    the client keeps alive pays it once; ``connections`` counts them.
    """

    def __init__(
        self,
        first_token_delay: float = 0.4,
        tokens_per_second: float = 60.0,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_delay: float = 0.0,
    ) -> None:
        if first_token_delay < 0 or connect_delay < 0:
            raise ValueError("first_token_delay and connect_delay must be zero or more seconds")
        if not tokens_per_second > 0:
            raise ValueError("tokens_per_second must be more than zero (math.inf: no delay)")
        self.first_token_delay = first_token_delay
        self.tokens_per_second = tokens_per_second
        self.connect_delay = connect_delay
        self.connections = 0  # connections that sent a request
        self.prompt_cache = PromptCache(lambda text: len(tokenize(text)))
        """Prefixes marked with cache_control (relaylab.offline_claude.cache);
        ``prompt_cache.min_tokens`` is the minimum cacheable length (1,024 here)."""
        self._known: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self.host = host
        self.port = port
        self.tool_preamble = REPLIES["tool_preamble"]
        self.retry_after = 0.0
        """Seconds a 429 or 529 asks the client to wait (its ``retry-after`` header)."""
        self.thinking_seconds = 1.0
        """How long a reply thinks (streaming thinking deltas) before its text: a request with
        extended thinking enabled, or a ``fail_next("thinking")``."""
        self.models = list(MODELS)
        self.api_keys: set[str] | None = None
        """When set, only these keys (``x-api-key``, or ``Authorization: Bearer``) are
        accepted; other requests get 401."""
        self.requests: list[RecordedRequest] = []
        self.on_token: TokenHook | None = None
        self._failures: deque[str] = deque()
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def base_url(self) -> str:
        """The URL to give the SDK, e.g. ``http://127.0.0.1:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Start listening; afterwards ``port`` and ``base_url`` are set."""
        if self._runner is not None:
            raise RuntimeError("this OfflineClaude is already running")
        app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[self._connection])
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/models/{model_id}", self._get_model)
        app.router.add_route("*", "/{path:.*}", self._not_found)
        # handler_cancellation: a client hanging up cancels its handler at once, so a
        # reply notices an aborted request even while it waits for its next token.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner, self.port = runner, runner.addresses[0][1]
        log.info("Offline Claude is listening on %s", self.base_url)

    @web.middleware
    async def _connection(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Charge ``connect_delay`` to the first request of each new connection."""
        transport = request.transport
        if transport is not None and transport not in self._known:
            self._known.add(transport)
            self.connections += 1
            if self.connect_delay:
                await asyncio.sleep(self.connect_delay)
        return await handler(request)

    async def stop(self) -> None:
        """Stop listening and close any open connections at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        try:
            for task in self._handlers:
                task.cancel()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=1.0)
            await runner.cleanup()  # nothing is in flight any more: this is quick
        finally:
            self._stopping = False
        log.info("Offline Claude on %s has stopped", self.base_url)

    async def __aenter__(self) -> OfflineClaude:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def fail_next(self, kind: str, times: int = 1) -> None:
        """Make the next ``times`` requests fail as ``kind``, one failure per request.

        Kinds: "overloaded" (HTTP 529), "rate_limit" (429, ``retry-after: 0``),
        "server_error" (500), "cut" (the connection drops mid-reply), "hang" (nothing is
        sent until the client gives up), "stall" (a few tokens, then silence on an open
        connection). The SDK retries 429, 5xx and timeouts twice by default; use
        ``max_retries=0`` to see the error itself. Set ``retry_after`` for a 429 or 529
        that asks the client to wait.

        More HTTP errors: "unauthorized" (401), "forbidden" (403), "not_found" (404, the
        model), "too_large" (413). Replies that end other than with ``end_turn``:
        "refusal" (a few words, then ``refusal``), "refusal_no_text", "empty" (``end_turn``
        with no content), "max_tokens", "pause_turn" (send the paused reply back as an
        assistant turn and the next request carries on from it), "context_window"
        (``model_context_window_exceeded``), "error_event" (an ``overloaded_error`` event
        mid-stream) and "thinking" (thinking deltas for ``thinking_seconds`` first).
        """
        if kind not in FAILURE_KINDS:
            valid = ", ".join(repr(k) for k in FAILURE_KINDS)
            raise ValueError(f"unknown failure kind {kind!r}; valid kinds are {valid}")
        if times < 1:
            raise ValueError("times must be 1 or more")
        self._failures.extend([kind] * times)

    # ---- one request ----------------------------------------------------------------

    def _refused_key(self, request: web.Request) -> web.Response | None:
        if self.api_keys is None:
            return None
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if {request.headers.get("x-api-key"), bearer} & self.api_keys:
            return None
        return _error(401, "authentication_error", "invalid x-api-key")

    def _model_info(self, model_id: str) -> dict[str, Any]:
        info = types.ModelInfo(
            id=model_id,
            created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
            display_name=model_id.replace("-", " ").title(),
            lifecycle="active",
            type="model",
        )
        return json.loads(info.to_json(indent=None))

    async def _list_models(self, request: web.Request) -> web.Response:
        if refused := self._refused_key(request):
            return refused
        data = [self._model_info(m) for m in self.models]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        page = {"data": data, "has_more": False, "first_id": first, "last_id": last}
        return web.json_response(page)

    async def _get_model(self, request: web.Request) -> web.Response:
        if refused := self._refused_key(request):
            return refused
        model_id = request.match_info["model_id"]
        if model_id not in self.models:
            return _error(404, "not_found_error", f"model: {model_id}")
        return web.json_response(self._model_info(model_id))

    async def _not_found(self, request: web.Request) -> web.Response:
        message = f"Not found: {request.method} {request.path} (try POST /v1/messages)"
        return _error(404, "not_found_error", message)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        record = RecordedRequest(body={}, stream=False, received_at=time.monotonic())
        self.requests.append(record)
        if len(self.requests) > KEPT_REQUESTS:  # a long `relaylab serve --offline` run
            del self.requests[: -KEPT_REQUESTS // 2]
        try:
            return await self._answer(request, record)
        except asyncio.CancelledError:
            self._gone(request, record)
            raise
        finally:
            self._handlers.discard(task)

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise InvalidRequest("The request body must be a JSON object")
            record.body, record.stream = body, body.get("stream") is True
            validate(body)
        except (ValueError, InvalidRequest) as exc:  # JSONDecodeError is a ValueError
            problem = str(exc)
            if not isinstance(exc, InvalidRequest):
                problem = f"The request body is not valid JSON: {exc}"
            log.warning("Offline Claude rejected a request with 400: %s", problem)
            record.outcome, record.status, record.error = "rejected", 400, problem
            record.finished_at = time.monotonic()
            return _error(400, "invalid_request_error", problem)

        if refused := self._refused_key(request):
            record.outcome, record.status, record.error = "rejected", 401, "invalid x-api-key"
            record.finished_at = time.monotonic()
            return refused
        record.usage = self.prompt_cache.usage(body, _input_tokens(body))
        record.reply, plan = _plan(body, self.tool_preamble)
        if plan.tool:
            record.tool_use = plan.tool.model_dump(include={"id", "name", "input"})
        failure = self._failures.popleft() if self._failures else None
        if failure:
            log.info("Offline Claude fails this request (%s), as queued by fail_next()", failure)
        if failure in _CUT_SHORT:
            plan = _cut_short(plan, failure)
        elif failure == "thinking" or (body.get("thinking") or {}).get("type") == "enabled":
            plan.thinking = _thinking(self.thinking_seconds)
            record.thinking_for = len(plan.thinking) * _THINKING_STEP
        record.stop_reason, record.tokens_planned = plan.stop_reason, plan.size
        status, error_type, message = FAILURE_KINDS.get(failure or "", (0, "", ""))
        if failure == "error_event" and not record.stream:
            status, error_type, message = FAILURE_KINDS["overloaded"]
        if status:
            message = message.format(model=loggable(str(body.get("model"))))
            record.outcome, record.status, record.error = f"failed:{failure}", status, message
            record.finished_at = time.monotonic()
            retry = {}
            if failure == "rate_limit" or (failure == "overloaded" and self.retry_after):
                retry = {"retry-after": f"{self.retry_after:g}"}
            return _error(status, error_type, message, **retry)
        if failure == "hang":
            record.outcome = "failed:hang"
            await asyncio.Future()  # until the client gives up or stop(): both cancel us
        response = web.StreamResponse(headers={"request-id": "req_offline_" + uuid.uuid4().hex})
        try:
            if record.stream:
                await self._stream(request, response, record, plan, failure)
            else:
                await self._json(request, response, record, plan, failure)
        except ConnectionError:  # a write found the client gone
            self._gone(request, record)
        return response

    def _gone(self, request: web.Request, record: RecordedRequest) -> None:
        """The client hung up, or stop() is closing everything: record which, and when."""
        if record.finished_at is not None:
            return  # already over (a cut, or the last byte was out)
        record.finished_at = time.monotonic()
        if self._stopping:
            record.outcome = "failed:stopped" if record.outcome == "pending" else record.outcome
            if request.transport is not None:
                request.transport.abort()
            return
        record.client_closed_at = record.finished_at
        record.outcome = "client_closed" if record.outcome == "pending" else record.outcome
        log.info(
            "The client closed the connection after %d of %d tokens, so Offline Claude "
            "stopped this reply (this is what a cancelled or interrupted reply looks like)",
            record.tokens_sent,
            record.tokens_planned,
        )

    async def _wait_for_token(self, record: RecordedRequest, n: int) -> None:
        """Sleep until token ``n`` (0-based) of this reply is due."""
        tps = self.tokens_per_second
        per_token = 1.0 / tps if math.isfinite(tps) else 0.0
        due = record.received_at + self.first_token_delay + record.thinking_for + n * per_token
        await asyncio.sleep(max(due - time.monotonic(), 0))  # also lets a cancel land

    def _sent(self, record: RecordedRequest, token: str) -> None:
        now = time.monotonic()
        record.tokens_sent += 1
        record.first_token_at = record.first_token_at or now
        if self.on_token is not None:
            try:
                self.on_token(record, token, now)
            except Exception:
                log.exception("The on_token hook raised an error; ignoring it")

    async def _break(self, request: web.Request, record: RecordedRequest, failure: str) -> None:
        """Break the reply mid-way, as a "cut" (drop the connection) or a "stall"."""
        if failure == "stall":
            record.outcome = "failed:stall"
            await asyncio.Future()  # silence on an open connection until someone gives up
        transport = request.transport
        for _ in range(20):  # let what was written reach the client before the drop
            if transport is None or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        record.outcome, record.finished_at = "failed:cut", time.monotonic()
        if transport is not None:
            transport.abort()

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RecordedRequest,
        plan: _Plan,
        failure: str | None,
    ) -> None:
        response.content_type = "text/event-stream"
        response.headers["cache-control"] = "no-cache"
        await response.prepare(request)
        start = types.RawMessageStartEvent(
            type="message_start", message=_message(record.body, None, record.usage)
        )
        await response.write(_sse(start))
        blocks: list[tuple[Any, list[Any]]] = []
        if plan.thinking:
            thoughts: list[Any] = [
                types.ThinkingDelta(type="thinking_delta", thinking=t) for t in plan.thinking
            ]
            thoughts.append(types.SignatureDelta(type="signature_delta", signature="sig"))
            thinking = types.ThinkingBlock(type="thinking", thinking="", signature="")
            blocks.append((thinking, thoughts))
        if plan.text:
            words = [types.TextDelta(type="text_delta", text=t) for t in plan.text]
            blocks.append((types.TextBlock(type="text", text=""), words))
        if plan.tool:
            chunks = [
                types.InputJSONDelta(type="input_json_delta", partial_json=c) for c in plan.chunks
            ]
            blocks.append((plan.tool.model_copy(update={"input": {}}), chunks))
        breaks = failure in ("cut", "stall", "error_event")
        break_at = min(_BREAK_AFTER, max(1, plan.size // 2)) if breaks else -1
        for index, (block, deltas) in enumerate(blocks):
            opening = types.RawContentBlockStartEvent(
                type="content_block_start", index=index, content_block=block
            )
            await response.write(_sse(opening, None) if index == 0 else _sse(opening))
            for step, delta in enumerate(deltas):
                if block.type == "thinking":  # paced on its own clock, before the text
                    due = record.received_at + self.first_token_delay + step * _THINKING_STEP
                    await asyncio.sleep(max(due - time.monotonic(), 0))
                    event = types.RawContentBlockDeltaEvent(
                        type="content_block_delta", index=index, delta=delta
                    )
                    await response.write(_sse(event))
                    continue
                await self._wait_for_token(record, record.tokens_sent)
                if record.tokens_sent == break_at:
                    if failure == "error_event":
                        return await self._error_event(response, record)
                    return await self._break(request, record, failure or "")
                event = types.RawContentBlockDeltaEvent(
                    type="content_block_delta", index=index, delta=delta
                )
                await response.write(_sse(event))
                self._sent(record, getattr(delta, "text", None) or delta.partial_json)
            stop = types.RawContentBlockStopEvent(type="content_block_stop", index=index)
            await response.write(_sse(stop))
        closing = types.RawMessageDeltaEvent(
            type="message_delta",
            delta=Delta(stop_reason=plan.stop_reason, stop_sequence=None),
            usage=types.MessageDeltaUsage(output_tokens=plan.size),
        )
        await response.write(_sse(closing, types.RawMessageStopEvent(type="message_stop")))
        await response.write_eof()
        record.outcome, record.finished_at = "complete", time.monotonic()

    async def _error_event(self, response: web.StreamResponse, record: RecordedRequest) -> None:
        """End a stream with an ``error`` event, as the API does when it is overloaded
        mid-reply (the HTTP status was already 200)."""
        _, error_type, message = FAILURE_KINDS["overloaded"]
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        await response.write(f"event: error\ndata: {json.dumps(body)}\n\n".encode())
        await response.write_eof()
        record.outcome, record.finished_at = "failed:error_event", time.monotonic()
        record.error = message

    async def _json(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RecordedRequest,
        plan: _Plan,
        failure: str | None,
    ) -> None:
        if failure == "cut":
            return await self._break(request, record, failure)
        # The whole reply is "generated" before anything is sent, as with the real API.
        await self._wait_for_token(record, max(plan.size - 1, 0))
        payload = _message(record.body, plan, record.usage).to_json(indent=None).encode()
        response.content_type, response.content_length = "application/json", len(payload)
        await response.prepare(request)
        if failure == "stall":
            await response.write(payload[: len(payload) // 2])
            await self._break(request, record, failure)
        await response.write(payload)
        await response.write_eof()
        for token in plan.text + plan.chunks:
            self._sent(record, token)
        record.outcome, record.finished_at = "complete", time.monotonic()


# ---- standalone: python -m relaylab.offline_claude ---------------------------------------


async def _serve_forever(args: argparse.Namespace) -> None:
    claude = OfflineClaude(args.first_token_delay, args.tokens_per_second, args.host, args.port)
    await claude.start()
    print(f"Offline Claude is listening on {claude.base_url} (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await claude.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the offline Claude in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m relaylab.offline_claude",
        description="A local stand-in for Anthropic's Messages API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick a free port")
    parser.add_argument("--first-token-delay", type=float, default=0.4, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=60.0, metavar="N")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))
    return 0
