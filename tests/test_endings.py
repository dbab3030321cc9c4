"""Every way a Claude reply can end, on the phone: real sockets, the real SDK, the stand-in.

For each case the stand-in is told to end its next reply that way (``fail_next``); the
caller must hear the behaviour ``relaylab.core.endings`` defines, the stored history must pass
the stand-in's own validation, and the next turn must get a real answer.
"""

from __future__ import annotations

import time

import anthropic
import pytest

from conftest import assert_valid_history, within
from relaylab.core import endings
from relaylab.core.endings import CUT_MARK
from relaylab.core.twilio_frames import prompt_frame
from relaylab.offline_claude import REPLIES, OfflineClaude, validate
from relaylab.relay.session import Limits
from relaylab.relay.streams import FastStreamClient
from relaylab.relay.testing import Pause, WaitFor, run_step

DOGS = "Tell me about dogs"
HELLO = "Hello"


def history_valid(history: list) -> None:
    """Valid for the stand-in (as the real API checks it) and alternating roles."""
    validate({"model": "m", "max_tokens": 10, "messages": history})
    assert_valid_history(history)


def next_turn_is_real(call) -> None:
    again = call.say(HELLO)
    assert again.complete and again.text == REPLIES["greeting"], again.text
    history_valid(call.conversation)


def spoken(reply) -> list[str]:
    return [f["token"] for f in reply.frames if f["type"] == "text"]


@pytest.mark.parametrize("step", ["basic", "streaming", "tracking"])
def test_an_empty_reply_is_a_short_line_and_never_an_empty_turn(make_lab, step):
    lab = make_lab(step)
    lab.offline_claude.fail_next("empty")
    call = lab.call()
    reply = call.say(DOGS)
    assert reply.complete and reply.text == endings.EMPTY_LINE
    assert lab.offline_claude.requests[-1].stop_reason == "end_turn"
    assert all(turn["content"] for turn in call.conversation)
    if step == "tracking":  # nothing of Claude's is stored; the next prompt joins this one
        assert [t["role"] for t in call.conversation] == ["user"]
    else:  # lessons 1-2 append: they keep the line the caller heard, so roles alternate
        assert call.conversation[-1] == {"role": "assistant", "content": endings.EMPTY_LINE}
    again = call.say(HELLO)
    assert again.complete and again.text != endings.EMPTY_LINE
    assert lab.offline_claude.requests[-1].status == 200  # no 400 for an empty turn
    history_valid(call.conversation)


def test_a_refusal_after_some_words_stops_says_a_line_and_leaves_the_context(lab):
    call = lab.call()
    call.say(HELLO)
    before = list(call.conversation)
    lab.offline_claude.fail_next("refusal")
    reply = call.say(DOGS)
    said = lab.offline_claude.requests[-1]
    assert said.stop_reason == "refusal" and said.tokens_sent > 0
    # What was already said, then the relay's line as a sentence of its own.
    assert reply.complete and reply.text.endswith(endings.REFUSAL_LINE)
    words = reply.text[: -len(CUT_MARK + " " + endings.REFUSAL_LINE)]
    assert words and REPLIES["dogs"].startswith(words)
    # The refused words and the prompt that caused them are out of the context.
    assert call.conversation == before
    next_turn_is_real(call)
    assert "dogs" not in str(lab.offline_claude.requests[-1].body["messages"]).lower()


def test_a_refusal_with_no_words_is_not_dead_air(lab):
    lab.offline_claude.fail_next("refusal_no_text")
    call = lab.call()
    reply = call.say(DOGS)
    assert reply.complete and reply.text == endings.REFUSAL_LINE
    assert call.conversation == []
    next_turn_is_real(call)


def test_max_tokens_wraps_up_and_the_stored_turn_marks_the_cut(lab):
    lab.offline_claude.fail_next("max_tokens")
    call = lab.call()
    reply = call.say(DOGS)
    record = lab.offline_claude.requests[-1]
    assert record.stop_reason == "max_tokens"
    claude_said = REPLIES["dogs"][: len(reply.text) - len(endings.WRAP_UP_LINE)]
    assert reply.text.endswith(endings.WRAP_UP_LINE)
    texts = spoken(reply)
    # The wrap-up is its own frame, a sentence of its own after Claude's words.
    assert texts[-1] == CUT_MARK + " " + endings.WRAP_UP_LINE
    stored = call.conversation[-1]["content"]
    assert stored.endswith(CUT_MARK) and endings.WRAP_UP_LINE not in stored
    assert REPLIES["dogs"].startswith(stored[: -len(CUT_MARK)])
    assert claude_said.strip(". ")
    next_turn_is_real(call)


