"""Lesson 4's switchboard step through a dialled call: play, sendDigits, language, end."""

from conftest import assert_valid_history
from relaylab.steps import switchboard


def dialled(make_lab):
    lab = make_lab("switchboard", twiml_options={"dtmf_detection": True}, dial_number="+15550199")
    return lab, lab.call(dial=True)


def test_key_9_plays_the_hold_tune_and_an_extension_sends_its_digits(make_lab):
    _, call = dialled(make_lab)
    call.press("9")
    call.listen(0.3)
    assert call.played == [switchboard.HOLD_TUNE]
    reply = call.say("Put me through to extension 204 please")
    call.listen(0.3)
    assert "extension" in reply.text.lower()
    assert call.digits_played == ["204"]
    assert_valid_history(call.conversation)


def test_spanish_switches_the_language_of_the_voice_and_the_next_prompt(make_lab):
    lab, call = dialled(make_lab)
    reply = call.say("Can we talk en español?")
    assert reply.text.strip() == switchboard.SPANISH_LINE
    assert call.tts_language == switchboard.SPANISH
    call.say("Hola")
    assert call.sent[-1][1]["lang"] == switchboard.SPANISH
    assert switchboard.ANSWER_IN_SPANISH.strip() in lab.offline_claude.requests[-1].body["system"]


def test_asking_for_a_person_ends_the_session_and_the_action_url_dials(make_lab):
    _, call = dialled(make_lab)
    call.say("I want to talk to a real person")
    for _ in range(50):
        if call.action_twiml:
            break
        call.listen(0.1)
    assert call.session_status == "ended" and '"reason": "human"' in call.handoff_data
    assert "<Dial>+15550199</Dial>" in call.action_twiml


def test_noise_changes_a_live_setting_with_config_and_twilio_confirms_it(make_lab):
    lab, call = dialled(make_lab)
    reply = call.say("It's really noisy here")
    assert reply.text.strip() == switchboard.NOISY_LINE
    call.listen(0.3)
    assert call.twilio.interruptible == "dtmf"
    assert lab.session_for(call).settings == {"interruptible": "dtmf"}, "configUpdated arrived"
    talked = call.say("Tell me about dogs", interrupt_after_words=4, talk_over="Hmm")
    assert talked.talked_over and not talked.interrupted, "noise no longer cuts Claude off"
    call.wait_for_reply()
    keyed = call.say("Tell me about cats", interrupt_after_words=4, press="5")
    assert keyed.interrupted, "a key press still does"
    call.say("It's quiet now")
    call.listen(0.3)
    assert call.twilio.interruptible == "any"
    assert lab.session_for(call).settings == {"interruptible": "any"}
    assert_valid_history(call.conversation)
