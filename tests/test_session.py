"""The session core alone: scripted frames in, frames out and history, no socket."""

import asyncio

import anthropic
import httpx2
import pytest

from conftest import assert_valid_history
from relaylab.core import conversation
from relaylab.core.protocol import Interrupt
from relaylab.core.twilio_frames import dtmf_frame, info_frame, interrupt_frame, prompt_frame
from relaylab.relay import failures
from relaylab.relay.session import Interruption, Limits, ReplyState
from relaylab.relay.step import Step
from relaylab.relay.testing import Pause, ScriptedClaude, WaitFor, run_step

pytestmark = pytest.mark.anyio

DOGS = "Dogs were the first animals people tamed, long before anyone started farming."


def texts(frames):
    return [f for f in frames if f["type"] == "text"]


async def test_streaming_sends_each_token_then_an_empty_last_frame():
    result = await run_step(
        "streaming", [prompt_frame("Tell me about dogs")], claude=ScriptedClaude(DOGS)
    )
    frames = texts(result.frames_out)
    assert "".join(f["token"] for f in frames) == DOGS
    assert frames[-1] == {"type": "text", "token": "", "last": True}
    assert result.history == [
        {"role": "user", "content": "Tell me about dogs"},
        {"role": "assistant", "content": DOGS},
    ]


async def test_basic_sends_one_frame():
    result = await run_step("basic", [prompt_frame("Hi")], claude=ScriptedClaude(DOGS))
    assert texts(result.frames_out) == [{"type": "text", "token": DOGS, "last": True}]


@pytest.mark.parametrize("step", ["tracking", "handoff"])
async def test_no_frame_leaves_after_an_interrupt_is_received(step):
    # Tokens come with no delay at all, so the reply is always ready to send the next
    # one the moment the interrupt arrives: only the session's ordering rule keeps it
    # from going out.
    claude = ScriptedClaude(DOGS)
    result = await run_step(
        step, [prompt_frame("dogs"), WaitFor(4), interrupt_frame("Dogs were the")], claude=claude
    )
    # No word: only the one empty last:true that closes the cut talk cycle.
    assert result.out_after("interrupt") == [{"type": "text", "token": "", "last": True}]
    assert claude.closed_streams == 1
    assert result.history == [
        {"role": "user", "content": "dogs"},
        {"role": "assistant", "content": "Dogs were the"},
    ]


async def test_streaming_step_keeps_talking_over_an_interrupt_like_the_seed():
    result = await run_step(
        "streaming",
        [prompt_frame("dogs"), WaitFor(3), interrupt_frame("Dogs were")],
        claude=ScriptedClaude(DOGS, token_delay=0.01),
    )
    assert texts(result.out_after("interrupt")), "lesson 2's step is not meant to stop"
    assert result.history[-1]["content"] == DOGS  # the whole reply: what lesson 3 fixes


async def test_barge_in_cancels_the_old_reply_before_the_new_one_speaks():
    claude = ScriptedClaude(DOGS, "Sure, cats.")
    result = await run_step(
        "tracking", [prompt_frame("dogs"), WaitFor(3), prompt_frame("cats instead")], claude=claude
    )
    after = texts(_after_second_prompt(result))
    assert "".join(f["token"] for f in after) == "Sure, cats."
    assert_valid_history(result.history)
    assert result.history[-1] == {"role": "assistant", "content": "Sure, cats."}


def _after_second_prompt(result):
    prompts = [i for i, (d, f) in enumerate(result.log) if d == "in" and f.get("type") == "prompt"]
    return [f for d, f in result.log[prompts[1] :] if d == "out"]


async def test_info_tokens_played_is_preferred_over_the_utterance():
    result = await run_step(
        "tracking",
        [
            prompt_frame("dogs"),
            WaitFor(6),
            info_frame("tokensPlayed", "Dogs were the first"),
            interrupt_frame("something that does not line up at all"),
        ],
        claude=ScriptedClaude(DOGS),
    )
    assert result.session.replies[0].heard == "Dogs were the first"
    assert result.history[-1] == {"role": "assistant", "content": "Dogs were the first"}


CATS = "Cats chose people later, and they still keep their own hours."


