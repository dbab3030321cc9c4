"""Lesson 5's tools step: tool use with interrupts and barge-in in every phase.

Three layers: the demo tools alone; the step on the session core (run_step, a scripted
Claude that calls tools, no sockets); and whole calls through a real Lab (WebSocket,
the anthropic SDK, the offline stand-in that speaks tool use on the wire and rejects
unpaired tool blocks with a 400, as the API does).

Every interrupt test checks the same three things: no word after the interrupt (one empty
last:true closes the cut talk cycle), a
history the Messages API accepts (every tool_use answered by a tool_result), and the
next request accepted.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from conftest import within
from relaylab.core.conversation import Conversation
from relaylab.core.protocol import CLOSE_TALK_CYCLE, words_and_closes
from relaylab.core.twilio_frames import interrupt_frame, prompt_frame
from relaylab.offline_claude.replies import REPLIES
from relaylab.offline_claude.validation import InvalidRequest, validate
from relaylab.relay.failures import APOLOGY
from relaylab.relay.testing import Pause, RunResult, ScriptedClaude, ToolCall, WaitFor, run_step
from relaylab.steps import tools as tools_lesson
from relaylab.steps.restaurant import (
    DemoToolbox,
    Tool,
    Toolbox,
    demo_toolbox,
    parse_time,
    spoken_time,
)
from relaylab.steps.tools import (
    INTERRUPTED_NOTE,
    STILL_RUNNING_NOTE,
    tool_runs,
    tools_step,
)

CLOSED = {"type": "text", "token": "", "last": True}  # closes the cut talk cycle

pytestmark = pytest.mark.anyio

QUESTION = "Where is my order 12345?"
ORDER = {"order_number": "12345"}
BOOKING = {"day": "Friday", "time": "7pm", "people": 4}
PRE = "Let me check that."  # 4 frames: "Let", " me", " check", " that."
HOLD = "One moment, please."  # after a " " frame that ends Claude's words before the tool
FOLLOW_UP = "Your order is out for delivery and should arrive before seven tonight."
PRE_FRAMES = 4
HOLD_FRAME = PRE_FRAMES + 1  # index of the holding line among the frames sent


# -- helpers --------------------------------------------------------------------------------


def assert_api_valid(history: list[dict[str, Any]], toolbox: Toolbox | None = None) -> None:
    """The Messages API would take this history: the relay's own check, the stand-in's
    request validation (the API's rules and messages), and tool_use/tool_result pairing."""
    assert Conversation(history).problems() == [], history
    body = {"model": "m", "max_tokens": 10, "messages": history}
    body["tools"] = (toolbox or demo_toolbox()).definitions
    try:
        validate(body)
    except InvalidRequest as exc:
        pytest.fail(f"the API would reject this history: {exc}\n{history}")
    for index, turn in enumerate(history):
        uses = [b["id"] for b in _blocks(turn, "tool_use")]
        if uses:
            answered = [b["tool_use_id"] for b in _blocks(history[index + 1], "tool_result")]
            assert answered == uses, history


def _blocks(turn: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    content = turn["content"]
    return [b for b in content if b["type"] == kind] if isinstance(content, list) else []


def sent_between(result: RunResult, first: str, then: str | None = None) -> list[dict[str, Any]]:
    """Frames the relay sent after the first inbound frame containing ``first``, up to the
    next inbound frame containing ``then``."""
    start = next(i for i, (d, f) in enumerate(result.log) if d == "in" and first in str(f))
    frames = []
    for direction, frame in result.log[start + 1 :]:
        if direction == "in" and then is not None and then in str(frame):
            break
        if direction == "out":
            frames.append(frame)
    return frames


def step_with(slow: float = 0.3, **settings: Any) -> tuple[DemoToolbox, Any]:
    toolbox = demo_toolbox(slow_seconds=slow)
    settings.setdefault("hold_after", 0.05)
    return toolbox, tools_step(toolbox=toolbox, **settings)


def order_call(**options: Any) -> ToolCall:
    return ToolCall("order_status", dict(ORDER), text=PRE, **options)


def tool_use_turn(call: ToolCall, text: str = PRE) -> dict[str, Any]:
    blocks = [{"type": "text", "text": text}] if text else []
    blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input})
    return {"role": "assistant", "content": blocks}


