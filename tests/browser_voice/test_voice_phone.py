"""The voice phone's browser code against a real relay, in headless Chromium.

What is real: Chromium running relaylab/notebook/voice/widget.js, the RelayBridge, the relay
(a Lab with the offline Claude stand-in) and every socket between them. What is
scripted: the speech engines (speech_stand_ins.js), and the anywidget model, which
is a WebSocket to the bridge instead of a kernel comm (see conftest.py).
"""

from __future__ import annotations

import json

import pytest

from relaylab.core import protocol
from relaylab.core.conversation import heard_prefix
from relaylab.relay.step import Step

from .voice_pages import (
    cut_reply,
    dial,
    received,
    session_state,
    spoken_words,
    wait_for,
)


def test_setup_partial_prompts_and_a_spoken_reply(make_lab, phone_page):
    lab = make_lab(twiml_options={"partial_prompts": True, "parameters": {"lesson": "3"}})
    page, _ = phone_page(lab, msPerWord=25)
    call_sid = dial(page)

    setup = wait_for(lambda: received(lab, call_sid, "setup"), what="setup")[0]
    assert setup["callSid"] == call_sid and call_sid.startswith("CA")
    assert (setup["from"], setup["to"]) == ("+15550100", "+15550101")
    assert setup["customParameters"] == {"from_test": "yes", "lesson": "3"}
    # the welcome greeting is spoken by "Twilio" (the page), never sent to the relay
    page.wait_for_function("window.phone.cycle?.greeting && window.phone.cycle.done")
    greeting = page.evaluate("window.phone.config.welcomeGreeting")
    greeting_clauses = page.evaluate("window.__tts.utterances.map(u => u.text)")
    assert greeting.strip() and "".join(greeting_clauses) == greeting
    assert greeting not in json.dumps(session_state(lab, call_sid)[0])

    page.evaluate("window.__mic.say('Tell me about dogs', 30)")
    prompts = wait_for(
        lambda: [p for p in received(lab, call_sid, "prompt") if p["last"]], what="final prompt"
    )
    partials = [p["voicePrompt"] for p in received(lab, call_sid, "prompt") if not p["last"]]
    assert partials == ["Tell", "Tell me", "Tell me about"]
    assert prompts[0]["voicePrompt"] == "Tell me about dogs"

    # the whole reply is spoken, clause by clause, and the relay stores all of it
    page.wait_for_function(
        "window.phone.cycle && !window.phone.cycle.greeting && window.phone.cycle.done",
        timeout=30_000,
    )
    reply = page.evaluate("window.phone.cycle.sent")
    clauses = page.evaluate("window.__tts.utterances.map(u => u.text)")[len(greeting_clauses) :]
    assert len(clauses) > 5 and "".join(clauses) == reply  # clause-sized chunks, in order
    assert all(len(c.split()) <= 20 for c in clauses)
    assert " ".join(spoken_words(page, reply)) == " ".join(reply.split())
    history = wait_for(lambda: session_state(lab, call_sid)[1][-1:], what="history")
    assert history[-1] == {"role": "assistant", "content": reply.strip()}
    assert not received(lab, call_sid, "interrupt")
    assert page.inner_text(".rlv-turn.rlv-agent:last-child .rlv-unheard") == ""


