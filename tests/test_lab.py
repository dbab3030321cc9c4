"""The notebook facade: start/stop, re-running a cell, swapping steps, async twins."""

import asyncio

import pytest

import relaylab as rl
from conftest import within
from relaylab.notebook.caller import TwilioBehaviour
from relaylab.relay.step import Step


def test_start_again_stops_the_previous_lab():
    first = rl.start("basic", offline=True, first_token_delay=0.01, tokens_per_second=500)
    try:
        second = rl.start("basic", offline=True, first_token_delay=0.01, tokens_per_second=500)
        assert not first.running and second.running
        assert second.call().say("Hello").complete
    finally:
        second.stop()
        first.stop()


def test_same_port_can_be_reused_after_restart():
    lab = rl.start("basic", offline=True, first_token_delay=0.01)
    port = lab.server.port
    again = rl.start("basic", offline=True, port=port, first_token_delay=0.01)
    try:
        assert again.server.port == port
    finally:
        again.stop()


def test_lab_urls_and_describe_have_no_port_noise(make_lab):
    lab = make_lab("streaming")
    assert lab.http_url.startswith("http://127.0.0.1:") and lab.ws_url.endswith("/ws")
    assert lab.describe() == (
        "relay running step 'streaming'; model: the offline stand-in for Claude (no API key used)"
    )


def test_use_swaps_handlers_with_a_learners_plain_functions(make_lab):
    lab = make_lab("basic")
    heard = []

    def on_setup(call, setup):
        heard.append(("setup", setup.call_sid))

    async def on_prompt(call, prompt):
        await call.send_text(prompt.voice_prompt.upper(), last=True)

    lab.use(Step(on_setup=on_setup, on_prompt=on_prompt))
    call = lab.call()
    assert call.say("echo me").text == "ECHO ME"
    assert heard == [("setup", call.call_sid)]


def test_a_failing_learner_hook_is_logged_and_the_call_goes_on(make_lab, relay_logs):
    lab = make_lab("basic")

    def on_dtmf(call, dtmf):
        raise RuntimeError("oops in my handler")

    lab.use(Step(on_dtmf=on_dtmf, on_prompt=lambda call, prompt: call.send_text("ok", last=True)))
    call = lab.call(twilio=TwilioBehaviour(dtmf_detection=True))
    call.press("5")
    assert call.say("still there?").text == "ok"
    assert "on_dtmf handler failed" in relay_logs.text


def test_async_twins_work_from_another_event_loop(make_lab):
    lab = make_lab("streaming")

    async def from_my_loop():
        call = await lab.call_async()
        reply = await call.say_async("Hello")
        await call.hang_up_async()
        return reply

    assert asyncio.run(from_my_loop()).complete


def test_unknown_step_name_is_a_clear_error(make_lab):
    lab = make_lab("basic")
    with pytest.raises(ValueError, match="basic, streaming, tracking"):
        lab.use("fancy")


def test_restart_is_quick_even_with_an_http_client_holding_its_socket():
    import http.client
    import time

    lab = rl.start("basic", offline=True, first_token_delay=0.01)
    held = http.client.HTTPConnection("127.0.0.1", lab.server.port, timeout=5)
    held.request("GET", "/healthz")
    assert held.getresponse().read() == b"ok\n"
    started = time.monotonic()
    again = rl.start("basic", offline=True, first_token_delay=0.01)
    try:
        assert time.monotonic() - started < within(5)
        assert not lab.running and again.running
    finally:
        held.close()
        again.stop()


def test_using_a_call_after_its_lab_stopped_says_so_clearly(make_lab):
    lab = make_lab("basic")
    call = lab.call()
    lab.stop()
    with pytest.raises(RuntimeError, match="this Lab was stopped"):
        call.say("Hello")


def test_lab_claude_can_be_awaited_from_a_notebook_loop_without_breaking_the_relay(make_lab):
    from relaylab.relay.failures import APOLOGY

    lab = make_lab("streaming")

    async def from_the_notebook():
        message = await lab.claude.messages.create(
            model=lab.model, max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
        )
        return message.content[0].text

    assert asyncio.run(from_the_notebook()).startswith("Hello!")
    assert lab.call().say("Hello").text != APOLOGY


