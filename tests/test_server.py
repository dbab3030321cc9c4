"""The relay's HTTP routes, signatures and resilience to bad input, over real sockets."""

import asyncio
import http.client
import socket
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import within
from relaylab.shell import signatures


def http_get(lab, path, method="GET", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", lab.server.port, timeout=5)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type"), response.read().decode()


def test_healthz_and_404(lab):
    assert http_get(lab, "/healthz")[::2] == (200, "ok\n")
    status, _, body = http_get(lab, "/nope")
    assert status == 404 and "/twiml" in body


def test_twiml_points_at_wss_from_host_header(lab):
    status, content_type, body = http_get(lab, "/twiml", headers={"Host": "abc.ngrok.app"})
    assert status == 200 and content_type.startswith("text/xml")
    relay = ET.fromstring(body).find("./Connect/ConversationRelay")
    assert relay.get("url") == "wss://abc.ngrok.app/ws"
    assert ET.fromstring(body).find("./Connect").get("action") == "https://abc.ngrok.app/action"


FORM = {"CallSid": "CA1", "From": "+15550100", "To": "+15550101", "AccountSid": "AC1"}


def http_post(lab, path, form, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", lab.server.port, timeout=5)
    body = urlencode(form)
    conn.request("POST", path, body=body, headers={**FORM_HEADERS, **(headers or {})})
    response = conn.getresponse()
    return response.status, response.read().decode()


FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


def test_twiml_answers_a_post_with_a_form_body_like_twilios_default(lab):
    status, body = http_post(lab, "/twiml", FORM)
    relay = ET.fromstring(body).find("./Connect/ConversationRelay")
    assert status == 200 and relay.get("url").endswith("/ws?call=CA1")  # names the call


def test_signed_posts_pass_and_forged_or_missing_signatures_get_403(make_lab):
    lab = make_lab(auth_token=TOKEN)
    url = f"https://127.0.0.1:{lab.server.port}"
    good = signatures.sign(TOKEN, f"{url}/twiml", FORM)
    assert http_post(lab, "/twiml", FORM, {"X-Twilio-Signature": good})[0] == 200
    tampered = {**FORM, "From": "+15559999"}  # same signature, other form: forged
    assert http_post(lab, "/twiml", tampered, {"X-Twilio-Signature": good})[0] == 403
    assert http_post(lab, "/twiml", FORM)[0] == 403
    action = {"CallSid": "CA1", "SessionStatus": "ended", "HandoffData": '{"reason":"human"}'}
    signed = signatures.sign(TOKEN, f"{url}/action", action)
    status, body = http_post(lab, "/action", action, {"X-Twilio-Signature": signed})
    assert status == 200 and ET.fromstring(body).tag == "Response"
    assert http_post(lab, "/action", action, {"X-Twilio-Signature": good})[0] == 403
    assert lab.server.sessions == []


@pytest.mark.parametrize(
    "head",
    [
        b"GET /twiml HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        b"GET /twiml HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET /twiml HTTP/1.1\r\nHost: a.test:abc\r\n\r\n",
        b"GET /twiml HTTP/1.1\r\nHost: a.test\r\nX-Twilio-Signature: a\r\n"
        b"X-Twilio-Signature: b\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        b"NONSENSE\r\n\r\n",
    ],
    ids=["two-hosts", "bad-ipv6-host", "bad-port", "two-signatures", "ws-two-hosts", "garbage"],
)
def test_malformed_requests_get_a_4xx_never_a_500(make_lab, relay_logs, head):
    lab = make_lab(auth_token=TOKEN)
    with socket.create_connection(("127.0.0.1", lab.server.port), timeout=5) as conn:
        conn.sendall(head)
        answer = conn.recv(4096).decode(errors="replace")
    status = int(answer.split(" ", 2)[1])
    assert 400 <= status < 500, answer
    assert "Traceback" not in relay_logs.text
    assert http_get(lab, "/healthz")[0] == 200


def test_action_answers_goodbye_twiml(lab):
    status, _, body = http_get(lab, "/action?SessionStatus=ended&CallSid=CA1")
    assert status == 200 and ET.fromstring(body).find("./Hangup") is not None


def test_public_url_names_the_wss_address(make_lab):
    lab = make_lab(public_url="https://relay.example.com")
    relay = ET.fromstring(http_get(lab, "/twiml")[2]).find("./Connect/ConversationRelay")
    assert relay.get("url") == "wss://relay.example.com/ws"


TOKEN = "test-auth-token-0123456789abcdef"


def test_signed_requests_pass_and_others_get_403_with_no_session(make_lab, relay_logs):
    lab = make_lab(auth_token=TOKEN)
    host = f"127.0.0.1:{lab.server.port}"
    assert http_get(lab, "/twiml")[0] == 403
    forged = signatures.sign("some-other-token", f"https://{host}/twiml")
    assert http_get(lab, "/twiml", headers={"X-Twilio-Signature": forged})[0] == 403
    good = signatures.sign(TOKEN, f"https://{host}/twiml?From=%2B1555")
    assert http_get(lab, "/twiml?From=%2B1555", headers={"X-Twilio-Signature": good})[0] == 200

    async def unsigned():
        with pytest.raises(InvalidStatus) as info:
            async with connect(lab.ws_url):
                pass
        return info.value.response.status_code

    assert lab.run(unsigned()) == 403
    assert lab.server.sessions == []
    assert "X-Twilio-Signature" in relay_logs.text
    assert TOKEN not in relay_logs.text

    call = lab.call()  # signs with the lab's token, like Twilio would
    assert call.say("Hello").complete


BAD_FRAMES = [
    ("{not json", "not valid JSON"),
    ('{"type":"config","x":1}', "unknown type config"),
    (b"\x00\x01binary", "binary frame"),
    ('{"type":"prompt","voicePrompt":"' + "x" * 70_000 + '"}', "larger than"),
]


@pytest.mark.parametrize(("frame", "logged"), BAD_FRAMES)
def test_bad_frames_are_logged_and_the_call_goes_on(lab, relay_logs, frame, logged):
    call = lab.call()
    other = lab.call()
    lab.run(call.send_async(frame))
    assert call.say("Hello").complete
    assert other.say("Hello").complete
    assert logged in relay_logs.text


def test_prompt_before_setup_is_refused_with_a_clear_log(lab, relay_logs):
    async def scenario():
        async with connect(lab.ws_url) as ws:
            await ws.send('{"type":"prompt","voicePrompt":"hi","last":true}')
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)

    lab.run(scenario())
    assert "arrived before 'setup'" in relay_logs.text
    assert lab.call().say("Hello").complete


