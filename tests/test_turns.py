"""Lesson 6's turns step through real sockets, the real SDK and the offline stand-in.

False interruptions resume the cut reply with no new model request (the stand-in's request
log is the proof); a real question after an interrupt is answered; a cut turn carries the
documented mark; two quick prompts become one question; silence gets a re-prompt, then a
goodbye and ``end``. The black-box tests run ``relaylab serve --step turns`` as a separate
process and speak raw ConversationRelay frames to it.
"""

import asyncio
import contextlib
import json
import time

import pytest
from websockets.asyncio.client import connect

from conftest import (
    assert_valid_history,
    frame_log,
    offline_env,
    relaylab_serve,
    stand_in_on_a_thread,
)
from relaylab.core.turn_taking import CUT_MARK, CUT_NOTE, is_backchannel, mark_cut, without_cut_mark
from relaylab.core.twilio_frames import interrupt_frame, setup_frame
from relaylab.notebook.exercises import check, turns_scenarios
from relaylab.offline_claude import REPLIES
from relaylab.relay.step import Step
from relaylab.relay.testing import Pause, WaitFor, run_step
from relaylab.steps import tracking
from relaylab.steps.turns import TurnSettings, turns_step

DOGS = REPLIES["dogs"]
QUICK = {"resume_wait": 0.6, "merge_wait": 0.3, "silence_after": 30.0}


def _requests(lab):
    return list(lab.offline_claude.requests)


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _text_after_interrupt(frames):
    out = frames.out_after('"interrupt"')
    return "".join(f["token"] for f in out if f["type"] == "text")


# -- the pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("said", "lang", "is_one"),
    [
        ("uh-huh", "en-US", True),
        ("Mm-hmm.", "en-US", True),
        ("okay, yeah", "en-GB", True),
        ("Yeah.", "", True),
        ("ajá", "es-ES", True),
        ("yes", "en-US", False),  # an answer, not a backchannel
        ("no", "en-US", False),
        ("okay so what about cats", "en-US", False),
        ("yeah yeah yeah yeah yeah", "en-US", False),  # more than a listener's murmur
        ("", "en-US", False),
        ("uh-huh", "es-ES", False),  # not a Spanish backchannel
    ],
)
def test_a_backchannel_is_only_listener_words_of_the_calls_language(said, lang, is_one):
    assert is_backchannel(said, lang) is is_one


def test_the_cut_mark_is_added_once_and_removed_whole():
    marked = mark_cut("Dogs were the first animals")
    assert marked == "Dogs were the first animals — [interrupted by the caller]"
    assert mark_cut(marked) == marked
    assert without_cut_mark(marked) == "Dogs were the first animals"
    assert CUT_MARK.strip() in CUT_NOTE  # the system prompt names the mark it explains


# -- false interruptions ----------------------------------------------------------------------


def test_uh_huh_after_an_interrupt_resumes_the_reply_with_no_new_model_request(make_lab):
    lab = make_lab(turns_step(**QUICK))
    call = lab.call()
    frames = frame_log(lab, call)
    reply = call.say("Tell me about dogs", interrupt_after_words=8, talk_over="uh-huh")
    assert reply.interrupted
    heard = reply.heard
    assert _wait_for(lambda: call.replies[-1].complete and call.replies[-1].text.strip())
    history = call.conversation
    assert history == [
        {"role": "user", "content": "Tell me about dogs"},
        {"role": "assistant", "content": DOGS},
    ]
    requests = _requests(lab)
    assert len(requests) == 1, [r.body["messages"][-1] for r in requests]
    assert requests[0].outcome == "complete"  # the stream stayed open for the resume
    # The words after the interrupt end with the whole unheard rest, picked up exactly
    # where the caller stopped hearing.
    assert _text_after_interrupt(frames).endswith(DOGS[len(heard) :])
    assert DOGS.startswith(heard) and len(heard.split()) >= 8
    # The cut talk cycle was closed (one empty last:true) before the resumed words.
    closes = [f for f in frames.out_after('"interrupt"') if f["type"] == "text" and f["last"]]
    assert closes[0]["token"] == ""


