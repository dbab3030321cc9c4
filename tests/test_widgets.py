"""The widgets show a real call through a real Lab, at a bounded rate, and say when it stops."""

import html
import json
import time
from pathlib import Path

import pytest

from conftest import within
from relaylab.notebook.caller import SimulatedCall
from relaylab.notebook.widgets import (
    MAX_RATE,
    WIDGET_VIEW,
    CallerPanel,
    ConversationView,
    Phone,
    ReplyLines,
    freeze_widget_outputs,
    history_table,
    reply_html,
    spoken_html,
    spoken_text,
    tool_line,
)
from relaylab.relay.session import RelayReply, ReplyState
from relaylab.relay.step import Step
from relaylab.simulation import TwilioBehaviour
from relaylab.steps.restaurant import demo_toolbox
from relaylab.steps.tools import ToolRun, tool_runs, tools_step

LONG = "Name ten things that happened in 1999"
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("0[0-9]_*.ipynb"))


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_lab_view_has_fallbacks_and_says_in_the_view_when_the_lab_stops(make_lab):
    lab = make_lab("tracking")
    listening = list(lab.server.session_listeners)
    view = lab.view()
    assert isinstance(view, ConversationView)
    assert "No call yet" in view.html
    bundle = view._repr_mimebundle_()
    assert WIDGET_VIEW in bundle
    assert "waiting for a call" in bundle["text/plain"]
    assert "No call yet" in bundle["text/html"]
    lab.stop()
    assert "the lab has stopped" in view.snapshot().data
    assert "the lab has stopped" in view.text
    assert lab.server.session_listeners == listening, "the view stopped listening"


def test_interrupted_turn_shows_heard_text_plain_and_unheard_text_struck(make_lab):
    lab = make_lab("tracking")
    view = lab.view()
    call = lab.call()
    reply = call.say("Tell me about dogs", interrupt_after_words=8)
    assert not reply.complete, "the pacing should interrupt while the reply still streams"
    session = lab.session_for(call)
    relay_reply = session.last_reply
    assert wait_for(lambda: relay_reply.state == "cancelled")
    sent, heard = relay_reply.sent, relay_reply.heard
    assert heard == reply.heard
    unheard = sent[len(heard) :]
    expected = f"{html.escape(heard, quote=False)}<del>{html.escape(unheard, quote=False)}</del>"
    assert wait_for(lambda: expected in view.html), view.html
    assert "Tell me about dogs" in view.html
    assert "the caller cut in at" in view.html
    assert f"having heard {len(heard.split())} words" in view.html
    # The lab's voice runs at clock_speed 4: the speech time is put in real time too.
    assert "of speech played before the interrupt, at 4x speed (" in view.html
    assert "last word" not in view.html, "a stopped reply has no last word"
    assert f"[not heard: {unheard.strip()}]" in view.text
    # The last frames in and out are shown too: the interrupt came in.
    assert wait_for(lambda: "interrupt" in view._frames.value)


def test_tokens_arrive_live_at_a_bounded_rate_and_frames_are_counted(make_lab):
    lab = make_lab("streaming")
    view = lab.view()
    call = lab.call()
    before = view.renders
    started = time.monotonic()
    future = lab.loop.submit(call.say_async(LONG))
    partial = set()
    while not future.done():
        text = view.html
        if "▌" in text:  # drawn while the reply was still running
            partial.add(text)
        time.sleep(0.01)
    reply = future.result()
    elapsed = time.monotonic() - started
    assert wait_for(lambda: "▌" not in view.html and "done" in view.html)
    renders = view.renders - before
    tokens = sum(1 for f in reply.frames if f.get("type") == "text" and f.get("token"))
    assert len(partial) >= 3, "the view should show the reply growing, token by token"
    # At most MAX_RATE timed draws a second, plus the immediate ones (call, start, end).
    assert 3 <= renders <= elapsed * MAX_RATE + 4, (renders, elapsed)
    assert renders < tokens / 2, "the view must not draw once per token"
    assert f"{tokens} text frames" in view.html
    assert "words sent from" in view.html