def result_turn(call: ToolCall, content: str, *, is_error: bool = False) -> dict[str, Any]:
    block = {"type": "tool_result", "tool_use_id": call.id, "content": content}
    if is_error:
        block["is_error"] = True
    return {"role": "user", "content": [block]}


async def order_result() -> str:
    return (await demo_toolbox(slow_seconds=0).call("order_status", ORDER)).content


# -- the demo tools -------------------------------------------------------------------------


async def test_demo_tools_answer_deterministically_and_bad_input_comes_back_as_an_error():
    toolbox = demo_toolbox(slow_seconds=0)
    hours = await toolbox.call("opening_hours", {"day": "friday"})
    assert json.loads(hours.content) == {"day": "Friday", "hours": "noon to 11 pm"}
    assert json.loads((await toolbox.call("opening_hours", {"day": "Mon"})).content) == {
        "day": "Monday",
        "hours": "closed all day",
    }
    order = json.loads((await toolbox.call("order_status", {"order_number": "no. 4417"})).content)
    assert order["found"] and order["status"] == "being prepared in the kitchen"
    unknown = json.loads((await toolbox.call("order_status", {"order_number": "999"})).content)
    assert unknown["found"] is False

    for name, tool_input, message in [
        ("opening_hours", {}, "needs day"),
        ("opening_hours", {"day": "someday"}, "not a day of the week"),
        ("order_status", {"order_number": "abc"}, "made of digits"),
        ("book_table", {**BOOKING, "time": "25:00"}, "not a time of day"),
        ("book_table", {**BOOKING, "people": 0}, "one or more"),
        ("teleport", {}, "no tool called 'teleport'"),
    ]:
        outcome = await toolbox.call(name, tool_input)
        assert outcome.is_error and message in outcome.content, (name, outcome)


async def test_a_booking_asked_for_twice_books_one_table():
    toolbox = demo_toolbox(slow_seconds=0)
    first = json.loads((await toolbox.call("book_table", BOOKING)).content)
    again = json.loads((await toolbox.call("book_table", {**BOOKING, "time": "19:00"})).content)
    assert first == {
        "booked": True,
        "day": "Friday",
        "time": "7 pm",
        "people": 4,
        "reference": "T101",
    }
    assert again == {**first, "already_booked": True}
    assert len(toolbox.restaurant.bookings) == 1
    closed = json.loads((await toolbox.call("book_table", {**BOOKING, "day": "Monday"})).content)
    late = json.loads((await toolbox.call("book_table", {**BOOKING, "time": "22:30"})).content)
    assert closed["booked"] is False and late["booked"] is False
    assert late["reason"] == "tables on Friday can be booked from noon to 10 pm"


async def test_a_tool_that_crashes_is_reported_to_claude_not_raised():
    async def broken() -> dict[str, Any]:
        raise RuntimeError("the database is down")

    toolbox = Toolbox([Tool("broken", "Always fails.", {"type": "object"}, broken)])
    outcome = await toolbox.call("broken", {})
    assert outcome.is_error and "the database is down" in outcome.content


def test_times_parse_and_read_the_way_people_say_them():
    assert [parse_time(t) for t in ("19:30", "7:30 pm", "7pm", "7 p.m.", "12am", "19")] == [
        1170,
        1170,
        1140,
        1140,
        0,
        1140,
    ]
    assert [spoken_time(m) for m in (720, 1140, 1170, 30)] == [
        "noon",
        "7 pm",
        "7:30 pm",
        "12:30 am",
    ]


def test_only_the_booking_has_side_effects_and_the_definitions_are_what_the_api_takes():
    toolbox = demo_toolbox()
    assert [t.name for t in toolbox.tools.values() if t.side_effects] == ["book_table"]
    validate(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": toolbox.definitions,
        }
    )
    assert all(set(d) == {"name", "description", "input_schema"} for d in toolbox.definitions)


# -- the step on the session core, one interrupt phase at a time -----------------------------


