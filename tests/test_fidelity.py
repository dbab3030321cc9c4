"""The tracking step's guarantees under every way the real ConversationRelay may behave.

Each SimulatedCall variant (TwilioBehaviour) speaks to a real relay over a real socket:
what the caller heard is reported as the whole played prefix, the current sentence or
the current clause; numbers as written or as spoken; speech in sentence chunks or word
by word; with or without Twilio's info frames; with partial prompts; with speech-only
interrupts, reported input, preemptible speech and a welcome greeting; and with the
interrupted talk cycle ending at the interrupt or staying open until ``last: true``.
Under all of them the relay sends no word after it reads the interrupt, closes the cut
talk cycle with exactly one empty ``last: true``, and stores exactly the heard words.
"""

import itertools

import pytest

from conftest import FAST, assert_valid_history, frame_log
from relaylab.core.protocol import CLOSE_TALK_CYCLE, words_and_closes
from relaylab.notebook.caller import TwilioBehaviour
from relaylab.notebook.lab import Lab

TEN_THINGS = "Name ten things that happened in 1999"

VARIANTS = [
    TwilioBehaviour(utterance=utterance, tts_normalise=tts, chunking=chunking)
    for utterance, tts, chunking in itertools.product(
        ["prefix", "sentence", "clause"], [False, True], ["sentence", "word"]
    )
] + [
    TwilioBehaviour(speaker_events=True, tokens_played=True),
    TwilioBehaviour(utterance="clause", tts_normalise=True, tokens_played=True),
    TwilioBehaviour(utterance="clause", tokens_played="cumulative", chunking="clause"),
    TwilioBehaviour(partial_prompts=True),
    TwilioBehaviour(duration_as_string=True, utterance="sentence"),
    # Settings under which the caller's speech still interrupts (tests/test_interruptible.py
    # covers the ones under which it does not).
    TwilioBehaviour(interruptible="speech", report_input_during_agent_speech="any"),
    TwilioBehaviour(preemptible=True, welcome_greeting="Hello, you are through to the lab."),
    # The 2026 turn settings (speech that interrupts here is long enough).
    TwilioBehaviour(interrupt_sensitivity="medium", ignore_backchannel=True),
    TwilioBehaviour(partial_prompts=True, speech_timeout=1000, turn_detection="semantic"),
    # The interrupted talk cycle stays open until the relay's last:true (PROTOCOL.md 4).
    TwilioBehaviour(interrupted_cycle="open_until_last"),
    TwilioBehaviour(interrupted_cycle="open_until_last", utterance="clause", chunking="word"),
    TwilioBehaviour(interrupted_cycle="open_until_last", speaker_events=True, tokens_played=True),
    TwilioBehaviour(
        interrupted_cycle="open_until_last",
        preemptible=True,
        welcome_greeting="Hello, you are through to the lab.",
    ),
]


def describe(twilio):
    return (
        "-".join(
            f"{name}={value}"
            for name, value in vars(twilio).items()
            if value != getattr(TwilioBehaviour(), name)
        )
        or "defaults"
    )


@pytest.fixture(scope="module")
def tracking_lab():
    # Half FAST's token rate: the reply (~120 tokens) must still be streaming when a caller
    # on a loaded machine has spoken 14 words; the interrupt cancels it, so no time is lost.
    # The caller's voice at 8x (22 words a second) still hears slower than tokens arrive.
    lab = Lab("tracking", offline=True, **{**FAST, "tokens_per_second": 50.0, "clock_speed": 8.0})
    yield lab
    lab.stop()


@pytest.mark.parametrize("twilio", VARIANTS, ids=describe)
@pytest.mark.parametrize("words", [7, 14])
def test_interrupt_guarantees_hold_under_every_variant(tracking_lab, twilio, words):
    lab = tracking_lab
    call = lab.call(twilio=twilio)
    frames = frame_log(lab, call)
    reply = call.say(TEN_THINGS, interrupt_after_words=words)
    assert reply.interrupted and not reply.complete, "the interrupt should land mid-stream"
    call.listen(0.2)
    after = frames.out_after('"interrupt"')
    assert words_and_closes(after) == ([], 1), f"after the interrupt the relay sent {after}"
    # Words in flight when the interrupt went out may still reach the caller's side.
    assert words_and_closes(reply.late)[1] == 1, "the caller's side saw the cycle closed"
    history = call.conversation
    assert history[-1] == {"role": "assistant", "content": reply.heard}
    assert_valid_history(history)
    assert call.invalid == []
    call.hang_up()


@pytest.mark.parametrize("cycle", ["ends", "open_until_last"])
@pytest.mark.parametrize("tokens_per_second", [100.0, 5000.0], ids=["mid-stream", "all-sent"])
def test_after_an_interrupt_the_next_reply_is_heard_whole(make_lab, cycle, tokens_per_second):
    lab = make_lab("tracking", tokens_per_second=tokens_per_second)
    call = lab.call(twilio=TwilioBehaviour(interrupted_cycle=cycle))
    frames = frame_log(lab, call)
    cut = call.say(TEN_THINGS, interrupt_after_words=6, talk_over="How far did you get?")
    assert cut.interrupted
    answer = call.wait_for_reply()
    assert answer.prompt == "How far did you get?" and answer.complete
    assert answer.text.strip() and answer.heard == answer.text.strip()
    assert words_and_closes(cut.late)[1] == 1
    assert call.conversation[-1] == {"role": "assistant", "content": answer.heard}
    interrupt_at = next(i for i, (d, f) in enumerate(frames) if d == "in" and '"interrupt"' in f)
    closes = [i for i, (d, f) in enumerate(frames) if d == "out" and f == CLOSE_TALK_CYCLE]
    assert len([i for i in closes if i > interrupt_at]) == 2, "the cut cycle's, the answer's"
    call.hang_up()


def test_a_relay_that_never_closes_the_cut_cycle_loses_the_next_reply(make_lab):
    """The streaming step (the seed's step 2) ignores interrupts. Under the reading where
    the cut cycle waits for last:true, the next reply's words go with it, unspoken."""
    lab = make_lab("streaming", tokens_per_second=5000.0)
    call = lab.call(twilio=TwilioBehaviour(interrupted_cycle="open_until_last"))
    first = call.say(TEN_THINGS, interrupt_after_words=6)
    assert first.interrupted and first.complete, "all of it was sent before the interrupt"
    with pytest.raises(TimeoutError):
        call.say("How far did you get?", timeout=2)
    words, closes = words_and_closes(first.late)
    assert words and closes == 1, "the answer went to the cut cycle and closed it"
    assert call.replies[-1].text == ""


def test_a_dialled_call_posts_signed_webhooks_and_gets_info_frames(make_lab):
    lab = make_lab(
        "handoff", auth_token="tok-dial", debug_events=True, twiml_options={"dtmf_detection": True}
    )
    call = lab.call(dial=True)
    reply = call.say(TEN_THINGS, interrupt_after_words=9)
    assert reply.interrupted
    session = lab.session_for(call)
    assert session.last_reply.played, "Twilio's tokensPlayed reached the relay"
    assert call.conversation[-1]["content"] == reply.heard
    call.press("0")
    for _ in range(50):  # Twilio requests the action URL once the socket has closed
        if len(call.webhooks) == 2:
            break
        call.listen(0.1)
    assert [(w.method, w.url.rsplit("/", 1)[1], w.status) for w in call.webhooks] == [
        ("POST", "twiml", 200),
        ("POST", "action", 200),
    ]
    assert call.session_status == "ended"
