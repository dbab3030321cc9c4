"""Run a Step against scripted frames, with no socket and no model server.

    result = await run_step("tracking", [setup(), prompt("Hi"), WaitFor(3), interrupt("Hel")],
                            claude=ScriptedClaude("Hello there, how can I help?"))
    result.frames_out, result.history

This is the session core alone: frames go straight into ``CallSession.receive``, the
frames it sends are collected, and ``ScriptedClaude`` answers like the ``anthropic``
SDK's client does (the SDK's own event and message types, token by token), from a
script instead of a network. Tests of what goes over the wire use the real relay,
the real SDK and the offline stand-in instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from anthropic.lib.streaming import AsyncMessageStreamManager
from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
    Usage,
)
from anthropic.types.raw_message_delta_event import Delta

from relaylab.core import twilio_frames
from relaylab.relay.llm import LLM
from relaylab.relay.session import CallSession, Limits
from relaylab.relay.step import resolve


@dataclass(frozen=True)
class WaitFor:
    """A pause in ``run_step``'s frames: until the relay has sent ``frames`` frames in all.

    The frames after it arrive the moment that frame is sent, while the reply that sent
    it is still running and ready to send more: the hardest moment for an interrupt."""

    frames: int
    timeout: float = 5.0


@dataclass(frozen=True)
class Pause:
    """A pause in ``run_step``'s frames: ``seconds`` of the call going on."""

    seconds: float


@dataclass
class RunResult:
    """What a scripted call did: every frame both ways in order, and the stored history."""

    log: list[tuple[str, dict[str, Any]]]
    history: list[dict[str, Any]]
    session: CallSession

    @property
    def frames_out(self) -> list[dict[str, Any]]:
        return [frame for direction, frame in self.log if direction == "out"]

    def out_after(self, message_type: str) -> list[dict[str, Any]]:
        """Frames sent after the first inbound frame of ``message_type``."""
        start = next(
            i for i, (d, f) in enumerate(self.log) if d == "in" and f.get("type") == message_type
        )
        return [frame for direction, frame in self.log[start:] if direction == "out"]


class ScriptedClaude:
    """Stands in for ``anthropic.AsyncAnthropic`` in session tests: each request gets the
    next scripted reply (the last one repeats), streamed a word at a time."""

    def __init__(
        self,
        *replies: str | BaseException | ToolCall,
        first_token_delay: float = 0.0,
        token_delay: float = 0.0,
    ) -> None:
        self.replies = list(replies) or ["Hello there."]
        self.first_token_delay = first_token_delay
        self.token_delay = token_delay
        self.requests: list[dict[str, Any]] = []
        self.closed_streams = 0
        self.messages = self
        self.with_streaming_response = _RawResponses(self)

    async def create(self, *, stream: bool = False, **request: Any) -> Any:
        """Like ``client.messages.create``: a Message, or with ``stream=True`` an event stream."""
        self.requests.append(json.loads(json.dumps(request)))
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        if isinstance(reply, ToolCall):  # a scripted tool call: see the block near the end
            return _ToolCallStream(self, reply) if stream else reply.message(request)
        if stream:
            return _Stream(self, reply)
        if isinstance(reply, BaseException):
            raise reply
        await asyncio.sleep(self.first_token_delay + self.token_delay * len(_words(reply)))
        return Message(
            id="msg_scripted",
            type="message",
            role="assistant",
            model=request.get("model", "scripted"),
            content=[TextBlock(type="text", text=reply)],
            stop_reason="end_turn",
            usage=Usage(input_tokens=1, output_tokens=len(_words(reply))),
        )

    def stream(self, **request: Any) -> AsyncMessageStreamManager[Any]:
        """Like ``client.messages.stream``: the SDK's own stream helper over the events."""
        return AsyncMessageStreamManager(self.create(stream=True, **request))


class _RawResponses:
    """``client.messages.with_streaming_response``: the same stream, as the server-sent
    event bytes the API would send (what ``relaylab.relay.streams.ReplyStream`` reads)."""

    def __init__(self, claude: ScriptedClaude) -> None:
        self._claude = claude

    def create(self, **request: Any) -> _RawResponse:
        return _RawResponse(self._claude, request)