def test_history_stays_readable_after_the_lab_stops(make_lab):
    lab = make_lab("tracking")
    call = lab.call()
    call.say("Hello")
    lab.stop()
    assert [turn["role"] for turn in call.conversation] == ["user", "assistant"]


def test_hanging_up_a_call_to_a_relay_elsewhere_does_not_wait(make_lab):
    import time

    lab = make_lab("basic")

    async def call_from_outside():
        call = rl.SimulatedCall(lab.ws_url)  # no session lookup: like `relaylab call`
        await call.connect_async()
        reply = await call.say_async("Hello")
        started = time.monotonic()
        await call.hang_up_async()
        return reply, time.monotonic() - started

    reply, hang_up_took = asyncio.run(call_from_outside())
    assert reply.complete and hang_up_took < within(1.0)


def test_a_step_that_keeps_no_history_logs_no_warning(make_lab, relay_logs):
    lab = make_lab("basic")
    lab.use(Step(on_prompt=lambda call, prompt: call.send_text("hi", last=True)))
    assert lab.call().say("Hello").text == "hi"
    assert "would reject this history" not in relay_logs.text


def test_a_booking_asked_after_an_interrupted_order_lookup_is_booked():
    # Lesson 05's "Try it yourself" after its interrupted lookup: the booking question joins
    # the user turn holding the lookup's "interrupted" note, and must get a tool call of its
    # own, not that stale note read back.
    from relaylab.steps.restaurant import demo_toolbox
    from relaylab.steps.tools import tools_step

    toolbox = demo_toolbox()
    lab = rl.start(
        tools_step(toolbox=toolbox),
        offline=True,
        first_token_delay=0.05,
        tokens_per_second=200,
        clock_speed=4.0,
    )
    try:
        caller = lab.call()
        cut = caller.say("Where is my order 12345?", interrupt_after_words=3)
        assert cut.interrupted
        reply = caller.say("Can I book a table for two on Saturday at 8pm?")
        assert "couldn't check" not in reply.text and "interrupted" not in reply.text
        caller.listen(0.5)
        assert len(toolbox.restaurant.bookings) == 1
        uses = [
            block["name"]
            for turn in caller.conversation
            if isinstance(turn["content"], list)
            for block in turn["content"]
            if block.get("type") == "tool_use"
        ]
        assert uses == ["order_status", "book_table"]
    finally:
        lab.stop()


def test_a_kernel_shutdown_stops_the_lab_and_the_phone_says_so():
    # A real ipykernel, shut down the way JupyterLab does it (a shutdown_request on the
    # control channel): before it exits, the phone's widgets get "the lab has stopped" and
    # disabled buttons, so the front end never shows a live-looking phone that does nothing.
    import os
    import queue
    from pathlib import Path

    from jupyter_client.manager import start_new_kernel

    root = str(Path(__file__).resolve().parents[1])
    km, kc = start_new_kernel(kernel_name="python3", env={**os.environ, "PYTHONPATH": root})
    try:
        code = (
            "import relaylab as rl\n"
            "lab = rl.start('basic', offline=True, first_token_delay=0.01)\n"
            "display(lab.phone())\n"
        )
        reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok"
        km.shutdown_kernel(now=False)
        messages = []
        while True:
            try:
                messages.append(kc.get_iopub_msg(timeout=1))
            except queue.Empty:
                break
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
    updates = [
        m["content"]["data"].get("state", {}) for m in messages if m["msg_type"] == "comm_msg"
    ]
    said = " ".join(str(state.get("value", "")) for state in updates)
    assert "the lab has stopped" in said.lower()
    assert sum(state.get("disabled") is True for state in updates) >= 3  # Say, Interrupt, keys
    assert {"_dom_classes": ["rl-lab-stopped"]} in updates


def test_a_timeline_is_an_html_table_in_notebooks_and_text_elsewhere(make_lab):
    from relaylab.notebook.timeline import timeline

    lab = make_lab("tracking")
    call = lab.call()
    call.say("Tell me about dogs", interrupt_after_words=5)
    call.say("Hello <b>there</b>")
    table = timeline(call, lab)
    page = table._repr_html_()
    assert page.count("<tr>") == 1 + len(table) == 3  # the header and a row per turn
    assert "Claude 1st token" in page and "Hello &lt;b&gt;there&lt;/b&gt;" in page
    assert "milliseconds after the prompt" in page
    assert str(table).splitlines()[0].startswith("turn prompt")  # the text table is kept
