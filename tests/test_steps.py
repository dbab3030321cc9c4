"""Each lesson step end to end: real sockets, the real anthropic SDK, the offline Claude."""

import asyncio
import time

from conftest import assert_valid_history, frame_log, within

TEN_THINGS = "Name ten things that happened in 1999"


def offline_reply(lab, prompt):
    """What the stand-in answers to a fresh conversation with only ``prompt``."""
    reply = lab.run(_create(lab, prompt))
    return reply


async def _create(lab, prompt):
    message = await lab.claude.messages.create(
        model=lab.model,
        max_tokens=lab.llm.max_tokens,
        messages=[{"role": "user", "content": prompt}],
    )
    return message.content[0].text


def test_basic_sends_the_whole_reply_as_one_final_frame(make_lab):
    lab = make_lab("basic", tokens_per_second=1000.0)
    expected = offline_reply(lab, TEN_THINGS)
    call = lab.call()
    reply = call.say(TEN_THINGS)
    frames = [f for f in reply.frames if f["type"] == "text"]
    assert frames == [{"type": "text", "token": expected, "last": True}]
    assert reply.text == expected and not reply.interrupted
    assert call.conversation == [
        {"role": "user", "content": TEN_THINGS},
        {"role": "assistant", "content": expected},
    ]
    assert lab.offline_claude.requests[-1].stream is False


def test_streaming_forwards_each_token_then_an_empty_last_frame(make_lab):
    lab = make_lab("streaming")
    expected = offline_reply(lab, TEN_THINGS)
    call = lab.call()
    reply = call.say(TEN_THINGS)
    frames = [f for f in reply.frames if f["type"] == "text"]
    assert len(frames) > 20
    assert all(f["last"] is False for f in frames[:-1])
    assert frames[-1] == {"type": "text", "token": "", "last": True}
    assert "".join(f["token"] for f in frames) == expected == reply.text
    assert call.conversation[-1] == {"role": "assistant", "content": expected}
    assert reply.timings["first_token_ms"] < reply.timings["last_token_ms"] / 3
    assert lab.offline_claude.requests[-1].stream is True


def test_tracking_interrupt_mid_stream_stops_everything_and_keeps_only_the_heard_words(lab):
    claude = lab.offline_claude
    call = lab.call()
    frames = frame_log(lab, call)
    reply = call.say(TEN_THINGS, interrupt_after_words=6)
    assert reply.interrupted and not reply.complete, "the interrupt should land mid-stream"
    assert len(reply.heard.split()) == 6
    call.listen(0.3)  # anything the relay still sent would arrive now

    after = frames.out_after('"interrupt"')
    assert after == [{"type": "text", "token": "", "last": True}], f"the relay sent {after}"

    request = claude.requests[-1]
    interrupt_sent_at = next(t for t, m in call.sent if m.get("type") == "interrupt")
    assert request.outcome == "client_closed"
    assert request.client_closed_at - interrupt_sent_at < within(0.1)
    assert request.tokens_sent < 0.8 * len(offline_reply(lab, TEN_THINGS).split())

    assert call.conversation == [
        {"role": "user", "content": TEN_THINGS},
        {"role": "assistant", "content": reply.heard},
    ]
    follow_up = call.say("How far did you get?")
    sent_to_model = claude.requests[-1].body["messages"]
    assert sent_to_model[1] == {"role": "assistant", "content": reply.heard}
    last_words = " ".join(reply.heard.split()[-3:]).rstrip(",.")
    assert last_words.lower() in follow_up.text.lower()
    assert_valid_history(call.conversation)


def test_tracking_interrupt_after_the_reply_finished_truncates_the_stored_turn(make_lab):
    lab = make_lab("tracking", tokens_per_second=2000.0, clock_speed=1.0)
    call = lab.call()
    reply = call.say("Tell me about dogs", interrupt_after_words=5)
    assert reply.complete and reply.interrupted, "the reply should finish streaming first"
    call.listen(0.1)
    assert call.conversation[-1] == {"role": "assistant", "content": reply.heard}
    assert len(reply.heard.split()) == 5
    assert reply.text.startswith(reply.heard) and len(reply.text) > len(reply.heard)