async def dogs_then_cats(*, before_cats=(), after_cats=(), **options):
    """Two replies, the second asked for once the first was sent in full, with frames
    from Twilio before and after the second prompt (``options`` go to run_step)."""
    first = len(DOGS.split()) + 1
    return await run_step(
        "tracking",
        [
            prompt_frame("dogs"),
            WaitFor(first),
            *before_cats,
            prompt_frame("and cats?"),
            WaitFor(first + len(CATS.split()) + 1),
            *after_cats,
        ],
        claude=ScriptedClaude(DOGS, CATS),
        **options,
    )


async def test_an_interrupt_of_an_older_reply_still_playing_cuts_it_and_not_the_queued_one():
    # Twilio queues a reply behind speech still playing (a prompt reported while the first
    # reply plays on): the interrupt's words are the first reply's, so that one is cut
    # and the second, never played, is dropped.
    result = await dogs_then_cats(after_cats=[interrupt_frame("Dogs were the first animals")])
    old, queued = result.session.replies
    assert old.heard == "Dogs were the first animals" and queued.heard == ""
    assert result.history == [
        {"role": "user", "content": "dogs"},
        {"role": "assistant", "content": "Dogs were the first animals"},
        {"role": "user", "content": "and cats?"},
    ]


REPORTS_SKIPPING_AHEAD = {
    "before_cats": [info_frame("tokensPlayed", "Dogs were the first animals")],
    "after_cats": [
        info_frame("tokensPlayed", " people tamed"),
        info_frame("tokensPlayed", "Cats chose people later,"),
    ],
}


async def test_played_tokens_that_begin_the_newer_reply_cut_the_older_one_off():
    # preemptible: the second reply's speech cut the first off with no interrupt; only
    # Twilio's tokensPlayed reports show where.
    result = await dogs_then_cats(**REPORTS_SKIPPING_AHEAD, preemptible=True)
    old, new = result.session.replies
    assert old.cut_off and old.heard == "Dogs were the first animals people tamed"
    assert new.played == "Cats chose people later," and new.heard is None
    assert result.history == [
        {"role": "user", "content": "dogs"},
        {"role": "assistant", "content": "Dogs were the first animals people tamed"},
        {"role": "user", "content": "and cats?"},
        {"role": "assistant", "content": CATS},
    ]


async def test_a_text_frame_of_its_own_preemptible_makes_the_call_preemptible():
    async def on_prompt(call, prompt):
        await call.send_text("Hold on.", last=True, preemptible=True)

    result = await run_step(Step(on_prompt=on_prompt), [prompt_frame("Hi")])
    assert result.session.preemptible
    assert result.frames_out[-1] == {
        "type": "text",
        "token": "Hold on.",
        "last": True,
        "preemptible": True,
    }


async def test_without_preemptible_a_report_that_skips_ahead_cuts_nothing():
    # Nothing can cut a reply off, so Twilio left some of it unreported: it all played.
    result = await dogs_then_cats(**REPORTS_SKIPPING_AHEAD)
    old, new = result.session.replies
    assert not old.cut_off and old.heard is None and old.played == old.sent
    assert new.played == "Cats chose people later,"
    assert result.history[1] == {"role": "assistant", "content": DOGS}


@pytest.mark.parametrize("reports", [True, False], ids=["tokens-played", "no-reports"])
async def test_an_interrupt_with_no_words_cuts_the_reply_the_played_tokens_say_is_playing(
    reports,
):
    played = [info_frame("tokensPlayed", "Dogs were the first")] if reports else []
    result = await dogs_then_cats(before_cats=played, after_cats=[interrupt_frame("", 900)])
    old, queued = result.session.replies
    if reports:
        assert old.heard == "Dogs were the first" and queued.heard == ""
        assert result.history == [
            {"role": "user", "content": "dogs"},
            {"role": "assistant", "content": "Dogs were the first"},
            {"role": "user", "content": "and cats?"},
        ]
    else:  # nothing says the older reply still plays: the newest one is taken as cut
        assert old.heard is None and queued.heard is not None
        assert result.history[1] == {"role": "assistant", "content": DOGS}


async def test_a_report_while_the_next_reply_has_no_words_yet_does_not_skip_it():
    # A report comes in while Claude has not sent a word of the next reply (here one that
    # matches no reply, as the welcome greeting's would): that reply may still play.
    result = await run_step(
        "tracking",
        [
            prompt_frame("dogs"),
            WaitFor(len(DOGS.split()) + 1),
            info_frame("tokensPlayed", DOGS),
            prompt_frame("and cats?"),
            info_frame("tokensPlayed", "Welcome to the relay lab."),
            Pause(0.3),
            info_frame("tokensPlayed", "Cats chose people later,"),
        ],
        claude=ScriptedClaude(DOGS, CATS, first_token_delay=0.1),
    )
    old, new = result.session.replies
    assert old.played == DOGS and not old.cut_off
    assert new.played == "Cats chose people later,"


