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

from conftest import within
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
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split(" ")[1]), headers, body
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
        assert 1.0 <= len(tokens) / len(text.split()) <= 1.6, text
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


async def read_sse(port: int, payload: dict) -> tuple[bytes, bytes]:
    """POST ``payload`` on a raw socket; the response head and its de-chunked body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post(payload))
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    while size := int((await reader.readline()).strip(), 16):
        body += (await reader.readexactly(size + 2))[:-2]
    writer.close()
    return head.lower(), body


def test_sse_wire_format() -> None:
    payload = {"model": MODEL, "max_tokens": 3, "messages": DOGS, "stream": True}
    head, body = run(lambda claude, c: read_sse(claude.port, payload))
    assert b"transfer-encoding: chunked" in head
    assert b"content-type: text/event-stream" in head
    events = re.findall(rb"^event: (\w+)\ndata: (.*)$", body, re.MULTILINE)
    assert [name.decode() for name, _ in events] == [
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
    for name, data in events:
        assert json.loads(data)["type"] == name.decode()
    start = json.loads(events[0][1])["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert json.loads(events[3][1])["delta"] == {"type": "text_delta", "text": "Dogs"}


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
    assert 0.28 <= ttft < within(2.0)
    assert 0.3 + 0.8 * (n - 1) / 100 <= stream_total < within(4.0)
    assert 0.3 + 0.8 * (n - 1) / 100 <= create_total < within(4.0)
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

    assert run(body, delay=within(5.0), tps=1.0) < within(2.0)
    assert "".join(token for token, _ in seen) == REPLIES["dogs"]
    assert [at for _, at in seen] == sorted(at for _, at in seen)


def test_a_failing_on_token_hook_does_not_break_the_reply(caplog) -> None:
    def hook(record: Any, token: str, at: float) -> None:
        raise RuntimeError("boom")

    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> str:
        claude.on_token = hook
        return await stream_text(client, DOGS, max_tokens=3)

    assert run(body) == "".join(tokenize(REPLIES["dogs"])[:3])
    assert "on_token hook raised" in caplog.text


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
    assert exc.request_id and exc.request_id == exc.body["request_id"]
    assert after.content[0].text == REPLIES["dogs"]
    assert requests[0].outcome == f"failed:{kind}" and requests[0].status == status
    assert requests[1].outcome == "complete"
    if kind == "rate_limit":
        assert exc.response.headers["retry-after"] == "0"


MORE_STATUSES = [
    ("unauthorized", anthropic.AuthenticationError, 401, "authentication_error"),
    ("forbidden", anthropic.PermissionDeniedError, 403, "permission_error"),
    ("not_found", anthropic.NotFoundError, 404, "not_found_error"),
    ("too_large", anthropic.APIStatusError, 413, "request_too_large"),
]


@pytest.mark.parametrize(("kind", "error", "status", "error_type"), MORE_STATUSES)
def test_more_http_errors_on_request(
    kind: str, error: type[Exception], status: int, error_type: str
) -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next(kind)
        with pytest.raises(error) as caught:
            await stream_text(client, DOGS)
        return caught.value, await create(client, DOGS)

    exc, after = run(body)
    assert exc.status_code == status and exc.body["error"]["type"] == error_type
    if kind == "not_found":
        assert MODEL in exc.body["error"]["message"]
    assert after.content[0].text == REPLIES["dogs"]


@pytest.mark.parametrize("kind", ["rate_limit", "overloaded"])
def test_a_retry_after_is_sent_and_the_sdk_waits_it_out(kind: str) -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.retry_after = 0.6
        claude.fail_next(kind)
        started = time.monotonic()
        text = await stream_text(client, DOGS)
        return text, time.monotonic() - started, claude.requests

    text, took, requests = run(body, retries=1)
    assert text == REPLIES["dogs"] and took >= 0.6
    assert requests[0].outcome == f"failed:{kind}" and requests[1].outcome == "complete"


async def _events(client: anthropic.AsyncAnthropic, messages: list[dict]) -> Any:
    async with client.messages.stream(model=MODEL, max_tokens=1000, messages=messages) as s:
        events = [event.type async for event in s]
        return events, await s.get_final_message()


@pytest.mark.parametrize(
    ("kind", "stop_reason", "words"),
    [
        ("refusal", "refusal", "some"),
        ("refusal_no_text", "refusal", "none"),
        ("empty", "end_turn", "none"),
        ("max_tokens", "max_tokens", "half"),
        ("pause_turn", "pause_turn", "half"),
        ("context_window", "model_context_window_exceeded", "half"),
    ],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
def test_replies_that_end_other_than_end_turn(
    kind: str, stop_reason: str, words: str, streaming: bool
) -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next(kind)
        if streaming:
            return (await _events(client, DOGS))[1]
        return await create(client, DOGS)

    message = run(body)
    assert message.stop_reason == stop_reason
    text = "".join(b.text for b in message.content if b.type == "text")
    assert REPLIES["dogs"].startswith(text)
    if words == "none":
        assert message.content == []
    elif words == "some":
        assert 0 < len(tokenize(text)) <= 10
    else:
        assert len(tokenize(text)) == len(tokenize(REPLIES["dogs"])) // 2


def test_a_paused_turn_sent_back_carries_on_where_it_stopped() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("pause_turn")
        paused = await create(client, DOGS)
        content = [{"type": "text", "text": paused.content[0].text.rstrip()}]
        rest = await create(client, [*DOGS, {"role": "assistant", "content": content}])
        return paused, rest

    paused, rest = run(body)
    assert paused.stop_reason == "pause_turn" and rest.stop_reason == "end_turn"
    assert paused.content[0].text + rest.content[0].text == REPLIES["dogs"]


def test_an_error_event_mid_stream() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("error_event")
        received: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(model=MODEL, max_tokens=900, messages=DOGS) as s:
                async for text in s.text_stream:
                    received.append(text)
        return caught.value, received, claude.requests[0]

    exc, received, record = run(body)
    assert exc.body["error"]["type"] == "overloaded_error"
    assert received and REPLIES["dogs"].startswith("".join(received))
    assert record.outcome == "failed:error_event"


def test_thinking_deltas_come_before_the_first_word() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.thinking_seconds = 0.5
        claude.fail_next("thinking")
        started = time.monotonic()
        seen: list[tuple[str, float]] = []
        async with client.messages.stream(model=MODEL, max_tokens=900, messages=DOGS) as s:
            async for event in s:
                if event.type in ("thinking", "text"):
                    seen.append((event.type, time.monotonic() - started))
            return seen, await s.get_final_message()

    seen, message = run(body, delay=0.0, tps=500)
    kinds = [k for k, _ in seen]
    assert kinds[0] == "thinking" and "thinking" not in kinds[kinds.index("text") :]
    first_word = next(at for k, at in seen if k == "text")
    assert first_word >= 0.45
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == REPLIES["dogs"]


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
        with pytest.raises(Exception) as caught:  # httpx's RemoteProtocolError, not wrapped
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
    assert record.client_closed_at is None


def test_cut_without_streaming_is_a_connection_error() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("cut", times=2)
        for _ in range(2):
            with pytest.raises(anthropic.APIConnectionError):
                await create(client, DOGS)
        return await create(client, DOGS), [r.outcome for r in claude.requests]

    message, outcomes = run(body)
    assert message.content[0].text == REPLIES["dogs"]
    assert outcomes == ["failed:cut", "failed:cut", "complete"]


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
def test_hang_sends_nothing_until_the_client_times_out(streaming: bool) -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("hang")
        start = time.monotonic()
        with pytest.raises(anthropic.APITimeoutError):
            if streaming:
                await stream_text(client, DOGS, timeout=0.3)
            else:
                await create(client, DOGS, timeout=0.3)
        gave_up = time.monotonic()
        await asyncio.sleep(0.1)
        return start, gave_up, claude.requests[0], await create(client, DOGS)

    start, gave_up, record, after = run(body)
    assert 0.25 <= gave_up - start < within(2.0)
    assert record.outcome == "failed:hang" and record.tokens_sent == 0
    assert record.first_token_at is None
    assert abs(record.client_closed_at - gave_up) < within(0.1)
    assert after.content[0].text == REPLIES["dogs"]


def test_stall_streams_some_tokens_then_goes_quiet_on_an_open_connection() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("stall")
        received: list[tuple[str, float]] = []
        with pytest.raises(anthropic.APITimeoutError) as caught:
            async with client.messages.stream(
                model=MODEL, max_tokens=500, messages=DOGS, timeout=0.4
            ) as s:
                async for text in s.text_stream:
                    received.append((text, time.monotonic()))
        gave_up = time.monotonic()
        await asyncio.sleep(0.1)
        return caught.value, received, gave_up, claude.requests[0]

    _, received, gave_up, record = run(body)
    assert len(received) == 10 and REPLIES["dogs"].startswith("".join(t for t, _ in received))
    assert gave_up - received[-1][1] >= 0.35  # silence, not a closed connection
    assert record.outcome == "failed:stall" and record.tokens_sent == 10
    assert abs(record.client_closed_at - gave_up) < within(0.1)


def test_stall_without_streaming_is_a_timeout() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.fail_next("stall")
        with pytest.raises(anthropic.APITimeoutError):
            await create(client, DOGS, timeout=0.3)
        await asyncio.sleep(0.1)
        return claude.requests[0]

    record = run(body)
    assert record.outcome == "failed:stall" and record.client_closed_at is not None


def test_stop_ends_a_hang_and_a_stall_at_once() -> None:
    async def main() -> Any:
        claude = OfflineClaude(first_token_delay=0.0, tokens_per_second=math.inf)
        await claude.start()
        client = anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="x", max_retries=0)
        claude.fail_next("hang")
        claude.fail_next("stall")
        tasks = [asyncio.create_task(stream_text(client, DOGS)) for _ in range(2)]
        await asyncio.sleep(0.3)
        start = time.monotonic()
        await claude.stop()
        stopped = time.monotonic() - start
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
        await client.close()
        return stopped, results, claude.requests

    stopped, results, requests = asyncio.run(main())
    assert stopped < within(0.5)
    assert all(isinstance(r, Exception) for r in results), results
    assert sorted(r.outcome for r in requests) == ["failed:hang", "failed:stall"]
    assert all(r.client_closed_at is None and r.finished_at for r in requests)


def test_unknown_failure_kind_lists_the_valid_ones() -> None:
    claude = OfflineClaude()
    with pytest.raises(ValueError, match=r"overloaded.*rate_limit.*server_error.*cut.*hang.*stall"):
        claude.fail_next("meltdown")
    with pytest.raises(ValueError, match="times"):
        claude.fail_next("cut", times=0)


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
        ({"stream": "yes"}, "stream: Input should be a valid boolean"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "   "}]}, "non-whitespace"),
        ({"messages": []}, "at least one message"),
        ({"system": 42}, "system"),
        ({"tools": [{"name": "x"}]}, "tools.0.input_schema: Field required"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "x"}]}
                ]
            },
            "messages.0.content.0: `tool_use` blocks can only be in `assistant` messages",
        ),
    ],
)
def test_validation_like_the_real_api(change: dict, message: str) -> None:
    request = {"model": MODEL, "max_tokens": 100, "messages": DOGS}
    request.update(change)
    request = {k: v for k, v in request.items() if v is not None}

    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        return await raw_http(claude.port, post(request))

    status, headers, raw = run(body)
    error = json.loads(raw)
    assert status == 400 and headers["request-id"] == error["request_id"]
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]


def test_consecutive_turns_with_one_role_are_accepted_as_the_api_combines_them() -> None:
    messages = [*Y1999, {"role": "user", "content": "Tell me about dogs"}]
    assert run(lambda c, client: create(client, messages)).content[0].text == REPLIES["dogs"]


def test_bad_json_unknown_paths_and_malformed_http_get_errors_and_serving_goes_on() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        bad_json = await raw_http(claude.port, post(b"{not json"))
        not_object = await raw_http(claude.port, post(b"[1, 2]"))
        missing = await raw_http(claude.port, post({"model": MODEL}, path="/v1/nothing"))
        garbage = await raw_http(claude.port, b"THIS IS NOT HTTP\r\n\r\n")
        return bad_json, not_object, missing, garbage, await create(client, DOGS), claude.requests

    bad_json, not_object, missing, garbage, message, requests = run(body)
    for status, _, raw in (bad_json, not_object):
        assert status == 400
        assert json.loads(raw)["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in json.loads(bad_json[2])["error"]["message"]
    assert "must be a JSON object" in json.loads(not_object[2])["error"]["message"]
    assert missing[0] == 404 and json.loads(missing[2])["error"]["type"] == "not_found_error"
    assert garbage[0] == 400
    assert message.content[0].text == REPLIES["dogs"]
    assert [r.outcome for r in requests] == ["rejected", "rejected", "complete"]


# ---- the client hanging up -----------------------------------------------------------------


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
    assert record.client_closed_at - closed < within(0.1)
    assert record.tokens_sent < 15 < len(tokenize(REPLIES["dogs"]))
    assert record.finished_at - record.client_closed_at < within(0.1)


def test_closing_during_a_non_streamed_wait_is_noticed() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        with pytest.raises(anthropic.APITimeoutError):
            await create(client, DOGS, timeout=0.2)
        gave_up = time.monotonic()
        await asyncio.sleep(0.2)
        return gave_up, claude.requests[0]

    gave_up, record = run(body, delay=2.0)
    assert record.outcome == "client_closed" and record.tokens_sent == 0
    assert abs(record.client_closed_at - gave_up) < within(0.1)


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
    assert stopped < within(0.5)
    assert outcome == "failed:stopped"


# ---- tool use ------------------------------------------------------------------------------

TOOLS = [
    {
        "name": "opening_hours",
        "description": "When the restaurant opens and closes on a given day of the week.",
        "input_schema": {
            "type": "object",
            "properties": {"day": {"type": "string", "description": "A day of the week"}},
            "required": ["day"],
        },
    },
    {
        "name": "order_status",
        "description": "Where a takeaway order is: preparing, on its way or delivered.",
        "input_schema": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    },
    {
        "name": "book_table",
        "description": "Reserve a table.",
        "input_schema": {
            "type": "object",
            "properties": {
                "party_size": {"type": "integer", "minimum": 1},
                "time": {"type": "string", "description": "When, e.g. 7pm"},
                "area": {"type": "string", "enum": ["inside", "terrace"]},
                "high_chair": {"type": "boolean"},
                "notes": {"type": "string"},
            },
            "required": ["party_size", "time", "area", "high_chair"],
        },
    },
]
ASK_HOURS = [{"role": "user", "content": "Are you open on Sunday?"}]


def tool_turns(question: str, tool_use: Any, result: Any, **extra: Any) -> list[dict]:
    """The three turns after a tool call: question, the call, and its tool_result."""
    return [
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check that."},
                {
                    "type": "tool_use",
                    "id": tool_use.id,
                    "name": tool_use.name,
                    "input": tool_use.input,
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": result, **extra}
            ],
        },
    ]


def test_tool_use_streams_as_the_real_api_does_and_the_sdk_parses_the_input() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        events = []
        async with client.messages.stream(
            model=MODEL, max_tokens=300, messages=ASK_HOURS, tools=TOOLS
        ) as s:
            events = [event async for event in s]
            final = await s.get_final_message()
        return events, final, claude.requests[0]

    events, final, record = run(body, tps=500)
    raw = [e for e in events if e.type not in ("text", "input_json")]
    kinds = [e.type for e in raw]
    text_deltas = len(tokenize(REPLIES["tool_preamble"]))
    json_deltas = kinds.count("content_block_delta") - text_deltas
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * text_deltas,
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * json_deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert json_deltas > 1  # the input arrives in pieces
    tool_start = raw[text_deltas + 3]
    assert tool_start.index == 1 and tool_start.content_block.type == "tool_use"
    assert tool_start.content_block.id.startswith("toolu_")
    assert tool_start.content_block.name == "opening_hours"
    assert tool_start.content_block.input == {}
    assert {e.delta.type for e in raw if e.type == "content_block_delta" and e.index == 1} == {
        "input_json_delta"
    }
    assert raw[-2].delta.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == REPLIES["tool_preamble"]
    assert isinstance(final.content[1], anthropic.types.ToolUseBlock)
    assert final.content[1].input == {"day": "Sunday"}
    assert final.stop_reason == "tool_use"
    assert record.tool_use == {
        "id": tool_start.content_block.id,
        "name": "opening_hours",
        "input": {"day": "Sunday"},
    }
    assert record.stop_reason == "tool_use" and record.outcome == "complete"
    assert record.tokens_sent == record.tokens_planned == text_deltas + json_deltas


def test_tool_use_without_streaming() -> None:
    message = run(lambda c, client: create(client, ASK_HOURS, tools=TOOLS))
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].name == "opening_hours" and message.content[1].input == {
        "day": "Sunday"
    }
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("question", "name", "tool_input"),
    [
        ("Where is my order 4417?", "order_status", {"order_id": "4417"}),
        (
            "Can I book a table for four at 7pm on the terrace?",
            "book_table",
            {"party_size": 4, "time": "7pm", "area": "terrace", "high_chair": True},
        ),
        ("When do you open on Friday?", "opening_hours", {"day": "Friday"}),
    ],
)
def test_the_tool_and_its_input_follow_the_callers_words(
    question: str, name: str, tool_input: dict
) -> None:
    messages = [{"role": "user", "content": question}]
    message = run(lambda c, client: create(client, messages, tools=TOOLS))
    assert (message.content[-1].name, message.content[-1].input) == (name, tool_input)


def test_no_tool_when_nothing_matches_or_tool_choice_says_none() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        dogs = await create(client, DOGS, tools=TOOLS)
        none = await create(client, ASK_HOURS, tools=TOOLS, tool_choice={"type": "none"})
        forced = await create(
            client, DOGS, tools=TOOLS, tool_choice={"type": "tool", "name": "order_status"}
        )
        any_tool = await create(client, DOGS, tools=TOOLS, tool_choice={"type": "any"})
        return dogs, none, forced, any_tool

    dogs, none, forced, any_tool = run(body)
    assert dogs.content[0].text == REPLIES["dogs"] and dogs.stop_reason == "end_turn"
    assert [b.type for b in none.content] == ["text"] and none.stop_reason == "end_turn"
    assert forced.content[-1].name == "order_status" and forced.stop_reason == "tool_use"
    assert any_tool.content[-1].name == "opening_hours"


def test_without_a_preamble_the_tool_call_is_the_only_block() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.tool_preamble = ""
        async with client.messages.stream(
            model=MODEL, max_tokens=300, messages=ASK_HOURS, tools=TOOLS
        ) as s:
            starts = [e for e in [e async for e in s] if e.type == "content_block_start"]
        return starts, await create(client, ASK_HOURS, tools=TOOLS)

    starts, message = run(body)
    assert [(e.index, e.content_block.type) for e in starts] == [(0, "tool_use")]
    assert [b.type for b in message.content] == ["tool_use"]


def test_a_tool_call_that_does_not_fit_max_tokens_is_dropped() -> None:
    message = run(lambda c, client: create(client, ASK_HOURS, tools=TOOLS, max_tokens=6))
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == REPLIES["tool_preamble"]
    assert message.stop_reason == "max_tokens"


def test_the_follow_up_answer_is_built_from_the_tool_result() -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        async with client.messages.stream(
            model=MODEL, max_tokens=300, messages=ASK_HOURS, tools=TOOLS
        ) as s:
            call = (await s.get_final_message()).content[-1]
        result = json.dumps({"day": "Sunday", "opening_time": "10:00", "closing_time": "17:30"})
        turns = tool_turns(ASK_HOURS[0]["content"], call, result)
        answer = await stream_text(client, turns, tools=TOOLS)
        failed = tool_turns("Where is order 12?", call, "Order system down", is_error=True)
        return answer, (await create(client, failed, tools=TOOLS)).content[0].text

    answer, apology = run(body)
    assert answer == REPLIES["tool_answer"].format(
        result="day is Sunday, opening time is ten o'clock, closing time is seventeen thirty"
    )
    assert not re.search(r"[0-9*#_`\[\]{}<>|~\"]", answer)
    assert apology == REPLIES["tool_error"].format(result="Order system down")


def test_tool_results_as_text_blocks_are_read_too() -> None:
    call = anthropic.types.ToolUseBlock(
        type="tool_use", id="toolu_01a", name="order_status", input={"order_id": "7"}
    )
    turns = tool_turns(
        "Where is order 7?", call, [{"type": "text", "text": "On its way, 5 minutes"}]
    )
    message = run(lambda c, client: create(client, turns, tools=TOOLS))
    assert "On its way, five minutes" in message.content[0].text


def test_on_token_sees_the_tool_input_chunks() -> None:
    seen: list[str] = []

    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        claude.on_token = lambda record, token, at: seen.append(token)
        await stream_text(client, ASK_HOURS, tools=TOOLS)

    run(body)
    assert "".join(seen) == REPLIES["tool_preamble"] + json.dumps({"day": "Sunday"})


# ---- tool_use / tool_result pairing, as the API checks it ---------------------------------

CALL = {
    "type": "tool_use",
    "id": "toolu_01abc",
    "name": "opening_hours",
    "input": {"day": "Monday"},
}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_01abc", "content": "Nine to five"}


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        (
            [
                *ASK_HOURS,
                {"role": "assistant", "content": [CALL]},
                {"role": "user", "content": "hello?"},
            ],
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: toolu_01abc. Each `tool_use` block must have a corresponding `tool_result` "
            "block in the next message.",
        ),
        (
            [*ASK_HOURS, {"role": "assistant", "content": [CALL]}],
            "messages.1: `tool_use` ids were found without `tool_result` blocks",
        ),
        (
            [
                *ASK_HOURS,
                {"role": "assistant", "content": "Nine to five."},
                {"role": "user", "content": [RESULT]},
            ],
            "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
            "toolu_01abc. Each `tool_result` block must have a corresponding `tool_use` block "
            "in the previous message.",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "Monday?"}, RESULT]}],
            "messages.0.content.1: unexpected `tool_use_id` found in `tool_result` blocks",
        ),
    ],
    ids=["answered-by-text", "last-turn", "result-without-call", "result-first"],
)
def test_broken_tool_pairs_are_rejected_with_the_apis_message(messages: list, problem: str) -> None:
    async def body(claude: OfflineClaude, client: anthropic.AsyncAnthropic) -> Any:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await create(client, messages, tools=TOOLS)
        return caught.value, claude.requests[0]

    exc, record = run(body)
    assert exc.status_code == 400 and exc.body["error"]["type"] == "invalid_request_error"
    assert problem in exc.body["error"]["message"]
    assert record.outcome == "rejected" and record.error == exc.body["error"]["message"]


def test_a_well_paired_history_is_accepted() -> None:
    messages = [
        *ASK_HOURS,
        {"role": "assistant", "content": [{"type": "text", "text": "Let me see."}, CALL]},
        {"role": "user", "content": [RESULT, {"type": "text", "text": "And on Sunday?"}]},
    ]
    message = run(lambda c, client: create(client, messages, tools=TOOLS))
    assert message.content[0].text.startswith("I checked that for you. Nine to five")


# ---- standalone ----------------------------------------------------------------------------

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


def test_a_new_question_after_tool_results_is_answered_not_the_results():
    # The caller spoke again after an interrupted tool call: the relay puts the new words
    # in the same user turn as the tool_result, as the Messages API requires.
    messages = [
        {"role": "user", "content": "Where is my order 12345?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "order_status", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cancelled"},
                {"type": "text", "text": "Tell me about dogs"},
            ],
        },
    ]

    async def body(claude, client):
        return await create(client, messages)

    assert run(body).content[0].text.startswith("Dogs were the first animals")