async def test_a_tool_call_runs_and_the_follow_up_answers_with_its_result():
    toolbox, step = step_with(slow=0.2)
    claude = ScriptedClaude(order_call(), FOLLOW_UP)
    result = await run_step(step, [prompt_frame(QUESTION)], claude=claude)

    texts = [f["token"] for f in result.frames_out]
    assert "".join(texts) == f"{PRE} {HOLD} {FOLLOW_UP}"
    assert result.frames_out[-1] == {"type": "text", "token": "", "last": True}
    result_content = await order_result()
    assert result.history == [
        {"role": "user", "content": QUESTION},
        tool_use_turn(order_call()),
        result_turn(order_call(), result_content),
        {"role": "assistant", "content": FOLLOW_UP},
    ]
    assert_api_valid(result.history, toolbox)
    first, follow_up = claude.requests
    assert first["tools"] == toolbox.definitions and "tool_choice" not in first
    assert first["system"].endswith(tools_lesson.TOOL_GUIDANCE)
    assert follow_up["messages"] == result.history[:3]
    [run] = tool_runs(result.session.replies[0])
    assert (run.name, run.state, run.interrupted) == ("order_status", "done", False)
    assert 150 < run.ms < within(1000)


async def test_interrupt_while_claude_speaks_before_the_tool_call():
    _, step = step_with()
    call = order_call()
    claude = ScriptedClaude(call, FOLLOW_UP, token_delay=0.02)
    result = await run_step(
        step, [prompt_frame(QUESTION), WaitFor(2), interrupt_frame("Let me", 700)], claude=claude
    )
    assert result.out_after("interrupt") == [CLOSED]
    assert result.history == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Let me"},
    ]
    assert call.chunks_sent == 0 and len(claude.requests) == 1 and claude.closed_streams == 1
    assert tool_runs(result.session.replies[0]) == []
    assert_api_valid(result.history)


async def test_interrupt_while_the_tool_input_streams_never_stores_the_unfinished_tool_use():
    _, step = step_with()
    call = order_call(chunks=20)
    claude = ScriptedClaude(call, FOLLOW_UP, token_delay=0.02)
    frames = [
        prompt_frame(QUESTION),
        WaitFor(PRE_FRAMES),
        Pause(0.1),
        interrupt_frame("Let me check that", 1500),
    ]
    result = await run_step(step, frames, claude=claude)
    assert 0 < call.chunks_sent < len(call.json_chunks())  # cut off midway
    assert result.out_after("interrupt") == [CLOSED]
    assert result.history == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": PRE},  # every word was heard
    ]
    assert tool_runs(result.session.replies[0]) == [] and len(claude.requests) == 1
    assert_api_valid(result.history)


async def test_interrupt_while_a_read_only_tool_runs_cancels_it_and_answers_its_tool_use():
    _, step = step_with(slow=within(1.0))
    claude = ScriptedClaude(order_call(), FOLLOW_UP)
    frames = [
        prompt_frame(QUESTION),
        WaitFor(HOLD_FRAME + 1),  # the holding line: the tool is running
        interrupt_frame("Let me check that. One moment", 2000),
    ]
    started = time.monotonic()
    result = await run_step(step, frames, claude=claude)
    assert time.monotonic() - started < within(0.9)  # nobody waited for the cancelled tool
    assert [f["token"] for f in result.frames_out[PRE_FRAMES:]] == [" ", HOLD, ""]
    assert result.out_after("interrupt") == [CLOSED]
    # The holding line was heard, but it is the relay's, not Claude's: not stored.
    assert result.history == [
        {"role": "user", "content": QUESTION},
        tool_use_turn(order_call()),
        result_turn(order_call(), INTERRUPTED_NOTE, is_error=True),
    ]
    assert_api_valid(result.history)
    [run] = tool_runs(result.session.replies[0])
    assert (run.state, run.interrupted) == ("cancelled", True)
    assert len(claude.requests) == 1


async def test_the_next_prompt_after_an_interrupted_tool_joins_the_tool_result_turn():
    _, step = step_with(slow=1.0)
    claude = ScriptedClaude(order_call(), "We open at noon on Friday.")
    frames = [
        prompt_frame(QUESTION),
        WaitFor(HOLD_FRAME + 1),
        interrupt_frame("Let me check", 900),
        Pause(0.1),  # the caller's words take a moment to transcribe
        prompt_frame("Never mind. When do you open on Friday?"),
    ]
    result = await run_step(step, frames, claude=claude)
    assert sent_between(result, "interrupt", "Never mind") == [CLOSED]
    request = claude.requests[1]
    assert request["messages"][-1] == {
        "role": "user",
        "content": [
            result_turn(order_call(), INTERRUPTED_NOTE, is_error=True)["content"][0],
            {"type": "text", "text": "Never mind. When do you open on Friday?"},
        ],
    }
    assert_api_valid(request["messages"])
    assert result.history[1] == tool_use_turn(order_call(), "Let me check")
    assert result.history[-1] == {"role": "assistant", "content": "We open at noon on Friday."}
    assert_api_valid(result.history)