class _RawResponse:
    http_request = None

    def __init__(self, claude: ScriptedClaude, request: dict[str, Any]) -> None:
        self._claude = claude
        self._request = request
        self._stream: Any = None

    async def __aenter__(self) -> _RawResponse:
        self._stream = await self._claude.create(**self._request)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stream.__aexit__(*exc)

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        async for event in self._stream:
            yield f"event: {event.type}\ndata: {event.model_dump_json()}\n\n".encode()


class _Stream:
    def __init__(self, claude: ScriptedClaude, reply: str | BaseException) -> None:
        self._claude = claude
        self._reply = reply

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._claude.closed_streams += 1

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._events()

    async def _events(self) -> AsyncIterator[Any]:
        claude, reply = self._claude, self._reply
        yield _message_start()
        await asyncio.sleep(claude.first_token_delay)
        if isinstance(reply, BaseException):
            raise reply
        yield RawContentBlockStartEvent(
            type="content_block_start", index=0, content_block=TextBlock(type="text", text="")
        )
        for word in _words(reply):
            yield RawContentBlockDeltaEvent(
                type="content_block_delta", index=0, delta=TextDelta(type="text_delta", text=word)
            )
            if claude.token_delay:  # else the next token is ready at once, as if buffered
                await asyncio.sleep(claude.token_delay)
        yield RawContentBlockStopEvent(type="content_block_stop", index=0)
        yield RawMessageDeltaEvent(
            type="message_delta",
            delta=Delta(stop_reason="end_turn"),
            usage=MessageDeltaUsage(output_tokens=len(_words(reply))),
        )
        yield RawMessageStopEvent(type="message_stop")


# -- scripted tool calls (lesson 5) ----------------------------------------------------------