async def test_an_older_reply_that_had_time_to_finish_playing_is_not_taken_for_the_cut_one():
    # "Yes, dogs." takes about a second to say, so a second later it is over: an interrupt
    # whose words only it holds still belongs to the reply playing now.
    result = await run_step(
        "tracking",
        [
            prompt_frame("dogs?"),
            WaitFor(3),
            Pause(1.2),
            prompt_frame("and cats?"),
            WaitFor(3 + len(CATS.split()) + 1),
            interrupt_frame("yes dogs"),
        ],
        claude=ScriptedClaude("Yes, dogs.", CATS),
    )
    old, latest = result.session.replies
    assert old.heard is None and latest.heard
    assert result.history[1] == {"role": "assistant", "content": "Yes, dogs."}


async def test_an_interrupt_of_the_welcome_greeting_keeps_no_word_of_the_reply_behind_it():
    greeting = "Welcome to the relay lab. Ask me anything you like."
    result = await run_step(
        "tracking",
        [prompt_frame("dogs"), WaitFor(len(DOGS.split()) + 1), interrupt_frame("Welcome to the")],
        claude=ScriptedClaude(DOGS),
        greeting=greeting,
    )
    assert result.session.replies[0].heard == ""
    assert result.history == [{"role": "user", "content": "dogs"}]


async def test_partial_prompts_are_not_answered():
    claude = ScriptedClaude(DOGS)
    result = await run_step(
        "tracking",
        [prompt_frame("Tell me", last=False), prompt_frame("Tell me about dogs")],
        claude=claude,
    )
    assert len(claude.requests) == 1
    assert result.history[0] == {"role": "user", "content": "Tell me about dogs"}


@pytest.mark.parametrize(
    "error",
    [
        anthropic.InternalServerError(
            "boom",
            response=httpx2.Response(500, request=httpx2.Request("POST", "http://x")),
            body=None,
        ),
        httpx2.RemoteProtocolError("peer closed connection"),
    ],
    ids=["http-500", "stream-cut"],
)
async def test_a_model_error_is_an_apology_and_the_call_goes_on(error):
    claude = ScriptedClaude(error, "Fine now.")
    result = await run_step(
        "tracking", [prompt_frame("dogs"), Pause(0.05), prompt_frame("again")], claude=claude
    )
    spoken = "".join(f["token"] for f in texts(result.frames_out))
    assert failures.APOLOGY in spoken and spoken.endswith("Fine now.")
    assert_valid_history(result.history)


async def test_a_model_that_never_answers_gets_the_apology_within_the_budget():
    claude = ScriptedClaude(DOGS, first_token_delay=60)
    limits = Limits(first_token_timeout=0.2, stall_timeout=0.2)
    result = await run_step("tracking", [prompt_frame("dogs")], claude=claude, limits=limits)
    frames = texts(result.frames_out)
    assert frames == [{"type": "text", "token": failures.APOLOGY, "last": True}]
    assert result.session.replies[0].state == "failed"
    assert "no first token" in result.session.replies[0].error


async def test_a_stream_that_stalls_mid_reply_gets_the_apology():
    claude = ScriptedClaude(DOGS, token_delay=0.01)
    limits = Limits(first_token_timeout=1.0, stall_timeout=0.3)

    async def stall_after_three_words(call, prompt):
        call.conversation.add_user(prompt.voice_prompt)
        for word in ["One", " two", " three"]:
            await call.send_text(word)
        await asyncio.sleep(60)

    result = await run_step(
        Step(on_prompt=stall_after_three_words),
        [prompt_frame("count")],
        claude=claude,
        limits=limits,
    )
    spoken = "".join(f["token"] for f in texts(result.frames_out))
    # The apology is a sentence of its own, never run on from the cut-off words...
    assert spoken == "One two three... " + failures.APOLOGY
    # ...and never stored as Claude's: the turn is what was said, marked as cut off.
    assert result.history[-1] == {"role": "assistant", "content": "One two three..."}
    assert "mid-reply" in result.session.replies[0].error