def test_nothing_after_an_interrupt_resumes_after_the_wait(make_lab):
    lab = make_lab(turns_step(**QUICK))
    call = lab.call()
    frames = frame_log(lab, call)
    reply = call.say("Tell me about dogs", interrupt_after_words=6)
    heard = reply.heard
    assert _wait_for(lambda: len(call.replies) == 2 and call.replies[-1].complete)
    resumed = call.replies[-1]
    assert resumed.prompt == ""  # the relay spoke again unprompted
    assert resumed.text == DOGS[len(heard) :]
    interrupted_at = reply.sent_at + reply.timings["interrupt_ms"] / 1000
    assert resumed.arrivals[0] - interrupted_at >= QUICK["resume_wait"] - 0.05
    assert call.conversation[-1] == {"role": "assistant", "content": DOGS}
    assert len(_requests(lab)) == 1
    assert _text_after_interrupt(frames).endswith(DOGS[len(heard) :])


def test_a_resumed_reply_cut_again_keeps_both_heard_parts_in_one_turn(make_lab):
    lab = make_lab(turns_step(**QUICK))
    call = lab.call()
    first = call.say("Tell me about dogs", interrupt_after_words=6, talk_over="mm-hmm")
    assert _wait_for(lambda: len(call.replies) >= 2 and call.replies[-1].text)
    time.sleep(0.5)  # a few words of the resumed rest are heard (speech runs 4x here)
    again = call.interrupt(talk_over="What about cats?")
    assert again is not None and again.interrupted and again.heard
    call.wait_for_reply()
    history = call.conversation
    assert_valid_history(history)
    stored = history[1]["content"]
    assert stored.endswith(CUT_MARK)
    assert without_cut_mark(stored).split() == f"{first.heard} {again.heard}".rstrip(",.").split()
    assert history[2] == {"role": "user", "content": "What about cats?"}
    assert _wait_for(lambda: len(_requests(lab)) == 2)  # the question is asked


@pytest.mark.parametrize("question", ["What about cats?", "yes"])
def test_a_real_question_after_an_interrupt_is_answered_and_the_cut_is_marked(make_lab, question):
    lab = make_lab(turns_step(**QUICK))
    call = lab.call()
    reply = call.say("Tell me about dogs", interrupt_after_words=8, talk_over=question)
    answer = call.wait_for_reply()
    assert answer.prompt == question and answer.complete
    requests = _requests(lab)
    assert len(requests) == 2
    assert requests[0].outcome == "client_closed"  # closed once the question came
    history = requests[1].body["messages"]
    assert history == [
        {"role": "user", "content": "Tell me about dogs"},
        {"role": "assistant", "content": reply.heard.rstrip(",.") + CUT_MARK},
        {"role": "user", "content": question},
    ]
    assert CUT_NOTE.strip() in requests[1].body["system"]


def test_a_backchannel_after_a_finished_reply_is_an_ordinary_prompt(make_lab):
    lab = make_lab(turns_step(**QUICK))
    call = lab.call()
    call.say("Hello")
    answer = call.say("okay")
    assert answer.text and len(_requests(lab)) == 2
    assert call.conversation[-2] == {"role": "user", "content": "okay"}


def test_the_tracking_step_answers_uh_huh_as_a_question(make_lab):
    """Why lesson 6 exists: lesson 3's step asks Claude about "uh-huh"."""
    lab = make_lab(tracking)
    call = lab.call()
    call.say("Tell me about dogs", interrupt_after_words=8, talk_over="uh-huh")
    call.wait_for_reply()
    requests = _requests(lab)
    assert len(requests) == 2 and requests[1].body["messages"][-1]["content"] == "uh-huh"


# -- the black-box contract: `relaylab serve --step turns`, raw frames ------------------------


@pytest.fixture(scope="module")
def model_server():
    with stand_in_on_a_thread(
        "turns-model-server", first_token_delay=0.05, tokens_per_second=80
    ) as claude:
        yield claude


@pytest.fixture(scope="module")
def turns_relay(model_server):
    env = offline_env(ANTHROPIC_BASE_URL=model_server.base_url, ANTHROPIC_API_KEY="test-key")
    with relaylab_serve("--step", "turns", env=env, start_timeout=30) as ws_url:
        yield ws_url


def _prompt(text):
    return json.dumps({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True})