@dataclass
class ToolCall:
    """A scripted reply that calls a tool, for ``ScriptedClaude``: first ``text`` (streamed a
    word at a time, may be ""), then a ``tool_use`` block whose input streams as
    ``input_json_delta`` chunks, then ``stop_reason: "tool_use"``; as the real API does.

    ``chunks_sent`` counts the input chunks streamed so far, so a test can tell that an
    interrupt landed while the tool's input was still streaming.
    """

    name: str
    input: dict[str, Any]
    text: str = ""
    id: str = ""
    chunks: int = 4
    chunks_sent: int = 0

    def __post_init__(self) -> None:
        self.id = self.id or f"toolu_scripted_{self.name}"

    def block(self) -> ToolUseBlock:
        return ToolUseBlock(type="tool_use", id=self.id, name=self.name, input=self.input)

    def json_chunks(self) -> list[str]:
        """The input as JSON, cut into ``chunks`` pieces that join back to it."""
        text = json.dumps(self.input)
        size = max(1, -(-len(text) // max(1, self.chunks)))
        return [text[i : i + size] for i in range(0, len(text), size)]

    def message(self, request: dict[str, Any]) -> Message:
        content: list[Any] = [TextBlock(type="text", text=self.text)] if self.text else []
        return Message(
            id="msg_scripted",
            type="message",
            role="assistant",
            model=request.get("model", "scripted"),
            content=[*content, self.block()],
            stop_reason="tool_use",
            usage=Usage(input_tokens=1, output_tokens=len(self.json_chunks())),
        )


def _message_start() -> RawMessageStartEvent:
    message = Message(
        id="msg_scripted",
        type="message",
        role="assistant",
        model="scripted",
        content=[],
        stop_reason=None,
        usage=Usage(input_tokens=1, output_tokens=0),
    )
    return RawMessageStartEvent(type="message_start", message=message)


class _ToolCallStream(_Stream):
    def __init__(self, claude: ScriptedClaude, call: ToolCall) -> None:
        super().__init__(claude, "")
        self._call = call

    async def _events(self) -> AsyncIterator[Any]:
        claude, call = self._claude, self._call
        call.chunks_sent = 0
        yield _message_start()
        await asyncio.sleep(claude.first_token_delay)
        index = 0
        if call.text:
            yield RawContentBlockStartEvent(
                type="content_block_start", index=0, content_block=TextBlock(type="text", text="")
            )
            for word in _words(call.text):
                yield RawContentBlockDeltaEvent(
                    type="content_block_delta",
                    index=0,
                    delta=TextDelta(type="text_delta", text=word),
                )
                if claude.token_delay:
                    await asyncio.sleep(claude.token_delay)
            yield RawContentBlockStopEvent(type="content_block_stop", index=0)
            index = 1
        yield RawContentBlockStartEvent(
            type="content_block_start",
            index=index,
            content_block=call.block().model_copy(update={"input": {}}),
        )
        for chunk in call.json_chunks():
            if claude.token_delay:
                await asyncio.sleep(claude.token_delay)
            yield RawContentBlockDeltaEvent(
                type="content_block_delta",
                index=index,
                delta=InputJSONDelta(type="input_json_delta", partial_json=chunk),
            )
            call.chunks_sent += 1
        yield RawContentBlockStopEvent(type="content_block_stop", index=index)
        yield RawMessageDeltaEvent(
            type="message_delta",
            delta=Delta(stop_reason="tool_use"),
            usage=MessageDeltaUsage(output_tokens=len(call.json_chunks())),
        )
        yield RawMessageStopEvent(type="message_stop")


# -- end of scripted tool calls --------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Split into tokens that join back to ``text``: each word with the space before it."""
    words = text.split(" ")
    return [words[0]] + [" " + word for word in words[1:]]


async def run_step(
    step: object,
    frames_in: Iterable[str | bytes | dict[str, Any] | WaitFor | Pause],
    *,
    claude: ScriptedClaude | None = None,
    limits: Limits | None = None,
    settle: float = 5.0,
    greeting: str = "",
    preemptible: bool = False,
) -> RunResult:
    """Feed ``frames_in`` to a fresh CallSession running ``step``; return what happened.
    ``greeting`` and ``preemptible`` are what the call's TwiML would tell Twilio.

    A ``setup`` frame is sent first unless the frames start with one. After the last
    frame the call runs until the relay is idle (or ``settle`` seconds pass), then hangs up.
    """
    log: list[tuple[str, dict[str, Any]]] = []
    waiting: list[tuple[int, asyncio.Future[None]]] = []

    async def send(frame: str) -> None:
        log.append(("out", json.loads(frame)))
        sent = len(_out(log))
        for count, reached in waiting:
            if sent >= count and not reached.done():
                reached.set_result(None)
        await asyncio.sleep(0)  # a socket write lets the loop run, like the real one may

    # ScriptedClaude answers like AsyncAnthropic without being one.
    llm = LLM(client=claude or ScriptedClaude(), model="scripted")  # type: ignore[arg-type]
    session = CallSession(
        send,
        step=resolve(step),
        llm=llm,
        limits=limits,
        greeting=greeting,
        preemptible=preemptible,
    )
    frames = list(frames_in)
    if not frames or not _is_setup(frames[0]):
        frames.insert(0, twilio_frames.setup_frame("CA" + "0" * 32))
    received = 0
    for item in frames:
        if isinstance(item, WaitFor):
            reached = asyncio.get_running_loop().create_future()
            waiting.append((item.frames, reached))
            if len(_out(log)) < item.frames:
                await asyncio.wait_for(reached, item.timeout)
        elif isinstance(item, Pause):
            await asyncio.sleep(item.seconds)
        else:
            frame = json.dumps(item) if isinstance(item, dict) else item
            log.append(("in", _as_dict(frame)))
            session.receive(frame)
            received += 1
    if not await session.until_idle(received, settle):
        raise TimeoutError(f"the call did not settle within {settle} s")
    await session.close()
    return RunResult(log=log, history=session.conversation.snapshot(), session=session)


def _out(log: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [frame for direction, frame in log if direction == "out"]


def _is_setup(item: object) -> bool:
    if isinstance(item, dict):
        return item.get("type") == "setup"
    return isinstance(item, str) and _as_dict(item).get("type") == "setup"


def _as_dict(frame: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(frame)
    except ValueError:
        return {"raw": frame}
    return value if isinstance(value, dict) else {"raw": value}


__all__ = ["Pause", "RunResult", "ScriptedClaude", "ToolCall", "WaitFor", "run_step"]
