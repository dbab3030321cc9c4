"""The tracking step's guarantees under every way the real ConversationRelay may behave.

Each SimulatedCall variant (TwilioBehaviour) speaks to a real relay over a real socket:
what the caller heard is reported as the whole played prefix, the current sentence or
the current clause; numbers as written or as spoken; speech in sentence chunks or word
by word; with or without Twilio's info frames; with partial prompts; with speech-only
interrupts, reported input, preemptible speech and a welcome greeting. Under all of them
the relay sends nothing after it reads the interrupt and stores exactly the heard words.
"""

import itertools

import pytest
from conftest import FAST, assert_valid_history, frame_log

from relaylab.caller import TwilioBehaviour
from relaylab.lab import Lab

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
    lab = Lab("tracking", offline=True, **FAST)
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
    assert frames.out_after('"interrupt"') == []
    history = call.conversation
    assert history[-1] == {"role": "assistant", "content": reply.heard}
    assert_valid_history(history)
    assert call.invalid == []
    call.hang_up()


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
