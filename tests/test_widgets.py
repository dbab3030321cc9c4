"""The widgets show a real call through a real Lab, at a bounded rate, and stop on detach."""

import html
import time

import pytest

from relaylab.step import Step
from relaylab.widgets import (
    MAX_RATE,
    CallerPanel,
    ConversationView,
    history_table,
    reply_html,
    spoken_html,
)

LONG = "Name ten things that happened in 1999"


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_lab_view_builds_a_conversation_view_and_stop_detaches_it(make_lab):
    lab = make_lab("tracking")
    view = lab.view()
    assert isinstance(view, ConversationView)
    assert "No call yet" in view.html
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    lab.stop()
    assert "lab stopped" in view._head.value
    assert lab.server.session_listeners == []


def test_interrupted_turn_shows_heard_text_plain_and_unheard_text_struck(make_lab):
    lab = make_lab("tracking")
    view = lab.view()
    call = lab.call()
    reply = call.say("Tell me about dogs", interrupt_after_words=8)
    assert not reply.complete, "the pacing should interrupt while the reply still streams"
    session = lab.session_for(call)
    assert wait_for(lambda: session.last_reply.state == "cancelled")
    sent, heard = session.last_reply.sent, session.last_reply.heard
    assert heard == reply.heard == "Dogs were the first animals people tamed, more"
    unheard = sent[len(heard) :]
    expected = f"{html.escape(heard, quote=False)}<del>{html.escape(unheard, quote=False)}</del>"
    assert wait_for(lambda: expected in view.html), view.html
    assert "Tell me about dogs" in view.html
    assert "interrupted, heard 8 words" in view.html
    # The last frames in and out are shown too: the interrupt came in.
    assert wait_for(lambda: "interrupt" in view._frames.value)


def test_tokens_arrive_live_at_a_bounded_rate(make_lab):
    lab = make_lab("streaming")
    view = lab.view()
    call = lab.call()
    before = view.renders
    started = time.monotonic()
    future = lab._loop.submit(call.say_async(LONG))
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
    assert 3 <= renders <= elapsed * MAX_RATE + 3, (renders, elapsed)
    assert renders < tokens / 2, "the view must not draw once per token"
    assert f"{tokens} tokens" in view.html


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


def test_caller_panel_says_and_interrupts_without_blocking(make_lab):
    lab = make_lab("tracking", tokens_per_second=40.0)
    view = lab.view()
    panel = CallerPanel(lab)
    started = time.monotonic()
    panel.say_button.click()  # what the button does: schedule on the loop, return at once
    assert time.monotonic() - started < 0.5
    assert wait_for(lambda: panel.call is not None and lab.session_for(panel.call) is not None)
    session_ready = wait_for(lambda: len(lab.session_for(panel.call).last_reply.sent.split()) > 20)
    assert session_ready
    panel.interrupt_button.click()
    heard = panel.future.result(5).heard
    reply = lab.session_for(panel.call).last_reply
    assert wait_for(lambda: reply.state == "cancelled")
    assert heard and reply.heard == heard
    assert wait_for(lambda: panel.call.conversation[-1]["content"] == heard)
    assert wait_for(lambda: "<del>" in view.html)
    assert "interrupted after" in panel.status.value


def test_caller_panel_reports_when_there_is_nothing_to_interrupt(make_lab):
    lab = make_lab("tracking")
    panel = CallerPanel(lab.call())
    assert panel.interrupt().result(5) is None
    assert "nothing to interrupt" in panel.status.value
    reply = panel.say("Hello").result(10)
    assert reply.text.startswith("Hello!")
    assert "reply finished" in panel.status.value


def test_history_table_marks_stored_but_unheard_text(make_lab):
    lab = make_lab("streaming")

    def on_interrupt(call, interrupt):  # the seed's bug: nothing is cut, nothing cancelled
        pass

    from relaylab.steps import streaming

    lab.use(Step(on_prompt=streaming.on_prompt, on_interrupt=on_interrupt))
    call = lab.call()
    reply = call.say("Tell me about dogs", interrupt_after_words=8)
    assert wait_for(lambda: lab.session_for(call).last_reply.state == "done")
    page = history_table(call.conversation, heard=reply).data
    assert "<del> than fifteen thousand years ago" in page
    assert "never heard" in page
    assert "Dogs were the first animals people tamed, more<del>" in reply_html(reply).data


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
    ("sent", "heard", "expected"),
    [
        ("a <b> c", None, "a &lt;b&gt; c"),
        ("one two three", "one two", "one two<del> three</del>"),
        ("one two", "one two", "one two"),
    ],
)
def test_spoken_html(sent, heard, expected):
    assert spoken_html(sent, heard) == expected