def test_a_frame_over_the_socket_limit_closes_only_that_call(lab):
    victim = lab.call()
    bystander = lab.call()
    lab.run(victim.send_async("x" * 2_000_000))
    victim.listen(0.3)
    assert not victim.connected
    assert bystander.say("Hello").complete


def test_dropped_socket_mid_reply_cancels_the_model_stream(lab):
    call = lab.call()

    async def scenario():
        await call.send_async({"type": "prompt", "voicePrompt": "Tell me about dogs", "last": True})
        await call.next_frame_async(5)
        await call.drop_async()  # the line drops: no close frame

        def gone():
            return lab.server.sessions == [] and claude.requests[-1].outcome == "client_closed"

        deadline = time.monotonic() + within(2.0)
        while not gone() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    claude = lab.offline_claude
    lab.run(scenario())
    assert claude.requests[-1].outcome == "client_closed"
    assert lab.server.sessions == []
    assert lab.call().say("Hello").complete


def test_a_failing_session_listener_neither_kills_the_call_nor_leaks_the_session(lab, relay_logs):
    def broken(session):
        raise RuntimeError("widget bug")

    lab.server.session_listeners.append(broken)
    call = lab.call()
    assert call.say("Hello").complete
    call.hang_up()
    assert lab.server.sessions == []
    assert "a session listener failed" in relay_logs.text


def test_simulated_calls_sign_the_public_url_when_the_lab_has_one(make_lab):
    lab = make_lab(auth_token=TOKEN, public_url="https://relay.example.com")
    assert lab.call().say("Hello").complete


def test_minimal_setup_and_empty_prompt_are_handled_without_losing_the_call(lab, relay_logs):
    import json

    async def scenario():
        async with connect(lab.ws_url) as ws:
            await ws.send('{"type":"setup","sessionId":"VX_minimal"}')
            await ws.send('{"type":"prompt","voicePrompt":"   ","last":true}')
            await ws.send('{"type":"prompt","voicePrompt":"Hello","last":true}')
            frames = []
            while not frames or not frames[-1]["last"]:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            return frames

    frames = lab.run(scenario())
    assert "".join(f["token"] for f in frames).startswith("Hello!")
    assert "no words in it" in relay_logs.text
    assert "setup has no callSid" in relay_logs.text
    assert "Call VX_minimal: connected" in relay_logs.text