def test_model_overload_makes_the_caller_hear_an_apology_and_the_call_goes_on(lab, relay_logs):
    from relaylab.relay.failures import APOLOGY

    lab.offline_claude.fail_next("overloaded", times=2)  # the client retries once
    call = lab.call()
    reply = call.say("Hello")
    assert reply.text == APOLOGY and reply.complete
    assert "HTTP 529" in relay_logs.text and "apology" in relay_logs.text
    again = call.say("Hello")
    assert again.text != APOLOGY and again.complete
    assert_valid_history(call.conversation)
    assert call.conversation[1] == {"role": "assistant", "content": APOLOGY}


def test_stream_cut_mid_reply_ends_with_an_apology(lab, relay_logs):
    from relaylab.relay.failures import APOLOGY

    lab.offline_claude.fail_next("cut")
    call = lab.call()
    reply = call.say(TEN_THINGS)
    assert reply.complete and reply.text.endswith(APOLOGY) and len(reply.text) > len(APOLOGY)
    assert "the connection to Claude was cut mid-reply" in relay_logs.text
    assert_valid_history(call.conversation)
    assert call.say("Hello").complete


def test_basic_step_model_failure(make_lab):
    from relaylab.relay.failures import APOLOGY

    lab = make_lab("basic")
    lab.offline_claude.fail_next("server_error", times=2)
    call = lab.call()
    assert call.say("Hello").text == APOLOGY
    assert call.say("Hello").text != APOLOGY


def test_offline_claude_can_be_shared_by_two_labs_pointed_at_it_as_base_url(make_lab, monkeypatch):
    """ANTHROPIC_BASE_URL sends the relay to any Messages API server."""
    from relaylab.notebook.lab import Lab

    other = make_lab("basic")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", other.offline_claude.base_url)
    lab = Lab("streaming", clock_speed=4.0)
    try:
        assert lab.backend.kind == "custom" and lab.offline_claude is None
        reply = lab.call().say("Hello")
        assert reply.complete
        assert other.offline_claude.requests[-1].body["messages"] == [
            {"role": "user", "content": "Hello"}
        ]
    finally:
        lab.stop()


def test_handoff_on_dtmf_zero_ends_the_session_and_action_dials(make_lab):
    lab = make_lab("handoff", dial_number="+15550199", twiml_options={"dtmf_detection": True})
    call = lab.call()
    assert call.say("Hello").complete
    call.press("0")
    frames = call.listen(0.5)
    assert frames[-1] == {"type": "end", "handoffData": '{"reason": "human", "via": "dtmf"}'}
    assert not call.connected
    assert "<Dial>+15550199</Dial>" in call.action_twiml


def test_handoff_when_the_caller_asks_for_a_person(make_lab):
    lab = make_lab("handoff", auth_token="tok-for-action")
    call = lab.call()
    reply = call.say("Can I talk to a real person please?")
    assert reply.complete and "put you through" in reply.text
    call.listen(0.3)
    assert '"via": "asked"' in call.handoff_data
    assert "<Hangup" in call.action_twiml  # no dial number configured: a goodbye
    assert_valid_history(call.conversation)


def test_interrupt_now_from_another_task_ends_a_running_say(lab):
    call = lab.call()

    async def scenario():
        saying = asyncio.ensure_future(call.say_async(TEN_THINGS))
        while len(call.received) < 40:  # about 4 words heard at 4x speech speed
            await asyncio.sleep(0.01)
        interrupted = await call.interrupt_async()
        reply = await asyncio.wait_for(saying, 2)
        return interrupted, reply

    interrupted, reply = lab.run(scenario())
    assert interrupted is reply and reply.interrupted and not reply.complete
    assert call.interrupt() is None  # already interrupted: nothing more to talk over
    call.listen(0.2)
    assert call.conversation[-1] == {"role": "assistant", "content": reply.heard}