def test_basic_reply_is_one_text_frame_sent_at_once(make_lab):
    lab = make_lab("basic")
    view = lab.view()
    lab.call().say("Hello")
    assert wait_for(lambda: "1 text frame" in view.html), view.html
    assert "the whole reply sent at once" in view.html
    assert "token" not in view.html


def test_detach_stops_updates(make_lab):
    lab = make_lab("streaming")
    view = lab.view()
    view.detach()
    frozen = (view.renders, view.html)
    call = lab.call()
    call.say("Hello")
    time.sleep(0.2)
    assert (view.renders, view.html) == frozen
    assert view.session is None
    view.detach()  # twice is fine, and lab.stop() calls it again
    lab.stop()


def test_view_follows_the_newest_call(make_lab):
    lab = make_lab("basic")
    view = lab.view()
    lab.call().say("Hello")
    second = lab.call()
    second.say(LONG)
    assert wait_for(lambda: "nineteen ninety nine" in view.html)
    assert view.session is lab.session_for(second)
    assert "Hello" not in view.html


def test_view_pinned_to_a_call_stays_on_it_when_newer_calls_come(make_lab):
    lab = make_lab("streaming")
    first = lab.call()
    view = lab.view(call=first)
    reply = first.say("Tell me about dogs", interrupt_after_words=8)
    unheard = reply.text[len(reply.heard) :].strip()
    assert unheard, "the pacing should interrupt while the reply still streams"
    assert wait_for(lambda: "<del>" in view.html and "the relay kept sending" in view.html)
    pinned = view.html
    lab.call().say("Hello")
    time.sleep(0.2)
    assert view.session is lab.session_for(first)
    assert "Hello" not in view.html and "Tell me about dogs" in view.html
    assert view.snapshot().data.endswith(pinned)
    lab.stop()
    assert "the lab has stopped" in view.text


def test_view_pinned_to_something_that_is_not_a_call_gets_a_clear_error(make_lab):
    lab = make_lab("basic")
    with pytest.raises(TypeError, match=r"takes a call from lab\.call\(\)"):
        lab.view(call="CA123")
    other = make_lab("basic")
    stranger = other.call()
    stranger.say("Hello")
    with pytest.raises(ValueError, match="the relay has no call CA"):
        lab.view(call=stranger)


def test_speech_played_is_put_in_real_time_when_the_voice_runs_fast():
    cut = RelayReply(
        prompt="Hi", id=1, sent="one two three four", frames=4, state=ReplyState.CANCELLED
    )
    cut.heard = "one two"
    fast = ReplyLines.of(cut, speech_ms=2910, clock_speed=2.0)
    assert (
        "2.91 s of speech played before the interrupt, at 2x speed (1.46 s of real time)"
        in fast.notes
    )
    real = ReplyLines.of(cut, speech_ms=2910)
    assert "2.91 s of speech played before the interrupt" in real.notes
    assert not any("real time" in note for note in real.notes)


def test_caller_panel_says_and_interrupts_without_blocking(make_lab):
    lab = make_lab("tracking", tokens_per_second=40.0)
    view = lab.view()
    panel = CallerPanel(lab)
    started = time.monotonic()
    panel.say_button.click()  # what the button does: schedule on the loop, return at once
    assert time.monotonic() - started < within(0.5)
    assert wait_for(lambda: panel.call is not None and lab.session_for(panel.call) is not None)
    # The voice speaks a sentence once it has all arrived (Twilio's default chunking):
    # wait for the first one (17 words), and a little of its playback.
    assert wait_for(lambda: len(lab.session_for(panel.call).last_reply.sent.split()) > 20)
    time.sleep(0.4)
    panel.interrupt_button.click()
    heard = panel.future.result(5).heard
    reply = lab.session_for(panel.call).last_reply
    assert wait_for(lambda: reply.state == "cancelled")
    assert heard and reply.heard == heard
    assert wait_for(lambda: panel.call.conversation[-1]["content"] == heard)
    assert wait_for(lambda: "<del>" in view.html)
    assert "interrupted after" in panel.status.value


