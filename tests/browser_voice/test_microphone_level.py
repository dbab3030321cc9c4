"""Barge-in from the microphone's level, with Chromium's fake capture device playing a WAV.

Speech recognition is missing here (as in Firefox), so only the level can tell that the
caller started talking: the WAV is silent for a while, then voice-like and loud.
"""

from __future__ import annotations

import json
import math
import struct
import wave

import pytest

from .voice_pages import (
    CHROMIUM,
    CHROMIUM_ARGS,
    STAND_INS,
    PageServer,
    cut_reply,
    dial_without_recogniser,
    received,
    skip_without_browser,
    spoken_words,
    wait_for,
)

RATE = 16_000
QUIET_SECONDS = 3.0
LOUD_SECONDS = 2.0


def _voice_like_wav(path) -> None:
    """Silence, then a 150 Hz buzz with harmonics, its loudness swinging at 4 Hz."""
    frames = bytearray()
    for n in range(int(RATE * (QUIET_SECONDS + LOUD_SECONDS))):
        t = n / RATE
        value = 0.0
        if t >= QUIET_SECONDS:
            buzz = sum(math.sin(2 * math.pi * 150 * k * t) / k for k in range(1, 6))
            value = 0.25 * buzz * (0.6 + 0.4 * math.sin(2 * math.pi * 4 * t))
        frames += struct.pack("<h", int(max(-1.0, min(1.0, value)) * 32767))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(bytes(frames))


@pytest.fixture
def microphone_browser(tmp_path):
    skip_without_browser()
    from playwright.sync_api import sync_playwright

    wav = tmp_path / "voice.wav"
    _voice_like_wav(wav)
    args = [
        *CHROMIUM_ARGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield browser
        browser.close()


def test_the_microphone_level_cuts_claude_off(make_lab, microphone_browser):
    lab = make_lab(twiml_options={"welcome_greeting": None})
    server = PageServer(f"{lab.http_url}/twiml", None, None)
    try:
        context = microphone_browser.new_context(permissions=["microphone"])
        page = context.new_page()
        config = {"msPerWord": 150, "recognition": "missing", "microphone": True}
        page.add_init_script(script=f"window.__speechConfig = {json.dumps(config)};")
        page.add_init_script(path=str(STAND_INS))
        page.goto(server.url)
        page.wait_for_function("window.phone !== undefined")
        call_sid = dial_without_recogniser(page)
        page.wait_for_function("window.phone.el.dataset.level === 'on'")
        page.fill(".rlv-text", "Tell me about dogs")
        page.press(".rlv-text", "Enter")
        page.wait_for_function("window.__tts.log.length >= 3", timeout=20_000)
        assert not received(lab, call_sid, "interrupt")  # the quiet part trips nothing

        interrupt = wait_for(lambda: received(lab, call_sid, "interrupt"), 20, "interrupt")[0]
        sent = cut_reply(page)
        assert interrupt["utteranceUntilInterrupt"].split() == spoken_words(page, sent)
        assert len(spoken_words(page, sent)) >= 5
        assert not page.evaluate("window.speechSynthesis.speaking")
        assert "heard by your voice's level" in page.inner_text(".rlv-turn.rlv-cut .rlv-meta")
        context.close()
    finally:
        server.close()
