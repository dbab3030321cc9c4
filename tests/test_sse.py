"""The relay's stream reader reads every recorded SDK stream as the SDK itself does.

The streams are the ``anthropic`` SDK's own test fixtures, read from
``../shared/fixtures/anthropic-sdk-sse/`` (never copied into this repository). Each is
read whole and in small chunks, as recorded and re-framed (CRLF or CR line ends,
``data:`` without its space, comments added), first by ``relaylab.core.sse.SSEParser``
against the SDK's own ``SSEDecoder``, then over a real local HTTP server by the lean
reader (``FastStreamClient(client).messages.stream()``, ``relaylab serve --fast-stream``)
against the SDK's own ``messages.stream()``: the same text, piece by piece, and the same
final message, field for field.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest
from aiohttp import web
from anthropic._streaming import SSEDecoder
from anthropic.types import Message

from relaylab.core.sse import SSEParser
from relaylab.relay.streams import FastStreamClient, ReplyStream, partial_json

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "anthropic-sdk-sse"
if not FIXTURES.is_dir():  # a worktree sits one level deeper than the main checkout
    FIXTURES = Path("/work/shared/fixtures/anthropic-sdk-sse")
STREAMS = sorted(p for p in FIXTURES.glob("*") if p.suffix in (".txt", ".sse"))

pytestmark = pytest.mark.skipif(not STREAMS, reason="the recorded SDK streams are not here")


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")


def _cr(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r")


def _no_space(raw: bytes) -> bytes:
    return raw.replace(b"\ndata: ", b"\ndata:").replace(b"event: ", b"event:")


def _comments(raw: bytes) -> bytes:
    return b": keep-alive\n\n" + raw.replace(b"\n\nevent:", b"\n\n:comment\nevent:")


FRAMINGS: dict[str, Callable[[bytes], bytes]] = {
    "as recorded": lambda raw: raw,
    "CRLF": _crlf,
    "CR": _cr,
    "no space": _no_space,
    "CRLF, no space": lambda raw: _crlf(_no_space(raw)),
    "comments": _comments,
}


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] if size else [data]


def test_the_fixtures_are_here() -> None:
    assert len(STREAMS) >= 10, f"expected the recorded streams in {FIXTURES}"
    assert all(b"\r" not in p.read_bytes() for p in STREAMS)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 64])
@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_the_parser_reads_events_as_the_sdks_decoder(path: Path, framing: str, size: int) -> None:
    data = FRAMINGS[framing](path.read_bytes())
    expected = [(sse.event, sse.data) for sse in SSEDecoder().iter_bytes(iter(chunks(data, size)))]
    parser = SSEParser()
    got = [event for chunk in chunks(data, size) for event in parser.feed(chunk)]
    got += parser.close()
    assert got == expected
    # (Several recordings end without the blank line after message_stop; the spec, the
    # SDK and the parser all drop that unfinished last event.)
    assert sum(1 for name, _ in got if name == "message_delta") == 1


def test_multi_line_data_is_joined_with_line_feeds() -> None:
    parser = SSEParser()
    events = parser.feed(b"event: x\r\ndata: one\rdata:two\n\n: note\n\nevent:y\ndata\n\n")
    assert events == [("x", "one\ntwo"), ("y", "")]


# -- through real sockets: the lean reader against the SDK's messages.stream() ----------------


async def _serve(body: bytes, size: int) -> tuple[web.AppRunner, str]:
    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for piece in chunks(body, size):
            await response.write(piece)
            if size:
                await asyncio.sleep(0)  # separate writes, so pieces arrive apart
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


REQUEST: dict[str, Any] = {
    "model": "m",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Hi"}],
}


async def _read(manager: Any) -> tuple[list[str], Any]:
    """A stream read as the steps read it: its text as it arrives, then its final message."""
    async with manager as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    return pieces, final


async def _read_both(data: bytes, size: int) -> tuple[Any, Any]:
    """(text, final message as a dict) read by the SDK's messages.stream(), then by the
    lean reader, from the same bytes over real sockets."""
    runner, url = await _serve(data, size)
    try:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
            sdk_pieces, sdk_final = await _read(client.messages.stream(**REQUEST))
            fast = FastStreamClient(client).messages.stream(**REQUEST)
            assert isinstance(fast, ReplyStream)
            pieces, final = await _read(fast)
        assert type(final) is Message  # a real Message, as the steps' code expects
        assert await fast.get_final_message() is final  # built once
        # Unknown block types dump with pydantic's warnings, on either path alike.
        sdk = ("".join(sdk_pieces), sdk_final.model_dump(warnings=False))
        return sdk, ("".join(pieces), final.model_dump(warnings=False))
    finally:
        await runner.cleanup()


@pytest.mark.anyio
@pytest.mark.parametrize("size", [0, 5])
@pytest.mark.parametrize("framing", ["as recorded", "CRLF", "no space", "CRLF, no space"])
@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
async def test_the_lean_reader_reads_what_messages_stream_reads(
    path: Path, framing: str, size: int
) -> None:
    sdk, ours = await _read_both(FRAMINGS[framing](path.read_bytes()), size)
    assert ours == sdk
    assert sdk[1]["content"], "every recording has content"


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["as recorded", "CRLF", "no space"])
async def test_an_error_event_mid_stream_raises_after_the_same_text(framing: str) -> None:
    raw = (FIXTURES / "basic_response.txt").read_bytes()
    cut = raw.index(b"event: content_block_stop")
    error = (
        b'event: error\ndata: {"type":"error",'
        b'"error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    data = FRAMINGS[framing](raw[:cut] + error)
    runner, url = await _serve(data, 0)
    try:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
            texts: dict[str, list[str]] = {"sdk": [], "fast": []}
            errors: dict[str, anthropic.APIStatusError] = {}
            for name, messages in (
                ("sdk", client.messages),
                ("fast", FastStreamClient(client).messages),
            ):
                with pytest.raises(anthropic.APIStatusError) as raised:
                    async with messages.stream(**REQUEST) as stream:
                        async for text in stream.text_stream:
                            texts[name].append(text)
                errors[name] = raised.value
        assert "".join(texts["fast"]) == "".join(texts["sdk"]) != ""
        assert type(errors["fast"]) is type(errors["sdk"])
        for error in errors.values():
            assert error.body == json.loads(error_body(data))
            assert error.type == "overloaded_error" and "Overloaded" in str(error)
    finally:
        await runner.cleanup()


def error_body(data: bytes) -> str:
    """The data of the stream's error event."""
    return next(d for n, d in SSEParser().feed(data) if n == "error")


def _tool_inputs() -> list[str]:
    """Every tool input the recorded streams hold, as its JSON text."""
    inputs = []
    for path in STREAMS:
        parser = SSEParser()
        pieces: dict[int, str] = {}
        for name, data in parser.feed(path.read_bytes()):
            if name == "content_block_delta" and '"input_json_delta"' in data:
                event = json.loads(data)
                index = event["index"]
                pieces[index] = pieces.get(index, "") + event["delta"]["partial_json"]
        inputs += [raw for raw in pieces.values() if raw]
    return inputs


def test_a_tool_input_cut_anywhere_reads_as_the_sdks_partial_json() -> None:
    jiter = pytest.importorskip("jiter")  # what the SDK reads partial tool input with
    inputs = _tool_inputs()
    assert len(inputs) >= 3
    for raw in inputs:
        for end in range(1, len(raw) + 1):
            expected = jiter.from_json(raw[:end].encode(), partial_mode=True)
            assert partial_json(raw[:end]) == expected, raw[:end]