def test_caller_panel_says_so_when_talking_over_claude_interrupts_nothing(make_lab):
    lab = make_lab("tracking", tokens_per_second=40.0)
    call = lab.call(twilio=TwilioBehaviour(interruptible="none"))
    panel = CallerPanel(lab, call=call)
    panel.say_button.click()
    assert wait_for(lambda: lab.session_for(call) is not None)
    assert wait_for(lambda: len(lab.session_for(call).last_reply.sent.split()) > 20)
    panel.interrupt_button.click()
    reply = panel.future.result(5)
    assert reply is not None and not reply.interrupted
    assert "kept speaking" in panel.status.value
    assert lab.session_for(call).last_reply.state != "cancelled"


def test_caller_panel_of_a_call_alone_runs_on_that_calls_loop_thread(make_lab):
    lab = make_lab("tracking")
    call = lab.call()
    panel = CallerPanel(call)  # the older form: the call's own loop thread runs the clicks
    assert panel.call is call and panel.lab is None
    reply = panel.say("Hello").result(10)
    assert reply.text.startswith("Hello!")
    with pytest.raises(TypeError, match="CallerPanel needs a Lab"):
        CallerPanel(SimulatedCall("ws://127.0.0.1:9/ws"))  # no loop thread to run on


def test_caller_panel_reports_nothing_to_interrupt_and_presses_keys(make_lab):
    lab = make_lab("tracking", twiml_options={"dtmf_detection": True})  # keys reach the relay
    call = lab.call()
    panel = CallerPanel(lab, call=call)
    assert panel.interrupt().result(5) is None
    assert "nothing to interrupt" in panel.status.value
    reply = panel.say("Hello").result(10)
    assert reply.text.startswith("Hello!")
    assert "reply arrived" in panel.status.value
    panel.key_buttons[4].click()  # the "5" key
    panel.future.result(5)
    assert "pressed 5" in panel.status.value
    frames_in = [json.loads(f) for way, f in lab.session_for(call).frames if way == "in"]
    assert {"type": "dtmf", "digit": "5"} in frames_in


def test_caller_panel_says_a_key_is_not_sent_without_dtmf_detection(make_lab):
    lab = make_lab("tracking")
    call = lab.call()
    panel = CallerPanel(lab, call=call)
    panel.key_buttons[4].click()
    panel.future.result(5)
    assert "not sent, the TwiML has no dtmfDetection" in panel.status.value
    frames_in = [json.loads(f) for way, f in lab.session_for(call).frames if way == "in"]
    assert not any(f["type"] == "dtmf" for f in frames_in)


def test_saying_something_while_claude_speaks_interrupts_first(make_lab):
    lab = make_lab("tracking", tokens_per_second=40.0)
    view = lab.view()
    panel = CallerPanel(lab)
    first = panel.say("Tell me about dogs")
    assert wait_for(lambda: panel.call is not None and lab.session_for(panel.call) is not None)
    session = lab.session_for(panel.call)
    assert wait_for(lambda: len(session.last_reply.sent.split()) > 20)
    time.sleep(0.4)
    second = panel.say("Hello").result(10)
    assert first.result(5).interrupted, "the first say() ends with the interrupt"
    barged = session.replies[0]
    assert barged.state == "cancelled" and barged.heard
    assert second.text.startswith("Hello!")
    assert wait_for(lambda: "<del>" in view.html and "Hello!" in view.html), view.html


def test_phone_puts_the_view_over_the_controls_and_says_when_the_lab_stopped(make_lab):
    lab = make_lab("tracking")
    phone = Phone(lab)
    assert phone.widget.children == (phone.view.widget, phone.panel.widget)
    reply = phone.say("Hello").result(10)
    assert reply.text.startswith("Hello!")
    assert wait_for(lambda: "Hello!" in phone.view.html)
    bundle = phone._repr_mimebundle_()
    assert WIDGET_VIEW in bundle
    assert "caller: Hello" in bundle["text/plain"]
    assert "Say, Interrupt" in bundle["text/plain"]
    assert "Hello!" in bundle["text/html"]
    lab.stop()
    assert "the lab has stopped" in phone.view.snapshot().data
    assert "lab has stopped" in phone.panel.status.value
    assert phone.panel.say_button.disabled
    assert phone.say("Anyone there?") is None  # a click after the stop: said in the panel
    assert "lab has stopped" in phone.panel.status.value