async def test_hooks_run_in_order_and_a_failing_hook_does_not_end_the_call(caplog):
    seen = []

    async def on_setup(call, setup):
        await asyncio.sleep(0.05)
        seen.append("setup")

    def on_dtmf(call, dtmf):
        seen.append(dtmf.digit)
        raise RuntimeError("bad handler")

    async def on_prompt(call, prompt):
        seen.append("prompt")
        await call.send_text("ok", last=True)

    step = Step(on_setup=on_setup, on_dtmf=on_dtmf, on_prompt=on_prompt)
    result = await run_step(step, [dtmf_frame("1"), prompt_frame("hi")])
    assert seen == ["setup", "1", "prompt"]
    assert texts(result.frames_out) == [{"type": "text", "token": "ok", "last": True}]
    assert "on_dtmf handler failed" in caplog.text


async def test_bad_frames_are_logged_and_dropped(caplog):
    result = await run_step(
        "tracking",
        ["not json", '{"type": "mystery"}', b"\x00\x01", prompt_frame("dogs")],
        claude=ScriptedClaude("Woof."),
    )
    assert result.history[-1] == {"role": "assistant", "content": "Woof."}
    assert "not valid JSON" in caplog.text


async def test_a_long_call_keeps_its_history_under_the_cap_and_valid(caplog):
    frames = []
    for i in range(10):
        frames += [prompt_frame(f"Question {i}: " + "tell me more " * 4), Pause(0.02)]
    result = await run_step(
        "tracking", frames, claude=ScriptedClaude(DOGS), limits=Limits(history_chars=400)
    )
    assert sum(len(turn["content"]) for turn in result.history) <= 400
    assert_valid_history(result.history)
    assert result.history[-1] == {"role": "assistant", "content": DOGS}
    assert "dropped the" in caplog.text


async def test_an_interrupt_followed_at_once_by_a_prompt_keeps_the_new_reply():
    claude = ScriptedClaude(DOGS, "Sure, cats.")
    result = await run_step(
        "tracking",
        [prompt_frame("dogs"), WaitFor(4), interrupt_frame("Dogs were the"), prompt_frame("cats")],
        claude=claude,
    )
    assert "".join(f["token"] for f in texts(_after_second_prompt(result))) == "Sure, cats."
    assert result.history[-2:] == [
        {"role": "user", "content": "cats"},
        {"role": "assistant", "content": "Sure, cats."},
    ]


# -- what a hook receives: its facts as arguments ------------------------------------------------


def tracking_with(on_interrupt):
    """The tracking step with another on_interrupt."""
    from relaylab.steps import tracking

    return Step(on_prompt=tracking.on_prompt, on_interrupt=on_interrupt, name="tracking")


async def test_on_interrupt_receives_the_reply_it_cut_and_what_was_heard():
    seen = []

    async def on_interrupt(call, interrupt):
        seen.append(interrupt)
        await call.cancel_reply()
        call.conversation.keep_heard(interrupt.heard)

    result = await run_step(
        tracking_with(on_interrupt),
        [prompt_frame("dogs"), WaitFor(6), interrupt_frame("Dogs were the first", 1200)],
        claude=ScriptedClaude(DOGS),
    )
    (interrupt,) = seen
    cut = result.session.replies[0]
    assert isinstance(interrupt, Interruption) and isinstance(interrupt, Interrupt)
    assert interrupt.reply is cut and interrupt.heard == cut.heard == "Dogs were the first"
    # Twilio's own fields are still there, as the first attempt in lesson 3 reads them.
    assert interrupt.utterance_until_interrupt == "Dogs were the first"
    assert interrupt.duration_until_interrupt_ms == 1200
    assert result.history[-1] == {"role": "assistant", "content": "Dogs were the first"}


async def test_an_interrupt_before_any_reply_has_no_reply_and_nothing_heard():
    seen = []
    result = await run_step(
        tracking_with(lambda call, interrupt: seen.append(interrupt)),
        [interrupt_frame("Welcome to the dog")],
        greeting="Welcome to the dog line, ask me anything about dogs at all.",
    )
    assert [(i.reply, i.heard) for i in seen] == [(None, "")]
    assert result.session.replies == []