def test_barge_in_stops_speech_and_sends_the_words_spoken(make_lab, phone_page):
    # events on: the phone sends info frames too, as Twilio does
    lab = make_lab(debug_events=True, twiml_options={"welcome_greeting": None})
    page, _ = phone_page(lab, msPerWord=180)  # about 330 words a minute
    call_sid = dial(page)
    page.fill(".rlv-text", "Tell me about dogs")
    page.press(".rlv-text", "Enter")
    page.wait_for_function("window.__tts.log.length >= 6", timeout=20_000)
    page.evaluate("window.__mic.say('What about cats', 60)")
    interrupt = wait_for(lambda: received(lab, call_sid, "interrupt"), what="interrupt")[0]

    # speech stopped at once: the synthesiser was cancelled and speaks no word after it
    assert page.evaluate("window.__tts.cancels.length") >= 1
    assert not page.evaluate("window.speechSynthesis.speaking")
    sent = cut_reply(page)
    words_before = spoken_words(page, sent)
    page.wait_for_timeout(800)
    assert spoken_words(page, sent) == words_before
    cancelled_at = page.evaluate("window.__tts.cancels.at(-1)")
    cut_words = [e for e in page.evaluate("window.__tts.log") if e["text"] in sent]
    assert all(e["at"] <= cancelled_at for e in cut_words)  # (the next reply may speak)

    # the interrupt carries exactly the words the synthesiser began, in the relay's spelling
    utterance = interrupt["utteranceUntilInterrupt"]
    assert utterance.split() == words_before
    assert sent.startswith(utterance) and utterance != sent.strip()
    assert isinstance(interrupt["durationUntilInterruptMs"], int)
    # at least the words spoken, at the stand-in's pace (generous: timers can run late)
    assert interrupt["durationUntilInterruptMs"] >= (len(words_before) - 1) * 180 - 50

    # order on the wire: interrupt before the new prompt; info frames around it
    frames = session_state(lab, call_sid)[0]
    kinds = [(f["type"], f.get("name"), f.get("value")) for f in frames]
    at = kinds.index(("interrupt", None, None))
    assert ("info", "agentSpeaking", "on") in kinds[:at]
    assert ("info", "clientSpeaking", "on") in kinds[:at]
    assert ("info", "agentSpeaking", "off") in kinds[at - 2 : at]
    played = "".join(
        f["value"] for f in frames[:at] if f["type"] == "info" and f["name"] == "tokensPlayed"
    )
    assert played.strip() == utterance
    wait_for(
        lambda: any(
            p["voicePrompt"] == "What about cats" for p in received(lab, call_sid, "prompt")[1:]
        ),
        what="the barge-in prompt",
    )
    assert [f["type"] for f in session_state(lab, call_sid)[0]].index("interrupt") < len(frames)

    # the relay stores exactly what was heard
    history = session_state(lab, call_sid)[1]
    cut = next(t for t in history if t["role"] == "assistant")["content"]
    assert heard_prefix(sent, utterance).strip() == utterance
    # Word for word what was heard. When the voice's tokensPlayed report for the last word
    # came with its comma before the interrupt, the relay keeps the report's spelling.
    assert cut in (utterance, utterance + ",")
    # the widget shows heard and unheard apart
    turn = page.locator(".rlv-turn.rlv-agent.rlv-cut").first
    assert turn.locator(".rlv-heard").inner_text().strip() == utterance
    assert turn.locator(".rlv-unheard").inner_text().strip()
    assert "you cut in after" in turn.locator(".rlv-meta").inner_text()


def test_keypad_and_what_the_relay_sends(make_lab, phone_page):
    beep = []  # the page server's URL, known once the page is open

    async def on_prompt(call, prompt):
        await call.send(protocol.send_digits("12w3"))
        await call.send(protocol.language(tts_language="fr-FR", transcription_language="fr-FR"))
        await call.send(protocol.play(beep[0]))
        await call.send_text("Bonjour, au revoir.", last=True)
        await call.end({"reason": "done"})

    digits = []
    lab = make_lab(
        Step(on_prompt=on_prompt, on_dtmf=lambda call, d: digits.append(d.digit)),
        twiml_options={"dtmf_detection": True, "welcome_greeting": None},
    )
    page, server = phone_page(lab, msPerWord=30)
    beep.append(server.url + "beep.wav")
    call_sid = dial(page)
    page.click(".rlv-key[data-key='5']")
    page.click(".rlv-key[data-key='#']")
    wait_for(lambda: len(received(lab, call_sid, "dtmf")) == 2, what="dtmf")
    assert [d["digit"] for d in received(lab, call_sid, "dtmf")] == ["5", "#"]
    wait_for(lambda: digits == ["5", "#"], what="the on_dtmf hook")

    page.fill(".rlv-text", "Goodbye")
    page.press(".rlv-text", "Enter")
    page.wait_for_function("window.phone.onCall === false", timeout=15_000)
    tones = page.evaluate("window.phone.tones")
    assert [t["digit"] for t in tones] == ["1", "2", "3"]
    assert tones[2]["at"] - tones[1]["at"] >= 0.5  # the w waits half a second
    said = page.evaluate("window.__tts.utterances")
    assert said and all(u["lang"] == "fr-FR" for u in said)
    assert "".join(u["text"] for u in said) == "Bonjour, au revoir."
    assert page.evaluate("window.__played") == beep
    assert page.evaluate("window.phone.recognition.lang") == "fr-FR"
    handoff = json.loads(protocol.end({"reason": "done"}))["handoffData"]
    assert page.inner_text(".rlv-status") == f"The relay ended the call: {handoff}."
    # the phone hung up: the relay saw its socket close
    wait_for(lambda: lab.server.find(call_sid) is None, what="the relay to see the hang-up")