def test_phone_shows_only_the_newest_replies(make_lab):
    lab = make_lab("basic")
    call = lab.call()
    for _ in range(3):
        call.say("Hello")
    phone = Phone(lab, call=call, replies_shown=2)
    assert "1 earlier exchange not shown" in phone.view.html
    assert phone.view.html.count("rl-user") == 2


def test_reply_played_by_twilio_is_shown(make_lab):
    lab = make_lab("tracking")
    view = lab.view()
    call = lab.call(twilio=TwilioBehaviour(tokens_played=True, chunking="word"))
    call.say("Tell me about dogs", interrupt_after_words=8)
    assert wait_for(lambda: "Twilio reports" in view.html and "<del>" in view.html), view.html


ORDER = "Where is my order 12345?"
ORDER_CALL = 'order_status {"order_number": "12345"}'


def test_the_view_shows_tool_calls_live_with_state_timing_and_interrupts(make_lab):
    toolbox = demo_toolbox(slow_seconds=1.0)
    lab = make_lab(tools_step(toolbox=toolbox, hold_after=0.2))
    view = lab.view()
    call = lab.call()
    future = lab.loop.submit(call.say_async(ORDER))
    while_running = set()
    while not future.done():
        if f"{ORDER_CALL}: running" in view.html:
            while_running.add(view.html)
        time.sleep(0.01)
    future.result()
    assert while_running, "the view should show the tool call while it runs"
    session = lab.session_for(call)
    [done] = tool_runs(session.last_reply)
    assert done.state == "done"
    assert wait_for(lambda: f"{ORDER_CALL}: done in {done.ms / 1000:.2f} s" in view.html)
    assert f"tool: {ORDER_CALL}: done in" in view.text

    # The caller cuts in while the (read-only) tool runs: it is cancelled, and the view says so.
    reply = call.say(ORDER, interrupt_after_words=4)
    assert reply.interrupted
    [cancelled] = tool_runs(session.last_reply)
    assert wait_for(lambda: cancelled.state == "cancelled")
    line = f"{ORDER_CALL}: cancelled after {cancelled.ms / 1000:.2f} s"
    assert wait_for(lambda: line in view.html), view.html
    assert f"{line}; the caller interrupted while it ran" in view.text

    # A view made after the calls still shows them (the tools step recorded them).
    later = lab.view()
    assert f"{ORDER_CALL}: done in" in later.html and f"{ORDER_CALL}: cancelled" in later.html


def test_tool_line_says_when_a_side_effecting_tool_was_not_stopped():
    run = ToolRun("toolu_1", "book_table", {"people": 4}, side_effects=True, interrupted=True)
    assert tool_line(run).startswith('book_table {"people": 4}: running, ')
    assert tool_line(run).endswith(
        "the caller interrupted, but it changes things, so it was not stopped"
    )
    run.state, run.ended_at = "failed", run.started_at + 0.25
    assert tool_line(run).startswith('book_table {"people": 4}: failed after 0.25 s;')


def test_reply_lines_in_words():
    cancelled = RelayReply(
        prompt="Hi", id=1, sent="one two three four", frames=4, state=ReplyState.CANCELLED
    )
    lines = ReplyLines.of(cancelled)
    assert "cancelled by the caller's next prompt" in lines.notes
    assert "no interrupt came, so what was heard is unknown" in lines.notes
    assert not any("last word" in note for note in lines.notes)
    played = RelayReply(prompt="Hi", id=1, sent="one two three four", state=ReplyState.CANCELLED)
    played.played = "one two "
    lines = ReplyLines.of(played)
    assert lines.heard == "one two"
    assert "one two<del> three four</del>" in lines.html()
    assert "Twilio reports 2 words played" in lines.notes
    running = RelayReply(prompt="Hi", id=2)
    assert "waiting for Claude's first word" in ReplyLines.of(running).html()
    cut_off = RelayReply(prompt="Hi", id=3, sent="one two three four", state=ReplyState.DONE)
    cut_off.played, cut_off.heard, cut_off.cut_off = "one two ", "one two", True
    lines = ReplyLines.of(cut_off)
    assert "cut off by the next reply's speech after 2 words" in lines.notes
    assert not any("cut in" in note for note in lines.notes), "no caller cut in"