async def test_a_handler_written_for_call_heard_still_works():
    async def on_interrupt(call, interrupt):
        await call.cancel_reply()
        call.conversation.keep_heard(call.heard)  # before the hook received interrupt.heard

    result = await run_step(
        tracking_with(on_interrupt),
        [prompt_frame("dogs"), WaitFor(4), interrupt_frame("Dogs were the")],
        claude=ScriptedClaude(DOGS),
    )
    assert result.history[-1] == {"role": "assistant", "content": "Dogs were the"}


async def test_each_on_prompt_call_is_bound_to_its_own_reply():
    replies = []

    async def on_prompt(call, prompt):
        replies.append((prompt.voice_prompt, call.reply))
        await call.send_text(prompt.voice_prompt, last=True)

    result = await run_step(
        Step(on_prompt=on_prompt), [prompt_frame("one"), prompt_frame("two")], claude=None
    )
    first, second = result.session.replies
    assert replies == [("one", first), ("two", second)]
    assert (first.sent, second.sent) == ("one", "two")


async def test_a_hooks_call_is_the_session_for_a_steps_own_state():
    calls = []
    result = await run_step(
        Step(on_setup=lambda call, setup: calls.append(call), on_dtmf=lambda c, d: calls.append(c)),
        [dtmf_frame("1")],
    )
    session = result.session
    assert all(call == session and call.session is session for call in calls)
    assert len({session, *calls}) == 1  # one key in a dict, whichever hook wrote it


async def test_an_interrupt_is_lined_up_with_the_reply_once(monkeypatch):
    alignments = []
    align = conversation.align_heard

    def counted(*args, **kwargs):
        alignments.append(args[:2])
        return align(*args, **kwargs)

    monkeypatch.setattr(conversation, "align_heard", counted)
    result = await run_step(
        "tracking",
        [prompt_frame("dogs"), WaitFor(6), interrupt_frame("Dogs were the first")],
        claude=ScriptedClaude(DOGS),
    )
    assert result.history[-1] == {"role": "assistant", "content": "Dogs were the first"}
    assert alignments == [(result.session.replies[0].sent, "Dogs were the first")]


def test_reply_states_are_the_values_a_reply_takes():
    assert [str(state) for state in ReplyState] == [
        "running",
        "done",
        "cancelled",
        "timed_out",
        "failed",
    ]
    assert ReplyState.DONE == "done"  # recordings and the call store keep the plain value


async def test_an_interrupt_with_no_words_keeps_no_assistant_turn_and_the_next_prompt_joins():
    claude = ScriptedClaude(DOGS, "Hello again.")
    cut = [prompt_frame("Tell me about dogs"), WaitFor(2), interrupt_frame("", 0)]
    result = await run_step("tracking", cut, claude=claude)
    assert result.history == [{"role": "user", "content": "Tell me about dogs"}]
    result = await run_step("tracking", [*cut, prompt_frame("Hello")], claude=claude)
    assert result.history == [
        {"role": "user", "content": "Tell me about dogs Hello"},
        {"role": "assistant", "content": "Hello again."},
    ]


async def test_streaming_step_answers_a_barge_in_without_cancelling_like_the_seed():
    claude = ScriptedClaude(DOGS, "Sure, cats.", token_delay=0.01)
    result = await run_step(
        "streaming", [prompt_frame("dogs"), WaitFor(2), prompt_frame("cats instead")], claude=claude
    )
    finals = [f for f in texts(result.frames_out) if f["last"]]
    assert len(finals) == 2, "both replies ran to the end, interleaved"
    assert {"role": "assistant", "content": DOGS} in result.history  # sent and stored whole


async def test_two_prompts_back_to_back_keep_the_newest_reply_and_both_user_turns():
    claude = ScriptedClaude(DOGS, "Sure, dogs.", first_token_delay=0.05)
    frames = [prompt_frame("Name ten things"), WaitFor(2)]
    frames += [prompt_frame("Tell me"), prompt_frame("about dogs")]
    result = await run_step("tracking", frames, claude=claude)
    states = [(r.prompt, r.state) for r in result.session.replies]
    assert states == [
        ("Name ten things", "cancelled"),
        ("Tell me", "cancelled"),
        ("about dogs", "done"),
    ]
    assert [t["role"] for t in result.history] == ["user", "assistant", "user", "assistant"]
    assert result.history[2:] == [
        {"role": "user", "content": "Tell me about dogs"},
        {"role": "assistant", "content": "Sure, dogs."},
    ]
    assert_valid_history(result.history)