def test_pause_turn_carries_on_with_the_paused_reply_sent_back(lab):
    lab.offline_claude.fail_next("pause_turn")
    call = lab.call()
    reply = call.say(DOGS)
    first, second = lab.offline_claude.requests[-2:]
    assert first.stop_reason == "pause_turn" and second.stop_reason == "end_turn"
    sent_back = second.body["messages"][-1]
    assert sent_back["role"] == "assistant" and sent_back["content"][0]["type"] == "text"
    assert reply.complete and reply.text == REPLIES["dogs"]
    assert call.conversation[-1] == {"role": "assistant", "content": REPLIES["dogs"]}
    next_turn_is_real(call)


def test_a_full_context_trims_the_history_and_wraps_up(lab):
    call = lab.call()
    for _ in range(3):
        call.say(HELLO)
    turns = len(call.conversation)
    lab.offline_claude.fail_next("context_window")
    reply = call.say(DOGS)
    assert lab.offline_claude.requests[-1].stop_reason == "model_context_window_exceeded"
    assert reply.complete and reply.text.endswith(endings.CONTEXT_LINE)
    assert len(call.conversation) < turns + 2
    assert call.conversation[-1]["content"].endswith(CUT_MARK)
    next_turn_is_real(call)


def test_an_error_event_mid_stream_keeps_the_relays_words_apart_from_claudes(lab, relay_logs):
    # Stored: Claude's words, marked as cut off, exactly as the caller heard them (with
    # the pause before the relay's line); the apology is the relay's, never Claude's.
    lab.offline_claude.fail_next("error_event")
    call = lab.call()
    reply = call.say(DOGS)
    record = lab.offline_claude.requests[-1]
    assert record.outcome == "failed:error_event" and record.tokens_sent > 0
    texts = spoken(reply)
    # The apology is a frame of its own that starts a new sentence.
    assert texts[-1] == CUT_MARK + " " + endings.APOLOGY
    partial = "".join(texts[:-1])
    assert partial and REPLIES["dogs"].startswith(partial)
    stored = call.conversation[-1]["content"]
    assert stored == partial.strip() + CUT_MARK
    assert endings.APOLOGY not in stored
    assert "Overloaded" in relay_logs.text
    assert "".join(stored.split()) in "".join(reply.text.split())
    next_turn_is_real(call)


@pytest.mark.parametrize("kind", ["unauthorized", "forbidden", "not_found", "too_large"])
def test_http_errors_are_an_apology_and_the_call_goes_on(lab, relay_logs, kind):
    lab.offline_claude.fail_next(kind)
    call = lab.call()
    reply = call.say(DOGS)
    assert reply.complete and reply.text == endings.APOLOGY
    status = {"unauthorized": 401, "forbidden": 403, "not_found": 404, "too_large": 413}[kind]
    assert f"HTTP {status}" in relay_logs.text
    next_turn_is_real(call)


# -- the voice budget counts silence, not lack of text -----------------------------------

BUDGET = Limits(first_token_timeout=0.6, stall_timeout=1.0, alive_window=0.5, longest_wait=5.0)


def test_a_model_that_thinks_past_the_budget_gets_a_holding_line_then_the_answer(make_lab):
    lab = make_lab(call=BUDGET)
    lab.offline_claude.thinking_seconds = 1.5
    lab.offline_claude.fail_next("thinking")
    call = lab.call()
    reply = call.say(HELLO)
    assert reply.complete
    assert reply.text == endings.HOLD_LINE + " " + REPLIES["greeting"]
    assert endings.APOLOGY not in reply.text
    assert call.conversation[-1] == {"role": "assistant", "content": REPLIES["greeting"]}
    next_turn_is_real(call)


def test_a_retry_after_the_sdk_waits_out_is_a_live_model(make_lab):
    lab = make_lab(call=BUDGET)
    lab.offline_claude.retry_after = 1.2
    lab.offline_claude.fail_next("rate_limit")  # the SDK waits 1.2 s, then asks again
    call = lab.call()
    started = time.monotonic()
    reply = call.say(HELLO)
    assert time.monotonic() - started > 1.2
    assert reply.text == endings.HOLD_LINE + " " + REPLIES["greeting"]
    assert [r.status for r in lab.offline_claude.requests[-2:]] == [429, 200]
    next_turn_is_real(call)


def test_a_live_model_still_gets_the_apology_past_the_ceiling(make_lab):
    lab = make_lab(call=Limits(first_token_timeout=0.4, stall_timeout=1.0, longest_wait=1.2))
    lab.offline_claude.thinking_seconds = within(3.0)
    lab.offline_claude.fail_next("thinking")
    call = lab.call()
    started = time.monotonic()
    reply = call.say(HELLO)
    took = time.monotonic() - started
    assert reply.text == endings.HOLD_LINE + " " + endings.APOLOGY
    assert 1.1 < took < within(2.9), took
    next_turn_is_real(call)


