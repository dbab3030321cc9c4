"""The phone as a learner uses it: Enter says what is in the box, the talk-over wait is
shown, an Interrupt while the caller is the one speaking cuts nothing, and the Say box
starts with a question that suits the step."""

import time

from relaylab.core.twilio_frames import prompt_frame
from relaylab.notebook.widgets import FIRST_WORDS, TOOL_WORDS, CallerPanel, Phone
from relaylab.steps.restaurant import demo_toolbox
from relaylab.steps.tools import tools_step


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_enter_in_the_say_box_says_it(make_lab):
    lab = make_lab("basic")
    panel = CallerPanel(lab)
    panel.text.value = "Hello"
    # What JupyterLab's Text view sends when Enter is pressed in the box.
    panel.text._handle_custom_msg({"event": "submit"}, [])
    reply = panel.future.result(10)
    assert reply.prompt == "Hello" and reply.text.startswith("Hello!")


def test_talking_over_claude_shows_the_wait_and_an_interrupt_then_cuts_nothing(make_lab):
    # Lesson 02's step has no on_interrupt. The caller says something long while Claude
    # speaks: the panel shows the caller is talking; an Interrupt in that window does not
    # claim "nothing to interrupt", and leaves the new reply alone.
    lab = make_lab("streaming", tokens_per_second=40.0, clock_speed=1.0)
    panel = CallerPanel(lab)
    first = panel.say("Tell me about dogs")
    assert wait_for(lambda: panel.call is not None and lab.session_for(panel.call) is not None)
    session = lab.session_for(panel.call)
    assert wait_for(lambda: len(session.last_reply.sent.split()) > 20)
    time.sleep(0.3)
    words = "Sorry to cut in, could you tell me about puppies instead please"
    second = panel.say(words)
    assert wait_for(lambda: "talks over Claude" in panel.status.value), panel.status.value
    assert panel.interrupt().result(5) is None
    assert "still saying" in panel.status.value and "nothing to interrupt" not in (
        panel.status.value
    )
    reply = second.result(15)
    assert first.result(5).interrupted
    assert not reply.interrupted and reply.text.startswith("Dogs were")  # "puppies": dogs


def test_the_say_box_starts_with_a_question_that_suits_the_step(make_lab):
    assert Phone(make_lab("tracking")).panel.text.value == FIRST_WORDS
    tools = make_lab(tools_step(toolbox=demo_toolbox()))
    assert Phone(tools).panel.text.value == TOOL_WORDS
    assert Phone(tools, text="When do you open?").panel.text.value == "When do you open?"


def test_a_caller_panel_alone_says_the_lab_stopped_at_once(make_lab):
    lab = make_lab("basic")
    panel = CallerPanel(lab)
    lab.stop()
    assert panel.stopped and panel.say_button.disabled and panel.text.disabled
    assert "lab has stopped" in panel.status.value
    assert "rl-lab-stopped" in panel.widget._dom_classes


def test_a_basic_reply_still_being_written_is_shown_as_waiting_not_streaming(make_lab):
    lab = make_lab("basic", tokens_per_second=40.0)
    view = lab.view()
    call = lab.call()
    lab.run(call.send_async(prompt_frame("Name ten things that happened in 1999")))
    assert wait_for(lambda: "waiting for Claude: nothing sent yet" in view.text), view.text
    assert "streaming" not in view.text and "0 text frames" not in view.text
    assert wait_for(lambda: "1 text frame" in view.text, timeout=15), view.text


def test_only_the_phones_outer_box_carries_the_stopped_message_for_a_lost_kernel(make_lab):
    # A kernel restart drops the kernel's last messages, so the phone's own CSS says the
    # lab stopped once the front end marks its widgets disconnected (the browser check
    # shows it in JupyterLab); the message sits once, on the outer box.
    lab = make_lab("basic")
    phone = Phone(lab)
    assert "rl-live" in phone.widget._dom_classes
    assert "rl-live" not in phone.view.widget._dom_classes
    assert "rl-live" not in phone.panel.widget._dom_classes
    assert "rl-live" in CallerPanel(lab).widget._dom_classes
    head = phone.view.snapshot().data
    assert ".rl-live.jupyter-widgets-disconnected:not(.rl-lab-stopped)::before" in head
    assert "The lab has stopped" in head and "<span class='rl-state'>" in head