def test_history_table_marks_stored_but_unheard_text(make_lab):
    lab = make_lab("streaming")

    def on_interrupt(call, interrupt):  # the seed's bug: nothing is cut, nothing cancelled
        pass

    from relaylab.steps import streaming

    lab.use(Step(on_prompt=streaming.on_prompt, on_interrupt=on_interrupt))
    view = lab.view()
    call = lab.call()
    reply = call.say("Tell me about dogs", interrupt_after_words=8)
    assert wait_for(lambda: lab.session_for(call).last_reply.state == "done")
    assert wait_for(lambda: "the relay kept sending for" in view.html), view.html
    page = history_table(call.conversation, heard=reply).data
    assert "never heard" in page
    assert f"{html.escape(reply.heard, quote=False)}<del>" in page
    assert f"{html.escape(reply.heard, quote=False)}<del>" in reply_html(reply).data


def test_history_table_diff_shows_new_cut_and_dropped_turns():
    before = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there, how can I help?"},
        {"role": "user", "content": "Bye"},
    ]
    after = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    page = history_table(after, before=before).data
    assert "Hello there<del>, how can I help?</del>" in page
    assert "<del>Bye</del>" in page and "dropped" in page
    grown = history_table(before, before=after[:1]).data
    assert "<ins>Hello there, how can I help?</ins>" in grown


@pytest.mark.parametrize(
    ("sent", "heard", "expected_html", "expected_text"),
    [
        ("a <b> c", None, "a &lt;b&gt; c", "a <b> c"),
        ("one two three", "one two", "one two<del> three</del>", "one two [not heard: three]"),
        ("one two", "one two", "one two", "one two"),
    ],
)
def test_spoken_html_and_text(sent, heard, expected_html, expected_text):
    assert spoken_html(sent, heard) == expected_html
    assert spoken_text(sent, heard) == expected_text


def _saved_notebook():
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_h", "IPY_MODEL_row"]}},
        "h": {
            "model_name": "HTMLModel",
            "state": {"value": "<style>x{}</style>one<del> two</del>"},
        },
        "row": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_t", "IPY_MODEL_b"]}},
        "t": {"model_name": "TextModel", "state": {"value": "Tell me"}},
        "b": {"model_name": "ButtonModel", "state": {"description": "Say"}},
    }
    output = {"output_type": "execute_result", "data": {WIDGET_VIEW: {"model_id": "box"}}}
    return {
        "metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": state}}},
        "cells": [{"cell_type": "code", "outputs": [output]}],
    }


def test_freeze_widget_outputs_keeps_what_the_widget_showed_last():
    notebook = _saved_notebook()
    assert freeze_widget_outputs(notebook) == 1
    data = notebook["cells"][0]["outputs"][0]["data"]
    assert WIDGET_VIEW not in data
    assert "one<del> two</del>" in data["text/html"] and "[Say]" in data["text/html"]
    assert "one [not heard: two]" in data["text/plain"]
    assert "x{}" not in data["text/plain"]
    assert "Saved from the last run" in data["text/plain"]
    assert "widgets" not in notebook["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_read_well_without_a_kernel(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        assert "NBVAL_" not in source, "nbval markers belong in the cell tags"
        for output in cell.get("outputs", []):
            assert WIDGET_VIEW not in output.get("data", {}), (
                "save notebooks with their widget outputs frozen: "
                "python -m relaylab.notebook.widgets"
            )
    assert "widgets" not in notebook["metadata"]