def test_a_model_that_goes_quiet_gets_the_apology_at_the_budget(make_lab):
    lab = make_lab(call=BUDGET)
    lab.offline_claude.fail_next("hang")
    call = lab.call()
    reply = call.say(HELLO)
    assert reply.text == endings.APOLOGY  # no sign of life: no holding line
    next_turn_is_real(call)


# -- the table itself (pure) ---------------------------------------------------------------


def test_each_stop_reason_has_its_behaviour():
    e = endings.ending
    assert e("end_turn", " Hi. ") == endings.Ending("end_turn", store="Hi.")
    assert e("stop_sequence", "Hi").normal and e("tool_use", "Hi").normal
    assert e("end_turn", "  ") == endings.Ending("end_turn", say=endings.EMPTY_LINE)
    assert e("refusal", "Well").forget_prompt and e("refusal", "Well").store is None
    assert e("max_tokens", "It was ").store == "It was" + CUT_MARK
    assert e("max_tokens", "It was...").store == "It was..."  # marked once
    assert endings.spoken_after("It was", "Bye.") == "... Bye."
    assert endings.spoken_after("", "Bye.") == "Bye."
    assert e("max_tokens", "").store is None  # never an empty turn
    assert e("pause_turn", "So").continue_turn
    paused_out = e("pause_turn", "So", continuations=endings.MAX_CONTINUATIONS)
    assert paused_out.say == endings.WRAP_UP_LINE and not paused_out.continue_turn
    full = e("model_context_window_exceeded", "And")
    assert full.trim_history and full.say == endings.CONTEXT_LINE
    assert e(None, "Half") == endings.failed("Half")
    assert endings.failed("") == endings.Ending(None, say=endings.APOLOGY, store=endings.APOLOGY)


def test_a_paused_turn_goes_back_as_claudes_turn_without_trailing_space():
    user = {"role": "user", "content": "Hi"}
    once = endings.continuation([user], [{"type": "text", "text": "Dogs were ", "citations": None}])
    assert once == [user, {"role": "assistant", "content": [{"type": "text", "text": "Dogs were"}]}]
    twice = endings.continuation(once, [{"type": "text", "text": " the first"}])
    assert [b["text"] for b in twice[-1]["content"]] == ["Dogs were", " the first"]
    assert len(twice) == 2


def test_mark_cut_marks_only_the_turn_that_holds_the_words():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well, it"}]
    assert endings.mark_cut(history, "it ")
    assert history[-1]["content"] == "Well, it" + CUT_MARK
    assert not endings.mark_cut(history, "something else")


def test_an_interrupt_during_a_refusal_leaves_the_earlier_turns_alone(make_lab):
    lab = make_lab(tokens_per_second=20.0)
    call = lab.call()
    call.say(HELLO)
    before = list(call.conversation)
    lab.offline_claude.fail_next("refusal")
    reply = call.say(DOGS, interrupt_after_words=14)  # into the refusal's own line
    assert reply.interrupted
    time.sleep(0.3)
    assert call.conversation == before
    next_turn_is_real(call)


# -- relaylab serve --fast-stream's reader ends replies as the SDK's messages.stream() ------

LINES = {
    "empty": endings.EMPTY_LINE,
    "refusal": endings.REFUSAL_LINE,
    "refusal_no_text": endings.REFUSAL_LINE,
    "max_tokens": endings.WRAP_UP_LINE,
    "context_window": endings.CONTEXT_LINE,
    "error_event": endings.APOLOGY,
    "cut": endings.APOLOGY,
    "pause_turn": "",
    "thinking": "",
}


async def _two_turns(kind: str, fast_stream: bool) -> tuple[list[str], list, list[str]]:
    """The tracking step through real sockets and the real SDK (the SDK's messages.stream(),
    or the lean reader behind FastStreamClient), the first reply ending as ``kind``: the
    talk cycles spoken, the stored history, and the stand-in's outcome per request."""
    async with OfflineClaude(first_token_delay=0.01, tokens_per_second=400) as claude:
        claude.thinking_seconds = 0.3
        client = anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="x", max_retries=0)
        async with client:
            claude.fail_next(kind)
            result = await run_step(
                "tracking",
                [prompt_frame(DOGS), WaitFor(1, timeout=5), Pause(0.5), prompt_frame(HELLO)],
                claude=FastStreamClient(client) if fast_stream else client,  # type: ignore[arg-type]
            )
    cycles, tokens = [], []
    for frame in result.frames_out:
        tokens.append(frame["token"])
        if frame["last"]:
            cycles.append("".join(tokens))
            tokens = []
    return cycles, result.history, [r.outcome for r in claude.requests]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(LINES))