async def test_interrupt_while_a_booking_runs_lets_it_finish_and_keeps_its_real_result():
    toolbox, step = step_with(slow=0.4, shield_wait=0.05)
    booking = ToolCall("book_table", dict(BOOKING), text=PRE)
    claude = ScriptedClaude(booking, "Your table is booked.")
    frames = [prompt_frame("Book a table for four on Friday at 7pm"), WaitFor(HOLD_FRAME + 1)]
    frames.append(interrupt_frame("Let me check that", 1500))
    result = await run_step(step, frames, claude=claude)
    assert result.out_after("interrupt") == [CLOSED]
    history = result.session.conversation
    # The reply stopped before the booking finished: the history says it is still running.
    assert history[2] == result_turn(booking, STILL_RUNNING_NOTE)
    assert_api_valid(history)
    assert toolbox.restaurant.bookings == {}

    await asyncio.sleep(0.5)  # the booking was not cancelled, not even by the hang-up
    [made] = toolbox.restaurant.bookings.values()
    assert history[2] == result_turn(booking, json.dumps(made))
    assert_api_valid(history)
    [run] = tool_runs(result.session.replies[0])
    assert (run.state, run.interrupted) == ("done", True)


async def test_a_booking_that_finishes_within_the_shield_wait_is_in_the_next_request():
    toolbox, step = step_with(slow=0.3, shield_wait=0.8)
    booking = ToolCall("book_table", dict(BOOKING), text=PRE)
    claude = ScriptedClaude(booking, "Yes, it is booked for Friday at seven.")
    frames = [
        prompt_frame("Book a table for four on Friday at 7pm"),
        WaitFor(HOLD_FRAME + 1),
        interrupt_frame("Let me check that", 1500),
        Pause(0.1),
        prompt_frame("Did it work?"),
    ]
    result = await run_step(step, frames, claude=claude)
    assert sent_between(result, "interrupt", "Did it work") == []
    [made] = toolbox.restaurant.bookings.values()
    next_request = claude.requests[1]["messages"]
    assert next_request[2]["content"][0]["content"] == json.dumps(made)
    assert next_request[2]["content"][1] == {"type": "text", "text": "Did it work?"}
    assert_api_valid(next_request)
    assert_api_valid(result.history)


async def test_interrupt_during_the_follow_up_keeps_the_tool_turns_and_the_heard_words():
    toolbox, step = step_with(slow=0.2)
    claude = ScriptedClaude(order_call(), FOLLOW_UP, token_delay=0.02)
    frames = [
        prompt_frame(QUESTION),
        WaitFor(HOLD_FRAME + 1 + 3),  # three words of the follow-up
        interrupt_frame(f"{PRE} {HOLD} Your order is", 4000),
    ]
    result = await run_step(step, frames, claude=claude)
    assert result.out_after("interrupt") == [CLOSED]
    assert result.history == [
        {"role": "user", "content": QUESTION},
        tool_use_turn(order_call()),
        result_turn(order_call(), await order_result()),
        {"role": "assistant", "content": "Your order is"},
    ]
    assert_api_valid(result.history, toolbox)


async def test_an_interrupt_after_the_reply_finished_cuts_every_round_to_what_was_heard():
    _, step = step_with(slow=0)
    call = ToolCall("opening_hours", {"day": "Friday"}, text=PRE)
    answer = "We are open from noon until eleven on Friday."
    claude = ScriptedClaude(call, answer)
    total = PRE_FRAMES + 1 + len(answer.split()) + 1
    frames = [prompt_frame("When do you open on Friday?"), WaitFor(total), Pause(0.05)]
    frames.append(interrupt_frame("Let me check", 900))  # the caller was still listening
    result = await run_step(step, frames, claude=claude)
    assert result.session.replies[0].state == "done"
    assert result.out_after("interrupt") == [CLOSED]
    hours = json.dumps({"day": "Friday", "hours": "noon to 11 pm"})
    assert result.history == [
        {"role": "user", "content": "When do you open on Friday?"},
        tool_use_turn(call, "Let me check"),
        result_turn(call, hours),  # the tool did run: its result stays
    ]
    assert_api_valid(result.history)


