"""RelayBridge without a browser: dialling like Twilio (signed), and bad browser input."""

from __future__ import annotations

import asyncio
import json
import logging

from relaylab.core import protocol, twilio_frames
from relaylab.notebook.lab import Lab
from relaylab.notebook.voice.bridge import CallIdentity, RelayBridge, browser_config


def _lab(**options):
    return Lab("tracking", offline=True, first_token_delay=0.05, tokens_per_second=200.0, **options)


async def _until(check, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


def test_dials_a_signing_relay_and_carries_frames_both_ways():
    lab = _lab(auth_token="test-token-not-secret", twiml_options={"dtmf_detection": True})
    try:
        told = []
        identity = CallIdentity(custom_parameters={"who": "browser"})
        bridge = RelayBridge(
            f"{lab.http_url}/twiml",
            told.append,
            auth_token="test-token-not-secret",
            identity=identity,
        )

        async def call():
            await bridge.handle({"op": "dial"})
            config = told[0]["config"]
            setup = twilio_frames.setup_frame(
                config["callSid"], custom_parameters=config["customParameters"]
            )
            await bridge.handle({"op": "frame", "frame": setup})
            await bridge.handle({"op": "frame", "frame": twilio_frames.prompt_frame("Hi")})
            await _until(lambda: any('"last":true' in e.get("frame", "") for e in told))
            session = lab.server.find(identity.call_sid)
            await bridge.handle({"op": "hangup"})
            return config, session

        config, session = lab.run(call())
        assert told[0]["op"] == "connected"
        assert config["dtmfDetection"] is True and config["customParameters"] == {"who": "browser"}
        assert session.setup.custom_parameters == {"who": "browser"}
        assert [m["role"] for m in session.conversation.snapshot()] == ["user", "assistant"]
        assert told[-1]["op"] == "closed"
        texts = [json.loads(e["frame"]) for e in told if e["op"] == "frame"]
        assert texts[-1] == {"type": "text", "token": "", "last": True}
    finally:
        lab.stop()


def test_a_wrong_token_is_refused_and_said(caplog):
    lab = _lab(auth_token="the-relays-token")
    try:
        told = []
        bridge = RelayBridge(f"{lab.http_url}/twiml", told.append, auth_token="another-token")
        lab.run(bridge.handle({"op": "dial"}))
        assert told[0]["op"] == "error" and "403" in told[0]["message"]
        assert not bridge.connected
    finally:
        lab.stop()


def test_bad_browser_input_is_logged_escaped_and_the_call_goes_on(caplog):
    caplog.set_level(logging.INFO, logger="relaylab")
    lab = _lab()
    try:
        told = []
        bridge = RelayBridge(f"{lab.http_url}/twiml", told.append)

        async def abuse():
            await bridge.handle("not a dict")
            await bridge.handle({"op": "frame", "frame": twilio_frames.prompt_frame("too early")})
            await bridge.handle({"op": "dial"})
            await bridge.handle({"op": "\u202efake\nline"})
            await bridge.handle({"op": "frame", "frame": {"type": "prompt"}})
            await bridge.handle({"op": "frame", "frame": "x" * (protocol.MAX_FRAME_BYTES + 1)})
            await bridge.handle({"op": "dial"})  # already on a call
            config = told[1]["config"]
            await bridge.handle(
                {"op": "frame", "frame": twilio_frames.setup_frame(config["callSid"])}
            )
            await bridge.handle({"op": "frame", "frame": twilio_frames.prompt_frame("Hi")})
            await _until(lambda: any('"last":true' in e.get("frame", "") for e in told))
            await bridge.handle({"op": "hangup"})

        lab.run(abuse())
        errors = [e["message"] for e in told if e["op"] == "error"]
        assert errors == [
            "not on a call: dial first",
            "a frame must be JSON text, not dict",
            f"a frame of {protocol.MAX_FRAME_BYTES + 1} characters is too big to send",
            "this phone is already on a call; hang up first",
        ]
        assert any(e["op"] == "frame" and '"last":true' in e["frame"] for e in told)
        log = caplog.text
        assert "\\u202e" in log and "\\n" in log and "\u202e" not in log
    finally:
        lab.stop()


def test_browser_config_follows_the_twiml():
    from relaylab.shell.twiml import relay_twiml
    from relaylab.simulation.twilio_behaviour import read_twiml

    twiml = relay_twiml(
        "wss://example.test/ws",
        welcome_greeting="Hello",
        interruptible="dtmf",
        partial_prompts=True,
        language="fr-FR",
        transcription_language="de-DE",
        debug_events=True,
        parameters={"a": "1"},
    )
    config = browser_config(read_twiml(twiml, "https://example.test/twiml"), CallIdentity())
    assert config["welcomeGreeting"] == "Hello"
    assert config["interruptible"] == "dtmf" and config["partialPrompts"] is True
    assert (config["ttsLanguage"], config["transcriptionLanguage"]) == ("fr-FR", "de-DE")
    assert config["speakerEvents"] and config["tokensPlayed"]
    assert config["customParameters"] == {"a": "1"}


def test_dials_a_relay_behind_a_public_url_like_lesson_4():
    """Lesson 4's Lab: signatures checked against a made-up public https address."""
    lab = Lab(
        "switchboard",
        offline=True,
        auth_token="made-up-token",
        public_url="https://example.ngrok.app",
        debug_events=True,
        twiml_options={"dtmf_detection": True, "parameters": {"customer_tier": "gold"}},
        first_token_delay=0.05,
        tokens_per_second=200.0,
    )
    try:
        told = []
        bridge = RelayBridge(
            f"{lab.http_url}/twiml",
            told.append,
            auth_token="made-up-token",
            public_url="https://example.ngrok.app",
        )

        async def call():
            await bridge.handle({"op": "dial"})
            config = told[0]["config"]
            setup = twilio_frames.setup_frame(
                config["callSid"], custom_parameters=config["customParameters"]
            )
            await bridge.handle({"op": "frame", "frame": setup})
            await bridge.handle({"op": "frame", "frame": twilio_frames.dtmf_frame("9")})
            await _until(lambda: any('"type":"play"' in e.get("frame", "") for e in told))
            await bridge.handle({"op": "hangup"})
            return config

        config = lab.run(call())
        assert bridge.twiml.url.startswith("wss://example.ngrok.app/")
        assert config["customParameters"] == {"customer_tier": "gold"}
        assert config["speakerEvents"] and config["tokensPlayed"] and config["dtmfDetection"]
    finally:
        lab.stop()