def test_speaker_mode_is_push_to_talk(make_lab, phone_page):
    lab = make_lab(twiml_options={"welcome_greeting": None})
    page, _ = phone_page(lab, mode="speaker", msPerWord=150)
    page.click(".rlv-call")
    page.wait_for_function("window.phone.onCall")
    call_sid = page.evaluate("window.phone.config.callSid")
    assert "push to talk" in page.inner_text(".rlv-mode-note")
    assert not page.evaluate("window.__mic.listening()")  # the speakers cannot cut in

    page.fill(".rlv-text", "Tell me about dogs")
    page.press(".rlv-text", "Enter")
    page.wait_for_function("window.__tts.log.length >= 4", timeout=20_000)
    assert not page.evaluate("window.__mic.startSpeaking()")  # no recogniser running
    assert not received(lab, call_sid, "interrupt")

    talk = page.locator(".rlv-talk")
    talk.dispatch_event("pointerdown")  # holding Talk cuts in
    interrupt = wait_for(lambda: received(lab, call_sid, "interrupt"), what="interrupt")[0]
    sent = cut_reply(page)
    assert interrupt["utteranceUntilInterrupt"].split() == spoken_words(page, sent)
    page.wait_for_function("window.__mic.listening()")
    page.evaluate("window.__mic.say('Cats please', 40)")
    wait_for(
        lambda: any(p["voicePrompt"] == "Cats please" for p in received(lab, call_sid, "prompt")),
        what="prompt",
    )
    talk.dispatch_event("pointerup")
    page.wait_for_function("!window.__mic.listening()")

    page.click(".rlv-mode")  # to headphones: always listening
    page.wait_for_function("window.__mic.listening()")
    assert "barge-in on" in page.inner_text(".rlv-mode-note")


@pytest.mark.parametrize(
    ("recognition", "reason"),
    [("missing", "no speech recognition"), ("denied", "microphone was not allowed")],
)
def test_without_recognition_the_text_box_keeps_working(make_lab, phone_page, recognition, reason):
    lab = make_lab(twiml_options={"welcome_greeting": None})
    page, _ = phone_page(lab, msPerWord=150, recognition=recognition)
    page.click(".rlv-call")
    page.wait_for_function("window.phone.onCall")
    call_sid = page.evaluate("window.phone.config.callSid")
    page.wait_for_selector(".rlv-why:not([hidden])")
    assert reason in page.inner_text(".rlv-why")
    assert page.locator(".rlv-talk").is_disabled()

    page.fill(".rlv-text", "Tell me about dogs")
    page.press(".rlv-text", "Enter")
    page.wait_for_function("window.__tts.log.length >= 3", timeout=20_000)
    page.fill(".rlv-text", "Stop")
    page.press(".rlv-text", "Enter")  # typing over the agent cuts in too
    interrupt = wait_for(lambda: received(lab, call_sid, "interrupt"), what="interrupt")[0]
    assert interrupt["utteranceUntilInterrupt"]
    prompts = [p["voicePrompt"] for p in received(lab, call_sid, "prompt")]
    wait_for(lambda: "Stop" in [p["voicePrompt"] for p in received(lab, call_sid, "prompt")])
    assert prompts[0] == "Tell me about dogs"