async def test_barge_in_while_a_tool_runs_cancels_the_reply_and_the_new_one_speaks_alone():
    _, step = step_with(slow=1.0)
    answer = "Sure, for which day?"
    claude = ScriptedClaude(order_call(), answer)
    frames = [
        prompt_frame(QUESTION),
        WaitFor(HOLD_FRAME + 1),
        prompt_frame("Actually, can I book a table instead?"),  # no interrupt: a barge-in
    ]
    result = await run_step(step, frames, claude=claude)
    after = sent_between(result, "Actually")
    assert "".join(f["token"] for f in after) == answer and after[-1]["last"] is True
    assert result.history == [
        {"role": "user", "content": QUESTION},
        tool_use_turn(order_call()),
        {
            "role": "user",
            "content": [
                result_turn(order_call(), INTERRUPTED_NOTE, is_error=True)["content"][0],
                {"type": "text", "text": "Actually, can I book a table instead?"},
            ],
        },
        {"role": "assistant", "content": answer},
    ]
    assert_api_valid(result.history)
    assert_api_valid(claude.requests[1]["messages"])
    assert tool_runs(result.session.replies[0])[0].state == "cancelled"


async def test_a_failing_follow_up_ends_with_the_apology_and_a_valid_history():
    _, step = step_with(slow=0)
    call = ToolCall("opening_hours", {"day": "Friday"}, text=PRE)
    claude = ScriptedClaude(call, ConnectionResetError("the model went away"))
    result = await run_step(step, [prompt_frame("When do you open on Friday?")], claude=claude)
    assert result.session.replies[0].state == "failed"
    assert result.history[-1]["role"] == "assistant"
    assert [t["role"] for t in result.history] == ["user", "assistant", "user", "assistant"]
    assert_api_valid(result.history)


async def test_after_max_rounds_claude_must_answer_in_words():
    _, step = step_with(slow=0, max_rounds=1)
    first = ToolCall("opening_hours", {"day": "Friday"}, text=PRE)
    second = ToolCall("opening_hours", {"day": "Saturday"}, id="toolu_second")
    claude = ScriptedClaude(first, second)  # a scripted Claude that ignores tool_choice
    result = await run_step(step, [prompt_frame("When do you open?")], claude=claude)
    assert len(claude.requests) == 2
    assert claude.requests[1]["tool_choice"] == {"type": "none"}
    assert [r.name for r in tool_runs(result.session.replies[0])] == ["opening_hours"]
    assert "toolu_second" not in json.dumps(result.history)  # never ran: never stored
    assert_api_valid(result.history)


async def test_a_reply_without_tools_is_tracked_like_lesson_three():
    _, step = step_with()
    claude = ScriptedClaude("Hello there, how can I help you today?", token_delay=0.02)
    frames = [prompt_frame("Hi"), WaitFor(3), interrupt_frame("Hello there, how", 900)]
    result = await run_step(step, frames, claude=claude)
    assert result.out_after("interrupt") == [CLOSED]
    assert result.history == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there, how"},
    ]


# -- whole calls: real sockets, the anthropic SDK, the offline stand-in ------------------------

ASK_ORDER = "Where is my order 12345?"
ASK_BOOKING = "Can I book a table for four on Friday at 7pm?"
ASK_HOURS = "When do you open on Friday?"


def tool_lab(make_lab: Any, slow: float = 1.5, **options: Any) -> tuple[Any, DemoToolbox]:
    toolbox = demo_toolbox(slow_seconds=slow)
    lab = make_lab(tools_step(toolbox=toolbox, hold_after=0.3), **options)
    return lab, toolbox


