"""The VoicePhone widget's kernel side: widget messages in, widget messages out, real relay."""

from __future__ import annotations

import json
import time

import pytest

from relaylab.core import twilio_frames
from relaylab.notebook.lab import Lab

pytest.importorskip("anywidget", reason="pip install anywidget (the voice phone widget)")


def test_widget_messages_reach_the_relay_and_come_back():
    lab = Lab("tracking", offline=True, first_token_delay=0.05, tokens_per_second=200.0)
    try:
        phone = lab.voice_phone(custom_parameters={"lesson": "3"})
        assert repr(phone).startswith("VoicePhone (headphones mode)")
        sent = []
        phone.send = sent.append  # what the kernel would post to the browser

        def browser(content):
            phone._on_browser(phone, content, [])

        def until(check):
            deadline = time.monotonic() + 10
            while not check():
                assert time.monotonic() < deadline, sent
                time.sleep(0.02)

        browser({"op": "dial"})
        until(lambda: sent)
        config = sent[0]["config"]
        assert sent[0]["op"] == "connected" and config["callSid"] == phone.call_sid
        assert config["customParameters"] == {"lesson": "3"}
        setup = twilio_frames.setup_frame(
            phone.call_sid, custom_parameters=config["customParameters"]
        )
        browser({"op": "frame", "frame": setup})
        browser({"op": "frame", "frame": twilio_frames.prompt_frame("Tell me about dogs")})
        until(lambda: any('"last":true' in m.get("frame", "") for m in sent))
        tokens = [json.loads(m["frame"]) for m in sent if m["op"] == "frame"]
        reply = "".join(t["token"] for t in tokens)
        browser({"op": "hangup"})
        until(lambda: sent[-1]["op"] == "closed")
        assert phone.conversation() == [
            {"role": "user", "content": "Tell me about dogs"},
            {"role": "assistant", "content": reply.strip()},
        ]
        first_sid = phone.call_sid
        browser({"op": "dial"})  # a second call gets its own CallSid
        until(lambda: sent[-1]["op"] == "connected" and phone.bridge.connected)
        assert phone.call_sid != first_sid
        browser({"op": "hangup"})
        with pytest.raises(Exception, match="mode"):
            phone.mode = "loud"
    finally:
        lab.stop()
    browser({"op": "dial"})  # after lab.stop(): said, not raised
    assert sent[-1] == {
        "op": "error",
        "message": "this Lab was stopped; start a new one with relaylab.start()",
    }