async def test_the_fast_reader_ends_each_case_as_the_sdk_path_does(kind):
    sdk = await _two_turns(kind, fast_stream=False)
    fast = await _two_turns(kind, fast_stream=True)
    assert fast == sdk  # the same words spoken, the same turns stored, the same requests
    (first, second), history, _ = sdk
    if LINES[kind]:
        assert first.endswith(LINES[kind]), first
    else:
        assert first == REPLIES["dogs"]
    # After an empty reply nothing of Claude's was stored, so the caller's two turns are
    # one ("Tell me about dogs Hello"), which the stand-in answers about dogs.
    answer = REPLIES["dogs"] if kind == "empty" else REPLIES["greeting"]
    assert second == answer
    history_valid(history)
    assert history[-1] == {"role": "assistant", "content": answer}


def test_extended_thinking_per_step_holds_the_line_while_claude_thinks(make_lab):
    from relaylab.steps.tracking import tracking_step

    lab = make_lab(tracking_step(thinking_budget=2048), call=BUDGET)
    lab.offline_claude.thinking_seconds = 1.2
    call = lab.call()
    reply = call.say(HELLO)
    request = lab.offline_claude.requests[-1].body
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert request["max_tokens"] == lab.llm.max_tokens + 2048
    assert reply.text == endings.HOLD_LINE + " " + REPLIES["greeting"]
    assert call.conversation[-1] == {"role": "assistant", "content": REPLIES["greeting"]}
    history_valid(call.conversation)
    with pytest.raises(ValueError, match="1024"):
        tracking_step(thinking_budget=100)


def test_the_stand_in_checks_a_thinking_budget_as_the_api_does():
    from relaylab.offline_claude import InvalidRequest

    base = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}

    def thinking(max_tokens: int, budget: int) -> dict:
        return {
            **base,
            "max_tokens": max_tokens,
            "thinking": {"type": "enabled", "budget_tokens": budget},
        }

    validate(thinking(3000, 2048))
    with pytest.raises(InvalidRequest, match="greater than"):
        validate(thinking(400, 2048))
    with pytest.raises(InvalidRequest, match="1024"):
        validate(thinking(4000, 9))


@pytest.mark.anyio
@pytest.mark.parametrize("fast_stream", [False, True], ids=["sdk", "fast"])
async def test_serves_client_reports_a_retry_after_as_a_live_model(fast_stream):
    # The client relaylab serve builds (aiohttp transport, the retry hook), either reader.
    from relaylab.relay.llm import Backend, make_llm

    async with OfflineClaude(first_token_delay=0.01, tokens_per_second=400) as claude:
        llm = make_llm(
            Backend("custom", claude.base_url, "x"),
            aiohttp=True,
            max_retries=1,
            fast_stream=fast_stream,
        )
        assert isinstance(llm.client, FastStreamClient) is fast_stream
        claude.retry_after = 1.2
        claude.fail_next("rate_limit")
        try:
            result = await run_step(
                "tracking", [prompt_frame(HELLO)], claude=llm.client, limits=BUDGET
            )
        finally:
            await llm.client.close()
    spoken = "".join(f["token"] for f in result.frames_out)
    assert spoken == endings.HOLD_LINE + " " + REPLIES["greeting"]
    assert [r.status for r in claude.requests] == [429, 200]


@pytest.mark.anyio
@pytest.mark.parametrize("fast_stream", [False, True], ids=["sdk", "fast"])
async def test_serves_client_counts_thinking_as_a_live_model(fast_stream):
    # Signs of life come from the HTTP client (each piece of the body), so either reader
    # holds the line while Claude thinks past the first-token budget.
    from relaylab.relay.llm import Backend, make_llm

    async with OfflineClaude(first_token_delay=0.01, tokens_per_second=400) as claude:
        llm = make_llm(
            Backend("custom", claude.base_url, "x"), aiohttp=True, fast_stream=fast_stream
        )
        claude.thinking_seconds = 1.5
        claude.fail_next("thinking")
        try:
            result = await run_step(
                "tracking", [prompt_frame(HELLO)], claude=llm.client, limits=BUDGET
            )
        finally:
            await llm.client.close()
    spoken = "".join(f["token"] for f in result.frames_out)
    assert spoken == endings.HOLD_LINE + " " + REPLIES["greeting"]
    assert result.history[-1] == {"role": "assistant", "content": REPLIES["greeting"]}