def test_conversation_is_current_right_after_an_interrupt(lab):
    call = lab.call()
    reply = call.say("Tell me about dogs", interrupt_after_words=5)
    assert call.conversation[-1] == {"role": "assistant", "content": reply.heard}


def test_tts_normalised_numbers_are_mapped_back_to_the_sent_spelling(make_lab):
    from relaylab.relay.step import Step
    from relaylab.steps import tracking

    async def on_prompt(call, prompt):
        call.conversation.add_user(prompt.voice_prompt)
        try:
            for word in [
                "In",
                "1999,",
                "the",
                "euro",
                "launched",
                "and",
                "cost",
                "$5",
                "for",
                "10%",
                "of",
                "people",
            ]:
                await call.send_text(word + " ")
                await asyncio.sleep(0.02)
            await call.send_text("", last=True)
        finally:
            call.conversation.add_assistant(call.reply.sent)

    lab = make_lab("tracking")
    lab.use(Step(on_prompt=on_prompt, on_interrupt=tracking.on_interrupt))
    call = lab.call(tts_normalise=True)
    reply = call.say("Tell me about 1999", interrupt_after_words=8)
    assert reply.utterance == "In nineteen ninety-nine, the euro launched and cost five dollars"
    assert reply.heard == "In 1999, the euro launched and cost $5"
    assert call.conversation[-1]["content"] == "In 1999, the euro launched and cost $5"


def test_a_handler_that_swallows_the_cancel_stays_silent_and_does_not_stall_the_call(
    make_lab, relay_logs
):
    from relaylab.relay.step import Step
    from relaylab.steps import tracking

    async def stubborn(call, prompt):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(1.5)  # ignores the cancel past the relay's cancel_wait (1 s)
            await call.send_text("too late", last=True)

    pressed = []
    lab = make_lab("tracking")
    lab.use(
        Step(
            on_prompt=stubborn,
            on_interrupt=tracking.on_interrupt,
            on_dtmf=lambda call, dtmf: pressed.append(time.monotonic()),
        )
    )
    call = lab.call()

    async def scenario():
        await call.send_async({"type": "prompt", "voicePrompt": "Hi", "last": True})
        await asyncio.sleep(0.1)
        await call.send_async({"type": "interrupt", "utteranceUntilInterrupt": ""})
        sent_at = time.monotonic()
        await call.send_async({"type": "dtmf", "digit": "1"})
        return sent_at, await call.listen_async(2.0)

    sent_at, late = lab.run(scenario())
    assert late == [{"type": "text", "token": "", "last": True}], "no word, the cycle closed"
    assert pressed and pressed[0] - sent_at < 1.5
    assert "still running after" in relay_logs.text


def test_a_cancelled_reply_that_raises_something_else_gets_no_apology(make_lab):
    from relaylab.relay.step import Step
    from relaylab.steps import tracking

    async def converts(call, prompt):
        try:
            await call.send_text("Let me think")
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    lab = make_lab("tracking")
    lab.use(Step(on_prompt=converts, on_interrupt=tracking.on_interrupt))
    call = lab.call()

    async def scenario():
        await call.send_async({"type": "prompt", "voicePrompt": "Hi", "last": True})
        await call.next_frame_async(5)
        await call.send_async({"type": "interrupt", "utteranceUntilInterrupt": "Let me"})
        return await call.listen_async(0.5)

    assert lab.run(scenario()) == [{"type": "text", "token": "", "last": True}]


def test_handoff_behind_a_public_url_signs_the_action_request_as_twilio_would(make_lab):
    lab = make_lab("handoff", auth_token="tok-public", public_url="https://relay.example.com")
    call = lab.call()
    call.say("Can I speak to a human?")
    call.listen(0.3)
    assert "<Hangup" in call.action_twiml