async def _read_until(ws, frames, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate(frames):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {frames}"
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
    return frames


def _words(frames):
    return "".join(f.get("token", "") for f in frames).split()


def _black_box_call(ws_url, call_sid, after_interrupt, until=None):
    """Ask about dogs, interrupt after 8 words with those words as heard, do
    ``after_interrupt(ws)``; return the heard words and the text frames sent after the
    interrupt up to the end of the next talk cycle that has words."""

    async def call():
        async with connect(ws_url) as ws:
            await ws.send(setup_frame(call_sid, session_id="VX" + call_sid))
            await ws.send(_prompt("Tell me about dogs"))
            before = await _read_until(ws, [], lambda f: len(_words(f)) >= 10)
            heard = " ".join(_words(before)[:8])
            await ws.send(interrupt_frame(heard))
            await after_interrupt(ws)
            after = await _read_until(ws, [], until or _spoke_again)
            return heard, [f for f in after if f["type"] == "text"]

    return asyncio.run(call())


def _spoke_again(frames):
    """Has a talk cycle with words closed after the first closing frame?"""
    texts = [f for f in frames if f["type"] == "text"]
    closes = [i for i, f in enumerate(texts) if f["last"]]
    return len(closes) >= 2 and "".join(f["token"] for f in texts[closes[0] : closes[-1]]).strip()


def _spoken_after_close(texts):
    """The words of the talk cycle that follows the first closing frame after the interrupt."""
    first_close = next(i for i, f in enumerate(texts) if f["last"])
    rest = texts[first_close + 1 :]
    end = next(i for i, f in enumerate(rest) if f["last"])
    return "".join(f["token"] for f in rest[: end + 1])


def test_black_box_uh_huh_resumes_after_the_heard_words_with_no_model_request(
    turns_relay, model_server
):
    before = len(model_server.requests)

    async def uh_huh(ws):
        await asyncio.sleep(0.5)
        await ws.send(_prompt("uh-huh"))

    heard, texts = _black_box_call(turns_relay, "CA_turns_uhhuh", uh_huh)
    assert heard == "Dogs were the first animals people tamed, more"
    assert _spoken_after_close(texts) == DOGS[len(heard) :]
    requests = model_server.requests[before:]
    assert len(requests) == 1, [r.body["messages"] for r in requests]
    assert requests[0].outcome == "complete"


def test_black_box_an_empty_interrupt_and_no_prompt_resumes_the_whole_reply(
    turns_relay, model_server
):
    before = len(model_server.requests)

    async def call():
        async with connect(turns_relay) as ws:
            await ws.send(setup_frame("CA_turns_empty", session_id="VX_empty"))
            await ws.send(_prompt("Tell me about dogs"))
            await _read_until(ws, [], lambda f: len(_words(f)) >= 10)
            sent_at = time.monotonic()  # before: the relay may read it before send returns
            await ws.send(interrupt_frame(""))
            after = await _read_until(ws, [], _spoke_again)
            return sent_at, after

    sent_at, after = asyncio.run(call())
    texts = [f for f in after if f["type"] == "text"]
    assert _spoken_after_close(texts) == DOGS  # nothing was heard: all of it, once
    assert len(model_server.requests[before:]) == 1
    assert time.monotonic() - sent_at >= TurnSettings().resume_wait


def test_black_box_a_real_question_after_an_interrupt_gets_a_model_request(
    turns_relay, model_server
):
    before = len(model_server.requests)

    async def question(ws):
        await asyncio.sleep(0.3)
        await ws.send(_prompt("What about cats?"))

    def answered(frames):  # (a relay that closes the cut cycle sends a last:true first)
        asked = model_server.requests[before:][1:]
        text = "".join(f.get("token", "") for f in frames)
        done = asked and frames[-1].get("last") and asked[0].reply
        return bool(done and text.endswith(asked[0].reply))

    heard, texts = _black_box_call(turns_relay, "CA_turns_question", question, answered)
    first, second = model_server.requests[before:]
    assert first.outcome == "client_closed"
    assert second.body["messages"] == [
        {"role": "user", "content": "Tell me about dogs"},
        {"role": "assistant", "content": heard.rstrip(",.") + CUT_MARK},
        {"role": "user", "content": "What about cats?"},
    ]
    assert "".join(f["token"] for f in texts).endswith(second.reply)


def test_how_far_did_you_get_after_a_cut_quotes_the_heard_words_not_the_mark(make_lab):
    lab = make_lab(turns_step(**QUICK))
    call = lab.call()
    reply = call.say(
        "Tell me about dogs", interrupt_after_words=8, talk_over="How far did you get?"
    )
    answer = call.wait_for_reply()
    assert "You stopped me just after I said" in answer.text  # (after late frames, if any)
    assert reply.heard.rstrip(",.").split()[-1] in answer.text
    assert "interrupted by the caller" not in answer.text
    asked = _requests(lab)[-1].body
    assert asked["messages"][1]["content"].endswith(CUT_MARK)
    assert asked["system"].endswith(CUT_NOTE)


# -- half-finished turns ----------------------------------------------------------------------


def _two_quick_prompts(ws_url, first, second, gap):
    async def call():
        async with connect(ws_url) as ws:
            await ws.send(setup_frame("CA_two_prompts", session_id="VX_two"))
            await ws.send(_prompt(first))
            early = []
            with contextlib.suppress(TimeoutError):
                while True:  # what the relay says before the caller goes on
                    early.append(json.loads(await asyncio.wait_for(ws.recv(), gap)))
            await ws.send(_prompt(second))
            done = await _read_until(ws, [], lambda f: bool(f and f[-1].get("last") and _words(f)))
            return early, done

    return asyncio.run(call())


def test_two_prompts_in_quick_succession_become_one_question(make_lab):
    lab = make_lab(turns_step(**QUICK))
    early, frames = _two_quick_prompts(lab.ws_url, "Tell me about", "dogs please", gap=0.15)
    assert early == []  # no word of an answer to half a sentence
    first, second = _requests(lab)
    assert first.outcome == "client_closed"
    assert second.body["messages"] == [{"role": "user", "content": "Tell me about dogs please"}]
    assert "".join(f["token"] for f in frames) == DOGS


def test_the_tracking_step_answers_half_a_sentence(make_lab):
    lab = make_lab(tracking)
    early, _ = _two_quick_prompts(lab.ws_url, "Tell me about", "dogs please", gap=0.15)
    assert _words(early)  # it started answering "Tell me about"
    messages = _requests(lab)[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]


# -- silence ----------------------------------------------------------------------------------


def test_silence_gets_a_reprompt_then_a_goodbye_and_end(make_lab):
    # The simulated voice speaks 4x faster than a real one here; so does the step's estimate.
    lab = make_lab(turns_step(silence_after=0.4, words_per_minute=4 * 165.0))
    call = lab.call()
    call.say("Hello")
    assert _wait_for(lambda: call.handoff_data is not None, timeout=20)
    said = [r.text for r in call.replies]
    settings = TurnSettings()
    assert said[1:] == [settings.reprompt, settings.goodbye]
    assert json.loads(call.handoff_data) == {"reason": "silence"}
    assert len(_requests(lab)) == 1


def test_an_answer_to_the_reprompt_keeps_the_call_going(make_lab):
    lab = make_lab(turns_step(silence_after=0.4, words_per_minute=4 * 165.0))
    call = lab.call()
    call.say("Hello")
    assert _wait_for(lambda: call.replies[-1].text == TurnSettings().reprompt, timeout=20)
    call.say("Tell me about dogs")
    time.sleep(0.3)
    assert call.handoff_data is None and call.connected
    assert [r.text for r in call.replies][-1] == DOGS


# -- the exercise -----------------------------------------------------------------------------

QUICK_CHECK = {"resume_wait": 0.8, "silence_after": 0.8}


# That the reference step passes the exercise is test_exercises.py's (at the lesson's pace).


def test_the_turns_exercise_fails_with_tracking_where_turn_taking_is_missing():
    scenarios = turns_scenarios(**QUICK_CHECK)
    naive = check("turns", tracking, scenarios=scenarios)
    failed = {r.scenario.name for r in naive.results if not r.passed}
    assert failed == {s.name for s in scenarios} - {
        "yes after an interrupt is an answer, not a backchannel"
    }, str(naive)
    text = str(naive)
    assert "Claude was asked about 'uh-huh' alone" in text
    assert "the relay never sent `end`" in text
    assert "before the caller finished the sentence" in text
    assert "add a mark that it was cut" in text


def test_hanging_up_while_a_resume_waits_closes_the_model_stream(make_lab):
    from relaylab.steps import turns

    lab = make_lab(turns_step(**QUICK), tokens_per_second=20.0)
    call = lab.call()
    session = lab.session_for(call)
    call.say("Tell me about dogs", interrupt_after_words=4)
    assert lab.offline_claude.requests[-1].outcome == "pending"  # kept open for a resume
    call.hang_up()
    assert _wait_for(lambda: lab.offline_claude.requests[-1].outcome == "client_closed")
    assert session not in turns._calls


def test_an_empty_prompt_after_an_interrupt_counts_as_nothing_said(make_lab, relay_logs):
    lab = make_lab(turns_step(**QUICK))

    async def call():
        async with connect(lab.ws_url) as ws:
            await ws.send(setup_frame("CA_empty_prompt", session_id="VX_empty_prompt"))
            await ws.send(_prompt("Tell me about dogs"))
            before = await _read_until(ws, [], lambda f: len(_words(f)) >= 10)
            heard = " ".join(_words(before)[:5])
            await ws.send(interrupt_frame(heard, 1200))
            await ws.send(_prompt("   "))
            return heard, await _read_until(ws, [], _spoke_again)

    heard, after = asyncio.run(call())
    texts = [f for f in after if f["type"] == "text"]
    assert _spoken_after_close(texts) == DOGS[len(heard) :]
    assert len(_requests(lab)) == 1
    assert "ignored a prompt with no words in it" in relay_logs.text


@pytest.mark.anyio
async def test_start_reply_runs_an_unprompted_reply_that_an_interrupt_stops():
    """CallSession.start_reply, the session core alone: the reply is a reply like any other."""

    async def speak(call):
        for word in ["Are", " you", " still", " there?"] * 10:
            await call.send_text(word)
            await asyncio.sleep(0.01)
        await call.send_text("", last=True)

    async def on_setup(call, setup):
        call.start_reply(speak)

    async def on_interrupt(call, interrupt):
        await call.cancel_reply()

    step = Step(on_setup=on_setup, on_interrupt=on_interrupt)
    result = await run_step(step, [WaitFor(4), interrupt_frame("Are you still"), Pause(0.1)])
    reply = result.session.replies[0]
    assert (reply.prompt, reply.state, reply.heard) == ("", "cancelled", "Are you still")
    after = result.log[[d for d, _ in result.log].index("in", 1) + 1 :]
    assert not [f for d, f in after if d == "out" and f.get("token")]


# -- every way a reply ends (relaylab.core.endings), as the tracking step does ------------------


def test_the_turns_step_ends_replies_as_relaylab_endings_says(make_lab):
    from relaylab.core import endings

    lab = make_lab(turns_step(**QUICK))
    claude = lab.offline_claude
    call = lab.call()

    claude.fail_next("empty")
    assert call.say("Tell me about dogs").text == endings.EMPTY_LINE
    assert [t["role"] for t in call.conversation] == ["user"]  # nothing of Claude's stored

    call.say("Hello")
    before = call.conversation
    claude.fail_next("refusal")
    refused = call.say("Tell me about dogs")
    assert refused.complete and refused.text.endswith(endings.REFUSAL_LINE)
    assert call.conversation == before  # the refused turn and its prompt are out

    claude.fail_next("max_tokens")
    cut = call.say("Tell me about dogs")
    assert cut.complete and cut.text.endswith(endings.WRAP_UP_LINE)
    stored = call.conversation[-1]["content"]
    assert stored.endswith(endings.CUT_MARK) and endings.WRAP_UP_LINE not in stored

    claude.fail_next("pause_turn")
    paused = call.say("Tell me about dogs")
    first, second = claude.requests[-2:]
    assert (first.stop_reason, second.stop_reason) == ("pause_turn", "end_turn")
    assert paused.complete and paused.text == DOGS
    assert call.conversation[-1] == {"role": "assistant", "content": DOGS}
    assert_valid_history(call.conversation)