async def until(ready: Any, saying: asyncio.Future[Any] | None = None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if saying is not None and saying.done():
            raise AssertionError(f"the reply ended before that moment: {saying.result()}")
        assert time.monotonic() < deadline, "that moment never came"
        await asyncio.sleep(0.005)


async def say_and_interrupt_when(call: Any, question: str, ready: Any) -> Any:
    """Say ``question`` and talk over the reply as soon as ``ready()`` is true."""
    saying = asyncio.ensure_future(call.say_async(question))
    await until(ready, saying)
    assert await call.interrupt_async() is not None
    return await asyncio.wait_for(saying, 5)


def sent_after_interrupt(frames: list[tuple[str, str]]) -> list[str]:
    """What the relay sent after reading the call's first interrupt, until the next prompt."""
    start = next(i for i, (d, f) in enumerate(frames) if d == "in" and '"interrupt"' in f)
    sent = []
    for direction, frame in frames[start + 1 :]:
        if direction == "in" and '"prompt"' in frame:
            break
        if direction == "out":
            sent.append(frame)
    return sent


def check_after_interrupt(lab: Any, call: Any, frames: Any, toolbox: Toolbox) -> None:
    """Nothing sent after the interrupt, a valid history, and the next request accepted."""
    assert words_and_closes(call.listen(0.3))[0] == []
    assert sent_after_interrupt(frames) == [CLOSE_TALK_CYCLE]
    assert_api_valid(call.conversation, toolbox)
    requests_before = len(lab.offline_claude.requests)
    lab.offline_claude.tokens_per_second = 200.0  # the next answer need not be slow
    answer = call.say(ASK_HOURS)
    assert answer.complete and APOLOGY not in answer.text
    new = lab.offline_claude.requests[requests_before:]
    assert new and all(r.status == 200 and r.outcome == "complete" for r in new)
    assert_api_valid(call.conversation, toolbox)


def stand_in(lab: Any) -> Any:
    return lab.offline_claude.requests[-1] if lab.offline_claude.requests else None


def closed_by_the_relay(record: Any, timeout: float = 2.0) -> bool:
    """Whether the relay hung up on this stand-in request (the SDK closed the stream)."""
    deadline = time.monotonic() + timeout
    while record.outcome == "pending" and time.monotonic() < deadline:
        time.sleep(0.01)
    return record.outcome == "client_closed"


def test_call_interrupted_while_claude_speaks_before_the_tool_call(make_lab):
    from conftest import frame_log

    lab, toolbox = tool_lab(make_lab, tokens_per_second=10)
    call = lab.call()
    frames = frame_log(lab, call)
    preamble_tokens = len(REPLIES["tool_preamble"].replace(".", " .").split())

    def mid_preamble() -> bool:
        record = stand_in(lab)
        return record is not None and 2 <= record.tokens_sent < preamble_tokens

    reply = lab.run(say_and_interrupt_when(call, ASK_ORDER, mid_preamble))
    record = lab.offline_claude.requests[0]
    assert record.tool_use is not None and closed_by_the_relay(record)
    history = call.conversation
    assert "tool_use" not in json.dumps(history)
    assert history[1:] == ([{"role": "assistant", "content": reply.heard}] if reply.heard else [])
    check_after_interrupt(lab, call, frames, toolbox)


def test_call_interrupted_while_the_tool_input_streams(make_lab):
    from conftest import frame_log

    lab, toolbox = tool_lab(make_lab, tokens_per_second=10)
    call = lab.call()
    frames = frame_log(lab, call)
    session = lab.session_for(call)

    def input_streaming() -> bool:
        record = stand_in(lab)
        text_tokens = len(REPLIES["tool_preamble"].replace(".", " .").split())
        return record is not None and record.tokens_sent > text_tokens

    lab.run(say_and_interrupt_when(call, ASK_ORDER, input_streaming))
    record = lab.offline_claude.requests[0]
    assert closed_by_the_relay(record) and record.tokens_sent < record.tokens_planned
    assert tool_runs(session.replies[0]) == []
    assert "tool_use" not in json.dumps(call.conversation)
    check_after_interrupt(lab, call, frames, toolbox)


def test_call_interrupted_while_a_read_only_tool_runs(make_lab):
    from conftest import frame_log

    lab, toolbox = tool_lab(make_lab)
    call = lab.call()
    frames = frame_log(lab, call)
    session = lab.session_for(call)

    def tool_running() -> bool:
        runs = tool_runs(session.last_reply)
        return bool(runs) and runs[0].ms > 400  # after the holding line

    lab.run(say_and_interrupt_when(call, ASK_ORDER, tool_running))
    [run] = tool_runs(session.replies[0])
    assert (run.name, run.state, run.interrupted) == ("order_status", "cancelled", True)
    history = call.conversation
    assert history[2]["content"][0]["content"] == INTERRUPTED_NOTE
    assert len(lab.offline_claude.requests) == 1  # no follow-up was asked for
    check_after_interrupt(lab, call, frames, toolbox)


def test_call_interrupted_while_a_booking_runs_still_books_the_table(make_lab):
    from conftest import frame_log

    lab, toolbox = tool_lab(make_lab, slow=1.0)
    call = lab.call()
    frames = frame_log(lab, call)
    session = lab.session_for(call)

    def booking() -> bool:
        runs = tool_runs(session.last_reply)
        return bool(runs) and runs[0].ms > 100

    lab.run(say_and_interrupt_when(call, ASK_BOOKING, booking))
    assert words_and_closes(call.listen(1.2))[0] == []  # the booking finishes, silently
    [made] = toolbox.restaurant.bookings.values()
    assert call.conversation[2]["content"][0]["content"] == json.dumps(made)
    assert tool_runs(session.replies[0])[0].state == "done"
    answer = call.say("Did the booking go through?")
    assert "booked is yes" in answer.text  # the stand-in reads the real result back
    check_after_interrupt(lab, call, frames, toolbox)
    assert len(toolbox.restaurant.bookings) == 1


def test_call_interrupted_during_the_follow_up(make_lab):
    from conftest import frame_log

    lab, toolbox = tool_lab(make_lab, slow=0.2, tokens_per_second=20)
    call = lab.call()
    frames = frame_log(lab, call)

    def follow_up_streaming() -> bool:
        record = stand_in(lab)
        last = record.body.get("messages", [{}])[-1] if record else {}
        has_result = "tool_result" in json.dumps(last.get("content", ""))
        return has_result and record.tokens_sent >= 3

    reply = lab.run(say_and_interrupt_when(call, ASK_ORDER, follow_up_streaming))
    history = call.conversation
    result = history[2]["content"][0]
    assert json.loads(result["content"])["status"] == "out for delivery"
    assert len(history) in (3, 4)  # the follow-up is stored only if some of it was heard
    if len(history) == 4:
        assert reply.heard.endswith(history[3]["content"])
    check_after_interrupt(lab, call, frames, toolbox)


def test_call_barge_in_while_a_tool_runs(make_lab):
    from conftest import frame_log

    lab, toolbox = tool_lab(make_lab)
    call = lab.call()
    frames = frame_log(lab, call)
    session = lab.session_for(call)

    async def scenario() -> None:
        await call.send_async(prompt_frame(ASK_ORDER))
        await until(lambda: bool(tool_runs(session.last_reply)))
        await call.send_async(prompt_frame(ASK_HOURS))  # the caller speaks over the silence
        await until(lambda: len(session.replies) == 2 and session.replies[1].state == "done")

    lab.run(scenario())
    first, second = session.replies
    assert first.state == "cancelled" and tool_runs(first)[0].state == "cancelled"
    after = [f for f in frames.out_after(ASK_HOURS) if f["type"] == "text"]
    assert "".join(f["token"] for f in after) == second.sent and after[-1]["last"] is True
    assert_api_valid(call.conversation, toolbox)
    assert all(r.status == 200 for r in lab.offline_claude.requests)


async def test_the_demo_reservation_book_is_bounded_per_caller_and_in_all():
    import contextvars

    from relaylab.steps import restaurant as tools

    restaurant = tools.Restaurant(slow_seconds=0)

    async def book(caller: str, time: str) -> dict[str, Any]:
        context = contextvars.copy_context()
        context.run(tools.current_caller.set, caller)
        coro = restaurant.book_table("Friday", time, 2)
        return await asyncio.get_running_loop().create_task(coro, context=context)

    slots = [f"{hour}:{minute}" for hour in range(12, 22) for minute in ("00", "30")]
    assert len(slots) == tools.MAX_BOOKINGS_PER_CALLER
    made = [await book("CA-one", slot) for slot in slots]
    assert all(b["booked"] and not b.get("already_booked") for b in made)
    assert (await book("CA-one", "22:00")) == {
        "booked": False,
        "reason": "this call has booked as many tables as it may",
    }
    assert (await book("CA-one", "12:00"))["already_booked"]  # asking again is still fine
    other = await book("CA-two", "12:00")  # another caller: their own booking
    assert other["booked"] and not other.get("already_booked")
    for n in range(tools.MAX_BOOKINGS + 50):
        await book(f"CA-{n}", "19:00")
    assert len(restaurant.bookings) == tools.MAX_BOOKINGS
    references = [b["reference"] for b in restaurant.bookings.values()]
    assert len(set(references)) == len(references)
