"""The latency waterfall (relaylab.notebook.timeline.waterfall): every leg of a turn, in speech
time, from a simulated call against the offline stand-in."""

import pytest

from relaylab.notebook.timeline import LEGS, TTS_START_MS, waterfall
from relaylab.simulation import TwilioBehaviour

SPEED = 4.0
CALLER = TwilioBehaviour(partial_prompts=True, final_partial=True, speech_timeout=700)


def one_turn(make_lab, **options):
    lab = make_lab(
        "tracking",
        first_token_delay=0.4 / SPEED,
        tokens_per_second=200 * SPEED,
        clock_speed=SPEED,
        speculate_after_ms=150 / SPEED,
        **options,
    )
    call = lab.call(twilio=CALLER)
    reply = call.say("Tell me about dogs")
    fall = waterfall(call, lab)
    call.hang_up()
    return fall, reply


def test_every_leg_in_order_with_the_models_stated(make_lab):
    fall, reply = one_turn(make_lab)
    (turn,) = fall
    at = turn.at
    assert list(at) == list(LEGS), "every leg is there, in order"
    assert at["last_word"] == 0
    assert at["final_prompt"] == pytest.approx(700, abs=120), "the endpointing (speechTimeout)"
    assert at["final_prompt"] <= at["relay_read"] <= at["model_request"]
    assert turn.leg("model_request", "first_token") == pytest.approx(400, abs=120)
    assert turn.leg("first_frame", "first_audio") >= TTS_START_MS - 5
    spoken_ms = len(reply.text.split()) * 60_000 / 165
    assert turn.leg("first_audio", "last_audio") == pytest.approx(spoken_ms, rel=0.05)
    assert turn.perceived_ms == at["first_audio"] == fall.median_perceived_ms()
    assert fall.rows()[0]["perceived_ms"] == round(turn.perceived_ms, 1)
    assert "median perceived latency" in str(fall)


def test_with_speculation_the_request_leg_moves_before_the_final_prompt(make_lab):
    plain, _ = one_turn(make_lab)
    early, _ = one_turn(make_lab, speculate=True)
    assert early[0].at["model_request"] < early[0].at["final_prompt"]
    assert early[0].perceived_ms < plain[0].perceived_ms - 200