def test_the_twiml_decides_what_interrupts_and_replies_wait_for_the_greeting(make_lab, phone_page):
    async def on_setup(call, setup):
        await call.send_text("Welcome aboard.", last=True)

    lab = make_lab(
        Step(on_setup=on_setup, on_prompt=lambda call, prompt: None),
        twiml_options={
            "interruptible": "dtmf",
            "dtmf_detection": True,
            "welcome_greeting": "Hello there, this is a test line.",
        },
    )
    page, _ = phone_page(lab, msPerWord=120)
    call_sid = dial(page)
    page.wait_for_function("window.__tts.utterances.length >= 3", timeout=20_000)
    said = [u["text"] for u in page.evaluate("window.__tts.utterances")]
    assert said == ["Hello there, ", "this is a test line.", "Welcome aboard."]

    lab.use("tracking")
    page.wait_for_function("!window.phone.agentSpeaking")  # else the prompt would be dropped
    page.fill(".rlv-text", "Tell me about dogs")
    page.press(".rlv-text", "Enter")
    page.wait_for_function("window.__tts.log.length >= 16", timeout=20_000)
    # speech may not interrupt here, and by default Twilio does not report it either
    page.evaluate("window.__mic.say('Hey stop', 40)")
    page.wait_for_selector(".rlv-turn.rlv-dropped")
    spoken = page.evaluate("window.__tts.log.length")
    page.wait_for_function(f"window.__tts.log.length > {spoken + 2}")  # still talking
    assert not received(lab, call_sid, "interrupt")
    assert [p["voicePrompt"] for p in received(lab, call_sid, "prompt")] == ["Tell me about dogs"]
    assert page.evaluate("window.__tts.cancels.length") == 0

    page.click(".rlv-key[data-key='0']")  # a key may
    interrupt = wait_for(lambda: received(lab, call_sid, "interrupt"), what="interrupt")[0]
    assert page.evaluate("window.__tts.cancels.length") == 1
    sent = cut_reply(page)
    assert interrupt["utteranceUntilInterrupt"].split() == spoken_words(page, sent)
    kinds = [f["type"] for f in session_state(lab, call_sid)[0]]
    assert kinds[kinds.index("interrupt") + 1] == "dtmf"


def test_a_second_talk_cycle_waits_for_the_first(make_lab, phone_page):
    async def on_prompt(call, prompt):
        await call.send_text("First reply, ", last=False)
        await call.send_text("still the first.", last=True)
        await call.send_text("Second reply.", last=True)

    lab = make_lab(Step(on_prompt=on_prompt), twiml_options={"welcome_greeting": None})
    page, _ = phone_page(lab, msPerWord=60)
    dial(page)
    page.fill(".rlv-text", "Hello")
    page.press(".rlv-text", "Enter")
    page.wait_for_function("window.phone.cycle?.done && !window.phone.waiting.length")
    said = [u["text"] for u in page.evaluate("window.__tts.utterances")]
    assert said == ["First reply, ", "still the first.", "Second reply."]
    turns = page.locator(".rlv-turn.rlv-agent .rlv-heard").all_inner_texts()
    assert turns == ["First reply, still the first.", "Second reply."]


def test_a_voice_without_word_events_gets_an_estimate_and_says_so(make_lab, phone_page):
    lab = make_lab(twiml_options={"welcome_greeting": None})
    page, _ = phone_page(lab, msPerWord=360, boundaries=False)  # the estimate's own pace
    call_sid = dial(page)
    page.fill(".rlv-text", "Tell me about dogs")
    page.press(".rlv-text", "Enter")
    page.wait_for_function("window.__tts.log.length >= 4", timeout=20_000)
    page.evaluate("window.__mic.say('Wait', 40)")
    interrupt = wait_for(lambda: received(lab, call_sid, "interrupt"), what="interrupt")[0]
    sent = cut_reply(page)
    truth = spoken_words(page, sent)
    estimate = interrupt["utteranceUntilInterrupt"].split()
    assert sent.startswith(interrupt["utteranceUntilInterrupt"])
    assert abs(len(estimate) - len(truth)) <= 1, (estimate, truth)
    meta = page.inner_text(".rlv-turn.rlv-cut .rlv-meta")
    assert "no word events" in meta
