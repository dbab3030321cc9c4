"""The offline Claude, through real sockets and the real ``anthropic`` SDK."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import pytest

from relaylab.offline_claude import REPLIES, OfflineClaude, tokenize

MODEL = "claude-offline"
DOGS = [{"role": "user", "content": "Tell me about dogs"}]
Y1999 = [{"role": "user", "content": "Name ten things that happened in 1999"}]

Body = Callable[[OfflineClaude, anthropic.AsyncAnthropic], Awaitable[Any]]


def run(body: Body, *, delay: float = 0.0, tps: float = math.inf, retries: int = 0) -> Any:
    """Run ``body(claude, client)`` against a fresh server, fast unless told otherwise."""

    async def main() -> Any:
        async with OfflineClaude(first_token_delay=delay, tokens_per_second=tps) as claude:
            client = anthropic.AsyncAnthropic(
                base_url=claude.base_url, api_key="offline", max_retries=retries
            )
            try:
                return await body(claude, client)
            finally:
                await client.close()

    return asyncio.run(main())


async def create(client: anthropic.AsyncAnthropic, messages: list[dict], **kw: Any) -> Any:
    return await client.messages.create(
        model=MODEL, max_tokens=kw.pop("max_tokens", 1000), messages=messages, **kw
    )


async def stream_text(client: anthropic.AsyncAnthropic, messages: list[dict], **kw: Any) -> str:
    async with client.messages.stream(
        model=MODEL, max_tokens=kw.pop("max_tokens", 1000), messages=messages, **kw
    ) as stream:
        return "".join([text async for text in stream.text_stream])


async def raw_http(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one response with a Content-Length body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body
    finally:
        writer.close()


def post(body: dict | bytes, path: str = "/v1/messages") -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


# ---- replies ---------------------------------------------------------------------------


def test_create_returns_the_table_reply() -> None:
    message = run(lambda claude, client: create(client, Y1999))
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == REPLIES["1999"]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == len(tokenize(REPLIES["1999"]))
    assert message.usage.input_tokens > 0


def test_replies_are_chosen_by_keyword_from_the_last_user_message() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> list[str]:
        asks = ["Hello there", "hi", "Tell me ABOUT DOGS please", "What is the capital of Peru?"]
        history = [*Y1999, {"role": "assistant", "content": "Sure."}]
        replies = [
            (await create(client, [{"role": "user", "content": a}])).content[0].text for a in asks
        ]
        replies.append(
            (await create(client, [*history, {"role": "user", "content": "hey"}])).content[0].text
        )
        return replies

    hello, hi, dogs, peru, hey = run(body)
    assert hello == hi == hey == REPLIES["greeting"]
    assert dogs == REPLIES["dogs"]
    assert "capital of Peru" in peru
    assert 80 <= len(peru.split()) <= 130


def test_replies_are_written_for_the_ear() -> None:
    for text in [*REPLIES.values(), REPLIES["default"].format(topic="the weather")]:
        assert not re.search(r"[0-9*#_`\[\]<>|~]", text), text
    assert len(REPLIES["1999"].split()) >= 100
    assert all(f"{n}," in REPLIES["1999"] for n in ("One", "Five", "Ten"))
    assert len(REPLIES["dogs"].split()) >= 100


def test_default_reply_spells_out_numbers_in_the_topic() -> None:
    message = run(
        lambda c, client: create(client, [{"role": "user", "content": "What about 2024?"}])
    )
    text = message.content[0].text
    assert "twenty twenty four" in text
    assert not re.search(r"\d", text)


def test_content_as_a_list_of_text_blocks_and_a_system_prompt() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Tell me about dogs"}]}]
    system = [{"type": "text", "text": "You are on a phone call."}]
    message = run(lambda c, client: create(client, messages, system=system))
    assert message.content[0].text == REPLIES["dogs"]


def test_tokens_look_like_claude_tokens() -> None:
    for text in REPLIES.values():
        tokens = tokenize(text)
        assert "".join(tokens) == text
        assert 1.0 <= len(tokens) / len(text.split()) <= 1.6
    assert tokenize("Hello, the euro was launched.") == [
        "Hello",
        ",",
        " the",
        " euro",
        " was",
        " launched",
        ".",
    ]


# ---- "how far did you get?" -------------------------------------------------------------


def progress_reply(history: list[dict], question: str = "How far did you get?") -> str:
    messages = [*history, {"role": "user", "content": question}]
    return run(lambda c, client: create(client, messages)).content[0].text


def test_how_far_quotes_the_end_of_the_last_assistant_turn() -> None:
    heard = "Here are ten things that happened in nineteen ninety nine. One, the euro was launched"
    text = progress_reply([*Y1999, {"role": "assistant", "content": heard}])
    assert text == (
        "You stopped me just after I said: '... One, the euro was launched'. "
        "Want me to go on from there?"
    )


def test_how_far_uses_the_last_of_several_assistant_turns_and_other_phrasings() -> None:
    history = [
        *Y1999,
        {"role": "assistant", "content": "Here are ten things"},
        *DOGS,
        {"role": "assistant", "content": [{"type": "text", "text": "Dogs were the first animals"}]},
    ]
    for question in ("Where did you stop?", "what did you say last", "Hi, how far did you get"):
        assert "'Dogs were the first animals'" in progress_reply(history, question)


def test_how_far_knows_when_the_reply_was_finished() -> None:
    text = progress_reply([*DOGS, {"role": "assistant", "content": REPLIES["dogs"]}])
    assert text.startswith("I got all the way to the end")
    assert "a particular breed" in text


def test_how_far_with_no_assistant_turn() -> None:
    assert progress_reply([]) == REPLIES["progress_nothing"]


# ---- streaming ---------------------------------------------------------------------------


def test_streamed_text_equals_the_non_streamed_text() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> tuple[str, str]:
        return (await create(client, DOGS)).content[0].text, await stream_text(client, DOGS)

    created, streamed = run(body)
    assert streamed == created == REPLIES["dogs"]


def test_stream_event_order_as_the_sdk_sees_it() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        async with client.messages.stream(model=MODEL, max_tokens=500, messages=DOGS) as s:
            types = [event.type async for event in s]
            return types, await s.get_final_message(), claude.requests[-1]

    types, final, record = run(body)
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    middle = types[2:-3]
    assert middle == ["content_block_delta", "text"] * (len(middle) // 2)
    assert len(middle) // 2 == len(tokenize(REPLIES["dogs"]))
    assert final.content[0].text == REPLIES["dogs"]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(tokenize(REPLIES["dogs"]))
    assert record.stream and record.outcome == "complete"
    assert record.tokens_sent == len(tokenize(REPLIES["dogs"]))


def test_sse_wire_format() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> bytes:
        payload = {"model": MODEL, "max_tokens": 3, "messages": DOGS, "stream": True}
        reader, writer = await asyncio.open_connection("127.0.0.1", claude.port)
        writer.write(post(payload))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert b"content-type: text/event-stream" in head.lower()
        body = b""
        while True:  # de-chunk
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        writer.close()
        return body

    events = re.findall(rb"^event: (\w+)$", run(body), re.MULTILINE)
    assert [e.decode() for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_max_tokens_stops_the_reply() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        message = await create(client, DOGS, max_tokens=5)
        async with client.messages.stream(model=MODEL, max_tokens=5, messages=DOGS) as s:
            streamed = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
        return message, streamed, final

    message, streamed, final = run(body)
    expected = "".join(tokenize(REPLIES["dogs"])[:5])
    assert message.content[0].text == streamed == expected
    assert message.stop_reason == final.stop_reason == "max_tokens"
    assert message.usage.output_tokens == final.usage.output_tokens == 5


# ---- pacing --------------------------------------------------------------------------------


def test_pacing_time_to_first_token_and_tokens_per_second() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        greeting = [{"role": "user", "content": "hello"}]
        start = time.monotonic()
        first = None
        async with client.messages.stream(model=MODEL, max_tokens=500, messages=greeting) as s:
            async for _ in s.text_stream:
                first = first or time.monotonic()
        streamed = time.monotonic()
        await create(client, greeting)
        created = time.monotonic()
        return first - start, streamed - start, created - streamed, claude.requests

    ttft, stream_total, create_total, requests = run(body, delay=0.3, tps=100)
    n = len(tokenize(REPLIES["greeting"]))  # about 35 tokens: 0.35 s at 100 per second
    assert 0.28 <= ttft < 2.0
    assert 0.3 + 0.8 * (n - 1) / 100 <= stream_total < 4.0
    assert 0.3 + 0.8 * (n - 1) / 100 <= create_total < 4.0
    for record in requests:
        assert record.first_token_at - record.received_at >= 0.28
        assert record.finished_at >= record.first_token_at


def test_pacing_can_change_between_requests_and_on_token_sees_each_token() -> None:
    seen: list[tuple[str, float]] = []

    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> float:
        claude.on_token = lambda record, token, at: seen.append((token, at))
        claude.first_token_delay, claude.tokens_per_second = 0.0, 1000.0
        start = time.monotonic()
        await stream_text(client, DOGS)
        return time.monotonic() - start

    assert run(body, delay=5.0, tps=1.0) < 2.0
    assert "".join(token for token, _ in seen) == REPLIES["dogs"]
    assert [at for _, at in seen] == sorted(at for _, at in seen)


# ---- failures on purpose -------------------------------------------------------------------

FAILURES = [
    ("overloaded", anthropic.InternalServerError, 529, "overloaded_error"),
    ("rate_limit", anthropic.RateLimitError, 429, "rate_limit_error"),
    ("server_error", anthropic.InternalServerError, 500, "api_error"),
]


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize(("kind", "error", "status", "error_type"), FAILURES)
def test_failures_surface_as_sdk_errors(
    kind: str, error: type[Exception], status: int, error_type: str, streaming: bool
) -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next(kind)
        with pytest.raises(error) as caught:
            await (stream_text(client, DOGS) if streaming else create(client, DOGS))
        after = await create(client, DOGS)  # one failure per request, then normal again
        return caught.value, after, claude.requests

    exc, after, requests = run(body)
    assert exc.status_code == status
    assert exc.body["type"] == "error" and exc.body["error"]["type"] == error_type
    assert after.content[0].text == REPLIES["dogs"]
    assert requests[0].outcome == f"failed:{kind}" and requests[0].status == status
    assert requests[1].outcome == "complete"
    if kind == "rate_limit":
        assert exc.response.headers["retry-after"] == "0"


def test_sdk_retries_a_queued_failure_by_default() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("overloaded")
        claude.fail_next("rate_limit")
        return await create(client, DOGS), [r.outcome for r in claude.requests]

    message, outcomes = run(body, retries=2)
    assert message.content[0].text == REPLIES["dogs"]
    assert outcomes == ["failed:overloaded", "failed:rate_limit", "complete"]


def test_cut_stream_raises_during_iteration() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("cut")
        received: list[str] = []
        with pytest.raises(Exception) as caught:
            async with client.messages.stream(model=MODEL, max_tokens=500, messages=DOGS) as s:
                async for text in s.text_stream:
                    received.append(text)
        after = await stream_text(client, DOGS)
        return caught.value, received, after, claude.requests[0]

    exc, received, after, record = run(body, tps=200)
    assert "".join(received) and REPLIES["dogs"].startswith("".join(received))
    assert len(received) < len(tokenize(REPLIES["dogs"])) // 2
    assert "incomplete" in str(exc).lower() or "closed" in str(exc).lower(), repr(exc)
    assert after == REPLIES["dogs"]
    assert record.outcome == "failed:cut" and record.tokens_sent == len(received)


def test_cut_without_streaming_is_a_connection_error() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("cut", times=2)
        for _ in range(2):
            with pytest.raises(anthropic.APIConnectionError):
                await create(client, DOGS)
        return await create(client, DOGS)

    assert run(body).content[0].text == REPLIES["dogs"]


def test_unknown_failure_kind_lists_the_valid_ones() -> None:
    claude = OfflineClaude()
    with pytest.raises(ValueError, match=r"overloaded.*rate_limit.*server_error.*cut"):
        claude.fail_next("meltdown")


# ---- validation ----------------------------------------------------------------------------


def test_empty_content_is_a_bad_request() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        messages = [
            *DOGS,
            {"role": "assistant", "content": [{"type": "text", "text": ""}]},
            {"role": "user", "content": "go on"},
        ]
        with pytest.raises(anthropic.BadRequestError) as caught:
            await create(client, messages)
        with pytest.raises(anthropic.BadRequestError) as caught_stream:
            await stream_text(client, [*DOGS, {"role": "assistant", "content": ""}, *DOGS])
        return caught.value, caught_stream.value, claude.requests

    exc, exc_stream, requests = run(body)
    assert exc.status_code == 400
    assert exc.body["type"] == "error"
    assert exc.body["error"]["type"] == "invalid_request_error"
    assert "messages.1.content.0.text: text content blocks must be non-empty" in str(exc)
    assert "messages.1: all messages must have non-empty content" in str(exc_stream)
    assert [r.outcome for r in requests] == ["rejected", "rejected"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": None}, "model: Field required"),
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"messages": None}, "messages: Field required"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "   "}]}, "non-whitespace"),
        ({"messages": []}, "at least one message"),
        ({"system": 42}, "system"),
    ],
)
def test_validation_like_the_real_api(change: dict, message: str) -> None:
    request = {"model": MODEL, "max_tokens": 100, "messages": DOGS}
    request.update(change)
    request = {k: v for k, v in request.items() if v is not None}

    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        return await raw_http(claude.port, post(request))

    status, _, raw = run(body)
    error = json.loads(raw)
    assert status == 400
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]


# ---- HTTP ----------------------------------------------------------------------------------


def test_malformed_http_gets_400_and_the_server_keeps_serving() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        garbage = await raw_http(claude.port, b"THIS IS NOT HTTP\r\n\r\n")
        bad_header = await raw_http(claude.port, b"POST /v1/messages HTTP/1.1\r\nnocolon\r\n\r\n")
        bad_json = await raw_http(claude.port, post(b"{not json"))
        missing = await raw_http(claude.port, post({"model": MODEL}, path="/v1/nothing"))
        return garbage, bad_header, bad_json, missing, await create(client, DOGS)

    garbage, bad_header, bad_json, missing, message = run(body)
    for status, _, raw in (garbage, bad_header, bad_json):
        assert status == 400
        assert json.loads(raw)["error"]["type"] == "invalid_request_error"
    assert "JSON" in json.loads(bad_json[2])["error"]["message"]
    assert missing[0] == 404 and json.loads(missing[2])["error"]["type"] == "not_found_error"
    assert message.content[0].text == REPLIES["dogs"]


def test_keep_alive_reuses_one_connection() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        await create(client, DOGS)
        await create(client, Y1999)
        await stream_text(client, DOGS)
        await create(client, DOGS)
        return claude.connections_accepted, {r.connection for r in claude.requests}

    connections, used = run(body)
    assert connections == 1
    assert used == {1}


def test_pipelined_requests_and_connection_close() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        first = post({"model": MODEL, "max_tokens": 3, "messages": DOGS})
        second = post({"model": MODEL, "max_tokens": 2, "messages": Y1999}).replace(
            b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\r\nConnection: close\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", claude.port)
        writer.write(first + second)  # both at once: the server must keep the second
        texts = []
        for _ in range(2):
            head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            length = int(re.search(r"content-length: (\d+)", head).group(1))
            texts.append(json.loads(await reader.readexactly(length))["content"][0]["text"])
        rest = await asyncio.wait_for(reader.read(), 2)  # then the server closes
        writer.close()
        return head, texts, rest

    head, texts, rest = run(body)
    assert texts == ["".join(tokenize(REPLIES["dogs"])[:3]), "Here are"]
    assert "connection: close" in head
    assert rest == b""


def test_closing_the_stream_early_is_noticed_at_once_and_stops_generation() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        received = 0
        async with client.messages.stream(model=MODEL, max_tokens=500, messages=DOGS) as s:
            async for _ in s.text_stream:
                received += 1
                if received == 5:
                    break
        closed = time.monotonic()
        await asyncio.sleep(0.5)  # the reply would have sent about 50 more tokens by now
        return closed, claude.requests[0]

    closed, record = run(body, delay=0.05, tps=100)
    assert record.outcome == "client_closed"
    assert record.client_closed_at is not None
    assert record.client_closed_at - closed < 0.1
    assert record.tokens_sent < 15 < len(tokenize(REPLIES["dogs"]))
    assert record.finished_at - record.client_closed_at < 0.1


def test_closing_during_a_non_streamed_wait_is_noticed() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        with pytest.raises(anthropic.APITimeoutError):
            await client.messages.create(model=MODEL, max_tokens=500, messages=DOGS, timeout=0.2)
        gave_up = time.monotonic()
        await asyncio.sleep(0.2)
        return gave_up, claude.requests[0]

    gave_up, record = run(body, delay=2.0)
    assert record.outcome == "client_closed" and record.tokens_sent == 0
    assert record.client_closed_at - gave_up < 0.1


def test_stop_closes_open_streams_promptly() -> None:
    async def main() -> Any:
        claude = OfflineClaude(first_token_delay=0.0, tokens_per_second=5)
        await claude.start()
        client = anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="x", max_retries=0)
        task = asyncio.create_task(stream_text(client, DOGS))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        await claude.stop()
        stopped = time.monotonic() - start
        with pytest.raises(Exception):  # noqa: B017 - the stream breaks, however httpx names it
            await asyncio.wait_for(task, 2)
        await client.close()
        return stopped, claude.requests[0].outcome

    stopped, outcome = asyncio.run(main())
    assert stopped < 0.5
    assert outcome == "failed:stopped"


FAST_FLAGS = ["--first-token-delay", "0", "--tokens-per-second", "1000"]


def test_command_line_runs_it_standalone() -> None:
    command = [sys.executable, "-m", "relaylab.offline_claude", "--port", "0", *FAST_FLAGS]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            line = process.stdout.readline()
            url = re.search(r"http://127\.0\.0\.1:\d+", line).group()
            with anthropic.Anthropic(base_url=url, api_key="offline", max_retries=0) as client:
                message = client.messages.create(model=MODEL, max_tokens=100, messages=DOGS)
            assert message.content[0].text == "".join(tokenize(REPLIES["dogs"])[:100])
        finally:
            process.terminate()
            assert process.wait(5) == 0
